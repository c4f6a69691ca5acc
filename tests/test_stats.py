"""The statistics module: standard errors, bootstrap intervals over documents, and the one "within noise" rule."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lmlab.measure.results import Result
from lmlab.measure.stats import (
    Comparison,
    accuracy_interval,
    accuracy_noise,
    binomial_se,
    compare,
    compare_rows,
    compare_to_best,
    document_picks,
    paired_accuracy_interval,
    paired_nll_interval,
    row_timing_verdict,
    within_noise,
)


def clustered_slice(documents=300, seed=0):
    """Two models scored on the same documents whose difficulty varies a lot: model b is a little worse than a."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 40, size=documents).astype(float)
    easy = rng.beta(2, 3, size=documents)  # each document's share of words any model gets right
    first = rng.binomial(tokens.astype(int), easy).astype(float)
    second = np.maximum(first - rng.binomial(tokens.astype(int), 0.03), 0).astype(float)  # 3% fewer right
    return first, second, tokens


def test_binomial_standard_error_by_hand_and_by_scipy():
    assert binomial_se(0.25, 1200) == pytest.approx(math.sqrt(0.25 * 0.75 / 1200))  # 0.0125
    assert binomial_se(0.25, 1200) == pytest.approx(0.0125)
    assert binomial_se(0.3, 1000) == pytest.approx(scipy_stats.binom(1000, 0.3).std() / 1000)
    assert binomial_se(0.0, 10) == 0.0 and binomial_se(1.0, 10) == 0.0
    assert Result("a", "t", "", 0.25, 1.0, 1.2, predictions=1200).accuracy_se == binomial_se(0.25, 1200)
    with pytest.raises(ValueError, match="accuracy=1.5"):
        binomial_se(1.5, 10)
    with pytest.raises(ValueError, match="n=0"):
        binomial_se(0.5, 0)
    with pytest.raises(ValueError, match="n=2.5"):
        binomial_se(0.5, 2.5)


def test_one_resampler_draws_whole_documents_seeded():
    picks = document_picks(25, resamples=500, seed=3)
    assert picks.shape == (500, 25) and picks.min() >= 0 and picks.max() <= 24
    assert np.array_equal(picks, np.random.default_rng(3).integers(0, 25, size=(500, 25)))
    assert np.array_equal(picks, document_picks(25, resamples=500, seed=3))
    with pytest.raises(ValueError, match="documents=1"):
        document_picks(1)
    with pytest.raises(ValueError, match="resamples=10"):
        document_picks(5, resamples=10)


def test_accuracy_interval_is_the_direct_bootstrap_and_wider_than_binomial_on_clustered_words():
    first, _, tokens = clustered_slice()
    low, high = accuracy_interval(first, tokens, resamples=1000, seed=5)
    picks = np.random.default_rng(5).integers(0, len(tokens), size=(1000, len(tokens)))
    direct = first[picks].sum(1) / tokens[picks].sum(1)
    assert (low, high) == pytest.approx(tuple(np.percentile(direct, [2.5, 97.5])))
    p, n = first.sum() / tokens.sum(), int(tokens.sum())
    assert low < p < high
    # Documents of very different difficulty: the binomial SE (independent words) is too small by a clear margin.
    assert (high - low) / 2 > 1.5 * 1.96 * binomial_se(p, n)
    # Every word of every document equally likely right: the bootstrap agrees with the binomial SE.
    rng = np.random.default_rng(2)
    flat = rng.binomial(tokens.astype(int), 0.4).astype(float)
    low, high = accuracy_interval(flat, tokens)
    p = flat.sum() / tokens.sum()
    assert (high - low) / 2 == pytest.approx(1.96 * binomial_se(p, n), rel=0.2)
    with pytest.raises(ValueError, match="correct has shape"):
        accuracy_interval(flat[:-1], tokens)
    with pytest.raises(ValueError, match="tokens holds 0"):
        accuracy_interval([1.0, 2.0], [0, 3])


