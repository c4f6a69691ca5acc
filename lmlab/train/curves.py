"""Training curves over several seeds: a band per setting, the time to reach a target loss, and an honest verdict.

Introduced in notebooks/03_gradient_descent.ipynb. One seed's curve is one draw: another seed (other initial
weights, another batch order) gives another curve. So a setting is run under several seeds and drawn as a band
(min–max over the seeds); two settings run under the same seeds are compared paired by seed, with the one noise
rule of ``lmlab.measure.stats.compare`` (``seed_comparison``, ``seed_verdict``).

The time to target of one run is the first evaluated step whose validation loss is at or below the target,
and the training milliseconds (evaluations excluded) up to that step; a run that never gets there is
"not reached" (None), which ranks after every number.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lmlab.measure.plots import FONT_SIZE, finish_axes
from lmlab.measure.stats import Comparison, compare
from lmlab.measure.timing import Timing, format_ms
from lmlab.train.loop import History


@dataclass(frozen=True)
class TargetTime:
    """How long one setting took to bring its validation loss to ``target_nats``, one entry per seed."""

    label: str
    target_nats: float
    steps: tuple[int | None, ...]  # the first evaluated step at or below the target; None: not reached
    train_ms: tuple[float | None, ...]  # training milliseconds (evaluations excluded) up to that step
    ms_per_step: tuple[float, ...]  # training milliseconds per step over the whole run

    @property
    def reached(self) -> int:
        """How many seeds reached the target."""
        return sum(s is not None for s in self.steps)


def first_at_or_below(history: History, target_nats: float) -> int | None:
    """Return the index of the first evaluation whose validation loss is <= ``target_nats``, or None."""
    return next((i for i, loss in enumerate(history.valid_loss) if loss <= target_nats), None)


def time_to_target(runs: dict[str, Sequence[History]], target_nats: float) -> list[TargetTime]:
    """Return each setting's time to reach a validation loss of ``target_nats``, per seed (see the module's note).

    ``runs`` maps a label to one History per seed (``lmlab.train.loop.compare_optimizers``). Raises ValueError for a
    target that is not a finite number > 0, or a setting without histories or with an empty history.
    """
    if isinstance(target_nats, bool) or not isinstance(target_nats, (int, float)) or not math.isfinite(target_nats) \
            or target_nats <= 0:
        raise ValueError(f"target_nats={target_nats!r} is out of range; use a finite cross-entropy > 0")
    times = []
    for label, histories in runs.items():
        if not histories or any(not h.step for h in histories):
            raise ValueError(f"runs[{label!r}] has no evaluations; train with at least one evaluation per seed")
        found = [first_at_or_below(h, target_nats) for h in histories]
        times.append(TargetTime(
            label, float(target_nats),
            tuple(None if i is None else h.step[i] for h, i in zip(histories, found)),
            tuple(None if i is None else h.train_ms[i] for h, i in zip(histories, found)),
            tuple(h.train_ms[-1] / h.step[-1] for h in histories)))
    return times


def steps_to_stay_below(values: Sequence[float], threshold: float) -> int | None:
    """Return the first step t (counting from 1) after which ``values`` stay below ``threshold`` to the end, or None.

    t = min { t : values[s] < threshold for every s >= t }. Unlike the first step below the threshold, a dip that
    comes back up (the bottom of an oscillation) does not count. "To the end" means to the end of the values given:
    a longer run could still leave. Raises ValueError for no values or a threshold that is not a finite number.
    """
    if not len(values):
        raise ValueError("values is empty; give the quantity at each step")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"threshold={threshold!r} is out of range; use a finite number")
    settled = None
    for t in range(len(values), 0, -1):
        if not values[t - 1] < threshold:
            break
        settled = t
    return settled


def seed_comparison(first: Sequence[float], second: Sequence[float]) -> Comparison:
    """Compare two settings run under the same seeds, paired by seed, with ``lmlab.measure.stats.compare``'s rule.

    Seed i gave both settings the same starting weights and batch order, so the per-seed differences
    dᵢ = firstᵢ − secondᵢ cancel what the seed does to both. Δ = mean dᵢ, its standard error
    SE = sd(d) / √n (n seeds, sample standard deviation), and the interval Δ ± 2 SE: ``compare(mean first,
    mean second, se=(SE, 0))``, the unpaired rule applied to the one estimate Δ. With few seeds SE is itself
    uncertain and ±2 SE is a little narrow (Student's t with n − 1 degrees of freedom would be wider).
    Raises ValueError for fewer than two seeds or lists of different lengths.
    """
    if len(first) != len(second) or len(first) < 2:
        raise ValueError(f"first has {len(first)} seeds and second {len(second)}; give the same seeds, at least two")
    gaps = [a - b for a, b in zip(first, second)]
    se = statistics.stdev(gaps) / math.sqrt(len(gaps))
    return compare(statistics.fmean(first), statistics.fmean(second), se=(se, 0.0))


def seed_verdict(values: dict[str, Sequence[float | None]], what: str,
                 show: Callable[[float], str] = "{:.4g}".format) -> str:
    """Name the setting with the lowest mean ``what`` over seeds and compare it with each other, paired by seed.

    Each comparison is ``seed_comparison``: the difference of the means with ±2 standard errors of the per-seed
    differences, and "within noise" when that interval holds 0. None stands for "not reached"; a setting with
    one has no mean, ranks last and is not compared. Raises ValueError for fewer than two settings.
    """
    if len(values) < 2:
        raise ValueError(f"values has {len(values)} setting(s); a verdict compares at least two")
    def mean(label: str) -> float:
        return math.inf if any(v is None for v in values[label]) else statistics.fmean(values[label])  # type: ignore
    order = sorted(values, key=mean)
    best, seeds = order[0], len(values[order[0]])
    if math.isinf(mean(best)):
        return f"every setting missed it on some seed, so none has a mean {what}"
    lines = [f"lowest mean {what} over {seeds} seeds: {best}: {show(mean(best))}"]
    for other in order[1:]:
        if math.isinf(mean(other)):
            missed = sum(v is None for v in values[other])
            lines.append(f"  {other}: not reached on {missed} of {len(values[other])} seeds, not compared")
            continue
        found = seed_comparison(values[best], values[other])  # type: ignore[arg-type]
        lines.append(f"  {other}: {show(mean(other))}; difference {show(found.delta)} "
                     f"({show(found.low)} to {show(found.high)}): {best} {found.verdict}")
    lines.append(f"  (difference: {best} minus the other, paired by seed, ± 2 standard errors; noise if it holds 0)")
    return "\n".join(lines)


def format_target_table(times: Sequence[TargetTime]) -> str:
    """Format time-to-target rows: steps per seed, the training milliseconds to the target over the seeds that
    reached it (median, and min to max), and milliseconds per step.

    Times are printed with their unit at a fixed width (``lmlab.measure.timing.format_ms``) so nbval's sanitizer can
    mask them, and summarised over seeds so that a row fits a projector's width. Raises ValueError for no rows.
    """
    if not times:
        raise ValueError("times is empty; pass time_to_target's rows")
    width = max(len("setting"), *(len(t.label) for t in times))
    steps = [", ".join("not reached" if s is None else str(s) for s in t.steps) for t in times]
    steps_width = max(len("steps per seed"), *(len(s) for s in steps))

    def summary(train_ms: Sequence[float | None]) -> str:
        reached = [m for m in train_ms if m is not None]
        if not reached:
            return "not reached"
        middle = Timing.of(reached).median_ms
        return f"{format_ms(middle, 7)} ({format_ms(min(reached), 7)} to {format_ms(max(reached), 7)})"

    ms = [summary(t.train_ms) for t in times]
    ms_width = max(len("training time: median (range)"), *(len(m) for m in ms))
    lines = [f"target: validation cross-entropy <= {times[0].target_nats:.3g} nats, {len(times[0].steps)} seeds",
             f"{'setting':>{width}}  reached  {'steps per seed':<{steps_width}}  "
             f"{'training time: median (range)':<{ms_width}}  {'per step':>8}"]
    for t, seed_steps, seed_ms in zip(times, steps, ms):
        lines.append(f"{t.label:>{width}}  {f'{t.reached} of {len(t.steps)}':<7}  {seed_steps:<{steps_width}}  "
                     f"{seed_ms:<{ms_width}}  {format_ms(Timing.of(t.ms_per_step).median_ms, 5)}")
    return "\n".join(lines)


def target_verdict(times: Sequence[TargetTime], by: str = "steps") -> str:
    """Say which setting reaches the target first on average, counted in ``by`` ("steps" or "ms"), and whether the
    lead is beyond noise (``seed_verdict``: paired by seed, the one noise rule).

    Steps depend only on the seeds; training milliseconds also on the machine and its load, so a verdict in
    milliseconds can change from one execution to the next. Raises ValueError for another ``by``.
    """
    target = f"{times[0].target_nats:.3g} nats"
    if by == "steps":
        return seed_verdict({t.label: t.steps for t in times}, f"steps to {target}", "{:.0f} steps".format)
    if by == "ms":
        return seed_verdict({t.label: t.train_ms for t in times}, f"training milliseconds to {target}",
                            lambda ms: format_ms(ms, 6).strip())
    raise ValueError(f"by={by!r} is not a unit of time to target; use 'steps' or 'ms'")


def loss_bands(runs: dict[str, Sequence[History]], title: str, target_nats: float | None = None):
    """Draw validation loss over seeds against steps (left) and training milliseconds (right); return the Figure.

    Each setting is a line (the mean over seeds) inside a band (min to max over seeds); against milliseconds each
    evaluation sits at its median time over the seeds. A dashed line marks ``target_nats``. Raises ValueError
    for no runs or seeds evaluated at different steps.
    """
    import matplotlib.pyplot as plt


    if not runs:
        raise ValueError("runs is empty; pass compare_optimizers' result")
    fig, axes = plt.subplots(1, 2, figsize=(16, 6.5), sharey=True)
    handles, labels = [], []
    for label, histories in runs.items():
        if len({tuple(h.step) for h in histories}) != 1:
            raise ValueError(f"runs[{label!r}]: the seeds were evaluated at different steps; use one eval_every")
        losses = list(zip(*(h.valid_loss for h in histories)))  # (evaluations, seeds)
        mean = [statistics.fmean(row) for row in losses]
        low, high = [min(row) for row in losses], [max(row) for row in losses]
        ms = [Timing.of(row).median_ms for row in zip(*(h.train_ms for h in histories))]  # over the seeds
        labels.append(f"{label} (mean; band: min to max of {len(histories)} seeds)")
        for ax, x in zip(axes, (histories[0].step, ms)):
            (line,) = ax.plot(x, mean, lw=2.5, label=labels[-1])
            band = ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
        handles.append((line, band))
    if target_nats is not None:
        for ax in axes:
            target = ax.axhline(target_nats, color="black", ls="--", lw=1.5)
        handles.append(target)
        labels.append(f"target: {target_nats:.3g} nats")
    finish_axes(axes[0], "training step", "validation cross-entropy (nats)", "against steps")
    finish_axes(axes[1], "training milliseconds (evaluations excluded; median over seeds)", "",
                "against milliseconds of training")
    axes[0].legend_.remove()
    axes[1].legend(handles, labels, fontsize=FONT_SIZE - 3, loc="upper right")
    fig.suptitle(title, fontsize=FONT_SIZE + 1)
    fig.tight_layout()
    return fig
