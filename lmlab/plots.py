"""The trade-off plot: accuracy against milliseconds, with the Pareto frontier. Every chapter ends with it.

Introduced in notebooks/00_measuring_milliseconds.ipynb.
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lmlab.results import Result
from lmlab.runtime import device_name

FONT_SIZE = 14  # readable on a projector


def pareto_frontier(results: Sequence[Result], x: str = "median_ms", y: str = "accuracy") -> list[Result]:
    """Return the rows no other row beats on both counts (smaller ``x`` AND better ``y``), smallest first.

    Better means higher accuracy, or lower perplexity.
    """
    sign = 1 if y == "accuracy" else -1
    frontier: list[Result] = []
    for r in sorted(results, key=lambda r: (getattr(r, x), -sign * getattr(r, y))):
        if not frontier or sign * getattr(r, y) > sign * getattr(frontier[-1], y):
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
) -> Figure:
    """Plot accuracy (y) against median ms (x, log scale by default), p90 as an error bar, frontier labelled.

    Frontier points are labelled with their names (every point with ``label_all``).
    ``x="size_mb"`` plots against model size instead; ``y="perplexity"`` plots perplexity (log scale,
    lower is better; rows with infinite perplexity are left out). The hardware (default: this
    machine's device name and the thread count of the rows) is named in the title. Raises ValueError
    for an empty list of results, an unknown axis, or rows lacking the value an axis needs.
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
        results = [r for r in results if math.isfinite(r.perplexity)]
        if not results:
            raise ValueError("every row has an infinite perplexity: nothing to plot")
    if hardware is None:
        threads = sorted({r.threads for r in results})
        devices = sorted({r.device for r in results})
        hardware = f"{device_name(devices[0]) if len(devices) == 1 else ', '.join(devices)}, " \
                   f"{'/'.join(map(str, threads))} thread{'s' if threads != [1] else ''}"
    if ax is None:
        fig, ax = plt.subplots(figsize=(11, 6.5))
    else:
        fig = ax.figure
    techniques = list(dict.fromkeys(r.technique for r in results))
    colors = plt.get_cmap("tab10")
    for i, technique in enumerate(techniques):
        rows = [r for r in results if r.technique == technique]
        spread = [max(r.p90_ms - r.median_ms, 0) for r in rows] if x == "median_ms" else [0] * len(rows)
        ax.errorbar(
            [getattr(r, x) for r in rows], [getattr(r, y) for r in rows], xerr=[[0] * len(rows), spread],
            fmt="o", ms=9, capsize=4, color=colors(i % 10), label=technique,
        )
    frontier = pareto_frontier(results, x, y)
    ax.step([getattr(r, x) for r in frontier], [getattr(r, y) for r in frontier], where="post",
            color="black", lw=1.5, alpha=0.6, label="Pareto frontier")
    for r in results if label_all else frontier:
        ax.annotate(r.name, (getattr(r, x), getattr(r, y)), textcoords="offset points", xytext=(8, 6),
                    fontsize=FONT_SIZE - 2)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(X_AXES[x] + (", log scale" if log_x else ""), fontsize=FONT_SIZE)
    if y == "perplexity":
        ax.set_yscale("log")
    ax.set_ylabel(Y_AXES[y], fontsize=FONT_SIZE)
    ax.set_title(f"{title}\n{hardware}", fontsize=FONT_SIZE)
    ax.tick_params(labelsize=FONT_SIZE - 2)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=FONT_SIZE - 3, loc="best")
    fig.tight_layout()
    return fig
