"""Quantization: q(x) = round(x / Q) · Q, from the formula to int8 that really runs.

Introduced in notebooks/04_quantization.ipynb.

The teaching layer is plain torch arithmetic, small enough to read in one sitting:

- ``quantize(x, step_Q)``: the formula itself;
- ``choose_grid(x, bits, ...)``: the step Q (and zero point) that fits b-bit integer codes to x, per tensor,
  per output channel or per group of g weights;
- ``fake_quantize(x, bits, ...)``: round x onto that grid and back to floats;
- ``quantize_model(model, ...)``: a copy of a model whose weight matrices are fake-quantized;
- ``model_bytes(model, bits, ...)``: what a model takes stored at a precision, scales and zero points included;
- ``stored_bits_per_weight(model, bits, ...)``: the bits one weight really takes, its code plus its share of the steps.

Fake quantization shows what the rounding costs in accuracy; it saves no time, because the rounded
numbers are still float32. ``lmlab.compress.export.onnx_model`` runs int8 kernels for real;
``lmlab.compress.quantize_study`` holds chapter 04's sweeps, rows and plots built on these functions.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.measure.runtime import check_int
from lmlab.models.neural import weight_layers

GRANULARITIES = ("tensor", "channel", "group")
MIN_BITS, MAX_BITS = 2, 8  # integer codes; 16 and 32 mean float storage in model_bytes
SCALE_BYTES = 4  # every step Q is stored as a float32
ZERO_POINT_BYTES = 1  # every zero point as one byte


def quantize(x: torch.Tensor, step_Q: float | torch.Tensor) -> torch.Tensor:
    """Round every value of ``x`` to the nearest multiple of the step Q.

    q(x) = round(x / Q) * Q. Exact ties go to the even multiple (``torch.round``), so |q(x) − x| ≤ Q/2,
    q(q(x)) = q(x), and q(x) / Q is a whole number. ``step_Q`` is a number, or a tensor that broadcasts
    against ``x`` (one step per channel or group). There are as many levels as x needs: no clipping.

    NaN and ±inf are not numbers a step can represent; they pass through unchanged (NaN stays NaN,
    +inf stays +inf, −inf stays −inf), so a bad value upstream is never hidden.

    Raises ValueError if any step is ≤ 0, NaN or infinite.
    """
    step = _check_step(step_Q)
    return torch.round(x / step) * step


def _check_step(step_Q: float | torch.Tensor) -> float | torch.Tensor:
    if isinstance(step_Q, torch.Tensor):
        bad = ~(torch.isfinite(step_Q) & (step_Q > 0))
        if step_Q.numel() == 0 or bad.any():
            shown = step_Q[bad].flatten()[:3].tolist() if step_Q.numel() else "an empty tensor"
            raise ValueError(f"step_Q={shown} is out of range; every step must be a finite number > 0")
        return step_Q
    if isinstance(step_Q, bool) or not isinstance(step_Q, (int, float)) or not math.isfinite(step_Q) or step_Q <= 0:
        raise ValueError(f"step_Q={step_Q!r} is out of range; the step must be a finite number > 0")
    return float(step_Q)


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is a whole number in [2, 8] (the integer widths supported), else raise ValueError."""
    return check_int("bits", bits, MIN_BITS, MAX_BITS)


@dataclass(frozen=True)
class Grid:
    """A b-bit integer grid fitted to a tensor: x ≈ (code − zero_point) · step_Q, codes in [low, high].

    ``step_Q`` and ``zero_point`` hold one value per scale group and broadcast against ``grouped(x)``,
    the view of x whose last dimension is one group: (1, N) per tensor, (channels, N / channels) per
    channel, (channels, N / (channels · g), g) per group of g.
    """

    step_Q: torch.Tensor
    zero_point: torch.Tensor
    low: int
    high: int
    bits: int
    symmetric: bool
    granularity: str
    group_size: int | None

    def grouped(self, x: torch.Tensor) -> torch.Tensor:
        return _grouped(x, self.granularity, self.group_size)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Return the integer codes of x (as floats, for exact arithmetic): clamp(round(x / Q) + z, low, high)."""
        return torch.round(self.grouped(x) / self.step_Q).add_(self.zero_point).clamp_(self.low, self.high)

    def dequantize(self, codes: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Map codes back to floats, (code − z) · Q, in the original ``shape``."""
        return ((codes - self.zero_point) * self.step_Q).reshape(shape)

    @property
    def scales(self) -> int:
        """How many steps (and zero points) the grid stores."""
        return self.step_Q.numel()


