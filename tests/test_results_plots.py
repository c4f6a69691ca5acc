import json
import math

import matplotlib.pyplot as plt
import pytest

from lmlab.measure.plots import pareto_frontier, tradeoff_plot
from lmlab.measure.results import Result, load_results, results_table, save_results


def row(name, accuracy, ms, technique="t"):
    return Result(name=name, technique=technique, setting="", accuracy=accuracy, median_ms=ms, p90_ms=ms * 1.2)


def test_pareto_frontier_keeps_only_undominated_points():
    rows = [row("slow-bad", 0.1, 10), row("fast", 0.2, 1), row("mid", 0.5, 5), row("slow-best", 0.6, 50),
            row("dominated", 0.4, 6)]
    assert [r.name for r in pareto_frontier(rows)] == ["fast", "mid", "slow-best"]


def test_rows_equal_to_float_rounding_are_one_point_on_the_frontier():
    onnx, eager = row("onnx", 0.3, 5), row("eager", 0.3 * (1 + 3e-7), 9)  # the same model, two runtimes
    assert [r.name for r in pareto_frontier([onnx, eager])] == ["onnx"]
    assert [r.name for r in pareto_frontier([onnx, eager], rel_tol=0)] == ["onnx", "eager"]
    with pytest.raises(ValueError, match="rel_tol=-1"):
        pareto_frontier([onnx], rel_tol=-1)


def test_simulated_speed_is_drawn_hollow_and_never_on_the_frontier():
    import dataclasses

    fake = dataclasses.replace(row("fake-fast", 0.9, 0.5, "fake"), simulated=True)
    rows = [row("fast", 0.2, 1), row("best", 0.6, 50), fake]
    assert [r.name for r in pareto_frontier(rows)] == ["fast", "best"]
    ax = tradeoff_plot(rows, hardware="Test CPU").axes[0]
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert "fake (speed simulated)" in legend and "t" in legend
    hollow = [line for line in ax.lines if line.get_marker() == "o" and line.get_markerfacecolor() == "white"]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [0.5]


def test_accuracy_carries_its_binomial_standard_error():
    scored = Result("a", "t", "", 0.25, 1.0, 1.2, predictions=1200)
    assert scored.accuracy_se == pytest.approx((0.25 * 0.75 / 1200) ** 0.5)
    assert row("b", 0.25, 1.0).accuracy_se is None  # unknown count: no claim
    ax = tradeoff_plot([scored], hardware="Test CPU").axes[0]
    bars = [c for c in ax.collections if c.get_segments() and c.get_segments()[0][0][0] == c.get_segments()[0][1][0]]
    (low, high), = [(seg[0][1], seg[1][1]) for c in bars for seg in c.get_segments()]
    assert high - low == pytest.approx(2 * scored.accuracy_se)


def test_every_axis_says_what_its_bars_are():
    scored = [Result("a", "t", "", 0.25, 1.0, 1.2, predictions=1200), Result("b", "t", "", 0.3, 2.0, 2.5)]
    ax = tradeoff_plot(scored, hardware="Test CPU").axes[0]
    assert ax.get_ylabel().endswith("(bars: ±1 SE)") and ax.get_xlabel().endswith("; bar to p90")
    ax = tradeoff_plot(scored, hardware="Test CPU", se_multiple=2.0, ylabel="accuracy").axes[0]
    assert ax.get_ylabel() == "accuracy (bars: ±2 SE)"
    ax = tradeoff_plot([row("c", 0.3, 1.0)], hardware="Test CPU", ylabel="accuracy (± 2 SE)").axes[0]
    assert ax.get_ylabel() == "accuracy (± 2 SE)"  # the caller's label already says it; no bars drawn here anyway
    plt.close("all")


