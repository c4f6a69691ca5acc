"""Prefill-decode interference: what a long prompt's prefill does to the streams already decoding, and how chunked
prefill bounds it.

Introduced in notebooks/07_realtime_pipeline.ipynb; benchmarks/bench_engine.py runs the same experiment at 1,000
tokens.

Streams decoding in one batch get a token per engine round. When a newcomer's prompt is prefilled in one pass
between two rounds, every stream waits for it: their inter-token latency (ITL), the gap between two tokens of one
reply, jumps from one decode step to a decode step plus the whole prefill. The slot engine
(``lmlab.serving.slots``) prefills at most ``chunk_tokens`` positions per round instead, so a stream's gap grows by
one piece at most, for more rounds: the newcomer's TTFT grows a little, the streams' worst gaps shrink.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from lmlab.inference.decode import CausalLM
from lmlab.inference.step import DecodeStep
from lmlab.measure.plots import FONT_SIZE, finish_axes, plain_log_ticks
from lmlab.measure.runtime import check_int
from lmlab.measure.timing import Stopwatch
from lmlab.serving.slots import SlotEngine


@dataclass(frozen=True)
class Interference:
    """One run: each stream's token times (ms from the start), the newcomer's arrival and first token (ms)."""

    chunk_tokens: int | None
    stamps_ms: tuple[tuple[float, ...], ...]  # per stream, every token's arrival
    arrival_ms: float
    first_token_ms: float
    newcomer_tokens: int

    def gaps_ms(self) -> np.ndarray:
        """The streams' inter-token gaps that end after the newcomer's arrival (every stream pooled): the gap
        that spans the arrival, in which a whole prefill would fall, and every later one."""
        gaps = [np.diff(stamps)[np.asarray(stamps[1:]) > self.arrival_ms] for stamps in self.stamps_ms]
        return np.concatenate(gaps)

    def summary(self) -> dict[str, float]:
        """p50 and p99 of the gaps, their ratio, and the newcomer's TTFT (ms)."""
        p50, p99 = np.percentile(self.gaps_ms(), [50, 99])
        return {"itl_p50_ms": float(p50), "itl_p99_ms": float(p99), "ratio": float(p99 / p50),
                "newcomer_ttft_ms": self.first_token_ms - self.arrival_ms}


def prefill_interference(lm: CausalLM, step: DecodeStep, streams: Sequence[Sequence[int]], newcomer: Sequence[int],
                         chunk_tokens: int | None, tokens: int = 48, warm: int = 8) -> Interference:
    """Decode ``streams`` (token-id prompts, ``tokens`` each, greedy) in one slot engine; when each has ``warm``
    tokens, submit ``newcomer`` (its first token only). Returns every token's time.

    ``step`` must be a fused step (a slot engine); ``chunk_tokens`` None prefills the newcomer whole.
    Raises ValueError for no streams, more than 8, or warm outside [1, tokens − 1].
    """
    if not 1 <= len(streams) <= 8:
        raise ValueError(f"streams has {len(streams)} prompts; use 1 to 8 (the engine's batch holds 8 and the "
                         f"newcomer)")
    check_int("warm", warm, 1, tokens - 1)
    clock = Stopwatch(sync=False).start()
    stamps: list[list[float]] = [[] for _ in streams]
    warmed, first = threading.Semaphore(0), []
    with SlotEngine(lm, step=step, max_batch=len(streams) + 1, chunk_tokens=chunk_tokens) as engine:
        tickets = []
        for i, ids in enumerate(streams):
            def heard(event, i=i):
                stamps[i].append(clock.elapsed_ms())
                if len(stamps[i]) == warm:
                    warmed.release()
            tickets.append(engine.submit(ids, tokens, stop_at_eos=False, callback=heard))
        for _ in streams:
            warmed.acquire(timeout=120)
        arrival = clock.elapsed_ms()
        late = engine.submit(newcomer, 1, stop_at_eos=False, callback=lambda e: first.append(clock.elapsed_ms()))
        while engine.active or engine.waiting:
            time.sleep(0.01)
    del tickets, late
    streams_ms = tuple(tuple(s[:-1]) for s in stamps)  # the last stamp of each is its done event
    return Interference(chunk_tokens, streams_ms, arrival, first[0], len(newcomer))


def interference_plot(runs: Sequence[Interference], title: str) -> Figure:
    """Each stream's inter-token gaps against time from just before the newcomer's arrival, one panel per run,
    the newcomer's prefill shaded."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(7.5 * len(runs), 6), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs):
        for stamps in run.stamps_ms:
            times = np.asarray(stamps)
            shown = times[1:] > run.arrival_ms - 250  # from just before the arrival: the streams' own start left out
            ax.plot((times[1:][shown] - run.arrival_ms) / 1000, np.diff(times)[shown], "o", ms=5, alpha=0.6)
        ax.axvspan(0, (run.first_token_ms - run.arrival_ms) / 1000, color="tab:red", alpha=0.15,
                   label=f"newcomer's {run.newcomer_tokens}-token prefill")
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
        name = "whole prompt" if run.chunk_tokens is None else f"chunks of {run.chunk_tokens} tokens"
        finish_axes(ax, "time since the newcomer arrived (s)", "gap before each token (ms, log scale)",
                    f"Prefill: {name}")
    fig.suptitle(title, fontsize=FONT_SIZE + 2)
    fig.tight_layout()
    return fig
