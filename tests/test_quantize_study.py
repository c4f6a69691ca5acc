"""Chapter 04's sweeps, rows and plots (lmlab.compress.quantize_study): each figure against a direct computation."""

import math
import types

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lmlab.compress.quantize import fake_quantize, model_bytes, quantize_model
from lmlab.compress.quantize_study import (
    Subject,
    bits_plot,
    bits_sweep,
    bits_takeaway,
    frontier_takeaway,
    granularity_errors,
    input_ranges,
    label_points,
    llm_subject,
    lm_subject,
    model_rows,
    multiply_adds,
    outlier_plot,
    rounding_error_plot,
    row_range_plot,
    rows_text,
    runtime_rows,
    simulated_rows,
    speed_takeaway,
    sweep_table,
    tradeoff_figure,
)
from lmlab.measure.plots import log_ticks
from lmlab.measure.results import Result
from lmlab.models.kinds import build_model
from lmlab.models.neural import weight_layers


@pytest.fixture(scope="module")
def slice_(names_data):
    return names_data.head("test", 12)


@pytest.fixture(scope="module")
def gpt_subject(names_gpt, slice_):
    return lm_subject("tiny-gpt", names_gpt, slice_, "names test[:12]", group_size=8, repeat=2)


def row(name, technique, accuracy=0.5, median=1.0, p90=1.2, n=1000, simulated=False, size=1.0):
    return Result(name=name, technique=technique, setting="", accuracy=accuracy, median_ms=median, p90_ms=p90,
                  predictions=n, simulated=simulated, size_mb=size, perplexity=10.0)


# ---------------------------------------------------------------- the weights' error


def test_rounding_error_matches_q_squared_over_12_for_small_steps():
    w = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fig, table = rounding_error_plot(w, torch.tensor([1e-3, 1e-2, 1e-1, 10.0]), "t")
    plt.close(fig)
    assert table["measured / predicted"].iloc[:2].sub(1).abs().max() < 0.02
    assert table["measured MSE"].iloc[-1] == pytest.approx(float((w**2).mean()))  # every weight rounds to 0
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert "0.01" in labels and not any("10^" in t or "e-" in t for t in labels)
    with pytest.raises(ValueError, match="weights is empty"):
        rounding_error_plot(torch.empty(0), torch.tensor([0.1]), "t")


def test_granularity_errors_order_and_row_range_plot_errors(names_gpt):
    table = granularity_errors(names_gpt, (8, 3), group_size=8)
    assert list(table.columns) == ["per tensor", "per channel", "per group (g = 8)"]
    assert (table["per group (g = 8)"] <= table["per channel"]).all()
    assert (table["per channel"] <= table["per tensor"]).all()
    layers = [layer.matrix.detach() for layer in weight_layers(names_gpt)]
    direct = sum(((fake_quantize(m, 3, granularity="channel") - m) ** 2).sum() for m in layers) / sum(
        m.numel() for m in layers)
    assert table.loc["3 bits", "per channel"] == pytest.approx(float(direct))
    plt.close(row_range_plot(torch.randn(16, 8), "m", bits=4))
    with pytest.raises(ValueError, match="an \\(out, in\\) matrix"):
        row_range_plot(torch.randn(16), "m")
    with pytest.raises(ValueError, match="bits=9"):
        row_range_plot(torch.randn(4, 4), "m", bits=9)


# ---------------------------------------------------------------- subjects and the bits sweep


def test_subject_scores_its_model_once_and_checks_its_unit(names_gpt):
    calls = []
    subject = Subject("m", names_gpt, lambda m: calls.append(m) or {"accuracy": 0.5, "perplexity": 2.0, "tokens": 4},
                      lambda m, **row: row, "letter", "c", 8)
    assert subject.reference is subject.reference and len(calls) == 1
    assert subject.row("PyTorch float32")["scores"]["accuracy"] == 0.5 and len(calls) == 1  # reference reused
    with pytest.raises(ValueError, match="unit='token'"):
        Subject("m", names_gpt, lambda m: {}, lambda m, **r: r, "token", "c", 8)
    with pytest.raises(ValueError, match="group_size=0"):
        Subject("m", names_gpt, lambda m: {}, lambda m, **r: r, "word", "c", 0)


