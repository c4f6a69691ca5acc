"""Serving, measured in one run: one request at a time against continuous batching on the same server and the same
Poisson workloads, and transformers' own continuous batching as the reference on the same prompts.

Run: .venv/bin/python benchmarks/bench_serve.py [--formats float32,int8] [--quick]   (about 12 minutes)

SmolLM2-135M-Instruct behind `python -m lmlab serve` (one torch thread unless --threads), greedy, every reply
exactly --tokens tokens (`ignore_eos`), prompts of customer questions in its chat template.
1. Sustainable rate, for each format: for each policy (sequential, continuous with --max-batch), open-loop Poisson
   runs at 1 req/s, then halving until the p90 TTFT is within the budget (1 s) or doubling until it is not; each run
   sends about 20 s of arrivals (8 to 32 requests). The best rate met (a lower bound within a factor of 2).
   Target: continuous >= 3x sequential. The p90 time per output token is reported beside it.
2. Throughput against the reference: all prompts at once (i) through transformers' continuous batching
   (lmlab.serving.reference, paged KV cache, CPU), (ii) through lmlab's engine in this process, both with every
   prompt in one batch, (iii) through the server over HTTP (max batch --max-batch). Generated tokens/s, and whether
   the greedy tokens agree. Target: lmlab >= transformers.
--quick: fewer requests and tokens, a smoke test of the script.
"""

from __future__ import annotations

import argparse
import math
import time

from lmlab.measure.runtime import describe_environment, seed_everything
from lmlab.serving.launcher import start_server
from lmlab.serving.loadgen import Budget, default_bodies, run_load_sync

QUESTIONS = ["Can I return shoes I have worn?", "How long does delivery take?", "Do you take cash?",
             "What size should I pick?", "When is the shop open?", "How much is shipping?",
             "How do I clean leather shoes?", "Can I exchange a size?", "Where is my parcel?",
             "Do you ship abroad?", "Are your shoes waterproof?", "Can I cancel my order?",
             "Do you have wide fits?", "Is there a student discount?", "How do I reset my password?",
             "Can I pick up my order in the shop?"]


