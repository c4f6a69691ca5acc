"""Exported graphs: a model exported to ONNX and run by ONNX Runtime, in float32 or with real int8 arithmetic.

Introduced in notebooks/04_quantization.ipynb. ``benchmarks/bench_int8.py`` measures every int8 path this
machine offers side by side (torchao, ONNX Runtime, the deprecated ``torch.ao.quantization.quantize_dynamic``);
ONNX Runtime won, so it is lmlab's int8 path: ``onnx_model(model)``. Its two int8 schemes:

- ``"blockwise"`` (the default): ``MatMulNBits`` with 8-bit symmetric weights, one float32 step per block of 128
  weights along the input, and int8 arithmetic on activations quantized per block of each token at run time
  (accuracy level 4). One token's outlier activation only coarsens its own blocks.
- ``"dynamic"``: ``MatMulInteger`` with per-channel int8 weights and activations quantized to uint8 with one
  step for the whole input tensor at run time. Faster, but a single outlier activation (SmolLM2 has some in
  the hundreds) sets the step for every token, and accuracy collapses.

``quantization=None`` runs the float32 graph: the fair reference, since a graph runtime is often faster than
eager PyTorch before any int8 (it skips Python between the operations).

Exporting SmolLM2 takes about half a minute, so the quantized graph is cached outside the repository
(``lmlab.pretrained.cache_dir()``), keyed by a hash of the weights and the settings; later calls take seconds.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmlab.neural import GPTLanguageModel, MLPLanguageModel
from lmlab.runtime import default_threads

QUANTIZATIONS = ("blockwise", "dynamic", None)
BLOCK_SIZE = 128
FORMAT_VERSION = 2  # part of the cache key: bump when the export or the quantization changes


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
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = default_threads() if threads is None else threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: its warnings would land in notebook outputs
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names, self.config, self.wraps_output = input_names, config, wraps_output
        self.threads = options.intra_op_num_threads
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
    if isinstance(model, GPTLanguageModel):
        core, inputs, example = model.gpt, ("input_ids", "attention_mask", "position_ids"), _gpt_example(model)
        max_length = model.config.n_positions
    elif isinstance(model, MLPLanguageModel):
        core, inputs, example = _MLPLogits(model), ("input_ids",), (torch.zeros(2, model.context_size, dtype=torch.long),)
        max_length = None  # a fixed context: only the batch varies
    elif hasattr(model, "config") and hasattr(model, "generate"):
        core, inputs, example = model, ("input_ids",), (torch.arange(16)[None].clamp(max=model.config.vocab_size - 1),)
        max_length = model.config.max_position_embeddings
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
        quantized = copy.deepcopy(model)
        del quantized.embed, quantized.hidden, quantized.out  # all three live in the graph now
        quantized.__class__ = _OnnxMLP  # the same model, its computation run by ONNX Runtime
        quantized.runtime = OnnxLogits(path, inputs, wraps_output=False, threads=threads, source_parameters=params)
        return quantized.eval()
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

    def last_logits(self, contexts: torch.Tensor) -> torch.Tensor:
        return self.runtime(input_ids=contexts)


def _gpt_example(model: GPTLanguageModel) -> tuple[torch.Tensor, ...]:
    ids = torch.full((2, 16), model.vocab.eos_id, dtype=torch.long)
    return ids, torch.ones_like(ids), torch.arange(16).expand(2, 16).contiguous()


def _graph(core: nn.Module, inputs: tuple[str, ...], example: tuple[torch.Tensor, ...], quantization: str | None,
           cache: bool, max_length: int | None) -> Path:
    from lmlab.pretrained import cache_dir

    key = _fingerprint(core, quantization)
    target = cache_dir() / "onnx" / f"{key}.onnx"
    if cache and target.is_file():
        return target
    with tempfile.TemporaryDirectory() as folder:
        exported = Path(folder) / "model.onnx"
        _export(conv1d_as_linear(core).float().eval(), inputs, example, exported, max_length)
        prepared = exported
        if quantization is not None:  # a float32 graph keeps its tied weight once
            prepared = Path(folder) / "prepared.onnx"
            _fold_constant_transposes(exported, prepared)
        final = Path(folder) / "final.onnx"
        _quantize(prepared, final, quantization)
        if quantization is not None and not _int8_matmuls(final):
            raise RuntimeError(f"quantization={quantization!r} turned no matrix product of {type(core).__name__} "
                               f"into int8")
        if not cache:
            target = Path(tempfile.mkdtemp(prefix="lmlab-onnx-")) / "model.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(final, staging)
        os.replace(staging, target)  # atomic: a reader sees the whole file or none
    return target


def _fingerprint(core: nn.Module, quantization: str | None) -> str:
    digest = hashlib.sha256(f"{FORMAT_VERSION}|{quantization}|{BLOCK_SIZE}|{type(core).__name__}|{torch.__version__}".encode())
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
    quiet = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(_Named(core, inputs), example, str(path), dynamo=True, input_names=list(inputs),
                                  output_names=["logits"], dynamic_shapes=dynamic, external_data=True, optimize=True,
                                  verbose=False)
    except Exception as err:  # export failures print pages of graph dumps; keep the reason, drop the noise
        raise RuntimeError(f"exporting {type(core).__name__} to ONNX failed: {err}") from err
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
    """Write the graph with its constant-weight MatMuls in int8 (or, for None, as one float32 file)."""
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
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=8, block_size=BLOCK_SIZE, is_symmetric=True,
                                             accuracy_level=4)
            quantizer.process()
            quantizer.model.save_model_to_file(str(target), use_external_data_format=False)


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
