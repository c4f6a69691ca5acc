"""time_ms: what it records, not how fast anything is (speed claims live in benchmarks/)."""

import time

import pytest
import torch

from lmlab.measure.timing import Timing, format_ms, time_ms


def test_records_samples_threads_and_summary():
    calls = []
    timing = time_ms(lambda: calls.append(1), warmup=2, repeat=7, threads=1)
    assert len(calls) == 9  # warm-up calls happen, but are not samples
    assert timing.repeat == 7 and len(timing.samples_ms) == 7
    assert timing.threads == 1 and timing.warmup == 2 and timing.first_ms is not None
    assert timing.min_ms <= timing.median_ms <= timing.p90_ms <= timing.max_ms


def test_measures_wall_clock_in_milliseconds():
    timing = time_ms(time.sleep, 0.005, warmup=0, repeat=3)
    assert timing.min_ms >= 5.0  # sleep never returns early; no upper bound (shared machines)
    assert timing.first_ms is None


def test_passes_arguments_and_keywords():
    seen = {}
    time_ms(lambda a, b=0: seen.update(a=a, b=b), 1, b=2, warmup=0, repeat=1)
    assert seen == {"a": 1, "b": 2}


def test_sets_torch_threads_only_while_timing():
    before = torch.get_num_threads()
    inside = []
    time_ms(lambda: inside.append(torch.get_num_threads()), warmup=0, repeat=2, threads=1)
    assert inside == [1, 1] and torch.get_num_threads() == before


def test_median_and_p90_of_known_samples():
    timing = Timing(samples_ms=tuple(float(i) for i in range(1, 11)), threads=1, warmup=0, first_ms=None)
    assert timing.median_ms == 5.5 and timing.p90_ms == pytest.approx(9.1)
    assert "ms" in str(timing) and "1 thread" in str(timing)


@pytest.mark.parametrize("kwargs, match", [
    ({"repeat": 0}, "repeat="), ({"repeat": -3}, "repeat="), ({"warmup": -1}, "warmup="),
    ({"threads": 0}, "threads="),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        time_ms(lambda: None, **kwargs)


def test_not_callable_is_a_clear_error():
    with pytest.raises(ValueError, match="fn="):
        time_ms(42)


def test_format_ms_has_a_fixed_width_and_unit():
    widths = {len(format_ms(x)) for x in (0.0001234, 0.5, 12.0, 987.6, 12345.6)}
    assert widths == {12}
    assert format_ms(1.5).endswith(" ms")


def test_background_load_starts_and_stops_busy_processes():
    import psutil

    from lmlab.measure.timing import background_load

    me = psutil.Process()
    before = {child.pid for child in me.children()}
    with background_load(2) as started:
        busy = [child for child in me.children() if child.pid not in before]
        assert started == 2 and len(busy) == 2 and all(child.is_running() for child in busy)
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in busy)
    with pytest.raises(ValueError, match="processes="):
        with background_load(0):
            pass


def test_medians_under_load_times_each_thread_count_quiet_and_beside_a_neighbour():
    from lmlab.measure.timing import medians_under_load

    a = torch.randn(64, 64)
    medians = medians_under_load(torch.mm, a, a, threads=(1,), rounds=2, repeat=3)
    assert set(medians) == {("quiet", 1), ("one busy neighbour", 1)}
    assert all(len(values) == 2 and all(v > 0 for v in values) for values in medians.values())
    with pytest.raises(ValueError, match="rounds=0"):
        medians_under_load(torch.mm, a, a, rounds=0)
