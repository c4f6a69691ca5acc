"""Uncertainty: standard errors, bootstrap intervals over documents, and the one rule for "within noise".

Introduced in notebooks/02_neural_language_models.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lmlab.measure.results import Result


def paired_nll_interval(first_nll, second_nll, tokens, level: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float, float]:
    """Compare two models scored on the same documents: Δ = Σ nll_first / Σ tokens − Σ nll_second / Σ tokens.

    ``first_nll[d]`` and ``second_nll[d]`` are document d's summed −ln P under each model over its ``tokens[d]``
    predictions (``document_scores``). Returns (Δ, low, high) in nats per prediction, the interval a paired
    bootstrap over documents at ``level``: each resample draws documents with replacement and recomputes Δ on
    them, so what the two models share (hard verses, easy verses) cancels. Δ < 0: ``first`` has the lower loss.
    Raises ValueError for arrays of different lengths or fewer than two documents, a level outside (0, 1) or
    resamples < 100.
    """
    first_nll, second_nll = np.asarray(first_nll, dtype=np.float64), np.asarray(second_nll, dtype=np.float64)
    count = np.asarray(tokens, dtype=np.float64)
    if not first_nll.shape == second_nll.shape == count.shape or first_nll.ndim != 1 or len(count) < 2:
        raise ValueError(f"first_nll {first_nll.shape}, second_nll {second_nll.shape} and tokens {count.shape} must "
                         "hold one entry per document, for the same documents, at least two")
    check_bootstrap(level, resamples)
    gap = first_nll - second_nll  # (docs,)
    picks = np.random.default_rng(seed).integers(0, len(gap), size=(resamples, len(gap)))  # (resamples, docs)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(gap[picks].sum(1) / count[picks].sum(1), [tail, 100 - tail])
    return float(gap.sum() / count.sum()), float(low), float(high)



def accuracy_noise(a: Result, b: Result, se_multiple: float = 2.0) -> float:
    """The gap two rows' accuracies must exceed to be called different: ``se_multiple`` · (se_a + se_b), where their
    ± ``se_multiple`` standard-error intervals stop overlapping (a row without its count of predictions adds 0)."""
    return se_multiple * ((a.accuracy_se or 0.0) + (b.accuracy_se or 0.0))



def within_noise(a: Result, b: Result, se_multiple: float = 2.0) -> bool:
    """True when the two rows' accuracy intervals (± ``se_multiple`` SE) overlap: their difference is called noise."""
    return abs(a.accuracy - b.accuracy) <= accuracy_noise(a, b, se_multiple)



def perplexity_interval(nll_nats: Sequence[float], tokens: Sequence[int], level: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """A bootstrap confidence interval for a perplexity, resampling whole documents.

    ``nll_nats[d]`` is document d's summed −ln P over its ``tokens[d]`` predictions; the perplexity is
    exp(Σ nll / Σ tokens). Documents, not tokens, are the independent units (words in a verse depend on each
    other), so each resample draws documents with replacement. Returns the (low, high) percentiles at ``level``.
    Raises ValueError for fewer than two documents, lengths that differ, a level outside (0, 1) or resamples < 100.
    """
    import numpy as np

    nll, count = np.asarray(nll_nats, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    if nll.shape != count.shape or nll.ndim != 1 or len(nll) < 2:
        raise ValueError(f"nll_nats has shape {nll.shape} and tokens {count.shape}; give one entry per document, "
                         "at least two documents")
    check_bootstrap(level, resamples)
    picks = np.random.default_rng(seed).integers(0, len(nll), size=(resamples, len(nll)))  # (resamples, docs)
    values = np.exp(nll[picks].sum(1) / count[picks].sum(1))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)



def check_bootstrap(level: float, resamples: int) -> None:
    """Raise ValueError unless a bootstrap's ``level`` is in (0, 1) and it draws at least 100 ``resamples``."""
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} is out of range; use a fraction in (0, 1), e.g. 0.95")
    if resamples < 100:
        raise ValueError(f"resamples={resamples!r} is out of range; use at least 100")
