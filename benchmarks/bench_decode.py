"""Decoding, measured in one run: the KV cache, batching, compiled and exported graphs, int8, the bandwidth floor
and two peers that decode the same model (llama.cpp, onnxruntime-genai).

Run: .venv/bin/python benchmarks/bench_decode.py [--skip-smollm2] [--quick]   (about 20 minutes; --quick: a smoke test)

On SmolLM2-135M and the largest shipped GPT (data/gpt-large), greedy decoding through
lmlab.inference.decode.generate, one torch thread (two threads beside), medians and p90 of the decode steps, ratios
measured in this run:
1. KV cache: 256 new tokens after a 32-token prompt (the GPT: as many as its 128 positions allow), with the cache
   against recomputing the whole prefix at every step (measured once: it is slow). The tokens must be identical.
2. Batching: 32 new tokens at batch 1 to 32 (prompts of 16-32 tokens, left-padded): tokens/s and the step's p90.
3. Graphs: the cached step in eager PyTorch, torch.compile (an empty Inductor cache) and ONNX Runtime float32 (a
   cold export): speed-up, the largest logit difference from eager, the one-off cost and the tokens that repay it.
4. Floor: (weight bytes + KV cache) / the measured one-thread read bandwidth, in each path's own format.
5. int8: lmlab's ONNX Runtime blockwise int8 with the cache against eager float32: ms/token, and perplexity on the
   40 KJV test verses benchmarks/bench_int8.py scores (one prefill over the text, every position's logits).
6. Peers, SmolLM2 at one thread: llama.cpp's llama-bench (`-t 1 -p 0 -n 64 -r 3`) on the shipped GGUF (Q4_1) and
   its Q8_0, Q4_0 and F32 copies, if $LLAMA_BENCH or llama-bench on PATH (llama-cpp-python's sdist vendors
   llama.cpp: `cmake --build build --target llama-bench llama-quantize`); onnxruntime-genai's own int8 and int4
   builds and decode loop.
7. lmlab's fused decoder graph (lmlab.compress.fused: float32, int8, int4, the KV buffer allocated once): the
   same columns as 3, a decode step after 1,000 positions against one after 32, speculative decoding by prompt
   lookup on FAQ replies (tokens identical to greedy), and batch invariance of every format (8 prompts alone
   against the same 8 in one batch). Issue 24's targets are printed as yes/NO lines, and the SmolLM2 rows, peers
   and targets are saved to data/bench/decode.json (not with --quick) for chapter 06.
--quick: fewer tokens, and lmlab's and Inductor's usual caches (its one-off costs are not cold).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmlab.data.corpora import load_kjv, tokenize_corpus
from lmlab.inference.decode import as_causal_lm, break_even, generate, kv_cache_bytes, make_step
from lmlab.measure.hardware import decode_floor_ms, memory_bandwidth, weight_bytes
from lmlab.measure.runtime import describe_environment, seed_everything
from lmlab.measure.timing import format_ms
from lmlab.models.checkpoints import load_checkpoint

FULL = {"cache_tokens": 256, "batch_tokens": 32, "batches": (1, 2, 4, 8, 16, 32), "graph_tokens": 64, "runs": 2}
QUICK = {"cache_tokens": 24, "batch_tokens": 8, "batches": (1, 8), "graph_tokens": 16, "runs": 1}
PROMPT_TOKENS, PEER_TOKENS = 32, 64
PATHS = {"eager": ("eager PyTorch", "float32"), "compile": ("torch.compile", "float32"),
         "onnx": ("ONNX Runtime float32", "float32"), "onnx-int8": ("ONNX Runtime int8 (lmlab)", "int8")}
FUSED = {"fused": ("lmlab fused graph float32", "float32"), "fused-int8": ("lmlab fused graph int8", "int8"),
         "fused-int4": ("lmlab fused graph int4", "int4")}  # Llama-family models only (SmolLM2)
FAR, NEAR = 1000, 32  # positions of the two decode steps the copy-free cache compares


def spread(samples_ms) -> tuple[float, float]:
    """(median, p90) of step times in ms."""
    return float(np.median(samples_ms)), float(np.percentile(samples_ms, 90))


def verdict(met: bool) -> str:
    return "yes" if met else "NO"


@contextlib.contextmanager
def fresh(variable: str, enabled: bool = True):
    """Point a cache's environment variable at an empty temporary folder for the body (a cold start)."""
    if not enabled:
        yield
        return
    old, folder = os.environ.get(variable), tempfile.mkdtemp(prefix="bench-decode-")
    os.environ[variable] = folder
    try:
        yield
    finally:
        del os.environ[variable]
        if old is not None:
            os.environ[variable] = old
        shutil.rmtree(folder, ignore_errors=True)


