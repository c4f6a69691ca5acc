"""Write the KenLM reference files that tests/test_ngram_kenlm.py checks lmlab's n-gram model against.

Needs KenLM's binaries (lmplz and query), built from the kenlm sdist (see README.md here). Run from the repository
root:

    .venv/bin/python data/kenlm/make_reference.py --bin /path/to/kenlm/build/bin

It takes the first 3,000 King James verses as lmlab normalizes them, splits them as lmlab does (seeded 80/10/10),
and writes, next to this script:
- lmplz-o3.arpa.gz: ``lmplz -o 3`` on the training verses (modified Kneser-Ney, KenLM's defaults);
- lmplz-o3.discounts.json: the discounts lmplz printed;
- query-lmplz.tsv: ``query`` on that file, one line per test word (and each verse's </s>): word and log10 P;
- query-lmlab.tsv: ``query`` on the ARPA file lmlab's modified Kneser-Ney 3-gram writes for the same verses.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSES, ORDER = 3000, 3


def kenlm_data():
    """The corpus the reference is built on: lmlab's first 3,000 KJV verses, every word kept (min_count=1)."""
    from lmlab.data.corpora import Corpus, load_kjv, tokenize_corpus

    kjv = load_kjv()
    return tokenize_corpus(Corpus("kjv-3000", "word", kjv.documents[:VERSES]), min_count=1)


def query(binary: Path, arpa: Path, text: str) -> list[tuple[str, float]]:
    """Run KenLM's query on ``text`` (one sentence per line) and return (word, log10 P) for every scored word."""
    out = subprocess.run([str(binary / "query"), "-v", "word", str(arpa)], input=text, capture_output=True,
                         text=True, check=True).stdout
    return [(word, float(logp)) for word, logp in re.findall(r"(\S+)=\d+ \d+ (-?[\d.]+(?:e-?\d+)?)", out)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", required=True, type=Path, help="folder holding KenLM's lmplz and query")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent.parent))
    from lmlab.models.ngram import NGramModel

    data = kenlm_data()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "train.txt").write_text(data.normalized_text("train"))
        arpa = folder / "lmplz.arpa"
        run = subprocess.run([str(args.bin / "lmplz"), "-o", str(ORDER), "--text", str(folder / "train.txt"),
                              "--arpa", str(arpa), "-S", "20%", "-T", str(folder)], capture_output=True, text=True)
        if run.returncode:
            sys.exit(run.stderr)
        discounts = {int(order): [float(d1), float(d2), float(d3)] for order, d1, d2, d3 in  # "1 3238 D1=... D3+=..."
                     re.findall(r"^(\d+) \d+ D1=(\S+) D2=(\S+) D3\+=(\S+)$", run.stderr, re.MULTILINE)}
        (HERE / "lmplz-o3.discounts.json").write_text(json.dumps(discounts, indent=1) + "\n")
        with open(arpa, "rb") as src, gzip.GzipFile(HERE / "lmplz-o3.arpa.gz", "wb", mtime=0) as dst:
            dst.write(src.read())
        test = data.normalized_text("test")
        rows = query(args.bin, arpa, test)
        (HERE / "query-lmplz.tsv").write_text("".join(f"{w}\t{lp}\n" for w, lp in rows))
        ours = folder / "lmlab.arpa"
        NGramModel.fit(data, n=ORDER, smoothing="modified-kneser-ney").to_arpa(ours)
        rows = query(args.bin, ours, test)
        (HERE / "query-lmlab.tsv").write_text("".join(f"{w}\t{lp}\n" for w, lp in rows))
        print(run.stderr[-2000:])
    print(f"wrote the reference files in {HERE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
