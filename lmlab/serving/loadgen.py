"""An open-loop load generator for an OpenAI-compatible chat server: Poisson arrivals, streamed replies.

Introduced in notebooks/07_realtime_pipeline.ipynb. As in vLLM's benchmark_serving, request i
is sent at its arrival time whether or not earlier ones have finished (open loop), so a server that
cannot keep up shows it as growing latency and as throughput below the offered rate. Each reply is
streamed (server-sent events) and timed per token:

    ttft_ms = first content chunk - send        e2e_ms = end of stream - send
    tpot_ms = (e2e_ms - ttft_ms) / (tokens - 1)  itl_ms = the gaps between consecutive content chunks
    Little's law: mean in flight L = throughput λ × mean latency W

Every time comes from the client's own clock, so any OpenAI-compatible server can be measured (lmlab's server,
``transformers serve``, llama.cpp's ``llama-server``); lmlab's ``timing`` extras are kept beside, never needed.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from lmlab.measure.plots import FONT_SIZE, finish_axes
from lmlab.measure.results import Result
from lmlab.measure.runtime import check_int
from lmlab.measure.timing import Timing

METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "itl_ms")  # itl_ms pools every gap of every request
DEADLINE_GRACE_S = 1.0  # the run's deadline is last arrival + timeout_s + this


def _check_positive(name: str, value: float, unit: str, allow_inf: bool = False) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a number > 0 (finite unless ``allow_inf``)."""
    if not (isinstance(value, (int, float)) and value > 0 and (allow_inf or math.isfinite(value))):
        kind = "number" if allow_inf else "finite number"
        raise ValueError(f"{name}={value!r} is out of range; use a {kind} > 0 {unit}")


def poisson_arrivals(rate_per_s: float, count: int, seed: int = 0) -> np.ndarray:
    """Return the send offsets (s) of ``count`` requests arriving as a Poisson process, seeded.

    t_i = g_1 + ... + g_i with gaps g ~ Exponential(mean 1 / rate_per_s). Raises ValueError for a rate
    that is not finite and > 0, or a count < 1.
    """
    _check_positive("rate_per_s", rate_per_s, "requests/s")
    check_int("count", count)
    return np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate_per_s, size=count))


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it: when it was sent, its status, its per-token times and reply."""

    index: int
    sent_s: float  # offset from the run's start
    status: int  # HTTP status; 0 if the connection failed
    ttft_ms: float
    e2e_ms: float
    completion_tokens: int
    prompt_tokens: int | None
    tpot_ms: float
    itl_ms: tuple[float, ...]
    text: str
    error: str | None = None
    server_timing: dict | None = None
    disconnected: bool = False

    @property
    def ok(self) -> bool:
        """Whether the request completed: status 200, no error, stream read to its end."""
        return self.status == 200 and self.error is None and not self.disconnected

    @property
    def end_s(self) -> float:
        """Return when the request ended, from the run's start: end_s = sent_s + e2e_ms / 1000."""
        return self.sent_s + self.e2e_ms / 1000


@dataclass
class _Progress:
    """What a request has received so far (mutable, so a cancelled request still leaves a record)."""

    index: int
    sent_s: float = math.nan
    status: int = 0
    token_s: list[float] = field(default_factory=list)  # arrival offsets of content chunks
    pieces: list[str] = field(default_factory=list)
    usage: dict | None = None
    timing: dict | None = None
    end_s: float = math.nan
    error: str | None = None
    disconnected: bool = False
    finished: bool = False  # a choice arrived with a finish_reason

    def record(self) -> RequestRecord:
        """Freeze what was received: tpot_ms = (e2e_ms - ttft_ms) / (tokens - 1), nan below 2 tokens."""
        ttft_ms = (self.token_s[0] - self.sent_s) * 1000 if self.token_s else math.nan
        e2e_ms = (self.end_s - self.sent_s) * 1000
        usage = self.usage or {}
        tokens = int(usage.get("completion_tokens", len(self.token_s)))
        tpot_ms = (e2e_ms - ttft_ms) / (tokens - 1) if tokens >= 2 and self.token_s else math.nan
        return RequestRecord(
            index=self.index, sent_s=self.sent_s, status=self.status, ttft_ms=ttft_ms, e2e_ms=e2e_ms,
            completion_tokens=tokens, prompt_tokens=usage.get("prompt_tokens"), tpot_ms=tpot_ms,
            itl_ms=tuple(float(g) * 1000 for g in np.diff(self.token_s)), text="".join(self.pieces),
            error=self.error, server_timing=self.timing, disconnected=self.disconnected)


