"""Pipeline parallelism (lmlab.scale.pipeline): stages that load only their layers, GPipe and 1F1B training.

One real torchrun launch (2 gloo ranks on 127.0.0.1, bounded in time) runs the inference pipeline and both
training schedules on gpt-large; the rest runs on one process, without a group.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from lmlab.data.corpora import document_batches
from lmlab.data.shipped import DATA_DIR
from lmlab.models.checkpoints import load_checkpoint
from lmlab.scale import distributed as D
from lmlab.scale import pipeline as P

LAUNCH_TIMEOUT_S = 240
BATCH, MICRO = 8, 4  # m = 4 > p = 2: GPipe holds 4 micro-batches' activations, 1F1B at most p − r
LOSS_TOL = GRAD_TOL = 1e-5  # absolute, float32; measured about 3e-7 (loss) and 2e-7 (gradients)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One torchrun: the inference pipeline, then GPipe and 1F1B training, on gpt-large, 2 ranks."""
    out = tmp_path_factory.mktemp("pipeline") / "rows.json"
    command = D.torchrun_command(["pipeline", "gpipe", "1f1b"], "gpt-large", 2, batch_size=BATCH,
                                 micro_batches=MICRO, repeat=1, save=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return {row["scheme"]: row for row in json.loads(out.read_text())}


def test_inference_pipeline_of_stages_gives_the_whole_models_logits(launched):
    row = launched["pipeline"]
    assert row["world_size"] == 2 and row["max_diff"] <= 1e-5, row


@pytest.mark.parametrize("schedule", P.SCHEDULES)
def test_both_schedules_train_as_one_process(launched, schedule):
    row = launched[schedule]
    assert row["world_size"] == 2 and row["micro_batches"] == MICRO and row["batch_size"] == BATCH
    assert row["max_loss_diff"] <= LOSS_TOL and row["max_grad_diff"] <= GRAD_TOL, row
    assert abs(row["loss"] - row["single_loss"]) <= LOSS_TOL
    assert row["bubble_predicted"] == pytest.approx(1 / 5)  # (p − 1) / (m + p − 1)
    assert all(0 <= b < 1 for b in row["bubble_measured"])
    # Each stage holds less than the whole model; together they hold it once, plus the last stage's copy of wte
    # (the tied output layer): vocab · d float32s.
    whole, held = row["whole_parameter_bytes"], row["parameter_bytes"]
    assert all(b < whole for b in held)
    assert sum(held) == whole + 7973 * 256 * 4


def test_1f1b_holds_fewer_activations_than_gpipe(launched):
    assert launched["gpipe"]["peak_activations"] == [MICRO, MICRO]
    assert launched["1f1b"]["peak_activations"] == [2, 1]  # p − r


def test_schedules_order_forwards_and_backwards():
    assert P.schedule_order("gpipe", 0, 2, 2) == [("F", 0), ("F", 1), ("B", 0), ("B", 1)]
    assert P.schedule_order("1f1b", 0, 3, 4) == [("F", 0), ("F", 1), ("F", 2), ("B", 0), ("F", 3), ("B", 1),
                                                 ("B", 2), ("B", 3)]
    assert P.schedule_order("1f1b", 2, 3, 2) == [("F", 0), ("B", 0), ("F", 1), ("B", 1)]
    for p in (1, 2, 4):
        for m in (1, 3, 8):
            for r in range(p):
                assert P.peak_activations(P.schedule_order("gpipe", r, p, m)) == m
                assert P.peak_activations(P.schedule_order("1f1b", r, p, m)) == min(p - r, m)
                assert sorted(P.schedule_order("1f1b", r, p, m)) == sorted(P.schedule_order("gpipe", r, p, m))
    assert P.bubble_predicted(1, 4) == 0 and P.bubble_predicted(4, 1) == 3 / 4 and P.bubble_predicted(2, 8) == 1 / 9


def test_stage_bounds_moved_and_still_importable():
    assert D.stage_bounds is P.stage_bounds and D.pipeline_forward is P.pipeline_forward
    assert P.stage_bounds(4, 2, head_cost=2.6) == [(0, 3), (3, 4)]


def test_a_stage_reads_only_its_tensors():
    first, last = P.load_stage("gpt-large", 0, 2), P.load_stage("gpt-large", 1, 2)
    assert {k.split(".")[0] for k in first.state_dict()} == {"wte", "wpe", "h"} and list(first.h) == ["0", "1", "2"]
    assert {k.split(".")[0] for k in last.state_dict()} == {"wte", "h", "ln_f"} and list(last.h) == ["3"]
    model = load_checkpoint(DATA_DIR / "gpt-large")
    assert torch.equal(last.h["3"].mlp.c_fc.weight, model.gpt.transformer.h[3].mlp.c_fc.weight)
    assert P.load_stage("gpt-large", 0, 1).parameter_bytes == P.whole_parameter_bytes("gpt-large")


@pytest.mark.parametrize("schedule", P.SCHEDULES)
def test_one_process_step_equals_the_whole_models_gradients(schedule):
    stage = P.load_stage("gpt-small", 0, 1)
    model = load_checkpoint(DATA_DIR / "gpt-small")
    inputs, targets, mask = next(document_batches(P.stage_corpus("gpt-small"), "train", 6, max_len=128))
    step = P.pipeline_train_step(stage, inputs, targets, mask, micro_batches=4, schedule=schedule)
    logits = model.gpt(input_ids=inputs, attention_mask=mask).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss.backward()  # the mean over the batch's tokens
    assert abs(step["loss"] - float(loss.detach())) <= LOSS_TOL
    assert step["peak_activations"] == (4 if schedule == "gpipe" else 1)
    for name, p in model.gpt.named_parameters():
        got = stage.get_parameter(name.removeprefix("transformer.")).grad
        assert got is not None and float((got - p.grad).abs().max()) <= GRAD_TOL, name


def test_bad_arguments_are_refused_by_name():
    stage = P.load_stage("gpt-small", 0, 1)
    batch = torch.zeros(3, 5, dtype=torch.long)
    for bad in (0, 4):
        with pytest.raises(ValueError, match=f"micro_batches={bad}"):
            P.pipeline_train_step(stage, batch, batch, batch, micro_batches=bad)
    with pytest.raises(ValueError, match="schedule='zigzag'"):
        P.pipeline_train_step(stage, batch, batch, batch, micro_batches=1, schedule="zigzag")
    with pytest.raises(ValueError, match="schedule='zigzag'"):
        P.run_pipeline_training("gpt-small", "zigzag")
    with pytest.raises(ValueError, match="rank=2"):
        P.load_stage("gpt-small", 2, 2)
    with pytest.raises(ValueError, match="model='smollm2'"):
        P.load_stage("smollm2", 0, 1)
    with pytest.raises(ValueError, match="micro_batches=9"):
        D.torchrun_command("gpipe", "gpt-large", 2, batch_size=8, micro_batches=[2, 9])
    with pytest.raises(ValueError, match="scheme='pipeline' runs on the shipped GPTs"):
        D.torchrun_command("1f1b", "smollm2")
