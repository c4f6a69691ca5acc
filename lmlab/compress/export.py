"""Exported graphs: a model exported to ONNX and run by ONNX Runtime, in float32 or with real int8 arithmetic.

Introduced in notebooks/04_quantization.ipynb. ``benchmarks/bench_int8.py`` measures every int8 path this
machine offers side by side (torchao, ONNX Runtime, the deprecated ``torch.ao.quantization.quantize_dynamic``);
ONNX Runtime won, so it is lmlab's int8 path: ``onnx_model(model)``. Its two int8 schemes:

- ``"blockwise"`` (the default): ``MatMulNBits`` with 8-bit symmetric weights, one float32 step per block of 64
  weights along the input (``BLOCK_SIZE``), and int8 arithmetic on activations quantized per block of each token
  at run time (accuracy level 4). One token's outlier activation only coarsens its own blocks. Blocks of 64, not
  the quantizer's default 128: with 128, ONNX Runtime's kernels for one row and for several rows add the
  blocks' partial products in different orders, so a row's logits (and, at a near tie, its greedy token) depend
  on how many other rows share the batch; with 64 (and 32) every row count gives the same bits, and 64 reads 6%
  fewer bytes than 32 (``lmlab.measure.hardware.QUANT_BLOCKS``, measured on this machine's kernels)
  (``lmlab.inference.invariance``, notebooks/06_acceleration.ipynb).
- ``"dynamic"``: ``MatMulInteger`` with per-channel int8 weights and activations quantized to uint8 with one
  step for the whole input tensor at run time. Faster, but a single outlier activation (SmolLM2 has some in
  the hundreds) sets the step for every token, and accuracy collapses.

``quantization=None`` runs the float32 graph: the fair reference, since a graph runtime is often faster than
eager PyTorch before any int8 (it skips Python between the operations).

Exporting SmolLM2 takes about half a minute, so the quantized graph is cached outside the repository
(``lmlab.models.pretrained.cache_dir()``), keyed by a hash of the weights and the settings; later calls take seconds.

``onnx_decoder(model)`` (notebooks/06_acceleration.ipynb) exports one decode step with a KV cache: the graph
takes the new tokens and every layer's past keys and values, and returns the logits and the keys and values
grown by the new tokens. ``graph_node_counts`` and ``profile_step`` show what ONNX Runtime's graph optimizer
does to it and where a step's milliseconds go (latency D = Σ dᵢ over the nodes run).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from lmlab.measure.hardware import QUANT_BLOCKS
from lmlab.measure.runtime import check_int, check_threads, default_threads
from lmlab.measure.timing import time_ms
from lmlab.models.neural import GPTLanguageModel, MLPLanguageModel
from lmlab.models.pretrained import cache_dir, cache_lock
from lmlab.models.protocols import is_transformers_causal_lm

QUANTIZATIONS = ("blockwise", "dynamic", None)
BLOCK_SIZE = QUANT_BLOCKS["int8"]  # 64 weights per step: a row's int8 output is the same for any batch (128: not)
FORMAT_VERSION = 4  # part of the cache key: bump when the export or the quantization changes (4: blocks of 64)
DECODER_VERSION = 3  # part of a decoder graph's key: bump when the decoder's export changes (3: blocks of 64)
OPTIMIZATIONS = ("disabled", "basic", "extended", "all")  # ONNX Runtime's graph optimization levels


class OnnxLogits(nn.Module):
    """An exported graph (float32 or int8) run by ONNX Runtime, called like the torch module it came from.

    ``forward`` takes the graph's inputs as torch tensors (by name) and returns the logits, wrapped in an
    object with ``.logits`` when ``wraps_output`` (as transformers models return them). It has no torch
    parameters; ``stored_bytes`` is the size of the graph's weights as stored (int8 codes and their
    steps, and whatever stayed float32). The session uses ``threads`` intra-op threads, fixed when it is made.
    """

    def __init__(self, path: Path, input_names: tuple[str, ...], config=None, wraps_output: bool = True,
                 threads: int | None = None, source_parameters: int = 0):
        super().__init__()
        self.session = _session(path, threads)
        self.input_names, self.config, self.wraps_output = input_names, config, wraps_output
        self.threads = self.session.get_session_options().intra_op_num_threads
        self.stored_bytes = _initializer_bytes(path)
        self.source_parameters = source_parameters  # how many weights the exported model had
        self.path = path

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **_: object):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:  # what transformers uses without a cache: 0, 1, 2, ...
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        feeds = {name: given[name].detach().cpu().numpy().astype(np.int64) for name in self.input_names}
        logits = torch.from_numpy(self.session.run(["logits"], feeds)[0])
        return _Output(logits) if self.wraps_output else logits


class _Output:
    def __init__(self, logits: torch.Tensor):
        self.logits = logits


def onnx_model(model: nn.Module, quantization: str | None = "blockwise", threads: int | None = None,
               cache: bool = True):
    """Return a copy of ``model`` exported to ONNX and run by ONNX Runtime, its matrix products in int8.

    Works on lmlab's GPT and MLP (the copy answers the same questions: next-token log-probabilities,
    ``evaluate_documents``) and on a transformers causal LM such as SmolLM2 (the copy is called like it:
    ``copy(input_ids=...).logits``; it runs whole sequences, without a KV cache). Every nn.Linear and GPT-2
    ``Conv1D`` becomes int8, the output layer included; embeddings, norms and attention arithmetic stay float32.
    ``quantization`` is "blockwise", "dynamic" (see the module's docstring) or None (float32 throughout).
    The original is untouched. The graph is cached outside the repository unless ``cache=False``.
    Raises ValueError for an unknown quantization or model, RuntimeError if the export fails.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r} is unknown; use one of {QUANTIZATIONS}")
    core: nn.Module
    inputs: tuple[str, ...]
    example: tuple[torch.Tensor, ...]
    max_length: int | None
    if isinstance(model, GPTLanguageModel):
        core, inputs, example = model.gpt, ("input_ids", "attention_mask", "position_ids"), _gpt_example(model)
        max_length = model.config.n_positions
    elif isinstance(model, MLPLanguageModel):
        core, inputs = _MLPLogits(model), ("input_ids",)
        example = (torch.zeros(2, model.context_size, dtype=torch.long),)
        max_length = None  # a fixed context: only the batch varies
    elif is_transformers_causal_lm(model):
        hf_config = cast(Any, model.config)  # a transformers config (nn.Module types attributes as Tensor | Module)
        core, inputs, example = model, ("input_ids",), (torch.arange(16)[None].clamp(max=hf_config.vocab_size - 1),)
        max_length = hf_config.max_position_embeddings
    else:
        raise ValueError(f"model of type {type(model).__name__} is not one onnx_model knows; use lmlab's GPT or MLP, "
                         f"or a transformers causal LM")
    path = _graph(core, inputs, example, quantization, cache, max_length)
    config = getattr(core, "config", None)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if isinstance(model, GPTLanguageModel):
        quantized = copy.deepcopy(model)
        quantized.gpt = OnnxLogits(path, inputs, config, wraps_output=True, threads=threads, source_parameters=params)
        return quantized
    if isinstance(model, MLPLanguageModel):
        mlp = copy.deepcopy(model)
        del mlp.embed, mlp.hidden, mlp.out  # all three live in the graph now
        mlp.__class__ = _OnnxMLP  # the same model, its computation run by ONNX Runtime
        mlp.runtime = OnnxLogits(path, inputs, wraps_output=False, threads=threads, source_parameters=params)
        return mlp.eval()
    return OnnxLogits(path, inputs, config, wraps_output=True, threads=threads, source_parameters=params).eval()