def test_bits_sweep_rows_agree_with_a_direct_quantize_and_score(gpt_subject, names_gpt, slice_):
    sweep = bits_sweep(gpt_subject, widths=(8, 4, 3), granularities=("channel", "group"))
    assert len(sweep) == 1 + 3 * 2 and sweep.iloc[0]["weights"] == "float32" and sweep.iloc[0]["bits"] == 32
    assert set(sweep["unit"]) == {"letter"} and set(sweep["corpus"]) == {"names test[:12]"}
    assert list(sweep[sweep["weights"] == "per channel"]["bits"]) == [8, 4, 3]
    setting = sweep[(sweep["weights"] == "per group (g = 8)") & (sweep["bits"] == 3)].iloc[0]
    direct = quantize_model(names_gpt, 3, granularity="group", group_size=8).evaluate_documents(slice_, "test")
    assert setting["accuracy"] == pytest.approx(direct["accuracy"])
    assert setting["perplexity"] == pytest.approx(direct["perplexity"], rel=1e-6)
    p, n = setting["accuracy"], setting["predictions"]
    assert n == direct["tokens"] and setting["accuracy_se"] == pytest.approx(math.sqrt(p * (1 - p) / n))
    assert setting["MB"] * 1e6 == model_bytes(names_gpt, 3, granularity="group", group_size=8)["total"]


@pytest.mark.parametrize("widths, match", [((9,), "bits=9"), ((), "widths is empty")])
def test_bits_sweep_refuses_bad_widths(gpt_subject, widths, match):
    with pytest.raises(ValueError, match=match):
        bits_sweep(gpt_subject, widths=widths)


def test_bits_sweep_refuses_an_unknown_granularity(gpt_subject):
    with pytest.raises(ValueError, match="granularity='row'"):
        bits_sweep(gpt_subject, widths=(8,), granularities=("row",))


def _fake_sweep():
    rows = []
    for model, unit, widths, granularities in (("a", "word", range(2, 9), ("per channel", "per group (g = 32)")),
                                               ("b", "sub-word token", range(4, 9), ("per group (g = 32)",))):
        rows.append({"model": model, "unit": unit, "corpus": "kjv test[:40]", "weights": "float32", "bits": 32,
                     "accuracy": 0.40, "accuracy_se": 0.01, "perplexity": 20.0, "predictions": 2400, "MB": 10.0})
        for weights in granularities:
            for bits in sorted(widths, reverse=True):
                accuracy = 0.40 - (0.0 if bits >= 5 else 0.05 * (5 - bits))  # beyond noise below 5 bits
                rows.append({"model": model, "unit": unit, "corpus": "kjv test[:40]", "weights": weights, "bits": bits,
                             "accuracy": accuracy, "accuracy_se": 0.01, "perplexity": 20.0 + (8 - bits),
                             "predictions": 2400, "MB": bits / 4})
    return pd.DataFrame(rows)


def test_sweep_table_gives_each_model_its_own_columns_headed_by_its_unit():
    table = sweep_table(_fake_sweep())
    heads = list(dict.fromkeys(head for head, _ in table.columns))
    assert heads == ["a, per word", "b, per sub-word token"]
    for head in heads:  # one block of three columns per model, never shared
        assert [column for h, column in table.columns if h == head] == ["accuracy ± se", "perplexity", "MB"]
    assert table.loc[("per channel", 4), ("b, per sub-word token", "accuracy ± se")] == ""  # not measured: blank
    assert table.loc[("per group", 4), ("b, per sub-word token", "accuracy ± se")] == "0.3500 ± 0.0100"


def test_bits_plot_has_an_integer_tick_at_every_width_and_a_panel_per_model():
    fig = bits_plot(_fake_sweep())
    assert len(fig.axes) == 4
    first, second = fig.axes[0], fig.axes[1]
    assert list(first.get_xticks()) == list(range(2, 9)) and list(second.get_xticks()) == list(range(4, 9))
    assert "per sub-word token" in second.get_title() and "kjv test[:40]" in second.get_title()
    assert "sub-word token" in second.get_ylabel() and "word" in first.get_ylabel()
    fig.canvas.draw()
    perplexity_labels = [t.get_text() for t in fig.axes[2].get_yticklabels() if t.get_text()]
    assert len(perplexity_labels) >= 3 and all(label.replace(".", "").isdigit() for label in perplexity_labels)
    plt.close(fig)


