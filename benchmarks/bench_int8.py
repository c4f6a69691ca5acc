"""Every int8 path this machine offers, side by side in one run: latency, linear-weight bytes, perplexity.

Run: .venv/bin/python benchmarks/bench_int8.py [--skip-smollm2]   (or `make bench`)

On SmolLM2-135M and the largest shipped GPT, against float32 PyTorch (eager):
- torchao 0.18: Int8WeightOnlyConfig and Int8DynamicActivationInt8WeightConfig (``quantize_``);
- torch.ao.quantization.quantize_dynamic, per-channel int8 weights (deprecated in torch 2.13);
- ONNX Runtime: the float32 graph (a reference: the runtime alone), and int8 by ``quantize_dynamic``
  (MatMulInteger, activations per tensor) and by 8-bit ``MatMulNBits`` (blocks of 64, int8 compute).
GPT-2's Conv1D layers are turned into the equivalent nn.Linear first for the torch paths, which skip Conv1D.
Latency: one forward at batch 1 over 64 tokens (the prefill a reply starts with) and over 1 token (the
matrix shapes of a decode step, without a KV cache); median and p90, one thread, two threads beside.
Linear-weight bytes: every matrix product's weights as each path stores them (codes, steps, zero points),
the output layer included, as a fraction of float32. Perplexity: SmolLM2 on the first 40 KJV test verses
(chapter 02's text), the GPT on the whole KJV test split.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time
import warnings

import torch
from torch import nn

from lmlab.compress.export import OnnxLogits, conv1d_as_linear, onnx_model
from lmlab.data.corpora import load_kjv, tokenize_corpus
from lmlab.measure.runtime import describe_environment, seed_everything
from lmlab.measure.timing import format_ms, time_ms
from lmlab.models.checkpoints import load_checkpoint

REPEAT = {"gpt-large": 30, "SmolLM2-135M": 10}


def caught(fn):
    """Run fn, returning (result, the distinct warnings it raised)."""
    with warnings.catch_warnings(record=True) as seen, contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("always")
        result = fn()
    return result, sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:110]}" for w in seen})


def torchao_path(config_name: str):
    def build(model):
        import torchao.quantization as tq

        quantized = conv1d_as_linear(model)
        tq.quantize_(quantized, getattr(tq, config_name)())
        return quantized
    return build


def torch_ao_dynamic(model):
    import torch.ao.quantization as taq

    quantized = conv1d_as_linear(model)
    return taq.quantize_dynamic(quantized, {nn.Linear: taq.per_channel_dynamic_qconfig}, dtype=torch.qint8)


def linear_bytes(model: nn.Module) -> int:
    """Bytes of every matrix product's weights as the model stores them (tied tensors once)."""
    if isinstance(model, OnnxLogits):
        return onnx_linear_bytes(model.path)
    total, seen, kept = 0, set(), []  # kept: hold each weight, so no id is reused while we count
    for module in model.modules():
        weight = None
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            weight = module.weight
        elif isinstance(module, torch.ao.nn.quantized.dynamic.Linear):  # torch.ao's dynamic quantized Linear
            weight = module.weight()
        if weight is None or id(weight) in seen:
            continue
        seen.add(id(weight))
        kept.append(weight)
        total += tensor_bytes(weight)
    return total


def tensor_bytes(t: torch.Tensor) -> int:
    if t.is_quantized:
        per_channel = t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        extra = t.q_per_channel_scales().numel() * 8 if per_channel else 8  # float64 steps and int64 zero points
        return t.numel() * t.element_size() + extra
    if type(t) is not torch.Tensor and type(t) is not nn.Parameter and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()  # a torchao tensor subclass: codes, steps, zero points...
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    data = t.data if isinstance(t, nn.Parameter) else t
    if type(data) is not torch.Tensor and hasattr(data, "__tensor_flatten__"):
        return tensor_bytes(data)
    return t.numel() * t.element_size()


def onnx_linear_bytes(path) -> int:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    constants = {init.name: init for init in graph.initializer}
    # A tied output layer multiplies by Transpose(embedding): count the embedding it transposes.
    transposed = {node.output[0]: node.input[0] for node in graph.node
                  if node.op_type == "Transpose" and node.input[0] in constants}
    names = set()
    for node in graph.node:
        weight = transposed.get(node.input[1], node.input[1]) if len(node.input) > 1 else ""
        if node.op_type in ("MatMul", "MatMulNBits", "MatMulInteger", "Gemm") and weight in constants:
            base = weight.removesuffix("_quantized").removesuffix("_Q8")
            names |= {name for name in constants if name == base or name.startswith(base + "_")}
    return int(sum(numpy_helper.to_array(constants[name]).nbytes for name in names))


def forward_timing(model: nn.Module, ids: torch.Tensor, threads: int, repeat: int):
    def forward():
        with torch.no_grad():
            return model(input_ids=ids).logits[:, -1].argmax(-1)
    return time_ms(forward, warmup=2, repeat=repeat, threads=threads)


