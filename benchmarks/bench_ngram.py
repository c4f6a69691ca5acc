"""lmlab's n-gram model against nltk.lm and KenLM's binaries: same tokens, same n.

Run: .venv/bin/python benchmarks/bench_ngram.py [--n 3] [--nltk-tokens 1000] [--kenlm-bin DIR]   (or `make bench`)

King James Bible, word level, words seen fewer than 2 times in training -> <unk>; the seeded 80/10/10
split of chapter 01. Both libraries count the same padded n-grams (each verse: <s>×(n−1), words, </s>),
built once before any clock starts. nltk scores one n-gram at a time in Python, so it is timed on the
first --nltk-tokens held-out n-grams and its time per token is scaled to the whole test set (marked *);
perplexities are compared on that same subset. nltk has Laplace and Kneser-Ney with one discount, not modified
Kneser-Ney; its Kneser-Ney reads a verse after n−1 <s> with continuation counts for them, where lmlab (like KenLM)
starts from one <s> with raw counts, so those two perplexities differ by the convention.
KenLM: with its binaries (``--kenlm-bin`` or ``$LMLAB_KENLM_BIN``, built as data/kenlm/README.md says), a second
table puts ``lmplz`` (estimation, a subprocess) and ``query`` (loading the ARPA file and scoring the test verses,
a subprocess) beside lmlab's modified Kneser-Ney on the same verses with every word kept (KenLM has no
min-count), the same model to 1e-6.
Medians of repeated runs (lmlab: 5 fits, 20 scorings; nltk: 3 fits, 3 scorings; KenLM: 3 runs of each binary),
one torch thread; ratios are the other library's time divided by ours.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from lmlab.data.corpora import load_kjv, tokenize_corpus
from lmlab.measure.runtime import describe_environment, torch_threads
from lmlab.measure.timing import format_ms, time_ms
from lmlab.models.ngram import NGramModel

SETTINGS = [("Laplace (add-1)", "add-k"), ("Kneser-Ney (D = 0.75)", "kneser-ney"),
            ("modified Kneser-Ney", "modified-kneser-ney")]


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
    elif smoothing == "kneser-ney":
        make, orders = (lambda: KneserNeyInterpolated(n, discount=0.75, vocabulary=vocabulary)), range(1, n + 1)
    else:
        make, orders = None, []  # nltk has no modified Kneser-Ney
    grams = as_strings(*train, itos, orders)
    held_out = as_strings(sub_c, sub_t, itos, [n])[0]

    ours = NGramModel.from_examples(*train, data.vocab, n, smoothing=smoothing)
    ours_fit = time_ms(NGramModel.from_examples, *train, data.vocab, n, smoothing=smoothing, warmup=1, repeat=5)
    ours_score = time_ms(ours.perplexity, test_c, test_t, warmup=2, repeat=20)
    fitted, perplexities = [], []
    if make is None:
        nan = math.nan
        return {"model": ours, "tokens": len(test_t), "subset": len(sub_t), "fit_ms": (ours_fit.median_ms, nan),
                "score_ms": (ours_score.median_ms, nan),
                "us_per_token": (ours_score.median_ms * 1e3 / len(test_t), nan),
                "ppl_subset": (ours.perplexity(sub_c, sub_t), nan), "ppl_test": ours.perplexity(test_c, test_t)}

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


def kenlm_table(binaries: Path, n: int) -> dict | str:
    """lmplz and query (subprocesses) against lmlab's modified Kneser-Ney on the KJV with every word kept."""
    import re
    import subprocess

    if not (binaries / "lmplz").is_file() or not (binaries / "query").is_file():
        return f"no lmplz and query in {binaries}"
    if n < 2:
        return f"skipped: KenLM estimates models of order 2 and up, and n = {n}"
    data = tokenize_corpus(load_kjv(), min_count=1)
    train = data.examples("train", n - 1)
    test_c, test_t = data.examples("test", n - 1)
    ours = NGramModel.from_examples(*train, data.vocab, n)
    fit = time_ms(NGramModel.from_examples, *train, data.vocab, n, warmup=1, repeat=5)
    score = time_ms(ours.perplexity, test_c, test_t, warmup=2, repeat=20)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "train.txt").write_text(data.normalized_text("train"))
        test = data.normalized_text("test")
        arpa = folder / "kenlm.arpa"
        lmplz = [str(binaries / "lmplz"), "-o", str(n), "--text", str(folder / "train.txt"), "--arpa", str(arpa),
                 "-S", "20%", "-T", str(folder)]
        estimate = time_ms(lambda: subprocess.run(lmplz, capture_output=True, check=True), warmup=0, repeat=3)
        run = lambda: subprocess.run([str(binaries / "query"), "-v", "word", str(arpa)], input=test,  # noqa: E731
                                     capture_output=True, text=True, check=True).stdout
        query = time_ms(run, warmup=1, repeat=3)
        theirs = [float(x) for x in re.findall(r"\S+=\d+ \d+ (-?[\d.]+(?:e-?\d+)?)", run())]
    ours_log10 = ours.logprob_of(test_c, test_t) / math.log(10)
    return {"fit_ms": (fit.median_ms, estimate.median_ms), "score_ms": (score.median_ms, query.median_ms),
            "ppl": (ours.perplexity(test_c, test_t), 10 ** (-sum(theirs) / len(theirs))),
            "max_diff": max(abs(a - b) for a, b in zip(ours_log10.tolist(), theirs)), "tokens": len(test_t),
            "vocab": len(data.vocab)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3, help="n-gram order (default 3)")
    parser.add_argument("--nltk-tokens", type=int, default=1000, help="held-out n-grams nltk scores (default 1000)")
    parser.add_argument("--kenlm-bin", default=os.environ.get("LMLAB_KENLM_BIN"),
                        help="folder with KenLM's lmplz and query (default: $LMLAB_KENLM_BIN)")
    args = parser.parse_args()
    with torch_threads(1) as threads:
        environment = describe_environment("cpu", threads)
        data = tokenize_corpus(load_kjv(), min_count=2)
        rows = {label: compare(data, args.n, smoothing, args.nltk_tokens) for label, smoothing in SETTINGS}
        kenlm = kenlm_table(Path(args.kenlm_bin), args.n) if args.kenlm_bin else (
            "no binaries given (--kenlm-bin or $LMLAB_KENLM_BIN; data/kenlm/README.md builds them)")

    first = next(iter(rows.values()))
    print(environment)
    print(f"\nKing James Bible, word level, |V| = {len(data.vocab):,}, n = {args.n}; test set {first['tokens']:,} "
          f"tokens.\n* nltk timed on the first {first['subset']:,} test n-grams, its time per token scaled to the "
          f"whole test set.\n")
    header = f"{'':<22} {'':<26} {'lmlab':>12} {'nltk.lm':>13} {'nltk / lmlab':>13}"
    print(header)
    print("-" * len(header))
    cell = lambda value, text: "—" if math.isnan(value) else text  # noqa: E731 (nltk has no modified KN)
    for label, smoothing in SETTINGS:
        r = rows[label]
        (fit, nltk_fit), (score, nltk_score) = r["fit_ms"], r["score_ms"]
        (us, nltk_us), (ppl_sub, nltk_ppl_sub) = r["us_per_token"], r["ppl_subset"]
        lines = [
            ("fit (train set)", format_ms(fit), cell(nltk_fit, format_ms(nltk_fit)),
             cell(nltk_fit, f"{nltk_fit / fit:.1f}×")),
            ("score (test set)", format_ms(score), cell(nltk_score, format_ms(nltk_score) + "*"),
             cell(nltk_score, f"{nltk_score / score:.1f}×")),
            ("time per token", f"{us:.3f} µs", cell(nltk_us, f"{nltk_us:,.1f} µs*"), ""),
            (f"perplexity ({r['subset']:,} n-grams)", f"{ppl_sub:.4f}", cell(nltk_ppl_sub, f"{nltk_ppl_sub:.4f}"), ""),
            ("perplexity (test set)", f"{r['ppl_test']:.4f}", "—", ""),
        ]
        for i, (what, a, b, ratio) in enumerate(lines):
            print(f"{label if i == 0 else '':<22} {what:<26} {a:>12} {b:>13} {ratio:>13}".rstrip())
        if not math.isnan(nltk_fit):
            r["met"] = {"fit >= 10x": nltk_fit / fit >= 10, "score >= 100x": nltk_score / score >= 100}
            if smoothing == "add-k":
                r["met"]["equal perplexity (1e-6)"] = math.isclose(ppl_sub, nltk_ppl_sub, rel_tol=1e-6)
    print()
    for label, _ in SETTINGS:
        if "met" in rows[label]:
            print(f"{label:<22} " + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in rows[label]["met"].items()))
    kn = rows[SETTINGS[1][0]]
    print(f"Kneser-Ney (D = 0.75): nltk's perplexity differs from lmlab's by "
          f"{kn['ppl_subset'][1] / kn['ppl_subset'][0] - 1:+.1%}, the sentence-start convention (see the docstring)")
    if isinstance(kenlm, dict):
        (fit, lmplz), (score, query), (ours, theirs) = kenlm["fit_ms"], kenlm["score_ms"], kenlm["ppl"]
        print(f"\nmodified Kneser-Ney against KenLM's binaries, every word kept (|V| = {kenlm['vocab']:,}), "
              f"test set {kenlm['tokens']:,} tokens:")
        print(f"{'':<32} {'lmlab':>12} {'KenLM':>12} {'KenLM / lmlab':>14}")
        print(f"{'estimate (lmplz, a process)':<32} {format_ms(fit):>12} {format_ms(lmplz):>12} {lmplz / fit:>13.1f}×")
        print(f"{'score (query, a process)':<32} {format_ms(score):>12} {format_ms(query):>12} {query / score:>13.1f}×")
        print(f"{'perplexity (test set)':<32} {ours:>12.4f} {theirs:>12.4f}")
        print(f"largest per-word difference: {kenlm['max_diff']:.1e} (log10). KenLM's times include starting its "
              f"process and (query) loading the ARPA text file.")
    else:
        print(f"\nKenLM: {kenlm}")
    print("\nnltk keeps counts in Python dicts: its Laplace score is one dict lookup per n-gram (a few µs), while\n"
          "its Kneser-Ney recomputes continuation counts by scanning every stored context of the order above,\n"
          "for every token. lmlab looks up whole arrays of keys at once (hash tables, no Python loop per token).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
