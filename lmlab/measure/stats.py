"""Uncertainty: standard errors, bootstrap intervals over documents, and the one rule for "within noise".

Introduced in notebooks/02_neural_language_models.ipynb. Every chapter that calls a difference "noise" calls
``compare`` (or ``within_noise``, its entry point for two results rows); nothing else in lmlab decides it.

What the rule assumes:
- Predictions are not independent: the words of one verse share its topic, names and style, so a model that misses
  one word of a hard verse tends to miss the next. The document (a verse, a name) is the independent unit, and the
  bootstrap intervals here resample whole documents (``document_picks``), never single predictions.
- The binomial standard error √(p(1 − p)/n) (``binomial_se``) treats the n predictions as independent, so it is
  optimistic (too small) when they cluster in documents; it is what a row that kept only its accuracy and n can say.
- Two models scored on the same documents share their hard and easy documents; a **paired** bootstrap of the
  difference (one resample of documents, both models rescored on it) cancels what they share and gives a narrower,
  honest interval. Rows that share no items can only be compared **unpaired**: their estimates are independent,
  so the standard error of the difference is √(se₁² + se₂²).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lmlab.measure.timing import Timing

SE_MULTIPLE = 2.0  # the unpaired rule's width: ±2 standard errors of a difference, about a 95% normal interval
# Below this many shared documents a percentile bootstrap's interval is too narrow to trust (with 10 binary items a
# 4-to-0 split gets a bootstrap interval clear of 0, where an exact sign test gives p = 0.125): too few to call.
MIN_DOCUMENTS = 20


def binomial_se(accuracy: float, n: int) -> float:
    """Return the binomial standard error of an accuracy measured on ``n`` predictions: se = √(p (1 − p) / n).

    It treats the predictions as independent, so it is optimistic when they come in documents (see the module).
    Raises ValueError for an accuracy outside [0, 1] or n < 1.
    """
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy={accuracy!r} is out of range; use a fraction in [0, 1]")
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n={n!r} is out of range; use a whole number of predictions >= 1")
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


def check_bootstrap(level: float, resamples: int) -> None:
    """Raise ValueError unless a bootstrap's ``level`` is in (0, 1) and it draws at least 100 ``resamples``."""
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} is out of range; use a fraction in (0, 1), e.g. 0.95")
    if resamples < 100:
        raise ValueError(f"resamples={resamples!r} is out of range; use at least 100")


