"""The second-generation scheduler: KV slots, admission by cache memory, chunked prefill, automatic prefix caching.

Introduced in notebooks/07_realtime_pipeline.ipynb; ``lmlab.serving.engine.Engine`` picks it for lmlab's fused graphs
(``lmlab.compress.fused``, backends "fused", "fused-int8", "fused-int4"), whose GroupQueryAttention reads each row
of the KV buffer at its own length. One round of the engine's thread:

1. **Drop** the requests whose client went away: their slot is free at once (nothing is copied).
2. **Admit** waiting requests while a slot is free and the cache's token budget holds their prompt
   (``cache_tokens``): a request takes a slot (``lmlab.serving.kvcache.SlotCache``) and, if its prompt starts with
   blocks another prompt computed, a copy of their keys and values (``PrefixBlocks``, ``prefix_cache`` blocks of
   ``block`` tokens; 0: off).
3. **Prefill in chunks**: while streams are decoding, the admitted prompts are computed in pieces of at most
   ``chunk_tokens`` tokens per round, oldest first (``chunk_tokens=None``, or no stream decoding: whole prompts),
   each piece one pass over its slot, never of a single position unless one is all that is left
   (``piece_length``: ONNX Runtime computes one row in another order than several). A long prompt then
   delays each running stream's next token by one piece, not by its whole prefill (prefill-decode interference).
   A prompt's last piece picks its first token; its full blocks join the prefix cache.
4. **Decode** one token for every running request in ONE pass over slots [0, highest taken]: ids (B, 1), each row's
   mask its own length (a free slot in that range computes a dummy token that nothing reads). If the positions
   the step adds do not fit ``cache_tokens``, the newest requests are **preempted** first: their slots are freed
   and they wait at the head of the queue, to be recomputed (prompt and tokens so far) when readmitted; the
   tokens they already sent are not sent again.

A request's rows never share a sum with another request's (its own slot, its own length, no padding), so a greedy
reply is the same alone and in any batch. The engine does not speculate (``lmlab.serving.dense`` does, for a
request alone).
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch

from lmlab.inference.decode import CausalLM
from lmlab.inference.step import DecodeStep, next_logits
from lmlab.measure.runtime import check_int
from lmlab.measure.timing import Stopwatch
from lmlab.serving.engine import Engine, _Request
from lmlab.serving.kvcache import PrefixBlocks, SlotCache

SLOTTED_BACKENDS = ("fused", "fused-int8", "fused-int4")
DEFAULT_CHUNK_TOKENS = 16  # prefill per round: p99 gap <= 2x its median with a 1,000-token newcomer (bench_engine)


def piece_length(remaining: int, budget: float) -> int:
    """Return how many of a prompt's ``remaining`` positions the next prefill piece computes, within ``budget``.

    p = min(remaining, max(budget, 2)), then p = remaining if that would leave one position. A piece of ONE
    position runs ONNX Runtime's one-row float32 path (a matrix-vector product: another order of sums than for
    several rows, ~1e-5 apart), which the int8 graph's rounded activations grow to ~1 logit; rows of a piece of
    two or more get the bits of a whole prefill. So a piece has one position only when the prompt's whole
    remainder has one, as a whole prefill's would; it may exceed the budget by up to 2 positions.
    Raises ValueError for remaining < 1.
    """
    check_int("remaining", remaining, 1)
    piece = int(min(remaining, max(budget, 2)))
    return remaining if remaining - piece == 1 else piece


def slotted(backend: str, step: DecodeStep | None) -> bool:
    """Whether a step (or the step a backend makes) reads KV slots in place: lmlab's fused graphs."""
    if step is not None:
        return hasattr(step, "empty_past") and hasattr(step, "max_length")
    return backend in SLOTTED_BACKENDS


