"""The measured run the scaling model (lmlab.scale.scaling) is checked against: one torchrun launch of the data,
tensor and pipeline schemes and the all-reduce sizes on gpt-large, and one of send/recv sizes, on 2 ranks.

Run: .venv/bin/python benchmarks/bench_scaling.py   (about 40 s on two quiet cores)

Results go to data/bench/parallel-rows.json (lmlab.scale.scaling.STORED_ROWS), with the hardware, the date and
these commands; tests/test_scaling.py checks the model's predictions against that file, not against live timings.
It then prints ``check_model``: each scheme's measured and predicted wall ms at 2 ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from lmlab.measure.results import atomic_write_text
from lmlab.measure.runtime import describe_environment
from lmlab.scale.distributed import run_parallel
from lmlab.scale.scaling import STORED_ROWS, check_model, stored_parameters

MODEL, DOCUMENTS, BATCH, MICRO_BATCHES = "gpt-large", 256, 32, 4
TIMEOUT_S = 900


def sendrecv_rows() -> list[dict]:
    """Run ``python -m lmlab.scale.scaling`` (send/recv by size) under torchrun on 2 ranks; return rank 0's rows."""
    with tempfile.TemporaryDirectory(prefix="lmlab-sendrecv-") as folder:
        save = os.path.join(folder, "rows.json")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "lmlab.scale.scaling", "--save", save]
        subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=TIMEOUT_S, check=True,
                       capture_output=True)
        with open(save, encoding="utf-8") as handle:
            return json.load(handle)


def main() -> None:
    rows = run_parallel(["data", "tensor", "pipeline", "allreduce"], MODEL, 2, documents=DOCUMENTS,
                        batch_size=BATCH, micro_batches=MICRO_BATCHES, timeout_s=TIMEOUT_S)
    rows += sendrecv_rows()
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "environment": describe_environment("cpu", threads=1),
              "commands": [f"python -m lmlab parallel --scheme data tensor pipeline allreduce --model {MODEL} "
                           f"--documents {DOCUMENTS} --batch-size {BATCH} --micro-batches {MICRO_BATCHES}",
                           "python -m torch.distributed.run --standalone --nproc-per-node 2 -m lmlab.scale.scaling"],
              "run_by": "python benchmarks/bench_scaling.py",
              "model": MODEL, "documents": DOCUMENTS, "batch_size": BATCH, "micro_batches": MICRO_BATCHES,
              "rows": rows}
    atomic_write_text(STORED_ROWS, json.dumps(record, indent=1) + "\n")
    print(f"saved {STORED_ROWS}")
    measured, params = stored_parameters()
    for check in check_model(measured, params):
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in check.items()})


if __name__ == "__main__":
    main()
