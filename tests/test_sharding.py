"""Weights that are really sharded (lmlab.scale.sharding): slices read from the file, planned bytes, a memory budget.

Unit tests run without a process group. Two real torchrun launches (gloo, 2 ranks, gpt-large, one module fixture):
the tensor scheme scored against the single-process model, and the same scheme under a memory budget that refuses
one rank. Sharded loading never holds the whole model: each rank's peak memory while loading is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lmlab.data.corpora import document_batches
from lmlab.data.shipped import DATA_DIR
from lmlab.models.registry import load_model
from lmlab.scale import distributed as D
from lmlab.scale import sharding as S

MODEL = "gpt-large"  # 4 blocks, d = 256, 8 heads, V = 7973: its tied output layer is ~39 % of the weights
BUDGET_MB = 16.0  # gpt-large: 20.9 MB of weights on 1 rank (refused), 10.5 MB per rank on 2 (served)
LAUNCH_TIMEOUT_S = 240
OVERHEAD_MB = 2.0  # peak load memory above the planned weights: allocator, modules, Python objects
FRESH_OVERHEAD_MB = 4.0  # the same, for a first load in a fresh Python (no process group started before it)
NLL_TOL = 1e-4  # nats, per token: float32 sums in another order (measured ~5e-6)


@pytest.fixture(scope="module")
def whole():
    return load_file(DATA_DIR / f"{MODEL}.safetensors")


@pytest.fixture(scope="module")
def rows():
    """One tensor-scheme launch under BUDGET_MB, with the single-process reference (a check outside the budget)."""
    options = {"batch_size": 8, "documents": 8, "repeat": 1, "timeout_s": LAUNCH_TIMEOUT_S}
    row = D.run_parallel(["tensor"], MODEL, 2, memory_budget_mb=BUDGET_MB, **options)[0]
    return row, row


@pytest.mark.parametrize("world", [1, 2, 4])
def test_slices_read_equal_the_whole_tensors_slices(whole, world):
    path = DATA_DIR / f"{MODEL}.safetensors"
    for rank in range(world):
        with S.SliceReader(path) as reader:
            plan = S.slice_plan(reader.tensors, 8, rank, world)
            for name, (how, ranges) in plan.items():
                full = whole[name]
                if how == "whole":
                    expected, got = full, reader.whole(name)
                elif how == "rows":
                    expected, got = full[ranges[0][0]:ranges[0][1]], reader.rows(name, *ranges[0])
                else:
                    expected, got = torch.cat([full[..., a:b] for a, b in ranges], -1), reader.columns(name, ranges)
                assert torch.equal(got, expected), (name, rank, world)
            assert reader.bytes_read == S.planned_bytes(MODEL, rank, world)["planned_bytes"]


def test_planned_bytes_formula():
    d, layers, vocab, positions = 256, 4, 7973, 128
    replicated = 4 * (positions * d + layers * 6 * d + 2 * d)  # wpe, ln_1, ln_2 and two c_proj biases per block, ln_f
    ranks = [S.planned_bytes(MODEL, r, 2) for r in range(2)]
    whole = ranks[0]["whole_bytes"]
    assert all(r["replicated_bytes"] == replicated for r in ranks)
    assert sum(r["sharded_bytes"] for r in ranks) == whole - replicated  # the slices cover each split tensor once
    assert ranks[1]["sharded_bytes"] - ranks[0]["sharded_bytes"] == 4 * d  # 3986 and 3987 vocabulary rows
    assert max(r["planned_bytes"] for r in ranks) <= 0.6 * whole  # the target: ≤ 0.6x on 2 ranks
    assert S.planned_bytes(MODEL, 0, 1)["planned_bytes"] == whole
    assert S.split_range(vocab, 0, 2) == (0, 3986) and S.split_range(vocab, 1, 2) == (3986, 7973)


def test_one_rank_scores_as_the_whole_model():
    model, data = load_model(MODEL)
    tp = S.load_tensor_parallel_gpt(MODEL, 0, 1)
    assert tp.load_row["bytes_read"] == tp.load_row["parameter_bytes_per_rank"] == tp.load_row["whole_bytes"]
    inputs, targets, mask = next(document_batches(data.head("test", 16), "test", 16, max_len=128))
    nll, guess = tp.score(inputs, targets)
    with torch.no_grad():
        logits = model.gpt(input_ids=inputs, attention_mask=mask).logits  # (batch, time, vocab)
    counted = targets != -100
    reference = -torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    assert (nll[counted] - reference[counted].double()).abs().max() <= NLL_TOL
    assert torch.equal(guess[counted], logits.argmax(-1)[counted])
    assert torch.all(nll[~counted] == 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="world=3"):
        S.planned_bytes(MODEL, 0, 3)
    with pytest.raises(ValueError, match="rank=2"):
        S.load_tensor_parallel_gpt(MODEL, 2, 2)
    with pytest.raises(ValueError, match="smollm2"):
        S.planned_bytes("smollm2", 0, 1)
    with pytest.raises(ValueError, match="memory_budget_mb=-1"):
        S.load_tensor_parallel_gpt(MODEL, 0, 2, memory_budget_mb=-1)
    with pytest.raises(ValueError, match="memory_budget_mb=0"):
        D.torchrun_command("tensor", MODEL, 2, memory_budget_mb=0)


def test_one_rank_is_refused_before_reading_a_weight(tmp_path):
    # A copy whose data section is cut off: refusing reads only the header; loading without a budget hits the cut.
    source = DATA_DIR / f"{MODEL}.safetensors"
    header = 8 + int.from_bytes(source.read_bytes()[:8], "little")
    (tmp_path / f"{MODEL}.safetensors").write_bytes(source.read_bytes()[:header])
    shutil.copy(DATA_DIR / f"{MODEL}.json", tmp_path / f"{MODEL}.json")
    with pytest.raises(ValueError) as refused:
        S.load_tensor_parallel_gpt(MODEL, 0, 1, memory_budget_mb=BUDGET_MB, data_dir=tmp_path)
    message = str(refused.value)
    assert "memory_budget_mb=16" in message and "20.93 MB" in message and "fits on [2, 4, 8] ranks" in message
    with pytest.raises(ValueError, match="truncated"):
        S.load_tensor_parallel_gpt(MODEL, 0, 1, data_dir=tmp_path)
    assert S.check_memory_budget(MODEL, 2, BUDGET_MB) <= BUDGET_MB * 0.7  # 2 ranks fit with margin


def test_the_meter_sees_a_whole_load_and_not_a_sharded_one():
    # In a fresh process: rank 0 of 2 loads its slices, then safetensors loads the whole file (memory-mapped, so
    # every page is read to bring it in). The same meter must see the whole file's bytes in the second and only the
    # plan in the first, plus FRESH_OVERHEAD_MB (the first load also pages in library code: ~3 MB measured).
    code = (f"import json; from safetensors.torch import load_file; from lmlab.scale import sharding as S\n"
            f"with S.peak_rss() as part: tp = S.load_tensor_parallel_gpt({MODEL!r}, 0, 2)\n"
            f"with S.peak_rss() as whole:\n"
            f"    state = load_file(S.DATA_DIR / '{MODEL}.safetensors')  # memory-mapped: read every page\n"
            f"    total = sum(float(t.sum()) for t in state.values())\n"
            f"print(json.dumps([part['peak_mb'], whole['peak_mb'], tp.load_row['planned_mb']]))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    part_mb, whole_mb, planned_mb = json.loads(done.stdout.strip().splitlines()[-1])
    assert whole_mb >= 0.95 * S.planned_bytes(MODEL, 0, 1)["planned_mb"], (part_mb, whole_mb)
    assert planned_mb * 0.9 <= part_mb <= planned_mb + FRESH_OVERHEAD_MB < whole_mb, (part_mb, whole_mb, planned_mb)


def test_no_read_holds_a_whole_split_tensor():
    # The largest tensor a rank of 2 reads is its half of the embedding (3987 rows of 256), never a whole one.
    tp = S.load_tensor_parallel_gpt(MODEL, 1, 2)
    embedding = 7973 * 256 * 4
    assert tp.load_row["largest_read_bytes"] == 3987 * 256 * 4 < embedding
    assert tp.load_row["bytes_read"] == tp.load_row["planned_bytes"] == tp.load_row["parameter_bytes_per_rank"]


def test_two_ranks_score_as_one_process_holding_half(rows):
    row, _ = rows
    # max_diff covers the per-token −ln P and the guess ids: below 1, every guess is the single process's.
    assert row["world_size"] == 2 and row["max_diff"] <= NLL_TOL, row
    whole_mb = row["whole_parameter_bytes"] / 1e6
    assert row["parameter_bytes_per_rank"] <= 0.6 * row["whole_parameter_bytes"]
    assert row["planned_mb"] == max(S.planned_bytes(MODEL, r, 2)["planned_mb"] for r in range(2))
    # Peak resident memory added while loading (VmHWM − VmRSS before, each rank, the larger kept): it never held the
    # whole model, and it is the planned bytes plus at most OVERHEAD_MB (measured ~1.2 MB), less than holding the
    # whole embedding for a moment would add (its other rank's half, 4.1 MB).
    assert row["peak_load_mb"] < whole_mb, row
    assert 0.9 * row["planned_mb"] <= row["peak_load_mb"] <= row["planned_mb"] + OVERHEAD_MB, row


def test_two_ranks_are_served_under_the_budget_that_refuses_one(rows):
    _, row = rows
    assert row["memory_budget_mb"] == BUDGET_MB and row["world_size"] == 2
    assert row["planned_mb"] <= BUDGET_MB and row["peak_load_mb"] <= BUDGET_MB, row
    assert row["wall_ms"] > 0 and row["communication_ms"] > 0
