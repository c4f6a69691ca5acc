"""The trade-off plot: accuracy against milliseconds, with the Pareto frontier. Every chapter ends with it.

Introduced in notebooks/00_measuring_milliseconds.ipynb.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogFormatter, NullFormatter

from lmlab.measure.results import Result
from lmlab.measure.runtime import device_name

if TYPE_CHECKING:  # matplotlib.typing names the legend positions; the annotation only names its type
    from matplotlib.typing import LegendLocType

FONT_SIZE = 14  # readable on a projector


def pareto_frontier(results: Sequence[Result], x: str = "median_ms", y: str = "accuracy",
                    rel_tol: float = 1e-6) -> list[Result]:
    """Return the rows no other row beats on both counts (smaller ``x`` AND better ``y``), smallest first.

    Better means higher accuracy, or lower perplexity, by more than ``rel_tol`` of the value: two rows that differ
    only by float32 rounding (the same model computed by two runtimes, e.g. eager PyTorch and ONNX Runtime) are
    equal, and the slower one is not on the frontier. Rows with simulated speed (``Result.simulated``) are left
    out: their time is not theirs. Raises ValueError for rel_tol < 0.
    """
    if not rel_tol >= 0:
        raise ValueError(f"rel_tol={rel_tol!r} is out of range; use a relative tolerance >= 0")
    sign = 1 if y == "accuracy" else -1
    frontier: list[Result] = []
    real = [r for r in results if not r.simulated]
    for r in sorted(real, key=lambda r: (getattr(r, x), -sign * getattr(r, y))):
        last = getattr(frontier[-1], y) if frontier else None
        if last is None or sign * (getattr(r, y) - last) > rel_tol * abs(last):
            frontier.append(r)
    return frontier


X_AXES = {"median_ms": "median latency per call (ms)", "size_mb": "size (MB)"}
Y_AXES = {"accuracy": "next-token accuracy", "perplexity": "perplexity (lower is better)"}


def tradeoff_plot(
    results: Sequence[Result],
    title: str = "Accuracy against latency",
    log_x: bool = True,
    hardware: str | None = None,
    ax: Axes | None = None,
    x: str = "median_ms",
    y: str = "accuracy",
    label_all: bool = False,
    xlabel: str | None = None,
    ylabel: str | None = None,
    se_multiple: float = 1.0,
) -> Figure:
    """Plot accuracy (y) against median ms (x, log scale by default), p90 as an error bar, frontier labelled.

    An accuracy carries a vertical bar of ± ``se_multiple`` standard errors (default one) where the row knows how
    many predictions it was scored on; ``xlabel`` and ``ylabel`` replace the axes' default names, and each axis
    label says what its bars are ("bar to p90", "bars: ±1 SE") unless the label given already does. A bar of
    ±1 SE per row is not the noise rule: two rows differ beyond noise when their gap exceeds 2·√(se₁² + se₂²)
    (``lmlab.measure.stats.compare``). Rows with simulated speed are drawn hollow, with "(speed simulated)" in the
    legend, and are never on the frontier. Frontier points are labelled with their names (every point with
    ``label_all``).
    ``x="size_mb"`` plots against model size instead; ``y="perplexity"`` plots perplexity (log scale,
    lower is better; rows with infinite perplexity are left out). The hardware (default: this
    machine's device name and the thread count of the rows) is named in the title. Raises ValueError
    for an empty list of results, an unknown axis, or rows lacking the value an axis needs.
    """
    results = _plotted_rows(results, x, y)
    if hardware is None:
        hardware = _hardware_of(results)
    if ax is None:
        fig, ax = plt.subplots(figsize=(11, 6.5))
    else:
        fig = cast(Figure, ax.figure)  # an Axes of a subfigure is not drawn here
    _draw_techniques(ax, results, x, y, se_multiple)
    frontier = pareto_frontier(results, x, y)
    ax.step([getattr(r, x) for r in frontier], [getattr(r, y) for r in frontier], where="post",
            color="black", lw=1.5, alpha=0.6, label="Pareto frontier")
    if log_x:
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
    if y == "perplexity":
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
        _at_least_three_ticks(ax)
    _label(ax, results if label_all else frontier, x, y)
    xlabel, ylabel = _axis_labels(results, x, y, log_x, xlabel, ylabel, se_multiple)
    finish_axes(ax, xlabel, ylabel, f"{title}\n{hardware}")
    return fig


def _plotted_rows(results: Sequence[Result], x: str, y: str) -> list[Result]:
    """Return the rows ``tradeoff_plot`` draws on axes ``x`` and ``y`` (without infinite perplexities).

    Raises ValueError for no rows, an unknown axis, or rows lacking the value an axis needs.
    """
    results = list(results)
    if not results:
        raise ValueError("results is empty: the trade-off plot needs at least one Result")
    if x not in X_AXES:
        raise ValueError(f"x={x!r} is not an axis; use one of {tuple(X_AXES)}")
    if y not in Y_AXES:
        raise ValueError(f"y={y!r} is not an axis; use one of {tuple(Y_AXES)}")
    for axis in (x, y):
        if any(getattr(r, axis) is None for r in results):
            raise ValueError(f"{axis!r} is missing from some rows; every row needs it for this plot")
    if y == "perplexity":
        results = [r for r in results if r.perplexity is not None and math.isfinite(r.perplexity)]
        if not results:
            raise ValueError("every row has an infinite perplexity: nothing to plot")
    return results


def _hardware_of(results: Sequence[Result]) -> str:
    """Name what the rows ran on: the device (this machine's name for it, if there is one) and the thread counts."""
    threads = sorted({r.threads for r in results})
    devices = sorted({r.device for r in results})
    return f"{device_name(devices[0]) if len(devices) == 1 else ', '.join(devices)}, " \
           f"{'/'.join(map(str, threads))} thread{'s' if threads != [1] else ''}"


def _draw_techniques(ax: Axes, results: Sequence[Result], x: str, y: str, se_multiple: float) -> None:
    """Draw each technique's rows in its own colour, real speeds filled and simulated ones hollow.

    Error bars: x from the median to p90 (on the latency axis), y ± ``se_multiple`` · SE of the accuracy.
    """
    techniques = list(dict.fromkeys(r.technique for r in results))
    colors = plt.get_cmap("tab10")
    for i, technique in enumerate(techniques):
        for simulated in (False, True):
            rows = [r for r in results if r.technique == technique and r.simulated == simulated]
            if not rows:
                continue
            spread = [max(r.p90_ms - r.median_ms, 0) for r in rows] if x == "median_ms" else [0] * len(rows)
            se = [se_multiple * (r.accuracy_se or 0.0) if y == "accuracy" else 0.0 for r in rows]
            ax.errorbar(
                [getattr(r, x) for r in rows], [getattr(r, y) for r in rows], xerr=[[0] * len(rows), spread],
                yerr=se if any(se) else None, fmt="o", ms=9, capsize=4, color=colors(i % 10),
                mfc="white" if simulated else colors(i % 10), mew=2,
                label=technique + (" (speed simulated)" if simulated else ""),
            )


def _axis_labels(results: Sequence[Result], x: str, y: str, log_x: bool, xlabel: str | None, ylabel: str | None,
                 se_multiple: float) -> tuple[str, str]:
    """Return (x label, y label): the given names or the axes' own, each saying what its bars are."""
    xlabel = (xlabel or X_AXES[x]) + (", log scale" if log_x else "")
    if x == "median_ms" and "p90" not in xlabel and any(r.p90_ms > r.median_ms for r in results):
        xlabel += "; bar to p90"
    ylabel = ylabel or Y_AXES[y]
    if y == "accuracy" and "SE" not in ylabel and any(r.accuracy_se for r in results):
        ylabel += f" (bars: ±{se_multiple:g} SE)"
    return xlabel, ylabel


def tradeoff_pair(results: Sequence[Result], title: str, label_all: bool = False) -> Figure:
    """Draw two trade-off plots side by side, perplexity (left) and accuracy (right) against ms, with one legend.

    Perplexity separates models whose accuracies are within noise of each other; accuracy carries its standard
    error. Raises ValueError as ``tradeoff_plot`` does (every row needs a perplexity).
    """
    fig, axes = plt.subplots(1, 2, figsize=(20, 7.5))
    tradeoff_plot(results, title=title, y="perplexity", ax=axes[0], label_all=label_all)
    tradeoff_plot(results, title=title, y="accuracy", ax=axes[1], label_all=label_all)
    handles, labels = axes[1].get_legend_handles_labels()
    for ax in axes:
        ax.get_legend().remove()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=FONT_SIZE - 2,
               bbox_to_anchor=(0.5, -0.01))
    fig.tight_layout(rect=(0, 0.01 + 0.05 * math.ceil(len(labels) / 4), 1, 1))
    return fig


class _PlainLogFormatter(LogFormatter):
    """matplotlib's LogFormatter picks which ticks to label; this one writes each label as a plain number
    (0.06, 0.5, 2, 40), where matplotlib writes 6e-02 below 1 and 4×10¹ in math text."""

    def _num_to_string(self, x, vmin, vmax):
        if not 1e-4 <= abs(x) < 1e6:  # 1e-08 reads better than 0.00000001
            return f"{x:.3g}"
        return np.format_float_positional(float(f"{x:.3g}"), trim="-")


def plain_log_ticks(axis) -> None:
    """Label a log axis in plain numbers (0.06, 2, 40), not 6e-02 or 4×10¹; minor ticks get labels when the axis
    spans few decades, so it always shows several labelled ticks."""
    axis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.8)))


