"""Continuous batching: many replies share one model, each joining and leaving the batch at any decode step.

Introduced in notebooks/07_realtime_pipeline.ipynb; ``lmlab.serving.app`` puts an ``Engine`` behind HTTP.

A decode step costs about the same for one row as for eight (it reads every weight once either way, chapter 06),
so a server that answers several people at once should run their steps together. An ``Engine`` keeps one
running batch and, at every step,

1. drops the rows whose reply ended or whose client went away (their KV cache is freed at once);
2. admits waiting requests (``policy``): "continuous" admits whenever a slot is free, "static" only when the
   whole batch has finished (request-level batching), "sequential" one request at a time;
3. prefills what the admitted prompts need (their first tokens: the time to first token);
4. runs ONE decode step for every row, each at its own position, and picks every row's token.

Every row computes exactly what it would alone, so a greedy reply's tokens do not depend on its neighbours: the
forward pass and the pick are ``lmlab.inference.step``'s and ``lmlab.inference.sampling``'s, the code
``lmlab.inference.decode.generate`` runs, so one ``SamplingParams`` gives one reply through both.

Two schedulers share this module's requests, events and bookkeeping; ``Engine(...)`` picks by the step:

- ``lmlab.serving.slots.SlotEngine`` (lmlab's fused graphs, backends "fused", "fused-int8", "fused-int4"): the
  second generation. Its KV cache is one preallocated buffer of slots (``lmlab.serving.kvcache``): joining and
  leaving copy nothing; admission counts free cache memory and preempts when decoding outgrows it; a long prompt
  is prefilled in chunks under a per-step token budget between decode steps; any shared prompt prefix is found
  by hashing full token blocks.
- ``lmlab.serving.dense.DenseEngine`` (any other step: eager PyTorch, the exported ONNX graphs): the first
  generation, whose steps read one dense left-padded cache, so rows joining and leaving re-pad and copy it.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from lmlab.inference.decode import CausalLM, make_step, window_fix
from lmlab.inference.sampling import SamplingParams, pick_rows, sampling_params
from lmlab.inference.step import DecodeStep
from lmlab.measure.runtime import check_int, torch_threads
from lmlab.measure.timing import Stopwatch

POLICIES = ("continuous", "static", "sequential")


class QueueFull(RuntimeError):
    """The engine's waiting queue is at ``max_queue``: the request was refused, try again later."""


@dataclass(frozen=True)
class Event:
    """What a request hears from the engine: a token (``kind="token"``) or its end (``kind="done"``).

    A token event has the token's id and text (what it adds to the decoded reply). The done event has
    ``finish_reason`` ("stop": end-of-sequence, "length": max_new_tokens, "cancelled", "error"), the error's
    message if any, and ``timing`` (ms): queue, prefill, ttft (arrival to first token), decode per token, total.
    """

    kind: str
    token: int | None = None
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    timing: dict = field(default_factory=dict)


class Ticket:
    """One submitted request: read its events with ``events()`` (or a callback), stop it with ``cancel()``."""

    def __init__(self, request_id: int, callback: Callable[[Event], None] | None):
        self.id = request_id
        self._callback = callback
        self._events: queue.Queue[Event] = queue.Queue()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        """Ask the engine to drop this request at its next step, freeing its slot and KV cache."""
        self.cancelled.set()

    def _emit(self, event: Event) -> None:
        if self._callback is not None:
            self._callback(event)
        else:
            self._events.put(event)

    def events(self, timeout_s: float = 120.0) -> Iterator[Event]:
        """Yield the request's events until its done event (only without a callback). Raises TimeoutError."""
        while True:
            try:
                event = self._events.get(timeout=timeout_s)
            except queue.Empty:
                raise TimeoutError(f"no event for {timeout_s} s from request {self.id}") from None
            yield event
            if event.kind == "done":
                return

    def result(self, timeout_s: float = 120.0) -> tuple[list[int], Event]:
        """Wait for the end; return (the reply's token ids, the done event)."""
        tokens: list[int] = []
        for event in self.events(timeout_s):
            if event.kind == "token":
                assert event.token is not None  # a token event carries its id
                tokens.append(event.token)
            else:
                return tokens, event
        raise AssertionError("unreachable")  # pragma: no cover


class LRU:
    """A dictionary that keeps at most ``max_entries`` items, evicting the least recently used; counts hits."""

    def __init__(self, max_entries: int):
        self.max_entries = check_int("max_entries", max_entries, 0)
        self._items: OrderedDict = OrderedDict()
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return None

    def peek(self, key):
        """The value for ``key`` (None if absent), without counting a hit or a miss or refreshing its place."""
        with self._lock:
            return self._items.get(key)

    def put(self, key, value) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def keys(self) -> list:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0