def test_bits_takeaway_names_the_fewest_bits_within_noise():
    lines = bits_takeaway(_fake_sweep())
    assert len(lines) == 3
    assert "a, per channel: accuracy within noise of float32's down to 5 bits" in lines[0]
    assert "at 4 bits -0.0500, beyond noise" in lines[0]
    assert "b, per group (g = 32): accuracy within noise of float32's down to 5 bits" in lines[2]
    sweep = _fake_sweep()
    sweep.loc[(sweep["model"] == "b") & (sweep["bits"] < 32), "accuracy"] = 0.30
    assert "beyond noise already at 8 bits" in bits_takeaway(sweep)[2]
    sweep.loc[(sweep["model"] == "b") & (sweep["bits"] < 32), "accuracy"] = 0.40
    assert bits_takeaway(sweep)[2].endswith("perplexity 24.00 against 20.00)")  # within noise down to the last width


# ---------------------------------------------------------------- activations


def test_input_ranges_records_each_input_and_removes_its_hooks():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.tensor([[1.0, -8.0, 0.5, 2.0], [0.25, 3.0, -1.0, 0.0]])
    with input_ranges([model[0], model[2]]) as ranges, torch.no_grad():
        model(x)
    with torch.no_grad():
        hidden = model[1](model[0](x)).abs()
    assert ranges[0] == (8.0, float(x.abs().median())) and ranges[1] == pytest.approx(
        (float(hidden.max()), float(hidden.median())))
    assert not model[0]._forward_pre_hooks and not model[2]._forward_pre_hooks
    with pytest.raises(RuntimeError), input_ranges([model[0]]):
        raise RuntimeError("boom")
    assert not model[0]._forward_pre_hooks  # removed after an error too
    plt.close(outlier_plot(ranges, "t", "|x|"))
    with pytest.raises(ValueError, match="ranges is empty"):
        outlier_plot([], "t", "|x|")


# ---------------------------------------------------------------- rows: real and simulated


def test_runtime_rows_reuse_the_reference_and_skip_what_is_asked(gpt_subject, names_gpt):
    made = []
    variants = {"PyTorch float32": ("", None), "copy": (" copy", lambda m: made.append(m) or m)}
    rows = runtime_rows([gpt_subject], variants, skip=[("tiny-gpt", "skipped")])
    assert set(rows) == {("tiny-gpt", "PyTorch float32"), ("tiny-gpt", "copy")} and made == [names_gpt]
    dense, copy = rows["tiny-gpt", "PyTorch float32"], rows["tiny-gpt", "copy"]
    assert dense.accuracy == gpt_subject.reference["accuracy"] and dense.predictions == gpt_subject.reference["tokens"]
    assert copy.name == "tiny-gpt copy" and copy.corpus == "names test[:12]" and copy.accuracy == dense.accuracy
    assert rows_text(rows.values(), "heading").startswith("heading\n")
    assert len(runtime_rows([gpt_subject], variants, skip=[("tiny-gpt", "copy")])) == 1


def test_speed_takeaway_calls_overlapping_spreads_noise():
    rows = {("m", "base"): row("m", "base", 0.50, median=10.0, p90=11.0),
            ("m", "fast"): row("m", "fast", 0.51, median=2.0, p90=3.0),
            ("m", "same"): row("m", "same", 0.40, median=10.5, p90=12.0)}
    fast, same = speed_takeaway(rows, baseline="base")
    assert "m: fast 5.0× faster than base" in fast and "(within noise)" in fast
    assert "m: same within noise of base" in same and "-0.1000, beyond noise" in same
    slow = speed_takeaway({**rows, ("m", "fast"): row("m", "fast", median=30.0, p90=31.0)}, "base")[0]
    assert "3.0× slower than base" in slow