def run(lm, prompts, tokens: int, step, threads: int, **options):
    """One greedy generate call, never stopping early, and its wall time in ms."""
    start = time.perf_counter()
    out = generate(lm, prompts, tokens, step=step, threads=threads, stop_at_eos=False, **options)
    return out, (time.perf_counter() - start) * 1e3


def same_prefix_logit_gap(a, b) -> float:
    """Largest |logit difference| of row 0 over the steps whose prefixes agree (up to the first differing token)."""
    agree = next((i for i, (x, y) in enumerate(zip(a.tokens[0], b.tokens[0])) if x != y), len(a.tokens[0]) - 1)
    return max(float((p - q).abs().max()) for p, q in zip(a.logits[:agree + 1], b.logits[:agree + 1]))


@torch.no_grad()
def perplexity_of(step, ids: list[int]) -> float:
    """PP = exp(-mean ln p(token_i | tokens before i)) from one prefill of ``step`` over ``ids``; a step that returns
    only the last position is teacher-forced through its cache one token at a time instead."""
    x = torch.tensor([ids])  # (1, T)
    length = x.shape[1]
    logits, _ = step(x, torch.ones_like(x), torch.arange(length)[None], None)  # (1, T or 1, vocab)
    if logits.shape[1] != length:
        past, rows = None, []
        for t in range(length - 1):
            out, past = step(x[:, t:t + 1], torch.ones(1, t + 1, dtype=torch.long), torch.tensor([[t]]), past)
            rows.append(out[:, -1])
        logits = torch.stack(rows, 1)  # (1, T - 1, vocab)
    logp = torch.log_softmax(logits[0, :length - 1].float(), -1)  # (T - 1, vocab)
    return math.exp(-logp.gather(1, x[0, 1:, None]).mean().item())


def full_forward(lm):
    """The eager model as a step that returns every position's logits (TorchStep keeps only the last)."""
    return lambda ids, mask, positions, past: (lm.core(input_ids=ids, attention_mask=mask, position_ids=positions)
                                               .logits, None)


def kv_section(lm, prompt: list[int], tokens: int, eager) -> dict:
    run(lm, prompt, 4, eager, 1)  # warm-up
    cached, _ = run(lm, prompt, tokens, eager, 1)
    recomputed, _ = run(lm, prompt, tokens, eager, 1, cache=False)
    ratio = sum(recomputed.step_ms) / sum(cached.step_ms)
    print(f"\n{lm.name}, KV cache: {len(prompt)}-token prompt, {tokens} new tokens, eager PyTorch, 1 thread "
          f"(the run without a cache measured once)")
    print(f"{'':<14} {'first token':>12} {'decode total':>12} {'step median':>13} {'p90':>12} {'ratio':>6}")
    for label, g in (("with cache", cached), ("no cache", recomputed)):
        median, p90 = spread(g.step_ms)
        print(f"{label:<14} {format_ms(g.ttft_ms, 9)} {sum(g.step_ms) / 1e3:>10.2f} s {format_ms(median, 10)} "
              f"{format_ms(p90, 9)} {sum(g.step_ms) / sum(cached.step_ms):>5.2f}×")
    same = cached.tokens == recomputed.tokens
    formula = kv_cache_bytes(lm.core.config, len(prompt) + tokens - 1)
    print(f"identical greedy tokens: {same}; the cache holds {cached.cache_bytes / 1e6:.2f} MB "
          f"(formula 2·layers·kv_heads·head_dim·positions·4: {formula / 1e6:.2f} MB)")
    return {"ratio": ratio, "same": same}


