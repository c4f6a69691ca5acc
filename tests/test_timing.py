"""Stopwatch's running reads (lap, elapsed_ms, start) and Timing's percentiles: the one timing path (lmlab issue 23)."""

import time

import numpy as np
import pytest

from lmlab.measure.timing import Stopwatch, Timing


def test_laps_are_successive_intervals_that_add_up_to_the_whole():
    with Stopwatch(sync=False) as watch:
        time.sleep(0.01)
        first = watch.lap()
        time.sleep(0.03)
        second = watch.lap()
        running = watch.elapsed_ms()
    assert 10.0 <= first < 1000.0 and 30.0 <= second < 1000.0
    assert watch.laps_ms == [first, second]
    assert first + second <= running <= watch.ms  # the clock kept running through both laps
    assert running == pytest.approx(first + second, abs=5.0)


def test_a_started_stopwatch_reads_without_a_block_and_an_unstarted_one_refuses():
    watch = Stopwatch(sync=False).start()
    time.sleep(0.01)
    assert 10.0 <= watch.elapsed_ms() < 1000.0
    assert np.isnan(watch.ms)  # no interval has ended yet
    for read in (Stopwatch().lap, Stopwatch().elapsed_ms):
        with pytest.raises(RuntimeError, match="not started"):
            read()


def test_timing_percentiles_interpolate_like_numpy_and_refuse_out_of_range():
    samples = [3.0, 1.0, 2.0, 10.0, 4.0]
    timing = Timing.of(samples, threads=1)
    for q in (0, 10, 50, 90, 99, 100):
        assert timing.percentile_ms(q) == pytest.approx(float(np.percentile(samples, q)))
    assert timing.p90_ms == timing.percentile_ms(90) and timing.median_ms == timing.percentile_ms(50)
    for q in (-1, 101, float("nan")):
        with pytest.raises(ValueError, match="q="):
            timing.percentile_ms(q)


def test_block_means_average_consecutive_samples_as_a_per_block_timer_reports_them():
    from lmlab.measure.timing import Timing, block_means

    timing = Timing.of([1.0, 1.0, 1.0, 9.0, 1.0, 1.0, 1.0, 1.0, 5.0], warmup=2, threads=1)
    blocks = block_means(timing, 4)  # the ninth sample does not fill a block and is dropped
    assert blocks.samples_ms == (3.0, 1.0) and blocks.warmup == 2 and blocks.threads == 1
    assert block_means(timing, 1).samples_ms == timing.samples_ms
    with pytest.raises(ValueError, match="calls_per_block"):
        block_means(timing, 10)
    with pytest.raises(ValueError, match="calls_per_block"):
        block_means(timing, 0)


def test_per_item_divides_every_sample_so_the_noise_rule_applies_per_sequence():
    batch = Timing.of([8.0, 10.0, 12.0], threads=1)
    per_row = batch.per_item(4)  # a step of 4 sequences: each sequence's share
    assert per_row.samples_ms == (2.0, 2.5, 3.0) and per_row.threads == 1
    assert per_row.median_ms == batch.median_ms / 4 and per_row.p90_ms == pytest.approx(batch.p90_ms / 4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="items"):
            batch.per_item(bad)
