"""A decode step, typed: the one forward pass the decode loop and the serving engine both run, and the batch
pieces they share (left padding, positions, the next-token logits).

Introduced in notebooks/06_acceleration.ipynb; ``lmlab.serving.engine`` runs the same pieces for many replies.

A step is any object that answers ``DecodeStep``: ``step(input_ids, attention_mask, position_ids, past) ->
(logits (batch, new, vocab), past)``, plus what a caller needs to drive it without asking which class it is:
where its inputs live (``device``, ``place``), what ``past`` skips the cache (``no_cache``), its ``backend``
name, and its cache as per-layer (keys, values) pairs (``to_pairs``, ``from_pairs``) so rows can join and leave
a batch. ``TorchStep`` runs PyTorch (eager or ``torch.compile``); ``lmlab.compress.export.OnnxDecoder`` runs
ONNX Runtime and has the same attributes.

Speculative decoding (``lmlab.inference.speculative``) needs two more things of a step: the logits of EVERY new
position of a call (``every_logit``: a step may keep only the last one) and its cache cut back to the accepted
length (``crop_past``, which calls the step's ``crop(past, length)``: ``TorchStep`` and ``OnnxDecoder`` have one).

Several prompts run together padded on the LEFT: an attention mask hides the padding and the positions count
from each row's first real token, position_t = (Σ_{s <= t} mask_s) − 1, so every row computes what it would alone.
The decode loop pads even one prompt to a width that is a multiple of ``PAD_MULTIPLE``, so that a row's padding
is the same, mod 4, alone and in any batch: then it computes the same bits too (``lmlab.inference.invariance``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:  # transformers is imported where a cache is built; the annotations only name its types
    from transformers import PretrainedConfig

Pairs = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values, each (batch, kv_heads, time, head_dim)


@runtime_checkable
class DecodeStep(Protocol):
    """One forward pass of a causal LM with its KV cache, as the decode loop and the serving engine drive it."""

    backend: str  # "eager", "compile", "onnx", "onnx-int8"

    @property
    def device(self) -> torch.device:
        """Where the step's inputs must be."""
        ...

    @property
    def no_cache(self) -> Any:
        """What to pass as ``past`` to run without a cache (the whole sequence every call)."""
        ...

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 past: Any = None) -> tuple[torch.Tensor, Any]:
        """Run the new ids (batch, new) after ``past`` (None: empty); return (logits (batch, new', vocab), past).

        ``new'`` may be 1 (only the last position's logits) or ``new``; the mask is (batch, past + new).
        """
        ...

    def place(self, device: torch.device) -> torch.device:
        """Move the weights to ``device`` where the step can run there; return the device its inputs go to."""
        ...

    def sequence_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return the logits at EVERY position of (batch, n) ids read from the start without a cache: (batch, n,
        vocab), for teacher-forced scoring (a decode call may keep only the last position's)."""
        ...

    def to_pairs(self, past: Any) -> Pairs:
        """Return the step's cache as per-layer (keys, values), each (batch, kv_heads, time, head_dim)."""
        ...

    def from_pairs(self, pairs: Pairs) -> Any:
        """Return the step's own cache holding per-layer (keys, values)."""
        ...


class TorchStep:
    """One forward pass of a transformers causal LM in PyTorch (lmlab's GPT is one): a ``DecodeStep``.

    ``compile=True`` runs the decode steps (one new token per row) through ``torch.compile(core)``: the first
    such call traces and compiles the model (seconds to a minute), later ones run the compiled code, for any
    cache length. The prefill, run once per reply, stays eager.
    """

    no_cache = False  # past=False: no cache at all (None is an empty one)

    def __init__(self, core: nn.Module, compile: bool = False):
        self.core = core
        self.forward = torch.compile(core, dynamic=True) if compile else core
        self.backend = "compile" if compile else "eager"
        accepts = inspect.signature(core.forward).parameters
        # transformers 5 names the cache argument `cache` (older releases: `past_key_values`).
        self.cache_arg = "cache" if "cache" in accepts else "past_key_values"
        # Only the last position's logits pick the next token: skip the output layer for the rest of a prompt.
        self.last_only = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}

    @property
    def config(self) -> PretrainedConfig:
        return cast("PretrainedConfig", self.core.config)  # nn.Module types an attribute as Tensor | Module

    @property
    def device(self) -> torch.device:
        return next(self.core.parameters()).device

    def place(self, device: torch.device) -> torch.device:
        if self.device != device:
            self.core.to(device)
        return device

    @torch.no_grad()
    def sequence_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.core(input_ids=input_ids).logits  # (batch, n, vocab): every position, eager

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 past: Any = None, every_position: bool = False) -> tuple[torch.Tensor, Any]:
        """Run the model on the new ids; ``past`` is the cache so far (None: empty; False: no cache at all).

        ``every_position=True`` returns the logits of every new id (batch, new, vocab), not only the last one's.
        """
        use_cache = past is not False
        if use_cache and past is None:
            past = self.from_pairs([])
        forward = self.forward if input_ids.shape[1] == 1 else self.core
        out = forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=use_cache, **{self.cache_arg: past if use_cache else None},
                      **({} if every_position else self.last_only))
        if not use_cache:
            return out.logits, False
        return out.logits, getattr(out, "cache", None) or out.past_key_values

    def to_pairs(self, past: Any) -> Pairs:
        return [(layer.keys, layer.values) for layer in past.layers]  # transformers' DynamicCache

    def crop(self, past: Any, length: int) -> Any:
        """Keep the first ``length`` positions of the cache (transformers' ``DynamicCache.crop``, in place).

        transformers 5 crops by a negative count of positions to remove (older releases took the length kept).
        """
        remove = int(past.get_seq_length()) - length
        if remove > 0:
            past.crop(-remove)
        return past

    def from_pairs(self, pairs: Pairs) -> Any:
        from transformers import DynamicCache  # transformers: the optional heavy dependency of PyTorch models

        if not pairs:
            return DynamicCache(config=self.config)
        return DynamicCache(ddp_cache_data=pairs, config=self.config)