def _http_error(response: httpx.Response) -> str:
    """Return 'HTTP <status>: <message>' from an OpenAI-shaped error body (and Retry-After if given)."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:120]
    retry = response.headers.get("retry-after")
    return f"HTTP {response.status_code}: {message}" + (f" (Retry-After {retry} s)" if retry else "")


def _is_token(delta: dict) -> bool:
    """A chunk carries a token if its delta has string content; OpenAI's opening role-only chunk does not."""
    content = delta.get("content")
    return isinstance(content, str) and not (content == "" and "role" in delta)


async def _send(client: httpx.AsyncClient, url: str, body: dict, headers: dict, p: _Progress, t0: float,
                send_at_s: float, timeout_s: float, stop_after: int | None) -> None:
    """Wait for this request's arrival time, send it, and read its event stream into ``p``."""
    await asyncio.sleep(max(0.0, t0 + send_at_s - time.perf_counter()))
    p.sent_s = time.perf_counter() - t0
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, json=body, headers=headers) as response:
                p.status = response.status_code
                if response.status_code != 200:
                    await response.aread()
                    p.error = _http_error(response)
                    return
                if stop_after == 0:
                    p.disconnected = True
                    return
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        p.end_s = time.perf_counter() - t0
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        err = chunk["error"]
                        p.error = f"stream error: {err.get('message') if isinstance(err, dict) else err}"
                        return
                    p.usage = chunk.get("usage") or p.usage
                    p.timing = chunk.get("timing") or p.timing
                    choices = chunk.get("choices") or []
                    p.finished = p.finished or bool(choices and choices[0].get("finish_reason"))
                    if choices and _is_token(choices[0].get("delta") or {}):
                        p.token_s.append(time.perf_counter() - t0)
                        p.pieces.append(choices[0]["delta"]["content"])
                        if stop_after is not None and len(p.token_s) >= stop_after:
                            p.disconnected = True  # leaving the `async with` closes the connection
                            return
                if not p.finished:  # some servers (transformers serve) end the stream without data: [DONE]
                    p.error = "stream ended before data: [DONE] or a finish_reason"
    except TimeoutError:
        p.error = f"timed out after {timeout_s:g} s"
    except Exception as exc:  # a load run records failures; it does not stop at the first one
        p.error = type(exc).__name__ + (f": {str(exc)[:120]}" if str(exc) and p.status else "")
    finally:
        if math.isnan(p.end_s):
            p.end_s = time.perf_counter() - t0


