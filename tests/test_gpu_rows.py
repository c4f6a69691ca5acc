"""GPU figures shipped in data/gpu/: each row has its hardware, date and command, and agrees with the checkpoints."""

import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.measure.hardware import GPU_DATA_DIR, GPU_ROW_KINDS, GPU_ROW_STAMP, gpu_results, gpu_rows
from lmlab.measure.results import Result
from lmlab.models.registry import load_model

SHIPPED = sorted(GPU_DATA_DIR.glob("*.json"))
ROOT = Path(__file__).resolve().parents[1]


def test_gpu_figures_are_shipped():
    assert SHIPPED, "data/gpu/ holds no measured GPU run"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_gpu_row_has_its_hardware_date_and_command(path):
    rows = json.loads(path.read_text())["rows"]
    assert rows
    for row in rows:
        assert all(row.get(key) for key in GPU_ROW_STAMP), row
        assert row["gpu"].startswith("NVIDIA ")
        datetime.datetime.strptime(row["date"], "%Y-%m-%d %H:%M UTC")
        assert row["command"].startswith("PYTHONPATH=. python benchmarks/bench_gpu.py ")
        assert row["kind"] in GPU_ROW_KINDS


def test_gpu_rows_loads_each_kind_with_a_hardware_label():
    table = gpu_rows()
    assert set(table["kind"]) <= set(GPU_ROW_KINDS)
    decode = gpu_rows("decode")
    assert len(decode) and set(decode["kind"]) == {"decode"}
    assert decode["hardware"].str.match(r"NVIDIA .+, \d{4}-\d\d-\d\d$").all()


def test_gpu_rows_refuses_an_unknown_kind_and_an_unstamped_row(tmp_path):
    with pytest.raises(ValueError, match="kind='latency'"):
        gpu_rows("latency")
    row = json.loads(SHIPPED[0].read_text())["rows"][0]
    del row["date"]
    (tmp_path / "bad.json").write_text(json.dumps({"rows": [row]}))
    with pytest.raises(ValueError, match=r"bad.json: row 0 lacks \['date'\]"):
        gpu_rows(folder=tmp_path)
    assert gpu_rows(folder=tmp_path / "empty").empty


def test_gpu_forward_rows_score_the_shipped_checkpoints_as_this_cpu_does():
    """The GPU's float32 accuracy and perplexity on the slice equal a fresh CPU evaluation here."""
    rows = [r for r in gpu_results() if r.device == "cuda" and r.name.endswith("float32")]
    assert rows and all(isinstance(r, Result) and r.corpus == "kjv test[:100]" for r in rows)
    for name in {r.name.split(",")[0] for r in rows}:
        model, data = load_model(name)
        here = model.evaluate_documents(data.head("test", 100), "test")
        for r in (r for r in rows if r.name.startswith(name + ",")):
            assert r.predictions == here["tokens"]
            assert r.perplexity == pytest.approx(here["perplexity"], rel=1e-4)
            assert abs(r.accuracy - here["accuracy"]) <= 2 / here["tokens"]  # an argmax tie may fall either way


def test_bench_gpu_refuses_cuda_without_a_gpu_and_an_existing_output(tmp_path):
    import torch

    existing = tmp_path / "run.json"
    existing.write_text("{}")
    done = subprocess.run([sys.executable, "benchmarks/bench_gpu.py", "--out", str(existing)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode != 0 and "exists" in done.stderr
    if not torch.cuda.is_available():
        done = subprocess.run([sys.executable, "benchmarks/bench_gpu.py", "--out", str(tmp_path / "new.json")],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode != 0 and "no CUDA GPU" in done.stderr


def test_gpu_decode_summary_spans_runs_and_leaves_out_cudnn_off(tmp_path):
    from lmlab.measure.hardware import gpu_decode_summary

    stamp = {"gpu": "NVIDIA H200", "driver": "580", "cuda": "13.0", "torch": "2.11", "date": "2026-11-30 17:00 UTC",
             "command": "PYTHONPATH=. python benchmarks/bench_gpu.py"}
    step = {"kind": "decode", "model": "m", "device": "cuda", "path": "p", "dtype": "bfloat16", "floor_ms": 0.5,
            **stamp}
    (tmp_path / "a.json").write_text(json.dumps({"rows": [{**step, "decode_ms_per_token": 3.0}]}))
    (tmp_path / "b.json").write_text(json.dumps({"rows": [
        {**step, "decode_ms_per_token": 4.0, "step_only_ms": 2.0, "cudnn_sdp": True},
        {**step, "decode_ms_per_token": 40.0, "step_only_ms": 39.0, "cudnn_sdp": False}]}))
    summary = gpu_decode_summary(tmp_path)
    assert len(summary) == 1
    line = summary.iloc[0]
    assert (line.ms_min, line.ms_max, line.runs, line.step_ms) == (3.0, 4.0, 2, 2.0)
    assert line.floor_share == pytest.approx(0.5 / 2.0)


def test_measured_by_names_the_shipped_file_not_the_gpu_machines_path():
    for row in gpu_rows().itertuples():
        assert "--out" not in row.measured_by and "/root" not in row.measured_by
        assert row.measured_by.endswith(f"(shipped as data/gpu/{row.file})")