def _at_least_three_ticks(ax: Axes) -> None:
    """Within a decade, a log y axis may hold only one or two of matplotlib's ticks (perplexities 8.3 to 13: 9 and
    10); give it ``log_ticks``' plain ticks instead, at least three, labelled."""
    low, high = ax.get_ylim()
    if high / low < 10:
        ax.yaxis.set_major_locator(FixedLocator(log_ticks(low, high)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: np.format_float_positional(float(f"{v:.3g}"),
                                                                                            trim="-")))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(low, high)


def log_ticks(low: float, high: float, at_least: int = 3) -> list[float]:
    """Plain tick values for a log axis from ``low`` to ``high``: 1, 2, 5 × 10^k, or finer steps (1, 1.5, 2, 3, 4, 5,
    6, 8 × 10^k; then halves; then every tenth of a decade) until at least ``at_least`` fall inside; at most eight.
    Raises ValueError unless 0 < low < high."""
    if not (0 < low < high and math.isfinite(high)):
        raise ValueError(f"low={low!r}, high={high!r}: give 0 < low < high, both finite")
    ticks: list[float] = []
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 4, 5, 6, 8), (1, 1.25, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 9),
                      tuple(np.round(np.arange(1, 10, 0.1), 1))):
        decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
        ticks = [float(f"{m * 10.0**k:.6g}") for k in decades for m in mantissas if low <= m * 10.0**k <= high]
        if len(ticks) >= at_least:
            break
    while len(ticks) > 8:
        ticks = ticks[::2]
    return ticks


