"""Fused decoder graphs: SmolLM2 built node by node from its weights with ONNX Runtime's fused operators, its
KV cache one buffer allocated once, in float32, int8 or int4.

Introduced in notebooks/06_acceleration.ipynb. ``onnx_decoder`` exports a decode step with ``torch.onnx.export``:
about 2,000 small nodes (RMSNorm as Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul; rotary as a dozen slices and
products; reshapes and transposes around every attention), and per layer a Concat that copies the whole growing
past at every step. ``fused_decoder`` writes the graph itself with ``onnx.helper``, one fused operator per idea:

- the embedding: one Gather; per layer: ``SkipSimplifiedLayerNormalization`` (residual add and RMSNorm in one
  node), ONE matrix product for Q|K|V, ``GroupQueryAttention`` (rotary positions, causal attention over the
  cache, and the cache write, in one node), the output projection, a second SkipSimplifiedLayerNorm, ONE matrix
  product for gate|up, SiLU(gate) · up (Split, Sigmoid, Mul, Mul) and the down projection: 11 nodes per layer,
  333 for SmolLM2's 30 layers with the embedding, the final norm and the output layer (303 once ONNX Runtime
  turns each Sigmoid · Mul into one QuickGelu node), against 2,245 (2,094 after ONNX Runtime's optimizer) for
  ``onnx_decoder``'s export;
- the KV cache is ONE buffer per layer and kind, (batch, kv_heads, max_length, head_dim) float32, allocated when
  a reply starts and bound as both the past input and the present output (ONNX Runtime's IO binding): a step
  writes its new position in place and copies nothing that grows with the past. It holds
  2 · layers · kv_heads · head_dim · max_length · 4 · batch bytes whatever the length so far (``past_bytes``);
- "int8" and "int4" store every matrix product (the output layer too) as ``MatMulNBits``: symmetric blocks of 64
  (int8) or 32 (int4) weights along the input (``QUANT_BLOCKS``) and int8 arithmetic (accuracy level 4), which gives
  each row the same bits whatever the batch (int4 in blocks of 64 does not). "float32" keeps plain MatMuls.

What is left of a step's time is the matrix products (the weights, read once per step whatever the batch) and
the attention, which reads every cached position: at one thread, a step at position 1,000 costs about 1.5× one
at position 32 in int8 (``onnx_decoder``'s: 2.6× to 3.7×, with its copies), the extra almost all in
GroupQueryAttention, which reads 2 · layers · kv_heads · head_dim · positions · 4 bytes (46 MB at 1,000
positions) one query head at a time.

Rows of a batch are padded on the LEFT by the decode loop; in the buffer each row's tokens sit from position 0
(right padding), and the attention mask becomes each row's length: seqlens_k = P + Q − 1 with P the row's real
tokens before the step and Q its real new tokens (``query_seqlens``), so each row computes what it would alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from lmlab.compress.export import (
    _cached_graph,
    _CpuStep,
    _fingerprint,
    _initializer_bytes,
    _int64_matrix,
    _session,
)
from lmlab.measure.hardware import QUANT_BLOCKS
from lmlab.measure.runtime import check_int, check_threads
from lmlab.models.protocols import is_transformers_causal_lm

FUSED_FORMATS = ("float32", "int8", "int4")
FUSED_VERSION = 2  # part of a fused graph's key: bump when the graph's construction changes
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)  # SmolLM2, Llama: RMSNorm, rotary, grouped-query attention, SiLU


class FusedPast:
    """The KV buffers of a batch, allocated once: per layer keys then values, (batch, kv_heads, max_length,
    head_dim) float32 ONNX Runtime values that every step writes in place.

    ``length`` is the mask's columns so far (left padding included); ``lengths[b]`` is row b's real tokens, kept
    at buffer positions [0, lengths[b]). A past made by ``from_pairs`` is ``aligned=False`` instead: buffer
    position = mask column, padding included, until the next step's mask says which columns are real.
    """

    def __init__(self, arrays: tuple[np.ndarray, ...], batch: int, length: int, lengths: np.ndarray,
                 values: tuple | None = None, aligned: bool = True, binding: Any = None):
        from onnxruntime import OrtValue

        self.arrays, self.batch, self.length, self.lengths = arrays, batch, length, lengths
        self.aligned = aligned
        self.binding = binding  # (session, IO binding) with the buffers bound once, reused by every later step
        self.capacity = arrays[0].shape[2]
        # ONNX Runtime's views of the arrays (no copy), made once per buffer and handed from step to step
        self.values = values or tuple(OrtValue.ortvalue_from_numpy(array) for array in arrays)

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(value.shape())) * 4 for value in self.values)  # float32: 4 bytes each

    def __repr__(self) -> str:
        return (f"FusedPast(layers={len(self.values) // 2}, batch={self.batch}, length={self.length}, "
                f"capacity={self.capacity})")


class FusedDecoder(_CpuStep):
    """One decode step of a Llama-architecture causal LM as lmlab's own fused ONNX graph, with a KV buffer
    allocated once (made by ``fused_decoder``; see the module's docstring).

    It answers ``lmlab.inference.step.DecodeStep`` like ``OnnxDecoder``: ``backend`` ("fused", "fused-int8",
    "fused-int4"), ``device`` (the CPU), ``no_cache`` (None), ``to_pairs``, ``from_pairs``; ``crop`` rolls a past
    back without a copy. ``stored_bytes`` is the graph's weights as stored; ``threads`` is fixed at creation.
    """

    no_cache = None  # an empty past: the call reads the whole sequence and its past is simply not kept
    optimization = "all"  # ONNX Runtime's graph optimization level (as OnnxDecoder's, for profile_step)

    def __init__(self, path: Path, fmt: str, config, threads: int | None, max_length: int):
        self.session = _session(path, threads)
        self.path: Path | None = path
        self.fmt, self.max_length = fmt, max_length
        self.threads = self.session.get_session_options().intra_op_num_threads
        self.num_layers, self.kv_heads = config.num_hidden_layers, config.num_key_value_heads
        self.head_dim = _head_dim(config)
        self.vocab_size = config.vocab_size
        self.stored_bytes = _initializer_bytes(path)
        self.backend = "fused" if fmt == "float32" else f"fused-{fmt}"
        self.past_names = [f"past_{kind}.{i}" for i in range(self.num_layers) for kind in ("key", "value")]
        self.present_names = [name.replace("past_", "present_") for name in self.past_names]
        self.output_names = ["logits", *self.present_names]

    def empty_past(self, batch: int, capacity: int | None = None) -> FusedPast:
        """Allocate the buffers for ``batch`` rows of ``capacity`` positions (default max_length), zeroed."""
        capacity = self.max_length if capacity is None else capacity
        shape = (batch, self.kv_heads, capacity, self.head_dim)
        # np.zeros maps zero pages lazily: a step touches only the positions it writes
        return FusedPast(tuple(np.zeros(shape, np.float32) for _ in self.past_names), batch, 0, np.zeros(batch, int))

    def past_bytes(self, past: FusedPast | None) -> int:
        """Bytes of the buffers allocated: 2 · layers · kv_heads · head_dim · max_length · 4 · batch (0 for None)."""
        return 0 if past is None else past.nbytes

    def crop(self, past: FusedPast, length: int) -> FusedPast:
        """Keep the first ``length`` columns of ``past`` (a rollback): O(1), nothing is copied; the next step
        overwrites the dropped positions. Raises ValueError for a length outside [0, past.length]."""
        check_int("length", length, 0, past.length)
        dropped = past.length - length  # the last columns are real tokens in every row (left padding)
        return FusedPast(past.arrays, past.batch, length, np.maximum(past.lengths - dropped, 0), past.values,
                         binding=past.binding)

    def to_pairs(self, past: FusedPast) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Return the past as per-layer (keys, values), each (batch, kv_heads, length, head_dim), left-padded
        with zeros as the decode loop pads its rows (a copy)."""
        if not past.aligned:  # still as from_pairs stored it: column for column
            return [(torch.from_numpy(k[:, :, :past.length].copy()), torch.from_numpy(v[:, :, :past.length].copy()))
                    for k, v in zip(past.arrays[0::2], past.arrays[1::2])]
        pairs = []
        for keys, values in zip(past.arrays[0::2], past.arrays[1::2]):
            shaped = [np.zeros((past.batch, self.kv_heads, past.length, self.head_dim), np.float32) for _ in "kv"]
            for b, n in enumerate(past.lengths.tolist()):
                shaped[0][b, :, past.length - n:] = keys[b, :, :n]
                shaped[1][b, :, past.length - n:] = values[b, :, :n]
            pairs.append((torch.from_numpy(shaped[0]), torch.from_numpy(shaped[1])))
        return pairs

    def from_pairs(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> FusedPast:
        """Return a past holding per-layer (keys, values), each (batch, kv_heads, length, head_dim), left-padded
        as the decode loop pads (the next step's mask says which columns are real: they move to the front of
        each row then, once). Raises ValueError for shapes that do not fit or a length beyond max_length."""
        shapes = {tuple(t.shape) for pair in pairs for t in pair}
        if len(pairs) != self.num_layers or len(shapes) != 1:
            raise ValueError(f"pairs has {len(pairs)} layers of shapes {sorted(shapes)}; it needs {self.num_layers}"
                             f" (keys, values) pairs of one shape")
        batch, heads, length, dim = shapes.pop()
        if (heads, dim) != (self.kv_heads, self.head_dim) or length > self.max_length:
            raise ValueError(f"pairs have shape {(batch, heads, length, dim)}; each must be (batch, {self.kv_heads}, "
                             f"length <= {self.max_length}, {self.head_dim})")
        past = self.empty_past(batch)
        for array, tensor in zip(past.arrays, [t for pair in pairs for t in pair]):
            array[:, :, :length] = tensor.detach().cpu().float().numpy()
        return FusedPast(past.arrays, batch, length, np.full(batch, length), past.values, aligned=False)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 past: FusedPast | None = None) -> tuple[torch.Tensor, FusedPast]:
        """Run one step: (batch, new) ids, (batch, past + new) mask of 1/0, (batch, new) positions, the past.

        Each row's positions are its real tokens before it (``lmlab.inference.step.positions``); ``position_ids``
        is checked for its shape. Returns (logits (batch, new, vocab) float32, the same buffers, longer by ``new``
        columns); the logits of padding columns are unspecified. Raises ValueError for shapes that do not fit or
        a step past max_length.
        """
        binding, past, order, logits = self._bind(self.session, input_ids, attention_mask, position_ids, past)
        self.session.run_with_iobinding(binding)  # fills logits (batch, new, vocab), real tokens first in each row
        if order is not None:  # back to the caller's left-padded columns
            logits = np.take_along_axis(logits, np.argsort(order, axis=1)[:, :, None], axis=1)
        return torch.from_numpy(logits), past

    def _runner(self, session, input_ids, attention_mask, position_ids, past):
        """(session's run method, its arguments) that run this step on ``session`` (a session of the same graph),
        the buffers bound in place: for ``profile_step``. Rerunning it rewrites the same positions."""
        binding = self._bind(session, input_ids, attention_mask, position_ids, past)[0]
        return session.run_with_iobinding, (binding,)

    def _bind(self, session, input_ids, attention_mask, position_ids, past):
        """Check a step's inputs and bind them, the past buffers as both inputs and outputs (once per buffer and
        session: later steps reuse the binding); return (binding, the past after the step, each row's column
        order or None, the array the logits will be written to)."""
        from onnxruntime import OrtValue

        ids, mask, positions = (_int64_matrix(name, value) for name, value in
                                (("input_ids", input_ids), ("attention_mask", attention_mask),
                                 ("position_ids", position_ids)))
        past = self._checked_past(ids, mask, positions, past)
        if not past.aligned:
            _align(past, mask[:, :past.length])
        new = ids.shape[1]
        fresh = mask[:, past.length:]  # (batch, new): which new columns are real
        before, added = mask[:, :past.length].sum(1), fresh.sum(1)
        total = before + added
        if total.max() > past.capacity or total.min() < 1:
            raise ValueError(f"this step makes rows of {total.min()} to {total.max()} tokens; each must hold "
                             f"1 to max_length={past.capacity}")
        order = None if fresh.all() else np.argsort(-fresh, axis=1, kind="stable")  # real columns first
        if order is not None:
            ids = np.take_along_axis(ids, order, axis=1)
        feeds = {"input_ids": ids, "seqlens_k": (total - 1).astype(np.int32), "query_seqlens": added.astype(np.int32),
                 "total_sequence_length": np.array(max(int(total.max()), new), np.int32)}
        reuse = past.binding is not None and past.binding[0] is session
        binding = past.binding[1] if reuse else session.io_binding()
        if not reuse:
            for past_name, present_name, value in zip(self.past_names, self.present_names, past.values):
                binding.bind_ortvalue_input(past_name, value)
                binding.bind_ortvalue_output(present_name, value)  # the same buffer: written in place
        logits = np.empty((ids.shape[0], new, self.vocab_size), np.float32)  # (batch, new, vocab)
        binding.bind_ortvalue_output("logits", OrtValue.ortvalue_from_numpy(logits))
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array)))
        grown = FusedPast(past.arrays, past.batch, past.length + new, total, past.values, binding=(session, binding))
        return binding, grown, order, logits

    def _checked_past(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past) -> FusedPast:
        batch, new = ids.shape
        if new < 1:
            raise ValueError(f"input_ids has shape {ids.shape}; a step needs at least one new token per row")
        if positions.shape != ids.shape:
            raise ValueError(f"position_ids has shape {positions.shape}; it must match input_ids' {ids.shape}")
        if past is None:
            past = self.empty_past(batch)
        elif not isinstance(past, FusedPast):
            past = self.from_pairs(list(past))
        if past.batch != batch:
            raise ValueError(f"past holds {past.batch} sequences; input_ids has {batch} rows")
        if mask.shape != (batch, past.length + new):
            raise ValueError(f"attention_mask has shape {mask.shape}; it must be (batch, past + new) = "
                             f"({batch}, {past.length + new})")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"input_ids holds ids outside [0, {self.vocab_size - 1}]")
        return past

    def __repr__(self) -> str:
        return (f"FusedDecoder(fmt={self.fmt!r}, layers={self.num_layers}, kv_heads={self.kv_heads}, "
                f"head_dim={self.head_dim}, max_length={self.max_length}, threads={self.threads})")


