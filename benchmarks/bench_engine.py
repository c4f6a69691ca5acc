"""The serving engine's second generation, measured in one process (no HTTP): the KV cache manager, prefill-decode
interference and chunked prefill, the prefix cache, and greedy replies under load for every format served.

Run: .venv/bin/python benchmarks/bench_engine.py [--quick]   (about 6 minutes; --quick: about 1)

SmolLM2-135M-Instruct, greedy, one thread, every reply exactly its max tokens (end-of-sequence ignored).
1. Cache managers on the same fused int8 step and the same churn (64 requests of 4 to 32 tokens, at most 8 at
   once, all submitted together): the first-generation dense cache (every join re-pads and concatenates the batch's
   cache, every leave copies it) against the slots (nothing copied). Wall time and tokens/s, 3 runs each.
2. Prefill-decode interference: 7 streams decoding, then a 1,000-token prompt arrives. The streams' inter-token
   latency (p50, p99) and the newcomer's TTFT, for a whole prefill and chunks of 64, 32, 16 (the default) and 8 tokens.
   Target: p99 <= 2x the median with the engine's default chunk.
3. The prefix cache on the FAQ prompt (instruction + every FAQ line + a question, chat template): TTFT of a miss
   (cache cleared) and of a hit (the same FAQ, another question), 5 questions. Target: hit <= 0.25x miss.
4. Greedy replies under load for every format served (16 prompts at once, max batch 8) against each alone.
   Target: 0 differ.
Results go to data/bench/engine.json (not with --quick), with the hardware, the date and this command.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from lmlab.data.corpora import load_kjv
from lmlab.inference.decode import as_causal_lm, generate, make_step
from lmlab.measure.results import write_json
from lmlab.measure.runtime import describe_environment, seed_everything, use_threads
from lmlab.models.pretrained import load_smollm2
from lmlab.serving.dense import DenseEngine
from lmlab.serving.engine import Engine
from lmlab.serving.interference import prefill_interference
from lmlab.serving.served import BACKEND_OF, chat_template_ids
from lmlab.serving.slots import DEFAULT_CHUNK_TOKENS, SlotEngine

FAQ_PATH = Path(__file__).resolve().parents[1] / "data" / "shop-faq.txt"
INSTRUCTIONS = "You are the customer service assistant of Bluebird Shoes. Answer in one or two sentences."
QUESTIONS = ["Can I return shoes I have worn?", "How long does delivery take?", "Do you take cash?",
             "What size should I pick?", "When is the shop open?", "How much is shipping?",
             "How do I clean leather shoes?", "Can I exchange a size?"]


def faq_prompt(tokenizer, question: str) -> list[int]:
    system = INSTRUCTIONS + "\n" + FAQ_PATH.read_text().strip()
    return chat_template_ids(tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": question}],
                             generation=True)


def churn(lm, step, scheduler, runs: int, requests: int) -> dict:
    """Many short requests through one scheduler on one step: wall seconds and tokens/s per run."""
    rng = random.Random(0)
    prompts = [lm.encode(q) for q in QUESTIONS]
    work = [(prompts[rng.randrange(len(prompts))], rng.randint(4, 32)) for _ in range(requests)]
    walls = []
    for _ in range(runs):
        with scheduler(lm, step=step, max_batch=8) as engine:
            start = time.perf_counter()
            tickets = [engine.submit(ids, n, stop_at_eos=False) for ids, n in work]
            for ticket in tickets:
                ticket.result(timeout_s=600)
            walls.append(time.perf_counter() - start)
    tokens = sum(n for _, n in work)
    return {"wall_s": walls, "tokens_per_s": [tokens / w for w in walls]}


def interference(lm, step, long: list[int], chunk: int | None, tokens: int) -> dict:
    """7 streams decode; after 8 tokens each, a long prompt arrives: the streams' gaps and its TTFT."""
    run = prefill_interference(lm, step, [lm.encode(q) for q in QUESTIONS[:7]], long, chunk, tokens)
    return {"chunk_tokens": chunk, **run.summary()}


def prefix_ttft(lm, step, tokenizer, repeats: int) -> dict:
    """TTFT of the FAQ prompt with the prefix cache cleared (a miss) and right after another question (a hit)."""
    miss, hit = [], []
    with Engine(lm, step=step, max_batch=8, prefix_cache=256) as engine:
        engine.generate(faq_prompt(tokenizer, QUESTIONS[0]), 1)  # warm-up
        for i in range(repeats):
            engine.configure(prefix_cache=256)  # cleared: the next request misses
            for times, question in ((miss, QUESTIONS[i % 8]), (hit, QUESTIONS[(i + 1) % 8])):
                done = engine.submit(faq_prompt(tokenizer, question), 1).result(timeout_s=600)[1]
                times.append(done.timing["ttft_ms"])
        state = engine.cache_state()
    return {"prompt_tokens": len(faq_prompt(tokenizer, QUESTIONS[0])), "miss_ttft_ms": miss, "hit_ttft_ms": hit,
            "ratio": statistics.median(hit) / statistics.median(miss), "prefix_bytes": state["prefix_bytes"],
            "prefix_blocks": state["prefix_blocks"]}


