"""Compression by removal: pruning, low-rank factors and weight sharing, and which of them buy milliseconds.

Introduced in notebooks/05_pruning_and_low_rank.ipynb.

Every function takes a model (an lmlab model or a transformers one), leaves it untouched, and returns a
``Compressed``: the new model plus what it holds (parameters, non-zeros, bytes, achieved sparsity).

- ``magnitude_prune``: M_i stays if |M_i| is among the largest, else 0 (unstructured; global or per layer).
  The matrices keep their shapes, so dense kernels take exactly as long as before.
- ``prune_mlp`` and ``prune_heads``: structured pruning. Whole MLP units or attention heads go, and the
  matrices physically shrink, so dense kernels do less work.
- ``low_rank``: a layer's (out, in) matrix W ≈ U_r S_r V_rᵀ becomes two layers of rank r.
- ``share_weights``: each layer's weights are clustered (k-means) into 2^b shared values.

Distillation and the short recovery run after pruning live in ``lmlab.train.loop`` (``distill``, ``fine_tune``).
Pruning acts on the layers ``prunable_layers`` lists: nn.Linear and GPT-2 ``Conv1D`` matrices that are not
tied to another module. Embeddings, and an output layer that shares the embedding's tensor, stay dense.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from lmlab.measure.plots import finish_axes, plain_log_ticks
from lmlab.measure.results import with_dense_speed
from lmlab.measure.runtime import check_int
from lmlab.measure.stats import (
    binomial_se,
    paired_nll_interval,
    perplexity_interval,
    row_timing_verdict,
    timing_verdict,
    within_noise,
)
from lmlab.measure.timing import format_ms, time_ms
from lmlab.models.lm import LanguageModel, measure
from lmlab.models.neural import WeightLayer, as_matrix, is_conv1d, weight_layers
from lmlab.models.scoring import document_scores

SCOPES = ("global", "layer")
MAX_SHARING_BITS = 8


@dataclass(frozen=True)
class Compressed:
    """A compressed copy of a model and what it holds.

    ``params`` counts the distinct parameters stored; ``nonzero`` those that are not 0; ``size_bytes``
    the bytes the model needs as it runs (float32 dense tensors; for shared weights, a codebook plus
    b-bit indices). ``sparsity`` is the share of zeros among the weights the method acted on, and
    ``per_layer`` gives, per layer, the sparsity, kept units, rank or bits that the method reached.
    """

    model: nn.Module
    method: str
    setting: str
    params: int
    nonzero: int
    size_bytes: int
    sparsity: float
    per_layer: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The figures as one flat row (for a table)."""
        return {"method": self.method, "setting": self.setting, "params": self.params, "nonzero": self.nonzero,
                "size_mb": round(self.size_bytes / 1e6, 3), "sparsity": round(self.sparsity, 4)}