def test_tradeoff_pair_draws_perplexity_and_accuracy_with_one_legend():
    from lmlab.measure.plots import tradeoff_pair

    rows = [Result("a", "t", "", 0.2, 1.0, 1.2, perplexity=50.0), Result("b", "u", "", 0.3, 5.0, 6.0, perplexity=30.0)]
    fig = tradeoff_pair(rows, "Test")
    left, right = fig.axes
    assert left.get_yscale() == "log" and "perplexity" in left.get_ylabel() and "accuracy" in right.get_ylabel()
    assert left.get_legend() is None and right.get_legend() is None and len(fig.legends) == 1


def test_log_axes_are_labelled_in_plain_numbers():
    rows = [Result("a", "t", "", 0.2, 0.5, 0.6, perplexity=55.0), Result("b", "t", "", 0.3, 8.0, 9.0, perplexity=31.0)]
    ax = tradeoff_plot(rows, y="perplexity", hardware="Test CPU").axes[0]
    ax.figure.canvas.draw()
    for labels in (ax.get_xticklabels() + ax.get_xticklabels(minor=True),
                   ax.get_yticklabels() + ax.get_yticklabels(minor=True)):
        texts = [t.get_text() for t in labels if t.get_text()]
        assert len(texts) >= 3 and not any("times" in t or "^" in t for t in texts), texts


def test_perplexity_interval_by_bootstrap_over_documents():
    import math

    import numpy as np

    from lmlab.measure.stats import perplexity_interval

    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 40, size=400)
    nll = tokens * rng.normal(3.5, 0.4, size=400)  # about 3.5 nats a token: perplexity near e^3.5
    point = math.exp(nll.sum() / tokens.sum())
    low, high = perplexity_interval(nll, tokens)
    assert low < point < high and perplexity_interval(nll, tokens) == (low, high)  # seeded
    # The delta method gives the same width: se(log PP) = sd(nll_d − r·n_d) / (sqrt(D)·mean n), r = Σ nll / Σ n.
    r = nll.sum() / tokens.sum()
    se = np.std(nll - r * tokens, ddof=1) / (math.sqrt(len(tokens)) * tokens.mean())
    assert math.log(high / low) == pytest.approx(2 * 1.96 * se, rel=0.15)
    same = perplexity_interval([7.0] * 10, [2] * 10)
    assert same == pytest.approx((math.exp(3.5), math.exp(3.5)))  # identical documents: no uncertainty
    with pytest.raises(ValueError, match="level=1.5"):
        perplexity_interval(nll, tokens, level=1.5)
    with pytest.raises(ValueError, match="at least two documents"):
        perplexity_interval([1.0], [1])


def test_table_prints_times_with_their_unit():
    table = results_table([row("a", 0.25, 0.0123), row("b", 0.5, 1234.5)])
    assert list(table["median"]) == ["   0.0123 ms", "     1234 ms"]
    assert len({len(v) for v in table["median"]}) == 1  # fixed width, so nbval's sanitizer keeps alignment
    assert "ms" in table.to_string()


def test_result_validates_its_numbers():
    with pytest.raises(ValueError, match="accuracy="):
        row("x", 1.5, 1.0)
    with pytest.raises(ValueError, match="median_ms="):
        row("x", 0.5, float("nan"))


def test_save_and_load_round_trip_without_overwriting(tmp_path):
    path = tmp_path / "rows.json"
    rows = [row("a", 0.25, 1.0), Result("b", "t", "n=2", 0.5, 2.0, 3.0, perplexity=float("inf"), size_mb=1.0)]
    save_results(rows, path)
    assert load_results(path) == rows
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_results(rows[:1], path)
    assert len(json.loads(path.read_text())) == 2  # the user's file is untouched
    save_results(rows[:1], path, overwrite=True)
    assert load_results(path) == rows[:1]
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
    assert path.stat().st_mode & 0o044  # readable by others, like any file the user saves


def test_missing_results_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-rows.json"):
        load_results(tmp_path / "no-rows.json")