def finish_axes(ax: Axes, xlabel: str, ylabel: str, title: str, legend_loc: LegendLocType = "best") -> None:
    """Label, title, grid and legend a plot in the workbook's projector-sized fonts; tighten its figure."""
    ax.set_xlabel(xlabel, fontsize=FONT_SIZE)
    ax.set_ylabel(ylabel, fontsize=FONT_SIZE)
    ax.set_title(title, fontsize=FONT_SIZE)
    ax.tick_params(labelsize=FONT_SIZE - 2)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=FONT_SIZE - 3, loc=legend_loc)
    cast(Figure, ax.figure).tight_layout()


# Where a label may go relative to its point, in points, tried in this order until one overlaps no other label.
_LABEL_OFFSETS = [(8, 6), (8, -16), (8, 20), (8, -30), (8, 34), (8, -44), (8, 48), (8, -58)]


def _label(ax: Axes, rows: Sequence[Result], x: str, y: str) -> None:
    """Name each row's point, nudging a label up or down when it would overlap one already placed."""
    place_labels(ax, [(r.name, getattr(r, x), getattr(r, y)) for r in rows])


def place_labels(ax: Axes, points: Sequence[tuple[str, float, float]], font_size: int = FONT_SIZE - 2) -> None:
    """Write each (name, x, y) beside its point, nudging a label up or down when it would overlap one placed before
    or another point's marker.

    A nudged label gets a thin line back to its point. Used by the trade-off plot and the roofline
    (``lmlab.measure.hardware.roofline_plot``).
    """
    ax.autoscale_view()
    to_pixels = ax.transData.transform
    scale = ax.figure.dpi / 72  # points to pixels
    height = font_size * 1.25 * scale
    marker = 7 * scale  # half a marker's width, in pixels
    points_px = {name: tuple(to_pixels((x, y))) for name, x, y in points}
    labels: list[tuple[float, float, float, float]] = []
    for name, x, y in sorted(points, key=lambda p: (p[1], p[2])):
        px, py = to_pixels((x, y))
        width = len(name) * font_size * 0.6 * scale
        placed = [(qx - marker, qy - marker, qx + marker, qy + marker)  # other points, so no label covers one
                  for other, (qx, qy) in points_px.items() if other != name] + labels
        inside = ax.bbox.extents  # (left, bottom, right, top) in pixels: a label past the frame is cut off
        # In a crowd, the best spot found inside the frame and clear of other labels: nearest its own point if one
        # is (tier 1), else any (tier 2); it may cover a marker, and a line shows its point.
        relaxed: dict[int, tuple[float, float, tuple[float, float, float, float]]] = {}
        dx: float
        dy: float
        for dx, dy in _LABEL_OFFSETS + [(-8 - width / scale, dy) for _, dy in _LABEL_OFFSETS]:  # right, then left
            bottom = py + dy * scale - (height if dy < 0 else 0)  # labels below their point hang from it
            box = (px + dx * scale, bottom, px + dx * scale + width, bottom + height)
            within = inside[0] <= box[0] and box[2] <= inside[2] and inside[1] <= box[1] and box[3] <= inside[3]
            if not within or any(_overlap(box, b) for b in labels):
                continue
            own = _nearest_is_own(box, (px, py), [q for other, q in points_px.items() if other != name])
            relaxed.setdefault(1 if own else 2, (dx, dy, box))
            if own and not any(_overlap(box, b) for b in placed):
                break
        else:
            dx, dy = _LABEL_OFFSETS[0]
            bottom = py + dy * scale
            default = (dx, dy, (px + dx * scale, bottom, px + dx * scale + width, bottom + height))
            dx, dy, box = relaxed.get(1) or relaxed.get(2) or default
        labels.append(box)
        moved = (dx, dy) != _LABEL_OFFSETS[0]
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=font_size,
                    va="bottom" if dy > 0 else "top",
                    arrowprops=dict(arrowstyle="-", lw=0.6, color="gray", shrinkA=0, shrinkB=4) if moved else None)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Whether two (left, bottom, right, top) boxes overlap."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _nearest_is_own(box: tuple[float, float, float, float], own: tuple[float, float],
                    others: Sequence[tuple[float, float]]) -> bool:
    """True when no other point is as near the label's box as its own point: a label must not sit beside another."""
    def gap(point: tuple[float, float]) -> float:
        dx = max(box[0] - point[0], 0.0, point[0] - box[2])
        dy = max(box[1] - point[1], 0.0, point[1] - box[3])
        return math.hypot(dx, dy)
    return all(gap(own) < gap(other) for other in others)