def test_paired_accuracy_interval_is_the_direct_paired_bootstrap():
    first, second, tokens = clustered_slice()
    delta, low, high = paired_accuracy_interval(first, second, tokens, resamples=500, seed=3)
    assert delta == pytest.approx((first.sum() - second.sum()) / tokens.sum())
    picks = np.random.default_rng(3).integers(0, len(tokens), size=(500, len(tokens)))
    direct = (first[picks].sum(1) - second[picks].sum(1)) / tokens[picks].sum(1)
    assert (low, high) == pytest.approx(tuple(np.percentile(direct, [2.5, 97.5])))
    # The nats version is the same computation on other numbers.
    assert paired_nll_interval(first, second, tokens, resamples=500, seed=3) == (delta, low, high)
    with pytest.raises(ValueError, match="first_correct"):
        paired_accuracy_interval(first, second[:-1], tokens)
    with pytest.raises(ValueError, match="level=0"):
        paired_accuracy_interval(first, second, tokens, level=0)


def test_paired_interval_is_narrower_than_unpaired_on_correlated_models():
    first, second, tokens = clustered_slice()
    paired = compare(first, second, tokens)
    # Unpaired: each model's own bootstrap interval, combined as independent: half-width √(h₁² + h₂²).
    half = [(high - low) / 2 for low, high in (accuracy_interval(first, tokens), accuracy_interval(second, tokens))]
    unpaired = compare(first.sum() / tokens.sum(), second.sum() / tokens.sum(), se=(half[0] / 2, half[1] / 2))
    assert paired.paired and not unpaired.paired
    assert paired.delta == pytest.approx(unpaired.delta)
    assert paired.high - paired.low < 0.5 * (unpaired.high - unpaired.low)
    assert paired.verdict == "higher, beyond noise" and unpaired.within_noise  # only pairing sees the 3% gap


def test_identical_models_are_within_noise_and_a_big_gap_is_not():
    first, second, tokens = clustered_slice()
    same = compare(first, first, tokens)
    assert same == Comparison(0.0, 0.0, 0.0, paired=True, documents=300)
    assert same.within_noise and same.verdict == "within noise"
    row = Result("a", "t", "", 0.30, 1.0, 1.1, predictions=1000)
    assert within_noise(row, row) and compare_rows(row, row).delta == 0.0
    far = compare(tokens * 0.9, first, tokens)
    assert far.low > 0 and far.verdict == "higher, beyond noise"
    assert compare(first, tokens * 0.9, tokens).verdict == "lower, beyond noise"
    assert compare(0.2, 0.6, se=(0.01, 0.01)).verdict == "lower, beyond noise"


def test_compare_to_best_picks_the_best_rate_and_pairs_it_with_every_model():
    first, second, tokens = clustered_slice()
    scores = {"a": {"correct": first, "tokens": tokens}, "b": {"correct": second, "tokens": tokens},
              "worse": {"correct": first * 0.5, "tokens": tokens}}
    best, gaps = compare_to_best(scores)
    assert best == "a" and set(gaps) == {"a", "b", "worse"}
    assert gaps["a"].delta == 0.0 and gaps["a"].within_noise
    assert gaps["b"] == compare(first, second, tokens) and gaps["worse"].verdict == "higher, beyond noise"
    lowest, _ = compare_to_best({"a": {"nll": tokens * 2.0, "tokens": tokens}, "b": {"nll": tokens, "tokens": tokens}},
                                key="nll", higher_is_better=False)
    assert lowest == "b"
    with pytest.raises(ValueError, match="key='nll'"):
        compare_to_best(scores, key="nll")
    with pytest.raises(ValueError, match="scores is empty"):
        compare_to_best({})


def test_too_few_shared_documents_are_not_called_beyond_noise():
    # Ten binary questions, four right only for the first model and none only for the second: the percentile
    # bootstrap's interval clears 0, but an exact sign test gives p = 2 * 0.5**4 = 0.125. Too few to call.
    first, second, ones = np.array([1.0] * 6 + [0] * 4), np.array([1.0] * 2 + [0] * 8), np.ones(10)
    small = compare(first, second, ones)
    assert small.low > 0 and small.too_few and small.within_noise
    assert small.verdict == "within noise (too few documents to call: 10 < 20)"
    assert scipy_stats.binomtest(4, 4).pvalue == pytest.approx(0.125)
    doubled = compare(np.tile(first, 2), np.tile(second, 2), np.ones(20))
    assert not doubled.too_few and doubled.verdict == "higher, beyond noise"


