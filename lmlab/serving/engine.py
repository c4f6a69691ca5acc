"""Continuous batching: many replies share one model, each joining and leaving the batch at any decode step.

Introduced in notebooks/07_realtime_pipeline.ipynb; ``lmlab.serving.app`` puts an ``Engine`` behind HTTP.

A decode step costs about the same for one row as for eight (it reads every weight once either way, chapter 06),
so a server that answers several people at once should run their steps together. The ``Engine`` keeps one
running batch and, at every step,

1. drops the rows whose reply ended or whose client went away (their slot and KV cache are freed at once);
2. admits waiting requests (``policy``): "continuous" admits whenever a slot is free, "static" only when the
   whole batch has finished (request-level batching), "sequential" one request at a time;
3. prefills the admitted prompts in one left-padded pass (their first tokens: the time to first token; a prompt
   whose prefix is cached runs alone after it) and merges their KV caches into the batch: rows are left-padded
   to a common length L, with an attention mask that hides the padding;
4. runs ONE decode step for every row: ids (B, 1), mask (B, L + 1), positions (B, 1) = each row's own length.

Every row computes exactly what it would alone, so a greedy reply's tokens do not depend on its neighbours: the
padding, the positions, the forward pass and the pick are ``lmlab.inference.step``'s and
``lmlab.inference.sampling``'s, the code ``lmlab.inference.decode.generate`` runs, so one ``SamplingParams`` gives one
reply through both.
A ``prefix_cache`` keeps the KV state of a shared prompt prefix (a system prompt and FAQ); a request that
starts with it prefills only the rest.

``speculative="prompt-lookup"``: while ONE greedy request is in the engine (the batch holds it alone and nobody
waits), each step drafts ``draft_k`` tokens by prompt lookup and verifies them in one pass
(``lmlab.inference.speculative.verify``): the same tokens, often several per pass. As soon as a second request
arrives the batch decodes one token per row again (speculation here is for batch size 1).
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from lmlab.inference.decode import CausalLM, make_step
from lmlab.inference.sampling import SamplingParams, pick, sampling_params
from lmlab.inference.speculative import check_exact, prompt_lookup, verify
from lmlab.inference.step import PAD_MULTIPLE, DecodeStep, Pairs, left_pad, left_pad_to, next_logits
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


@dataclass
class _Request:
    ticket: Ticket
    ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stop_at_eos: bool
    prefix_len: int
    clock: Stopwatch  # started at arrival; the stamps below are its elapsed ms (no GPU wait: sync=False)
    admitted_ms: float = math.nan  # arrival -> admitted to a prefill
    first_ms: float = math.nan  # arrival -> first token picked
    prefill_ms: float = 0.0
    prefix_hit: bool = False
    new: list[int] = field(default_factory=list)
    shown: str = ""
    generator: torch.Generator | None = None


class Engine:
    """Run one model for many requests at once: a thread that prefills, batches and decodes.

    ``lm`` is a ``decode.CausalLM``; ``backend`` one of ``decode.BACKENDS`` (or pass a ready ``step``).
    ``max_batch`` bounds the rows decoded together, ``max_queue`` the requests waiting for a slot
    (``submit`` raises ``QueueFull`` beyond it). ``prefix_cache`` is how many prompt prefixes keep their KV
    state (0: off). ``threads``: torch's (and ONNX Runtime's) thread count for the engine. ``speculative``
    ("prompt-lookup" or None) speculates ``draft_k`` tokens per pass while one greedy request runs alone.
    Raises ValueError for an unknown policy or speculative method, or an out-of-range bound.
    """

    def __init__(self, lm: CausalLM, *, backend: str = "eager", step: DecodeStep | None = None, max_batch: int = 8,
                 max_queue: int = 64, policy: str = "continuous", prefix_cache: int = 0, threads: int | None = None,
                 speculative: str | None = None, draft_k: int = 4):
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r} is unknown; use one of {POLICIES}")
        if speculative not in (None, "prompt-lookup"):
            raise ValueError(f"speculative={speculative!r} is unknown; the server speculates by None or "
                             f"'prompt-lookup' (a draft model is generate's, not the server's)")
        self.speculative, self.draft_k = speculative, check_int("draft_k", draft_k, 1, 64)
        self.drafted = self.accepted = 0  # speculation's counts: drafted tokens, and those the model agreed with
        self.lm = lm
        self.threads = threads
        self.step = step if step is not None else make_step(lm, backend, threads)
        if speculative:
            check_exact(self.step)  # an int8 verify pass would not give greedy's tokens
        self.backend = self.step.backend
        self.max_batch = check_int("max_batch", max_batch, 1, 256)
        self.max_queue = check_int("max_queue", max_queue, 0)
        self.policy = policy
        self.prefixes = LRU(prefix_cache)
        self.steps = 0  # decode steps run
        self.rows_stepped = 0  # sum over steps of the batch size
        self.finished: Counter[str] = Counter()  # requests ended, by finish reason
        self._ids = itertools.count()
        self._waiting: deque[_Request] = deque()
        self._rows: list[_Request] = []
        self._prefilling = 0  # admitted, being prefilled (or held), not yet in the batch
        self._held: list[tuple[list[_Request], Pairs, torch.Tensor]] = []  # prefilled, waiting to line up: _join
        self._counts = threading.Lock()  # `active` reads the batch and the prefilling count together
        self._past = None  # the batch's KV cache, in the step's own format
        self._mask: torch.Tensor | None = None  # (B, L) 1 for real positions, 0 for left padding
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
            return len(self._rows) + self._prefilling

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
        """Change the policy, the batch bound or the prefix cache's size (clearing it). Raises ValueError."""
        if policy is not None and policy not in POLICIES:
            raise ValueError(f"policy={policy!r} is unknown; use one of {POLICIES}")
        if max_batch is not None:
            check_int("max_batch", max_batch, 1, 256)
        if prefix_cache is not None:
            check_int("prefix_cache", prefix_cache, 0)
        with self._wake:
            self.policy = policy or self.policy
            self.max_batch = max_batch or self.max_batch
            if prefix_cache is not None:
                self.prefixes = LRU(prefix_cache)
            self.steps = self.rows_stepped = self.drafted = self.accepted = 0
            self.finished.clear()

    def check(self, ids: Sequence[int], max_new_tokens: int) -> None:
        """Raise ValueError if the prompt is empty, holds an unknown id, or does not fit the window."""
        if len(ids) == 0:
            raise ValueError("prompt is empty; give at least one token")
        vocab = self.lm.config.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"prompt holds a token id outside [0, {vocab - 1}]")
        check_int("max_new_tokens", max_new_tokens, 1, self.lm.window)
        if len(ids) + max_new_tokens > self.lm.window:
            raise ValueError(f"max_new_tokens={max_new_tokens} with a {len(ids)}-token prompt needs "
                             f"{len(ids) + max_new_tokens} positions; {self.lm.name}'s window is "
                             f"{self.lm.window}: use max_new_tokens <= {self.lm.window - len(ids)}")

    def submit(self, ids: Sequence[int], max_new_tokens: int = 32, *, sampling: SamplingParams | None = None,
               stop_at_eos: bool = True, prefix_len: int = 0, callback: Callable[[Event], None] | None = None,
               sample: bool | None = None, temperature: float | None = None, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None) -> Ticket:
        """Queue a prompt (token ids); return its ``Ticket``. ``sampling`` (default greedy) picks its tokens,
        with one generator per request; ``sample``, ``temperature``, ``top_k``, ``top_p``, ``seed`` are the older
        spelling of the same settings.

        ``prefix_len``: how many leading tokens are a shared prefix worth caching (the system prompt).
        ``callback`` receives each event in the engine's thread instead of the ticket's queue.
        Raises ValueError for a prompt or settings out of range, QueueFull when ``max_queue`` requests wait.
        """
        ids = [int(t) for t in ids]
        self.check(ids, max_new_tokens)
        params = sampling_params(sampling, sample=sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        check_int("prefix_len", prefix_len, 0, len(ids))
        ticket = Ticket(next(self._ids), callback)
        request = _Request(ticket, ids, max_new_tokens, params, stop_at_eos, prefix_len,
                           Stopwatch(sync=False).start())
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

    # -- the engine's thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        with torch_threads(self.threads), torch.inference_mode():
            while True:
                with self._wake:
                    while not self._stop and not self._rows and not self._waiting and not self._held:
                        self._wake.wait(0.5)
                    if self._stop:
                        break
                    admitted = self._admit()
                    self._prefilling = len(admitted) + self._held_rows()
                try:
                    self._drop_cancelled()
                    self._prefill_all(admitted)
                    self._join_held()
                    self._prefilling = self._held_rows()
                    if self._rows:
                        self._decode()
                except Exception as error:  # a fault in the scheduler itself: end what runs, keep serving
                    for request in self._rows + [r for requests, _, _ in self._held for r in requests]:
                        self._finish(request, "error", f"{type(error).__name__}: {error}")
                    self._rows, self._past, self._mask, self._prefilling, self._held = [], None, None, 0, []
            for request in list(self._rows) + [r for requests, _, _ in self._held for r in requests] + list(
                    self._waiting):
                self._finish(request, "cancelled")
            self._rows, self._waiting, self._held = [], deque(), []
            self._past = self._mask = None

    def _admit(self) -> list[_Request]:
        """Take the waiting requests the policy lets in now (called with the lock held)."""
        slots = 1 if self.policy == "sequential" else self.max_batch
        if self.policy == "static" and (self._rows or self._held):
            return []
        admitted: list[_Request] = []
        while self._waiting and len(self._rows) + self._held_rows() + len(admitted) < slots:
            request = self._waiting.popleft()
            if request.ticket.cancelled.is_set():
                self._finish(request, "cancelled")
                continue
            admitted.append(request)
        return admitted

    def _drop_cancelled(self) -> None:
        keep = [i for i, r in enumerate(self._rows) if not r.ticket.cancelled.is_set()]
        if len(keep) < len(self._rows):
            for i, request in enumerate(self._rows):
                if i not in keep:
                    self._finish(request, "cancelled")
            self._keep_rows(keep)

    def _prefill_all(self, requests: list[_Request]) -> None:
        """Prefill the admitted requests: those with a cached prefix one by one, the others in one left-padded
        batch (one pass for all their prompts, as the decode steps share one pass)."""
        plain = [r for r in requests if self._cached_prefix(r.ids, r.prefix_len, count=False)[0] is None]
        for request in requests:
            if request not in plain:
                self._prefill(request)
        if len(plain) == 1:
            self._prefill(plain[0])
        elif plain:
            self._prefill_batch(plain)

    def _prefill_batch(self, requests: list[_Request]) -> None:
        """One pass over several prompts, left-padded: ids and mask (k, L), positions from each first real token."""
        prefill = Stopwatch(sync=False).start()
        for request in requests:
            request.admitted_ms = request.clock.elapsed_ms()
        ids, mask = (t.to(self.step.device) for t in left_pad([r.ids for r in requests], self.lm.pad_id,
                                                              PAD_MULTIPLE))  # (k, L), L a multiple of 4: _join
        longest = ids.shape[1]
        try:
            last, past = next_logits(self.step, ids, mask, None)  # (k, vocab): each row's last real token predicts
            pairs = self.step.to_pairs(past)
            tokens = []
            for i, request in enumerate(requests):
                pad = longest - len(request.ids)
                if request.prefix_len and request.prefix_len < len(request.ids) and self.prefixes.max_entries:
                    self.prefixes.put(tuple(request.ids[:request.prefix_len]),
                                      [(k[i:i + 1, :, pad:pad + request.prefix_len].clone(),
                                        v[i:i + 1, :, pad:pad + request.prefix_len].clone()) for k, v in pairs])
                tokens.append(self._pick(request, last[i:i + 1]))
        except Exception as error:  # these requests fail; the running batch goes on
            for request in requests:
                self._finish(request, "error", f"{type(error).__name__}: {error}")
            return
        prefill_ms = prefill.elapsed_ms()
        keep = []
        for i, (request, token) in enumerate(zip(requests, tokens)):
            request.first_ms, request.prefill_ms = request.clock.elapsed_ms(), prefill_ms
            if self._emit_token(request, token):
                keep.append(i)
        if keep:
            index = torch.tensor(keep, device=mask.device)
            self._join([requests[i] for i in keep], [(k.index_select(0, index), v.index_select(0, index))
                                                     for k, v in pairs], mask.index_select(0, index))

    def _prefill(self, request: _Request) -> None:
        """Run the prompt alone (after its cached prefix, if any), pick its first token, join the batch."""
        request.admitted_ms = request.clock.elapsed_ms()
        ids = request.ids
        try:
            cached, start = self._cached_prefix(ids, request.prefix_len)
            device = self.step.device
            if cached is None:  # the whole prompt, padded as the decode loop pads it alone (see _join)
                feed, mask = (t.to(device) for t in left_pad([ids], self.lm.pad_id, PAD_MULTIPLE))  # (1, width)
            else:
                feed = torch.tensor([ids[start:]], device=device)  # (1, new): what the cached prefix does not hold
                mask = torch.ones((1, len(ids)), dtype=torch.long, device=device)
            pad = mask.shape[1] - len(ids)
            past = self.step.from_pairs(cached) if cached is not None else None
            last, past = next_logits(self.step, feed, mask, past)
            pairs = self.step.to_pairs(past)
            if request.prefix_len and cached is None and request.prefix_len < len(ids):
                self.prefixes.put(tuple(ids[:request.prefix_len]),
                                  [(k[:, :, pad:pad + request.prefix_len].clone(),
                                    v[:, :, pad:pad + request.prefix_len].clone()) for k, v in pairs])
            request.prefix_hit = cached is not None
            token = self._pick(request, last)
        except Exception as error:  # this request fails; the batch goes on
            self._finish(request, "error", f"{type(error).__name__}: {error}")
            return
        request.first_ms = request.clock.elapsed_ms()
        request.prefill_ms = request.first_ms - request.admitted_ms
        if self._emit_token(request, token):
            self._join([request], pairs, mask)

    def _cached_prefix(self, ids: list[int], prefix_len: int, count: bool = True):
        if self.prefixes.max_entries == 0 or not 0 < prefix_len < len(ids):
            return None, 0
        key = tuple(ids[:prefix_len])
        cached = self.prefixes.get(key) if count else self.prefixes.peek(key)
        return (cached, prefix_len) if cached is not None else (None, 0)

    def _join(self, requests: list[_Request], pairs: Pairs, mask: torch.Tensor) -> None:
        """Merge new rows' caches (k, heads, l, dim per layer) and mask (k, l) into the batch's, left-padding
        both to a common length.

        A prompt is prefilled padded to a multiple of PAD_MULTIPLE, as the decode loop pads it alone, and rows
        join only when the two lengths differ by a multiple of 4 (else they are held, and join within 3 decode
        steps): a row's padding then changes by multiples of 4 only, and it computes the same bits as it would
        alone (``lmlab.inference.invariance``). A prompt whose prefix came from the prefix cache is the exception:
        its cached keys and values were computed in another prompt's alignment.
        """
        if self._mask is not None and self._rows and (self._mask.shape[1] - mask.shape[1]) % PAD_MULTIPLE:
            self._held.append((requests, pairs, mask))
            return
        if not self._rows:
            self._mask, self._past = mask, self.step.from_pairs(pairs)
        else:
            assert self._mask is not None  # a batch with rows has a mask
            batch_pairs = self.step.to_pairs(self._past)
            length = max(mask.shape[1], self._mask.shape[1])
            merged = [(torch.cat([left_pad_to(bk, length), left_pad_to(k, length)]),
                       torch.cat([left_pad_to(bv, length), left_pad_to(v, length)]))
                      for (bk, bv), (k, v) in zip(batch_pairs, pairs)]
            self._mask = torch.cat([left_pad_to(self._mask, length), left_pad_to(mask, length)])
            self._past = self.step.from_pairs(merged)
        with self._counts:  # they move from prefilling to the batch in one step, as `active` sees it
            self._rows = self._rows + list(requests)
            self._prefilling = max(0, self._prefilling - len(requests))

    def _held_rows(self) -> int:
        return sum(len(requests) for requests, _, _ in self._held)

    def _join_held(self) -> None:
        """Join the held rows whose length now lines up with the batch's (all of them into an empty batch)."""
        held, self._held = self._held, []
        for requests, pairs, mask in held:
            self._join(requests, pairs, mask)

    def _keep_rows(self, keep: list[int]) -> None:
        """Keep only the rows ``keep`` (the others' caches are freed), and trim padding no row needs."""
        if not keep:
            self._rows, self._past, self._mask = [], None, None
            return
        assert self._mask is not None  # a batch with rows has a mask
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        first = int(mask.any(0).nonzero()[0])  # the first column some row still uses
        first -= first % PAD_MULTIPLE  # trim padding by a multiple of 4 only: see _join
        self._mask = mask[:, first:]
        self._past = self.step.from_pairs([(k.index_select(0, index)[:, :, first:],
                                            v.index_select(0, index)[:, :, first:])
                                           for k, v in self.step.to_pairs(self._past)])
        self._rows = [self._rows[i] for i in keep]

    def _decode(self) -> None:
        """One decode step for every row of the batch (a speculative pass for a greedy request alone)."""
        rows = self._rows
        if self.speculative and len(rows) == 1 and not self._waiting and not rows[0].sampling.sample:
            self._speculate(rows[0])
            return
        assert self._mask is not None  # a batch with rows has a mask
        feed = torch.tensor([[r.new[-1]] for r in rows], device=self._mask.device)  # (B, 1): each row's newest
        mask = torch.cat([self._mask, torch.ones_like(feed)], dim=1)  # (B, L + 1): positions = each row's length
        try:
            last, past = next_logits(self.step, feed, mask, self._past)  # (B, vocab)
        except Exception as error:  # a failed step ends the rows it ran; the engine goes on
            for request in rows:
                self._finish(request, "error", f"{type(error).__name__}: {error}")
            self._rows, self._past, self._mask = [], None, None
            return
        self.steps += 1
        self.rows_stepped += len(rows)
        self._past, self._mask = past, mask
        greedy = pick(last, SamplingParams.greedy(), None).tolist()  # (B,): one argmax for every greedy row
        keep = []
        for i, request in enumerate(rows):
            token = self._pick(request, last[i:i + 1]) if request.sampling.sample else greedy[i]
            if self._emit_token(request, token):
                keep.append(i)
        if len(keep) < len(rows):
            self._keep_rows(keep)

    def _speculate(self, request: _Request) -> None:
        """Draft up to ``draft_k`` tokens by prompt lookup, verify them in one pass, send the tokens kept."""
        assert self._mask is not None  # a batch with rows has a mask
        pad = int(self._mask.shape[1] - self._mask.sum())  # one row alone: its left padding (a multiple of 4 wide)
        sequence = request.ids + request.new
        room = min(self.draft_k, request.max_new_tokens - len(request.new) - 1)
        drafts = prompt_lookup(sequence, room) if room > 0 else []
        try:
            new, self._past = verify(self.step, self._past, sequence, drafts, pad)  # all but the newest token cached
        except Exception as error:  # a failed pass ends the request; the engine goes on
            self._finish(request, "error", f"{type(error).__name__}: {error}")
            self._rows, self._past, self._mask = [], None, None
            return
        self.steps, self.rows_stepped = self.steps + 1, self.rows_stepped + 1
        self.drafted, self.accepted = self.drafted + len(drafts), self.accepted + len(new) - 1
        self._mask = torch.ones((1, pad + len(sequence) + len(new) - 1), dtype=torch.long, device=self._mask.device)
        self._mask[:, :pad] = 0
        for token in new:
            if not self._emit_token(request, token):
                self._keep_rows([])
                return

    def _pick(self, request: _Request, logits: torch.Tensor) -> int:
        """The request's next token from its (1, vocab) logits, with its own generator (made at its first pick)."""
        if request.sampling.sample and request.generator is None:
            request.generator = request.sampling.generator(logits.device)
        return int(pick(logits, request.sampling, request.generator)[0])

    def _emit_token(self, request: _Request, token: int) -> bool:
        """Send one token to its request; return whether the request goes on."""
        request.new.append(token)
        eos = self.lm.eos_id is not None and token == self.lm.eos_id
        if not eos or not request.stop_at_eos:  # an end-of-sequence token is a token like any other when ignored
            text = self.lm.decode([t for t in request.new if t != self.lm.eos_id])
            piece = text[len(request.shown):] if text.startswith(request.shown) else text
            request.shown = text
            request.ticket._emit(Event("token", token=token, text=piece))
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
