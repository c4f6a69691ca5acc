"""lmlab's n-gram model against nltk.lm (and KenLM, if installed): same tokens, same n, same smoothing.

Run: .venv/bin/python benchmarks/bench_ngram.py [--n 3] [--nltk-tokens 1000]   (or `make bench`)

King James Bible, word level, words seen fewer than 2 times in training -> <unk>; the seeded 80/10/10
split of chapter 01. Both libraries count the same padded n-grams (each verse: <s>×(n−1), words, </s>),
built once before any clock starts. nltk scores one n-gram at a time in Python, so it is timed on the
first --nltk-tokens held-out n-grams and its time per token is scaled to the whole test set (marked *);
perplexities are compared on that same subset. KenLM cannot count here (its pip package has no lmplz),
so it queries our own Kneser-Ney model written as an ARPA file, on the whole test set.
Medians of repeated runs (lmlab: 5 fits, 20 scorings; nltk: 3 fits, 3 scorings; KenLM: 3 loads,
10 scorings), one torch thread; ratios are the other library's time divided by ours.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from lmlab.bench import format_ms, time_ms
from lmlab.corpora import load_kjv, tokenize_corpus
from lmlab.ngram import NGramModel
from lmlab.runtime import describe_environment, torch_threads

SETTINGS = [("Laplace (add-1)", "add-k"), ("Kneser-Ney (D = 0.75)", "kneser-ney")]


def as_strings(contexts, targets, itos, orders) -> list[list[tuple[str, ...]]]:
    """Every n-gram of the given orders that ends at each target, as string tuples (nltk's everygrams)."""
    rows = [tuple(itos[i] for i in row) + (itos[t],) for row, t in zip(contexts.tolist(), targets.tolist())]
    return [[row[len(row) - m:] for row in rows for m in orders]]


def nltk_perplexity(model, ngrams) -> float:
    try:
        return model.perplexity(ngrams)
    except ZeroDivisionError:  # nltk's entropy divides by zero-probability terms' logs
        return math.inf


def compare(data, n: int, smoothing: str, nltk_tokens: int) -> dict:
    """Fit and score with lmlab and nltk.lm on the same n-grams; return times (ms) and perplexities."""
    from nltk.lm import KneserNeyInterpolated, Laplace, Vocabulary

    itos = data.vocab.itos
    train = data.examples("train", n - 1)
    test_c, test_t = data.examples("test", n - 1)
    sub_c, sub_t = test_c[:nltk_tokens], test_t[:nltk_tokens]
    vocabulary = Vocabulary(itos[1:], unk_cutoff=1, unk_label="<unk>")  # nltk adds <unk> itself: same |V|
    assert len(vocabulary) == len(data.vocab)
    if smoothing == "add-k":
        make, orders = (lambda: Laplace(n, vocabulary=vocabulary)), [n]
    else:
        make, orders = (lambda: KneserNeyInterpolated(n, discount=0.75, vocabulary=vocabulary)), range(1, n + 1)
    grams = as_strings(*train, itos, orders)
    held_out = as_strings(sub_c, sub_t, itos, [n])[0]

    ours = NGramModel.from_examples(*train, data.vocab, n, smoothing=smoothing)
    ours_fit = time_ms(NGramModel.from_examples, *train, data.vocab, n, smoothing=smoothing, warmup=1, repeat=5)
    ours_score = time_ms(ours.perplexity, test_c, test_t, warmup=2, repeat=20)
    fitted, perplexities = [], []

    def nltk_fit():
        model = make()
        model.fit(grams)
        fitted[:] = [model]  # keep only the latest: an nltk model of the KJV holds ~1 GB of dicts

    nltk_fit_ms = time_ms(nltk_fit, warmup=0, repeat=3).median_ms
    nltk_sub_ms = time_ms(lambda: perplexities.append(nltk_perplexity(fitted[0], held_out)),
                          warmup=0, repeat=3).median_ms
    return {
        "model": ours, "tokens": len(test_t), "subset": len(sub_t),
        "fit_ms": (ours_fit.median_ms, nltk_fit_ms),
        "score_ms": (ours_score.median_ms, nltk_sub_ms / len(sub_t) * len(test_t)),
        "us_per_token": (ours_score.median_ms * 1e3 / len(test_t), nltk_sub_ms * 1e3 / len(sub_t)),
        "ppl_subset": (ours.perplexity(sub_c, sub_t), perplexities[0]),
        "ppl_test": ours.perplexity(test_c, test_t),
    }


@contextmanager
def quiet_stderr():
    """Silence what C++ code prints on file descriptor 2 (KenLM's loading progress bar)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def kenlm_column(model: NGramModel, data, n: int) -> dict | str:
    """Write our Kneser-Ney model as ARPA into a temporary folder, load it with KenLM, score the test set."""
    try:
        import kenlm
    except ImportError:
        return "not installed here (`pip install kenlm` builds its query module from source, ~90 s)"
    if n < 2:
        return f"skipped: KenLM reads models of order 2 and up, and n = {n}"
    itos = data.vocab.itos
    pads = " ".join(["<s>"] * (n - 1))
    # Our padding: each verse is read after <s>×(n−1). KenLM's bos=True gives a one-<s> context instead,
    # so we feed the pads as words (bos=False) and subtract what KenLM gives the pads themselves.
    sentences = [" ".join([pads] + [itos[i] for i in doc]) for doc in data.ids["test"]]
    tokens = sum(len(doc) + 1 for doc in data.ids["test"])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.arpa"
        write = time_ms(model.to_arpa, path, overwrite=True, warmup=0, repeat=1)
        with quiet_stderr():
            load = time_ms(kenlm.Model, str(path), warmup=1, repeat=3)
            lm = kenlm.Model(str(path))

    def log10_total() -> float:
        pad_score = lm.score(pads, bos=False, eos=False)
        return sum(lm.score(sentence, bos=False, eos=True) for sentence in sentences) - len(sentences) * pad_score

    score = time_ms(log10_total, warmup=1, repeat=10)
    return {"write_ms": write.median_ms, "load_ms": load.median_ms, "score_ms": score.median_ms,
            "us_per_token": score.median_ms * 1e3 / tokens, "ppl": 10 ** (-log10_total() / tokens)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3, help="n-gram order (default 3)")
    parser.add_argument("--nltk-tokens", type=int, default=1000, help="held-out n-grams nltk scores (default 1000)")
    args = parser.parse_args()
    with torch_threads(1) as threads:
        environment = describe_environment("cpu", threads)
        data = tokenize_corpus(load_kjv(), min_count=2)
        rows = {label: compare(data, args.n, smoothing, args.nltk_tokens) for label, smoothing in SETTINGS}
        kenlm = kenlm_column(rows[SETTINGS[1][0]]["model"], data, args.n)

    first = next(iter(rows.values()))
    print(environment)
    print(f"\nKing James Bible, word level, |V| = {len(data.vocab):,}, n = {args.n}; test set {first['tokens']:,} "
          f"tokens.\n* nltk timed on the first {first['subset']:,} test n-grams, its time per token scaled to the "
          f"whole test set.\n")
    header = f"{'':<22} {'':<26} {'lmlab':>12} {'nltk.lm':>13} {'nltk / lmlab':>13}   KenLM (our ARPA)"
    print(header)
    print("-" * len(header))
    ken = kenlm if isinstance(kenlm, dict) else None
    kn = rows[SETTINGS[1][0]]
    for label, _ in SETTINGS:
        r = rows[label]
        (fit, nltk_fit), (score, nltk_score) = r["fit_ms"], r["score_ms"]
        (us, nltk_us), (ppl_sub, nltk_ppl_sub) = r["us_per_token"], r["ppl_subset"]
        ken_cells = ["—"] * 5
        if ken and r is kn:
            ken_cells = [f"load {format_ms(ken['load_ms']).strip()}",
                         f"{format_ms(ken['score_ms']).strip()} ({ken['score_ms'] / score:.2f}×)",
                         f"{ken['us_per_token']:.3f} µs", "", f"{ken['ppl']:.4f}"]
        lines = [
            ("fit (train set)", format_ms(fit), format_ms(nltk_fit), f"{nltk_fit / fit:.1f}×"),
            ("score (test set)", format_ms(score), format_ms(nltk_score) + "*", f"{nltk_score / score:.1f}×"),
            ("time per token", f"{us:.3f} µs", f"{nltk_us:,.1f} µs*", ""),
            (f"perplexity ({r['subset']:,} n-grams)", f"{ppl_sub:.4f}", f"{nltk_ppl_sub:.4f}", ""),
            ("perplexity (test set)", f"{r['ppl_test']:.4f}", "—", ""),
        ]
        for i, ((what, a, b, ratio), c) in enumerate(zip(lines, ken_cells)):
            print(f"{label if i == 0 else '':<22} {what:<26} {a:>12} {b:>13} {ratio:>13}   {c}".rstrip())
        r["met"] = {"fit >= 10x": nltk_fit / fit >= 10, "score >= 100x": nltk_score / score >= 100,
                    "equal perplexity (1e-6)": math.isclose(ppl_sub, nltk_ppl_sub, rel_tol=1e-6)}
    print()
    if ken:
        print(f"KenLM read our Kneser-Ney ARPA file (written by lmlab.ngram in {format_ms(ken['write_ms']).strip()}); "
              f"its test perplexity differs from ours by {abs(ken['ppl'] / kn['ppl_test'] - 1):.1e}\n"
              f"(relative; ARPA stores 7 decimals). KenLM's time ratio is KenLM / lmlab.")
    else:
        print(f"KenLM: {kenlm}")
    for label, _ in SETTINGS:
        print(f"{label:<22} " + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in rows[label]["met"].items()))
    print("\nnltk keeps counts in Python dicts: its Laplace score is one dict lookup per n-gram (a few µs), while\n"
          "its Kneser-Ney recomputes continuation counts by scanning every stored context of the order above,\n"
          "for every token. lmlab looks up whole arrays of keys at once (hash tables, no Python loop per token).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