@dataclass(frozen=True)
class LoadReport:
    """The records of one load run at one offered rate, with the serving metrics computed from them."""

    records: tuple[RequestRecord, ...]
    offered_rate_per_s: float
    duration_s: float  # first send -> last end
    server_samples: tuple[tuple[float, int], ...] = ()  # (offset s, requests in the server) from its /health

    @classmethod
    def from_records(cls, records: Sequence[RequestRecord], offered_rate_per_s: float,
                     server_samples: Sequence[tuple[float, int]] = ()) -> LoadReport:
        """Make a report spanning the records: T = max(send + e2e) - min(send). ValueError if there are none."""
        if not records:
            raise ValueError("records is empty: a load report needs at least one request")
        duration_s = max(r.end_s for r in records) - min(r.sent_s for r in records)
        return cls(tuple(records), offered_rate_per_s, duration_s, tuple(server_samples))

    @property
    def arrival_rate_per_s(self) -> float:
        """Return the rate requests were really sent at: (n − 1) / (last send − first send) (nan for one).

        A Poisson run of a few requests sends them faster or slower than the offered rate, by chance.
        """
        sent = sorted(r.sent_s for r in self.records)
        return (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 and sent[-1] > sent[0] else math.nan

    @property
    def server_in_flight(self) -> float:
        """Return the mean of the server's own count of requests inside it (running + waiting), sampled from
        its /health during the run (nan without samples): an independent measure of L for Little's law."""
        start = min(r.sent_s for r in self.records)
        inside = [n for t, n in self.server_samples if start <= t <= start + self.duration_s]
        return float(np.mean(inside)) if inside else math.nan

    @property
    def completed(self) -> list[RequestRecord]:
        """Return the records that completed (status 200, no error, not disconnected)."""
        return [r for r in self.records if r.ok]

    @property
    def errors(self) -> int:
        """Return how many requests ended in an error (HTTP status, connection, timeout, deadline)."""
        return sum(r.error is not None for r in self.records)

    @property
    def throughput_rps(self) -> float:
        """Return completed requests per second: λ = completed / T."""
        return len(self.completed) / self.duration_s if self.duration_s > 0 else math.nan

    @property
    def tokens_per_s(self) -> float:
        """Return generated tokens per second: Σ completion_tokens of completed requests / T."""
        tokens = sum(r.completion_tokens for r in self.completed)
        return tokens / self.duration_s if self.duration_s > 0 else math.nan

    def percentiles(self, metric: str = "ttft_ms", qs: Sequence[float] = (50, 90, 99)) -> dict[float, float]:
        """Return {q: q-th percentile of ``metric``} over completed requests (nan where there are none).

        Linear interpolation between order statistics (numpy's default). "itl_ms" pools the inter-token gaps of
        every completed request (a request of n tokens gives n − 1 of them), so a long reply weighs by its
        length, as a user watching the stream feels it. Raises ValueError for a metric not in ttft_ms, tpot_ms,
        e2e_ms, itl_ms.
        """
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} is not a request metric; use one of {METRICS}")
        pooled = ([gap for r in self.completed for gap in r.itl_ms] if metric == "itl_ms"
                  else [getattr(r, metric) for r in self.completed])
        values = [v for v in pooled if math.isfinite(v)]
        timing = Timing.of(values) if values else None
        return {q: timing.percentile_ms(q) if timing else math.nan for q in qs}

    @property
    def mean_in_flight(self) -> float:
        """Return the time-average number of requests in flight (every request, failed ones too).

        L = (1/T) ∫ N(t) dt over [first send, last end] = (1/T) Σ_i (end_i - send_i).
        """
        busy_s = sum(r.end_s - r.sent_s for r in self.records)
        return busy_s / self.duration_s if self.duration_s > 0 else math.nan

    def littles_law(self) -> dict[str, float]:
        """Return L measured beside λW predicted: ratio = L / (throughput × mean e2e latency of completed).

        Over a window that starts and ends empty the law holds exactly (ratio 1) when every request
        completes, since L and λW are then computed from the same client timings; time spent by failed or
        abandoned requests pushes the ratio above 1. ``server_ratio`` is the real check: L sampled from the
        server's own queue (``server_in_flight``, when the run probed /health) against λW from the client.
        """
        done = self.completed
        latency_s = Timing.of([r.e2e_ms for r in done]).mean_ms / 1000 if done else math.nan
        predicted = self.throughput_rps * latency_s
        return {"mean_in_flight": self.mean_in_flight, "throughput_rps": self.throughput_rps,
                "mean_latency_s": latency_s, "predicted": predicted,
                "ratio": self.mean_in_flight / predicted if predicted > 0 else math.nan,
                "server_in_flight": self.server_in_flight,
                "server_ratio": self.server_in_flight / predicted if predicted > 0 else math.nan}

    def summary(self) -> dict[str, float]:
        """Return the headline numbers: offered rate, counts, throughput, tokens/s, p50/p90/p99 of each metric
        (TTFT, TPOT, end-to-end and the pooled inter-token gaps)."""
        row = {"offered_rate_per_s": self.offered_rate_per_s, "arrival_rate_per_s": self.arrival_rate_per_s,
               "requests": len(self.records),
               "completed": len(self.completed), "errors": self.errors, "duration_s": self.duration_s,
               "throughput_rps": self.throughput_rps, "tokens_per_s": self.tokens_per_s}
        for metric in METRICS:
            for q, value in self.percentiles(metric).items():
                row[f"p{q:g}_{metric}"] = value
        return row

    def to_result(self, name: str, *, accuracy: float, metric: str = "ttft_ms", setting: str | None = None,
                  **values) -> Result:
        """Make a results row: median_ms = p50 and p90_ms = p90 of ``metric`` over completed requests.

        technique defaults to "serving", setting to "<rate> req/s", batch_size to 1. Raises ValueError
        for a metric other than ttft_ms or e2e_ms, or a report with no completed request.
        """
        if metric not in ("ttft_ms", "e2e_ms"):
            raise ValueError(f"metric={metric!r} is not a latency to rank by; use 'ttft_ms' or 'e2e_ms'")
        if not self.completed:
            raise ValueError("this report has no completed request: there is no latency to record")
        p = self.percentiles(metric, (50, 90))
        values.setdefault("technique", "serving")
        values.setdefault("batch_size", 1)
        setting = f"{self.offered_rate_per_s:g} req/s" if setting is None else setting
        return Result(name=name, setting=setting, accuracy=accuracy, median_ms=p[50], p90_ms=p[90], **values)