PAD_MULTIPLE = 4  # left padding rounds a batch's width up to a multiple of this: see ``left_pad``


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token-id rows of different lengths, padded on the left: return ids and mask, both (batch, width).

    mask[i, t] = 1 where row i has a real token, 0 on its padding (filled with ``pad_id``); width is the longest
    row rounded up to a multiple of ``multiple``. With ``multiple`` = PAD_MULTIPLE a row's padding is
    (−len) mod 4 alone and in any batch (mod 4): ONNX Runtime's float32 MatMul adds the terms of a sum over
    positions (attention weights times values) four at a time, so a row's sums, and its bits, stay the same.
    Raises ValueError for no rows, an empty row, or multiple < 1.
    """
    if len(rows) == 0 or min(len(row) for row in rows) == 0:
        raise ValueError(f"rows has lengths {[len(row) for row in rows]}; left padding needs rows of >= 1 token")
    if multiple < 1:
        raise ValueError(f"multiple={multiple} is out of range; use an integer >= 1")
    width = -(-max(len(row) for row in rows) // multiple) * multiple  # the longest, rounded up
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids, mask


def left_pad_to(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Pad a (batch, time) mask along dim 1, or a (batch, heads, time, dim) cache along dim 2, with zeros on
    the left to ``length`` positions (rows with different histories joining one batch)."""
    dim = 1 if tensor.dim() == 2 else 2
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def positions(mask: torch.Tensor, new: int | None = None) -> torch.Tensor:
    """Return the positions of the last ``new`` columns of a (batch, time) mask (all of them for None).

    position_t = max(0, Σ_{s <= t} mask_s − 1): 0 at each row's first real token; padding sits at 0 (masked).
    """
    counted = (mask.cumsum(1) - 1).clamp(min=0)  # (batch, time)
    return counted if new is None else counted[:, mask.shape[1] - new:]


def next_logits(step: DecodeStep, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                past: Any) -> tuple[torch.Tensor, Any]:
    """Run the new ids (batch, new) after ``past`` with mask (batch, past + new); return each row's next-token
    logits (batch, vocab) in float32 and the step's new past.

    The prefill (all of a prompt's ids, ``past`` None), a decode step (one id per row) and a recomputation
    without a cache (``past`` = ``step.no_cache``) are all this one call; only the last position predicts.
    """
    logits, past = step(input_ids, attention_mask, positions(attention_mask, input_ids.shape[1]), past)
    return logits[:, -1, :].float(), past  # (batch, vocab)


def every_logit(step: DecodeStep, input_ids: torch.Tensor, past: Any, pad: int = 0) -> tuple[torch.Tensor, Any]:
    """Run one row's new ids (1, new) after ``past`` (None: empty) and return the logits of EVERY new position,
    (new, vocab) float32, and the grown past: what a speculative verify pass reads.

    The row's first ``pad`` positions (in the past, or in the ids of a prefill) are left padding, masked out as
    the decode loop pads a prompt (a multiple of PAD_MULTIPLE); the mask is ones after them and the positions
    count from the first real token. A step whose
    call takes ``every_position`` (``TorchStep``) is asked for all positions; others must return them anyway.
    Raises ValueError for a step that returns fewer positions than it was given.
    """
    new = input_ids.shape[1]
    length = past_length(step, past)
    mask = torch.ones((1, length + new), dtype=torch.long, device=input_ids.device)
    mask[:, :pad] = 0
    options = {"every_position": True} if "every_position" in inspect.signature(step.__call__).parameters else {}
    logits, past = step(input_ids, mask, positions(mask, new), past, **options)
    if logits.shape[1] != new:
        raise ValueError(f"step {type(step).__name__} returned logits for {logits.shape[1]} of {new} positions; "
                         f"speculative decoding needs every position's")
    return logits[0].float(), past  # (new, vocab)


def past_length(step: DecodeStep, past: Any) -> int:
    """Return how many positions a step's cache holds (0 for None)."""
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):  # transformers' DynamicCache
        return int(past.get_seq_length())
    if isinstance(getattr(past, "length", None), int):  # lmlab.compress.export.OnnxPast
        return past.length
    pairs = step.to_pairs(past)
    return int(pairs[0][0].shape[2]) if pairs else 0


def crop_past(step: DecodeStep, past: Any, length: int) -> Any:
    """Cut a step's cache back to its first ``length`` positions (the accepted tokens of a speculative pass).

    Calls ``step.crop(past, length)``; the returned past is what to pass next (it may be the same object).
    Raises ValueError for a step without ``crop``, or a length outside [0, positions held].
    """
    crop = getattr(step, "crop", None)
    if crop is None:
        raise ValueError(f"step {type(step).__name__} has no crop(past, length); speculative decoding needs one")
    held = past_length(step, past)
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= held:
        raise ValueError(f"length={length!r} is out of range; use an integer in [0, {held}] (the positions held)")
    return crop(past, length)