class SlotEngine(Engine):
    """The second-generation scheduler (see the module's docstring); ``Engine(...)`` makes one for a fused step.

    Beyond ``Engine``'s options: ``prefix_cache``: blocks of ``block`` tokens the prefix cache keeps (0: off);
    ``chunk_tokens``: the prefill's tokens per round (None: whole prompts); ``cache_tokens``: the positions all
    slots may hold together (None: every slot full, max_batch · the step's max_length). ``speculative`` must be
    None. Raises ValueError for a bound out of range or a speculative method.
    """

    def __init__(self, lm: CausalLM, *, backend: str = "fused-int8", step: DecodeStep | None = None,
                 max_batch: int = 8, max_queue: int = 64, policy: str = "continuous", prefix_cache: int = 0,
                 threads: int | None = None, speculative: str | None = None, draft_k: int = 4, block: int = 16,
                 chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS, cache_tokens: int | None = None):
        if speculative is not None:
            raise ValueError(f"speculative={speculative!r}: the slot engine (fused formats) does not speculate; "
                             f"use None, or a non-fused format (lmlab.serving.dense speculates for one request)")
        super().__init__(lm, backend=backend, step=step, max_batch=max_batch, max_queue=max_queue, policy=policy,
                         threads=threads)
        self.capacity = int(cast(Any, self.step).max_length)  # positions one slot holds: the fused graph's buffer
        self.speculative, self.draft_k, self.drafted, self.accepted = None, draft_k, 0, 0
        self.chunk_tokens = None if chunk_tokens is None else check_int("chunk_tokens", chunk_tokens, 1)
        self.block = check_int("block", block, 1, 1024)
        self.prefixes = PrefixBlocks(prefix_cache, self.block)
        self.cache = SlotCache(self.step, self.max_batch, self.capacity, cache_tokens)
        self.cache_tokens = cache_tokens
        self.preemptions = 0  # requests sent back to the queue for want of cache memory
        self._prefills: list[_Request] = []  # admitted, slot taken, prompt not yet all computed
        self._order = 0

    @classmethod
    def runs(cls, backend: str, step: DecodeStep | None) -> bool:
        return slotted(backend, step)

    @property
    def window(self) -> int:
        return min(self.lm.window, self.capacity, self.cache.budget_tokens)

    def cache_state(self) -> dict:
        """The KV cache as /health shows it: slots, positions held, the budget, bytes, preemptions, prefix hits."""
        cache, prefixes = self.cache, self.prefixes
        return {"slots": cache.slots, "free_slots": cache.free, "used_tokens": cache.used_tokens,
                "budget_tokens": cache.budget_tokens, "buffer_bytes": cache.nbytes,
                "bytes_per_token": cache.bytes_per_token, "preemptions": self.preemptions,
                "prefix_blocks": len(prefixes), "prefix_bytes": prefixes.nbytes,
                "prefix_hit_tokens": prefixes.hit_tokens, "prefix_lookup_tokens": prefixes.lookup_tokens}

    # -- what the engine's thread asks of a scheduler --------------------------------------------------------

    def _prefilling_count(self) -> int:
        return len(self._prefills)

    def _busy(self) -> bool:
        return bool(self._rows or self._prefills)

    def _admitted(self) -> list[_Request]:
        return self._rows + self._prefills

    def _clear(self) -> None:
        for request in self._admitted():
            if request.slot is not None:
                self.cache.release(request.slot)
                request.slot = None
        with self._counts:
            self._rows, self._prefills = [], []

    def _resize(self, max_batch: int, prefix_cache: int | None) -> None:
        if self._busy() or self._waiting:
            raise ValueError("requests are in flight; change max_batch or prefix_cache when the engine is idle")
        if max_batch != self.max_batch:
            self.cache = SlotCache(self.step, max_batch, self.capacity, self.cache_tokens)
        self.max_batch = max_batch
        if prefix_cache is not None:
            self.prefixes = PrefixBlocks(prefix_cache, self.block)

    def _reset_counts(self) -> None:
        self.preemptions = 0

    def _admit(self) -> list[_Request]:
        if self.policy == "static" and self._busy():
            return []
        slots = (1 - len(self._admitted()) if self.policy == "sequential" else self.cache.free)
        reserved = sum(len(r.target) - r.done for r in self._prefills)  # positions the prefills will still add

        def fits(request: _Request) -> bool:
            nonlocal reserved
            need = len(request.ids) + len(request.new) + 1  # a swapped request: the positions it held, and one
            if not self.cache.fits(reserved + need):
                return False
            reserved += need
            return True

        admitted = self._take_waiting(slots, fits)
        for request in admitted:
            swapped = request.swapped
            self._open(request)
            with self._counts:  # a request swapped back in decodes at once; any other is prefilled first
                if swapped is None:
                    self._prefills = self._prefills + [request]
                else:
                    self._rows = self._rows + [request]
        return admitted

    def _iterate(self, admitted: list[_Request]) -> None:
        self._drop_cancelled()
        self._prefill_round()
        if self._rows:
            self._preempt_for(len(self._rows))
            self._decode()

    # -- slots ----------------------------------------------------------------------------------------------

    def _open(self, request: _Request) -> None:
        """Give an admitted request a slot and the cached blocks its prompt (and reply so far) starts with."""
        request.slot = self.cache.take()
        if request.swapped is not None:  # preempted: its keys and values come back as they were
            self.cache.write(request.slot, 0, request.swapped)
            request.done = request.swapped.shape[2]
            self.cache.lengths[request.slot], request.swapped = request.done, None
            return
        request.target = request.ids
        request.hashes, found = self.prefixes.match(request.target)
        if found and len(request.target) - len(found) * self.block == 1:  # one position left: one-row path
            found = found[:-1]  # recompute the last block with it, as a whole prefill computes them
        for i, block in enumerate(found):
            self.cache.write(request.slot, i * self.block, block)
        request.done = len(found) * self.block
        self.cache.lengths[request.slot] = request.done
        request.prefix_hit = request.prefix_hit or bool(found)
        if math.isnan(request.admitted_ms):
            request.admitted_ms = request.clock.elapsed_ms()
        self._order += 1
        request.order = self._order

    def _release(self, request: _Request) -> None:
        if request.slot is not None:
            self.cache.release(request.slot)
            request.slot = None

    def _drop_cancelled(self) -> None:
        for request in [r for r in self._admitted() if r.ticket.cancelled.is_set()]:
            self._leave(request)
            self._finish(request, "cancelled")

    def _leave(self, request: _Request) -> None:
        """Take a request out of the batch (or its prefill) and free its slot."""
        self._release(request)
        with self._counts:
            self._rows = [r for r in self._rows if r is not request]
            self._prefills = [r for r in self._prefills if r is not request]

    # -- prefill ---------------------------------------------------------------------------------------------

    def _prefill_round(self) -> None:
        """Compute up to ``chunk_tokens`` prompt positions, oldest prefill first, one pass per piece (whole
        prompts while no stream is decoding: there is no one to keep waiting)."""
        budget = math.inf if self.chunk_tokens is None or not self._rows else self.chunk_tokens
        for request in list(self._prefills):
            if budget <= 0:
                break
            piece = piece_length(len(request.target) - request.done, budget)  # never a lone position
            budget -= piece
            clock = Stopwatch(sync=False).start()
            try:
                last = self._run_piece(request, piece)
            except Exception as error:  # this request fails; the batch goes on
                self._leave(request)
                self._finish(request, "error", f"{type(error).__name__}: {error}")
                continue
            request.prefill_ms += clock.elapsed_ms()
            if request.done == len(request.target):
                self._prefilled(request, last)

    def _run_piece(self, request: _Request, piece: int) -> torch.Tensor:
        """One pass over the request's slot: positions [done, done + piece) of its target; the last one's logits."""
        slot, start = request.slot, request.done
        assert slot is not None  # an admitted request holds a slot
        ids = torch.tensor([request.target[start:start + piece]])  # (1, piece)
        mask = torch.ones((1, start + piece), dtype=torch.long)
        last, past = next_logits(self.step, ids, mask, self.cache.past(slot, slot + 1))  # (1, vocab)
        self.cache.keep(slot, slot + 1, past)
        request.done += piece
        self.cache.lengths[slot] = request.done
        return last

    def _prefilled(self, request: _Request, last: torch.Tensor) -> None:
        """A prompt is all computed: keep its new full blocks, send its next token, and decode it from now on."""
        assert request.slot is not None  # an admitted request holds a slot
        fresh = [(i, name) for i, name in enumerate(request.hashes) if name not in self.prefixes]
        self.prefixes.add([name for _, name in fresh],
                          [self.cache.read(request.slot, i * self.block, (i + 1) * self.block) for i, _ in fresh])
        token = self._pick(request, last)
        if not request.new:
            request.first_ms = request.clock.elapsed_ms()
        with self._counts:
            self._prefills = [r for r in self._prefills if r is not request]
            self._rows = self._rows + [request]
        if not self._emit_token(request, token):
            self._leave(request)

    # -- decode ----------------------------------------------------------------------------------------------

    def _preempt_for(self, tokens: int) -> None:
        """Preempt the newest running requests until ``tokens`` more positions fit the cache's budget."""
        while len(self._rows) > 1 and not self.cache.fits(tokens):
            victim = max(self._rows, key=lambda r: r.order)
            assert victim.slot is not None  # a running request holds a slot
            victim.swapped = self.cache.read(victim.slot, 0, int(self.cache.lengths[victim.slot]))
            self._leave(victim)
            tokens -= 1
            self.preemptions += 1
            with self._wake:
                self._waiting.appendleft(victim)

    def _decode(self) -> None:
        """One decode step for every running request: one pass over slots [0, highest taken]."""
        rows = self._rows
        top = max(r.slot for r in rows if r.slot is not None) + 1
        lengths = self.cache.lengths[:top]
        width = int(lengths.max())
        feed = torch.full((top, 1), self.lm.pad_id, dtype=torch.long)
        for request in rows:
            feed[request.slot, 0] = request.new[-1]
        columns = np.arange(width + 1)
        mask = torch.from_numpy(((columns >= width - lengths[:, None]) | (columns == width)).astype(np.int64))
        try:
            last, past = next_logits(self.step, feed, mask, self.cache.past(0, top))  # (top, vocab)
        except Exception as error:  # a failed step ends the rows it ran; the engine goes on
            for request in list(rows):
                self._leave(request)
                self._finish(request, "error", f"{type(error).__name__}: {error}")
            return
        self.cache.keep(0, top, past)
        slots = [cast(int, r.slot) for r in rows]
        self.cache.lengths[slots] += 1  # the free slots' dummy positions are not counted: nothing reads them
        self.steps += 1
        self.rows_stepped += len(rows)
        for request, token in zip(rows, self._pick_rows(rows, last[slots])):
            if not self._emit_token(request, token):
                self._leave(request)