def check_sparsity(sparsity: float) -> float:
    """Return ``sparsity`` if it is a number in [0, 1), else raise ValueError naming it."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity={sparsity!r} is out of range; use a fraction in [0, 1)")
    return float(sparsity)


def prunable_layers(model: nn.Module) -> list[WeightLayer]:
    """Return the weight matrices pruning acts on: untied nn.Linear and ``Conv1D`` layers, in module order."""
    return [layer for layer in weight_layers(model, embeddings=False) if not layer.tied]


def _report(model: nn.Module, method: str, setting: str, acted_on: list[nn.Module],
            per_layer: dict[str, float], size_bytes: int | None = None) -> Compressed:
    params = {id(p): p for p in model.parameters()}
    weights = [cast(torch.Tensor, m.weight) for m in acted_on]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    count = sum(p.numel() for p in params.values())
    nonzero = sum(int(torch.count_nonzero(p)) for p in params.values())
    size = sum(p.numel() * p.element_size() for p in params.values()) if size_bytes is None else size_bytes
    return Compressed(model, method, setting, count, nonzero, size, zeros / max(total, 1), per_layer)


def magnitude_prune(model: nn.Module, sparsity: float, scope: str = "global") -> Compressed:
    """Zero the smallest-magnitude weights: M_i ← M_i if |M_i| is significant, else 0.

    "Significant" means among the largest (1 − sparsity) share: of all prunable weights together
    (``scope="global"``, so layers end up with different sparsities) or of each layer separately
    (``scope="layer"``). ``torch.nn.utils.prune`` picks the weights (round(sparsity · n) of them); the
    pruning is then made permanent, so the copy holds plain tensors and no masks or hooks.
    Raises ValueError for a sparsity outside [0, 1) or an unknown scope.
    """
    check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is unknown; use one of {SCOPES}")
    pruned = copy.deepcopy(model)
    layers = prunable_layers(pruned)
    targets = [(layer.module, "weight") for layer in layers]
    if scope == "global":
        torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    else:
        for module, name in targets:
            torch_prune.l1_unstructured(module, name, amount=sparsity)
    for module, name in targets:
        torch_prune.remove(module, name)
    per_layer = {layer.name: float((cast(torch.Tensor, layer.module.weight) == 0).float().mean())
                 for layer in layers}
    return _report(pruned, "magnitude", f"{scope}, sparsity {sparsity:g}", [m for m, _ in targets], per_layer)


# --- structured pruning -------------------------------------------------------------------------------------


@dataclass
class _Units:
    """Hidden units shared by some input layers (unit k = row k of each) and one output layer (column k)."""

    name: str
    parent: nn.Module
    inputs: list[str]  # attribute names on parent
    output: str
    unit_size: int = 1  # weights per unit along the hidden dimension (an attention head's width)

    def count(self) -> int:
        return as_matrix(getattr(self.parent, self.output)).shape[1] // self.unit_size


def _mlp_units(model: nn.Module) -> list[_Units]:
    """Find the MLP hidden units of an lmlab MLP, GPT-2 blocks, or Llama-style (SmolLM2) blocks."""
    units = []
    for name, module in model.named_modules():
        children = dict(module.named_children())
        if {"c_fc", "c_proj"} <= set(children) and is_conv1d(children["c_fc"]):  # GPT-2 MLP
            units.append(_Units(name, module, ["c_fc"], "c_proj"))
        elif {"gate_proj", "up_proj", "down_proj"} <= set(children):  # Llama MLP
            units.append(_Units(name, module, ["gate_proj", "up_proj"], "down_proj"))
        elif {"hidden", "out", "embed"} <= set(children) and isinstance(children["hidden"], nn.Linear):  # our MLP LM
            units.append(_Units(name or "model", module, ["hidden"], "out"))
    return units


def mlp_blocks(model: nn.Module) -> list[nn.Module]:
    """Return the MLP blocks of GPT-2 or Llama-style models (pruned or factored too), e.g. to time them alone."""
    return [module for module in model.modules()
            if {"c_fc", "c_proj", "act"} <= set(dict(module.named_children())) | set(vars(module))
            or {"gate_proj", "up_proj", "down_proj"} <= set(dict(module.named_children()))]


def _head_units(model: nn.Module) -> list[_Units]:
    """Find GPT-2 attention blocks (c_attn holds q, k and v for every head; c_proj mixes the heads)."""
    units = []
    for name, module in model.named_modules():
        if hasattr(module, "c_attn") and hasattr(module, "num_heads") and is_conv1d(module.c_attn):
            units.append(_Units(name, module, ["c_attn"], "c_proj", unit_size=module.head_dim))
    return units


def _importance(group: _Units, captured: torch.Tensor | None) -> torch.Tensor:
    """Score each unit: the norm of the output weights it feeds, times how big its input side is.

    The input side is the mean |activation| the unit fed into the output layer on calibration data when
    ``captured`` holds it, else the norm of the unit's incoming weights.
    """
    size = group.unit_size
    out_w = as_matrix(getattr(group.parent, group.output)).detach()  # (out, hidden)
    out_norm = out_w.reshape(out_w.shape[0], -1, size).pow(2).sum((0, 2)).sqrt()  # (units,)
    if captured is not None:
        return out_norm * captured.reshape(-1, size).sum(1)
    in_norm = torch.zeros_like(out_norm)
    for attribute in group.inputs:
        w = as_matrix(getattr(group.parent, attribute)).detach()  # (k · hidden, in): q, k, v stacked for heads
        in_norm += w.reshape(-1, len(out_norm), size, w.shape[1]).pow(2).sum((0, 2, 3))
    return out_norm * in_norm.sqrt()


def _capture_inputs(model: nn.Module, groups: list[_Units],
                    calibrate: Callable[[nn.Module], Any]) -> list[torch.Tensor]:
    """Run ``calibrate(model)`` and record the mean |input| each group's output layer saw, per hidden unit."""
    sums: list[torch.Tensor | None] = [None] * len(groups)
    counts = [0] * len(groups)
    hooks = []
    for i, group in enumerate(groups):
        def record(module, args, i=i):
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1])  # (tokens, hidden)
            sums[i] = x.sum(0) if sums[i] is None else sums[i] + x.sum(0)
            counts[i] += x.shape[0]
        hooks.append(getattr(group.parent, group.output).register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            calibrate(model)
    finally:
        for hook in hooks:
            hook.remove()
    if any(c == 0 for c in counts):
        raise ValueError("calibrate ran the model without reaching every layer; give it some real input")
    means = []
    for total, count in zip(sums, counts):
        assert total is not None  # a group with inputs counted (all of them, checked above) has their sum
        means.append(total / count)
    return means


def _shrink(module: nn.Module, keep: torch.Tensor, side: str) -> nn.Module:
    """Return a smaller copy of a Linear or Conv1D keeping output rows (side="out") or input columns ("in")."""
    matrix = as_matrix(module).detach()  # (out, in)
    matrix = matrix[keep] if side == "out" else matrix[:, keep]
    bias = cast(torch.Tensor | None, module.bias)
    if bias is not None and side == "out":
        bias = bias[keep]
    out_features, in_features = matrix.shape
    if is_conv1d(module):
        new = type(module)(out_features, in_features)
        new.weight = nn.Parameter(matrix.T.contiguous())
    else:
        new = nn.Linear(in_features, out_features, bias=bias is not None)
        new.weight = nn.Parameter(matrix.contiguous())
    if bias is not None:
        new.bias = nn.Parameter(bias.detach().clone())
    return new.to(cast(torch.Tensor, module.weight).dtype)


def _structured(model: nn.Module, fraction: float, find: Callable, what: str,
                calibrate: Callable[[nn.Module], Any] | None) -> Compressed:
    check_sparsity(fraction)
    pruned = copy.deepcopy(model)
    groups = find(pruned)
    if not groups:
        raise ValueError(f"model has no {what} that lmlab can prune (it knows lmlab's MLP, GPT-2 and Llama blocks)")
    captured = _capture_inputs(pruned, groups, calibrate) if calibrate is not None else [None] * len(groups)
    per_layer = {}
    for group, activity in zip(groups, captured):
        units = group.count()
        kept = max(1, units - round(fraction * units))
        keep_units = _importance(group, activity).topk(kept).indices.sort().values  # (kept,), in original order
        size = group.unit_size
        keep = (keep_units[:, None] * size + torch.arange(size)).flatten()  # hidden indices of the kept units
        for attribute in group.inputs:
            module = getattr(group.parent, attribute)
            stacked = as_matrix(module).shape[0] // (units * size)  # 3 for GPT-2's c_attn (q, k, v), else 1
            rows = torch.cat([keep + part * units * size for part in range(stacked)])
            setattr(group.parent, attribute, _shrink(module, rows, "out"))
        setattr(group.parent, group.output, _shrink(getattr(group.parent, group.output), keep, "in"))
        if size > 1:  # attention: tell the block how many heads it has now
            group.parent.num_heads = kept
            group.parent.split_size = kept * size
        per_layer[group.name] = kept
    return _report(pruned, f"structured {what}", f"{fraction:g} removed", [], per_layer)


def prune_mlp(model: nn.Module, fraction: float, calibrate: Callable[[nn.Module], Any] | None = None) -> Compressed:
    """Remove the least important ``fraction`` of every MLP's hidden units; the matrices shrink.

    Works on lmlab's MLP language model (its hidden layer), GPT-2 blocks (c_fc and c_proj) and Llama-style
    blocks such as SmolLM2's (gate, up and down projections). A unit's importance is the norm of the
    output weights it feeds times, with ``calibrate`` (a function that runs the model on some real
    input), the mean |activation| it had there, or else the norm of its incoming weights. The kept units
    compute exactly what they computed before. Each layer keeps at least one unit.
    Raises ValueError for a fraction outside [0, 1) or a model without MLP blocks lmlab knows.
    """
    return _structured(model, fraction, _mlp_units, "MLP units", calibrate)


def prune_heads(model: nn.Module, fraction: float, calibrate: Callable[[nn.Module], Any] | None = None) -> Compressed:
    """Remove the least important ``fraction`` of every GPT-2 attention block's heads (at least one stays).

    A head's q, k and v columns leave ``c_attn`` and its rows leave ``c_proj``, so both matrices shrink.
    Importance as in ``prune_mlp``, per head. Raises ValueError for a fraction outside [0, 1) or a model
    without GPT-2 attention blocks.
    """
    return _structured(model, fraction, _head_units, "attention heads", calibrate)


# --- low rank -----------------------------------------------------------------------------------------------


class LowRankLinear(nn.Module):
    """A layer W (out × in) stored as two: x ↦ B (A x) + b, with A (rank × in) and B (out × rank).

    Costs rank · (in + out) multiply-adds per input instead of in · out.
    """

    def __init__(self, first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.first = nn.Linear(first.shape[1], first.shape[0], bias=False)
        self.second = nn.Linear(second.shape[1], second.shape[0], bias=bias is not None)
        self.first.weight = nn.Parameter(first.contiguous())
        self.second.weight = nn.Parameter(second.contiguous())
        if bias is not None:
            self.second.bias = nn.Parameter(bias.detach().clone())

    @property
    def rank(self) -> int:
        return self.first.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def low_rank(model: nn.Module, rank: int | None = None, energy: float | None = None,
             only: str | None = None) -> Compressed:
    """Replace each prunable layer's W (out × in) by its truncated SVD, W ≈ U_r S_r V_rᵀ, as two layers.

    Give ``rank`` (the same r for every layer) or ``energy`` (per layer, the smallest r whose singular
    values keep that share of Σ s_i², the squared Frobenius norm). ``only`` keeps the change to layers
    whose name contains that text (e.g. "mlp"). At full rank the product reproduces W (up to rounding);
    it only saves work when r < in · out / (in + out).
    Raises ValueError for a rank < 1 or above a layer's full rank min(in, out), an energy outside (0, 1],
    both or neither of rank and energy, or no layer matching ``only``.
    """
    if (rank is None) == (energy is None):
        raise ValueError(f"rank={rank!r}, energy={energy!r}: give exactly one of them")
    if rank is not None:
        check_int("rank", rank, 1)
    elif isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1:
        raise ValueError(f"energy={energy!r} is out of range; use a fraction in (0, 1]")
    factored = copy.deepcopy(model)
    layers = [layer for layer in prunable_layers(factored) if only is None or only in layer.name]
    if not layers:
        raise ValueError(f"only={only!r} matches no prunable layer of this model")
    per_layer: dict[str, float] = {}
    for layer in layers:
        matrix = layer.matrix.detach().double()  # (out, in); float64 for an exact full-rank round trip
        full = min(matrix.shape)
        if rank is not None and rank > full:
            raise ValueError(f"rank={rank} is above the full rank {full} of layer {layer.name!r} "
                             f"{tuple(matrix.shape)}; use 1 to {full}")
        U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
        if rank is not None:
            r = rank
        else:
            assert energy is not None  # exactly one of rank and energy is given (checked above)
            r = int((S.pow(2).cumsum(0) / S.pow(2).sum() < energy - 1e-12).sum()) + 1
        r = min(r, full)
        root = S[:r].sqrt()
        dtype = cast(torch.Tensor, layer.module.weight).dtype
        replacement = LowRankLinear((root[:, None] * Vh[:r]).to(dtype), (U[:, :r] * root).to(dtype),
                                    cast(torch.Tensor | None, layer.module.bias))
        _replace(factored, layer.name, replacement)
        per_layer[layer.name] = r
    setting = f"rank {rank}" if rank is not None else f"energy {energy:g}"
    return _report(factored, "low rank", setting, [], per_layer)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attribute, new)


# --- weight sharing -----------------------------------------------------------------------------------------


def kmeans_1d(values: torch.Tensor, clusters: int, iterations: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster numbers into ``clusters`` centroids (Lloyd's k-means); return (sorted centroids, index per value).

    Starts from centroids spread evenly between the smallest and largest value, which keeps the rare
    large weights represented. In one dimension each cluster is an interval, found by bucketize.
    """
    values = values.flatten()
    centroids = torch.linspace(float(values.min()), float(values.max()), clusters, dtype=values.dtype)
    for _ in range(iterations):
        index = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
        sums = torch.zeros_like(centroids).index_add_(0, index, values)
        counts = torch.bincount(index, minlength=clusters)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    index = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
    return centroids, index


def share_weights(model: nn.Module, bits: int, iterations: int = 25) -> Compressed:
    """Let each prunable layer's weights take only 2^bits shared values, found by k-means.

    Stored as a codebook of 2^b float32 values plus a b-bit index per weight, the layer takes
    4 · 2^b + n · b / 8 bytes instead of 4 · n; ``size_bytes`` counts that, with every other parameter
    at float32. The returned model holds the shared values as ordinary float32 tensors (as fast as before).
    Raises ValueError for bits outside [1, 8].
    """
    check_int("bits", bits, 1, MAX_SHARING_BITS)
    shared = copy.deepcopy(model)
    layers = prunable_layers(shared)
    per_layer: dict[str, float] = {}
    stored, acted = 0, set()
    for layer in layers:
        weight = cast(torch.Tensor, layer.module.weight)
        centroids, index = kmeans_1d(weight.detach().flatten(), 2**bits, iterations)
        with torch.no_grad():
            weight.copy_(centroids[index].reshape(weight.shape))
        stored += 4 * 2**bits + math.ceil(weight.numel() * bits / 8)
        per_layer[layer.name] = len(weight.unique())
        acted.add(id(weight))
    stored += sum(4 * p.numel() for p in {id(p): p for p in shared.parameters()}.values() if id(p) not in acted)
    return _report(shared, "weight sharing", f"{bits} bits", [], per_layer, size_bytes=stored)


# --- measuring the variants: sweeps, speed, rows and who beats whom (notebooks/05) -------------------------------


def sweep_methods(model: nn.Module, sweeps: dict[str, tuple[Callable[[nn.Module, float], Compressed], Sequence[float]]],
                  evaluation, split: str = "test", level: float = 0.95) -> pd.DataFrame:
    """Compress ``model`` by each method at each setting and score every copy on the same documents: one table.

    ``sweeps`` maps a method's name to (make, settings), ``make(model, setting)`` returning a ``Compressed``.
    The first row is the dense model itself. Columns: what each copy holds (parameters, the share of the dense
    model's non-zero parameters that it removed, MB stored), its perplexity on ``evaluation``'s ``split`` with a
    ``level`` bootstrap interval over documents (``lmlab.measure.stats.perplexity_interval``), its next-word
    accuracy with the binomial standard error √(p(1−p)/n), and "Δ nats", its loss minus the dense model's in nats
    per word, with the paired bootstrap interval ("Δ low", "Δ high") of ``lmlab.measure.stats.paired_nll_interval``
    (positive: worse than dense). Introduced in notebooks/05_pruning_and_low_rank.ipynb.
    Raises ValueError for no sweeps or a method without settings.
    """
    if not sweeps:
        raise ValueError("sweeps is empty: give at least one method and its settings")
    dense_nonzero = sum(int(torch.count_nonzero(p)) for p in {id(p): p for p in model.parameters()}.values())
    runs: list[tuple[str, str | float, Compressed]] = [("dense", "", _report(model, "dense", "", [], {}))]
    for method, (make, settings) in sweeps.items():
        if not len(settings):
            raise ValueError(f"sweeps[{method!r}] has no settings; give at least one")
        runs += [(method, setting, make(model, setting)) for setting in settings]
    rows, dense_nll = [], None
    for method, setting, compressed in runs:
        scores = document_scores(compressed.model, evaluation, split)
        dense_nll = scores["nll_nats"] if dense_nll is None else dense_nll
        n = scores["tokens"].sum()
        accuracy = scores["correct"].sum() / n
        low, high = perplexity_interval(scores["nll_nats"], scores["tokens"], level=level)
        gap = paired_nll_interval(scores["nll_nats"], dense_nll, scores["tokens"], level=level)
        rows.append({"method": method, "setting": setting, "parameters": compressed.params,
                     "non-zero removed": round(1 - compressed.nonzero / dense_nonzero, 3),
                     "MB stored": round(compressed.size_bytes / 1e6, 2),
                     "perplexity": round(math.exp(scores["nll_nats"].sum() / n), 2), "low": round(low, 2),
                     "high": round(high, 2), "accuracy": round(accuracy, 4),
                     "± se": round(binomial_se(accuracy, int(n)), 4),
                     **dict(zip(("Δ nats", "Δ low", "Δ high"), (round(v, 3) + 0.0 for v in gap)))})
    return pd.DataFrame(rows)


def sweep_takeaways(results: pd.DataFrame) -> list[str]:
    """Say, per method of a ``sweep_methods`` table, how far it went before its loss rose beyond the noise.

    A setting is "indistinguishable from dense" when the paired interval of Δ (its loss minus the dense model's)
    holds 0, "worse" when the whole interval lies above 0, "better" when below. Reports the indistinguishable
    setting that removed the most (non-zero parameters, else bytes), and the first setting that was worse.
    """
    lines = []
    for method, rows in results[results.method != "dense"].groupby("method", sort=False):
        same = rows[(rows["Δ low"] <= 0) & (rows["Δ high"] >= 0)]
        worse, better = rows[rows["Δ low"] > 0], rows[rows["Δ high"] < 0]
        parts = []
        if len(same):
            most = same.sort_values(["non-zero removed", "MB stored"], ascending=[False, True]).iloc[0]
            parts.append(f"indistinguishable from dense up to setting {most.setting:g} ({most['non-zero removed']:.0%} "
                         f"of the non-zero parameters removed, {most['MB stored']:.2f} MB)")
        if len(worse):
            first = worse.iloc[0]
            parts.append(f"worse than dense beyond the noise at {', '.join(f'{v:g}' for v in worse.setting)} (by "
                         f"{first['Δ nats']:+.3f} nats per word at {first.setting:g})")
        if len(better):
            parts.append(f"better than dense beyond the noise at {', '.join(f'{v:g}' for v in better.setting)}")
        lines.append(f"{method}: " + "; ".join(parts))
    return lines


def removal_plot(results: pd.DataFrame, title: str = ""):
    """Draw a ``sweep_methods`` table as perplexity against what was removed, in one unit per panel.

    Left: the share of the dense model's non-zero parameters removed (unstructured and structured pruning, low
    rank; weight sharing removes none). Right: the megabytes the copy is stored in (zeros held in a dense matrix
    still take their bytes; sharing: codebook + b-bit indices). Perplexity on a log axis; each bar is the paired
    95% interval of the difference from the dense model (Δ low, Δ high), drawn around the copy's perplexity as
    dense · exp(Δ): the interval ``sweep_takeaways`` reads, so a bar that crosses the dense model's dashed line is
    exactly a setting it calls indistinguishable. Returns the figure. Raises ValueError for a table without a dense
    row.
    """
    import matplotlib.pyplot as plt


    dense = results[results.method == "dense"]
    if dense.empty:
        raise ValueError("results has no 'dense' row; make it with sweep_methods")
    dense = dense.iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(18, 6.5))
    colors = plt.get_cmap("tab10")
    methods = [m for m in dict.fromkeys(results.method) if m != "dense"]
    for i, method in enumerate(methods):
        rows = results[results.method == method]
        low, high = dense.perplexity * np.exp(rows["Δ low"]), dense.perplexity * np.exp(rows["Δ high"])
        error = [np.maximum(rows.perplexity - low, 0), np.maximum(high - rows.perplexity, 0)]
        for ax, x in zip(axes, ("non-zero removed", "MB stored")):
            if x == "non-zero removed" and not rows[x].any():
                continue  # removes no parameter (weight sharing): nothing to place on this axis
            ax.errorbar(rows[x], rows.perplexity, yerr=error, fmt="o-", lw=2.5, ms=8, capsize=4,
                        color=colors(i % 10), label=method)
    for ax in axes:
        ax.axhline(dense.perplexity, color="black", ls="--", lw=1.2, label=f"dense: {dense.perplexity:.2f}")
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
    bars = "bars: paired 95% interval of the difference from dense"
    finish_axes(axes[0], "share of the dense model's non-zero parameters removed", "perplexity, log scale "
                "(lower is better)", f"{title}\nparameters removed ({bars})")
    finish_axes(axes[1], "MB stored (float32 matrices; sharing: codebook + b-bit indices)",
                "perplexity, log scale (lower is better)", f"{title}\nbytes stored ({bars})")
    return fig


def time_variants(variants: dict[str, nn.Module], ids: torch.Tensor, hidden: torch.Tensor, repeat: int = 30,
                  warmup: int = 3) -> pd.DataFrame:
    """Time each model's whole forward on ``ids`` and its MLP blocks alone on ``hidden``, against the first model.

    Works for lmlab's GPTs (their ``gpt`` module runs) and transformers models. Columns per part (forward, MLP
    blocks): the median with its unit, the p90, the speed relative to the first variant (its median divided by
    this one's, "1.50×" = one and a half times as fast) and ``timing_verdict``. Timed on one call per sample with
    ``lmlab.measure.timing.time_ms``. Introduced in notebooks/05_pruning_and_low_rank.ipynb.
    Raises ValueError for no variants.
    """
    if not variants:
        raise ValueError("variants is empty: give at least one model to time")
    timings = {}
    with torch.no_grad():
        for name, model in variants.items():
            run = getattr(model, "gpt", model)
            blocks = mlp_blocks(model)
            timings[name] = (time_ms(lambda: run(input_ids=ids).logits, warmup=warmup, repeat=repeat),
                             time_ms(lambda: [block(hidden) for block in blocks], warmup=warmup, repeat=repeat))
    first = next(iter(timings.values()))
    rows = []
    for (name, parts), model in zip(timings.items(), variants.values()):
        row = {"variant": name, "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())}
        for part, timing, reference in zip(("forward", "MLP blocks"), parts, first):
            row |= {part: format_ms(timing.median_ms), f"{part} p90": format_ms(timing.p90_ms),
                    f"{part} speed": f"{reference.median_ms / timing.median_ms:.2f}×",
                    f"{part} verdict": timing_verdict(reference, timing)}
        rows.append(row)
    return pd.DataFrame(rows)


def measure_variants(models: dict[str, tuple[nn.Module | Compressed, str]], contexts: np.ndarray, targets: np.ndarray,
                     score: Callable[[nn.Module], dict], corpus: str, simulated: Sequence[str] = (),
                     repeat: int = 30, alongside: Sequence = (), dense: str | None = None) -> list:
    """Measure each (model, technique) as one results row: ``score(model)`` for accuracy and perplexity, and one
    prediction call timed on ``contexts`` at batch 1 (``lmlab.models.lm.measure``).

    ``corpus`` names the slice ``score`` reads (e.g. "kjv test[:40]"). Rows whose technique is in ``simulated``
    (masks, fake quantization) run the dense arithmetic of model ``dense`` (a key of ``models``), so they are not
    timed: they carry the ``dense`` row's time exactly and are marked simulated
    (``lmlab.measure.results.with_dense_speed``). A model may be a ``Compressed``. ``alongside`` are rows measured
    elsewhere in the same run on the same slice (e.g. chapter 01's n-grams from
    ``lmlab.models.ngram.measure_ngrams``): they come first, their ``corpus`` set to ``corpus``.
    Raises ValueError when a technique is simulated and ``dense`` is not a key of ``models`` with a real technique.
    """
    if any(technique in simulated for _, technique in models.values()):
        if dense not in models or models[dense][1] in simulated:
            real = [name for name, (_, technique) in models.items() if technique not in simulated]
            raise ValueError(f"dense={dense!r}: simulated rows carry a dense model's time; name one of {real}")
    rows = [dataclasses.replace(row, corpus=corpus) for row in alongside]
    measured = {}
    for name, (entry, technique) in models.items():
        model = entry.model if isinstance(entry, Compressed) else entry
        if technique in simulated:
            continue
        measured[name] = measure(cast(LanguageModel, model), contexts, targets, name=name, technique=technique,
                                 setting="batch 1", repeat=repeat, corpus=corpus, scores=score(model))
    for name, (entry, technique) in models.items():
        if technique in simulated:
            assert dense is not None  # a simulated technique needs a dense key of models (checked above)
            model = entry.model if isinstance(entry, Compressed) else entry
            scores = score(model)
            lm = cast(LanguageModel, model)  # a neural language model: an nn.Module that answers LanguageModel
            size_bytes = lm.size_bytes() if hasattr(lm, "size_bytes") else None  # as lm.measure finds them
            row = dataclasses.replace(measured[dense], name=name, technique=technique, accuracy=scores["accuracy"],
                                      perplexity=scores["perplexity"], predictions=scores.get("tokens"),
                                      size_mb=None if size_bytes is None else size_bytes / 1e6,
                                      params=lm.num_parameters() if hasattr(lm, "num_parameters") else None)
            measured[name] = with_dense_speed(row, measured[dense])
    return rows + [measured[name] for name in models]


def beaten_by(rows: Sequence, row) -> dict[str, list[str]]:
    """Name the rows that beat ``row`` (a ``lmlab.measure.results.Result``) on both counts, and how clearly.

    Another row with real (not simulated) speed is faster when its p90 is below ``row``'s p10, mirrored
    from the median (``lmlab.measure.stats.row_timing_verdict``), and more
    accurate when its accuracy is higher. "clearly": higher beyond noise by the one rule for rows
    (``lmlab.measure.stats.within_noise``: the gap exceeds 2·√(se₁² + se₂²)); "within noise": higher, but not
    beyond it. Returns {"clearly": [...], "within noise": [...]}, names in the rows' order.
    """
    found: dict[str, list[str]] = {"clearly": [], "within noise": []}
    for other in rows:
        if other is row or other.simulated or not (row_timing_verdict(row, other) == "faster"
                                                   and other.accuracy > row.accuracy):
            continue
        found["within noise" if within_noise(other, row) else "clearly"].append(other.name)
    return found
