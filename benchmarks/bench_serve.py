"""Serving against peers, measured in one run: lmlab's server, `transformers serve` (continuous batching) and
llama.cpp's `llama-server` (Q8_0) under the same open-loop Poisson workloads, on the same machine and threads.

Run: .venv/bin/python benchmarks/bench_serve.py [--format fused-int8] [--quick]   (about 20 minutes; --quick: about 5)

SmolLM2-135M-Instruct, one thread per server (--threads), greedy (temperature 0), every reply --tokens tokens where
the server can be told to ignore the end of sequence (lmlab and llama-server: `ignore_eos`; transformers serve:
`generation_config` {"eos_token_id": -1}); the tokens actually received are what is counted. Three workloads:
  questions  short customer questions in the chat template;
  faq        chapter 07's prompt: system = the instruction + every line of data/shop-faq.txt, then a question;
  mix        one request in four has a ~1,000-token prompt (the FAQ prompt + KJV verses to summarise), the rest short.
For each server and workload:
1. Saturation: every request at once (rate = inf): generated tokens/s and completed requests/s (the capacity).
2. Lone requests, one at a time: if even they miss the budget, no rate is sustainable and the ladder is skipped.
3. Sustainable rate: Poisson runs of --requests requests at falling fractions of the capacity; the first (highest)
   whose run meets the budget (p90 TTFT <= 1 s, p90 inter-token gap <= 100 ms, p90 TPOT <= 100 ms, no error).
   Rates whose run would last over --max-run-s are not tried: a 0 means "below the lowest rate tried".
Plus lmlab's own policy comparison: one request at a time against continuous batching (questions workload).
Peers: $LLAMA_SERVER (or llama-server on PATH) with $LLAMA_GGUF_Q8 (or the shipped GGUF requantized to Q8_0 by
llama-quantize beside it); `transformers serve` needs the `transformers[serving]` extra (fastapi). A peer that
cannot run is skipped with one line saying why; without transformers serve, transformers' in-process continuous
batching (lmlab.serving.reference) gives the tokens/s figure instead. Targets are printed as yes/NO lines and
everything is saved to data/bench/serve.json (not with --quick).
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.measure.runtime import describe_environment, environment, seed_everything
from lmlab.serving.launcher import RunningServer, free_port, start_server
from lmlab.serving.loadgen import Budget, LoadReport, run_load_sync

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["Can I return shoes I have worn?", "How long does delivery take?", "Do you take cash?",
             "What size should I pick?", "When is the shop open?", "How much is shipping?",
             "How do I clean leather shoes?", "Can I exchange a size?", "Where is my parcel?",
             "Do you ship abroad?", "Are your shoes waterproof?", "Can I cancel my order?",
             "Do you have wide fits?", "Is there a student discount?", "How do I reset my password?",
             "Can I pick up my order in the shop?"]
INSTRUCTIONS = "You are the customer service assistant of Bluebird Shoes. Answer in one or two sentences."
LONG_TOKENS = 1000  # the long prompt of the mix workload
BUDGET = Budget(ttft_p90_ms=1000.0, tokens_per_s=10.0, itl_p90_ms=100.0)
FRACTIONS = (0.8, 0.5, 0.3, 0.15)  # of the capacity measured at saturation, tried from the top down
_STARTED: list[subprocess.Popen] = []  # peers' process groups, killed at exit whatever happens


# Workloads ---------------------------------------------------------------------------------------------------


def smollm2_tokenizer():
    """SmolLM2's tokenizer and the folder of lmlab's Hugging Face copy (converted from the GGUF if absent)."""
    from transformers import AutoTokenizer

    from lmlab.models.pretrained import CACHE_NAME, cache_dir, load_smollm2

    folder = cache_dir() / CACHE_NAME
    if not folder.is_dir():
        load_smollm2()
    return AutoTokenizer.from_pretrained(folder, local_files_only=True), folder


def faq_system() -> str:
    """Chapter 07's system prompt: the instruction, then every line of the shop's FAQ."""
    faq = (ROOT / "data" / "shop-faq.txt").read_text().strip().splitlines()
    return INSTRUCTIONS + "\n" + "\n".join(faq)


@functools.cache
def verses() -> tuple[str, ...]:
    from lmlab.data.corpora import kjv_verses

    return tuple(text for _, text in kjv_verses())


def long_messages(tokenizer, start: int) -> list[dict]:
    """The FAQ prompt, and a question carrying KJV verses from ``start`` on, to about LONG_TOKENS tokens in all."""
    chosen_from = verses()[start:start + 400]
    head = [{"role": "system", "content": faq_system()}]
    ask = "A customer pasted this text. Summarise it in one sentence:\n"
    tokens, chosen = len(tokenizer.apply_chat_template(head + [{"role": "user", "content": ask}])["input_ids"]), []
    for verse in chosen_from:
        if tokens >= LONG_TOKENS:
            break
        chosen.append(verse)
        tokens += len(tokenizer.encode(" " + verse, add_special_tokens=False))
    return head + [{"role": "user", "content": ask + " ".join(chosen)}]


def workloads(tokenizer, count: int, max_tokens: int, variant: int = 0) -> dict[str, list[dict]]:
    """The three workloads as chat-completions bodies (greedy, streamed), ``count`` requests each.

    Each ``variant`` takes other verses for the long prompts, so that a run never finds a long prompt an earlier
    run left in a server's prompt cache (the FAQ's shared system prompt is meant to be found there)."""
    def body(messages):
        return {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}

    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(count)]
    system = [{"role": "system", "content": faq_system()}]
    return {"questions": [body([{"role": "user", "content": q}]) for q in questions],
            "faq": [body(system + [{"role": "user", "content": q}]) for q in questions],
            "mix": [body(long_messages(tokenizer, 97 * i + 4099 * variant) if i % 4 == 3
                         else [{"role": "user", "content": q}]) for i, q in enumerate(questions)]}


# Servers -----------------------------------------------------------------------------------------------------


@dataclass
class Peer:
    """A running server as the benchmark drives it: its URL, what each body needs added, how to stop it."""

    name: str
    server: RunningServer
    extra: dict = field(default_factory=dict)  # merged into every request body (model id, ignore_eos, ...)
    note: str = ""

    def bodies(self, bodies: list[dict]) -> list[dict]:
        return [{**b, **self.extra} for b in bodies]

    def close(self) -> None:
        """Stop the server: lmlab's through its launcher, a peer by its whole process group (SIGKILL after 20 s)."""
        process = self.server.process
        if process not in _STARTED:
            self.server.close()
            return
        if process.poll() is None:
            _kill_group(process, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                _kill_group(process, signal.SIGKILL)
                process.wait(5)
        self.server.log_path.unlink(missing_ok=True)


def _kill_group(process: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group the peer was started in (it leads its own session)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


@atexit.register
def _kill_started() -> None:
    for process in _STARTED:
        if process.poll() is None:
            _kill_group(process, signal.SIGKILL)


def start_process(args: list[str], env: dict, port: int, timeout_s: float) -> RunningServer:
    """Start a peer in its own session on 127.0.0.1:``port``, log to a temp file, and wait for GET /health."""
    with tempfile.NamedTemporaryFile(prefix="bench-serve-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                   start_new_session=True)
    _STARTED.append(process)
    server = RunningServer(f"http://127.0.0.1:{port}", port, process, Path(log.name))
    try:
        return server.wait_ready(timeout_s)
    except RuntimeError:
        _kill_group(process, signal.SIGKILL)
        raise


def start_lmlab(fmt: str, max_batch: int, threads: int) -> Peer:
    """lmlab's server with its prefix cache on (256 blocks of 16 tokens), as llama-server reuses its prompt cache."""
    server = start_server("smollm2", format=fmt, max_batch=max_batch, env={"LMLAB_THREADS": str(threads)},
                          prefix_cache=256, wait=True, timeout_s=600)
    return Peer(f"lmlab {fmt}", server, {"model": "smollm2", "ignore_eos": True})


def start_transformers(folder: Path, max_batch: int, threads: int) -> Peer | str:
    """`transformers serve --continuous-batching` on lmlab's SmolLM2 folder, offline, its KV cache sized to
    ``max_batch`` requests of a long prompt (its CPU default takes 60% of RAM), or why it cannot run."""
    cli = Path(sys.executable).with_name("transformers")
    if not cli.is_file():
        return f"no `transformers` command beside {sys.executable}"
    try:
        import fastapi  # noqa: F401  (transformers serve needs it: the transformers[serving] extra)
    except ImportError:
        return "fastapi is missing: `transformers serve` needs `pip install 'transformers[serving]'`"
    block, port = 256, free_port()
    blocks = max_batch * math.ceil((LONG_TOKENS + 300) / block) + 2
    args = [str(cli), "serve", "--continuous-batching", "--device", "cpu", "--dtype", "float32", "--host",
            "127.0.0.1", "--port", str(port), "--cb-block-size", str(block), "--cb-num-blocks", str(blocks),
            "--cb-max-batch-tokens", "2048", "--log-level", "warning", str(folder)]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    try:
        server = start_process(args, env, port, timeout_s=300)
    except RuntimeError as exc:
        return f"transformers serve did not start: {str(exc)[-300:]}"
    return Peer("transformers serve", server, {"model": str(folder), "generation_config": '{"eos_token_id": -1}'},
                note=f"float32, continuous batching, KV cache {blocks} blocks of {block} tokens")


def llama_gguf(server_bin: str, scratch: str) -> str | None:
    """$LLAMA_GGUF_Q8, else the shipped GGUF (Q4_1) requantized to Q8_0 by llama-quantize beside the server."""
    if os.environ.get("LLAMA_GGUF_Q8"):
        return os.environ["LLAMA_GGUF_Q8"]
    from lmlab.models.pretrained import gguf_path

    beside = Path(server_bin).with_name("llama-quantize")
    quantize = os.environ.get("LLAMA_QUANTIZE") or shutil.which("llama-quantize") or (beside.is_file() and str(beside))
    if not quantize:
        return None
    target = Path(scratch) / "smollm2-Q8_0.gguf"
    done = subprocess.run([quantize, "--allow-requantize", str(gguf_path()), str(target), "Q8_0"],
                          capture_output=True, text=True, timeout=300)
    return str(target) if done.returncode == 0 else None


def start_llama(max_batch: int, threads: int, scratch: str) -> Peer | str:
    """llama.cpp's llama-server on the Q8_0 GGUF with ``max_batch`` slots of 2,048 tokens, or why it cannot run.

    --no-repack: a GGML_NATIVE build on a CPU that reports AMX runs its AMX repacked kernels at the first prefill,
    and they trapped (SIGILL) on the 2-vCPU Xeon VM this was written on; Q8_0's own AVX-512 kernels run instead.
    """
    binary = os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")
    if not binary:
        return "no llama-server: set $LLAMA_SERVER (llama-cpp-python's sdist vendors llama.cpp: `cmake --build " \
               "build --target llama-server`)"
    gguf = llama_gguf(binary, scratch)
    if gguf is None:
        return "no Q8_0 GGUF: set $LLAMA_GGUF_Q8, or put llama-quantize beside llama-server"
    port = free_port()
    args = [binary, "-m", gguf, "-t", str(threads), "-tb", str(threads), "-np", str(max_batch),
            "-c", str(2048 * max_batch), "--no-repack", "--host", "127.0.0.1", "--port", str(port)]
    try:
        server = start_process(args, {}, port, timeout_s=120)
    except RuntimeError as exc:
        return f"llama-server did not start: {str(exc)[-300:]}"
    return Peer("llama-server Q8_0", server, {"model": "smollm2", "ignore_eos": True},
                note=f"{Path(gguf).name}, {max_batch} slots, --no-repack")


# Measuring ---------------------------------------------------------------------------------------------------


def run(peer: Peer, bodies: list[dict], rate: float, seed: int = 1) -> LoadReport:
    return run_load_sync(peer.server.base_url, peer.bodies(bodies), rate, seed=seed, timeout_s=600, probe_s=None)


def describe(report: LoadReport) -> dict:
    """The numbers kept per run: rate, counts, tokens/s, p50/p90/p99 of TTFT and ITL, p90 TPOT, budget met."""
    row = {k: v for k, v in report.summary().items() if "e2e" not in k and not k.startswith(("p50_tpot", "p99_tpot"))}
    row["budget_met"] = BUDGET.met_by(report)
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}


def lone(peer: Peer, bodies: list[dict]) -> LoadReport:
    """Each body alone, one after the other: the best a request can get from this server."""
    records = [r for b in bodies for r in run(peer, [b], math.inf).records]
    return LoadReport.from_records(records, math.nan)


def measure(peer: Peer, make, args) -> dict:
    """Saturation, lone requests, then the ladder of rates from the top down; the first run within budget wins.

    ``make(k)`` gives the bodies of the k-th run (a new variant of the workload each time)."""
    run(peer, make(0)[:max(2, args.lone)], math.inf)  # warm-up: first calls, batch shapes
    bodies = make(1)
    saturation = run(peer, bodies, math.inf)
    print(f"  saturation: {saturation.tokens_per_s:6.1f} tokens/s, {saturation.throughput_rps:5.2f} req/s, "
          f"{saturation.errors} errors", flush=True)
    alone = lone(peer, make(2)[:args.lone])
    out = {"saturation": describe(saturation), "lone": describe(alone), "runs": [], "sustainable_rate_per_s": 0.0}
    if not BUDGET.met_by(alone):
        p = {m: alone.percentiles(m, (90,))[90] for m in ("ttft_ms", "itl_ms")}
        out["why_none"] = (f"a lone request already misses the budget (p90 TTFT {p['ttft_ms']:.0f} ms, "
                           f"p90 ITL {p['itl_ms']:.0f} ms)")
        print(f"  {out['why_none']}: no rate is sustainable", flush=True)
        return out
    lowest = len(bodies) / args.max_run_s
    for k, rate in enumerate(round(f * saturation.throughput_rps, 2) for f in args.fractions):
        if rate < lowest:
            out["why_none"] = f"below the lowest rate tried ({lowest:.2f} req/s: {args.max_run_s:g} s of arrivals)"
            print(f"  {rate:5.2f} req/s not tried: {out['why_none']}", flush=True)
            break
        report = run(peer, make(3 + k), rate)
        out["runs"].append(describe(report))
        itl = report.percentiles("itl_ms", (50, 90))
        print(f"  {rate:5.2f} req/s offered ({report.arrival_rate_per_s:5.2f} sent): p90 TTFT "
              f"{report.percentiles('ttft_ms', (90,))[90]:7.0f} ms, ITL p50 {itl[50]:5.1f} / p90 {itl[90]:6.1f} ms, "
              f"{report.errors} errors -> {'within' if BUDGET.met_by(report) else 'over'} budget", flush=True)
        if BUDGET.met_by(report):
            out["sustainable_rate_per_s"], out["at_rate"] = rate, out["runs"][-1]
            out.pop("why_none", None)
            break
    return out


def policies(peer: Peer, make, args, continuous: dict) -> dict:
    """lmlab's server one request at a time (its sequential policy) against continuous batching, same bodies."""
    peer.server.configure(policy="sequential", max_batch=args.max_batch)
    try:
        print(f"{peer.name}, sequential policy, questions:", flush=True)
        sequential = measure(peer, make, args)
    finally:
        peer.server.configure(policy="continuous", max_batch=args.max_batch)
    seq, cont = sequential["sustainable_rate_per_s"], continuous["sustainable_rate_per_s"]
    return {"sequential": sequential, "continuous_rate_per_s": cont, "sequential_rate_per_s": seq,
            "ratio": cont / seq if seq else (math.inf if cont else math.nan)}  # nan: neither sustained any rate


def reference(tokenizer, loads: dict[str, list[dict]], args) -> dict:
    """transformers' continuous batching in this process (lmlab.serving.reference), every prompt at once, per
    workload: the tokens/s figure when `transformers serve` cannot run."""
    from lmlab.models.pretrained import load_smollm2
    from lmlab.serving.reference import transformers_continuous_batching

    model, _ = load_smollm2()
    rows = {}
    for name, bodies in loads.items():
        prompts = [list(tokenizer.apply_chat_template(b["messages"], add_generation_prompt=True)["input_ids"])
                   for b in bodies]
        done = transformers_continuous_batching(model, tokenizer, prompts, args.tokens, threads=args.threads,
                                                ignore_eos=True)
        rows[name] = {"saturation": {"tokens_per_s": round(done["tokens_per_s"], 3), "wall_s": done["wall_s"]},
                      "sustainable_rate_per_s": None, "why_none": "in process: no server, no rate"}
        print(f"  {name}: {done['tokens_per_s']:.1f} tokens/s (in process, every prompt at once)", flush=True)
    return rows


def serve_all(args, tokenizer, folder: Path, loads: dict[str, list[dict]]) -> tuple[dict, dict, dict]:
    """Start each server in turn, measure every workload on it, stop it: results, skipped peers, notes."""
    def make(load):
        return lambda k: workloads(tokenizer, args.requests, args.tokens, variant=k)[load]

    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        starters = {f"lmlab {args.format}": lambda: start_lmlab(args.format, args.max_batch, args.threads),
                    "transformers serve": lambda: start_transformers(folder, args.max_batch, args.threads),
                    "llama-server Q8_0": lambda: start_llama(args.max_batch, args.threads, scratch)}
        for name, start in starters.items():
            peer = start()
            if isinstance(peer, str):
                skipped[name] = peer
                print(f"{name}: skipped: {peer}", flush=True)
                continue
            notes[name] = peer.note
            try:
                results[name] = {}
                for load in loads:
                    print(f"{name}, {load}:", flush=True)
                    results[name][load] = measure(peer, make(load), args)
                if name.startswith("lmlab") and not args.quick:
                    results[name]["policies"] = policies(peer, make("questions"), args, results[name]["questions"])
            finally:
                peer.close()
    if "transformers serve" in skipped:
        print("transformers continuous batching, in process (reference):", flush=True)
        results["transformers continuous batching (in process)"] = reference(tokenizer, loads, args)
    return results, skipped, notes


def print_table(results: dict, loads: list[str]) -> None:
    print("\n| server | workload | sustainable rate (req/s) | ITL p50 / p99 at it (ms) | p90 TTFT at it (ms) "
          "| tokens/s at saturation |\n|---|---|---|---|---|---|")
    for name, rows in results.items():
        for load in loads:
            row = rows[load]
            at = row.get("at_rate")
            rate = "-" if row["sustainable_rate_per_s"] is None else f"{row['sustainable_rate_per_s']:g}"
            itl = f"{at['p50_itl_ms']:.1f} / {at['p99_itl_ms']:.1f}" if at else "-"
            ttft = f"{at['p90_ttft_ms']:.0f}" if at else "-"
            print(f"| {name} | {load} | {rate} | {itl} | {ttft} | {row['saturation']['tokens_per_s']:.1f} |")
    print(f"budget: p90 TTFT <= {BUDGET.ttft_p90_ms:g} ms, p90 ITL <= {BUDGET.itl_p90_ms:g} ms, p90 TPOT <= "
          f"{1000 / BUDGET.tokens_per_s:g} ms, no error; 0 = no rate tried met it (see why_none in the JSON)")


def targets(results: dict, loads: list[str], lmlab: str) -> dict:
    """Issue 25's targets, printed as yes/NO lines."""
    out: dict[str, object] = {}
    if lmlab not in results:
        return out
    peers = [n for n in results if n != lmlab and results[n][loads[0]]["sustainable_rate_per_s"] is not None]
    mine = {load: results[lmlab][load]["sustainable_rate_per_s"] for load in loads}
    sustains = {f"{peer} / {load}": mine[load] >= results[peer][load]["sustainable_rate_per_s"]
                for peer in peers for load in loads}
    out["lmlab sustains >= each peer's rate on each workload"] = bool(sustains) and all(sustains.values())
    tf = next((n for n in results if n.startswith("transformers")), None)
    if tf:
        ratios = {load: results[lmlab][load]["saturation"]["tokens_per_s"] / results[tf][load]["saturation"]
                  ["tokens_per_s"] for load in loads}
        out["lmlab tokens/s at saturation >= 1.5x transformers continuous batching"] = all(
            r >= 1.5 for r in ratios.values())
        out["tokens_per_s_ratio_to_transformers"] = {k: round(v, 2) for k, v in ratios.items()}
        print("\nlmlab / transformers tokens/s at saturation: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    if "policies" in results[lmlab]:
        ratio = results[lmlab]["policies"]["ratio"]
        out["lmlab continuous >= 3x sequential (sustainable rate, questions)"] = bool(ratio >= 3)  # nan: NO
        print(f"lmlab continuous / sequential sustainable rate (questions): {ratio:.1f}x")
    out["per_peer_and_workload"] = sustains
    print()
    for name, met in out.items():
        if isinstance(met, bool):
            print(f"{'yes' if met else 'NO'}: {name}")
    return out


def save(path: Path, record: dict) -> None:
    """Write ``record`` as JSON atomically: a temporary file beside ``path``, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(record, tmp, indent=1, default=str)
    os.chmod(tmp.name, 0o644)  # a temporary file is private; the results are not
    os.replace(tmp.name, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", default="fused-int8", help="lmlab's serving format (its best: fused-int8)")
    parser.add_argument("--max-batch", type=int, default=16, help="lmlab's max batch and llama-server's slots")
    parser.add_argument("--requests", type=int, default=30, help="requests per run (each rate, each workload)")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-run-s", type=float, default=60.0, help="longest arrival window a rate may need")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 8 requests, 8 tokens, one rate")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "bench" / "serve.json")
    args = parser.parse_args()
    args.lone, args.fractions = 4, FRACTIONS
    if args.quick:
        args.requests, args.tokens, args.lone, args.fractions, args.max_run_s = 8, 8, 4, (0.5,), 20.0
    seed_everything(0)
    started = time.time()
    print(describe_environment("cpu", threads=args.threads))
    print(f"SmolLM2-135M-Instruct, {args.tokens} tokens per reply, {args.requests} requests per run, "
          f"{args.threads} thread(s) per server, max batch {args.max_batch}\n", flush=True)
    tokenizer, folder = smollm2_tokenizer()
    loads = workloads(tokenizer, args.requests, args.tokens)
    lengths = {k: sorted(len(tokenizer.apply_chat_template(b["messages"])["input_ids"]) for b in v)
               for k, v in loads.items()}
    print("prompt tokens (min / max): " + ", ".join(f"{k} {v[0]} / {v[-1]}" for k, v in lengths.items()) + "\n")
    results, skipped, notes = serve_all(args, tokenizer, folder, loads)
    print_table(results, list(loads))
    for name, why in skipped.items():
        print(f"{name}: skipped: {why}")
    met = targets(results, list(loads), f"lmlab {args.format}")
    record = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "hardware": describe_environment(
                  "cpu", threads=args.threads), "environment": environment("cpu", threads=args.threads),
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, "budget": vars(BUDGET),
              "prompt_tokens": {k: [v[0], v[-1]] for k, v in lengths.items()}, "servers": notes,
              "skipped": skipped, "results": results, "targets": met, "wall_s": round(time.time() - started, 1)}
    if not args.quick:
        save(args.out, record)
        print(f"\nsaved {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    print(f"took {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
