import math

import numpy as np
import pytest
import torch

from lmlab.data.corpora import Vocab
from lmlab.inference.sampling import sample
from lmlab.models.lm import UniformModel, check_contexts, evaluate, make_context, measure, sequence_logprob, top_k


class TableBigram:
    """A tiny hand-made bigram model: P(next | previous) from a fixed table."""

    def __init__(self, vocab: Vocab, table: np.ndarray):
        self.vocab, self.context_size, self.table = vocab, 1, torch.as_tensor(table, dtype=torch.float64)

    def next_token_logprobs(self, contexts):
        ctx = check_contexts(self, contexts)
        return self.table[ctx[:, 0]].log()


@pytest.fixture
def bigram():
    vocab = Vocab.build([["a", "b"]])  # <unk> <s> </s> a b
    table = np.full((5, 5), 0.05)
    table[1] = [0.0, 0.0, 0.0, 0.8, 0.2]  # after <s>: mostly a
    table[3] = [0.0, 0.0, 0.1, 0.1, 0.8]  # after a: mostly b
    table[4] = [0.0, 0.0, 0.7, 0.2, 0.1]  # after b: mostly </s>
    table[[0, 2]] = 0.2
    return TableBigram(vocab, table)


def test_uniform_model_has_perplexity_vocab_size_and_fair_accuracy():
    vocab = Vocab.build([list("abcdefg")])
    model = UniformModel(vocab)
    contexts, targets = np.zeros((50, 0), np.int64), np.arange(50) % len(vocab)
    scores = evaluate(model, contexts, targets)
    assert scores["perplexity"] == pytest.approx(len(vocab))
    assert scores["accuracy"] == pytest.approx(1 / len(vocab))  # a fair random tie-break, on average


def test_sequence_logprob_is_the_chain_rule(bigram):
    out = sequence_logprob(bigram, ["a", "b"])
    # P(a | <s>) P(b | a) P(</s> | b) = 0.8 * 0.8 * 0.7
    assert math.exp(out["nats"]) == pytest.approx(0.8 * 0.8 * 0.7)
    assert out["bits"] == pytest.approx(out["nats"] / math.log(2))
    assert [tok for tok, _ in out["factors"]] == ["a", "b", "</s>"]


def test_sequence_logprob_rejects_unknown_tokens(bigram):
    with pytest.raises(ValueError, match="'zzz' is not in the vocabulary"):
        sequence_logprob(bigram, ["a", "zzz"])


def test_evaluate_matches_hand_computation(bigram):
    contexts = np.array([[1], [3], [4]])
    targets = np.array([3, 3, 2])
    scores = evaluate(bigram, contexts, targets)
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["perplexity"] == pytest.approx(math.exp(-(math.log(0.8) + math.log(0.1) + math.log(0.7)) / 3))


def test_zero_probability_gives_infinite_perplexity(bigram):
    assert evaluate(bigram, np.array([[1]]), np.array([0]))["perplexity"] == math.inf


def test_evaluate_rejects_empty_or_mismatched_input(bigram):
    with pytest.raises(ValueError, match="targets is empty"):
        evaluate(bigram, np.zeros((0, 1), np.int64), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="must match"):
        evaluate(bigram, np.zeros((2, 1), np.int64), np.zeros(3, np.int64))


@pytest.mark.parametrize("contexts, match", [
    (np.zeros((2, 2), np.int64), "shape"), (np.array([[9]]), "outside"), (np.array([[0.5]]), "dtype"),
])
def test_bad_contexts_are_clear_errors(bigram, contexts, match):
    with pytest.raises(ValueError, match=match):
        bigram.next_token_logprobs(contexts)


def test_top_k_is_sorted_and_validated(bigram):
    best = top_k(bigram, [3], k=2)
    assert best[0][0] == "b" and best[0][1] == pytest.approx(0.8)
    assert best[1][1] == pytest.approx(0.1) and len(best) == 2
    with pytest.raises(ValueError, match="k="):
        top_k(bigram, [3], k=0)


def test_sample_is_seeded_and_stops_at_eos(bigram):
    first = [sample(bigram, seed=s, max_tokens=20) for s in range(5)]
    assert first == [sample(bigram, seed=s, max_tokens=20) for s in range(5)]
    assert all(len(s) < 20 for s in first)  # </s> arrives long before 20 tokens here
    with pytest.raises(ValueError, match="max_tokens="):
        sample(bigram, max_tokens=0)
    with pytest.raises(ValueError, match="temperature="):
        sample(bigram, temperature=0)


def by_strings(model, prompt=(), max_tokens=30, seed=0, temperature=1.0):
    """The sampler as it was: decode the history to strings and encode it again for every token."""
    vocab, generator, out = model.vocab, torch.Generator().manual_seed(seed), []
    history = list(vocab.encode(list(prompt), strict=True))
    for _ in range(max_tokens):
        context, _ = make_context(model, vocab.decode(history))
        logp = model.next_token_logprobs(context)[0].double() / temperature
        logp[vocab.bos_id] = -math.inf
        token = int(torch.multinomial(torch.softmax(logp, dim=-1), 1, generator=generator))
        if token == vocab.eos_id:
            break
        out.append(token)
        history.append(token)
    return vocab.decode(out)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_sample_on_ids_draws_what_the_string_round_trip_drew(bigram, temperature):
    for seed in range(20):
        expected = by_strings(bigram, ["a"], 12, seed, temperature)
        assert sample(bigram, ["a"], max_tokens=12, seed=seed, temperature=temperature) == expected


def test_measure_returns_a_results_row(bigram):
    row = measure(bigram, np.array([[1], [3], [4]]), np.array([3, 4, 2]), name="table", technique="bigram",
                  batch_size=2, repeat=3, threads=1)
    assert row.accuracy == pytest.approx(1.0) and row.batch_size == 2 and row.threads == 1
    assert 0 <= row.median_ms <= row.p90_ms
    with pytest.raises(ValueError, match="batch_size="):
        measure(bigram, np.array([[1]]), np.array([3]), name="x", technique="y", batch_size=0)


def test_deep_contexts_have_enough_real_tokens():
    from lmlab.models.lm import deep_contexts

    contexts = np.array([[1, 1, 1, 5], [1, 1, 6, 7], [8, 9, 6, 7]])  # bos id 1 pads on the left
    assert deep_contexts(contexts, bos_id=1, words=2).tolist() == [1, 2]
    assert deep_contexts(contexts, bos_id=1, words=4).tolist() == [2]


def test_text_scores_are_the_formulas_and_refuse_bad_input():
    import math

    from lmlab.models.lm import text_scores

    scores = text_scores(nll_nats=100.0, words=40, chars=200, accuracy=0.25)
    assert scores["perplexity per word"] == round(math.exp(2.5), 2)
    assert scores["bits per char"] == round(100 / 200 / math.log(2), 4)
    assert scores["next-word accuracy"] == 0.25
    for bad, match in (({"words": 0}, "words=0"), ({"chars": 0}, "chars=0"), ({"nll_nats": -1.0}, "nll_nats=-1.0"),
                       ({"accuracy": 1.5}, "accuracy=1.5")):
        with pytest.raises(ValueError, match=match):
            text_scores(**{"nll_nats": 1.0, "words": 1, "chars": 1, "accuracy": 0.5, **bad})