def test_tradeoff_plot_draws_points_frontier_and_hardware():
    rows = [row("fast", 0.2, 1, "lookup"), row("mid", 0.5, 5, "lookup"), row("best", 0.6, 50, "neural")]
    fig = tradeoff_plot(rows, title="Test", hardware="Test CPU, 1 thread")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "ms" in ax.get_xlabel()
    assert "Test CPU, 1 thread" in ax.get_title()
    assert {t.get_text() for t in ax.texts} == {"fast", "mid", "best"}
    dominated = rows + [row("slow-bad", 0.1, 100, "neural")]
    assert "slow-bad" not in {t.get_text() for t in tradeoff_plot(dominated).axes[0].texts}
    assert "slow-bad" in {t.get_text() for t in tradeoff_plot(dominated, label_all=True).axes[0].texts}
    linear = tradeoff_plot(rows, log_x=False)
    assert linear.axes[0].get_xscale() == "linear"


def test_empty_results_to_plot_is_a_clear_error():
    with pytest.raises(ValueError, match="results is empty"):
        tradeoff_plot([])


def test_tradeoff_plot_against_size():
    rows = [Result("small", "t", "", 0.2, 1.0, 1.2, size_mb=1.0), Result("big", "t", "", 0.5, 0.5, 0.6, size_mb=50.0)]
    fig = tradeoff_plot(rows, x="size_mb", hardware="test")
    assert fig.axes[0].get_xlabel().startswith("size (MB)")
    assert [r.name for r in pareto_frontier(rows, "size_mb")] == ["small", "big"]
    with pytest.raises(ValueError, match="x="):
        tradeoff_plot(rows, x="params")
    with pytest.raises(ValueError, match="size_mb"):
        tradeoff_plot([row("no-size", 0.2, 1.0)], x="size_mb")


def test_tradeoff_plot_of_perplexity_prefers_lower():
    rows = [Result("a", "t", "", 0.2, 1.0, 1.1, perplexity=90.0), Result("b", "t", "", 0.3, 2.0, 2.2, perplexity=60.0),
            Result("c", "t", "", 0.1, 3.0, 3.3, perplexity=70.0), Result("d", "t", "", 0.0, 0.5, 0.6,
                                                                          perplexity=float("inf"))]
    assert [r.name for r in pareto_frontier(rows[:3], y="perplexity")] == ["a", "b"]
    fig = tradeoff_plot(rows, y="perplexity", hardware="test")
    assert fig.axes[0].get_yscale() == "log" and "perplexity" in fig.axes[0].get_ylabel()
    assert {t.get_text() for t in fig.axes[0].texts} == {"a", "b"}  # the infinite row is left out
    with pytest.raises(ValueError, match="y="):
        tradeoff_plot(rows, y="loss")
    with pytest.raises(ValueError, match="'perplexity' is missing"):
        tradeoff_plot([row("x", 0.1, 1.0)], y="perplexity")


def test_budget_plot_stacks_stages_beside_the_perception_limits():
    from lmlab.measure.plots import budget_plot

    fig = budget_plot({"tokenize": 0.5, "prefill": 700.0, "decode": 500.0})
    ax = fig.axes[0]
    assert [round(p.get_width(), 1) for p in ax.patches] == [0.5, 700.0, 500.0]
    assert [round(p.get_x(), 1) for p in ax.patches] == [0.0, 0.5, 700.5]
    assert {t.get_text() for t in ax.texts} == {"0.1 s: feels instant", "1 s: keeps the flow"}
    with pytest.raises(ValueError, match="stages\\['decode'\\]=-1"):
        budget_plot({"decode": -1})
    with pytest.raises(ValueError, match="stages is empty"):
        budget_plot({})


def test_per_context_divides_a_batched_call_by_its_batch():
    from lmlab.measure.results import Result

    row = Result(name="m", technique="t", setting="", accuracy=0.5, median_ms=8.0, p90_ms=12.0, batch_size=8)
    each = row.per_context()
    assert (each.median_ms, each.p90_ms, each.batch_size, each.accuracy) == (1.0, 1.5, 8, 0.5)


