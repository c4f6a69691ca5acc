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
    assert ("; within noise by ±2 SE of the difference" in panel.info.value
            or ", beyond noise by ±2 SE of the difference" in panel.info.value)  # evaluate reports tokens only
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
    assert bytes(panel.chart.value) == b"" and "the text is empty" in panel.info.value
    assert "texts[0]" not in panel.info.value  # plain words, not the library's argument name
    panel.text.value = "john"
    assert bytes(panel.chart.value).startswith(b"\x89PNG")


def test_classify_panel_needs_one_tasks_fitted_classifiers():
    from lmlab.notebook.widgets import ClassifyPanel
    from lmlab.tasks.classify import make_classifier

    with pytest.raises(ValueError, match="classifiers is empty"):
        ClassifyPanel({})
    with pytest.raises(ValueError, match="class lists"):
        ClassifyPanel({"untrained": make_classifier("linear")})


@pytest.fixture(scope="module")
def decode_panel():
    from lmlab.inference.decode import as_causal_lm
    from lmlab.models.checkpoints import load_checkpoint
    from lmlab.notebook.widgets import DecodePanel

    return DecodePanel({"gpt-small": as_causal_lm(load_checkpoint("data/gpt-small"))}, prompt="and god said",
                       max_new_tokens=8)


def test_every_panel_reads_as_plain_text_where_widgets_cannot_render(models, decode_panel):
    from lmlab.notebook.widgets import DescentPanel
    from lmlab.train.descent import linear_data

    x, y = linear_data(16, seed=0)
    for panel, name in [(NextTokenPanel(models, lambda text: tokenize(text, "char")), "NextTokenPanel"),
                        (DescentPanel(x, y, batch_size=4, steps=5), "DescentPanel"), (decode_panel, "DecodePanel")]:
        bundle = panel.widget._repr_mimebundle_()
        assert bundle["text/plain"].startswith(f"{name}: ") and "VBox" not in bundle["text/plain"]
        assert "running kernel" in bundle["text/plain"]
        assert "application/vnd.jupyter.widget-view+json" in bundle  # the live view where widgets render


def test_charts_show_at_their_own_pixel_size():
    from matplotlib.figure import Figure

    from lmlab.notebook.widgets import show_figure

    chart = __import__("ipywidgets").Image(format="png")
    fig = Figure(figsize=(9, 4))
    fig.subplots().plot([0, 1])
    show_figure(chart, fig, dpi=72)
    assert bytes(chart.value)[16:24] == (648).to_bytes(4, "big") + (288).to_bytes(4, "big")  # PNG width, height
    assert chart.layout.width == "648px" and chart.layout.max_width == "100%" and chart.layout.height == "auto"


def test_decode_panel_is_busy_while_it_runs_and_drops_a_second_click(decode_panel):
    assert decode_panel.start() and decode_panel.go.disabled and "running" in decode_panel.info.value
    assert not decode_panel.start()  # the second click while running starts nothing
    first = decode_panel.worker
    decode_panel.go.click()
    assert decode_panel.worker is first
    first.join(60)
    assert not decode_panel.busy and not decode_panel.go.disabled and "first token" in decode_panel.info.value


def test_decode_panel_says_how_much_to_shorten_a_long_prompt(decode_panel):
    decode_panel.prompt.value = " ".join(["and god said"] * 50)  # 150 words
    tokens = len(decode_panel.models["gpt-small"].encode(decode_panel.prompt.value))
    shown = decode_panel.run()
    assert f"The prompt is {tokens} tokens" in shown["error"] and "<= -" not in decode_panel.info.value
    assert f"shorten the prompt by {tokens + 8 - 128} tokens" in decode_panel.info.value
    assert not decode_panel.go.disabled
    decode_panel.prompt.value = "and god said"


