"""Time a function properly: warm up, repeat, synchronize, report the median and p90.

Introduced in notebooks/00_measuring_milliseconds.ipynb.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmlab.measure.runtime import check_int, synchronize, torch_threads


@dataclass(frozen=True)
class Timing:
    """Wall-clock samples of one function, in milliseconds, and the torch threads they ran on."""

    samples_ms: tuple[float, ...]
    threads: int
    warmup: int
    first_ms: float | None  # the cold first call (the first warm-up), if there was a warm-up

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def p90_ms(self) -> float:
        return self.percentile_ms(90)

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.samples_ms))

    @property
    def min_ms(self) -> float:
        return float(np.min(self.samples_ms))

    @property
    def max_ms(self) -> float:
        return float(np.max(self.samples_ms))

    @property
    def repeat(self) -> int:
        return len(self.samples_ms)

    def percentile_ms(self, q: float) -> float:
        """Return the ``q``-th percentile of the samples, interpolating linearly between order statistics.

        With the samples sorted, x_(1) <= ... <= x_(n): position h = (n − 1) q / 100, and the percentile is
        x_(⌊h⌋+1) + (h − ⌊h⌋)(x_(⌊h⌋+2) − x_(⌊h⌋+1)) (numpy's default). Raises ValueError for q outside [0, 100].
        """
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 100:
            raise ValueError(f"q={q!r} is out of range; use a percentile in [0, 100]")
        return float(np.percentile(self.samples_ms, q))

    def per_item(self, items: int) -> Timing:
        """Return the Timing of one of ``items`` handled together (a sequence of a batch): every sample ÷ items,
        so ``lmlab.measure.stats.timing_verdict`` can compare per-item costs. Raises ValueError for items < 1."""
        check_int("items", items, 1)
        return Timing(samples_ms=tuple(ms / items for ms in self.samples_ms), threads=self.threads,
                      warmup=self.warmup, first_ms=None if self.first_ms is None else self.first_ms / items)

    @classmethod
    def of(cls, samples_ms: Sequence[float], warmup: int = 0, threads: int | None = None) -> Timing:
        """Make a Timing of samples measured one at a time (``Stopwatch``), on ``threads`` torch threads (default:
        the current count). Raises ValueError for no samples."""
        if not len(samples_ms):
            raise ValueError("samples_ms is empty: give at least one measured interval")
        return cls(samples_ms=tuple(float(ms) for ms in samples_ms), warmup=warmup, first_ms=None,
                   threads=torch.get_num_threads() if threads is None else threads)

    def __str__(self) -> str:
        thread_word = "thread" if self.threads == 1 else "threads"
        return (
            f"median {format_ms(self.median_ms).strip()} (p90 {format_ms(self.p90_ms).strip()}, "
            f"{self.repeat} runs, {self.threads} {thread_word})"
        )


def format_ms(value_ms: float, width: int = 9) -> str:
    """Format milliseconds with their unit at a fixed width: ``format_ms(0.01234) == '  0.01234 ms'``.

    Fixed width keeps table columns aligned identically whatever the value, so nbval's sanitizer
    (tests/sanitize.cfg) can replace the number without changing the rest of the line.
    """
    return f"{value_ms:>{width}.4g} ms"


def time_ms(
    fn: Callable[..., Any],
    *args: Any,
    warmup: int = 3,
    repeat: int = 20,
    threads: int | None = None,
    sync: bool = True,
    **kwargs: Any,
) -> Timing:
    """Call ``fn(*args, **kwargs)`` ``warmup`` times untimed, then ``repeat`` times timed, one call per sample.

    Each sample is ``time.perf_counter()`` after minus before, with the GPU synchronized
    (CUDA or MPS) before each clock read when ``sync`` is true. torch runs on ``threads``
    threads (default ``lmlab.measure.runtime.default_threads()``, i.e. 1 unless ``$LMLAB_THREADS``
    says otherwise); the previous count is restored afterwards.

    Raises ValueError if ``repeat < 1``, ``warmup < 0``, ``threads < 1`` or ``fn`` is not callable.
    """
    if not callable(fn):
        raise ValueError(f"fn={fn!r} is not callable; pass the function to time, then its arguments")
    check_int("repeat", repeat, 1)
    check_int("warmup", warmup, 0)

    with torch_threads(threads) as used_threads:
        first_ms = None
        for i in range(warmup):
            elapsed = _timed_call(fn, args, kwargs, sync)
            if i == 0:
                first_ms = elapsed
        samples = tuple(_timed_call(fn, args, kwargs, sync) for _ in range(repeat))
    return Timing(samples_ms=samples, threads=used_threads, warmup=warmup, first_ms=first_ms)


def block_means(timing: Timing, calls_per_block: int) -> Timing:
    """Average consecutive samples in blocks of ``calls_per_block`` calls: what a timer that reads the clock once per
    block reports (``torch.utils.benchmark``'s ``blocked_autorange`` does, and gives the median of its block means).

    Block j's time is mean(samples[j k : (j + 1) k]), k = ``calls_per_block``; samples that do not fill a last block
    are dropped. A block's mean takes in every slow call inside it, which a median of single calls sets aside.
    Raises ValueError for k < 1 or a k larger than the number of samples.
    """
    check_int("calls_per_block", calls_per_block, 1, timing.repeat)
    blocks = timing.repeat // calls_per_block
    samples = np.asarray(timing.samples_ms[:blocks * calls_per_block]).reshape(blocks, calls_per_block)
    return Timing(samples_ms=tuple(float(ms) for ms in samples.mean(axis=1)), threads=timing.threads,
                  warmup=timing.warmup, first_ms=timing.first_ms)


def _timed_call(fn: Callable[..., Any], args: tuple, kwargs: dict, sync: bool) -> float:
    with Stopwatch(sync) as watch:
        fn(*args, **kwargs)
    return watch.ms


class Stopwatch:
    """Time one interval with the clock ``time_ms`` uses: ``with Stopwatch() as watch: ...``, then ``watch.ms``.

    ms = ``time.perf_counter()`` at exit minus at entry, × 1000, with the GPU synchronized (CUDA or MPS) before
    each clock read when ``sync`` is true. For intervals a repeated call cannot time (a barrier before each sample,
    a clock that sums several intervals); gather such samples into a ``Timing`` with ``Timing.of``. Inside the
    interval, ``lap()`` reads successive stamps (each the ms since the previous lap) and ``elapsed_ms()`` the ms
    since the start; ``start()`` starts a stopwatch that no ``with`` block holds (a server's arrival stamp).
    """

    def __init__(self, sync: bool = True) -> None:
        self.sync = sync
        self.ms = float("nan")  # until the interval ends
        self.laps_ms: list[float] = []  # what lap() returned, in order
        self._start: float | None = None
        self._last_lap = 0.0

    def _now(self) -> float:
        if self.sync:
            synchronize()
        return time.perf_counter()

    def _started(self) -> float:
        if self._start is None:
            raise RuntimeError("the stopwatch has not started; use `with Stopwatch() as watch:` or Stopwatch().start()")
        return self._start

    def start(self) -> Stopwatch:
        """Start the clock (what entering a ``with`` block does) and return the stopwatch."""
        self._start = self._last_lap = self._now()
        self.laps_ms = []
        return self

    def lap(self) -> float:
        """Return the ms since the previous lap (or the start); the clock keeps running.

        lap_i = (t_i − t_{i−1}) × 1000, t_0 the start. Successive laps split the interval into stages (queue,
        prefill, decode); each is also kept in ``laps_ms``.
        Raises RuntimeError before the start.
        """
        self._started()
        now = self._now()
        lap_ms = (now - self._last_lap) * 1e3
        self._last_lap = now
        self.laps_ms.append(lap_ms)
        return lap_ms

    def elapsed_ms(self) -> float:
        """Return the ms since the start without stopping the clock: (t_now − t_start) × 1000.

        Raises RuntimeError before the start.
        """
        start = self._started()
        return (self._now() - start) * 1e3

    def __enter__(self) -> Stopwatch:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.ms = (self._now() - self._started()) * 1e3


@contextmanager
def background_load(processes: int = 1) -> Iterator[int]:
    """Keep ``processes`` other processes busy with torch matrix products for the duration of the body.

    Each neighbour runs torch at its default thread count, as a second notebook training a model
    would. It shows what a neighbour on a shared machine does to your timings: run the same
    ``time_ms`` inside and outside. The processes are stopped on exit, also on error. Yields the
    number started.
    """
    check_int("processes", processes, 1, 64)
    busy = "import torch\na = torch.randn(512, 512)\nwhile True:\n    a @ a"
    spinners = [subprocess.Popen([sys.executable, "-c", busy]) for _ in range(processes)]
    try:
        time.sleep(2.0)  # let them import torch and start working
        yield len(spinners)
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()


def medians_under_load(fn: Callable[..., Any], *args: Any, threads: Sequence[int] = (1, 2), rounds: int = 3,
                       repeat: int = 15, **kwargs: Any) -> dict[tuple[str, int], list[float]]:
    """Time ``fn`` on each thread count, ``rounds`` times, on a quiet machine and beside one busy neighbour.

    Returns ``{(situation, threads): [median ms of each round]}`` with situation "quiet" or "one busy neighbour"
    (``background_load(1)``): how much a neighbour slows a timing, and how far rounds of one timing spread.
    Raises ValueError for rounds < 1 or a thread count < 1.
    """
    check_int("rounds", rounds, 1)
    medians = {}
    for situation in ("quiet", "one busy neighbour"):
        with background_load(1) if situation != "quiet" else nullcontext():
            for count in threads:
                medians[situation, count] = [time_ms(fn, *args, warmup=3, repeat=repeat, threads=count,
                                                     **kwargs).median_ms for _ in range(rounds)]
    return medians
