"""Chapter 04's measurements, tables and plots on ``lmlab.compress.quantize``: what rounding costs, model by model.

Introduced in notebooks/04_quantization.ipynb. The notebook's cells call these; each returns a table or a figure:

- ``rounding_error_plot``, ``row_range_plot``, ``granularity_errors``: the error of q(w) against Q²/12, and per
  tensor, per channel and per group steps on the large GPT's weights;
- ``Subject`` (``lm_subject``, ``llm_subject``): a model with the slice it is scored on, the unit of one
  prediction (word, letter or sub-word token) and how one prediction is timed;
- ``bits_sweep``, ``sweep_table``, ``bits_plot``, ``bits_takeaway``: accuracy (± one standard error) and perplexity
  at every bit width, each model in its own columns and panel, in its own unit;
- ``input_ranges``, ``outlier_plot``: the largest and the typical |activation| entering chosen layers (hooks);
- ``runtime_rows``, ``speed_takeaway``, ``simulated_rows``, ``frontier_takeaway``: real int8 execution against
  float32, fake-quantized rows that carry their dense model's latency (``Result.simulated``), and the frontier;
- ``tradeoff_figure``, ``label_points``: the trade-off plot with every point named and no name on another point;
- ``multiply_adds``: the weight-matrix multiply-adds of one prediction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, cast

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator
from torch import nn

from lmlab.compress.quantize import (
    GRANULARITIES,
    MAX_BITS,
    MIN_BITS,
    check_bits,
    fake_quantize,
    model_bytes,
    quantize,
    quantize_model,
    stored_bits_per_weight,
)
from lmlab.measure.plots import FONT_SIZE, log_ticks, pareto_frontier, tradeoff_plot
from lmlab.measure.results import Result, results_table, with_dense_speed
from lmlab.measure.runtime import check_int
from lmlab.measure.stats import binomial_se, compare, row_timing_verdict, within_noise
from lmlab.models.lm import deep_contexts, evaluate, measure
from lmlab.models.neural import weight_layers
from lmlab.models.pretrained import measure_llm, perplexity
from lmlab.models.protocols import DocumentModel

if TYPE_CHECKING:  # matplotlib.typing names what a colour and a legend's place may be; annotations only
    from matplotlib.typing import ColorType, LegendLocType

UNITS = ("word", "letter", "sub-word token")


# ---------------------------------------------------------------- the error of the weights


def rounding_error_plot(weights: torch.Tensor, steps_Q: torch.Tensor, title: str) -> tuple[Figure, pd.DataFrame]:
    """Plot the measured mean of (q(w) − w)² against the step Q beside the prediction Q²/12; return a table too.

    q(w) = round(w / Q) · Q for each Q in ``steps_Q`` (log axes, plain tick labels). The red line is mean w², where
    the error levels off once every weight rounds to 0. The table has one row per Q: measured MSE, Q²/12 and their
    ratio. Raises ValueError for an empty ``weights`` or a step ``quantize`` refuses.
    """
    if weights.numel() == 0:
        raise ValueError("weights is empty: give at least one weight")
    steps = torch.as_tensor(steps_Q, dtype=weights.dtype).flatten()
    measured = torch.stack([((quantize(weights, float(Q)) - weights) ** 2).mean() for Q in steps])
    predicted = steps**2 / 12
    fig, ax = plt.subplots(figsize=(10, 5.5))
    ax.loglog(steps, measured, "o-", lw=2.5, ms=7, label="measured mean (q(w) − w)²")
    ax.loglog(steps, predicted, "k--", lw=1.5, label="uniform-noise prediction Q²/12")
    ax.axhline(float(weights.pow(2).mean()), color="tab:red", lw=1.2, label="mean w² (everything rounded to 0)")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.001, not 10⁻³
    _finish(ax, "step Q, log scale", "mean squared error, log scale", title)
    table = pd.DataFrame({"Q": steps.tolist(), "measured MSE": measured.tolist(), "Q²/12": predicted.tolist(),
                          "measured / predicted": (measured / predicted).tolist()})
    return fig, table


def row_range_plot(matrix: torch.Tensor, name: str, bits: int = 4) -> Figure:
    """Show why one step per tensor hurts: the rows' largest |w| (left), and the narrowest row at ``bits`` per tensor
    and per channel (right). ``matrix`` is (out, in), one output channel per row."""
    check_bits(bits)
    if matrix.dim() != 2:
        raise ValueError(f"matrix has shape {tuple(matrix.shape)}; give an (out, in) matrix")
    row_max = matrix.abs().amax(1)  # (out,): the largest |w| of each row
    fig, axes = plt.subplots(1, 2, figsize=(16, 5))
    axes[0].hist(row_max, bins=60, color="tab:blue")
    axes[0].axvline(float(row_max.max()), color="tab:red", lw=2, label="the per-tensor step is set here")
    _finish(axes[0], "largest |w| in a row", "rows", f"Row ranges of {name}")
    row = int(row_max.argmin())  # the row with the smallest range suffers most from a shared step
    for granularity, color in (("tensor", "tab:red"), ("channel", "tab:green")):
        levels = fake_quantize(matrix, bits, granularity=granularity)[row]
        axes[1].scatter(matrix[row], levels, s=10, color=color, label=f"{bits} bits, per {granularity}")
    axes[1].plot(matrix[row], matrix[row], "k.", ms=2, label="w itself")
    _finish(axes[1], f"w in row {row}", "quantized w", f"Row {row} at {bits} bits: per tensor leaves few levels")
    return fig


def granularity_errors(model: nn.Module, widths: Iterable[int], group_size: int) -> pd.DataFrame:
    """The mean squared error of fake_quantize over every weight matrix of ``model``: one row per width, one column
    per granularity (per tensor, per channel, per group of ``group_size``)."""
    layers = [layer.matrix.detach() for layer in weight_layers(model)]
    count = sum(m.numel() for m in layers)
    table: dict[str, dict[str, float]] = {}
    for bits in widths:
        for granularity in GRANULARITIES:
            error = sum(((fake_quantize(m, bits, granularity=granularity, group_size=group_size) - m) ** 2).sum()
                        for m in layers) / count
            column = f"per {granularity}" + (f" (g = {group_size})" if granularity == "group" else "")
            table.setdefault(f"{bits} bits", {})[column] = float(error)
    return pd.DataFrame(table).T


# ---------------------------------------------------------------- models, their slices and their units


class Subject:
    """A model the chapter quantizes: how it is scored, on which slice, in which unit, and how it is timed.

    ``score(model)`` returns {"accuracy", "perplexity", "tokens"} on a fixed slice named ``corpus``; ``unit`` is
    what one prediction is ("word", "letter" or "sub-word token"): figures in different units never share a column
    or an axis. ``time(model, name=, technique=, setting=, corpus=, scores=)`` measures one results row.
    ``group_size`` divides every row of its weight matrices. ``reference`` is the float32 model's score, computed
    once.
    """

    def __init__(self, name: str, model: nn.Module, score: Callable[[nn.Module], dict], time: Callable[..., Result],
                 unit: str, corpus: str, group_size: int):
        if unit not in UNITS:
            raise ValueError(f"unit={unit!r} is unknown; use one of {UNITS}")
        check_int("group_size", group_size, 1)
        self.name, self.model, self.score, self.time = name, model, score, time
        self.unit, self.corpus, self.group_size = unit, corpus, group_size

    @functools.cached_property
    def reference(self) -> dict:
        with torch.no_grad():
            return self.score(self.model)

    def row(self, technique: str, model: nn.Module | None = None, name: str | None = None,
            scores: dict | None = None) -> Result:
        """Score and time ``model`` (default: this subject's own, scored once as ``reference``) at batch 1: one
        results row named ``name`` (default: the subject's), scored with ``scores`` if given."""
        if model is None:
            model, scores = self.model, self.reference if scores is None else scores
        if scores is None:
            with torch.no_grad():
                scores = self.score(model)
        return self.time(model, name=name or self.name, technique=technique, setting="batch 1", corpus=self.corpus,
                         scores=scores)


def lm_subject(name: str, model: nn.Module, data, corpus: str, group_size: int, predictions: int | None = None,
               repeat: int = 30) -> Subject:
    """A ``Subject`` for lmlab's GPT (scored document by document on ``data``'s test split) or MLP (on its first
    ``predictions`` (context, target) pairs). A GPT is timed on eight contexts from the middle of documents (a dozen
    tokens before them, or the deepest there are), like chapter 02; the MLP on its first eight contexts (its cost is
    the same for any). Raises ValueError for ``predictions`` outside [1, the pairs there are]."""
    contexts, targets = data.examples("test", model.context_size)
    if isinstance(model, DocumentModel):  # a GPT: whole verses, one causal pass each
        def score(m):
            return m.evaluate_documents(data, "test", batch_size=16)  # short batches of similar verses: less padding

        middle = deep_contexts(contexts, data.vocab.bos_id, words=min(12, model.context_size))
        if len(middle) < 8:  # short documents (names): the eight deepest contexts there are
            depth = (np.asarray(contexts) != data.vocab.bos_id).sum(1)
            middle = np.sort(np.argsort(-depth, kind="stable")[:8])
        timed = contexts[middle][:8], targets[middle][:8]
    else:
        n = len(targets) if predictions is None else check_int("predictions", predictions, 1, len(targets))

        def score(m):
            return evaluate(m, contexts[:n], targets[:n])

        timed = contexts[:8], targets[:8]

    def time(m, **row) -> Result:
        return measure(m, *timed, repeat=repeat, **row)

    unit = "word" if data.corpus.level == "word" else "letter"
    return Subject(name, model, score, time, unit, corpus, group_size)


def llm_subject(name: str, model: nn.Module, tokenizer, data, corpus: str, group_size: int = 32,
                repeat: int = 5) -> Subject:
    """A ``Subject`` for a transformers causal LM (SmolLM2): scored per sub-word token on ``data``'s test split read
    as one text (``lmlab.models.pretrained.perplexity``), timed on one 64-token forward (``measure_llm``, a prefill)."""
    text = data.normalized_text("test")

    def time(m, **row) -> Result:
        return measure_llm(m, tokenizer, text, repeat=repeat, **row)

    return Subject(name, model, lambda m: perplexity(m, tokenizer, text), time, "sub-word token", corpus, group_size)


# ---------------------------------------------------------------- accuracy against bits


def bits_sweep(subject: Subject, widths: Iterable[int] = range(MIN_BITS, MAX_BITS + 1),
               granularities: Sequence[str] = ("channel", "group")) -> pd.DataFrame:
    """Fake-quantize ``subject``'s model at every width and granularity and score each: one table row per setting.

    The first row is float32 (``subject.reference``). Columns: model, unit, corpus, weights ("float32", "per channel",
    "per group (g = 32)"), bits, bits stored (per weight, its code plus its share of the float32 steps:
    ``stored_bits_per_weight``), accuracy, accuracy_se (sqrt(p (1 − p) / n)), perplexity, predictions (n) and MB (the
    codes, steps and float32 leftovers, ``model_bytes``). The model is copied once and re-rounded for each setting.
    Raises ValueError for a width outside [2, 8], an unknown granularity, or groups that do not divide the rows.
    """
    widths = sorted({check_bits(b) for b in widths}, reverse=True)
    if not widths:
        raise ValueError("widths is empty: give at least one bit width in [2, 8]")
    for granularity in granularities:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity={granularity!r} is unknown; use one of {GRANULARITIES}")
    rows = [_sweep_row(subject, "float32", 32, subject.reference, model_bytes(subject.model)["total"], 32.0)]
    work = None
    for granularity in granularities:
        group = subject.group_size if granularity == "group" else None
        label = f"per {granularity}" + (f" (g = {group})" if group else "")
        for bits in widths:
            work = quantize_model(subject.model, bits, granularity=granularity, group_size=group, out=work)
            with torch.no_grad():
                scores = subject.score(work)
            size = model_bytes(subject.model, bits, granularity=granularity, group_size=group)["total"]
            stored = stored_bits_per_weight(subject.model, bits, granularity=granularity, group_size=group)
            rows.append(_sweep_row(subject, label, bits, scores, size, stored))
    return pd.DataFrame(rows)


def _sweep_row(subject: Subject, weights: str, bits: int, scores: dict, size_bytes: int, stored: float) -> dict:
    p, n = scores["accuracy"], scores["tokens"]
    return {"model": subject.name, "unit": subject.unit, "corpus": subject.corpus, "weights": weights, "bits": bits,
            "bits stored": stored,
            "accuracy": p, "accuracy_se": binomial_se(p, n), "perplexity": scores["perplexity"],
            "predictions": n, "MB": size_bytes / 1e6}


def sweep_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """One row per setting, one block of columns per model headed by its unit: "accuracy ± se", perplexity, MB.

    Figures in different units (per word, per letter, per sub-word token) never share a column. A setting a model
    was not measured at is left blank.
    """
    blocks = []
    for model, part in sweep.groupby("model", sort=False):
        unit = part["unit"].iloc[0]
        head = f"{model}, per {unit}"
        kind = part["weights"].str.replace(r" \(g = \d+\)", "", regex=True)
        block = pd.DataFrame({
            (head, "accuracy ± se"): [f"{a:.4f} ± {s:.4f}" for a, s in zip(part["accuracy"], part["accuracy_se"])],
            (head, "perplexity"): [f"{p:.2f}" for p in part["perplexity"]],
            (head, "MB"): [f"{m:.3f}" for m in part["MB"]],
        }, index=pd.MultiIndex.from_arrays([kind, part["bits"]], names=["weights", "bits"]))
        blocks.append(block)
    order = list(dict.fromkeys(zip(sweep["weights"].str.replace(r" \(g = \d+\)", "", regex=True), sweep["bits"])))
    table = pd.concat(blocks, axis=1).reindex(pd.MultiIndex.from_tuples(order, names=["weights", "bits"]))
    return table.fillna("")


def bits_plot(sweep: pd.DataFrame) -> Figure:
    """Accuracy ± one standard error (top) and perplexity (bottom, log scale) against bits, one column per model.

    The x axis is what a weight really takes, its code plus its share of the float32 steps (the sweep's "bits
    stored" column; the code width "bits" where a sweep lacks it), with a plain-number tick at every whole bit.
    float32 is the dashed line; the grey band is float32 ± 2·√2·SE, the noise of a difference from float32 by the
    one rule (``lmlab.measure.stats.compare``) for a point with float32's SE; a red ring marks each point whose
    difference from float32 is beyond that rule with its own SE (as ``bits_takeaway`` calls it). Each panel names
    its model's unit and slice.
    """
    models = list(dict.fromkeys(sweep["model"]))
    x = "bits stored" if "bits stored" in sweep else "bits"
    fig, axes = plt.subplots(2, len(models), figsize=(6.3 * len(models), 10), squeeze=False)
    for column, model in enumerate(models):
        part = sweep[sweep["model"] == model]
        top, bottom = axes[0, column], axes[1, column]
        reference = part[part["bits"] == 32].iloc[0]
        quantized = part[part["bits"] < 32]
        _bits_lines(top, bottom, quantized, reference, x)
        bottom.set_yscale("log")
        low, high = min(part["perplexity"]), max(part["perplexity"])
        bottom.set_ylim(low / 1.08, high * 1.08)
        bottom.yaxis.set_major_locator(FixedLocator(log_ticks(low / 1.08, high * 1.08)))
        bottom.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        bottom.yaxis.set_minor_locator(NullLocator())
        unit = reference["unit"]
        first, last = int(np.floor(quantized[x].min())), int(np.ceil(quantized[x].max()))
        for ax in (top, bottom):
            ax.set_xticks(range(first, last + 1))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlim(last + 0.4, first - 0.4)  # fewer bits to the right
        xlabel = "bits stored per weight (code + its share of the steps)" if x == "bits stored" else "bits per weight"
        _finish(top, xlabel, f"next-{unit} accuracy", f"{model}: accuracy per {unit}\n{reference['corpus']}",
                legend_loc="lower left")  # the curves fall at the right (fewer bits): the legend stays off them
        _finish(bottom, xlabel, f"perplexity per {unit}, log scale", f"{model}: perplexity per {unit}")
    fig.tight_layout()
    return fig


def _bits_lines(top: Axes, bottom: Axes, quantized: pd.DataFrame, reference, x: str) -> None:
    """Draw one model's granularities (accuracy with ±1 SE bars, perplexity), float32's line and noise band, and a
    red ring on every point beyond the noise of float32."""
    for weights, line in quantized.groupby("weights", sort=False):
        color = "tab:orange" if weights.startswith("per group") else "tab:blue"  # one colour per granularity
        top.errorbar(line[x], line["accuracy"], yerr=line["accuracy_se"], fmt="o-", lw=2.5, ms=7, capsize=4,
                     color=color, label=f"{weights} (bars: ±1 SE)")
        bottom.plot(line[x], line["perplexity"], "o-", lw=2.5, ms=7, color=color, label=weights)
    beyond = quantized[[not compare(r.accuracy, reference.accuracy, se=(r.accuracy_se, reference.accuracy_se)
                        ).within_noise for r in quantized.itertuples()]]
    if len(beyond):
        top.plot(beyond[x], beyond["accuracy"], "o", ms=15, mfc="none", mec="tab:red", mew=2,
                 label="beyond noise of float32")
    band = compare(reference["accuracy"], reference["accuracy"], se=(reference["accuracy_se"],) * 2)
    top.axhspan(reference["accuracy"] + band.low, reference["accuracy"] + band.high, color="gray", alpha=0.2,
                label="float32 ± 2·√2 SE: noise of a difference")
    top.axhline(reference["accuracy"], color="black", ls="--", lw=1.2, label="float32")
    bottom.axhline(reference["perplexity"], color="black", ls="--", lw=1.2, label="float32")


def bits_takeaway(sweep: pd.DataFrame) -> list[str]:
    """For each model and granularity, the fewest bits whose accuracy, and every wider setting's, stays within two
    standard errors of float32's; and what the next width down costs. One printed line each."""
    lines = []
    for model, part in sweep.groupby("model", sort=False):
        reference = part[part["bits"] == 32].iloc[0]
        for weights, line in part[part["bits"] < 32].groupby("weights", sort=False):
            line = line.sort_values("bits", ascending=False)
            inside = [compare(r.accuracy, reference.accuracy, se=(r.accuracy_se, reference.accuracy_se)).within_noise
                      for r in line.itertuples()]
            held = 0
            while held < len(inside) and inside[held]:
                held += 1
            head = f"{model}, {weights}: "
            if held == 0:
                first = line.iloc[0]
                lines.append(head + f"beyond noise already at {_bits(first)} ({first.accuracy:.4f} against "
                             f"float32's {reference.accuracy:.4f} per {reference.unit})")
                continue
            last = line.iloc[held - 1]
            text = head + (f"accuracy within noise of float32's down to {_bits(last)} ({last.accuracy:.4f} ± "
                           f"{last.accuracy_se:.4f} against {reference.accuracy:.4f} per {reference.unit}; perplexity "
                           f"{last.perplexity:.2f} against {reference.perplexity:.2f})")
            if held < len(line):
                below = line.iloc[held]
                text += (f"; at {_bits(below)} {below.accuracy - reference.accuracy:+.4f}, beyond noise "
                         f"(perplexity {below.perplexity:.2f})")
            lines.append(text)
    return lines


def _bits(row: pd.Series) -> str:
    """A sweep row's width as the plot's x axis reads it: its code's bits and, where the sweep has them, the bits a
    weight takes stored."""
    stored = row.get("bits stored")
    return f"{row['bits']} bits" + ("" if stored is None or pd.isna(stored) else f" of code ({stored:.2f} stored)")


# ---------------------------------------------------------------- activations


@contextlib.contextmanager
def input_ranges(modules: Sequence[nn.Module]):
    """Record the largest and the median |x| entering each module while the block runs (forward pre-hooks).

    Yields a list that fills with one (largest, median) pair per module, in the order given, once a forward pass has
    run inside the block; the hooks are removed on leaving it, even after an error.
    """
    seen: dict[int, tuple[float, float]] = {}

    def hook(index):
        def record(module, args):
            x = args[0].detach().abs()
            seen[index] = (float(x.max()), float(x.median()))
        return record

    ranges: list[tuple[float, float]] = []
    handles = [module.register_forward_pre_hook(hook(i)) for i, module in enumerate(modules)]
    try:
        yield ranges
    finally:
        for handle in handles:
            handle.remove()
        ranges.extend(seen[i] for i in sorted(seen))


def outlier_plot(ranges: Sequence[tuple[float, float]], title: str, ylabel: str) -> Figure:
    """Bars of the largest and the median |activation| per layer (log scale), from ``input_ranges``."""
    if not ranges:
        raise ValueError("ranges is empty: run a forward pass inside input_ranges first")
    largest, typical = zip(*ranges)
    fig, ax = plt.subplots(figsize=(12, 4.8))
    ax.bar(range(len(largest)), largest, color="tab:red", label="largest |activation|")
    ax.bar(range(len(typical)), typical, color="tab:blue", label="median |activation|")
    ax.set_yscale("log")
    ax.set_xticks(range(0, len(largest), 2 if len(largest) > 16 else 1))
    _finish(ax, "layer", ylabel, title)
    return fig


# ---------------------------------------------------------------- real int8 against float32, and simulated rows


def runtime_rows(subjects: Sequence[Subject], variants: Mapping[str, tuple[str, Callable | None]],
                 skip: Iterable[tuple[str, str]] = ()) -> dict[tuple[str, str], Result]:
    """Run every subject under every variant and measure it: {(subject name, variant): row}.

    ``variants`` maps a technique name to (a suffix for the row's name, a function returning the runnable copy, or
    None for the model itself, whose ``reference`` score is reused). Each variant is scored on its subject's slice
    and timed at batch 1. ``skip`` lists (subject name, variant) pairs not to run.
    """
    skip, rows = set(skip), {}
    for technique, (suffix, make) in variants.items():
        for subject in subjects:
            if (subject.name, technique) in skip:
                continue
            runnable = None if make is None else make(subject.model)
            rows[subject.name, technique] = subject.row(technique, runnable, subject.name + suffix)
    return rows


def rows_text(rows: Iterable[Result], heading: str,
              columns: Sequence[str] = ("name", "technique", "accuracy", "perplexity", "median", "p90",
                                        "size_mb")) -> str:
    """A heading line over ``results_table(rows)``'s ``columns``: one table per unit of prediction, never mixed."""
    return f"{heading}\n" + results_table(list(rows))[list(columns)].to_string(index=False)


def speed_takeaway(rows: Mapping[tuple[str, str], Result], baseline: str) -> list[str]:
    """Compare each variant with its subject's ``baseline`` row: time ratio ("within noise" by
    ``lmlab.measure.stats.row_timing_verdict``: the rows' [p10, p90] spreads overlap, p10 mirrored from the
    median), accuracy difference by ``compare_rows`` (two standard errors of the difference), and size. One line
    per variant."""
    lines = []
    order = list(dict.fromkeys(name for name, _ in rows))
    for (name, technique), row in sorted(rows.items(), key=lambda item: order.index(item[0][0])):
        base = rows.get((name, baseline))
        if technique == baseline or base is None:
            continue
        ratio = base.median_ms / row.median_ms
        speed = ("within noise of" if row_timing_verdict(base, row) == "within noise" else
                 f"{ratio:.1f}× faster than" if ratio > 1 else f"{1 / ratio:.1f}× slower than")
        change = row.accuracy - base.accuracy
        accuracy = "within noise" if within_noise(row, base) else f"{change:+.4f}, beyond noise"
        lines.append(f"{name}: {technique} {speed} {baseline} at batch 1 (median {row.median_ms:.3g} ms against "
                     f"{base.median_ms:.3g} ms); accuracy {row.accuracy:.4f} against {base.accuracy:.4f} ({accuracy}); "
                     f"{row.size_mb:.3f} MB against {base.size_mb:.3f} MB")
    return lines


def simulated_rows(sweep: pd.DataFrame, dense: Result, weights: str, widths: Iterable[int]) -> list[Result]:
    """Rows for fake-quantized settings of ``sweep``: their accuracy and perplexity, their stored size at that width,
    and ``dense``'s latency (``lmlab.measure.results.with_dense_speed``), marked ``simulated`` (they run the dense
    float32 arithmetic; plots draw them hollow and keep them off the frontier). Raises ValueError for a setting the
    sweep did not measure."""
    rows = []
    for bits in widths:
        match = sweep[(sweep["model"] == dense.name) & (sweep["weights"] == weights) & (sweep["bits"] == bits)]
        if match.empty:
            raise ValueError(f"weights={weights!r}, bits={bits!r}: the sweep has no such setting for {dense.name!r}")
        r = match.iloc[0]
        row = dataclasses.replace(dense, name=f"{dense.name} {bits}-bit", technique=f"fake-quantized, {weights}",
                                  setting=f"{bits} bits", accuracy=float(r["accuracy"]),
                                  perplexity=float(r["perplexity"]), predictions=int(r["predictions"]),
                                  size_mb=float(r["MB"]))
        rows.append(with_dense_speed(row, dense))
    return rows


def model_rows(real: Mapping[tuple[str, str], Result], sweep: pd.DataFrame, name: str, techniques: Iterable[str],
               weights: str, widths: Iterable[int]) -> list[Result]:
    """Model ``name``'s measured rows for ``techniques`` (from ``runtime_rows``), then its fake-quantized rows at
    ``widths`` of the ``weights`` granularity (``simulated_rows``, at its "PyTorch float32" row's latency)."""
    rows = [real[name, technique] for technique in techniques]
    return rows + simulated_rows(sweep, real[name, "PyTorch float32"], weights, widths)


def frontier_takeaway(rows: Sequence[Result], label: str) -> str:
    """Name the Pareto frontier's rows, fastest first, with each step's accuracy gain over the previous one.

    The frontier is ``lmlab.measure.plots.pareto_frontier``'s (simulated rows never on it); a gain under two
    standard errors is called within noise.
    """
    frontier = pareto_frontier(rows)
    if not frontier:
        raise ValueError("rows has no row with a measured speed: the frontier is empty")
    steps = [frontier[0].name]
    for slower, faster in zip(frontier[1:], frontier):
        gain = slower.accuracy - faster.accuracy
        noise = "within noise" if within_noise(slower, faster) else "beyond noise"
        steps.append(f"{slower.name} ({gain:+.4f}, {noise})")
    return f"{label}: on the frontier, fastest first: " + ", then ".join(steps)


# ---------------------------------------------------------------- the trade-off plot, every point named


def tradeoff_figure(panels: Sequence[tuple]) -> Figure:
    """Draw trade-off plots (``lmlab.measure.plots.tradeoff_plot``), one per (rows, title, unit[, x label]).

    Every point is named.

    The first panel spans the top row, the others share the row below. Each accuracy axis is labelled in its panel's
    unit (word, letter or sub-word token: different units never share an axis); a technique has one colour in every
    panel; the milliseconds axis has plain tick labels (``log_ticks``); each legend sits under its plot, and
    ``label_points`` names every point once the layout is final. Raises ValueError for no panel or an unknown unit.
    """
    if not panels:
        raise ValueError("panels is empty: give at least one (rows, title, unit)")
    for panel in panels:
        if panel[2] not in UNITS:
            raise ValueError(f"unit={panel[2]!r} is unknown; use one of {UNITS}")
    techniques = list(dict.fromkeys(r.technique for panel in panels for r in panel[0]))
    palette = {technique: plt.get_cmap("tab10")(i % 10) for i, technique in enumerate(techniques)}
    fig = plt.figure(figsize=(19, 7.5 if len(panels) == 1 else 16))
    grid = fig.add_gridspec(1 if len(panels) == 1 else 2, max(len(panels) - 1, 1))
    axes = [fig.add_subplot(grid[0, :])] + [fig.add_subplot(grid[1, i]) for i in range(len(panels) - 1)]
    for ax, (rows, title, unit, *xlabel) in zip(axes, panels):
        tradeoff_plot(rows, ax=ax, title=title, xlabel=xlabel[0] if xlabel else None, ylabel=f"next-{unit} accuracy")
        for text in list(ax.texts):  # the frontier's names: label_points names every point instead
            text.remove()
        _recolour(ax, palette)
        low, high = ax.get_xlim()
        ax.xaxis.set_major_locator(FixedLocator(log_ticks(low, high)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(low, high)
        handles, labels = ax.get_legend_handles_labels()
        legend = ax.get_legend()
        assert legend is not None  # tradeoff_plot draws one; it is redrawn below the axes
        legend.remove()
        ax.legend(handles, labels, fontsize=FONT_SIZE - 3, loc="upper center", bbox_to_anchor=(0.5, -0.12),
                  ncol=3 if ax is axes[0] else 2)
    fig.tight_layout(h_pad=2)
    for ax, panel in zip(axes, panels):
        label_points(ax, panel[0])
    return fig


def _recolour(ax: Axes, palette: Mapping[str, ColorType]) -> None:
    """Give every error-bar series on ``ax`` its technique's colour from ``palette`` (hollow markers stay hollow)."""
    for container in ax.containers:
        label = container.get_label()
        assert isinstance(container, ErrorbarContainer) and label is not None  # tradeoff_plot's labelled series
        technique = label.removesuffix(" (speed simulated)")
        if technique not in palette:
            continue
        color = palette[technique]
        data_line, caps, bars = container.lines
        data_line.set_color(color)
        data_line.set_markeredgecolor(color)
        if label == technique:
            data_line.set_markerfacecolor(color)
        for cap in caps:  # a cap is a marker: its colour is the marker's edge
            cap.set_color(color)
            cap.set_markeredgecolor(color)
        for bar in bars:
            bar.set_color(color)


# Where a name may go, in points from its point: beside it first, then above and below, then further out.
_RINGS = (10, 24, 40, 58)
_DIRECTIONS = ((1, 0.3), (1, -0.3), (-1, 0.3), (-1, -0.3), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1))


def label_points(ax: Axes, rows: Sequence[Result], x: str = "median_ms", y: str = "accuracy",
                 font_size: int = FONT_SIZE - 2) -> None:
    """Name every row's point where the name covers no other name, no point, no error bar and stays inside the axes.

    Candidates are tried nearest first (beside, above, below, then further out); a name away from its point gets a
    thin line back to it. Where every candidate collides, the one overlapping least is used.
    """
    fig = ax.figure
    ax.autoscale_view()
    fig.canvas.draw()  # fixes the layout and limits, so pixel positions hold
    renderer = cast(FigureCanvasAgg, fig.canvas).get_renderer()  # Agg's canvas (inline too) has a renderer
    to_pixels = ax.transData.transform
    scale = fig.dpi / 72  # points to pixels
    box = ax.get_window_extent()
    obstacles = _drawn_boxes(ax, rows, x, y, scale)
    placed: list[tuple[float, float, float, float]] = []
    font = FontProperties(size=font_size)
    for r in sorted(rows, key=lambda r: (getattr(r, x), getattr(r, y))):
        px, py = to_pixels((getattr(r, x), getattr(r, y)))
        width, height, _ = renderer.get_text_width_height_descent(r.name, font, ismath=False)
        best: tuple[float, tuple[float, float, float, float], int] | None = None  # (cost, box, ring)
        for ring in _RINGS:
            for dx, dy in _DIRECTIONS:
                ox, oy = dx * ring * scale, dy * ring * scale
                left = px + ox - (width if dx < 0 else width / 2 if dx == 0 else 0)
                bottom = py + oy - (height / 2 if abs(dy) < 1 else height if dy < 0 else 0)
                candidate = (left, bottom, left + width, bottom + height)
                cost = sum(_overlap(candidate, o) for o in obstacles + placed)
                if not (box.x0 <= candidate[0] and candidate[2] <= box.x1 and box.y0 <= candidate[1]
                        and candidate[3] <= box.y1):
                    cost += 1e9
                if best is None or cost < best[0]:
                    best = (cost, candidate, ring)
                if cost == 0:
                    break
            assert best is not None  # _DIRECTIONS is not empty
            if best[0] == 0:
                break
        assert best is not None  # _RINGS is not empty
        _, candidate, ring = best
        placed.append(candidate)
        offset = ((candidate[0] - px) / scale, (candidate[1] - py) / scale)  # points from the point
        ax.annotate(r.name, (getattr(r, x), getattr(r, y)), xytext=offset, textcoords="offset points", ha="left",
                    va="bottom", fontsize=font_size, annotation_clip=False,
                    arrowprops=dict(arrowstyle="-", lw=0.7, color="gray", shrinkA=2, shrinkB=5)
                    if ring > _RINGS[0] else None)


def _drawn_boxes(ax: Axes, rows: Sequence[Result], x: str, y: str,
                 scale: float) -> list[tuple[float, float, float, float]]:
    """Return the pixel boxes (left, bottom, right, top) a label must not cover: every row's marker, its error bars,
    and the steps of the rows' Pareto frontier. ``scale`` is the figure's pixels per point."""
    to_pixels = ax.transData.transform
    obstacles = []
    for r in rows:
        px, py = to_pixels((getattr(r, x), getattr(r, y)))
        obstacles.append((px - 7 * scale, py - 7 * scale, px + 7 * scale, py + 7 * scale))  # the marker
        se = (r.accuracy_se or 0.0) if y == "accuracy" else 0.0
        if se:
            _, low = to_pixels((getattr(r, x), getattr(r, y) - se))
            _, high = to_pixels((getattr(r, x), getattr(r, y) + se))
            obstacles.append((px - 2 * scale, low, px + 2 * scale, high))  # the vertical error bar
        if x == "median_ms" and r.p90_ms > r.median_ms:
            right, _ = to_pixels((r.p90_ms, getattr(r, y)))
            obstacles.append((px, py - 2 * scale, right, py + 2 * scale))  # the p90 bar
    steps = [to_pixels((getattr(r, x), getattr(r, y))) for r in pareto_frontier(rows, x, y)]
    for (x0, y0), (x1, y1) in zip(steps, steps[1:]):  # the frontier's steps: along, then up (or down)
        obstacles.append((x0, y0 - 1.5 * scale, x1, y0 + 1.5 * scale))
        obstacles.append((x1 - 1.5 * scale, min(y0, y1), x1 + 1.5 * scale, max(y0, y1)))
    return obstacles


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """The area two (left, bottom, right, top) boxes share, in square pixels."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


# ---------------------------------------------------------------- what one prediction costs


def multiply_adds(model: nn.Module, positions: int = 1) -> int:
    """The multiply-adds of ``model``'s weight matrices for ``positions`` token positions: Σ out · in per position.

    Counts nn.Linear and GPT-2 ``Conv1D`` (an output layer tied to the embedding included); embedding lookups are
    reads, not products, and attention's own products (queries against keys) are left out.
    """
    check_int("positions", positions, 1)
    return positions * sum(layer.matrix.numel() for layer in weight_layers(model, embeddings=False))


def _finish(ax: Axes, xlabel: str, ylabel: str, title: str, legend_loc: LegendLocType = "best") -> None:
    ax.set_xlabel(xlabel, fontsize=FONT_SIZE)
    ax.set_ylabel(ylabel, fontsize=FONT_SIZE)
    ax.set_title(title, fontsize=FONT_SIZE)
    ax.tick_params(labelsize=FONT_SIZE - 2)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=FONT_SIZE - 3, loc=legend_loc)
