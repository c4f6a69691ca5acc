"""lmlab's command line: ``python -m lmlab COMMAND`` (or ``lmlab COMMAND`` inside the venv).

  env                      what timings here are measured on (CPU, cores, threads, torch, device)
  stats CORPUS [--level]   tokens, types and characters of "kjv", "names" or your own UTF-8 text file
  time-matmul SIZE         time_ms of a SIZE x SIZE matmul, to check this machine's timing noise
"""

from __future__ import annotations

import argparse
import sys

from lmlab.runtime import describe_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmlab", description="The Millisecond LM Lab")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("env", help="print what timings are measured on")
    stats = commands.add_parser("stats", help="corpus statistics")
    stats.add_argument("corpus", help='"kjv", "names", or a path to a UTF-8 text file')
    stats.add_argument("--level", choices=("word", "char"), default=None, help="token level for a text file")
    stats.add_argument("--min-count", type=int, default=1, help="keep tokens seen this often in train")
    matmul = commands.add_parser("time-matmul", help="time a square matmul with time_ms")
    matmul.add_argument("size", type=int)
    matmul.add_argument("--threads", type=int, default=None)
    matmul.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args(argv)

    try:
        if args.command == "env":
            print(describe_environment())
        elif args.command == "stats":
            from lmlab.corpora import load_corpus, tokenize_corpus

            corpus = load_corpus(args.corpus, args.level)
            print(f"{corpus.name}: {corpus.source}")
            for key, value in corpus.stats().items():
                print(f"  {key:>10}: {value:,}")
            data = tokenize_corpus(corpus, min_count=args.min_count)
            sizes = {split: sum(len(d) for d in ids) for split, ids in data.ids.items()}
            print(f"  vocabulary: {len(data.vocab):,} (min_count {args.min_count}, specials included)")
            print("  tokens per split: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
        elif args.command == "time-matmul":
            import torch

            from lmlab.bench import time_ms

            if args.size < 1:
                raise ValueError(f"size={args.size} is out of range; use an integer >= 1")
            a = torch.randn(args.size, args.size)
            timing = time_ms(torch.mm, a, a, repeat=args.repeat, threads=args.threads)
            print(describe_environment(threads=timing.threads))
            print(f"{args.size}x{args.size} matmul: {timing}")
    except (ValueError, FileNotFoundError) as err:
        print(f"lmlab: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
