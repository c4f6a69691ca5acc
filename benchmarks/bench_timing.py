"""Does lmlab.measure.timing.time_ms agree with torch.utils.benchmark? Side by side, in one run, same thread count.

Run: .venv/bin/python benchmarks/bench_timing.py   (or `make bench`)

For each matmul size, both timers measure the same call at the same thread count; the table gives
time_ms's median, blocked_autorange's median and their ratio. The foundation issue asks for the
ratio to stay within 0.75-1.25.
"""

from __future__ import annotations

import argparse

import torch
import torch.utils.benchmark as tbench

from lmlab.measure.runtime import default_threads, describe_environment, seed_everything
from lmlab.measure.timing import format_ms, time_ms


def compare(size: int, threads: int, repeat: int) -> dict:
    a, b = torch.randn(size, size), torch.randn(size, size)
    ours = time_ms(torch.mm, a, b, warmup=10, repeat=repeat, threads=threads)
    timer = tbench.Timer("torch.mm(a, b)", globals={"a": a, "b": b, "torch": torch}, num_threads=threads)
    theirs = timer.blocked_autorange(min_run_time=1.0)
    return {"size": size, "threads": threads, "ours_ms": ours.median_ms, "ours_p90_ms": ours.p90_ms,
            "torch_ms": theirs.median * 1e3, "ratio": ours.median_ms / (theirs.median * 1e3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: $LMLAB_THREADS or 1)")
    parser.add_argument("--repeat", type=int, default=200, help="time_ms samples per size")
    args = parser.parse_args()
    threads = args.threads or default_threads()
    seed_everything(0)
    print(describe_environment("cpu", threads))
    print(f"{'matmul':>10} {'threads':>7} {'time_ms median':>16} {'time_ms p90':>14} "
          f"{'blocked_autorange':>18} {'ratio':>7}  within 25%")
    worst = 0.0
    for size in (128, 512):
        row = compare(size, threads, args.repeat)
        worst = max(worst, abs(row["ratio"] - 1))
        print(f"{size:>4}x{size:<5} {row['threads']:>7} {format_ms(row['ours_ms']):>16} "
              f"{format_ms(row['ours_p90_ms']):>14} {format_ms(row['torch_ms']):>18} {row['ratio']:>6.3f}×  "
              f"{'yes' if abs(row['ratio'] - 1) <= 0.25 else 'NO'}")
    return 0 if worst <= 0.25 else 1


if __name__ == "__main__":
    raise SystemExit(main())
