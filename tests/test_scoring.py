"""The one teacher-forced scorer (lmlab.models.scoring.score_tokens) and the seven scorers it replaced.

Each ``_old_*`` function below is the scorer's arithmetic as it stood before issue 23 (commit 2bf3f2c), copied
verbatim as the reference; every test runs it and the new path on a shipped model and compares their numbers.
The old scorers summed −ln P in float32 in four places (evaluate_documents, document_scores, score_ids,
perplexity) where the new one sums in float64: there the nats are compared at float32's rounding (FLOAT32_REL) and,
with the same old arithmetic summed in float64, at 1e-9; counts of right guesses are compared exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmlab.data.corpora import TokenizedCorpus, document_batches
from lmlab.inference.decode import as_causal_lm, score_ids
from lmlab.models.lm import UniformModel, evaluate
from lmlab.models.ngram import NGramModel
from lmlab.models.pretrained import greedy_words, load_smollm2, next_word_scores, perplexity
from lmlab.models.registry import load_model
from lmlab.models.scoring import IGNORE, TokenScores, document_scores, document_sums, score_summary, score_tokens
from lmlab.scale.distributed import score_shard, score_windows, scores

REL = 1e-9  # float64 sums of the same float32 log-probabilities, in another order
FLOAT32_REL = 1e-6  # an old float32 sum of up to a few thousand log-probabilities against the float64 one
DOCUMENTS = 24  # test documents (verses, names) per shipped model: a few seconds in all


@pytest.fixture(scope="module")
def shipped():
    """Three shipped models and a slice of their test split: the GPT, the LSTM (both read documents), the MLP."""
    out = {}
    for name in ("gpt-small", "lstm-names", "mlp-names"):
        model, data = load_model(name)
        out[name] = (model.eval(), data.head("test", DOCUMENTS))
    out["names"] = data  # the whole names corpus, to fit an n-gram on
    return out


# --- the scorer itself, on numbers worked by hand ---------------------------------------------------------------


def test_score_tokens_sums_minus_ln_p_counts_argmax_and_skips_padding():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]]))  # (1, 3, 3)
    targets = torch.tensor([[0, 2, IGNORE]])  # the third position is padding
    s = score_tokens(logits, targets)
    assert s.nll_nats.dtype == torch.float64 and s.nll_nats.shape == (1,)
    assert float(s.nll_nats[0]) == pytest.approx(-math.log(0.5) - math.log(0.3), rel=1e-6)
    assert float(s.correct[0]) == 1.0 and float(s.tokens[0]) == 2.0  # 0 is the best guess, 2 is not
    assert s.guesses.tolist() == [[0, 1, 2]]
    one_row = score_tokens(logits[0], targets[0])  # (time, vocab) with (time,): one row
    assert torch.equal(one_row.nll_nats, s.nll_nats) and torch.equal(one_row.correct, s.correct)
    assert score_summary(float(s.nll_nats.sum()), 1.0, 2.0)["perplexity"] == pytest.approx(math.sqrt(1 / (0.5 * 0.3)))


def test_ties_first_takes_the_first_best_and_fair_shares_the_credit():
    logp = torch.log(torch.tensor([[[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [0.25, 0.25, 0.5]]])).double()
    targets = torch.tensor([[0, 1, 1]])
    assert float(score_tokens(logp, targets, log_probs=True).correct[0]) == 1.0  # argmax picks token 0 twice
    assert float(score_tokens(logp, targets, ties="fair", log_probs=True).correct[0]) == 1.0  # 1/2 + 1/2 + 0
    uniform = UniformModel(load_model("mlp-names")[0].vocab)
    contexts = np.zeros((5, 0), dtype=np.int64)
    assert evaluate(uniform, contexts, np.arange(5))["accuracy"] == pytest.approx(1 / len(uniform.vocab), rel=1e-12)


def test_mask_and_bad_input():
    logits = torch.zeros(2, 3, 4)
    s = score_tokens(logits, torch.zeros(2, 3, dtype=torch.long), mask=torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert s.tokens.tolist() == [2.0, 1.0] and s.nll_nats.tolist() == pytest.approx([2 * math.log(4), math.log(4)])
    with pytest.raises(ValueError, match="ties='random'"):
        score_tokens(logits, torch.zeros(2, 3, dtype=torch.long), ties="random")
    with pytest.raises(ValueError, match=r"targets \(2, 2\)"):
        score_tokens(logits, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token id 4, outside \[0, 3\]"):
        score_tokens(logits, torch.full((2, 3), 4))
    with pytest.raises(ValueError, match="mask has shape"):
        score_tokens(logits, torch.zeros(2, 3, dtype=torch.long), mask=torch.ones(3, 2))
    with pytest.raises(ValueError, match="tokens=0"):
        score_summary(0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="parts is empty"):
        TokenScores.cat([])


# --- the old scorers, verbatim, as references -------------------------------------------------------------------


def _old_evaluate(model, contexts, targets, batch_size=512):  # lmlab.models.lm.evaluate
    correct = 0.0
    nll = 0.0
    for start in range(0, len(targets), batch_size):
        ctx = contexts[start : start + batch_size]
        tgt = torch.as_tensor(targets[start : start + batch_size]).long()
        with torch.no_grad():
            logp = model.next_token_logprobs(ctx).double()  # (batch, vocab)
        best = logp.max(dim=-1, keepdim=True).values  # (batch, 1)
        target_logp = logp.gather(1, tgt[:, None])  # (batch, 1)
        hit = (target_logp >= best).squeeze(1).nonzero().squeeze(1)  # rows whose target is a best guess
        if len(hit):
            ties = torch.count_nonzero(logp[hit] >= best[hit], dim=-1)  # best guesses in those rows
            correct += float((1.0 / ties).sum())
        nll -= float(target_logp.sum())
    n = len(targets)
    mean_nll = nll / n
    return {"accuracy": correct / n, "nll_nats": mean_nll,
            "perplexity": math.exp(mean_nll) if mean_nll < 700 else math.inf, "tokens": n}


@torch.no_grad()
def _old_evaluate_documents(self, data, split, batch_size=64, float64=False):  # NeuralLM.evaluate_documents
    nll, correct, count = 0.0, 0.0, 0
    for inputs, targets, mask in document_batches(data, split, batch_size, max_len=self.config.n_positions):
        logp = torch.log_softmax(self.document_logits(inputs.to(self.device), mask.to(self.device)).float(),
                                 -1).cpu()
        real = targets != IGNORE  # (batch, time)
        picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (batch, time)
        nll -= float((picked.double() if float64 else picked)[real].sum())
        correct += float((logp.argmax(-1) == targets)[real].sum())
        count += int(real.sum())
    mean = nll / count
    return {"accuracy": correct / count, "nll_nats": mean, "perplexity": math.exp(mean), "tokens": count}


def _old_document_scores(model, data: TokenizedCorpus, split, batch_size=64, float64=False):
    docs = data.ids[split] if split in data.ids else data._split_ids(split)
    if not hasattr(model, "document_logits"):
        contexts, targets = data.examples(split, model.context_size)
        tokens = np.array([len(doc) + 1 for doc in docs], dtype=np.float64)  # each document's words and its </s>
        bounds = np.r_[0, np.cumsum(tokens)].astype(int)
        nll, correct = np.zeros(len(docs)), np.zeros(len(docs))
        for d in range(len(docs)):
            part = slice(bounds[d], bounds[d + 1])
            scores = _old_evaluate(model, contexts[part], targets[part])
            nll[d], correct[d] = scores["nll_nats"] * tokens[d], scores["accuracy"] * tokens[d]
        return {"nll_nats": nll, "correct": correct, "tokens": tokens}
    longest = model.config.n_positions
    nll, correct, tokens = np.zeros(len(docs)), np.zeros(len(docs)), np.zeros(len(docs))
    with torch.no_grad():
        for start in range(0, len(docs), batch_size):
            rows = [np.concatenate([[data.vocab.bos_id], doc, [data.vocab.eos_id]])[:longest + 1]
                    for doc in docs[start:start + batch_size]]
            length = max(len(row) for row in rows) - 1
            inputs = torch.full((len(rows), length), data.vocab.eos_id, dtype=torch.long)  # (batch, time)
            targets = torch.full((len(rows), length), IGNORE, dtype=torch.long)  # (batch, time)
            for i, row in enumerate(rows):
                inputs[i, :len(row) - 1] = torch.as_tensor(row[:-1])
                targets[i, :len(row) - 1] = torch.as_tensor(row[1:])
            real = targets != IGNORE
            logits = model.document_logits(inputs.to(model.device), real.long().to(model.device))  # (batch, time, V)
            logp = torch.log_softmax(logits.float(), -1).cpu()  # (batch, time, vocab)
            picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (batch, time)
            end = start + len(rows)
            nll[start:end] = -((picked.double() if float64 else picked) * real).sum(1).double().numpy()
            correct[start:end] = ((logp.argmax(-1) == targets) & real).sum(1).double().numpy()
            tokens[start:end] = real.sum(1).double().numpy()
    return {"nll_nats": nll, "correct": correct, "tokens": tokens}


def _old_score_shard(model, data, split="test", batch_size=32):  # lmlab.scale.distributed.score_shard, one rank
    sums = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for inputs, targets, mask in document_batches(data, split, batch_size, max_len=model.config.n_positions):
            logp = torch.log_softmax(model.gpt(input_ids=inputs, attention_mask=mask).logits.float(), -1)
            real = targets != IGNORE  # (batch, time)
            picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (batch, time)
            sums[0] -= picked[real].double().sum()
            sums[1] += (logp.argmax(-1) == targets)[real].double().sum()
            sums[2] += real.sum()
    return sums


def _old_score_windows(model, windows, batch_size=8):  # lmlab.scale.distributed.score_windows, one rank
    sums = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            logp = torch.log_softmax(model(input_ids=batch).logits[:, :-1].float(), -1)  # (batch, T-1, vocab)
            targets = batch[:, 1:]
            sums[0] -= logp.gather(-1, targets[..., None]).double().sum()
            sums[1] += (logp.argmax(-1) == targets).double().sum()
            sums[2] += targets.numel()
    return sums


@torch.no_grad()
def _old_score_ids(lm, ids, float64=False):  # lmlab.inference.decode.score_ids, eager path
    feed = torch.tensor([[int(t) for t in ids]])  # (1, n + 1)
    logits = lm.core(input_ids=feed).logits
    logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)  # (n, vocab)
    targets = feed[0, 1:]
    right = (logp.argmax(-1) == targets)
    accuracy = float(right.double().mean() if float64 else right.float().mean())
    n = len(targets)
    picked = logp.gather(1, targets[:, None])
    return {"accuracy": accuracy, "accuracy_se": math.sqrt(accuracy * (1 - accuracy) / n),
            "perplexity": math.exp(-float((picked.double() if float64 else picked).mean())), "tokens": n}


@torch.no_grad()
def _old_perplexity(model, tokenizer, text, float64=False):  # lmlab.models.pretrained.perplexity
    ids = tokenizer(text, return_tensors="pt").input_ids  # (1, tokens)
    logits = model(input_ids=ids).logits.float()[0, :-1]  # (tokens - 1, vocab)
    logp = torch.log_softmax(logits, -1)
    targets = ids[0, 1:]
    picked = logp.gather(1, targets[:, None])
    nll = -(picked.double() if float64 else picked).sum().item()
    first_chars = len(tokenizer.decode(ids[0, :1]))
    right = logp.argmax(-1) == targets
    return {"perplexity": math.exp(nll / len(targets)), "nll_nats": nll / len(targets),
            "bits_per_char": nll / (len(text) - first_chars) / float(torch.log(torch.tensor(2.0))),
            "accuracy": float(right.double().mean() if float64 else right.float().mean()), "tokens": len(targets)}


@torch.no_grad()
def _old_next_word_scores(model, tokenizer, text, float64=False):  # lmlab.models.pretrained.next_word_scores
    encoded = tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
    ids, offsets = encoded.input_ids, encoded.offset_mapping[0].tolist()  # ids (1, tokens)
    logits = model(input_ids=ids).logits.float()[0]  # (tokens, vocab)
    logp = torch.log_softmax(logits, -1)
    best = logp.argmax(-1)  # (tokens,): top choice for the NEXT token
    targets = ids[0, 1:]
    picked = logp[:-1].gather(1, targets[:, None])
    nll = -(picked.double() if float64 else picked).sum().item()
    covered = offsets[-1][1] - offsets[0][1]
    correct, words = greedy_words(tokenizer, text, offsets, ids[0], best)  # word matching: not a scorer, shared
    return {"bits_per_char": nll / covered / math.log(2), "accuracy": correct / words, "words": words,
            "tokens": ids.shape[1]}


def _same(new: dict, old: dict, old64: dict | None = None, exact=("accuracy", "tokens", "words")) -> None:
    """Counts exactly; every other figure to REL against old64 (the old arithmetic summed in float64), else old."""
    assert new.keys() == old.keys()
    for key, value in new.items():
        if key in exact:
            assert value == old[key], key
        elif old64 is None:
            assert value == pytest.approx(old[key], rel=REL), key
        else:
            assert value == pytest.approx(old64[key], rel=REL), key
            assert value == pytest.approx(old[key], rel=FLOAT32_REL), key


# --- every old scorer against the new path, on shipped models ---------------------------------------------------


def test_evaluate_matches_the_old_scorer_on_the_mlp_and_an_ngram(shipped):
    mlp, data = shipped["mlp-names"]
    pairs = data.examples("test", mlp.context_size)
    _same(evaluate(mlp, *pairs), _old_evaluate(mlp, *pairs))
    ngram = NGramModel.fit(shipped["names"], n=3)  # Kneser-Ney on the names' training split, in about a second
    pairs = data.examples("test", ngram.context_size)
    _same(evaluate(ngram, *pairs), _old_evaluate(ngram, *pairs))


@pytest.mark.parametrize("name", ["gpt-small", "lstm-names"])
def test_evaluate_documents_matches_the_old_scorer(shipped, name):
    model, data = shipped[name]
    new = model.evaluate_documents(data, "test", batch_size=8)
    _same(new, _old_evaluate_documents(model, data, "test", 8),
          _old_evaluate_documents(model, data, "test", 8, float64=True))


@pytest.mark.parametrize("name", ["gpt-small", "lstm-names", "mlp-names"])
def test_document_scores_match_the_old_scorer(shipped, name):
    model, data = shipped[name]
    new, old = document_scores(model, data, "test", batch_size=8), _old_document_scores(model, data, "test", 8)
    old64 = _old_document_scores(model, data, "test", 8, float64=True)
    np.testing.assert_array_equal(new["tokens"], old["tokens"])
    np.testing.assert_allclose(new["correct"], old["correct"], rtol=REL)  # windowed: (correct / n) * n before
    np.testing.assert_allclose(new["nll_nats"], old64["nll_nats"], rtol=REL)
    np.testing.assert_allclose(new["nll_nats"], old["nll_nats"], rtol=FLOAT32_REL)


def test_distributed_sums_match_the_old_scorers(shipped):
    gpt, data = shipped["gpt-small"]
    _same(scores(score_shard(gpt, data, "test", 8)), scores(_old_score_shard(gpt, data, "test", 8)))
    ids = torch.as_tensor(np.concatenate(data.ids["test"]))
    windows = ids[: len(ids) // 16 * 16].view(-1, 16)  # (windows, 16) of the GPT's own token ids
    _same(scores(score_windows(gpt.gpt, windows, 4)), scores(_old_score_windows(gpt.gpt, windows, 4)))


def test_score_ids_matches_the_old_scorer(shipped):
    gpt, data = shipped["gpt-small"]
    lm = as_causal_lm(gpt, name="gpt-small")
    ids = [data.vocab.bos_id] + np.concatenate(data.ids["test"][:4]).tolist()[: lm.window - 1]
    new, old, old64 = score_ids(lm, ids), _old_score_ids(lm, ids), _old_score_ids(lm, ids, float64=True)
    _same(new, old, old64, exact=("tokens",))
    assert new["accuracy"] == pytest.approx(old["accuracy"], rel=FLOAT32_REL)  # old: a float32 mean


PARAGRAPH = ("The train left the station a few minutes after nine. Most of the passengers were going to work, and "
             "many of them read the news on their phones.")


def test_smollm2_perplexity_and_next_word_scores_match_the_old_scorers():
    model, tokenizer = load_smollm2()
    new, old = perplexity(model, tokenizer, PARAGRAPH), _old_perplexity(model, tokenizer, PARAGRAPH)
    _same(new, old, _old_perplexity(model, tokenizer, PARAGRAPH, float64=True), exact=("tokens",))
    assert new["accuracy"] == pytest.approx(old["accuracy"], rel=FLOAT32_REL)  # old: a float32 mean
    new, old = next_word_scores(model, tokenizer, PARAGRAPH), _old_next_word_scores(model, tokenizer, PARAGRAPH)
    _same(new, old, _old_next_word_scores(model, tokenizer, PARAGRAPH, float64=True))


def test_document_sums_total_each_documents_predictions(shipped):
    data = shipped["names"].head("test", DOCUMENTS)
    model = NGramModel.fit(shipped["names"], n=3)
    contexts, targets = data.examples("test", model.context_size)
    per_doc = document_sums(model.logprob_of(contexts, targets), data, "test")
    np.testing.assert_allclose(-per_doc, document_scores(model, data, "test")["nll_nats"], rtol=1e-9)
    with pytest.raises(ValueError, match="values has shape"):
        document_sums(np.zeros(len(targets) + 1), data, "test")


def test_next_word_scores_per_line_adds_up_to_the_totals():
    model, tokenizer = load_smollm2()
    text = "in the beginning god created\nthe heaven and the earth\nand the earth was\n"
    scores = next_word_scores(model, tokenizer, text, per_line=True)
    assert scores["line_words"].tolist() == [5, 6, 5]  # words after the text's first, each line's newline included
    assert scores["line_correct"].sum() == round(scores["accuracy"] * scores["words"])
    assert scores["line_words"].sum() == scores["words"]