def batch_section(lm, prompts: list[list[int]], settings: dict, eager) -> dict:
    tokens, rows = settings["batch_tokens"], {}
    for threads in (1, 2):
        run(lm, prompts[:2], 4, eager, threads)  # warm-up
        for b in settings["batches"]:
            g, _ = run(lm, prompts[:b], tokens, eager, threads)
            rows[threads, b] = (g.tokens_per_s, *spread(g.step_ms))
    print(f"\n{lm.name}, batching: prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, {tokens} new "
          f"tokens each, eager PyTorch with the cache; ratios to batch 1")
    print(f"{'batch':>5} {'tokens/s':>9} {'ratio':>6} {'step median':>13} {'step p90':>12} {'ratio':>6} "
          f"{'2 threads: tokens/s':>20} {'step median':>13}")
    one = rows[1, 1]
    for b in settings["batches"]:
        tps, median, p90 = rows[1, b]
        print(f"{b:>5} {tps:>9.1f} {tps / one[0]:>5.2f}× {format_ms(median, 10)} {format_ms(p90, 9)} "
              f"{p90 / one[2]:>5.2f}× {rows[2, b][0]:>20.1f} {format_ms(rows[2, b][1], 10)}")
    big = 8 if (1, 8) in rows else max(settings["batches"])
    return {"batch": big, "tps": rows[1, big][0] / one[0], "p90": rows[1, big][2] / one[2]}


def measure_path(lm, backend: str, prompt: list[int], tokens: int, runs: int, eager, cold: bool) -> dict:
    """Build ``backend``'s step (timed), call it once (compiles), then time ``runs`` calls at 1 thread and at 2."""
    start = time.perf_counter()
    with fresh("LMLAB_CACHE", cold and backend == "onnx"):  # float32: a cold export; int8: lmlab's disk cache
        steps = {1: eager if backend == "eager" else make_step(lm, backend, 1)}
        build_ms = (time.perf_counter() - start) * 1e3
        steps[2] = steps[1] if backend in ("eager", "compile") else make_step(lm, backend, 2)
    _, first_ms = run(lm, prompt, tokens, steps[1], 1)
    warm = [run(lm, prompt, tokens, steps[1], 1, keep_logits=True) for _ in range(runs)]
    # Dynamo guards on the thread count: torch.compile at 2 threads would compile everything again (minutes).
    two = [] if backend == "compile" else [run(lm, prompt, tokens, steps[2], 2)[0] for _ in range(1 + runs)]
    label, fmt = {**PATHS, **FUSED}[backend]
    return {"backend": backend, "label": label, "fmt": fmt, "step": steps[1],
            **dict(zip(("median", "p90"), spread([ms for g, _ in warm for ms in g.step_ms]))),
            "two": spread([ms for g in two[1:] for ms in g.step_ms])[0] if two else None, "gen": warm[0][0],
            "one_off_ms": build_ms + max(0.0, first_ms - float(np.median([wall for _, wall in warm])))}