def test_unpaired_rule_is_two_standard_errors_of_the_difference():
    a = Result("a", "t", "", 0.30, 1.0, 1.1, predictions=1000)  # se = sqrt(0.3 · 0.7 / 1000) = 0.014491
    b = Result("b", "t", "", 0.35, 1.0, 1.1, predictions=1000)  # se = sqrt(0.35 · 0.65 / 1000) = 0.015083
    assert accuracy_noise(a, b) == pytest.approx(2 * math.sqrt(0.014491 ** 2 + 0.015083 ** 2), rel=1e-4)  # 0.04183
    found = compare_rows(a, b)
    assert found.delta == pytest.approx(-0.05) and (found.low, found.high) == pytest.approx((-0.09183, -0.00817),
                                                                                           abs=1e-5)
    # 0.05 > 0.0418: beyond noise; the old rule 2 · (se_a + se_b) = 0.0591 called it noise.
    assert not within_noise(a, b) and 0.05 < 2 * (0.014491 + 0.015083)
    assert within_noise(a, b, se_multiple=3.0)
    # The same verdict as a two-sided z-test of the difference at 2 SE: p = 2 · (1 − Φ(|Δ| / se_Δ)) vs 2 · (1 − Φ(2)).
    z = 0.05 / math.hypot(a.accuracy_se, b.accuracy_se)
    assert (2 * scipy_stats.norm.sf(z) >= 2 * scipy_stats.norm.sf(2.0)) == within_noise(a, b)
    close = Result("c", "t", "", 0.33, 1.0, 1.1, predictions=1000)
    assert within_noise(a, close) and within_noise(close, a)
    no_count = Result("d", "t", "", 0.5, 1.0, 1.1)  # no predictions: it claims no uncertainty of its own
    assert accuracy_noise(a, no_count) == pytest.approx(2 * 0.014491, rel=1e-4)


def test_bad_input_is_refused_naming_the_argument():
    first, second, tokens = clustered_slice(documents=10)
    with pytest.raises(ValueError, match="give tokens .* or se="):
        compare(0.3, 0.4)
    with pytest.raises(ValueError, match="exactly one"):
        compare(first, second, tokens, se=(0.1, 0.1))
    with pytest.raises(ValueError, match="se=\\(-0.1, 0.1\\)"):
        compare(0.3, 0.4, se=(-0.1, 0.1))
    with pytest.raises(ValueError, match="se=\\(nan, 0.1\\)"):
        compare(0.3, 0.4, se=(float("nan"), 0.1))
    with pytest.raises(ValueError, match="se_multiple=0"):
        compare(0.3, 0.4, se=(0.1, 0.1), se_multiple=0)
    with pytest.raises(ValueError, match="one entry per document"):
        compare(first, second[:-1], tokens)
    with pytest.raises(ValueError, match="resamples=50"):
        compare(first, second, tokens, resamples=50)
    with pytest.raises(ValueError, match="level=1.5"):
        compare(first, second, tokens, level=1.5)


def test_row_timing_verdict_mirrors_the_median_for_the_missing_p10():
    from types import SimpleNamespace

    # reference (10, 12): its range is taken as [8, 12]
    assert row_timing_verdict((10.0, 12.0), (5.0, 7.9)) == "faster"
    assert row_timing_verdict((10.0, 12.0), (5.0, 8.1)) == "within noise"
    assert row_timing_verdict((10.0, 12.0), (14.0, 15.9)) == "slower"  # other's range [12.1, 15.9]
    assert row_timing_verdict((10.0, 12.0), (14.0, 16.1)) == "within noise"  # [11.9, 16.1] overlaps
    rows = SimpleNamespace(median_ms=10.0, p90_ms=12.0), SimpleNamespace(median_ms=5.0, p90_ms=7.9)
    assert row_timing_verdict(*rows) == "faster" and row_timing_verdict(*rows[::-1]) == "slower"  # rows read alike
    for bad in ((0.0, 1.0), (2.0, 1.0), (math.nan, 1.0)):
        with pytest.raises(ValueError, match="reference="):
            row_timing_verdict(bad, (1.0, 1.0))
