from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.data.corpora import Corpus, tokenize_corpus
from lmlab.models.checkpoints import load_checkpoint, save_checkpoint
from lmlab.models.kinds import build_model
from lmlab.models.lm import evaluate
from lmlab.models.recurrent import RecurrentLanguageModel, gradient_by_distance, lstm_cell, rnn_cell

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def verses(kjv_corpus):
    return tokenize_corpus(Corpus("kjv-slice", "word", kjv_corpus.documents[:300]), min_count=1)


def tiny(vocab, cell="lstm", **config):
    torch.manual_seed(0)
    sizes = dict(embed_dim=8, hidden_dim=12, n_positions=64) | config
    return build_model("rnn", vocab, cell=cell, **sizes).eval()


def test_hand_written_lstm_cell_equals_torch_lstm():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 7, batch_first=True)
    x = torch.randn(3, 6, 5)  # (batch, time, in)
    expected, _ = lstm(x)
    h, c = torch.zeros(3, 7), torch.zeros(3, 7)
    weights = (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
    with torch.no_grad():
        for t in range(6):
            h, c = lstm_cell(x[:, t], h, c, *weights)
            assert torch.allclose(h, expected[:, t], atol=1e-6)


def test_hand_written_rnn_cell_equals_torch_rnn():
    torch.manual_seed(0)
    rnn = torch.nn.RNN(5, 7, batch_first=True)
    x = torch.randn(3, 6, 5)
    expected, _ = rnn(x)
    h = torch.zeros(3, 7)
    with torch.no_grad():
        for t in range(6):
            h = rnn_cell(x[:, t], h, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
            assert torch.allclose(h, expected[:, t], atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_padded_contexts_equal_the_unpadded_prefix_and_sum_to_one(verses, cell):
    model = tiny(verses.vocab, cell, n_layer=2)
    contexts, _ = verses.examples("valid", model.context_size)
    logp = model.next_token_logprobs(contexts[:30])  # (30, vocab), rows with 0 to 29 words of padding removed
    assert torch.allclose(logp.exp().sum(-1), torch.ones(30), atol=1e-5)
    for row in (0, 1, 12, 29):
        words = contexts[row][contexts[row] != verses.vocab.bos_id]
        prefix = torch.as_tensor(np.r_[verses.vocab.bos_id, words])[None]  # (1, words + 1): one <s>, no padding
        with torch.no_grad():
            alone = torch.log_softmax(model.document_logits(prefix)[0, -1], -1)
        assert torch.allclose(logp[row], alone, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_step_decoding_equals_the_growing_prefix(verses, cell):
    model = tiny(verses.vocab, cell)
    ids = np.r_[verses.vocab.bos_id, verses.ids["valid"][0][:10]]
    state = model.initial_state(1)
    with torch.no_grad():
        for t in range(len(ids)):
            stepped, state = model.step(torch.tensor([ids[t]]), state)
            context = np.r_[np.full(model.context_size - t - 1, verses.vocab.bos_id), ids[:t + 1]][None]
            assert torch.allclose(stepped, model.next_token_logprobs(context), atol=1e-5)


def test_save_and_load_round_trip(verses, tmp_path):
    model = tiny(verses.vocab, embed_dim=12)  # tied output layer, no projection
    save_checkpoint(model, tmp_path / "m", {"note": "test"})
    loaded = load_checkpoint(tmp_path / "m")
    assert isinstance(loaded, RecurrentLanguageModel) and loaded.config == model.config
    assert loaded.out.weight is loaded.embed.weight
    contexts, _ = verses.examples("valid", model.context_size)
    assert torch.equal(loaded.next_token_logprobs(contexts[:10]), model.next_token_logprobs(contexts[:10]))


@pytest.mark.parametrize("bad, match", [(dict(cell="gru"), "cell='gru'"), (dict(hidden_dim=0), "hidden_dim=0"),
                                        (dict(n_layer=0), "n_layer=0"), (dict(dropout=1.0), "dropout=1.0"),
                                        (dict(n_positions=1), "n_positions=1")])
def test_bad_config_is_a_clear_error(verses, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny(verses.vocab, **bad)


def test_gradient_by_distance_shape_and_positivity(verses):
    model = tiny(verses.vocab, "rnn")
    ids = np.r_[verses.vocab.bos_id, verses.ids["train"][0][:20]]
    grads = gradient_by_distance(model, ids)
    assert grads.shape == (len(ids) - 1,) and (grads > 0).all()
    assert not model.training
    with pytest.raises(ValueError, match="at least 2"):
        gradient_by_distance(model, ids[:1])


def test_shipped_names_checkpoints_reevaluate_to_their_cards(names_data):
    for name in ("lstm-names", "rnn-names"):
        model = load_checkpoint(DATA / name)
        assert model.vocab == names_data.vocab
        scores = model.evaluate_documents(names_data, "valid")
        assert scores["perplexity"] == pytest.approx(model.card["final_valid"]["perplexity"], rel=1e-3)


def test_shipped_lstm_kjv_loads_and_its_two_evaluations_agree(kjv_corpus):
    model = load_checkpoint(DATA / "lstm-kjv")
    data = tokenize_corpus(kjv_corpus, min_count=model.card["min_count"])
    assert model.vocab == data.vocab and model.config.cell == "lstm"
    first = data.head("valid", 5)
    fast = model.evaluate_documents(first, "valid")
    slow = evaluate(model, *first.examples("valid", model.context_size))
    assert fast["nll_nats"] == pytest.approx(slow["nll_nats"], rel=1e-5)


@pytest.mark.slow
def test_shipped_lstm_kjv_reevaluates_to_its_card(kjv_corpus):
    model = load_checkpoint(DATA / "lstm-kjv")
    data = tokenize_corpus(kjv_corpus, min_count=model.card["min_count"])
    scores = model.evaluate_documents(data, "valid")
    assert scores["perplexity"] == pytest.approx(model.card["final_valid"]["perplexity"], rel=1e-3)


def test_gradient_by_distance_rows_are_independent(names_data):
    model = tiny(names_data.vocab, "lstm")
    rows = np.stack([names_data.stream("valid")[s:s + 16] for s in (0, 40, 80)])  # (3, 16)
    together = gradient_by_distance(model, rows)
    assert together.shape == (3, 15)
    assert np.allclose(together[1], gradient_by_distance(model, rows[1]), rtol=1e-5)


def test_windowed_document_scores_match_evaluate(verses):
    from lmlab.models.ngram import NGramModel
    from lmlab.models.scoring import document_scores

    first = verses.head("valid", 6)
    ngram = NGramModel.fit(verses, n=3)
    scores = document_scores(ngram, first, "valid")
    whole = evaluate(ngram, *first.examples("valid", 2))
    assert scores["tokens"].sum() == whole["tokens"] and scores["tokens"][0] == len(first.ids["valid"][0]) + 1
    assert scores["nll_nats"].sum() / whole["tokens"] == pytest.approx(whole["nll_nats"], rel=1e-9)
    assert scores["correct"].sum() / whole["tokens"] == pytest.approx(whole["accuracy"], rel=1e-9)


def test_cost_by_position_times_each_model_at_each_position(verses):
    from lmlab.inference.position_cost import cost_by_position, position_ratios, position_verdicts

    gpt = build_model("gpt", verses.vocab, n_layer=1, n_embd=16, n_head=2, n_positions=64).eval()
    ids = verses.stream("valid")[:40]
    rows = cost_by_position(tiny(verses.vocab), gpt, ids, positions=(1, 40), repeat=1)
    assert [(r["model"], r["position"]) for r in rows[:3]] == [("LSTM step", 1), ("GPT, no cache", 1),
                                                              ("GPT, KV cache", 1)]
    assert len(rows) == 6 and all(0 < r["median_ms"] <= r["p90_ms"] for r in rows)
    assert set(position_ratios(rows)) == {"LSTM step", "GPT, no cache", "GPT, KV cache"}
    verdicts = position_verdicts(rows)
    assert len(verdicts) == 2 and verdicts[1].startswith("position   40: GPT, KV cache takes")
    assert all(v.endswith(("faster", "slower", "within noise")) for v in verdicts)
    with pytest.raises(ValueError, match="model='GPT'"):
        position_verdicts(rows, other="GPT")
    with pytest.raises(ValueError, match="position=41"):
        cost_by_position(tiny(verses.vocab), gpt, ids, positions=(41,), repeat=1)


def test_ladder_takeaways_call_the_noise():
    from lmlab.models.recurrent import ladder_takeaways

    rng = np.random.default_rng(0)
    tokens = np.full(50, 20.0)
    base = rng.normal(60, 5, 50)  # nats per document
    scores = {"ref": {"nll_nats": base, "tokens": tokens},
              "worse": {"nll_nats": base + 10, "tokens": tokens},
              "same": {"nll_nats": base + rng.normal(0, 0.01, 50), "tokens": tokens}}
    lines = ladder_takeaways(scores, "ref")
    assert "lower, beyond noise" in lines[1] and "within noise" in lines[2]
    with pytest.raises(ValueError, match="reference='nope'"):
        ladder_takeaways(scores, "nope")


def test_ladder_rows_are_named_by_their_kind_of_model():
    from lmlab.measure.results import Result
    from lmlab.models.recurrent import by_family

    rows = [Result(name, "uncompressed", "", 0.3, 1.0, 1.2) for name in
            ("ngram-3", "5-gram", "mlp-names", "rnn-names", "lstm-kjv", "gpt-large")]
    assert [r.technique for r in by_family(rows)] == ["n-gram (Kneser-Ney)", "n-gram (Kneser-Ney)", "MLP",
                                                      "plain RNN", "LSTM", "GPT"]
    assert rows[0].technique == "uncompressed"  # the rows given are left as they were
    with pytest.raises(ValueError, match="'smollm2' is of no known kind"):
        by_family([Result("smollm2", "t", "", 0.3, 1.0, 1.2)])
