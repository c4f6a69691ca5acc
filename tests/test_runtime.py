import random

import numpy as np
import pytest
import torch

from lmlab.measure.runtime import (
    THREADS_ENV,
    default_threads,
    describe_environment,
    environment,
    pick_device,
    seed_everything,
    torch_threads,
)


def test_default_is_one_thread(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert default_threads() == 1


def test_environment_variable_overrides_threads(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "2")
    assert default_threads() == 2


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5"])
def test_bad_thread_setting_is_a_clear_error(monkeypatch, raw):
    monkeypatch.setenv(THREADS_ENV, raw)
    with pytest.raises(ValueError, match=THREADS_ENV):
        default_threads()


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    with torch_threads(1) as used:
        assert used == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_auto_device_is_cpu_without_a_gpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert pick_device("auto").type == expected


def test_explicit_cpu_is_honoured():
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "tpu:0", "", "cuda:x", 3])
def test_unknown_device_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="device="):
        pick_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        pick_device("cuda")


def test_seed_everything_repeats_python_numpy_and_torch():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
    assert torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "0"])
def test_bad_seed_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="seed="):
        seed_everything(bad)


def test_environment_names_what_a_timing_ran_on():
    env = environment("cpu", threads=1)
    assert env["torch"] == torch.__version__ and env["torch_threads"] == 1 and env["cores"] >= 1
    line = describe_environment("cpu", threads=1)
    assert line.startswith("CPU: ") and "torch threads: 1" in line and "device: cpu" in line


def test_use_threads_sets_torch_globally(monkeypatch):
    from lmlab.measure.runtime import use_threads

    before = torch.get_num_threads()
    monkeypatch.delenv(THREADS_ENV, raising=False)
    try:
        assert use_threads() == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads="):
            use_threads(0)
    finally:
        torch.set_num_threads(before)


def test_stopwatch_times_one_interval_and_timing_of_gathers_samples():
    import time

    from lmlab.measure.timing import Stopwatch, Timing

    with Stopwatch() as watch:
        time.sleep(0.02)
    assert 20.0 <= watch.ms < 2000.0
    timing = Timing.of([3.0, 1.0, 2.0, 10.0], warmup=1, threads=2)
    assert timing.median_ms == 2.5 and timing.p90_ms == pytest.approx(7.9) and timing.threads == 2
    with pytest.raises(ValueError, match="samples_ms is empty"):
        Timing.of([])
