"""lmlab's n-gram model against nltk.lm (and KenLM, if installed): same tokens, same n, same smoothing.

Run: .venv/bin/python benchmarks/bench_ngram.py [--n 3] [--nltk-tokens 2000]   (or `make bench`)

King James Bible, word level, words seen fewer than 2 times in training -> <unk>; the seeded 80/10/10
split of chapter 01. Both libraries count the same padded n-grams (each verse: <s>×(n−1), words, </s>).
nltk scores one n-gram at a time in Python, so it is timed on the first --nltk-tokens held-out
n-grams and its time per token is scaled to the whole set; perplexities are compared on that same
subset. Medians of repeated runs (lmlab: 5 fits, 20 scorings; nltk: one fit, 3 scorings), one torch
thread; ratios are nltk's time divided by ours.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path


from lmlab.bench import format_ms, time_ms
from lmlab.corpora import load_kjv, tokenize_corpus
from lmlab.ngram import NGramModel
from lmlab.runtime import describe_environment, torch_threads


def clock(fn):
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1e3


def nltk_ngrams(contexts, targets, itos, orders):
    """Every n-gram of the given orders that ends at each target, as string tuples (nltk's everygrams)."""
    rows = [tuple(itos[i] for i in row) + (itos[t],) for row, t in zip(contexts.tolist(), targets.tolist())]
    return [[row[len(row) - m:] for row in rows for m in orders]]


def run(n: int, nltk_tokens: int) -> list[dict]:
    from nltk.lm import KneserNeyInterpolated, Laplace, Vocabulary

    data = tokenize_corpus(load_kjv(), min_count=2)
    itos = data.vocab.itos
    train = data.examples("train", n - 1)
    test_c, test_t = data.examples("test", n - 1)
    sub_c, sub_t = test_c[:nltk_tokens], test_t[:nltk_tokens]
    vocabulary = Vocabulary(itos[1:], unk_cutoff=1, unk_label="<unk>")  # nltk adds <unk> itself: same |V|
    held_out = [tuple(itos[i] for i in row) + (itos[t],) for row, t in zip(sub_c.tolist(), sub_t.tolist())]
    rows = []
    for label, smoothing, reference_cls, orders in [
        ("Laplace (add-1)", "add-k", lambda: Laplace(n, vocabulary=vocabulary), [n]),
        ("Kneser-Ney, D=0.75", "kneser-ney",
         lambda: KneserNeyInterpolated(n, discount=0.75, vocabulary=vocabulary), range(1, n + 1)),
    ]:
        ours, _ = clock(lambda: NGramModel.from_examples(*train, data.vocab, n, smoothing=smoothing))
        ours_fit_ms = time_ms(NGramModel.from_examples, *train, data.vocab, n, smoothing=smoothing,
                              warmup=1, repeat=5).median_ms
        ours_ppl = ours.perplexity(test_c, test_t)
        ours_score_ms = time_ms(ours.perplexity, test_c, test_t, warmup=2, repeat=20).median_ms
        ours_sub_ppl = ours.perplexity(sub_c, sub_t)
        reference = reference_cls()
        grams = nltk_ngrams(*train, itos, orders)
        _, nltk_fit_ms = clock(lambda: reference.fit(grams))
        nltk_sub_ppl = _safe_perplexity(reference, held_out)
        nltk_sub_ms = time_ms(_safe_perplexity, reference, held_out, warmup=0, repeat=3).median_ms
        rows.append({
            "smoothing": label, "tokens": len(test_t),
            "ours_fit_ms": ours_fit_ms, "nltk_fit_ms": nltk_fit_ms,
            "ours_score_ms": ours_score_ms, "nltk_score_ms": nltk_sub_ms / len(sub_t) * len(test_t),
            "ours_us_per_token": ours_score_ms * 1e3 / len(test_t), "nltk_us_per_token": nltk_sub_ms * 1e3 / len(sub_t),
            "ours_ppl_subset": ours_sub_ppl, "nltk_ppl_subset": nltk_sub_ppl, "ours_ppl": ours_ppl, "model": ours,
        })
    return rows


def _safe_perplexity(model, ngrams):
    try:
        return model.perplexity(ngrams)
    except ZeroDivisionError:
        return math.inf


def kenlm_column(model: NGramModel, data_contexts, data_targets) -> dict | None:
    """Write our Kneser-Ney model as ARPA, load it with KenLM, and score the same n-grams."""
    try:
        import kenlm
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.arpa"
        model.to_arpa(path)
        lm, load_ms = clock(lambda: kenlm.Model(str(path)))
        itos = model.vocab.itos

        def score():
            total = 0.0
            state, out = kenlm.State(), kenlm.State()
            for row, target in zip(data_contexts.tolist(), data_targets.tolist()):
                lm.NullContextWrite(state)
                for token in row:
                    lm.BaseScore(state, itos[token], out)
                    state, out = out, state
                total += lm.BaseScore(state, itos[target], out)
            return total

        log10_total, score_ms = clock(score)
    return {"load_ms": load_ms, "score_ms": score_ms,
            "ppl": 10 ** (-log10_total / len(data_targets)), "us_per_token": score_ms * 1e3 / len(data_targets)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3, help="n-gram order (default 3)")
    parser.add_argument("--nltk-tokens", type=int, default=2000, help="held-out n-grams nltk scores (default 2000)")
    args = parser.parse_args()
    with torch_threads(1) as threads:
        print(describe_environment("cpu", threads))
        rows = run(args.n, args.nltk_tokens)
    print(f"\nKing James Bible, word level, n = {args.n}; test set {rows[0]['tokens']:,} tokens; "
          f"nltk timed on the first {args.nltk_tokens:,} and scaled.\n")
    header = f"{'smoothing':<20} {'':<22} {'lmlab':>14} {'nltk.lm':>14} {'nltk / lmlab':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        fit_ratio = r["nltk_fit_ms"] / r["ours_fit_ms"]
        score_ratio = r["nltk_score_ms"] / r["ours_score_ms"]
        print(f"{r['smoothing']:<20} {'fit (train set)':<22} {format_ms(r['ours_fit_ms']):>14} "
              f"{format_ms(r['nltk_fit_ms']):>14} {fit_ratio:>12.1f}×")
        print(f"{'':<20} {'score (test set)':<22} {format_ms(r['ours_score_ms']):>14} "
              f"{format_ms(r['nltk_score_ms']):>14} {score_ratio:>12.1f}×")
        print(f"{'':<20} {'µs per token':<22} {r['ours_us_per_token']:>14.3f} {r['nltk_us_per_token']:>14.1f}")
        print(f"{'':<20} {'perplexity (subset)':<22} {r['ours_ppl_subset']:>14.4f} {r['nltk_ppl_subset']:>14.4f}")
        print(f"{'':<20} {'perplexity (test set)':<22} {r['ours_ppl']:>14.4f} {'':>14}")
        r["met"] = {"fit ≥ 10×": fit_ratio >= 10, "score ≥ 100×": score_ratio >= 100,
                    "equal perplexity (1e-6)": math.isclose(r["ours_ppl_subset"], r["nltk_ppl_subset"], rel_tol=1e-6)}
    kn = rows[1]
    test_c, test_t = tokenize_corpus(load_kjv(), min_count=2).examples("test", args.n - 1)
    column = kenlm_column(kn["model"], test_c, test_t)
    if column is None:
        print("\nKenLM: not installed here (pip install kenlm builds its query module from source).")
    else:
        print(f"\nKenLM querying our Kneser-Ney model written as ARPA: load {format_ms(column['load_ms']).strip()}, "
              f"score test set {format_ms(column['score_ms']).strip()} ({column['us_per_token']:.3f} µs per token), "
              f"perplexity {column['ppl']:.4f} (lmlab {kn['ours_ppl']:.4f})")
    print()
    for r in rows:
        print(f"{r['smoothing']:<20} " + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r["met"].items()))
    print("\nnltk keeps counts in Python dicts: its Laplace score is one dict lookup per n-gram, while its\n"
          "Kneser-Ney recursion runs Python code at every order for every token. lmlab looks up whole arrays.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