# What people perceive (Miller 1968; Card, Robertson and Mackinlay 1991; Nielsen 1993): three orders of magnitude.
PERCEPTION_MS = {100: "0.1 s: feels instant", 1000: "1 s: keeps the flow", 10000: "10 s: attention lost"}


def budget_plot(stages: dict[str, float], title: str = "Where one reply's milliseconds go") -> Figure:
    """Draw a reply's stages (ms) as one stacked bar on a linear time axis, beside the limits people perceive.

    ``stages`` maps a stage's name to its ms, in the order they happen. The axis is linear, so a stage's width
    is its true share: stages of a fraction of a millisecond are invisible, and named in the legend with their
    time. Introduced in notebooks/07_realtime_pipeline.ipynb. Raises ValueError for no stage or a negative or
    non-finite time.
    """
    if not stages:
        raise ValueError("stages is empty: give at least one stage and its ms")
    for name, ms in stages.items():
        if not (isinstance(ms, (int, float)) and math.isfinite(ms) and ms >= 0):
            raise ValueError(f"stages[{name!r}]={ms!r} is out of range; use a finite time >= 0 ms")
    total = sum(stages.values())
    right = max(total * 1.15, 1150.0)
    fig, ax = plt.subplots(figsize=(13, 4.8))
    colors = plt.get_cmap("tab10")
    start = 0.0
    for i, (name, ms) in enumerate(stages.items()):
        ax.barh(0, ms, left=start, color=colors(i), height=0.5, label=f"{name}: {ms:,.1f} ms")
        start += ms
    for ms, text in PERCEPTION_MS.items():
        if ms <= right:
            ax.axvline(ms, color="gray", ls="--", lw=1.5)
            ax.text(ms + right * 0.005, 0.45, text, fontsize=FONT_SIZE - 2, color="dimgray")
    ax.set_xlim(0, right)
    ax.set_yticks([])
    ax.set_ylim(-0.5, 0.6)
    finish_axes(ax, "time since the customer pressed Enter (ms)", "", title)
    ax.legend(fontsize=FONT_SIZE - 3, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)  # below: off the bar
    fig.tight_layout()
    return fig