def invariance(lm, tokenizer, backend: str, requests: int, tokens: int) -> dict:
    """Greedy replies of ``requests`` prompts at once (max batch 8) against each prompt alone, one backend."""
    step = make_step(lm, backend, threads=1)
    prompts = [faq_prompt(tokenizer, q) if i % 3 == 0 else lm.encode(q)
               for i, q in enumerate((QUESTIONS * 4)[:requests])]
    alone = [list(generate(lm, [ids], tokens, step=step, stop_at_eos=False).tokens[0]) for ids in prompts]
    with Engine(lm, step=step, max_batch=8, prefix_cache=64) as engine:
        tickets = [engine.submit(ids, tokens, stop_at_eos=False) for ids in prompts]
        loaded = [ticket.result(timeout_s=600)[0] for ticket in tickets]
    return {"backend": backend, "engine": type(engine).__name__, "requests": requests,
            "differ": sum(a != b for a, b in zip(alone, loaded))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and tokens: a smoke test of the script")
    args = parser.parse_args()
    seed_everything(0)
    use_threads(1)
    print(describe_environment("cpu", threads=1))
    model, tokenizer = load_smollm2()
    lm = as_causal_lm(model, tokenizer, name="smollm2")
    step = make_step(lm, "fused-int8", threads=1)
    runs, requests, tokens = (1, 16, 24) if args.quick else (3, 64, 64)
    record: dict = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/bench_engine.py",
                    "environment": describe_environment("cpu", threads=1), "format": "fused-int8"}

    managers = {name: churn(lm, step, scheduler, runs, requests)
                for name, scheduler in (("dense (first generation)", DenseEngine), ("slots", SlotEngine))}
    print(f"\n1. Cache managers, fused int8, {requests} requests of 4 to 32 tokens, max batch 8, {runs} runs\n"
          "| manager | wall s (median) | tokens/s (median) |\n|---|---|---|")
    for name, row in managers.items():
        print(f"| {name} | {statistics.median(row['wall_s']):.2f} | {statistics.median(row['tokens_per_s']):.1f} |")
    record["managers"] = managers

    text = " ".join(load_kjv().documents[:300])
    long = lm.encode(text)[:1000]
    rows = [interference(lm, step, long, chunk, tokens) for chunk in (None, 64, 32, DEFAULT_CHUNK_TOKENS, 8)]
    print(f"\n2. A {len(long)}-token prompt arrives among 7 streams (fused int8, max batch 8)\n"
          "| chunk tokens | streams' ITL p50 | p99 | p99 / p50 | newcomer's TTFT |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['chunk_tokens'] or 'whole prompt'} | {row['itl_p50_ms']:.1f} ms | {row['itl_p99_ms']:.1f} ms | "
              f"{row['ratio']:.2f}x | {row['newcomer_ttft_ms']:.0f} ms |")
    record["interference"] = rows

    prefix = prefix_ttft(lm, step, tokenizer, 2 if args.quick else 5)
    print(f"\n3. Prefix cache, the FAQ prompt ({prefix['prompt_tokens']} tokens): TTFT median miss "
          f"{statistics.median(prefix['miss_ttft_ms']):.0f} ms, hit {statistics.median(prefix['hit_ttft_ms']):.0f} ms "
          f"({prefix['ratio']:.2f}x); {prefix['prefix_blocks']} blocks kept, {prefix['prefix_bytes'] / 1e6:.1f} MB")
    record["prefix"] = prefix

    formats = sorted(set(BACKEND_OF.values()))
    same = [invariance(lm, tokenizer, backend, 8 if args.quick else 16, 12 if args.quick else 24)
            for backend in formats]
    print("\n4. Greedy replies under load against alone\n| backend | engine | differ |\n|---|---|---|")
    for row in same:
        print(f"| {row['backend']} | {row['engine']} | {row['differ']} of {row['requests']} |")
    record["invariance"] = same

    default = next(r for r in rows if r["chunk_tokens"] == DEFAULT_CHUNK_TOKENS)
    targets = [f"p99 inter-token latency <= 2x its median with a 1,000-token newcomer (chunks of "
               f"{DEFAULT_CHUNK_TOKENS}): {default['ratio']:.2f}x -> {'yes' if default['ratio'] <= 2 else 'NO'}",
               f"prefix-cache hit TTFT <= 0.25x a miss on the FAQ prompt: {prefix['ratio']:.2f}x -> "
               f"{'yes' if prefix['ratio'] <= 0.25 else 'NO'}",
               f"greedy replies under load that differ from alone, every format: "
               f"{sum(r['differ'] for r in same)} -> {'yes' if not sum(r['differ'] for r in same) else 'NO'}"]
    print("\nTargets\n" + "\n".join(targets))
    record["targets"] = targets
    if not args.quick:
        path = Path(__file__).resolve().parents[1] / "data" / "bench" / "engine.json"
        write_json(path, record)
        print(f"saved {path}")


if __name__ == "__main__":
    main()
