"""Which compression buys real milliseconds: unstructured and structured pruning, and low rank, side by side.

Run: .venv/bin/python benchmarks/bench_prune.py [--gpt-steps 400] [--smol-steps 60] [--skip-smollm2]
     (or `make bench`)

On the largest shipped GPT and on SmolLM2-135M, in one run, on one torch thread (two threads beside it):
- dense latency: one 64-token forward (batch 1), and the MLP blocks alone on a (1, 64, width) input;
- 50% unstructured magnitude pruning (global): the same shapes, so dense kernels should take as long (target
  0.9-1.1x of dense);
- 50% structured MLP pruning (half of every MLP's hidden units removed, chosen by calibrated importance),
  then a short recovery run, fine-tuned on the data or (the GPT) distilled from the dense model: target MLP
  blocks >= 1.6x faster, perplexity up by at most 5%;
- low rank at the rank that halves every MLP matrix's multiply-adds, for comparison.
Perplexity is on held-out text the models never trained on: the whole KJV test split for the GPT; for
SmolLM2 the first 40 test verses as chapter 02 scores them (its fine-tune reads KJV training verses, so a
dense model fine-tuned for the same steps is reported beside it as the fair reference). Medians and p90 of
repeated runs; ratios are dense time divided by the other.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from lmlab.compress.prune import low_rank, magnitude_prune, mlp_blocks, prune_mlp
from lmlab.data.corpora import load_kjv, tokenize_corpus
from lmlab.measure.runtime import describe_environment, seed_everything, torch_threads
from lmlab.measure.timing import format_ms, time_ms
from lmlab.models.checkpoints import load_checkpoint
from lmlab.train.loop import distill, fine_tune, train_model

REPEAT = {"gpt-large": 30, "SmolLM2-135M": 10}


def timings(model, inputs: torch.Tensor, hidden: torch.Tensor, threads: int, repeat: int) -> dict:
    """Median and p90 ms of a whole forward and of the MLP blocks alone, at ``threads`` torch threads."""
    blocks = mlp_blocks(model)

    def forward():
        with torch.no_grad():
            return model(input_ids=inputs).logits[:, -1].argmax(-1)

    def mlps():
        with torch.no_grad():
            for block in blocks:
                block(hidden)

    return {"model": time_ms(forward, warmup=2, repeat=repeat, threads=threads),
            "mlp": time_ms(mlps, warmup=2, repeat=repeat, threads=threads)}


def halving_rank(model) -> int:
    """The rank r at which r·(in + out) = in·out / 2 for the first MLP matrix: half its multiply-adds."""
    block = mlp_blocks(model)[0]
    first = next(m for m in block.children() if hasattr(m, "weight"))
    n_in, n_out = first.weight.shape
    return max(1, int(n_in * n_out / (2 * (n_in + n_out))))


def gpt_variants(steps: int):
    data = tokenize_corpus(load_kjv(), min_count=2)
    gpt = load_checkpoint("data/gpt-large")
    calibration = data.head("valid", 100)
    calibrate = lambda m: m.evaluate_documents(calibration, "valid")  # noqa: E731
    perplexity = lambda m: m.evaluate_documents(data, "test")["perplexity"]  # noqa: E731
    inputs = torch.as_tensor(data.stream("test")[:64])[None]  # (1, 64)
    hidden = torch.randn(1, 64, gpt.config.n_embd, generator=torch.Generator().manual_seed(0))
    variants = {"dense": (gpt.gpt, perplexity(gpt), "")}
    unstructured = magnitude_prune(gpt, 0.5)
    variants["50% unstructured"] = (unstructured.model.gpt, perplexity(unstructured.model), "no fine-tune")
    structured = prune_mlp(gpt, 0.5, calibrate=calibrate)
    variants["50% MLP units"] = (structured.model.gpt, perplexity(structured.model), "no fine-tune")
    for label, recover in (("fine-tuned", lambda m: fine_tune(m, data, steps=steps, lr=3e-4, batch_size=32)),
                           ("distilled", lambda m: distill(m, gpt, data, steps=steps, lr=3e-4, batch_size=32,
                                                           alpha=0.9, temperature=1.0))):
        model = copy.deepcopy(structured.model)
        start = time.perf_counter()
        with torch_threads(2):
            recover(model)
        variants[f"50% MLP units, {label}"] = (model.gpt, perplexity(model),
                                               f"{steps} steps, {time.perf_counter() - start:.0f} s on 2 threads")
    rank = halving_rank(gpt.gpt)
    factored = low_rank(gpt, rank=rank, only="mlp")
    variants[f"low rank {rank}, MLPs"] = (factored.model.gpt, perplexity(factored.model), "no fine-tune")
    return variants, inputs, hidden


def smollm2_variants(steps: int):
    from lmlab.models.pretrained import causal_lm_loss, load_smollm2, perplexity, text_batches

    data = tokenize_corpus(load_kjv(), min_count=2)
    model, tokenizer = load_smollm2()
    test_text = data.head("test", 40).normalized_text("test")
    valid_text = data.head("valid", 40).normalized_text("valid")
    train_text = data.head("train", 4000).normalized_text("train")
    score = lambda m: perplexity(m, tokenizer, test_text)["perplexity"]  # noqa: E731
    inputs = tokenizer(test_text, return_tensors="pt").input_ids[:, :64]  # (1, 64)
    hidden = torch.randn(1, 64, model.config.hidden_size, generator=torch.Generator().manual_seed(0))

    def tune(m) -> float:
        start = time.perf_counter()
        with torch_threads(2):
            train_model(m, lambda epoch: text_batches(tokenizer, train_text, 128, 4, seed=epoch), steps=steps,
                        lr=1e-4, evaluate_fn=lambda mm: perplexity(mm, tokenizer, valid_text), eval_every=steps,
                        loss_fn=causal_lm_loss, warmup_steps=min(10, steps // 5), progress=False)
        return time.perf_counter() - start

    variants = {"dense": (model, score(model), "")}
    unstructured = magnitude_prune(model, 0.5)
    variants["50% unstructured"] = (unstructured.model, score(unstructured.model), "no fine-tune")
    del unstructured
    structured = prune_mlp(model, 0.5, calibrate=lambda m: perplexity(m, tokenizer, valid_text))
    variants["50% MLP units"] = (structured.model, score(structured.model), "no fine-tune")
    tuned = copy.deepcopy(structured.model)
    seconds = tune(tuned)
    variants["50% MLP units, fine-tuned"] = (tuned, score(tuned), f"{steps} steps, {seconds:.0f} s on 2 threads")
    del structured
    rank = halving_rank(model)
    factored = low_rank(model, rank=rank, only="mlp")
    variants[f"low rank {rank}, MLPs"] = (factored.model, score(factored.model), "no fine-tune")
    del factored
    reference = copy.deepcopy(model)
    seconds = tune(reference)
    variants["dense, same fine-tune"] = (reference, score(reference),
                                         f"{steps} steps, {seconds:.0f} s: the fair reference for the fine-tuned rows")
    return variants, inputs, hidden


def report(name: str, variants: dict, inputs, hidden) -> dict:
    rows = {}
    for label, (model, ppl, note) in variants.items():
        rows[label] = {"ppl": ppl, "note": note,
                       **{threads: timings(model, inputs, hidden, threads, REPEAT[name]) for threads in (1, 2)}}
    dense = rows["dense"]
    print(f"\n{name}: one 64-token forward at batch 1, and its MLP blocks alone; ratio = dense time / this time")
    header = (f"{'':<24} {'forward, 1 thread':>22} {'ratio':>7} {'MLP blocks':>22} {'ratio':>7} "
              f"{'2 threads: fwd, MLP':>24} {'perplexity':>11}  note")
    print(header)
    print("-" * len(header))
    for label, row in rows.items():
        one, two = row[1], row[2]
        print(f"{label:<24} {format_ms(one['model'].median_ms)} (p90 {format_ms(one['model'].p90_ms, 7).strip()}) "
              f"{dense[1]['model'].median_ms / one['model'].median_ms:>6.2f}× "
              f"{format_ms(one['mlp'].median_ms)} (p90 {format_ms(one['mlp'].p90_ms, 7).strip()}) "
              f"{dense[1]['mlp'].median_ms / one['mlp'].median_ms:>6.2f}× "
              f"{format_ms(two['model'].median_ms, 7)}, {format_ms(two['mlp'].median_ms, 7)} "
              f"{row['ppl']:>11.2f}  {row['note']}")
    unstructured = rows["50% unstructured"]
    ratio_u = dense[1]["model"].median_ms / unstructured[1]["model"].median_ms
    print(f"target: 50% unstructured within 0.9-1.1x of dense: {ratio_u:.2f}x "
          f"{'yes' if 0.9 <= ratio_u <= 1.1 else 'NO'}")
    for label, row in rows.items():
        if label.startswith("50% MLP units,"):
            ratio_s = dense[1]["mlp"].median_ms / row[1]["mlp"].median_ms
            change = row["ppl"] / dense["ppl"] - 1
            print(f"target: {label}: MLP blocks >= 1.6x faster: {ratio_s:.2f}x {'yes' if ratio_s >= 1.6 else 'NO'}; "
                  f"perplexity up <= 5%: {change:+.1%} {'yes' if change <= 0.05 else 'NO'}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpt-steps", type=int, default=400, help="recovery steps after pruning the GPT")
    parser.add_argument("--smol-steps", type=int, default=60, help="fine-tune steps after pruning SmolLM2")
    parser.add_argument("--skip-smollm2", action="store_true", help="only the GPT (about a quarter of the time)")
    args = parser.parse_args()
    seed_everything(0)
    print(describe_environment("cpu", 1))
    report("gpt-large", *gpt_variants(args.gpt_steps))
    if not args.skip_smollm2:
        report("SmolLM2-135M", *smollm2_variants(args.smol_steps))
    print("\nUnstructured zeros leave every matrix its shape: a dense kernel multiplies the zeros like any other\n"
          "number. Removing whole units shrinks the matrices, so the same kernels do less work.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