def ladder(server, bodies, budget: Budget, seed: int, lowest: float = 1 / 16, highest: float = 64.0) -> float:
    """Offer 1 req/s, then halve until the p90 TTFT budget is met or double until it is missed; return the best
    rate met (0.0 if even ``lowest`` misses it). Each run sends about 20 s of arrivals, 8 to 32 requests."""
    met, missed, rate = None, None, 1.0
    while met is None or missed is None:
        if rate < lowest or rate > highest:
            break
        count = int(min(32, max(8, round(rate * 20))))
        report = run_load_sync(server.base_url, (bodies * 4)[:count], rate, seed=seed, timeout_s=600)
        ok = not report.errors and report.percentiles("ttft_ms", (90,))[90] <= budget.ttft_p90_ms
        print(f"  {rate:6.2f} req/s offered ({report.arrival_rate_per_s:5.2f} sent): throughput "
              f"{report.throughput_rps:5.2f} req/s, p90 TTFT {report.percentiles('ttft_ms', (90,))[90]:8.0f} ms, "
              f"p90 TPOT {report.percentiles('tpot_ms', (90,))[90]:6.1f} ms -> {'within' if ok else 'over'} budget",
              flush=True)
        if ok:
            met = rate if met is None else max(met, rate)
            rate *= 2
        else:
            missed = rate if missed is None else min(missed, rate)
            rate /= 2
        if met is not None and missed is not None and missed < met * 2 + 1e-9:
            break
    return met or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="float32,int8", help="comma-separated: float32, int8")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.tokens = 6, 8
    seed_everything(0)
    print(describe_environment("cpu", threads=args.threads))
    print(f"SmolLM2-135M-Instruct, {args.tokens} tokens per reply, max batch {args.max_batch}\n")
    budget = Budget(ttft_p90_ms=1000)
    questions = (QUESTIONS * math.ceil(args.requests / len(QUESTIONS)))[:args.requests]
    bodies = [{**b, "ignore_eos": True} for b in default_bodies(questions, "smollm2", args.tokens)]
    env = {"LMLAB_THREADS": str(args.threads)} if args.threads else None
    best, over_http = {}, {}
    for fmt in args.formats.split(","):
        server = start_server("smollm2", format=fmt, max_batch=args.max_batch, env=env)
        try:
            run_load_sync(server.base_url, bodies[:2], math.inf)  # warm-up
            for policy in ("sequential", "continuous"):
                server.configure(policy=policy, max_batch=args.max_batch)
                print(f"{fmt}, {policy}:")
                best[fmt, policy] = ladder(server, bodies, budget, seed=1)
            server.configure(policy="continuous", max_batch=args.max_batch)
            over_http[fmt] = run_load_sync(server.base_url, bodies, math.inf)
        finally:
            server.close()
    rows = reference_rows(args, questions, over_http.get("float32"))

    print("\n| format | sequential: best rate, p90 TTFT <= 1 s | continuous (max batch "
          f"{args.max_batch}) | ratio | target >= 3x |\n|---|---|---|---|---|")
    for fmt in args.formats.split(","):
        seq, cont = best[fmt, "sequential"], best[fmt, "continuous"]
        ratio = cont / seq if seq else math.inf
        print(f"| {fmt} | {seq:g} req/s | {cont:g} req/s | {ratio:.1f}x | {'met' if ratio >= 3 else 'NOT met'} |")
    print("rates are powers of two apart: each best rate is a lower bound within a factor of 2; 0 means below "
          "1/16 req/s")
    print("\n| path (all prompts at once) | tokens/s | wall s | greedy tokens equal to transformers' |\n"
          "|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['tokens_per_s']:.1f} | {row['wall_s']:.2f} | {row.get('agree', '-')} |")
    reference = rows["transformers continuous batching (reference)"]["tokens_per_s"]
    engine = rows["lmlab engine, continuous"]["tokens_per_s"]
    print(f"\nlmlab engine / transformers: {engine / reference:.2f}x (target >= 1: "
          f"{'met' if engine >= reference else 'NOT met'})")


def reference_rows(args, questions, over_http) -> dict:
    """transformers' continuous batching and lmlab's engine (float32, eager, as transformers runs) on the same
    prompts, all at once, in this process."""
    from lmlab.inference.decode import as_causal_lm
    from lmlab.models.pretrained import load_smollm2
    from lmlab.serving.engine import Engine
    from lmlab.serving.reference import transformers_continuous_batching

    model, tokenizer = load_smollm2()
    prompts = [list(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
                    ["input_ids"]) for q in questions]
    reference = transformers_continuous_batching(model, tokenizer, prompts, args.tokens, threads=args.threads,
                                                 ignore_eos=True)
    lm = as_causal_lm(model, tokenizer, name="smollm2")
    # transformers' scheduler decodes every prompt in one batch (its token budget holds them all): so does lmlab's here
    with Engine(lm, backend="eager", max_batch=len(prompts), threads=args.threads) as engine:
        engine.generate(prompts[0], 2)  # warm-up
        start = time.perf_counter()
        tickets = [engine.submit(p, args.tokens, stop_at_eos=False) for p in prompts]
        tokens = [t.result(timeout_s=600)[0] for t in tickets]
        wall_s = time.perf_counter() - start
    agree = sum(list(a) == list(e) for a, e in zip(tokens, reference["tokens"]))
    n = sum(map(len, tokens))
    rows = {"transformers continuous batching (reference)": reference,
            "lmlab engine, continuous": {"tokens_per_s": n / wall_s, "wall_s": wall_s,
                                         "agree": f"{agree} of {len(prompts)}"}}
    if over_http is not None:
        rows["lmlab server over HTTP, continuous"] = {"tokens_per_s": over_http.tokens_per_s,
                                                      "wall_s": over_http.duration_s}
    return rows


if __name__ == "__main__":
    main()