def graph_section(lm, prompt: list[int], settings: dict, eager, text_ids: list[int], cold: bool,
                  bandwidth_gbs: float, paths) -> list[dict]:
    tokens = settings["graph_tokens"]
    kv = kv_cache_bytes(lm.core.config, len(prompt) + tokens)
    rows = [measure_path(lm, backend, prompt, tokens, settings["runs"], eager, cold) for backend in paths]
    base = rows[0]
    print(f"\n{lm.name}, the cached decode step: {len(prompt)}-token prompt, {tokens} new tokens, batch 1; speed-up "
          f"against this run's eager row;\nfloor = (weights + KV cache) / 1-thread read bandwidth, in the path's "
          f"format")
    print(f"{'path':<26} {'ms/token':>12} {'p90':>12} {'speed-up':>8} {'2 threads':>12} {'one-off':>9} "
          f"{'break-even':>10} {'max |Δlogit|':>12} {'same tokens':>11} {'floor':>10} {'of floor':>8} "
          f"{'perplexity':>10}")
    for r in rows:
        r["floor"] = decode_floor_ms(weight_bytes(lm.core, r["fmt"]), bandwidth_gbs, kv)
        r["ppl"] = None if r["backend"] == "compile" else perplexity_of(
            full_forward(lm) if r is base else r["step"], text_ids)
        r["speedup"] = base["median"] / r["median"]
        r["gap"], r["same"] = same_prefix_logit_gap(r["gen"], base["gen"]), r["gen"].tokens == base["gen"].tokens
        r["break_even"] = None if r is base else break_even(r["one_off_ms"], base["median"], r["median"])
        even = "—" if r is base else (
            f"{math.ceil(r['break_even'])} tok" if math.isfinite(r["break_even"]) else "never")
        one_off = "—" if r is base else f"{r['one_off_ms'] / 1e3:.1f} s"
        ppl = "—" if r["ppl"] is None else f"{r['ppl']:.3f}"
        two = "—" if r["two"] is None else format_ms(r["two"]).strip()
        print(f"{r['label']:<26} {format_ms(r['median'])} {format_ms(r['p90'])} {r['speedup']:>7.2f}× {two:>12} "
              f"{one_off:>9} {even:>10} {r['gap']:>12.2e} {str(r['same']):>11} {format_ms(r['floor'], 7)} "
              f"{r['floor'] / r['median']:>7.0%} {ppl:>10}")
    caches = ("an empty Inductor cache; ONNX float32: a cold export" if cold else
              "Inductor's usual cache; ONNX float32: lmlab's disk cache")
    print(f"one-off: the step's build plus its first call's extra time (torch.compile: {caches}; ONNX int8: lmlab's "
          f"disk cache if present).\nbreak-even: one-off / (eager ms - path ms) tokens. torch.compile at 2 threads is "
          f"not measured: Dynamo guards on the thread\ncount, so a second count compiles it all again. Perplexity: "
          f"{len(text_ids)} tokens of the KJV test verses, one prefill (eager: the model's full forward).")
    return rows