def measure(name: str, model_fp32: nn.Module, ids: torch.Tensor, perplexity, paths: dict) -> list[dict]:
    rows = []
    for label, build in paths.items():
        start = time.perf_counter()
        (models, notes) = caught(lambda: build(model_fp32))
        prep_s = time.perf_counter() - start
        one, two = models if isinstance(models, tuple) else (models, models)
        rows.append({
            "path": label, "prep_s": prep_s, "notes": notes, "bytes": linear_bytes(one), "ppl": perplexity(one),
            "prefill": {t: forward_timing(m, ids, t, REPEAT[name]) for t, m in ((1, one), (2, two))},
            "token": {t: forward_timing(m, ids[:, :1], t, REPEAT[name] * 2) for t, m in ((1, one), (2, two))},
        })
        print(f"  measured {label} ({prep_s:.1f} s to prepare)", flush=True)
    return rows


def onnx_path(quantization):
    return lambda model: (onnx_model(model, quantization, threads=1), onnx_model(model, quantization, threads=2))


PATHS = {
    "PyTorch float32 (eager)": lambda model: model,
    "torchao int8 weight-only": torchao_path("Int8WeightOnlyConfig"),
    "torchao int8 dynamic act + weight": torchao_path("Int8DynamicActivationInt8WeightConfig"),
    "torch.ao quantize_dynamic (deprecated)": torch_ao_dynamic,
    "ONNX Runtime float32": onnx_path(None),
    "ONNX Runtime int8 dynamic": onnx_path("dynamic"),
    "ONNX Runtime int8 blockwise (lmlab)": onnx_path("blockwise"),
}


def report(name: str, rows: list[dict], targets: bool) -> None:
    base = rows[0]
    print(f"\n{name}: ratios are this path's time (or bytes) divided by PyTorch float32's, measured in this run")
    header = (f"{'path':<38} {'64 tokens, 1 thread':>26} {'ratio':>6} {'1 token':>11} {'ratio':>6} "
              f"{'2 threads: 64, 1':>22} {'bytes':>6} {'perplexity':>17} {'prep':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        p1, t1 = r["prefill"][1], r["token"][1]
        change = r["ppl"] / base["ppl"] - 1
        print(f"{r['path']:<38} {format_ms(p1.median_ms)} (p90 {format_ms(p1.p90_ms, 7).strip()}) "
              f"{p1.median_ms / base['prefill'][1].median_ms:>5.2f}× {format_ms(t1.median_ms)} "
              f"{t1.median_ms / base['token'][1].median_ms:>5.2f}× "
              f"{format_ms(r['prefill'][2].median_ms, 7)}, {format_ms(r['token'][2].median_ms, 6)} "
              f"{r['bytes'] / base['bytes']:>6.3f} {r['ppl']:>9.3f} ({change:+6.2%}) {r['prep_s']:>5.1f} s")
    for r in rows:
        for note in r["notes"]:
            print(f"  {r['path']}: {note}")
    if targets:
        print("targets (int8 latency <= 0.6x, linear-weight bytes <= 0.30x, perplexity up <= 1%):")
        for r in rows[1:]:
            if "float32" in r["path"]:
                continue
            met = [r["prefill"][1].median_ms / base["prefill"][1].median_ms <= 0.6,
                   r["token"][1].median_ms / base["token"][1].median_ms <= 0.6,
                   r["bytes"] / base["bytes"] <= 0.30, r["ppl"] / base["ppl"] - 1 <= 0.01]
            words = ["64 tokens", "1 token", "bytes", "perplexity"]
            print(f"  {r['path']:<38} " + ", ".join(f"{w} {'yes' if m else 'NO'}" for w, m in zip(words, met)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-smollm2", action="store_true", help="only the GPT (a few minutes less)")
    args = parser.parse_args()
    seed_everything(0)
    print(describe_environment("cpu", 1))
    data = tokenize_corpus(load_kjv(), min_count=2)
    if not args.skip_smollm2:
        from lmlab.models.pretrained import load_smollm2, perplexity

        smol, tokenizer = load_smollm2()
        text = data.head("test", 40).normalized_text("test")
        ids = tokenizer(text, return_tensors="pt").input_ids[:, :64]  # (1, 64)
        print("SmolLM2-135M:", flush=True)
        rows = measure("SmolLM2-135M", smol, ids, lambda m: perplexity(m, tokenizer, text)["perplexity"], PATHS)
        report("SmolLM2-135M", rows, targets=True)
    gpt = load_checkpoint("data/gpt-large")
    ids = torch.as_tensor(data.stream("test")[:64])[None]  # (1, 64)

    def gpt_perplexity(core):
        wrapper = copy.copy(gpt)
        wrapper._modules = dict(gpt._modules, gpt=core)  # the same GPT interface around this path's network
        return wrapper.evaluate_documents(data, "test")["perplexity"]

    onnx_quantization = {"ONNX Runtime float32": None, "ONNX Runtime int8 dynamic": "dynamic",
                         "ONNX Runtime int8 blockwise (lmlab)": "blockwise"}
    gpt_paths = {label: build for label, build in PATHS.items() if label not in onnx_quantization}
    for label, quantization in onnx_quantization.items():  # onnx_model exports the whole lmlab GPT; time its network
        gpt_paths[label] = lambda core, q=quantization: (onnx_model(gpt, q, threads=1).gpt,
                                                         onnx_model(gpt, q, threads=2).gpt)
    print("\ngpt-large:", flush=True)
    rows = measure("gpt-large", gpt.gpt, ids, gpt_perplexity, gpt_paths)
    report("gpt-large", rows, targets=False)
    print("\nThe torch paths are timed inside PyTorch's eager loop; ONNX Runtime runs the whole graph in C++, so its\n"
          "float32 row shows what the runtime alone buys, and the int8 rows what int8 adds on top.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