class Detokenizer:
    """Text of a reply token by token, without decoding the whole reply at every token.

    Each new token decodes only the tokens since the last piece sent (``prefix``) and those not yet sent: a piece
    is sent when it adds text and does not end in the replacement character "\\ufffd" (a character whose bytes
    are split across tokens waits for its last byte). ``skip`` (the end-of-sequence id) adds no text. The pieces
    add up to ``decode(tokens)``: the same text the whole decode gives, in O(1) tokens decoded per token.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], skip: int | None = None):
        self.decode, self.skip = decode, skip
        self.tokens: list[int] = []
        self.prefix = self.read = 0  # tokens[prefix:read] made the last piece's context; tokens[read:] are unsent

    def add(self, token: int) -> str:
        """Take one token; return the text it completes ("" while a character is incomplete, or for ``skip``)."""
        if token == self.skip:
            return ""
        self.tokens.append(token)
        before = self.decode(self.tokens[self.prefix:self.read])
        text = self.decode(self.tokens[self.prefix:])
        if len(text) > len(before) and not text.endswith("\ufffd") and text.startswith(before):
            self.prefix, self.read = self.read, len(self.tokens)
            return text[len(before):]
        return ""


@dataclass
class _Request:
    ticket: Ticket
    ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stop_at_eos: bool
    prefix_len: int
    clock: Stopwatch  # started at arrival; the stamps below are its elapsed ms (no GPU wait: sync=False)
    detokenizer: Detokenizer
    admitted_ms: float = math.nan  # arrival -> admitted to a prefill
    first_ms: float = math.nan  # arrival -> first token picked
    prefill_ms: float = 0.0
    prefix_hit: bool = False
    new: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    slot: int | None = None  # SlotEngine: the request's row of the KV buffer
    target: list[int] = field(default_factory=list)  # SlotEngine: the ids its prefill computes
    done: int = 0  # SlotEngine: positions of its slot computed so far
    hashes: list[bytes] = field(default_factory=list)  # SlotEngine: the names of its prompt's full blocks
    order: int = 0  # SlotEngine: admission order (the newest is preempted first)
    swapped: np.ndarray | None = None  # SlotEngine: a preempted request's keys and values, until readmitted


class Engine:
    """Run one model for many requests at once: a thread that prefills, batches and decodes.

    ``lm`` is a ``decode.CausalLM``; ``backend`` one of ``decode.BACKENDS`` (or pass a ready ``step``): a fused
    backend gets a ``SlotEngine``, any other a ``DenseEngine`` (see the module's docstring); the options below
    are both's. ``max_batch`` bounds the rows decoded together, ``max_queue`` the requests waiting for a slot
    (``submit`` raises ``QueueFull`` beyond it). ``prefix_cache``: the prefix cache's size, 0 for off (the
    SlotEngine's is in blocks of tokens, the DenseEngine's in declared prefixes). ``threads``: torch's (and
    ONNX Runtime's) thread count for the engine. Each scheduler documents its own further options.
    Raises ValueError for an unknown policy or an out-of-range bound.
    """

    schedulers: ClassVar[list[type[Engine]]] = []  # every subclass, as defined (lmlab.serving imports both)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Engine.schedulers.append(cls)

    @classmethod
    def runs(cls, backend: str, step: DecodeStep | None) -> bool:
        """Whether this scheduler runs the step (or the step ``backend`` makes)."""
        return False

    def __new__(cls, lm: CausalLM, *args, backend: str = "eager", step: DecodeStep | None = None, **options):
        if cls is Engine:  # the scheduler that runs this step
            runs = [kind for kind in Engine.schedulers if kind.runs(backend, step)]
            if not runs:
                raise ValueError(f"backend={backend!r}: no scheduler runs it; import lmlab.serving (it defines them)")
            cls = runs[0]
        return super().__new__(cls)

    def __init__(self, lm: CausalLM, *, backend: str = "eager", step: DecodeStep | None = None, max_batch: int = 8,
                 max_queue: int = 64, policy: str = "continuous", threads: int | None = None):
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r} is unknown; use one of {POLICIES}")
        self.lm = lm
        self.threads = threads
        self.step = step if step is not None else make_step(lm, backend, threads)
        self.backend = self.step.backend
        self.max_batch = check_int("max_batch", max_batch, 1, 256)
        self.max_queue = check_int("max_queue", max_queue, 0)
        self.policy = policy
        self.steps = 0  # decode steps run
        self.rows_stepped = 0  # sum over steps of the batch size
        self.finished: Counter[str] = Counter()  # requests ended, by finish reason
        self._ids = itertools.count()
        self._waiting: deque[_Request] = deque()
        self._rows: list[_Request] = []
        self._counts = threading.Lock()  # `active` reads the batch and the prefilling count together
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- the public side -------------------------------------------------------------------------------------

    def start(self) -> Engine:
        """Start the engine's thread (idempotent); return the engine."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lmlab-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel what is running or waiting, and end the thread."""
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def active(self) -> int:
        """Requests admitted: in the running batch, or being prefilled to join it."""
        with self._counts:
            return len(self._rows) + self._prefilling_count()

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiting)

    @property
    def mean_batch(self) -> float:
        """Mean rows per decode step so far (nan before the first step)."""
        return self.rows_stepped / self.steps if self.steps else math.nan

    def configure(self, *, policy: str | None = None, max_batch: int | None = None,
                  prefix_cache: int | None = None) -> None:
        """Change the policy, the batch bound or the prefix cache's size (clearing it), when idle; reset the
        counts. Raises ValueError for a setting out of range."""
        if policy is not None and policy not in POLICIES:
            raise ValueError(f"policy={policy!r} is unknown; use one of {POLICIES}")
        if max_batch is not None:
            check_int("max_batch", max_batch, 1, 256)
        if prefix_cache is not None:
            check_int("prefix_cache", prefix_cache, 0)
        with self._wake:
            self.policy = policy or self.policy
            self._resize(max_batch or self.max_batch, prefix_cache)
            self.steps = self.rows_stepped = 0
            self.finished.clear()
            self._reset_counts()

    def check(self, ids: Sequence[int], max_new_tokens: int) -> None:
        """Raise ValueError if the prompt is empty, holds an unknown id, or does not fit the window."""
        if len(ids) == 0:
            raise ValueError("prompt is empty; give at least one token")
        vocab = self.lm.config.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"prompt holds a token id outside [0, {vocab - 1}]")
        window = self.window
        check_int("max_new_tokens", max_new_tokens, 1, window)
        if len(ids) + max_new_tokens > window:
            raise ValueError(f"max_new_tokens={max_new_tokens} with a {len(ids)}-token prompt needs "
                             f"{len(ids) + max_new_tokens} positions; this engine holds {window} per reply "
                             f"({self.lm.name}): {window_fix(window, len(ids), max_new_tokens)}")

    @property
    def window(self) -> int:
        """The most positions (prompt + reply) one request may take."""
        return self.lm.window

    def submit(self, ids: Sequence[int], max_new_tokens: int = 32, *, sampling: SamplingParams | None = None,
               stop_at_eos: bool = True, prefix_len: int = 0, callback: Callable[[Event], None] | None = None,
               sample: bool | None = None, temperature: float | None = None, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None) -> Ticket:
        """Queue a prompt (token ids); return its ``Ticket``. ``sampling`` (default greedy) picks its tokens,
        with one generator per request; ``sample``, ``temperature``, ``top_k``, ``top_p``, ``seed`` are the older
        spelling of the same settings.

        ``prefix_len``: how many leading tokens are a shared prefix worth caching (the system prompt; the
        DenseEngine's prefix cache needs it, the SlotEngine finds shared prefixes itself).
        ``callback`` receives each event in the engine's thread instead of the ticket's queue.
        Raises ValueError for a prompt or settings out of range, QueueFull when ``max_queue`` requests wait.
        """
        ids = [int(t) for t in ids]
        self.check(ids, max_new_tokens)
        params = sampling_params(sampling, sample=sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        check_int("prefix_len", prefix_len, 0, len(ids))
        ticket = Ticket(next(self._ids), callback)
        request = _Request(ticket, ids, max_new_tokens, params, stop_at_eos, prefix_len,
                           Stopwatch(sync=False).start(), Detokenizer(self.lm.decode, self.lm.eos_id))
        with self._wake:
            if self._stop:
                raise QueueFull("the engine is stopping")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (max_queue={self.max_queue})")
            self._waiting.append(request)
            self._wake.notify()
        return ticket

    def generate(self, ids: Sequence[int], max_new_tokens: int = 32, **options) -> list[int]:
        """Submit one prompt and wait for its token ids (for tests and notebooks)."""
        tokens, done = self.submit(ids, max_new_tokens, **options).result()
        if done.finish_reason == "error":
            raise RuntimeError(done.error)
        return tokens

    def cache_state(self) -> dict:
        """The KV cache as /health shows it (the scheduler's own fields; {} where it keeps none)."""
        return {}

    # -- the engine's thread: what a scheduler provides ------------------------------------------------------

    def _prefilling_count(self) -> int:
        raise NotImplementedError

    def _busy(self) -> bool:
        """Whether anything is admitted (called with the lock held)."""
        raise NotImplementedError

    def _admit(self) -> list[_Request]:
        """Take the waiting requests the policy (and the cache) let in now (called with the lock held)."""
        raise NotImplementedError

    def _iterate(self, admitted: list[_Request]) -> None:
        """One round: drop the cancelled, prefill, decode one step."""
        raise NotImplementedError

    def _admitted(self) -> list[_Request]:
        """Every request the scheduler holds outside the waiting queue."""
        raise NotImplementedError

    def _clear(self) -> None:
        """Forget every admitted request and free its cache."""
        raise NotImplementedError

    def _resize(self, max_batch: int, prefix_cache: int | None) -> None:
        self.max_batch = max_batch

    def _reset_counts(self) -> None:
        pass

    def _run(self) -> None:
        with torch_threads(self.threads), torch.inference_mode():
            while True:
                with self._wake:
                    while not self._stop and not self._busy() and not self._waiting:
                        self._wake.wait(0.5)
                    if self._stop:
                        break
                    admitted = self._admit()
                try:
                    self._iterate(admitted)
                except Exception as error:  # a fault in the scheduler itself: end what runs, keep serving
                    for request in self._admitted():
                        self._finish(request, "error", f"{type(error).__name__}: {error}")
                    self._clear()
            for request in self._admitted() + list(self._waiting):
                self._finish(request, "cancelled")
            self._waiting = deque()
            self._clear()

    # -- what every scheduler does to a request --------------------------------------------------------------

    def _take_waiting(self, slots: int, fits: Callable[[_Request], bool] = lambda request: True) -> list[_Request]:
        """Pop waiting requests while fewer than ``slots`` are admitted and the next one ``fits`` (cancelled ones
        end here)."""
        admitted: list[_Request] = []
        while self._waiting and len(admitted) < slots:
            request = self._waiting[0]
            if request.ticket.cancelled.is_set():
                self._finish(self._waiting.popleft(), "cancelled")
                continue
            if not fits(request):
                break
            admitted.append(self._waiting.popleft())
        return admitted

    def _pick(self, request: _Request, logits: torch.Tensor) -> int:
        """The request's next token from its (1, vocab) logits, with its own generator (made at its first pick)."""
        return self._pick_rows([request], logits)[0]

    def _pick_rows(self, requests: Sequence[_Request], logits: torch.Tensor) -> list[int]:
        """Each request's next token from the (B, vocab) logits, row by row, each with its own generator (made at
        its first pick): greedy rows in one argmax, sampled rows' distributions in one pass per setting."""
        for request in requests:
            if request.sampling.sample and request.generator is None:
                request.generator = request.sampling.generator(logits.device)
        return pick_rows(logits, [r.sampling for r in requests], [r.generator for r in requests])

    def _emit_token(self, request: _Request, token: int) -> bool:
        """Send one token to its request; return whether the request goes on."""
        request.new.append(token)
        eos = self.lm.eos_id is not None and token == self.lm.eos_id
        if not eos or not request.stop_at_eos:  # an end-of-sequence token is a token like any other when ignored
            request.ticket._emit(Event("token", token=token, text=request.detokenizer.add(token)))
        if request.ticket.cancelled.is_set():
            self._finish(request, "cancelled")
            return False
        if eos and request.stop_at_eos:
            self._finish(request, "stop")
            return False
        if len(request.new) >= request.max_new_tokens:
            self._finish(request, "length")
            return False
        return True

    def _finish(self, request: _Request, reason: str, error: str | None = None) -> None:
        total_ms = request.clock.elapsed_ms()
        self.finished[reason] += 1
        n = len(request.new)
        timing = {"queue_ms": total_ms if math.isnan(request.admitted_ms) else request.admitted_ms,
                  "prefill_ms": request.prefill_ms,
                  "ttft_ms": request.first_ms,
                  "decode_ms_per_token": (total_ms - request.first_ms) / (n - 1) if n > 1 else math.nan,
                  "total_ms": total_ms,
                  "prefix_cache_hit": request.prefix_hit}
        request.ticket._emit(Event("done", finish_reason=reason, error=error, completion_tokens=n,
                                   prompt_tokens=len(request.ids), timing=timing))