def genai_peer(folder: Path, prompt: list[int], tokens: int, runs: int, precision: str = "int8") -> dict | str:
    """onnxruntime-genai's own build (``precision`` "int8" or "int4") of the same weights and its own decode loop,
    one intra-op thread."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return "onnxruntime-genai is not installed (pip install onnxruntime-genai)"
    from lmlab.models.pretrained import cache_dir

    built = cache_dir() / f"ort-genai-{precision}"
    config = json.loads((folder / "config.json").read_text())
    if "quantization_config" in config:
        return f"{folder}/config.json has a quantization_config; its builder refuses a GGUF-quantized model"
    if not (built / "genai_config.json").is_file():
        with tempfile.TemporaryDirectory() as scratch:
            out, work = Path(scratch) / "out", Path(scratch) / "work"
            done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder),
                                   "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(work)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                return f"its model builder failed: {(done.stderr or done.stdout).strip().splitlines()[-1][:200]}"
            shutil.rmtree(built, ignore_errors=True)  # a half-copied build, if any
            shutil.copytree(out, Path(scratch) / "staged")
            shutil.move(Path(scratch) / "staged", built)  # whole or not at all on the same disk; else a copy
    og_config = og.Config(str(built))
    og_config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": 1,
                                                                            "inter_op_num_threads": 1}}}}))
    model = og.Model(og_config)
    steps_ms = []
    for i in range(runs + 1):  # the first run warms up
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + tokens, min_length=len(prompt) + tokens)
        generator = og.Generator(model, params)
        generator.append_tokens(np.array([prompt], dtype=np.int32))  # the prefill
        generator.generate_next_token()  # picks the first token from the prefill's logits
        while not generator.is_done():  # each call runs the previous token through the model, then picks
            before = time.perf_counter()
            generator.generate_next_token()
            if i > 0:
                steps_ms.append((time.perf_counter() - before) * 1e3)
    median, p90 = spread(steps_ms)
    return {"label": f"onnxruntime-genai {precision}", "kind": precision, "median": median, "p90": p90}


def llama_peer(tokens: int) -> list[dict] | str:
    """llama.cpp's llama-bench on the shipped GGUF (Q4_1) and, with llama-quantize, its Q8_0, Q4_0 and F32 copies."""
    from lmlab.models.pretrained import gguf_path

    bench = os.environ.get("LLAMA_BENCH") or shutil.which("llama-bench")
    if not bench:
        return "llama-bench absent"
    beside = Path(bench).with_name("llama-quantize")
    quantize = os.environ.get("LLAMA_QUANTIZE") or shutil.which("llama-quantize") or (beside.is_file() and str(beside))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        files = {"Q4_1": gguf_path()}
        for kind in ("Q8_0", "Q4_0", "F32") if quantize else ():
            target = Path(scratch) / f"smollm2-{kind}.gguf"
            done = subprocess.run([quantize, "--allow-requantize", str(gguf_path()), str(target), kind],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                files[kind] = target
        for kind, path in files.items():
            done = subprocess.run([bench, "-m", str(path), "-t", "1", "-p", "0", "-n", str(tokens), "-r", "3",
                                   "-o", "json"], capture_output=True, text=True)
            if done.returncode != 0:
                return f"llama-bench failed on {kind}: {done.stderr.strip()[-200:]}"
            runs_ms = [ns / tokens / 1e6 for ns in json.loads(done.stdout)[0]["samples_ns"]]  # ms/token per run
            rows.append({"label": f"llama.cpp {kind}", "kind": kind, "median": float(np.median(runs_ms)),
                         "p90": max(runs_ms)})
    return rows


def peer_section(rows: list[dict], genai: list, llama) -> None:
    print(f"\nSmolLM2-135M beside its peers: decode ms/token at 1 thread, {PEER_TOKENS} new tokens "
          f"(llama.cpp: the median of llama-bench's 3 runs\nfrom an empty context; its \"p90\" is the slowest run)")
    peers = [g for g in genai if isinstance(g, dict)] + (llama if isinstance(llama, list) else [])
    for r in [*rows, *peers]:
        print(f"  {r['label']:<28} {format_ms(r['median'])}  (p90 {format_ms(r['p90'], 7).strip()})")
    for name, result in [*(("onnxruntime-genai", g) for g in genai), ("llama.cpp", llama)]:
        if isinstance(result, str):
            print(f"  {name} column skipped: {result}")


def position_section(lm, graphs: list[dict], ids: list[int], runs: int) -> dict:
    """The median decode step after NEAR and after FAR positions of context, per path, one thread: a cache that
    copies nothing growing with the past keeps the ratio near 1 (attention still reads every cached position)."""
    if len(ids) < FAR + 1:
        raise ValueError(f"the text has {len(ids)} tokens; the position section needs {FAR + 1}")
    steps = {}
    for r in graphs:
        if r["backend"] in ("onnx-int8", "fused-int8", "fused-int4"):
            for n in (NEAR, FAR):
                run(lm, ids[:n], 2, r["step"], 1)  # warm-up
                steps[r["label"], n] = spread([ms for _ in range(runs) for ms in run(lm, ids[:n], 16, r["step"], 1)[0]
                                              .step_ms])
    print(f"\n{lm.name}, a decode step deep in the context: 16 new tokens after a {NEAR}- and a {FAR}-token prompt, "
          f"1 thread")
    print(f"{'path':<26} {'at ' + str(NEAR):>12} {'at ' + str(FAR):>12} {'ratio':>6}")
    ratios = {}
    for label in dict.fromkeys(label for label, _ in steps):
        near, far = steps[label, NEAR][0], steps[label, FAR][0]
        ratios[label] = far / near
        print(f"{label:<26} {format_ms(near)} {format_ms(far)} {far / near:>5.2f}×")
    return ratios


def targets(name: str, kv: dict, batch: dict, graphs: list[dict], peers: bool) -> None:
    """One line per target, ending in yes or NO (or "not measured" with the reason, for an absent peer)."""
    by = {r["backend"]: r for r in graphs}
    lines = [f"KV cache: decode >= 5x faster with the cache ({kv['ratio']:.1f}x), identical greedy tokens "
             f"({kv['same']}): {verdict(kv['ratio'] >= 5 and kv['same'])}",
             f"batching: batch {batch['batch']} >= 4x the tokens/s of batch 1 ({batch['tps']:.2f}x) at <= 2x its "
             f"step p90 ({batch['p90']:.2f}x): {verdict(batch['tps'] >= 4 and batch['p90'] <= 2)}"]
    candidates = [by["compile"], by["onnx"]]
    good = [r for r in candidates if r["speedup"] >= 1.2 and r["gap"] <= 1e-4 and math.isfinite(r["break_even"])]
    best = max(good or candidates, key=lambda r: r["speedup"])
    lines.append(f"graphs: a compiled or exported graph >= 1.2x eager, logits within 1e-4, break-even reported "
                 f"({best['label']}: {best['speedup']:.2f}x, {best['gap']:.1e}, break-even "
                 f"{math.ceil(best['break_even']) if math.isfinite(best['break_even']) else 'never'} tokens): "
                 f"{verdict(bool(good))}")
    if peers:
        fastest = min(graphs, key=lambda r: r["median"])
        times_floor = fastest["median"] / fastest["floor"]
        lines.append(f"floor: the fastest path within 2x of its bandwidth floor ({fastest['label']}: "
                     f"{times_floor:.1f}x its {fastest['fmt']} floor): {verdict(times_floor <= 2)}")
        int8, base = by["onnx-int8"], by["eager"]
        speed, change = int8["median"] / base["median"], int8["ppl"] / base["ppl"] - 1
        lines.append(f"int8: ONNX Runtime int8 <= 0.4x eager float32 ms/token ({speed:.2f}x), perplexity up <= 1% "
                     f"({change:+.2%}): {verdict(speed <= 0.4 and change <= 0.01)}")
    print(f"targets, {name}:")
    for line in lines:
        print(f"  {line}")


FAQ_QUESTIONS = ("Can I return shoes I have worn?", "How much does shipping cost?",
                 "Which payment methods do you accept?", "When is the shop in Leiden open?")


def speculative_section(lm, tokenizer, step, settings: dict) -> dict | str:
    """Prompt lookup on FAQ replies (the FAQ as the system prompt, one customer question each): plain greedy against
    speculative decoding on the same step, alternating runs, one thread."""
    from lmlab.inference.speculative import speculative_speedup
    from lmlab.serving.served import chat_template_ids

    faq = Path("data/shop-faq.txt").read_text().strip()
    tokens = settings["graph_tokens"]
    rows = []
    for question in FAQ_QUESTIONS:
        ids = chat_template_ids(tokenizer, [{"role": "system", "content": faq}, {"role": "user", "content": question}],
                                generation=True)
        rows.append(speculative_speedup(lm, ids, tokens, step=step, threads=1, repeat=settings["runs"],
                                        method="prompt-lookup", k=4))
    print(f"\n{lm.name}, speculative decoding by prompt lookup (k = 4) on {len(rows)} FAQ replies of {tokens} tokens, "
          f"{step.backend}, 1 thread; formula: E = (1 - a^(k+1)) / (1 - a) tokens per pass, S = E / (k c + 1)")
    print(f"{'question':<40} {'same':>5} {'α':>5} {'tok/pass':>8} {'E':>5} {'plain tok/s':>11} {'spec tok/s':>10} "
          f"{'speed-up':>8} {'S':>5}")
    for question, r in zip(FAQ_QUESTIONS, rows):
        print(f"{question:<40} {str(r['identical']):>5} {r['alpha']:>5.2f} {r['tokens_per_pass']:>8.2f} "
              f"{r['expected_tokens_per_pass']:>5.2f} {r['plain_tokens_per_s']:>11.1f} "
              f"{r['speculative_tokens_per_s']:>10.1f} {r['speedup']:>7.2f}× {r['expected_speedup']:>5.2f}")
    ratio = float(np.median([r["speedup"] for r in rows]))
    print(f"median speed-up {ratio:.2f}× over {len(rows)} replies")
    return {"ratio": ratio, "same": all(r["identical"] for r in rows)}


def invariance_section(lm, prompts: list[list[int]], backends) -> dict:
    """Each of 8 prompts (16 to 32 tokens) decoded alone and in one batch of 8, 16 greedy tokens, per format."""
    from lmlab.inference.invariance import batch_invariance

    print(f"\n{lm.name}, batch invariance: 8 prompts decoded alone and together in a batch of 8 (left-padded), 16 "
          f"greedy tokens each, 1 thread")
    print(f"{'path':<12} {'tokens differing':>16} {'max |Δlogit|':>12} {'ms/token alone':>14} {'per row, batch 8':>16}")
    differ = {}
    for backend in backends:
        r = batch_invariance(lm, prompts[:8], backend, batch=8, new_tokens=16, threads=1)
        differ[backend] = r.differing_tokens
        print(f"{backend:<12} {r.differing_tokens:>9} of {r.compared_tokens:<4} {r.max_logit_diff:>12.1e} "
              f"{format_ms(r.alone_ms_per_token, 14)} {format_ms(r.batched_ms_per_token, 16)}")
    return differ


def decode_targets(graphs: list[dict], genai: list, llama, positions: dict, speculative: dict | str,
                   invariance: dict | str) -> list[str]:
    """Issue 24's targets, one line each ending in yes or NO (or "not measured" and why)."""
    by = {r["backend"]: r for r in graphs}
    kinds = {r["kind"]: r for r in [*(g for g in genai if isinstance(g, dict)), *(llama if isinstance(llama, list)
                                                                                else [])]}
    absent = "; ".join(x for x in [*(g for g in genai if isinstance(g, str)), llama if isinstance(llama, str) else ""]
                       if x)
    lines = []
    for ours, theirs in (("fused-int8", ("Q8_0", "int8")), ("fused-int4", ("Q4_0", "Q4_1", "int4")),
                         ("fused", ("F32",))):
        for kind in theirs:
            claim = f"{by[ours]['label']} below {'llama.cpp' if kind[0] in 'QF' else 'onnxruntime-genai'} {kind}"
            if kind in kinds:
                met = by[ours]["median"] < kinds[kind]["median"] if ours != "fused" else (
                    by[ours]["median"] <= kinds[kind]["median"])
                lines.append(f"{claim} ({by[ours]['median']:.2f} vs {kinds[kind]['median']:.2f} ms/token): "
                             f"{verdict(met)}")
            else:
                lines.append(f"{claim}: not measured ({absent or 'llama-quantize absent'})")
    fastest = min(graphs, key=lambda r: r["median"])
    share = fastest["floor"] / fastest["median"]
    lines.append(f"floor: the fastest path at >= 65% of its bandwidth floor ({fastest['label']}: {share:.0%}): "
                 f"{verdict(share >= 0.65)}")
    for label, ratio in positions.items():
        if label.startswith("lmlab fused"):
            lines.append(f"position: {label}, a step at {FAR} <= 1.3x a step at {NEAR} ({ratio:.2f}x): "
                         f"{verdict(ratio <= 1.3)}")
    base = by["fused"]["ppl"]
    for ours, limit in (("fused-int8", 0.01), ("fused-int4", 0.05)):
        change = by[ours]["ppl"] / base - 1
        lines.append(f"perplexity: {by[ours]['label']} <= +{limit:.0%} over float32 ({change:+.2%}): "
                     f"{verdict(change <= limit)}")
    if isinstance(speculative, dict):
        lines.append(f"speculative decoding, prompt lookup on FAQ replies: >= 1.5x tokens/s "
                     f"({speculative['ratio']:.2f}x), identical tokens ({speculative['same']}): "
                     f"{verdict(speculative['ratio'] >= 1.5 and speculative['same'])}")
    else:
        lines.append(f"speculative decoding: not measured ({speculative})")
    if isinstance(invariance, dict):
        differ = sum(invariance.values())
        lines.append(f"batch invariance: 0 greedy tokens differ alone vs in a batch of 8, every format ({differ} in "
                     f"{len(invariance)} formats): {verdict(differ == 0)}")
    else:
        lines.append(f"batch invariance: not measured ({invariance})")
    print("targets, SmolLM2-135M decode (issue 24):")
    for line in lines:
        print(f"  {line}")
    return lines


def save_record(path: Path, graphs: list[dict], genai: list, llama, bandwidth, targets: list[str]) -> None:
    """Write this run's SmolLM2 rows, its peers and its targets as JSON, atomically (chapter 06 shows them)."""
    keep = ("label", "backend", "fmt", "median", "p90", "two", "ppl", "floor")
    peers = [*(g for g in genai if isinstance(g, dict)), *(llama if isinstance(llama, list) else [])]
    record = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/bench_decode.py",
              "environment": describe_environment("cpu", 1), "read_gbs_1_thread": bandwidth.read_gbs,
              "new_tokens": PEER_TOKENS, "lmlab": [{k: r.get(k) for k in keep} for r in graphs],
              "peers": [{k: r[k] for k in ("label", "kind", "median", "p90")} for r in peers], "targets": targets}
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".json.tmp")
    scratch.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(scratch, path)
    print(f"saved {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-smollm2", action="store_true", help="only the GPT (most of the run is SmolLM2)")
    parser.add_argument("--quick", action="store_true", help="fewer tokens and warm caches: a smoke test")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    seed_everything(0)
    started = time.perf_counter()
    text = tokenize_corpus(load_kjv(), min_count=2).head("test", 40).normalized_text("test")  # bench_int8.py's text
    lines = text.splitlines()
    models = {"gpt-large": as_causal_lm(load_checkpoint("data/gpt-large").eval(), name="gpt-large")}
    if not args.skip_smollm2:
        from lmlab.models.pretrained import load_smollm2

        smol, tokenizer = load_smollm2()
        models = {"SmolLM2-135M": as_causal_lm(smol, tokenizer, name="SmolLM2-135M"), **models}
    print(describe_environment("cpu", 1))
    bandwidth = {t: memory_bandwidth(t) for t in (1, 2)}
    for t, bw in bandwidth.items():
        print(f"memory bandwidth, {t} thread{'s' if t > 1 else ''}: {bw}")
    for name, lm in models.items():
        print(f"{name}: decode floor (weights / read bandwidth) " + "; ".join(
            f"{fmt} {weight_bytes(lm.core, fmt) / 1e6:.0f} MB: "
            + ", ".join(f"{decode_floor_ms(weight_bytes(lm.core, fmt), bw.read_gbs):.1f} ms at {t} thread"
                        + ("s" if t > 1 else "") for t, bw in bandwidth.items()) for fmt in ("float32", "int8")))
    with fresh("TORCHINDUCTOR_CACHE_DIR", not args.quick):  # an empty Inductor cache: an honest cold compile
        for name, lm in models.items():
            print(f"\n=== {name} ===", flush=True)
            ids = lm.encode(text)
            prompt = ids[:PROMPT_TOKENS]
            prompts = [lm.encode(" ".join(lines[(i + k) % len(lines)] for k in range(3)))[:16 + (5 * i) % 17]
                       for i in range(32)]  # 16 to 32 tokens
            eager = make_step(lm, "eager")
            kv = kv_section(lm, prompt, min(settings["cache_tokens"], lm.window - len(prompt)), eager)
            batch = batch_section(lm, prompts, settings, eager)
            llama_family = name == "SmolLM2-135M"
            paths = {**PATHS, **FUSED} if llama_family else PATHS
            graphs = graph_section(lm, prompt, settings, eager, ids[:lm.window], not args.quick, bandwidth[1].read_gbs,
                                   paths)
            if llama_family:
                from lmlab.models.pretrained import cache_dir

                folder = cache_dir() / "smollm2-135m-instruct"
                genai = [genai_peer(folder, prompt, PEER_TOKENS, settings["runs"], p) for p in ("int8", "int4")]
                llama = llama_peer(PEER_TOKENS)
                peer_section(graphs, genai, llama)
                positions = position_section(lm, graphs, ids, settings["runs"])
                by = {r["backend"]: r["step"] for r in graphs}
                spec = speculative_section(lm, tokenizer, by["fused"], settings)  # a float32 target: see check_exact
                invariance = invariance_section(lm, prompts, [b for b in paths if b != "compile"])
                met = decode_targets(graphs, genai, llama, positions, spec, invariance)
                if not args.quick:
                    save_record(Path("data/bench/decode.json"), graphs, genai, llama, bandwidth[1], met)
            targets(name, kv, batch, graphs, llama_family)
    quick = " (--quick: not a measurement)" if args.quick else ""
    print(f"\nwhole run: {time.perf_counter() - started:.0f} s{quick}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
