"""Speculative decoding, measured: plain greedy against prompt lookup (and a draft model) on the same step.

Run: .venv/bin/python benchmarks/bench_speculative.py [--backends eager,onnx] [--quick]   (about 10 minutes on
2 vCPUs; --quick: the shipped gpt-large only, a smoke test)

SmolLM2-135M-Instruct at one thread, greedy, 96 new tokens, through lmlab.inference.speculative.speculative_speedup
(plain and speculative alternate, 3 repeats after a warm-up, medians): an answer that copies an FAQ (the chat
template, the FAQ as the system message) and a KJV passage asked to be repeated, k = 4 and 8; the tokens must be
identical. Each row prints the measured acceptance rate α, tokens per target pass against the formula
E = (1 − α^(k+1)) / (1 − α), and the measured speed-up against the formula E / (k·c + 1). First, the largest logit
difference between one pass over 6 positions and 6 one-position steps (why a near-tie could flip).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lmlab.data.corpora import kjv_verses
from lmlab.inference.decode import as_causal_lm, make_step
from lmlab.inference.speculative import speculative_speedup
from lmlab.inference.step import every_logit
from lmlab.measure.runtime import describe_environment

FAQ = Path(__file__).resolve().parents[1] / "data" / "shop-faq.txt"


def rounding_gap(step, ids: torch.Tensor) -> float:
    """Max |logit difference|: one pass over the last 6 ids against 6 one-id steps, after the same prefix."""
    cut = ids.shape[1] - 6
    _, past = every_logit(step, ids[:, :cut], None)
    together, _ = every_logit(step, ids[:, cut:], past)
    _, past = every_logit(step, ids[:, :cut], None)
    alone = []
    for j in range(cut, ids.shape[1]):
        logits, past = every_logit(step, ids[:, j:j + 1], past)
        alone.append(logits[-1])
    return float((together - torch.stack(alone)).abs().max())


def prompts(lm, tokenizer) -> dict[str, list[int]]:
    verses = " ".join(v for _, v in kjv_verses()[:4])
    kjv = f"Passage: {verses}\nThe same passage, repeated exactly:\nPassage: {verses.split(',')[0]}"
    if tokenizer is None:
        return {"kjv": lm.encode("in the beginning god created the heaven and the earth " * 2)}
    from lmlab.serving.served import chat_template_ids  # the benchmark may reach the serving layer

    faq = chat_template_ids(tokenizer, [{"role": "system", "content": FAQ.read_text(encoding="utf-8")},
                                        {"role": "user", "content": "Copy the Returns, Exchanges and Shipping lines "
                                                                    "of the FAQ word for word."}], generation=True)
    return {"faq": faq, "kjv": lm.encode(kjv)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="eager,onnx")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(describe_environment("cpu", threads=1))
    if args.quick:
        from lmlab.models.checkpoints import load_checkpoint

        lm, tokenizer, new = as_causal_lm(load_checkpoint("data/gpt-large").eval(), name="gpt-large"), None, 32
    else:
        from lmlab.models.pretrained import load_smollm2

        model, tokenizer = load_smollm2()
        lm, new = as_causal_lm(model, tokenizer, name="SmolLM2-135M"), 96
    chosen = prompts(lm, tokenizer)
    for backend in args.backends.split(","):
        step = make_step(lm, backend, threads=1)
        print(f"{lm.name} {backend}: max |logit difference|, 6-position pass vs 6 steps: "
              f"{rounding_gap(step, torch.tensor([chosen['kjv']])):.1e}")
        for name, ids in chosen.items():
            for k in (4, 8):
                r = speculative_speedup(lm, ids, new, step=step, threads=1, method="prompt-lookup", k=k, repeat=3)
                print(f"{backend} {name} k={k}: identical={r['identical']} alpha={r['alpha']:.2f}; tokens/pass "
                      f"measured {r['tokens_per_pass']:.2f}, formula {r['expected_tokens_per_pass']:.2f}; speed-up "
                      f"measured {r['speedup']:.2f}x, formula {r['expected_speedup']:.2f}x; plain "
                      f"{r['plain_tokens_per_s']:.1f} tokens/s, speculative {r['speculative_tokens_per_s']:.1f}")


if __name__ == "__main__":
    main()