def choose_grid(x: torch.Tensor, bits: int, symmetric: bool = True, granularity: str = "tensor",
                group_size: int | None = None) -> Grid:
    """Fit a ``bits``-bit grid to ``x``: the step Q (and zero point) for each scale group.

    Symmetric: codes in [−(2^(b−1) − 1), 2^(b−1) − 1] and Q = max|x| / (2^(b−1) − 1), zero point 0.
    Asymmetric: codes in [0, 2^b − 1], Q = (max − min) / (2^b − 1) over a range stretched to include 0,
    zero point z = round(−min / Q), so that x = 0 is exactly representable.
    ``granularity`` is "tensor" (one Q), "channel" (one Q per output channel, the first dimension of an
    (out, in) weight) or "group" (one Q per ``group_size`` consecutive weights of a channel). A group
    whose values are all 0 gets Q = 1.

    Raises ValueError for bits outside [2, 8], an unknown granularity, a group size that does not
    divide the weights of a channel, or an x holding NaN or inf (no finite grid fits it).
    """
    check_bits(bits)
    grouped = _grouped(x, granularity, group_size)
    low_value, high_value = grouped.amin(-1, keepdim=True), grouped.amax(-1, keepdim=True)
    if not (torch.isfinite(low_value).all() and torch.isfinite(high_value).all()):  # amin and amax propagate NaN
        raise ValueError("x holds NaN or inf; a finite grid cannot be fitted to it (quantize(x, step_Q) passes them "
                         "through if that is what you want)")
    low_value, high_value = low_value.clamp(max=0), high_value.clamp(min=0)
    if symmetric:
        top = 2 ** (bits - 1) - 1
        step = torch.maximum(high_value, -low_value) / top
        low, high, zero = -top, top, torch.zeros_like(step)
    else:
        low, high = 0, 2**bits - 1
        step = (high_value - low_value) / high
    step = torch.where(step > 0, step, torch.ones_like(step))  # an all-zero group: any step represents it
    if not symmetric:
        zero = torch.round(-low_value / step).clamp(low, high)
    return Grid(step, zero, low, high, bits, symmetric, granularity, group_size)


def fake_quantize(x: torch.Tensor, bits: int, symmetric: bool = True, granularity: str = "tensor",
                  group_size: int | None = None) -> torch.Tensor:
    """Round ``x`` onto a ``bits``-bit grid and back: what the model computes with if stored at b bits.

    Symmetric: q(x) = clamp(round(x / Q), −(2^(b−1) − 1), 2^(b−1) − 1) · Q, i.e. ``quantize(x, Q)`` kept
    inside the grid. Asymmetric: (clamp(round(x / Q) + z, 0, 2^b − 1) − z) · Q. The grid comes from
    ``choose_grid``, which also lists what raises ValueError.
    """
    grid = choose_grid(x, bits, symmetric, granularity, group_size)
    codes = grid.codes(x)  # a fresh tensor: dequantized in place, (code − z) · Q, to spare a large model two copies
    return codes.sub_(grid.zero_point).mul_(grid.step_Q).reshape(x.shape)


def _grouped(x: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r} is unknown; use one of {GRANULARITIES}")
    if granularity == "tensor":
        return x.reshape(1, -1)
    if x.dim() < 2:
        raise ValueError(f"granularity={granularity!r} needs a matrix (out, in); x has shape {tuple(x.shape)}")
    rows = x.reshape(x.shape[0], -1)  # (out, in)
    if granularity == "channel":
        return rows
    if group_size is None:
        raise ValueError("group_size=None: granularity='group' needs a group size, e.g. 32")
    check_int("group_size", group_size, 1)
    if rows.shape[1] % group_size:
        raise ValueError(f"group_size={group_size} does not divide the {rows.shape[1]} weights of each channel; "
                         f"use a divisor of {rows.shape[1]}")
    return rows.reshape(rows.shape[0], -1, group_size)  # (out, in / g, g)