@pytest.mark.parametrize("low, high", [(0.055, 0.15), (0.016, 0.04), (0.05, 500.0), (2.0, 9.0)])
def test_log_axes_show_three_plain_labels_in_view(low, high):
    import matplotlib.pyplot as plt

    from lmlab.measure.plots import plain_log_ticks

    fig, ax = plt.subplots()
    ax.semilogx([low, high], [0, 1])
    ax.set_xlim(low, high)
    plain_log_ticks(ax.xaxis)
    fig.canvas.draw()
    ticks = [(t.get_position()[0], t.get_text()) for t in ax.get_xticklabels() + ax.xaxis.get_minorticklabels()]
    shown = [text for x, text in ticks if text and low <= x <= high]
    plt.close(fig)
    assert len(shown) >= 3, shown
    assert not any(c in text for text in shown for c in "e×$"), shown
    assert all(float(text) > 0 for text in shown)


@pytest.mark.parametrize("perplexities", [(8.34, 8.46, 12.99), (31.3, 38.9, 51.8), (20.0, 150.0, 900.0)])
def test_a_perplexity_axis_shows_three_plain_labels_in_view(perplexities):
    import matplotlib.pyplot as plt

    rows = [Result(f"m{i}", "t", "", 0.3, 1.0 + i, 1.2 + i, perplexity=p) for i, p in enumerate(perplexities)]
    fig = tradeoff_plot(rows, y="perplexity", hardware="test")
    ax = fig.axes[0]
    fig.canvas.draw()
    low, high = ax.get_ylim()
    shown = [t.get_text() for t in ax.get_yticklabels() + ax.yaxis.get_minorticklabels()
             if t.get_text() and low <= t.get_position()[1] <= high]
    plt.close(fig)
    assert len(shown) >= 3, shown
    assert all("e" not in text and "^" not in text for text in shown), shown  # plain numbers
    assert low < min(perplexities) and high > max(perplexities)  # every point still in view


def test_two_accuracies_are_noise_within_two_standard_errors_of_their_difference():
    from lmlab.measure.stats import accuracy_noise, within_noise

    a = Result("a", "t", "", 0.30, 1.0, 1.1, predictions=1000)  # se = sqrt(0.3 · 0.7 / 1000) = 0.01449
    b = Result("b", "t", "", 0.33, 1.0, 1.1, predictions=1000)  # se = 0.01487
    assert accuracy_noise(a, b) == pytest.approx(2 * (0.014491 ** 2 + 0.014869 ** 2) ** 0.5, rel=1e-4)
    assert within_noise(a, b) and not within_noise(a, b, se_multiple=1.0)
    assert not within_noise(a, Result("c", "t", "", 0.35, 1.0, 1.1, predictions=1000))  # 0.05 > 2 · 0.0209
    assert accuracy_noise(a, row("no count", 0.5, 1.0)) == pytest.approx(2 * 0.014491, rel=1e-4)


def test_place_labels_keeps_labels_off_other_points_and_inside_the_frame():
    from lmlab.measure.plots import place_labels

    fig, ax = plt.subplots(figsize=(6, 4))
    points = [("gpt-medium", 2.8, 0.3189), ("gpt-large", 4.6, 0.3227), ("far-right", 10.0, 0.30), ("top", 1.5, 0.33)]
    ax.scatter([p[1] for p in points], [p[2] for p in points])
    ax.set_xscale("log")
    ax.set_xlim(1, 10.5)
    ax.set_ylim(0.29, 0.331)
    place_labels(ax, points)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 + 1 and frame.y0 <= box.y0 and box.y1 <= frame.y1 + 1
        gaps = {}
        for name, x, y in points:
            px, py = ax.transData.transform((x, y))
            if name != text.get_text():
                assert not box.contains(px, py), (text.get_text(), name)
            gaps[name] = math.hypot(max(box.x0 - px, 0, px - box.x1), max(box.y0 - py, 0, py - box.y1))
        assert min(gaps, key=gaps.get) == text.get_text()  # no label sits nearer another row's point
    plt.close(fig)