def table(reports: Sequence[LoadReport], digits: int = 3) -> pd.DataFrame:
    """Return one row per report (its ``summary()``, units in the column names), rounded to ``digits``."""
    return pd.DataFrame([r.summary() for r in reports]).round(digits)


def default_bodies(questions: Sequence[str], model: str, max_tokens: int, system: str | None = None) -> list[dict]:
    """Return one streaming chat-completions body per question: greedy (temperature 0), usage included.

    Raises ValueError for no questions or max_tokens < 1.
    """
    if isinstance(questions, str) or not questions:
        raise ValueError(f"questions={questions!r} is out of range; use a non-empty list of strings")
    head = [{"role": "system", "content": system}] if system is not None else []
    return chat_bodies([head + [{"role": "user", "content": q}] for q in questions], model, max_tokens)


def chat_bodies(conversations: Sequence[list[dict]], model: str, max_tokens: int, **settings) -> list[dict]:
    """Return one streaming chat-completions body per list of messages: greedy (temperature 0), usage included,
    and any further ``settings`` (e.g. ``ignore_eos=True``). Raises ValueError for none or max_tokens < 1."""
    if not conversations:
        raise ValueError("conversations is empty; give at least one list of messages")
    check_int("max_tokens", max_tokens)
    return [{"model": model, "messages": list(messages), "max_tokens": max_tokens, "temperature": 0, "stream": True,
             "stream_options": {"include_usage": True}, **settings} for messages in conversations]