def quantize_model(model: nn.Module, bits: int | None = None, *, step_Q: float | None = None,
                   symmetric: bool = True, granularity: str = "channel", group_size: int | None = None,
                   embeddings: bool = True, out: nn.Module | None = None) -> nn.Module:
    """Return a copy of ``model`` whose weight matrices are fake-quantized; the original is untouched.

    Give either ``bits`` (a b-bit grid per ``granularity``, see ``choose_grid``) or ``step_Q`` (the bare
    formula round(w / Q) · Q with one step for every weight). Every nn.Linear, transformers ``Conv1D``
    (whose (in, out) weight is transposed first, so channels are outputs there too) and, with
    ``embeddings``, nn.Embedding is quantized; a tied embedding and output layer share one tensor
    and are quantized once. Biases and normalization weights stay float32.
    ``out``, a copy returned by an earlier call on the same ``model``, is overwritten and returned instead of a new
    copy: a sweep over many settings copies a large model once (every matrix is rounded from ``model``'s own).
    Raises ValueError for bad settings (see ``choose_grid`` and ``quantize``), for both or neither
    of ``bits`` and ``step_Q``, or for an ``out`` whose matrices do not match ``model``'s.
    """
    if (bits is None) == (step_Q is None):
        raise ValueError(f"bits={bits!r}, step_Q={step_Q!r}: give exactly one of them")
    if bits is not None:
        check_bits(bits)
        _grouped(torch.zeros(1, 1), granularity, 1)  # an unknown granularity fails before any copying
    elif step_Q is not None:  # always, as exactly one of the two is given
        _check_step(step_Q)
    sources = weight_layers(model, embeddings=embeddings)
    copied = copy.deepcopy(model) if out is None else out
    targets = weight_layers(copied, embeddings=embeddings)
    if out is not None and [(t.name, t.matrix.shape) for t in targets] != [(s.name, s.matrix.shape) for s in sources]:
        raise ValueError("out is not a copy of model: its weight matrices differ in names or shapes; pass a copy "
                         "returned by quantize_model(model, ...)")
    for source, target in zip(sources, targets):
        matrix = source.matrix.detach()  # (out, in)
        try:
            if bits is not None:
                new = fake_quantize(matrix, bits, symmetric, granularity, group_size)
            else:
                assert step_Q is not None  # exactly one of bits and step_Q is given (checked above)
                new = quantize(matrix, step_Q)
        except ValueError as err:
            raise ValueError(f"layer {source.name!r}: {err}") from None
        target.set_matrix(new)
    return copied


def model_bytes(model: nn.Module, bits: int = 32, *, symmetric: bool = True, granularity: str = "channel",
                group_size: int | None = None, embeddings: bool = True) -> dict[str, int]:
    """Count the bytes ``model`` takes when stored at a precision; tied tensors are counted once.

    ``bits=32`` or ``16``: every parameter as a float of that width (float32; float16 or bfloat16).
    ``bits`` in [2, 8]: the weight matrices ``quantize_model`` quantizes as b-bit codes packed without
    gaps, plus one float32 step per scale group and, if asymmetric, one byte of zero point per group;
    every other parameter (biases, norms) stays float32.
    Returns {"weights", "scales", "zero_points", "other", "total"} in bytes.
    Raises ValueError for other bit widths, or settings ``choose_grid`` refuses.
    """
    params = {id(p): p for p in model.parameters()}
    if bits in (16, 32):
        total = sum(p.numel() for p in params.values()) * bits // 8
        return {"weights": total, "scales": 0, "zero_points": 0, "other": 0, "total": total}
    if bits not in range(MIN_BITS, MAX_BITS + 1):
        raise ValueError(f"bits={bits!r} is out of range; use 32 or 16 (floats) or an integer width in "
                         f"[{MIN_BITS}, {MAX_BITS}]")
    weights = scales = 0
    quantized = set()
    for layer in weight_layers(model, embeddings=embeddings):
        matrix = layer.matrix
        weights += math.ceil(matrix.numel() * bits / 8)
        try:
            grouped = _grouped(torch.empty(matrix.shape, device="meta"), granularity, group_size)
        except ValueError as err:
            raise ValueError(f"layer {layer.name!r}: {err}") from None
        scales += grouped[..., 0].numel()
        quantized.add(id(layer.module.weight))
    other = sum(p.numel() * 4 for i, p in params.items() if i not in quantized)
    zero_points = 0 if symmetric else scales * ZERO_POINT_BYTES
    scale_bytes = scales * SCALE_BYTES
    return {"weights": weights, "scales": scale_bytes, "zero_points": zero_points, "other": other,
            "total": weights + scale_bytes + zero_points + other}


def stored_bits_per_weight(model: nn.Module, bits: int = 32, *, symmetric: bool = True, granularity: str = "channel",
                           group_size: int | None = None, embeddings: bool = True) -> float:
    """Return the bits a quantized weight really takes: its code plus its share of the steps (and zero points).

    bits per weight = 8 · (codes + steps + zero points) / weights = b + (32 + 8·[asymmetric]) / (weights per step),
    e.g. b + 32/g per group of g (4 bits in groups of 8: 8 bits per weight), over ``model``'s weight matrices
    (``model_bytes``' count; biases and norms are left out). ``bits=32`` or ``16``: that many. Introduced in
    notebooks/04_quantization.ipynb. Raises ValueError as ``model_bytes`` does.
    """
    counts = model_bytes(model, bits, symmetric=symmetric, granularity=granularity, group_size=group_size,
                         embeddings=embeddings)
    if bits in (16, 32):
        return float(bits)
    weights = sum(layer.matrix.numel() for layer in weight_layers(model, embeddings=embeddings))
    return 8 * (counts["weights"] + counts["scales"] + counts["zero_points"]) / weights