def test_simulated_rows_take_the_dense_latency_and_the_sweeps_scores():
    sweep = _fake_sweep()
    dense = row("a", "PyTorch float32", median=7.0, p90=9.0)
    four, three = simulated_rows(sweep, dense, "per channel", (4, 3))
    assert four.simulated and four.median_ms == 7.0 and four.p90_ms == 9.0 and four.name == "a 4-bit"
    assert four.technique == "fake-quantized, per channel" and four.accuracy == pytest.approx(0.35)
    assert four.size_mb == 1.0 and three.accuracy == pytest.approx(0.30)
    with pytest.raises(ValueError, match="bits=1"):
        simulated_rows(sweep, dense, "per channel", (1,))
    real = {("a", "PyTorch float32"): dense, ("a", "int8"): row("a", "int8")}
    assert [r.name for r in model_rows(real, sweep, "a", ["PyTorch float32", "int8"], "per channel", (2,))] == [
        "a", "a", "a 2-bit"]


def test_frontier_takeaway_calls_a_step_inside_the_noise_noise():
    rows = [row("fast", "t", 0.30, median=1.0, p90=1.1), row("mid", "t", 0.301, median=2.0, p90=2.1),
            row("slow", "t", 0.40, median=3.0, p90=3.1), row("fake", "f", 0.9, median=0.5, p90=0.6, simulated=True)]
    line = frontier_takeaway(rows, "panel")
    assert line == ("panel: on the frontier, fastest first: fast, then mid (+0.0010, within noise), "
                    "then slow (+0.0990, beyond noise)")  # the simulated row is never on it
    with pytest.raises(ValueError, match="frontier is empty"):
        frontier_takeaway([rows[-1]], "panel")


# ---------------------------------------------------------------- the trade-off figure


def _boxes(ax):
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    return {t.get_text(): Text.get_window_extent(t, renderer) for t in ax.texts}  # the name, not its leader line


def test_label_points_names_every_point_once_without_covering_a_name_or_a_point():
    rows = [row(f"p{i}", "t", accuracy=0.30 + 0.002 * (i % 3), median=1.0 + 0.05 * i, p90=1.1 + 0.05 * i, n=10**6)
            for i in range(7)] + [row("far", "u", 0.2, median=5.0, p90=6.0)]
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        ax.plot(r.median_ms, r.accuracy, "o")
    ax.set_xscale("log")
    label_points(ax, rows)
    boxes = _boxes(ax)
    assert sorted(boxes) == sorted(r.name for r in rows)
    names = list(boxes)
    for i, a in enumerate(names):
        inside = ax.get_window_extent()
        assert inside.x0 <= boxes[a].x0 and boxes[a].x1 <= inside.x1 and inside.y0 <= boxes[a].y0 <= inside.y1
        for b in names[i + 1:]:
            assert not boxes[a].overlaps(boxes[b]), (a, b)
        for r in rows:
            px, py = ax.transData.transform((r.median_ms, r.accuracy))
            assert not boxes[a].contains(px, py), (a, r.name)
    plt.close(fig)


def test_tradeoff_figure_keeps_units_apart_and_one_colour_per_technique():
    words = [row("5-gram", "n-gram"), row("gpt", "PyTorch float32", 0.4, 10.0, 12.0),
             row("gpt 4-bit", "fake", 0.38, 10.0, 12.0, simulated=True)]
    tokens = [row("llm", "PyTorch float32", 0.5, 300.0, 330.0), row("llm int8", "int8", 0.49, 200.0, 210.0)]
    fig = tradeoff_figure([(words, "words", "word"), (tokens, "tokens", "sub-word token", "ms per prefill")])
    top, bottom = fig.axes[0], fig.axes[1]
    assert top.get_ylabel().startswith("next-word accuracy")
    assert bottom.get_ylabel().startswith("next-sub-word token accuracy")
    assert bottom.get_xlabel().startswith("ms per prefill")
    colours = {ax: {c.get_label(): c.lines[0].get_color() for c in ax.containers} for ax in (top, bottom)}
    assert colours[top]["PyTorch float32"] == colours[bottom]["PyTorch float32"]
    assert colours[top]["fake (speed simulated)"] != colours[top]["PyTorch float32"]
    assert sorted(_boxes(top)) == ["5-gram", "gpt", "gpt 4-bit"] and sorted(_boxes(bottom)) == ["llm", "llm int8"]
    labels = [t.get_text() for t in bottom.get_xticklabels() if t.get_text()]
    assert len(labels) >= 3 and all(label.replace(".", "").isdigit() for label in labels)
    plt.close(fig)
    with pytest.raises(ValueError, match="unit='token'"):
        tradeoff_figure([(words, "w", "token")])
    with pytest.raises(ValueError, match="panels is empty"):
        tradeoff_figure([])