async def run_load(base_url: str, bodies: Sequence[dict], rate_per_s: float, *, seed: int = 0,
                   timeout_s: float = 60, api_key: str | None = None,
                   disconnect_after_tokens: dict[int, int] | None = None, probe_s: float | None = 0.05) -> LoadReport:
    """Send ``bodies[i]`` to {base_url}/v1/chat/completions at Poisson time t_i, open loop; time every stream.

    t = poisson_arrivals(rate_per_s, len(bodies), seed), or all at t = 0 for rate_per_s = inf. Each
    request has ``timeout_s`` from its send; the run ends by t_last + timeout_s + 1 s, and any request
    still open then is cancelled and recorded as an error. ``disconnect_after_tokens`` {i: n} makes
    request i close its stream after n content chunks. Every ``probe_s`` seconds (None: never) the server's
    GET /health is read for its count of requests inside (active + waiting), the independent L of Little's law
    (a server without those fields is simply not sampled). Raises ValueError for an empty ``bodies``, a rate
    not > 0, a timeout not finite > 0, or a disconnect index outside the bodies.
    """
    if not bodies or not all(isinstance(b, dict) for b in bodies):
        raise ValueError("bodies is empty or holds a non-dict; use a non-empty list of request JSON dicts")
    _check_positive("rate_per_s", rate_per_s, "requests/s (inf: all at once)", allow_inf=True)
    _check_positive("timeout_s", timeout_s, "s")
    stops = dict(disconnect_after_tokens or {})
    for i, n in stops.items():
        check_int("disconnect_after_tokens index", i, 0, len(bodies) - 1)
        check_int(f"disconnect_after_tokens[{i}]", n, 0)
    arrivals = (np.zeros(len(bodies)) if math.isinf(rate_per_s)
                else poisson_arrivals(rate_per_s, len(bodies), seed))
    url = base_url.rstrip("/") + ("/chat/completions" if base_url.rstrip("/").endswith("/v1")
                                  else "/v1/chat/completions")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    progress = [_Progress(i) for i in range(len(bodies))]
    limits = httpx.Limits(max_connections=len(bodies) + 1, max_keepalive_connections=len(bodies) + 1)  # + the probe
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout_s)) as client:
        t0 = time.perf_counter()
        tasks = []
        for i, body in enumerate(bodies):
            body = {**body, "stream": True,
                    "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
            tasks.append(asyncio.create_task(_send(client, url, body, headers, progress[i], t0,
                                                   float(arrivals[i]), timeout_s, stops.get(i))))
        samples: list[tuple[float, int]] = []
        prober = asyncio.create_task(_probe(client, url, headers, t0, probe_s, samples)) if probe_s else None
        deadline_s = float(arrivals[-1]) + timeout_s + DEADLINE_GRACE_S
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, t0 + deadline_s - time.perf_counter()))
        if prober is not None:
            prober.cancel()
            await asyncio.gather(prober, return_exceptions=True)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for task, p in zip(tasks, progress):
        if task in pending and p.error is None:
            p.error = f"cancelled at the run deadline ({deadline_s:.1f} s)"
    return LoadReport.from_records([p.record() for p in progress], float(rate_per_s), samples)


async def _probe(client: httpx.AsyncClient, url: str, headers: dict, t0: float, every_s: float,
                 samples: list[tuple[float, int]]) -> None:
    """Append (offset s, active + waiting) from the server's /health every ``every_s`` until cancelled."""
    health = url.rsplit("/v1/", 1)[0] + "/health"
    while True:
        try:
            state = (await client.get(health, headers=headers, timeout=5)).json()
            samples.append((time.perf_counter() - t0, int(state["active"]) + int(state["waiting"])))
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return  # no /health with those fields: no samples
        await asyncio.sleep(every_s)