def _align(past: FusedPast, mask: np.ndarray) -> None:
    """Move each row's real columns (mask 1) to the front of its buffer, in order: a past from ``from_pairs``."""
    for b in range(past.batch):
        real = np.flatnonzero(mask[b])
        for array in past.arrays:
            row = array[b]  # (kv_heads, capacity, head_dim), a view
            row[:, :len(real)] = row[:, real]
    past.lengths, past.aligned = mask.sum(1), True


def fused_decoder(model: nn.Module, fmt: str = "int8", threads: int | None = None, max_length: int = 2048,
                  cache: bool = True) -> FusedDecoder:
    """Build lmlab's fused decode-step graph of a Llama-architecture causal LM (SmolLM2) and run it in ONNX Runtime.

    Per layer: h = x + Attention(RMSNorm(x)), x' = h + W_down(SiLU(W_gate n) · W_up n) with n = RMSNorm(h), as
    fused operators (see the module's docstring); the KV cache is one buffer of ``max_length`` positions per
    layer and kind, allocated when a reply starts. ``fmt`` is "float32", "int8" or "int4" (MatMulNBits, blocks
    of 32, accuracy level 4). The graph is cached outside the repository, keyed by the weights and the settings,
    unless ``cache=False`` (then ``path`` is None).
    Raises ValueError for an unknown fmt, a model of another architecture, max_length outside [1,
    max_position_embeddings] or threads < 1.
    """
    if fmt not in FUSED_FORMATS:
        raise ValueError(f"fmt={fmt!r} is unknown; use one of {FUSED_FORMATS}")
    if threads is not None:
        check_threads(threads)
    config = _checked_config(model)
    check_int("max_length", max_length, 1, config.max_position_embeddings)

    def name(q: str | None) -> str:
        return f"fused-{_fingerprint(model, q, kind=f'fused{FUSED_VERSION}|{QUANT_BLOCKS}')}.onnx"

    quantization = None if fmt == "float32" else fmt
    path = _cached_graph(name, lambda target: _build_graph(model, target), quantization, cache,
                         type(model).__name__)
    decoder = FusedDecoder(path, fmt, config, threads, max_length)
    if not cache:  # the session holds the graph now: leave no temporary file behind
        import shutil

        shutil.rmtree(path.parent, ignore_errors=True)
        decoder.path = None
    return decoder