class _MLPLogits(nn.Module):
    """The MLP's whole computation, context ids -> logits, as one module to export."""

    def __init__(self, model: MLPLanguageModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # MLPLanguageModel.last_logits, run on a (batch, 1, features) view: 3-D inputs export as MatMul + Add,
        # which the quantizers rewrite, where 2-D ones export as Gemm, which the blockwise quantizer skips.
        e = self.model.embed(input_ids).flatten(1)[:, None, :]  # (batch, 1, context * embed)
        return self.model.out(torch.tanh(self.model.hidden(e)))[:, 0]  # (batch, vocab)


class _OnnxMLP(MLPLanguageModel):
    """lmlab's MLP language model with its computation run by ONNX Runtime (made by ``onnx_model``)."""

    runtime: OnnxLogits

    def last_logits(self, contexts: torch.Tensor) -> torch.Tensor:
        return self.runtime(input_ids=contexts)


def _gpt_example(model: GPTLanguageModel) -> tuple[torch.Tensor, ...]:
    ids = torch.full((2, 16), model.vocab.eos_id, dtype=torch.long)
    return ids, torch.ones_like(ids), torch.arange(16).expand(2, 16).contiguous()


def _graph(core: nn.Module, inputs: tuple[str, ...], example: tuple[torch.Tensor, ...], quantization: str | None,
           cache: bool, max_length: int | None) -> Path:
    def export_float32(path: Path) -> None:
        _export(conv1d_as_linear(core).float().eval(), inputs, example, path, max_length)

    return _cached_graph(lambda q: f"{_fingerprint(core, q)}.onnx", export_float32, quantization, cache,
                         type(core).__name__)


def _cached_graph(name: Callable[[str | None], str], export_float32: Callable[[Path], None],
                  quantization: str | None, cache: bool, model_name: str) -> Path:
    """Return the cached graph ``name(quantization)``, else export it (``export_float32(path)``), quantize it
    (``_quantize``) and cache it. A cached float32 graph of the same model, ``name(None)``, is quantized instead of
    exporting again."""
    target = cache_dir() / "onnx" / name(quantization)
    if cache and target.is_file():
        return target
    if cache:  # another process may be exporting the same graph: wait for it rather than export twice

        with cache_lock(f"onnx-{name(quantization)}"):
            if target.is_file():
                return target
            return _export_graph(target, name, export_float32, quantization, cache, model_name)
    return _export_graph(target, name, export_float32, quantization, cache, model_name)


def _export_graph(target: Path, name: Callable[[str | None], str], export_float32: Callable[[Path], None],
                  quantization: str | None, cache: bool, model_name: str) -> Path:
    """Export (or reuse the cached float32 graph), quantize, and write the graph to ``target`` atomically."""
    with tempfile.TemporaryDirectory() as folder:
        exported = Path(folder) / "model.onnx"
        float32 = cache_dir() / "onnx" / name(None) if cache and quantization is not None else None
        if float32 is not None and float32.is_file():
            exported = float32  # the same float32 graph the export would write
        else:
            export_float32(exported)
        prepared = exported
        if quantization is not None:  # a float32 graph keeps its tied weight once
            prepared = Path(folder) / "prepared.onnx"
            _fold_constant_transposes(exported, prepared)
        final = Path(folder) / "final.onnx"
        _quantize(prepared, final, quantization)
        if quantization is not None and not _int8_matmuls(final):
            raise RuntimeError(f"quantization={quantization!r} turned no matrix product of {model_name} into int8")
        if not cache:
            target = Path(tempfile.mkdtemp(prefix="lmlab-onnx-")) / "model.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(final, staging)
        os.replace(staging, target)  # atomic: a reader sees the whole file or none
    return target


def _fingerprint(core: nn.Module, quantization: str | None, kind: str = "") -> str:
    """Hash the weights and the settings; ``kind`` names a graph other than the plain logits one (a decoder)."""
    settings = f"{FORMAT_VERSION}|{quantization}|{BLOCK_SIZE}|{type(core).__name__}|{torch.__version__}"
    digest = hashlib.sha256((f"{kind}|{settings}" if kind else settings).encode())
    for name, tensor in core.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def conv1d_as_linear(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` with transformers' GPT-2 ``Conv1D`` layers turned into the equivalent nn.Linear.

    Conv1D computes x W + b with W stored (in, out); nn.Linear stores Wᵀ. Quantizers that look for
    nn.Linear (torchao, torch.ao) skip Conv1D, and Conv1D exports to ONNX as Gemm, which ONNX Runtime's
    blockwise quantizer skips; the copy computes the same function in a form they all recognise.
    """
    from transformers.pytorch_utils import Conv1D

    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(*child.weight.shape)
                linear.weight = nn.Parameter(child.weight.detach().T.contiguous())
                linear.bias = nn.Parameter(child.bias.detach().clone())
                setattr(module, name, linear)
    return model


def _export(core: nn.Module, inputs: tuple[str, ...], example: tuple[torch.Tensor, ...], path: Path,
            max_length: int | None) -> None:
    """Export with a dynamic batch (and, for sequence models, a dynamic length up to ``max_length``)."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    spec = {0: batch} if max_length is None else {0: batch, 1: Dim("length", min=2, max=max_length)}
    dynamic = {name: spec for name in inputs}
    with _quiet_export(type(core).__name__), torch.no_grad():
        torch.onnx.export(_Named(core, inputs), example, str(path), dynamo=True, input_names=list(inputs),
                          output_names=["logits"], dynamic_shapes=dynamic, external_data=True, optimize=True,
                          verbose=False)


@contextlib.contextmanager
def _quiet_export(model_name: str):
    """Silence the exporter's logs, warnings and prints; turn a failure into one RuntimeError with its reason."""
    quiet = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            yield
    except Exception as err:  # export failures print pages of graph dumps; keep the reason, drop the noise
        raise RuntimeError(f"exporting {model_name} to ONNX failed: {err}") from err
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class _Named(nn.Module):
    """Call a model with keyword inputs and return only its logits, the form torch.onnx.export needs."""

    def __init__(self, core: nn.Module, inputs: tuple[str, ...]):
        super().__init__()
        self.core, self.inputs = core, inputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(self.core, _MLPLogits):
            return self.core(input_ids)
        given = {"attention_mask": attention_mask, "position_ids": position_ids}
        return self.core(input_ids=input_ids, **{k: v for k, v in given.items() if k in self.inputs},
                         use_cache=False).logits


def _fold_constant_transposes(source: Path, target: Path) -> None:
    """Store Transpose(constant) as a transposed constant, so a tied output layer's MatMul sees a constant
    weight (the quantizers only touch MatMuls whose weight is a constant)."""
    import onnx
    from onnx import numpy_helper

    graph_model = onnx.load(str(source))
    graph = graph_model.graph
    constants = {init.name: init for init in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in constants]:
        perm = next(list(a.ints) for a in node.attribute if a.name == "perm")
        array = numpy_helper.to_array(constants[node.input[0]]).transpose(perm)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), node.output[0]))
        graph.node.remove(node)
    onnx.save(graph_model, str(target), save_as_external_data=True, location=target.name + ".data")


def _quantize(source: Path, target: Path, quantization: str | None) -> None:
    """Write the graph with its constant-weight MatMuls quantized (None: as one float32 file): "dynamic"
    (MatMulInteger), "blockwise" or "int8" (8-bit MatMulNBits), "int4" (4-bit MatMulNBits; lmlab.compress.fused),
    in blocks of QUANT_BLOCKS[format]."""
    import onnx

    if quantization is None:
        onnx.save(onnx.load(str(source)), str(target))
        return
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        if quantization == "dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})
        else:
            fmt = "int4" if quantization == "int4" else "int8"
            _blockwise(onnx.load(str(source)), QUANT_BLOCKS[fmt], 4 if fmt == "int4" else 8).save_model_to_file(
                str(target), use_external_data_format=False)


def _blockwise(graph_model, block_size: int, bits: int = 8):
    """Return the graph (ONNX Runtime's ``ONNXModel``) with its constant-weight MatMuls as MatMulNBits: ``bits``-bit
    (8 or 4) symmetric weights, one step per block of ``block_size`` weights, int8 arithmetic (accuracy level 4)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.setLevel(level)  # its first import calls logging.basicConfig(level=INFO): every library's INFO logs
    root.handlers[:] = handlers  # (httpx's, one per request) would reach the notebook's output; undo it
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # no progress logs
    quantizer = MatMulNBitsQuantizer(graph_model, bits=bits, block_size=block_size, is_symmetric=True,
                                     accuracy_level=4)
    quantizer.process()
    return quantizer.model


def onnx_matmul(weight: np.ndarray, block_size: int | None = BLOCK_SIZE,
                threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """Return x -> x W as ONE node run by ONNX Runtime: lmlab's blockwise int8 (MatMulNBits), or float32 MatMul.

    W (in, out) float32 is stored in 8 bits with one float32 step per block of ``block_size`` weights along the
    input, as in every graph ``onnx_model`` and ``onnx_decoder`` write; ``block_size=None`` keeps it float32 and
    feeds it at every call (as the node that multiplies attention weights by values gets them). x is (rows, in)
    float32. Shows, node by node, what the whole model does (notebooks/06_acceleration.ipynb). Raises ValueError
    for a weight that is not 2-D, or a block size that is not a power of two >= 16.
    """
    from onnx import TensorProto, helper, numpy_helper

    check_threads(threads)
    if block_size is not None and (block_size < 16 or block_size & (block_size - 1)):
        raise ValueError(f"block_size={block_size} is out of range; use a power of two >= 16 (32, 64, 128) or None")
    weight = np.ascontiguousarray(weight, np.float32)
    if weight.ndim != 2:
        raise ValueError(f"weight has shape {weight.shape}; it must be a matrix (in, out)")
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", weight.shape[0]])
    w_info = helper.make_tensor_value_info("w", TensorProto.FLOAT, list(weight.shape))
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", weight.shape[1]])
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    if block_size is None:  # W fed at every call, as attention's values are: no packing of a constant ahead
        graph = helper.make_graph([node], "matmul", [x_info, w_info], [y_info])
    else:
        graph = helper.make_graph([node], "matmul", [x_info], [y_info], [numpy_helper.from_array(weight, "w")])
    graph_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "matmul.onnx"
        if block_size is None:
            path.write_bytes(graph_model.SerializeToString())
        else:
            _blockwise(graph_model, block_size).save_model_to_file(str(path), use_external_data_format=False)
        session = _session(path, threads)
    feeds = {"w": weight} if block_size is None else {}
    return lambda x: session.run(["y"], {"x": np.ascontiguousarray(x, np.float32), **feeds})[0]


def _int8_matmuls(path: Path) -> int:
    """Count the int8 matrix products in a graph (MatMulNBits or MatMulInteger nodes)."""
    import onnx

    graph_model = onnx.load(str(path), load_external_data=False)
    return sum(node.op_type in ("MatMulNBits", "MatMulInteger") for node in graph_model.graph.node)


def _initializer_bytes(path: Path) -> int:
    import onnx

    graph_model = onnx.load(str(path), load_external_data=True)
    from onnx import numpy_helper

    return int(sum(numpy_helper.to_array(init).nbytes for init in graph_model.graph.initializer))


def _session(path: Path, threads: int | None = None, optimization: str = "all", profile_prefix: str | None = None):
    """An ONNX Runtime CPU session as lmlab times them: ``threads`` intra-op threads, one inter-op, sequential."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = default_threads() if threads is None else threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _optimization_level(optimization)
    options.log_severity_level = 3  # errors only: its warnings would land in notebook outputs
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _optimization_level(optimization: str):
    from onnxruntime import GraphOptimizationLevel as Level

    return {"disabled": Level.ORT_DISABLE_ALL, "basic": Level.ORT_ENABLE_BASIC,
            "extended": Level.ORT_ENABLE_EXTENDED, "all": Level.ORT_ENABLE_ALL}[optimization]


# A decode step with a KV cache (notebooks/06_acceleration.ipynb) ---------------------------------------------


class OnnxPast:
    """Every layer's keys and values so far, as ONNX Runtime returned them; pass it to the next decode step.

    ``values`` holds layer 0's keys, layer 0's values, layer 1's keys, ...: each (batch, kv_heads, length,
    head_dim) float32, kept as ONNX Runtime values so that one step hands them to the next without a copy.
    ``numpy()`` copies them out.
    """

    def __init__(self, values: tuple, batch: int, length: int):
        self.values, self.batch, self.length = values, batch, length

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(value.shape())) * 4 for value in self.values)  # float32: 4 bytes each

    def numpy(self) -> tuple[np.ndarray, ...]:
        return tuple(value.numpy() for value in self.values)

    def __repr__(self) -> str:
        return f"OnnxPast(layers={len(self.values) // 2}, batch={self.batch}, length={self.length})"


class _CpuStep:
    """What every ONNX Runtime decode step shares (``OnnxDecoder``, ``lmlab.compress.fused.FusedDecoder``): its
    session runs on the CPU, and a whole sequence is one call from an empty cache."""

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 past: Any = None) -> tuple[torch.Tensor, Any]:
        """Run one step: (logits (batch, new, vocab), the grown past); each decoder has its own."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where the inputs go: ONNX Runtime runs this session on the CPU."""
        return torch.device("cpu")

    def place(self, device: torch.device) -> torch.device:
        """Return the CPU, whatever ``device`` was asked for: the session runs there only."""
        return self.device

    def sequence_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return the logits at every position of (batch, n) ids from an empty cache: (batch, n, vocab) float32."""
        positions = torch.arange(input_ids.shape[1]).expand(input_ids.shape[0], -1)  # (batch, n)
        return self(input_ids, torch.ones_like(input_ids), positions, None)[0]


class OnnxDecoder(_CpuStep):
    """One decode step of a causal LM with its KV cache, exported to ONNX and run by ONNX Runtime.

    Made by ``onnx_decoder``. A call takes the new tokens and the past of the previous call and returns
    the new tokens' logits and the grown past: per layer K = [K_past; K_new], V = [V_past; V_new] along the
    positions, so a step computes only the new tokens' rows. The past holds
    2 · layers · kv_heads · head_dim · positions · 4 bytes per sequence (``past_bytes``).
    ``stored_bytes`` is the size of the graph's weights as stored; the session uses ``threads`` intra-op
    threads and graph optimization level ``optimization``, both fixed when it is made.

    It answers ``lmlab.inference.step.DecodeStep``: ``backend`` ("onnx", "onnx-int8" for blockwise int8,
    "onnx-dynamic"), ``device`` (the CPU), ``no_cache`` (None: an empty past, dropped after the call), and its past
    as per-layer (keys, values) torch tensors (``to_pairs``, ``from_pairs``).
    """

    no_cache = None  # an empty past: the call recomputes the whole sequence and its past is simply not kept

    def __init__(self, path: Path, quantization: str | None, threads: int | None = None, optimization: str = "all",
                 source_parameters: int = 0):
        self.session = _session(path, threads, optimization)
        self.path: Path | None = path  # None once the session holds the graph and the file is gone (cache=False)
        self.quantization, self.optimization = quantization, optimization
        self.threads = self.session.get_session_options().intra_op_num_threads
        past_inputs = [i for i in self.session.get_inputs() if i.name.startswith("past.")]
        self.num_layers = len(past_inputs) // 2
        _, self.kv_heads, _, self.head_dim = past_inputs[0].shape  # (batch, kv_heads, past, head_dim)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.stored_bytes = _initializer_bytes(path)
        self.source_parameters = source_parameters  # how many weights the exported model had
        self.backend = {None: "onnx", "blockwise": "onnx-int8"}.get(quantization, f"onnx-{quantization}")

    def to_pairs(self, past: OnnxPast | Sequence) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Return the past as per-layer (keys, values) torch tensors, each (batch, kv_heads, length, head_dim)."""
        arrays = past.numpy() if isinstance(past, OnnxPast) else past
        tensors = [torch.as_tensor(a) for a in arrays]
        return list(zip(tensors[0::2], tensors[1::2]))

    def from_pairs(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> OnnxPast:
        """Return the past holding per-layer (keys, values). Raises ValueError for shapes that do not fit."""
        return self._as_past([t for pair in pairs for t in pair])

    def crop(self, past: OnnxPast | Sequence, length: int) -> OnnxPast:
        """Return the past cut to its first ``length`` positions: every (batch, kv_heads, :length, head_dim) slice,
        copied into new ONNX Runtime values (a speculative pass rolled back to the tokens it accepted)."""
        arrays = past.numpy() if isinstance(past, OnnxPast) else past
        return self._as_past([np.asarray(a)[:, :, :length] for a in arrays])

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 past: OnnxPast | Sequence | None = None) -> tuple[torch.Tensor, OnnxPast]:
        """Run one step: (batch, new) ids, (batch, past + new) mask of 1/0, (batch, new) positions, the past.

        ``past`` is the previous call's, or None for an empty cache (the prefill), or a sequence of arrays
        (keys and values per layer, each (batch, kv_heads, past, head_dim)). Returns (logits (batch, new,
        vocab) float32, the past grown by ``new`` positions). Raises ValueError for shapes that do not fit.
        """
        feeds, batch, length = self._feeds(input_ids, attention_mask, position_ids, past)
        outputs = self.session.run_with_ort_values(self.output_names, feeds)
        logits = torch.from_numpy(outputs[0].numpy())  # (batch, new, vocab)
        return logits, OnnxPast(tuple(outputs[1:]), batch, length)

    def _runner(self, session, input_ids, attention_mask, position_ids, past) -> tuple[Callable, tuple]:
        """(session's run method, its arguments) that run this step on ``session`` (a session of the same graph):
        for ``profile_step``."""
        feeds, _, _ = self._feeds(input_ids, attention_mask, position_ids, past)
        return session.run_with_ort_values, (self.output_names, feeds)

    def past_bytes(self, past: OnnxPast | Sequence | None) -> int:
        """Bytes a past holds: 2 · layers · kv_heads · head_dim · positions · 4 · batch (0 for None)."""
        if past is None:
            return 0
        if isinstance(past, OnnxPast):
            return past.nbytes
        return sum(int(np.asarray(value).nbytes) for value in past)

    def empty_past(self, batch: int) -> OnnxPast:
        """A past of no positions for ``batch`` sequences (what ``past=None`` means)."""
        from onnxruntime import OrtValue

        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32)
        return OnnxPast(tuple(OrtValue.ortvalue_from_numpy(empty) for _ in range(2 * self.num_layers)), batch, 0)

    def _feeds(self, input_ids, attention_mask, position_ids, past) -> tuple[dict, int, int]:
        """Check the step's inputs and return (ONNX Runtime feeds, batch, positions after the step)."""
        from onnxruntime import OrtValue

        ids, mask, positions = (_int64_matrix(name, value) for name, value in
                                (("input_ids", input_ids), ("attention_mask", attention_mask),
                                 ("position_ids", position_ids)))
        batch, new = ids.shape
        if new < 1:
            raise ValueError(f"input_ids has shape {ids.shape}; a step needs at least one new token per row")
        if positions.shape != ids.shape:
            raise ValueError(f"position_ids has shape {positions.shape}; it must match input_ids' {ids.shape}")
        past = self.empty_past(batch) if past is None else self._as_past(past)
        if past.batch != batch:
            raise ValueError(f"past holds {past.batch} sequences; input_ids has {batch} rows")
        if mask.shape != (batch, past.length + new):
            raise ValueError(f"attention_mask has shape {mask.shape}; it must be (batch, past + new) = "
                             f"({batch}, {past.length + new})")
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        feeds = {name: OrtValue.ortvalue_from_numpy(array) for name, array in feeds.items()}
        feeds.update(zip(self.input_names[3:], past.values))
        return feeds, batch, past.length + new

    def _as_past(self, past) -> OnnxPast:
        if isinstance(past, OnnxPast):
            return past
        from onnxruntime import OrtValue

        arrays = [np.ascontiguousarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v, np.float32)
                  for v in past]
        shapes = {a.shape for a in arrays}
        if len(arrays) != 2 * self.num_layers or len(shapes) != 1:
            raise ValueError(f"past has {len(arrays)} arrays of shapes {sorted(shapes)}; it needs "
                             f"{2 * self.num_layers} (keys and values of {self.num_layers} layers) of one shape")
        shape = shapes.pop()
        if len(shape) != 4 or shape[1] != self.kv_heads or shape[3] != self.head_dim:
            raise ValueError(f"past arrays have shape {shape}; each must be (batch, {self.kv_heads}, past, "
                             f"{self.head_dim})")
        return OnnxPast(tuple(OrtValue.ortvalue_from_numpy(a) for a in arrays), shape[0], shape[2])

    def __repr__(self) -> str:
        return (f"OnnxDecoder(layers={self.num_layers}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
                f"quantization={self.quantization!r}, threads={self.threads}, optimization={self.optimization!r})")


def _int64_matrix(name: str, value) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim != 2:
        raise ValueError(f"{name} has shape {array.shape}; it must be (batch, length)")
    return np.ascontiguousarray(array, np.int64)


def onnx_decoder(model: nn.Module, quantization: str | None = "blockwise", threads: int | None = None,
                 cache: bool = True, optimization: str = "all") -> OnnxDecoder:
    """Export one decode step of ``model``, with its KV cache as inputs and outputs, and run it in ONNX Runtime.

    The graph computes logits, (K, V) = step(x_new, mask, positions, (K_past, V_past)) with, per layer,
    K = [K_past; W_K x_new] (and V likewise): a step costs the new tokens' rows, not the whole sequence again.
    The past may have no positions (the first call, the prefill). Works on lmlab's GPT and on a transformers
    causal LM with a full-attention cache (SmolLM2). ``quantization`` is "blockwise", "dynamic" or None, as for
    ``onnx_model``; ``optimization`` is ONNX Runtime's graph optimization level, one of OPTIMIZATIONS. The graph
    is cached outside the repository, under its own key, unless ``cache=False`` (then the graph lives only in the
    session: ``path`` is None, and the graph-lesson helpers below need a cached decoder).
    Raises ValueError for an unknown model, quantization, optimization or thread count; RuntimeError if the
    export fails.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r} is unknown; use one of {QUANTIZATIONS}")
    if optimization not in OPTIMIZATIONS:
        raise ValueError(f"optimization={optimization!r} is unknown; use one of {OPTIMIZATIONS}")
    if threads is not None:
        check_threads(threads)
    core: nn.Module
    if isinstance(model, GPTLanguageModel):
        core = model.gpt
    elif is_transformers_causal_lm(model):
        core = model
    else:
        raise ValueError(f"model of type {type(model).__name__} is not one onnx_decoder knows; use lmlab's GPT "
                         f"or a transformers causal LM (the MLP has no cache to keep)")

    def export_float32(path: Path) -> None:
        _export_decoder(conv1d_as_linear(core).float().eval(), path)

    def name(q: str | None) -> str:
        return f"decoder-{_fingerprint(core, q, kind=f'decoder{DECODER_VERSION}')}.onnx"

    path = _cached_graph(name, export_float32, quantization, cache, type(core).__name__)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    decoder = OnnxDecoder(path, quantization, threads=threads, optimization=optimization, source_parameters=params)
    if not cache:  # the session holds the graph now: leave no temporary file behind
        shutil.rmtree(path.parent, ignore_errors=True)
        decoder.path = None
    return decoder


class _DecodeStep(nn.Module):
    """One cached step of a transformers causal LM with its cache as flat tensors, the form torch.onnx.export needs.

    forward(ids, mask, positions, (k0, v0, k1, v1, ...)) -> (logits, k0', v0', k1', v1', ...), k' = [k; k_new].
    """

    def __init__(self, core: nn.Module):
        super().__init__()
        self.core = core
        # transformers 5 names the argument ``cache`` (``past_key_values`` is deprecated); 4.x knows only the latter
        self.cache_argument = "cache" if "cache" in inspect.signature(core.forward).parameters else "past_key_values"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache([(past[i], past[i + 1]) for i in range(0, len(past), 2)])
        out = self.core(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=True, **{self.cache_argument: cache})
        return (out.logits, *_flat_cache(out))

    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The flat cache after ``input_ids`` (batch, length), from an empty one: an example past to export with."""
        out = self.core(input_ids=input_ids, use_cache=True)
        return tuple(t.detach().contiguous() for t in _flat_cache(out))


def _flat_cache(out) -> list[torch.Tensor]:
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    if hasattr(cache, "layers"):
        return [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return [t for layer in cache.to_legacy_cache() for t in layer[:2]]  # older transformers


def _export_decoder(core: nn.Module, path: Path) -> None:
    """Export a decode step with dynamic batch, new length, past length (0 allowed) and mask length."""
    from torch.export import Dim

    step = _DecodeStep(core).eval()
    vocab = cast(Any, core.config).vocab_size  # a transformers config (nn.Module types it Tensor | Module)
    ids = (torch.arange(24).reshape(2, 12) * 7 + 3) % vocab  # (batch 2, 7 past + 5 new): distinct sizes to trace
    with torch.no_grad():
        past = step.prefill(ids[:, :7])
    example = (ids[:, 7:], torch.ones_like(ids), torch.arange(7, 12).expand(2, 5).contiguous(), past)
    max_length = getattr(core.config, "max_position_embeddings", None) or 4096
    batch, new = Dim("batch", min=1, max=4096), Dim("new", min=1, max=max_length)
    past_length, total = Dim("past", min=0, max=max_length), Dim("total", min=1, max=2 * max_length)
    dynamic = {"input_ids": {0: batch, 1: new}, "attention_mask": {0: batch, 1: total},
               "position_ids": {0: batch, 1: new}, "past": tuple({0: batch, 2: past_length} for _ in past)}
    layers = [f"{i}.{kind}" for i in range(len(past) // 2) for kind in ("key", "value")]
    with _quiet_export(type(core).__name__), torch.no_grad():
        torch.onnx.export(step, example, str(path), dynamo=True,
                          input_names=["input_ids", "attention_mask", "position_ids", *(f"past.{n}" for n in layers)],
                          output_names=["logits", *(f"present.{n}" for n in layers)], dynamic_shapes=dynamic,
                          external_data=True, optimize=True, verbose=False)


def graph_node_counts(decoder_or_path: Any) -> dict[str, int]:
    """Count the graph's nodes after ONNX Runtime's optimizer at each level: {"disabled": n, ..., "all": m}.

    Each level is applied by a fresh session that writes its optimized graph to a temporary folder
    (``SessionOptions.optimized_model_filepath``); fusions ("basic": constant folding and simple fusions,
    "extended" and "all": attention, layer norm, GELU fusions and CPU layouts) show as fewer nodes.
    Raises ValueError if there is no graph at the path.
    """
    path = _graph_path(decoder_or_path)
    return {level: sum(_optimized_op_counts(path, level).values()) for level in OPTIMIZATIONS}


def graph_op_counts(decoder_or_path: Any,
                    optimization: str = "all") -> dict[str, int]:
    """Count the graph's nodes by operator type after ONNX Runtime's optimizer at ``optimization``, most first.

    Raises ValueError for an unknown optimization level or a missing graph.
    """
    if optimization not in OPTIMIZATIONS:
        raise ValueError(f"optimization={optimization!r} is unknown; use one of {OPTIMIZATIONS}")
    counts = _optimized_op_counts(_graph_path(decoder_or_path), optimization)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _graph_path(decoder_or_path) -> Path:
    if getattr(decoder_or_path, "path", "") is None:
        raise ValueError("decoder_or_path was made with cache=False, so its graph file is gone; "
                         "make it with cache=True")
    path = Path(decoder_or_path.path) if hasattr(decoder_or_path, "path") else Path(decoder_or_path)
    if not path.is_file():
        raise ValueError(f"decoder_or_path={str(path)!r} is not an ONNX graph file; pass an OnnxDecoder, an "
                         f"OnnxLogits or the path of a .onnx file")
    return path


def nodes_removed(decoder_or_path: Any, before: str = "disabled", after: str = "basic") -> list[dict]:
    """List the nodes that ONNX Runtime's optimizer keeps at level ``before`` but removes at level ``after``.

    A node is matched across the two optimized graphs by its operator, inputs and outputs. Each entry is
    {"op": operator, "name": node name, "constants": {constant input: shape}, "constant_bytes": their bytes}:
    a node whose inputs are all constants (a Transpose of a weight) is what constant folding computes once, at
    load time, instead of at every run. Raises ValueError for an unknown level or a missing graph.
    """
    for argument, level in (("before", before), ("after", after)):
        if level not in OPTIMIZATIONS:
            raise ValueError(f"{argument}={level!r} is unknown; use one of {OPTIMIZATIONS}")
    path = _graph_path(decoder_or_path)
    kept_graph, optimized = _optimized_graph(path, before), _optimized_graph(path, after)
    kept = {(n.op_type, tuple(n.input), tuple(n.output)) for n in optimized.node}
    constants = {init.name: init for init in kept_graph.initializer}
    removed = []
    for node in kept_graph.node:
        if (node.op_type, tuple(node.input), tuple(node.output)) in kept:
            continue
        shapes = {name: tuple(constants[name].dims) for name in node.input if name in constants}
        size = sum(int(np.prod(shape)) * _element_bytes(constants[name].data_type) for name, shape in shapes.items())
        removed.append({"op": node.op_type, "name": node.name, "constants": shapes, "constant_bytes": size})
    return removed


def _element_bytes(data_type: int) -> int:
    from onnx import helper

    return int(np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize)


def _optimized_graph(path: Path, optimization: str):
    """The graph as ONNX Runtime's optimizer leaves it at ``optimization`` (weights not loaded: shapes only)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        written = Path(folder) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = _optimization_level(optimization)
        options.optimized_model_filepath = str(written)
        options.log_severity_level = 3
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(written), load_external_data=False).graph


def _optimized_op_counts(path: Path, optimization: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in _optimized_graph(path, optimization).node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def profile_step(decoder: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor, past: OnnxPast | Sequence | None = None, runs: int = 20) -> dict:
    """Time one decode step without the profiler, then profile it: where does a step's time go?

    Latency D = Σ dᵢ over the nodes run, plus what runs between them (the runtime's own work). The step is timed
    by ``lmlab.measure.timing.time_ms`` twice on sessions of the same graph, threads and optimization level: once
    without profiling (the step's real time) and once under ONNX Runtime's profiler, which records each node.
    Returns {"total_ms": median of the unprofiled step, "node_sum_ms": D = Σ dᵢ of the median profiled run (by
    node sum; the lower middle run for an even count), "profiled_ms": median of the profiled step,
    "profiler_overhead_ms": profiled_ms − total_ms, "by_op": {op_type: kernel ms in that run}, adding up to
    node_sum_ms, "runs": runs}. D is recorded under the profiler, which adds its own cost to each node: only
    when D < total_ms is total_ms − D an upper bound on the runtime's own work between nodes. Neither session
    is the decoder's, so profiling never slows the decoder itself.
    ``decoder`` is an OnnxDecoder or a ``lmlab.compress.fused.FusedDecoder`` (its step runs with the KV buffers
    bound in place, as the decoder runs it).
    Raises ValueError for a decoder that is neither or has no graph file, runs < 1, or inputs that do not fit.
    """
    if not hasattr(decoder, "_runner"):
        raise ValueError(f"decoder of type {type(decoder).__name__} is not an OnnxDecoder or a FusedDecoder; make "
                         f"one with onnx_decoder or lmlab.compress.fused.fused_decoder")
    check_int("runs", runs, 1)
    if decoder.path is None:
        raise ValueError("decoder has no graph file left (made with cache=False); make it with cache=True to profile")
    plain = _session(decoder.path, decoder.threads, decoder.optimization)
    run, arguments = decoder._runner(plain, input_ids, attention_mask, position_ids, past)
    unprofiled = time_ms(run, *arguments, warmup=2, repeat=runs)
    with tempfile.TemporaryDirectory() as folder:
        session = _session(decoder.path, decoder.threads, decoder.optimization,
                           profile_prefix=str(Path(folder) / "step"))
        run, arguments = decoder._runner(session, input_ids, attention_mask, position_ids, past)
        profiled = time_ms(run, *arguments, warmup=2, repeat=runs)
        events = json.loads(Path(session.end_profiling()).read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    run_spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-runs:]
    per_run: list[dict[str, float]] = [{} for _ in run_spans]  # op type -> kernel ms, one dict per run
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        for index, (begin, end) in enumerate(run_spans):
            if begin <= event["ts"] <= end:
                op = event.get("args", {}).get("op_name", "?")
                per_run[index][op] = per_run[index].get(op, 0.0) + event["dur"] / 1e3  # µs -> ms
                break
    # The median run (by its node sum): its op times add up to node_sum_ms exactly, however slow another run was.
    node_sums = [sum(ops.values()) for ops in per_run]
    middle = int(np.argsort(node_sums)[(len(node_sums) - 1) // 2])
    by_op = dict(sorted(per_run[middle].items(), key=lambda item: -item[1]))
    return {"total_ms": unprofiled.median_ms, "node_sum_ms": node_sums[middle], "profiled_ms": profiled.median_ms,
            "profiler_overhead_ms": profiled.median_ms - unprofiled.median_ms, "by_op": by_op, "runs": runs}