def run_load_sync(*args, **kwargs) -> LoadReport:
    """Run ``run_load(*args, **kwargs)`` to its end from ordinary code or a Jupyter cell; return its report.

    ipykernel already runs an event loop in the main thread, so the run gets its own loop
    (``asyncio.run``) in a fresh worker thread. Re-raises whatever ``run_load`` raises.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmlab-loadgen") as pool:
        return pool.submit(lambda: asyncio.run(run_load(*args, **kwargs))).result()


def load_plot(reports: Sequence[LoadReport], title: str = "Serving under open-loop Poisson load") -> Figure:
    """Draw p50/p90 TTFT, e2e latency and inter-token gap (ms, log) and throughput against the arrival rate,
    with y = x.

    The x axis is each run's arrival rate as sent (``arrival_rate_per_s``): a short Poisson run sends faster or
    slower than its offered rate by chance. A server that keeps up has throughput = arrival rate (y = x); where
    its throughput falls below the line, queues grow and latency climbs. Throughput n / T carries the Poisson count's
    standard error √n / T as its error bar. Reports at an infinite rate are left out. Raises
    ValueError if no report has a finite offered rate.
    """
    finite = (r for r in reports if math.isfinite(r.offered_rate_per_s) and math.isfinite(r.arrival_rate_per_s))
    reports = sorted(finite, key=lambda r: r.arrival_rate_per_s)  # several seeds of one rate: left to right
    if not reports:
        raise ValueError("reports has no report at a finite offered rate: nothing to plot")
    rates = [r.arrival_rate_per_s for r in reports]  # the load really sent, which a short run draws off the offered
    fig, (lat_ax, tput_ax) = plt.subplots(1, 2, figsize=(15, 6.5))
    for metric, label, color in (("ttft_ms", "TTFT", "tab:blue"), ("e2e_ms", "end-to-end", "tab:orange"),
                                 ("itl_ms", "inter-token", "tab:purple")):
        p = [r.percentiles(metric, (50, 90)) for r in reports]
        lat_ax.plot(rates, [x[50] for x in p], "o-", color=color, ms=8, lw=2, label=f"{label} p50")
        lat_ax.plot(rates, [x[90] for x in p], "s--", color=color, ms=7, lw=1.5, label=f"{label} p90")
    lat_ax.set_yscale("log")
    lat_ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    lat_ax.yaxis.set_major_formatter(ScalarFormatter())  # plain numbers (200, not 2×10^2) on the log axis
    lat_ax.yaxis.set_minor_formatter(NullFormatter())
    finish_axes(lat_ax, "arrival rate (requests/s, as sent)", "latency (ms, log scale)", "Latency: p50 and p90")
    top = max(rates + [r.throughput_rps for r in reports if math.isfinite(r.throughput_rps)])
    tput_ax.plot([0, top * 1.05], [0, top * 1.05], ":", color="gray", lw=2, label="keeps up (y = x)")
    spread = [math.sqrt(len(r.completed)) / r.duration_s if r.duration_s > 0 else 0 for r in reports]
    tput_ax.errorbar(rates, [r.throughput_rps for r in reports], yerr=spread, fmt="o-", color="tab:green",
                     ms=8, lw=2, capsize=4, label="completed requests/s (± √n / T)")
    finish_axes(tput_ax, "arrival rate (requests/s, as sent)", "throughput (completed requests/s)", "Throughput",
                legend_loc="upper left")
    fig.suptitle(title, fontsize=FONT_SIZE + 2)
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class Budget:
    """A service level: p90 time to first token within ``ttft_p90_ms``, at least ``tokens_per_s`` per user at
    p90 (p90 time per output token ≤ 1000 / tokens_per_s), the p90 of the pooled inter-token gaps within
    ``itl_p90_ms`` (the stall a reader sees mid-reply, which TPOT averages away), every request completed.

    ``itl_p90_ms=None`` leaves the gaps unchecked. Raises ValueError for a bound that is not a number > 0.
    """

    ttft_p90_ms: float = 1000.0
    tokens_per_s: float = 10.0
    itl_p90_ms: float | None = 100.0

    def __post_init__(self) -> None:
        _check_positive("ttft_p90_ms", self.ttft_p90_ms, "ms", allow_inf=True)
        _check_positive("tokens_per_s", self.tokens_per_s, "tokens/s", allow_inf=True)
        if self.itl_p90_ms is not None:
            _check_positive("itl_p90_ms", self.itl_p90_ms, "ms (None: unchecked)", allow_inf=True)

    def met_by(self, report: LoadReport) -> bool:
        """Whether the report meets the budget: no failed request, p90 TTFT, TPOT and ITL within bounds (a
        metric with no samples, such as ITL of one-token replies, does not fail it)."""
        if report.errors or len(report.completed) < len(report.records):
            return False
        ttft, tpot, itl = (report.percentiles(m, (90,))[90] for m in ("ttft_ms", "tpot_ms", "itl_ms"))
        return (ttft <= self.ttft_p90_ms and (math.isnan(tpot) or tpot <= 1000.0 / self.tokens_per_s)
                and (self.itl_p90_ms is None or math.isnan(itl) or itl <= self.itl_p90_ms))


def sustainable_rate(base_url: str, bodies: Sequence[dict], rates: Sequence[float], budget: Budget = Budget(),
                     **options) -> tuple[float, list[LoadReport]]:
    """Run ``bodies`` at each rate in ascending order until the budget is missed; return the best rate met.

    The highest offered rate whose run meets ``budget`` (0.0 if none does), and the reports of every run made
    (the first run that misses the budget is the last one: higher rates only queue more). ``options`` go to
    ``run_load``. Raises ValueError for no rates or a rate not > 0.
    """
    if not rates:
        raise ValueError("rates is empty; give at least one offered rate in requests/s")
    best, reports = 0.0, []
    for rate in sorted(rates):
        reports.append(run_load_sync(base_url, bodies, rate, **options))
        if not budget.met_by(reports[-1]):
            break
        best = rate
    return best, reports
