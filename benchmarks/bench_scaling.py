"""The measured run the scaling model (lmlab.scale.scaling) is checked against: one torchrun launch of the data,
tensor and pipeline schemes and the all-reduce and send/recv sizes on gpt-large, on 2 ranks.

Run: .venv/bin/python benchmarks/bench_scaling.py   (about 40 s on two quiet cores)

Results go to data/bench/parallel-rows.json (lmlab.scale.scaling.STORED_ROWS), with the hardware, the date and
these commands; tests/test_scaling.py checks the model's predictions against that file, not against live timings.
It then prints ``check_model``: each scheme's measured and predicted wall ms at 2 ranks.
"""

from __future__ import annotations

import argparse
import time

from lmlab.measure.results import write_json
from lmlab.measure.runtime import describe_environment
from lmlab.scale.distributed import run_parallel, torchrun_command
from lmlab.scale.scaling import STORED_ROWS, check_model, fit_residuals, stored_parameters

MODEL, DOCUMENTS, BATCH, MICRO_BATCHES = "gpt-large", 256, 32, 4
SCHEMES = ["data", "tensor", "pipeline", "allreduce", "sendrecv"]
TIMEOUT_S = 900


def _shell(command: list[str]) -> str:
    """The command as one would type it: one thread per rank, ``python`` for this interpreter."""
    return "OMP_NUM_THREADS=1 python " + " ".join(command[1:])


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, without measuring
    rows = run_parallel(SCHEMES, MODEL, 2, documents=DOCUMENTS, batch_size=BATCH, micro_batches=MICRO_BATCHES,
                        timeout_s=TIMEOUT_S)
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "environment": describe_environment("cpu", threads=1),
              "commands": [_shell(torchrun_command(SCHEMES, MODEL, 2, documents=DOCUMENTS, batch_size=BATCH,
                                                   micro_batches=MICRO_BATCHES))],
              "run_by": "python benchmarks/bench_scaling.py",
              "model": MODEL, "documents": DOCUMENTS, "batch_size": BATCH, "micro_batches": MICRO_BATCHES,
              "rows": rows}
    write_json(STORED_ROWS, record)
    print(f"saved {STORED_ROWS}")
    measured, params = stored_parameters()
    for scheme, (a, b) in (("allreduce", (params["a_ms"], params["b_ms_per_byte"])),
                           ("sendrecv", (params["p2p_a_ms"], params["p2p_b_ms_per_byte"]))):
        print(f"{scheme}: a = {a:.3f} ms, b = {b * 1e6:.3f} ms/MB; fitted / measured by size:",
              [(r["bytes"], round(r["fitted_over_measured"], 2)) for r in fit_residuals(measured, scheme, a, b)])
    print(f"contention kappa = {params['kappa']:.3f}")
    for check in check_model(measured, params):
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in check.items()})


if __name__ == "__main__":
    main()
