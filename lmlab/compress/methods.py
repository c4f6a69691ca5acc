"""Every compression technique of chapters 04 and 05 as a function of one setting, with that setting's range.

Introduced in notebooks/04_quantization.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

from torch import nn

from lmlab.compress.export import onnx_model
from lmlab.compress.prune import low_rank, magnitude_prune, prune_heads, prune_mlp, share_weights
from lmlab.compress.quantize import model_bytes, quantize_model
from lmlab.models.neural import weight_layers


@dataclass(frozen=True)
class Method:
    """A compression technique as a function of one setting, and that setting's range.

    ``apply(model, value)`` returns the compressed copy (a model, or a ``lmlab.compress.prune.Compressed``);
    ``size_bytes(model, value)``, if given, is the size the copy takes stored at that setting when its
    float32 tensors do not show it (fake quantization, weight sharing). ``simulated`` says the copy runs the
    dense float32 arithmetic of its original (fake quantization, masks, shared values stored as floats): its
    accuracy is real, its speed is not a measurement of the technique. ``choices``, if given, are the only
    values allowed.
    """

    label: str
    apply: Callable[[nn.Module, float], object]
    minimum: float
    maximum: float
    step: float
    value: float
    log: bool = False
    integer: bool = False
    size_bytes: Callable[[nn.Module, float], int] | None = None
    simulated: bool = False
    choices: tuple[float, ...] | None = None
    applies: Callable[[nn.Module], str | None] | None = None  # why the method cannot apply to a model, or None

    def refuses(self, model: nn.Module) -> str | None:
        """Return why this method cannot apply to ``model`` at any setting (e.g. groups that do not divide its
        rows), or None if it can."""
        return self.applies(model) if self.applies else None

    def check(self, value: object) -> float:
        """Return ``value`` if it is a number in the method's range, else raise ValueError naming it (None too)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.minimum <= value <= self.maximum:
            raise ValueError(f"value={value!r} is out of range for {self.label}; "
                             f"use {self.minimum:g} to {self.maximum:g}")
        if self.integer and value != int(value):
            raise ValueError(f"value={value!r} must be a whole number of {self.label}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"value={value!r} is not one of {self.label}: use one of {self.choices}")
        return int(value) if self.integer else float(value)


class _Range(TypedDict):
    """The setting's range of a ``Method``: its bounds, slider step and default."""

    minimum: float
    maximum: float
    step: float
    value: float


def _whole(value: float) -> int:
    """Return ``value``, the setting of an integer method, as the int it is (``Method.check`` returns one).

    Raises ValueError for a value that is not an int.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"value={value!r} is not a whole number; this method takes an int (see Method.check)")
    return value


def _methods() -> dict[str, Method]:
    def bits(granularity: str, group: int | None = None) -> Method:
        return Method("bits", lambda m, b: quantize_model(m, _whole(b), granularity=granularity, group_size=group),
                      2, 8, 1, 8, integer=True,
                      size_bytes=lambda m, b: model_bytes(m, _whole(b), granularity=granularity,
                                                          group_size=group)["total"], simulated=True,
                      applies=(lambda m: _groups_fit(m, group)) if group else None)

    def int8(model: nn.Module, scheme: float) -> nn.Module:
        return onnx_model(model, ("blockwise", "dynamic")[_whole(scheme)])

    def onnx(model: nn.Module, bits: float) -> nn.Module:
        return onnx_model(model, None if bits == 32 else "blockwise")

    fraction: _Range = {"minimum": 0.0, "maximum": 0.95, "step": 0.05, "value": 0.5}
    return {
        "quantize-channel": bits("channel"),
        "quantize-tensor": bits("tensor"),
        "quantize-group32": bits("group", 32),
        "quantize-step": Method("step Q", lambda m, q: quantize_model(m, step_Q=q), 1e-3, 0.5, 0.1, 0.02, log=True,
                                simulated=True),
        "magnitude-global": Method("sparsity", lambda m, s: magnitude_prune(m, s, "global"), simulated=True,
                                   **fraction),
        "magnitude-layer": Method("sparsity", lambda m, s: magnitude_prune(m, s, "layer"), simulated=True, **fraction),
        "mlp-units": Method("fraction removed", lambda m, s: prune_mlp(m, s), **fraction),
        "heads": Method("fraction removed", lambda m, s: prune_heads(m, s), **fraction),
        "low-rank": Method("rank", lambda m, r: low_rank(m, rank=_whole(r)), 1, 1024, 1, 16, integer=True),
        "share": Method("bits", lambda m, b: share_weights(m, _whole(b)), 1, 8, 1, 3, integer=True,
                        size_bytes=lambda m, b: share_weights(m, _whole(b)).size_bytes, simulated=True),
        "int8": Method("scheme (0 blockwise, 1 dynamic)", int8, 0, 1, 1, 0, integer=True),
        "onnx": Method("bits (32 float32, 8 int8)", onnx, 8, 32, 24, 32, integer=True, choices=(8, 32)),
    }



def _groups_fit(model: nn.Module, group: int) -> str | None:
    """Why groups of ``group`` weights cannot split every quantized row of ``model``, or None if they can."""
    for layer in weight_layers(model):
        width = layer.matrix.shape[1]
        if width % group:
            return f"groups of {group} do not divide the {width} weights per row of layer {layer.name!r}"
    return None


METHODS: dict[str, Method] = _methods()


CPU_ONLY_METHODS = ("int8", "onnx")  # ONNX Runtime graphs on the CPU
