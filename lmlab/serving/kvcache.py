"""The serving engine's KV cache: one preallocated buffer of slots, and a prefix cache of hashed token blocks.

Introduced in notebooks/07_realtime_pipeline.ipynb; ``lmlab.serving.slots`` schedules requests onto it.

A request that joins the running batch gets a **slot**: one row of a buffer allocated once per server, per layer
and kind (keys, values) of shape (slots, kv_heads, capacity, head_dim) float32. Its tokens sit at positions
[0, length) of its row, whatever the other rows hold, and a decode step reads every slot in place
(``lmlab.compress.fused``'s GroupQueryAttention takes each row's own length): joining writes only the newcomer's
row, leaving writes nothing, and no step copies another request's cache. The buffer holds

    nbytes = 2 · layers · kv_heads · head_dim · capacity · 4 · slots bytes,

(``SlotCache.nbytes``); the memory a server pays for is the pages its requests touched (the buffer is zeroed
lazily by the operating system), and admission counts tokens: a request enters while the tokens held plus its
prompt fit ``budget_tokens``.

The other design, vLLM's paged blocks with a block table, lets rows share blocks without a copy, but it needs an
attention kernel that follows a block table; ONNX Runtime's CPU GroupQueryAttention reads one contiguous row per
sequence, so paged blocks would have to be gathered into rows at every step (a copy of the whole cache per step,
what the slots avoid).

``PrefixBlocks`` is the prefix cache: a prompt is cut into full blocks of ``block`` tokens and block i is named by
a hash of every token before its end (SHA-256, chained block to block, as vLLM's automatic prefix caching names
them), so two prompts share exactly the blocks of their common prefix, whatever it is: a system prompt, a FAQ,
an earlier turn of the same conversation. A block keeps its keys and values; a hit copies them into the new
request's slot and its prefill starts after them.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmlab.measure.runtime import check_int


class SlotCache:
    """A fused step's KV buffers for ``slots`` rows of ``capacity`` positions, handed out one slot per request.

    ``lengths[s]`` is how many positions slot s holds; ``take()`` gives the lowest free slot (so the rows a step
    reads, [0, highest taken], stay few), ``release(s)`` gives it back. ``budget_tokens`` bounds the positions
    held by all slots together (``fits``). ``past(lo, hi)`` is the step's past for rows [lo, hi), made once per
    range and kept with its ONNX Runtime binding.
    Raises ValueError for slots or capacity < 1, or budget_tokens outside [1, slots · capacity].
    """

    def __init__(self, step, slots: int, capacity: int, budget_tokens: int | None = None):
        self.step = step
        self.slots = check_int("slots", slots, 1, 256)
        self.capacity = check_int("capacity", capacity, 1, step.max_length)
        self.budget_tokens = check_int("budget_tokens", slots * capacity if budget_tokens is None else budget_tokens,
                                       1, slots * capacity)
        self.arrays = step.empty_past(slots, capacity).arrays  # per layer: keys, values (slots, heads, cap, dim)
        self.lengths = np.zeros(slots, dtype=np.int64)
        self._free = list(range(slots))
        self._pasts: dict[tuple[int, int], Any] = {}  # (lo, hi) -> a FusedPast over those rows, binding kept

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers: 2 · layers · kv_heads · head_dim · capacity · 4 · slots."""
        return sum(array.nbytes for array in self.arrays)

    @property
    def bytes_per_token(self) -> int:
        """Bytes one position of one slot holds: 2 · layers · kv_heads · head_dim · 4."""
        return self.nbytes // (self.slots * self.capacity)

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used_tokens(self) -> int:
        """Positions held by the taken slots."""
        return int(self.lengths.sum())

    def fits(self, tokens: int) -> bool:
        """Whether ``tokens`` more positions fit the budget."""
        return self.used_tokens + tokens <= self.budget_tokens

    def take(self) -> int:
        """Take the lowest free slot (empty); raises RuntimeError when none is free."""
        if not self._free:
            raise RuntimeError(f"all {self.slots} slots are taken")
        self._free.sort()
        return self._free.pop(0)

    def release(self, slot: int) -> None:
        """Give a slot back (its positions are overwritten by the next request that takes it)."""
        if slot in self._free or not 0 <= slot < self.slots:
            raise ValueError(f"slot={slot} is not a taken slot of [0, {self.slots - 1}]")
        self.lengths[slot] = 0
        self._free.append(slot)

    def taken(self) -> list[int]:
        return sorted(set(range(self.slots)) - set(self._free))

    def past(self, lo: int, hi: int):
        """The step's past for rows [lo, hi): views of the buffers (no copy), their lengths, the kept binding."""
        from lmlab.compress.fused import FusedPast

        kept = self._pasts.get((lo, hi))
        lengths = self.lengths[lo:hi].copy()
        if kept is None:
            kept = FusedPast(tuple(array[lo:hi] for array in self.arrays), hi - lo, 0, lengths)
        return FusedPast(kept.arrays, hi - lo, int(lengths.max()), lengths, kept.values, binding=kept.binding)

    def keep(self, lo: int, hi: int, past) -> None:
        """Keep the binding a step made for rows [lo, hi) (the next step over them reuses it)."""
        self._pasts[(lo, hi)] = past

    def read(self, slot: int, start: int, stop: int) -> np.ndarray:
        """Copy positions [start, stop) of a slot: (2 · layers, kv_heads, stop − start, head_dim)."""
        return np.stack([array[slot, :, start:stop] for array in self.arrays])

    def write(self, slot: int, start: int, block: np.ndarray) -> None:
        """Write a block from ``read`` at positions [start, start + its length) of a slot."""
        stop = start + block.shape[2]
        for array, part in zip(self.arrays, block):
            array[slot, :, start:stop] = part


