import pytest

from lmlab.data.corpora import tokenize
from lmlab.models.ngram import NGramModel
from lmlab.notebook.widgets import NextTokenPanel


@pytest.fixture(scope="module")
def models(names_data):
    return {f"{n}-gram": NGramModel.fit(names_data, n=n) for n in (1, 3)}


def test_panel_predicts_and_times(models):
    panel = NextTokenPanel(models, lambda text: tokenize(text, "char"), text="jo")
    top, timing, unknown = panel.predict("jo", "3-gram")
    assert len(top) == 10 and top[0][1] >= top[-1][1] and unknown == []
    assert timing.repeat == 5 and timing.threads >= 1
    # Changing the text or the model redraws without error.
    panel.text.value = "mar"
    panel.choice.value = "1-gram"
    assert bytes(panel.chart.value).startswith(b"\x89PNG") and "1-gram" in panel.info.value


def test_panel_reports_unknown_symbols(models):
    panel = NextTokenPanel(models, lambda text: tokenize(text, "char"))
    _, _, unknown = panel.predict("jo3", "3-gram")
    assert unknown == ["3"]


def test_panel_rejects_bad_settings(models):
    with pytest.raises(ValueError, match="models is empty"):
        NextTokenPanel({}, str.split)
    with pytest.raises(ValueError, match="k="):
        NextTokenPanel(models, str.split, k=0)


def test_descent_panel_redraws_and_flags_divergence():
    from lmlab.notebook.widgets import DescentPanel
    from lmlab.train.descent import linear_data

    x, y = linear_data(64, seed=0)
    panel = DescentPanel(x, y, lr=0.1, batch_size=64)
    assert "batch descent" in panel.info.value and "final loss" in panel.info.value
    panel.lr.value = 1.9
    assert "diverged" in panel.info.value
    panel.batch.value = 1
    assert "stochastic" in panel.info.value
    assert bytes(panel.chart.value).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="lr="):
        DescentPanel(x, y, lr=0)


def test_compression_panel_scores_settings_and_shows_refusals(names_data):
    import torch

    from lmlab.compress.methods import METHODS, Method
    from lmlab.compress.quantize import model_bytes, quantize_model
    from lmlab.models.kinds import build_model
    from lmlab.models.lm import evaluate
    from lmlab.notebook.widgets import CompressionPanel

    torch.manual_seed(0)
    mlp = build_model("mlp", names_data.vocab, context_size=3, embed_dim=4, hidden_dim=16).eval()
    pairs = [a[:500] for a in names_data.examples("valid", 3)]
    methods = {
        "per channel": METHODS["quantize-channel"],
        "per group of 3": Method("bits", lambda m, b: quantize_model(m, b, granularity="group", group_size=3),
                                 2, 8, 1, 4, integer=True),
        "magnitude": METHODS["magnitude-global"],
    }
    panel = CompressionPanel({"mlp": (mlp, lambda m: evaluate(m, *pairs))}, methods)
    reference = evaluate(mlp, *pairs)
    assert f"uncompressed {reference['accuracy']:.4f}" in panel.info.value
    assert panel.score("mlp", "per channel", 8)["size_bytes"] == model_bytes(mlp, 8)["total"]
    panel.sliders["per channel"].value = 2
    assert set(panel.tried["mlp", "per channel"]) == {8, 2}
    panel.method_choice.value = "magnitude"
    assert panel.controls.children[-1] is panel.sliders["magnitude"] and "magnitude at 0.5" in panel.info.value
    assert bytes(panel.chart.value).startswith(b"\x89PNG")
    panel.method_choice.value = "per group of 3"  # 3 does not divide the embedding's 4 weights per row
    assert "group_size=3 does not divide the 4 weights" in panel.info.value
    assert panel.chart.value == b""  # no chart of the previous setting under the refusal
    panel.method_choice.value = "per channel"
    assert ", within noise" in panel.info.value or ", beyond noise" in panel.info.value  # evaluate reports tokens
    grouped = CompressionPanel({"mlp": (mlp, lambda m: evaluate(m, *pairs))},
                               {"per group of 32": METHODS["quantize-group32"],
                                "per channel": METHODS["quantize-channel"]})
    assert list(grouped.method_choice.options) == ["per channel"]  # groups of 32 cannot split 4- and 16-wide rows
    assert "not offered here: per group of 32 (groups of 32 do not divide the 4 weights per row" in grouped.info.value
    with pytest.raises(ValueError, match="at least one"):
        CompressionPanel({}, methods)


def test_decode_panel_streams_a_reply_and_times_it():
    from lmlab.inference.decode import as_causal_lm
    from lmlab.models.checkpoints import load_checkpoint
    from lmlab.notebook.widgets import DecodePanel

    panel = DecodePanel({"gpt-small": as_causal_lm(load_checkpoint("data/gpt-small"))}, prompt="and god said",
                        max_new_tokens=8)
    shown = panel.run()
    assert shown["ttft_ms"] > 0 and "and god said" in panel.reply.value and "tokens/s" in panel.info.value
    panel.cache.value, panel.batch.value = False, 4
    assert panel.run()["tokens_per_s"] > 0
    panel.prompt.value = ""
    assert "prompt" in panel.run()["error"] and "empty" in panel.info.value
    with pytest.raises(ValueError, match="models is empty"):
        DecodePanel({})


def test_classify_panel_shows_each_classifiers_probabilities_and_refuses_an_empty_text():
    from lmlab.notebook.widgets import ClassifyPanel
    from lmlab.tasks.classify import names_by_sex, train_classifier

    train = names_by_sex().split(seed=0)["train"]
    panel = ClassifyPanel({kind: train_classifier(kind, train, steps=5) for kind in ("linear", "cnn")}, text="mary")
    answers = panel.predict("mary")
    assert set(answers) == {"linear", "cnn"}
    for probs, timing in answers.values():
        assert len(probs) == len(panel.classes) == 2 and sum(probs) == pytest.approx(1.0)
        assert timing.repeat == 5
    assert bytes(panel.chart.value).startswith(b"\x89PNG") and "cnn" in panel.info.value
    panel.text.value = "   "
    assert bytes(panel.chart.value) == b"" and "refused" in panel.info.value and "empty" in panel.info.value
    panel.text.value = "john"
    assert bytes(panel.chart.value).startswith(b"\x89PNG")


def test_classify_panel_needs_one_tasks_fitted_classifiers():
    from lmlab.notebook.widgets import ClassifyPanel
    from lmlab.tasks.classify import make_classifier

    with pytest.raises(ValueError, match="classifiers is empty"):
        ClassifyPanel({})
    with pytest.raises(ValueError, match="class lists"):
        ClassifyPanel({"untrained": make_classifier("linear")})