def test_decode_panel_names_unknown_words_and_keeps_newlines(decode_panel):
    from lmlab.notebook.widgets import reply_html, unknown_words

    lm = decode_panel.models["gpt-small"]
    assert unknown_words(lm, "and xyzzy said unto zoë") == ["xyzzy", "zo"]  # the word tokenizer keeps a-z and '
    decode_panel.prompt.value = "and xyzzy said"
    assert decode_panel.run()["unknown"] == ["xyzzy"] and "&lt;unk&gt;: xyzzy" in decode_panel.info.value
    assert "white-space: pre-wrap" in reply_html("a\nb", "c\n\nd") and "c\n\nd" in reply_html("a", "c\n\nd")
    decode_panel.prompt.value = "and god said"


def test_decode_panel_streams_a_batch(decode_panel):
    seen = []
    decode_panel.reply.observe(lambda change: seen.append(change["new"]), names="value")
    decode_panel.batch.value, decode_panel.cache.value = 3, True
    decode_panel.run()
    assert len(seen) >= 2 and "batch 3" in decode_panel.info.value  # one update per token, not one at the end
    decode_panel.batch.value = 1


def test_decode_panel_reports_making_the_int8_model_apart_from_the_first_token(decode_panel):
    decode_panel.path.value = "int8, ONNX Runtime"
    first = decode_panel.run()
    assert first["making_s"] > 0 and "making the int8, ONNX Runtime model took" in decode_panel.info.value
    assert decode_panel.run()["making_s"] == 0 and "making" not in decode_panel.info.value
    decode_panel.path.value = "float32, PyTorch eager"


def test_classify_panel_names_unknown_words_and_a_cut_text():
    from lmlab.notebook.widgets import ClassifyPanel
    from lmlab.tasks.classify import kjv_by_book_group, train_classifier

    train = kjv_by_book_group().split(seed=0)["train"]
    panel = ClassifyPanel({kind: train_classifier(kind, train, steps=3) for kind in ("linear", "cnn")}, text="maria")
    assert "Not in the vocabulary of every classifier, read as unknown: maria." in panel.info.value
    assert "linear and cnn know none of these words" in panel.info.value
    panel.text.value = "and jesus said unto them " * 8  # 40 words
    assert "cnn reads only the first 32 of these 40 words; the rest is cut." in panel.info.value
    assert "linear reads only" not in panel.info.value  # the bag of n-grams reads every word
    assert "unknown" not in panel.info.value
    png = bytes(panel.chart.value)
    assert panel.chart.layout.width == f"{int.from_bytes(png[16:20], 'big')}px"
    assert int.from_bytes(png[20:24], "big") <= 6.5 * 72  # fits a laptop screen at its own size


def test_compression_panel_compares_paired_where_documents_are_shared(names_data):
    import numpy as np
    import torch

    from lmlab.compress.methods import METHODS
    from lmlab.models.kinds import build_model
    from lmlab.models.lm import evaluate
    from lmlab.notebook.widgets import CompressionPanel, accuracy_versus

    torch.manual_seed(0)
    mlp = build_model("mlp", names_data.vocab, context_size=3, embed_dim=4, hidden_dim=16).eval()
    contexts, targets = (a[:600] for a in names_data.examples("valid", 3))

    def by_document(model):  # 30 "documents" of 20 predictions each, scored alike for every model
        parts = [evaluate(model, contexts[i:i + 20], targets[i:i + 20]) for i in range(0, 600, 20)]
        tokens = np.array([p["tokens"] for p in parts], dtype=float)
        correct = np.array([p["accuracy"] for p in parts]) * tokens
        return {**evaluate(model, contexts, targets), "documents": {"correct": correct, "tokens": tokens}}

    panel = CompressionPanel({"mlp": (mlp, by_document)}, {"per channel": METHODS["quantize-channel"]})
    assert "by paired bootstrap over documents" in panel.info.value
    panel.sliders["per channel"].value = 2
    versus = panel.intervals["mlp", "per channel", 2]
    assert versus is not None and versus.paired and versus.documents == 30
    assert accuracy_versus({"accuracy": 0.5}, {"accuracy": 0.5}) is None  # nothing to judge noise by: no verdict