def block_hashes(ids: Sequence[int], block: int) -> list[bytes]:
    """The names of a prompt's full blocks: hash_i = SHA-256(hash_{i−1} ‖ tokens of block i), one per full block.

    Two prompts get the same hash_i exactly when their first (i + 1) · block tokens are the same.
    """
    hashes, previous = [], b""
    for start in range(0, len(ids) - block + 1, block):
        tokens = np.asarray(ids[start:start + block], dtype=np.int64).tobytes()
        previous = hashlib.sha256(previous + tokens).digest()
        hashes.append(previous)
    return hashes


class PrefixBlocks:
    """Automatic prefix caching: the keys and values of full token blocks, named by ``block_hashes``, at most
    ``max_blocks`` kept (least recently used evicted; 0: off).

    ``match(ids)`` returns the cached blocks that start the prompt (the longest run), ``add(hashes, blocks)``
    keeps new ones. Counts ``hits`` and ``misses`` (requests that did or did not start with a cached block) and
    ``hit_tokens`` / ``lookup_tokens`` (prompt tokens found cached, prompt tokens looked up).
    """

    def __init__(self, max_blocks: int = 0, block: int = 16):
        self.max_entries = check_int("max_blocks", max_blocks, 0)  # named as the LRU's bound: /health reads it
        self.block = check_int("block", block, 1, 1024)
        self._blocks: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.hits = self.misses = self.hit_tokens = self.lookup_tokens = 0

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def nbytes(self) -> int:
        return sum(block.nbytes for block in self._blocks.values())

    def match(self, ids: Sequence[int]) -> tuple[list[bytes], list[np.ndarray]]:
        """The hashes of ``ids``' full blocks, and the cached blocks that start it (refreshed as recently used).

        The last token is never matched (a prefill must compute at least one position to predict the next).
        """
        hashes = block_hashes(ids[:-1], self.block) if self.max_entries else []
        found = []
        for name in hashes:
            if name not in self._blocks:
                break
            self._blocks.move_to_end(name)
            found.append(self._blocks[name])
        if self.max_entries:
            self.hits, self.misses = self.hits + bool(found), self.misses + (not found)
            self.hit_tokens += len(found) * self.block
            self.lookup_tokens += len(ids)
        return hashes, found

    def add(self, names: Sequence[bytes], blocks: Sequence[np.ndarray]) -> None:
        """Keep blocks under their names, then evict the least recently used beyond ``max_blocks``."""
        for name, block in zip(names, blocks):
            self._blocks[name] = block
            self._blocks.move_to_end(name)
        while len(self._blocks) > self.max_entries:
            self._blocks.popitem(last=False)

    def __contains__(self, name: bytes) -> bool:
        return name in self._blocks

    def clear(self) -> None:
        self._blocks.clear()
        self.hits = self.misses = self.hit_tokens = self.lookup_tokens = 0
