"""Chapter 08's sweep on one worker against two, on both engines: wall time, speed-up, and the start-up to amortize.

Run: .venv/bin/python benchmarks/bench_sweep.py [--quick] [--documents N]
(about 5 minutes on 2 quiet vCPUs with the default 1,000 documents; --quick: 1 to 3)

The grid (default): gpt-small and gpt-medium, each uncompressed and under quantize-channel (8, 6, 4, 3 bits),
magnitude-global (sparsity 0.25, 0.5, 0.75, 0.9), mlp-units (0.25, 0.5, 0.75 removed) and low-rank (rank 64, 32,
16, 8): 32 settings, each scored on the first 1,000 King James test documents and timed over 10 calls, one torch
thread per worker. Each engine runs the grid from cold (local: spawned worker processes; ray: a fresh local Ray
instance and its actors) with 1 and with 2 workers; every worker loads a model once and keeps it.
1. First loads: each grid model's first load in a fresh process (its corpus tokenized, its checkpoint read), the
   cost every extra worker pays once per model it runs.
2. One worker against two: wall time, speed-up = wall(1) / wall(2), loads, and whether the rows agree (accuracy,
   perplexity, size, parameters, error: exact). Target: speed-up >= 1.7x on each engine.
   Start-up S = wall(1) - W, where W is the one-worker run's work (the sum of its settings' seconds, loads
   included): spawning and importing (local), the Ray instance and its actors (ray), and the teardown. With 2
   workers and balanced settings, speed-up = (S + W) / (S + W / 2), which reaches 1.7 once W >= 4.67 S; the
   table prints W, S and the number of settings like these that W >= 4.67 S needs. Measured 2026-12-07 on a quiet
   Xeon: with 100 documents per setting (W = 16 s, Ray's S = 10 s) 1.45x local and 1.51x ray, both short of 1.7x;
   with 1,000 (W = 93 s) 1.79x local and 1.77x ray.
Results go to data/bench/sweep.json (not with --quick), with the hardware, the date and this command.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from lmlab.measure.results import write_json
from lmlab.measure.runtime import describe_environment, use_threads
from lmlab.measure.timing import Stopwatch
from lmlab.models.registry import load_model
from lmlab.scale.sweep import Setting, make_grid, sweep

TARGET = 1.7
AMORTIZE = (TARGET - 1) / (1 - TARGET / 2)  # W / S at which (S + W) / (S + W / 2) = TARGET: 4.67
SAME = ("accuracy", "perplexity", "size_mb", "params", "error")


def first_loads(models: list[str]) -> dict[str, float]:
    """Seconds of each model's first load in this (fresh) process: its checkpoint read and its corpus tokenized."""
    seconds = {}
    for model in models:
        with Stopwatch(sync=False) as clock:
            load_model(model)
        seconds[model] = clock.ms / 1e3
    return seconds


def timed_sweep(grid: list[Setting], engine: str, workers: int, repeat: int) -> dict:
    """One sweep of ``grid`` from cold: its wall seconds, its rows, and how many loads its workers made."""
    with Stopwatch(sync=False) as clock:
        rows = sweep(grid=grid, engine=engine, workers=workers, repeat=repeat, progress=False)
    return {"engine": engine, "workers": workers, "wall_s": round(clock.ms / 1e3, 2), "rows": rows,
            "loads": sum(bool(r["loaded"]) for r in rows), "errors": sum(r["error"] is not None for r in rows),
            "work_s": round(sum(r["seconds"] for r in rows), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 4-setting grid on 5 documents: a smoke test")
    parser.add_argument("--documents", type=int, default=1000, help="test documents per setting (default 1000): more "
                        "makes each setting longer, so start-up weighs less")
    args = parser.parse_args()
    use_threads(1)
    print(describe_environment("cpu", threads=1))
    if args.quick:
        grid, repeat = make_grid(["gpt-small"], ["quantize-channel"], [8, 4, 3], documents=5), 2
    else:
        grid = make_grid(["gpt-small", "gpt-medium"], ["quantize-channel", "magnitude-global", "mlp-units", "low-rank"],
                         documents=args.documents)
        repeat = 10
    models = sorted({s.model for s in grid})
    command = "python benchmarks/bench_sweep.py" + (" --quick" if args.quick else f" --documents {args.documents}")
    record: dict = {"date": time.strftime("%Y-%m-%d"), "command": command,
                    "environment": describe_environment("cpu", threads=1), "grid": [s.key for s in grid],
                    "repeat": repeat}

    loads = first_loads(models)
    print("\n1. First load in a fresh process: " + ", ".join(f"{m} {s:.1f} s" for m, s in loads.items()))
    record["first_load_s"] = loads

    runs = [timed_sweep(grid, engine, workers, repeat) for engine in ("local", "ray") for workers in (1, 2)]
    reference = runs[0]["rows"]
    agree = all(r[name] == ref[name] for run in runs for r, ref in zip(run["rows"], reference) for name in SAME)
    print(f"\n2. {len(grid)} settings ({', '.join(models)}), repeat {repeat}, 1 thread per worker; rows agree across "
          f"the four runs: {'yes' if agree else 'NO'}\n"
          "| engine | workers | wall s | loads | errors | speed-up |\n|---|---|---|---|---|---|")
    targets = []
    for one, two in zip(runs[::2], runs[1::2]):
        speedup = one["wall_s"] / two["wall_s"]
        for run in (one, two):
            print(f"| {run['engine']} | {run['workers']} | {run['wall_s']:.1f} | {run['loads']} | {run['errors']} | "
                  + (f"{speedup:.2f}x |" if run is two else "1.00x |"))
        work = one["work_s"]
        start = one["wall_s"] - work
        needed = math.ceil(AMORTIZE * start / max(work / len(grid), 1e-9))
        enough = "large enough" if work >= AMORTIZE * start else "grid too small"
        targets.append(f"{one['engine']}: 2 workers >= {TARGET}x one worker's speed: {speedup:.2f}x -> "
                       f"{'met' if speedup >= TARGET else 'MISSED'} (one worker's work W = {work:.0f} s for "
                       f"{len(grid)} settings, start-up S = {start:.1f} s; W >= {AMORTIZE:.2f} S needs about "
                       f"{needed} settings like these: {enough})")
    print("\nTargets\n" + "\n".join(targets))
    record["runs"] = [{k: v for k, v in run.items() if k != "rows"} for run in runs]
    record["rows_agree"], record["targets"] = agree, targets
    if not args.quick:
        path = Path(__file__).resolve().parents[1] / "data" / "bench" / "sweep.json"
        write_json(path, record)
        print(f"saved {path}")


if __name__ == "__main__":
    main()