@pytest.mark.parametrize("low, high", [(7.5, 26.0), (29.0, 330.0), (20.6, 42.0), (250.0, 410.0), (0.055, 0.13),
                                       (8.0, 8.2), (1e-3, 1e3)])
def test_log_ticks_are_plain_and_at_least_three(low, high):
    ticks = log_ticks(low, high)
    assert 3 <= len(ticks) <= 8 and all(low <= t <= high for t in ticks) and ticks == sorted(ticks)
    assert all(len(f"{t:g}") <= 6 for t in ticks)


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (2.0, 1.0), (1.0, math.inf)])
def test_log_ticks_refuse_a_bad_range(low, high):
    with pytest.raises(ValueError, match="0 < low < high"):
        log_ticks(low, high)


# ---------------------------------------------------------------- multiply-adds, and a causal LM subject


def test_multiply_adds_counts_the_weight_matrices(names_data, names_gpt):
    torch.manual_seed(0)
    mlp = build_model("mlp", names_data.vocab, context_size=8, embed_dim=3, hidden_dim=24)
    vocab = len(names_data.vocab)
    assert multiply_adds(mlp) == 8 * 3 * 24 + 24 * vocab  # the embedding is a lookup, not a product
    matrices = [m for m in names_gpt.modules() if hasattr(m, "weight") and not isinstance(m, (nn.Embedding,
                                                                                            nn.LayerNorm))]
    assert multiply_adds(names_gpt, positions=3) == 3 * sum(m.weight.numel() for m in matrices)
    with pytest.raises(ValueError, match="positions=0"):
        multiply_adds(mlp, positions=0)


class _Letters:
    """A character tokenizer with the calls lmlab.models.pretrained makes: __call__(text, return_tensors) and decode."""

    def __call__(self, text, return_tensors=None):
        return types.SimpleNamespace(input_ids=torch.tensor([[ord(c) % 64 for c in text]]))

    def decode(self, ids):
        return "".join(chr(97 + int(i) % 26) for i in ids)


def test_llm_subject_scores_per_sub_word_token_and_times_a_prefill(slice_):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval()
    subject = llm_subject("tiny-llm", model, _Letters(), slice_, "names test[:12]", group_size=8, repeat=1)
    assert subject.unit == "sub-word token"
    text = slice_.normalized_text("test")
    assert subject.reference["tokens"] == len(text) - 1
    result = subject.row("PyTorch float32")
    assert result.accuracy == subject.reference["accuracy"] and result.corpus == "names test[:12]"
    sweep = bits_sweep(subject, widths=(8,), granularities=("group",))
    assert list(sweep["weights"]) == ["float32", "per group (g = 8)"] and np.isfinite(sweep["perplexity"]).all()


def test_bits_plot_places_points_at_their_stored_bits_and_rings_those_beyond_noise():
    sweep = _fake_sweep()
    sweep["bits stored"] = sweep["bits"] + np.where(sweep["weights"] == "per group (g = 32)", 1.0, 0.125)
    sweep.loc[sweep["bits"] == 32, "bits stored"] = 32.0
    fig = bits_plot(sweep)
    top = fig.axes[0]
    lines = {line.get_label(): line for line in top.get_lines()}
    group = sweep[(sweep["model"] == "a") & (sweep["weights"] == "per group (g = 32)")]
    drawn = [c for c in top.containers if c.get_label().startswith("per group")][0]
    assert list(drawn.lines[0].get_xdata()) == list(group["bits stored"])
    assert list(top.get_xticks()) == list(range(2, 10))  # whole bits covering 2.125 to 9
    ringed = lines["beyond noise of float32"].get_xdata()  # 0.40 - 0.05 at 4 bits: beyond 2·√2·0.01
    assert sorted(ringed) == sorted(sweep[(sweep["model"] == "a") & (sweep["bits"] < 5)]["bits stored"])
    assert "bits stored per weight" in top.get_xlabel()
    plt.close(fig)