def _checked_config(model: nn.Module):
    """The model's transformers config, refused unless the graph below computes exactly this model."""
    if not is_transformers_causal_lm(model) or type(model).__name__ not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"model of type {type(model).__name__} is not supported; fused_decoder builds "
                         f"{SUPPORTED_ARCHITECTURES} (transformers causal LMs such as SmolLM2)")
    config = cast(Any, model.config)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    odd = {"hidden_act": config.hidden_act != "silu", "attention_bias": bool(config.attention_bias),
           "mlp_bias": bool(getattr(config, "mlp_bias", False)),
           "rope_scaling": rope.get("rope_type", "default") != "default"}
    if any(odd.values()):
        raise ValueError(f"model's config has {[k for k, v in odd.items() if v]} unlike the supported Llama "
                         f"(SiLU, no biases, plain rotary); fused_decoder cannot build it")
    return config


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _rotary_tables(config) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position · θ^(−2i/d) for every position the model knows: (positions, head_dim / 2) each,
    computed as transformers computes them (float32)."""
    dim = _head_dim(config)
    inv_freq = 1.0 / (_rope_theta(config) ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    angles = torch.outer(torch.arange(config.max_position_embeddings).float(), inv_freq)  # (positions, dim / 2)
    return angles.cos().numpy(), angles.sin().numpy()


def _build_graph(model: nn.Module, path: Path) -> None:
    """Write the float32 fused decode step of ``model`` to ``path`` (weights in a file beside it)."""
    import onnx
    from onnx import TensorProto, helper

    config = cast(Any, model.config)
    core = cast(Any, model).model
    kv, dim, layers = config.num_key_value_heads, _head_dim(config), config.num_hidden_layers
    graph = _Graph()
    embed = graph.weight("embed_tokens", core.embed_tokens.weight.detach().float().numpy())  # (vocab, hidden)
    cos, sin = _rotary_tables(config)
    graph.array("cos_cache", cos)
    graph.array("sin_cache", sin)
    graph.node("Gather", [embed, "input_ids"], ["hidden.0"])
    residual, delta = "hidden.0", ""
    for i, layer in enumerate(core.layers):
        residual, delta = _layer(graph, config, i, layer, residual, delta)
    graph.node("SkipSimplifiedLayerNormalization", [delta, residual, graph.weight("norm", core.norm.weight)],
               ["final"], domain="com.microsoft", epsilon=config.rms_norm_eps)
    head = cast(Any, model).lm_head.weight.detach().float().numpy()  # (vocab, hidden): tied to the embedding
    graph.node("MatMul", ["final", graph.array("lm_head.T", np.ascontiguousarray(head.T))], ["logits"])
    batch, new, cap = "batch", "new", "max_length"
    past = [helper.make_tensor_value_info(f"past_{k}.{i}", TensorProto.FLOAT, [batch, kv, cap, dim])
            for i in range(layers) for k in ("key", "value")]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, new]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [batch]),
              helper.make_tensor_value_info("query_seqlens", TensorProto.INT32, [batch]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []), *past]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, new, config.vocab_size]),
               *(helper.make_tensor_value_info(v.name.replace("past_", "present_"), TensorProto.FLOAT,
                                               [batch, kv, cap, dim]) for v in past)]
    made = helper.make_graph(graph.nodes, "lmlab-fused-decoder", inputs, outputs, graph.constants)
    onnx_model = helper.make_model(made, opset_imports=[helper.make_opsetid("", 18),
                                                        helper.make_opsetid("com.microsoft", 1)])
    onnx_model.ir_version = 9
    onnx.save(onnx_model, str(path), save_as_external_data=True, location=path.name + ".data")


def _layer(graph: _Graph, config, i: int, layer, residual: str, delta: str) -> tuple[str, str]:
    """Add decoder layer ``i``: return (the residual stream before its MLP's output, the MLP's output)."""
    eps, heads, kv, dim = config.rms_norm_eps, config.num_attention_heads, config.num_key_value_heads, _head_dim(config)
    attention, mlp = layer.self_attn, layer.mlp
    norm_in = graph.weight(f"{i}.input_norm", layer.input_layernorm.weight)
    if not delta:  # the first layer: nothing to add yet
        graph.node("SimplifiedLayerNormalization", [residual, norm_in], [f"{i}.n1"], axis=-1, epsilon=eps)
    else:  # h = x + delta, n = RMSNorm(h): one node
        graph.node("SkipSimplifiedLayerNormalization", [delta, residual, norm_in],
                   [f"{i}.n1", "", "", f"{i}.h0"], domain="com.microsoft", epsilon=eps)
        residual = f"{i}.h0"
    qkv = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])  # (q+2kv, hidden)
    graph.node("MatMul", [f"{i}.n1", graph.weight(f"{i}.qkv.T", qkv.T)], [f"{i}.qkv"])
    attend = [f"{i}.qkv", "", "", f"past_key.{i}", f"past_value.{i}", "seqlens_k", "total_sequence_length",
              "cos_cache", "sin_cache", *[""] * 7, "query_seqlens"]
    graph.node("GroupQueryAttention", attend, [f"{i}.attn", f"present_key.{i}", f"present_value.{i}"],
               domain="com.microsoft", num_heads=heads, kv_num_heads=kv, do_rotary=1, rotary_interleaved=0,
               scale=1.0 / math.sqrt(dim))
    graph.node("MatMul", [f"{i}.attn", graph.weight(f"{i}.o.T", attention.o_proj.weight.T)], [f"{i}.o"])
    graph.node("SkipSimplifiedLayerNormalization",
               [f"{i}.o", residual, graph.weight(f"{i}.post_norm", layer.post_attention_layernorm.weight)],
               [f"{i}.n2", "", "", f"{i}.h1"], domain="com.microsoft", epsilon=eps)
    gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])  # (2 · intermediate, hidden)
    graph.node("MatMul", [f"{i}.n2", graph.weight(f"{i}.gate_up.T", gate_up.T)], [f"{i}.gu"])
    graph.node("Split", [f"{i}.gu"], [f"{i}.gate", f"{i}.up"], axis=-1, num_outputs=2)
    graph.node("Sigmoid", [f"{i}.gate"], [f"{i}.sig"])
    graph.node("Mul", [f"{i}.gate", f"{i}.sig"], [f"{i}.silu"])
    graph.node("Mul", [f"{i}.silu", f"{i}.up"], [f"{i}.act"])
    graph.node("MatMul", [f"{i}.act", graph.weight(f"{i}.down.T", mlp.down_proj.weight.T)], [f"{i}.mlp"])
    return f"{i}.h1", f"{i}.mlp"


class _Graph:
    """The nodes and constants of a graph being written."""

    def __init__(self):
        self.nodes: list = []
        self.constants: list = []

    def node(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attributes) -> None:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}.{len(self.nodes)}", domain=domain,
                                           **attributes))

    def array(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.constants.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def weight(self, name: str, tensor) -> str:
        """Add a torch weight (or an array) as a float32 constant; return its name."""
        array = tensor.detach().float().numpy() if isinstance(tensor, torch.Tensor) else tensor
        return self.array(name, array)
