"""Pipeline parallelism measured: the bubble against (p − 1) / (m + p − 1), GPipe against 1F1B, in one launch.

Run: .venv/bin/python benchmarks/bench_pipeline.py [--nproc 2] [--quick]   (about 1 minute on 2 cores; --quick:
batch 8, one repeat, not saved)

gpt-large on p gloo ranks (one torch thread each), each loading only its stage. One torchrun runs the inference
pipeline and one training step under GPipe and under 1F1B for m = 1, 2, 4, 8 micro-batches of the first training
batch (32 documents), with one process's forward and backward on the same batch timed in the same launch. Printed
side by side: wall ms (slowest rank) and its ratio to one process, the bubble predicted and measured (1 − busy /
wall per rank, mean), the peak of micro-batches whose
activations a stage holds, and the largest gradient difference from one process. Results go to
data/bench/pipeline.json (not with --quick), with the hardware, the date and this command.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from lmlab.measure.results import write_json
from lmlab.measure.runtime import describe_environment
from lmlab.scale.distributed import run_parallel

OUT = Path(__file__).resolve().parents[1] / "data" / "bench" / "pipeline.json"
MICRO_BATCHES = (1, 2, 4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="ranks (pipeline stages)")
    parser.add_argument("--quick", action="store_true", help="batch 8, one repeat, not saved")
    args = parser.parse_args()
    batch, repeat = (8, 1) if args.quick else (32, 5)
    rows = run_parallel(["pipeline", "gpipe", "1f1b"], "gpt-large", args.nproc, batch_size=batch, repeat=repeat,
                        micro_batches=list(MICRO_BATCHES), timeout_s=900)
    print(describe_environment("cpu", threads=1), f"| {args.nproc} gloo ranks | batch {batch} | median of {repeat}")
    print(f"{'scheme':>8} {'m':>2} {'wall ms':>8} {'x one':>6} {'bubble pred':>11} {'measured':>8} "
          f"{'peak acts':>10} {'grad diff':>9}")
    for row in rows:
        m = row["micro_batches"]
        if row["scheme"] == "pipeline":
            print(f"{'pipeline':>8} {m:>2} {row['wall_ms']:8.1f} {row['speedup']:6.2f}   inference only: the logits "
                  f"differ from one process's by {row['max_diff']:.1e}")
            continue
        print(f"{row['scheme']:>8} {m:>2} {row['wall_ms']:8.1f} {row['speedup']:6.2f} {row['bubble_predicted']:11.2f} "
              f"{row['bubble_measured_mean']:8.2f} {str(row['peak_activations']):>10} "
              f"{row['max_grad_diff']:9.1e}")
    if not args.quick:
        record = {"hardware": describe_environment("cpu", threads=1), "date": datetime.date.today().isoformat(),
                  "command": " ".join([Path(sys.executable).name, *sys.argv]), "rows": rows}
        write_json(OUT, record)
        print(f"saved {OUT}")


if __name__ == "__main__":
    main()
