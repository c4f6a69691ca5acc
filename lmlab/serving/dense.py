"""The first-generation scheduler: one dense, left-padded KV cache for the whole batch.

Introduced in notebooks/07_realtime_pipeline.ipynb; ``lmlab.serving.engine.Engine`` picks it for a step that reads
one dense cache (eager PyTorch's ``DynamicCache``, the exported ONNX graphs, whose Concat copies the past at every
step anyway): lmlab's GPT, SmolLM2 in float32, ONNX float32 and int8. ``lmlab.serving.slots`` is the second
generation, for the fused graphs.

At every step it

1. drops the rows whose reply ended or whose client went away (their KV cache is freed at once: the batch's
   cache is copied without them, ``index_select``);
2. admits waiting requests by row count (``max_batch``);
3. prefills the admitted prompts in one left-padded pass (a prompt whose declared prefix is cached runs alone
   after it) and merges their KV caches into the batch: rows are left-padded to a common length L, with an
   attention mask that hides the padding (the whole batch's cache is re-padded and concatenated);
4. runs ONE decode step for every row: ids (B, 1), mask (B, L + 1), positions (B, 1) = each row's own length.

Its costs, which the slot engine removes: every join and leave copies every row's cache; short rows attend over
the longest row's padding; a newcomer's whole prefill runs between two decode steps and stalls every stream; the
prefix cache knows only a declared prefix (``prefix_len``: the system prompt), whose KV state it keeps so that a
request starting with it prefills only the rest.

``speculative="prompt-lookup"``: while ONE greedy request is in the engine (the batch holds it alone and nobody
waits), each step drafts ``draft_k`` tokens by prompt lookup and verifies them in one pass
(``lmlab.inference.speculative.verify``): the same tokens, often several per pass. As soon as a second request
arrives the batch decodes one token per row again (speculation here is for batch size 1).
"""

from __future__ import annotations

import torch

from lmlab.inference.decode import CausalLM
from lmlab.inference.speculative import check_exact, prompt_lookup, verify
from lmlab.inference.step import PAD_MULTIPLE, DecodeStep, Pairs, left_pad, left_pad_to, next_logits
from lmlab.measure.runtime import check_int
from lmlab.measure.timing import Stopwatch
from lmlab.serving.engine import LRU, Engine, _Request
from lmlab.serving.slots import slotted


class DenseEngine(Engine):
    """The first-generation scheduler (see the module's docstring); ``Engine(...)`` makes one for a step that is
    not a fused graph.

    Beyond ``Engine``'s options: ``prefix_cache`` is how many declared prompt prefixes keep their KV state (0:
    off); ``speculative`` ("prompt-lookup" or None) speculates ``draft_k`` tokens per pass while one greedy
    request runs alone. Raises ValueError for an unknown speculative method or an out-of-range bound.
    """

    def __init__(self, lm: CausalLM, *, backend: str = "eager", step: DecodeStep | None = None, max_batch: int = 8,
                 max_queue: int = 64, policy: str = "continuous", prefix_cache: int = 0, threads: int | None = None,
                 speculative: str | None = None, draft_k: int = 4):
        if speculative not in (None, "prompt-lookup"):
            raise ValueError(f"speculative={speculative!r} is unknown; the server speculates by None or "
                             f"'prompt-lookup' (a draft model is generate's, not the server's)")
        super().__init__(lm, backend=backend, step=step, max_batch=max_batch, max_queue=max_queue, policy=policy,
                         threads=threads)
        self.speculative, self.draft_k = speculative, check_int("draft_k", draft_k, 1, 64)
        self.drafted = self.accepted = 0  # speculation's counts: drafted tokens, and those the model agreed with
        if speculative:
            check_exact(self.step)  # an int8 verify pass would not give greedy's tokens
        self.prefixes = LRU(prefix_cache)
        self._prefilling = 0  # admitted, being prefilled (or held), not yet in the batch
        self._held: list[tuple[list[_Request], Pairs, torch.Tensor]] = []  # prefilled, waiting to line up: _join
        self._past = None  # the batch's KV cache, in the step's own format
        self._mask: torch.Tensor | None = None  # (B, L) 1 for real positions, 0 for left padding

    @classmethod
    def runs(cls, backend: str, step: DecodeStep | None) -> bool:
        return not slotted(backend, step)

    def _admit(self) -> list[_Request]:
        """Take the waiting requests the policy lets in now (called with the lock held)."""
        slots = 1 if self.policy == "sequential" else self.max_batch
        if self.policy == "static" and (self._rows or self._held):
            return []
        admitted = self._take_waiting(slots - len(self._rows) - self._held_rows())
        self._prefilling = len(admitted) + self._held_rows()
        return admitted

    def _iterate(self, admitted: list[_Request]) -> None:
        self._drop_cancelled()
        self._prefill_all(admitted)
        self._join_held()
        self._prefilling = self._held_rows()
        if self._rows:
            self._decode()

    def _prefilling_count(self) -> int:
        return self._prefilling

    def _busy(self) -> bool:
        return bool(self._rows or self._held)

    def _admitted(self) -> list[_Request]:
        return self._rows + [r for requests, _, _ in self._held for r in requests]

    def _clear(self) -> None:
        self._rows, self._past, self._mask, self._prefilling, self._held = [], None, None, 0, []

    def _resize(self, max_batch: int, prefix_cache: int | None) -> None:
        self.max_batch = max_batch
        if prefix_cache is not None:
            self.prefixes = LRU(prefix_cache)

    def _reset_counts(self) -> None:
        self.drafted = self.accepted = 0

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
        keep = []
        for i, (request, token) in enumerate(zip(rows, self._pick_rows(rows, last))):
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