def document_picks(documents: int, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Draw ``resamples`` bootstrap samples of ``documents`` document indices, with replacement, seeded.

    The one resampler every interval here uses: row r of the (resamples, documents) int array is one resample of the
    slice. Two models rescored on the same row is the paired bootstrap. Raises ValueError for documents < 2 or
    resamples < 100.
    """
    if documents < 2:
        raise ValueError(f"documents={documents!r} is out of range; a bootstrap needs at least two documents")
    check_bootstrap(0.5, resamples)
    return np.random.default_rng(seed).integers(0, documents, size=(resamples, documents))  # (resamples, docs)


def _per_document(name: str, values, tokens) -> tuple[np.ndarray, np.ndarray]:
    """Check ``values`` (per document) against ``tokens`` (per document) and return both as float64 arrays."""
    values, count = np.asarray(values, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    if values.shape != count.shape or values.ndim != 1 or len(values) < 2:
        raise ValueError(f"{name} has shape {values.shape} and tokens {count.shape}; give one entry per document, "
                         "at least two documents")
    if (count <= 0).any():
        raise ValueError(f"tokens holds {count.min():g}; every document needs at least one prediction")
    return values, count


def _ratio_interval(values: np.ndarray, count: np.ndarray, level: float, resamples: int, seed: int,
                    transform=None) -> tuple[float, float, float]:
    """f(Σ values / Σ tokens) and its bootstrap percentile interval over ``document_picks``: (point, low, high).

    ``transform`` f (e.g. np.exp for a perplexity) is applied to every resample before the percentiles are taken.
    """
    check_bootstrap(level, resamples)
    picks = document_picks(len(values), resamples, seed)  # (resamples, docs)
    ratios = values[picks].sum(1) / count[picks].sum(1)  # (resamples,)
    point = values.sum() / count.sum()
    if transform is not None:
        ratios, point = transform(ratios), transform(point)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(point), float(low), float(high)


def perplexity_interval(nll_nats, tokens, level: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """Return a bootstrap interval over documents for a perplexity: PP = exp(Σ_d nll_d / Σ_d n_d).

    ``nll_nats[d]`` is document d's summed −ln P over its ``tokens[d]`` predictions (``document_scores``). Each
    resample draws documents with replacement (``document_picks``); returns the (low, high) percentiles at
    ``level``. Raises ValueError for fewer than two documents, lengths that differ, a level outside (0, 1) or
    resamples < 100.
    """
    nll, count = _per_document("nll_nats", nll_nats, tokens)
    _, low, high = _ratio_interval(nll, count, level, resamples, seed, transform=np.exp)
    return low, high


def accuracy_interval(correct, tokens, level: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """Return a bootstrap interval over documents for an accuracy: p = Σ_d correct_d / Σ_d n_d.

    ``correct[d]`` is how many of document d's ``tokens[d]`` predictions were right (``document_scores``). Unlike
    ``binomial_se`` it lets the predictions of one document depend on each other. Returns the (low, high)
    percentiles at ``level``. Raises ValueError as ``perplexity_interval`` does.
    """
    right, count = _per_document("correct", correct, tokens)
    _, low, high = _ratio_interval(right, count, level, resamples, seed)
    return low, high


def _paired(first_name: str, first, second, tokens) -> tuple[np.ndarray, np.ndarray]:
    """Check two models' per-document values on the same documents; return first − second and the counts."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    count = np.asarray(tokens, dtype=np.float64)
    if not first.shape == second.shape == count.shape or first.ndim != 1 or len(count) < 2:
        second_name = first_name.replace("first", "second")
        raise ValueError(f"{first_name} {first.shape}, {second_name} {second.shape} and tokens {count.shape} must "
                         "hold one entry per document, for the same documents, at least two")
    if (count <= 0).any():
        raise ValueError(f"tokens holds {count.min():g}; every document needs at least one prediction")
    return first - second, count


def paired_nll_interval(first_nll, second_nll, tokens, level: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float, float]:
    """Compare two models scored on the same documents: Δ = Σ nll_first / Σ tokens − Σ nll_second / Σ tokens.

    ``first_nll[d]`` and ``second_nll[d]`` are document d's summed −ln P under each model over its ``tokens[d]``
    predictions (``document_scores``). Returns (Δ, low, high) in nats per prediction, the interval a paired
    bootstrap over documents at ``level``: each resample (``document_picks``) draws documents with replacement and
    recomputes Δ on them, so what the two models share (hard verses, easy verses) cancels. Δ < 0: ``first`` has the
    lower loss. Raises ValueError for arrays of different lengths or fewer than two documents, a level outside
    (0, 1) or resamples < 100.
    """
    gap, count = _paired("first_nll", first_nll, second_nll, tokens)
    return _ratio_interval(gap, count, level, resamples, seed)


def paired_accuracy_interval(first_correct, second_correct, tokens, level: float = 0.95, resamples: int = 2000,
                             seed: int = 0) -> tuple[float, float, float]:
    """Compare two models' accuracies on the same documents: Δ = (Σ correct_first − Σ correct_second) / Σ tokens.

    The paired bootstrap of ``paired_nll_interval``, on right guesses per document. Returns (Δ, low, high) as a
    fraction of predictions; Δ > 0: ``first`` is more accurate. Raises ValueError as ``paired_nll_interval`` does.
    """
    gap, count = _paired("first_correct", first_correct, second_correct, tokens)
    return _ratio_interval(gap, count, level, resamples, seed)


@dataclass(frozen=True)
class Comparison:
    """The difference Δ = first − second with its interval (low, high), and whether that interval holds 0."""

    delta: float
    low: float
    high: float
    paired: bool
    documents: int | None = None  # how many shared documents a paired comparison resampled

    @property
    def too_few(self) -> bool:
        """True for a paired comparison on fewer than ``MIN_DOCUMENTS`` documents: its bootstrap is not trusted."""
        return self.paired and self.documents is not None and self.documents < MIN_DOCUMENTS

    @property
    def within_noise(self) -> bool:
        """True when the interval of the difference holds 0 (the data cannot tell the two apart), or when too few
        documents were shared to trust the interval."""
        return self.too_few or self.low <= 0.0 <= self.high

    @property
    def verdict(self) -> str:
        """"within noise", or "higher, beyond noise" (first above second) or "lower, beyond noise"."""
        if self.too_few:
            return f"within noise (too few documents to call: {self.documents} < {MIN_DOCUMENTS})"
        if self.within_noise:
            return "within noise"
        return ("higher" if self.low > 0 else "lower") + ", beyond noise"

    @property
    def how(self) -> str:
        """What the interval is, for a printed line: a paired bootstrap or ±2 SE of the difference."""
        return "paired bootstrap over documents" if self.paired else "±2 SE of the difference"


def compare(first, second, tokens=None, *, se: tuple[float, float] | None = None, se_multiple: float = SE_MULTIPLE,
            level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Comparison:
    """Compare two measurements of one quantity with the one rule for "within noise": the interval of Δ holds 0.

    Paired, when both were scored on the same documents: give ``first`` and ``second`` per document (right guesses,
    or summed −ln P) and ``tokens`` per document; Δ = Σ first / Σ tokens − Σ second / Σ tokens and its interval the
    paired bootstrap over documents at ``level`` (``paired_accuracy_interval``, which is the same computation as
    ``paired_nll_interval``). Use this whenever the items are shared: it is narrower, and it does not assume that
    predictions inside a document are independent. With fewer than ``MIN_DOCUMENTS`` shared documents the
    bootstrap interval is too narrow to trust, and the comparison says so and counts as within noise.

    Unpaired, for rows that share no items (or kept only their summary): give ``first`` and ``second`` as numbers and
    ``se`` = (se₁, se₂), their standard errors; Δ = first − second and the interval Δ ± k·√(se₁² + se₂²), k =
    ``se_multiple`` (2: about 95% for a normal Δ). For independent estimates Var(Δ) = se₁² + se₂², so this is two
    standard errors *of the difference*; the older rule |Δ| ≤ 2·(se₁ + se₂) (the two ±2 SE bars overlap) is a
    test at about 2.8 standard errors of Δ when se₁ ≈ se₂, and misses real gaps. With binomial SEs it inherits their
    optimism (predictions treated as independent).

    Raises ValueError when neither or both of ``tokens`` and ``se`` are given, for a negative or non-finite SE or
    se_multiple <= 0, and as ``paired_nll_interval`` does for per-document arrays.
    """
    if tokens is not None and se is None:
        gap, count = _paired("first", first, second, tokens)
        return Comparison(*_ratio_interval(gap, count, level, resamples, seed), paired=True, documents=len(gap))
    if se is None or tokens is not None:
        raise ValueError("give tokens (per-document scores on shared documents: paired) or se=(se_first, se_second) "
                         f"(unpaired), exactly one; got tokens={'None' if tokens is None else 'arrays'}, se={se!r}")
    if not (math.isfinite(se_multiple) and se_multiple > 0):
        raise ValueError(f"se_multiple={se_multiple!r} is out of range; use a number of standard errors > 0, e.g. 2")
    if len(se) != 2 or not all(math.isfinite(s) and s >= 0 for s in se):
        raise ValueError(f"se={se!r} is out of range; give two finite standard errors >= 0")
    delta, half = float(first) - float(second), se_multiple * math.hypot(*se)
    return Comparison(delta, delta - half, delta + half, paired=False)


def compare_to_best(scores: Mapping[str, Mapping[str, np.ndarray]], key: str = "correct",
                    higher_is_better: bool = True, **options) -> tuple[str, dict[str, Comparison]]:
    """Find the best of several models scored on the same documents, and compare it with each, paired.

    ``scores[name]`` holds per-document arrays, ``key`` (e.g. "correct" or "nll_nats") and "tokens", as
    ``lmlab.models.scoring.document_scores`` returns them; the best has the highest (or, with
    ``higher_is_better=False``, lowest) Σ key / Σ tokens. Returns (its name, {name: compare(best, name)}) for every
    model, the best included (Δ = 0, within noise). ``options`` go to ``compare``. Raises ValueError for no models,
    a missing key, or models scored on different documents (as ``compare`` does).
    """
    if not scores:
        raise ValueError("scores is empty; give per-document scores of at least one model")
    missing = [name for name, s in scores.items() if key not in s or "tokens" not in s]
    if missing:
        raise ValueError(f"key={key!r}: the scores of {missing} lack it or their tokens")
    sign = 1.0 if higher_is_better else -1.0
    best = max(scores, key=lambda name: sign * np.sum(scores[name][key]) / np.sum(scores[name]["tokens"]))
    top = scores[best]
    return best, {name: compare(top[key], s[key], s["tokens"], **options) for name, s in scores.items()}


class Scored(Protocol):
    """What ``within_noise`` reads from a row (``lmlab.measure.results.Result``): its accuracy and standard error."""

    @property
    def accuracy(self) -> float: ...

    @property
    def accuracy_se(self) -> float | None: ...


def _row_se(row: Scored) -> float:
    return row.accuracy_se or 0.0  # a row without its count of predictions claims no uncertainty of its own


def compare_rows(a: Scored, b: Scored, se_multiple: float = SE_MULTIPLE) -> Comparison:
    """Compare two results rows' accuracies, Δ = a − b, by ``compare``'s unpaired rule: Δ ± k·√(se_a² + se_b²).

    A row keeps only its accuracy and its count of predictions, not per-document scores, so this is the rule for
    rows; where both models' ``document_scores`` on the same documents are at hand, call ``compare`` with them
    (paired). A row without its count (accuracy_se None) adds no uncertainty. Raises ValueError for se_multiple <= 0.
    """
    return compare(a.accuracy, b.accuracy, se=(_row_se(a), _row_se(b)), se_multiple=se_multiple)


def accuracy_noise(a: Scored, b: Scored, se_multiple: float = SE_MULTIPLE) -> float:
    """Return the gap two rows' accuracies must exceed to be called different: k · √(se_a² + se_b²), k = se_multiple.

    Raises ValueError for se_multiple <= 0.
    """
    found = compare_rows(a, b, se_multiple)
    return (found.high - found.low) / 2


def within_noise(a: Scored, b: Scored, se_multiple: float = SE_MULTIPLE) -> bool:
    """Return True when two rows' accuracies differ by at most k · √(se_a² + se_b²) (``compare_rows``): noise.

    Raises ValueError for se_multiple <= 0.
    """
    return compare_rows(a, b, se_multiple).within_noise


def timing_verdict(reference: Timing, other: Timing, low_q: float = 10, high_q: float = 90) -> str:
    """Say whether ``other`` ran faster or slower than ``reference`` beyond the noise of their repeats.

    The rule for times: "within noise" when the [p``low_q``, p``high_q``] ranges of the two sets of samples overlap
    (the spread of repeated timings on a shared machine, not a statistical interval), else "faster" (other's p90
    below reference's p10) or "slower". Raises ValueError for percentiles outside [0, 100].
    """
    return _range_verdict((reference.percentile_ms(low_q), reference.percentile_ms(high_q)),
                          (other.percentile_ms(low_q), other.percentile_ms(high_q)))


def _range_verdict(reference: tuple[float, float], other: tuple[float, float]) -> str:
    """The one rule for times, on two (low, high) ranges: "faster" when other's high is below reference's low,
    "slower" when other's low is above reference's high, else "within noise" (the ranges overlap)."""
    if other[1] < reference[0]:
        return "faster"
    if other[0] > reference[1]:
        return "slower"
    return "within noise"


class Timed(Protocol):
    """What ``row_timing_verdict`` reads from a row (``lmlab.measure.results.Result``): its median and p90 in ms."""

    @property
    def median_ms(self) -> float: ...

    @property
    def p90_ms(self) -> float: ...


def _median_p90(name: str, row: Timed | tuple[float, float]) -> tuple[float, float]:
    median, p90 = row if isinstance(row, tuple) else (row.median_ms, row.p90_ms)
    if not (math.isfinite(median) and math.isfinite(p90) and 0 < median <= p90):
        raise ValueError(f"{name}=({median!r}, {p90!r}) is out of range; give (median, p90) ms with "
                         "0 < median <= p90")
    return median, p90


def row_timing_verdict(reference: Timed | tuple[float, float], other: Timed | tuple[float, float]) -> str:
    """``timing_verdict``'s rule for rows that kept only their median and p90 ms, not their samples.

    A row is a results row (``median_ms``, ``p90_ms``) or a stored pair (median, p90). The p10 each row lacks is
    taken as the median mirrored, p10 ≈ 2·median − p90: timings are skewed to the right, so the true p10 lies
    nearer the median and this range is wider than the true one (the rule errs towards "within noise"). Then the
    rule of ``timing_verdict``: "faster" when other's p90 is below reference's p10, "slower" when other's p10 is
    above reference's p90, else "within noise". Raises ValueError for a time that is not finite and > 0, or a p90
    below its median.
    """
    ranges = []
    for name, row in (("reference", reference), ("other", other)):
        median, p90 = _median_p90(name, row)
        ranges.append((2 * median - p90, p90))
    return _range_verdict(*ranges)
