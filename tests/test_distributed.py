"""Data, tensor and pipeline parallel inference (lmlab.scale.distributed) against the single-process model.

The schemes run for real: torchrun starts 2 gloo ranks on 127.0.0.1 in a subprocess, bounded in time.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from lmlab.cli import main
from lmlab.models.registry import load_model
from lmlab.scale import distributed as D

LAUNCH_TIMEOUT_S = 240
EVAL_DOCUMENTS, BATCH = 48, 8


@pytest.fixture(scope="module")
def small():
    model, data = load_model("gpt-small")
    return model.eval(), data


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_two_ranks_equal_one_process(tmp_path, small):
    out = tmp_path / "rows.json"
    command = [sys.executable, "-m", "lmlab", "parallel", "--scheme", "data", "tensor", "pipeline", "--model",
               "gpt-small", "--nproc-per-node", "2", "--batch-size", str(BATCH), "--documents", str(EVAL_DOCUMENTS),
               "--micro-batches", "2", "--repeat", "1", "--save", str(out)]  # lmlab's CLI, end to end
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "communication_ms" in done.stdout and "backend: gloo" in done.stdout
    rows = {row["scheme"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"data", "tensor", "pipeline"}

    # Data parallel: the all-reduced perplexity is the single-process one, within 1e-9 relative, against the same
    # function on one process here and inside the run; against evaluate_documents within float32's batch sums.
    model, data = small
    head = data.head("test", EVAL_DOCUMENTS)
    single = D.scores(D.score_shard(model, head, "test", BATCH))
    reference = model.evaluate_documents(head, "test", batch_size=BATCH)
    dp = rows["data"]
    assert dp["world_size"] == 2 and dp["tokens"] == single["tokens"] == reference["tokens"]
    assert dp["max_diff"] <= 1e-9
    assert math.isclose(dp["perplexity"], single["perplexity"], rel_tol=1e-9)
    assert math.isclose(dp["accuracy"], single["accuracy"], rel_tol=1e-9)
    assert math.isclose(dp["perplexity"], reference["perplexity"], rel_tol=1e-6)
    assert dp["accuracy"] == reference["accuracy"]

    # Tensor parallel: per-token nll within 1e-4 and the same guesses; pipeline: the logits within 1e-5.
    for scheme in ("tensor", "pipeline"):
        row = rows[scheme]
        assert row["max_diff"] <= (1e-4 if scheme == "tensor" else 1e-5), row
        assert row["communication_ms"] > 0 and row["compute_ms"] > 0
        assert math.isclose(row["speedup"], row["single_ms"] / row["wall_ms"])
        assert 0 < row["communication_share"] < 1


def test_shards_sum_to_the_whole_split(small):
    model, data = small
    head = data.head("test", 40)
    whole = D.score_shard(model, head, "test", 4)
    parts = sum(D.score_shard(model, head, "test", 4, rank, 3) for rank in range(3))
    assert torch.allclose(parts, whole, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="rank=3"):
        D.score_shard(model, head, "test", 4, rank=3, world=3)


def test_tensor_slices_add_up_without_a_group(small):
    # Without a process group the all_reduce is a no-op and each rank adds the bias: Σ_r y_r = y + (N − 1) b.
    model, _ = small
    shards = [D.shard_gpt(model, rank, 2, D.Clock()) for rank in range(2)]
    x = torch.randn(3, 5, model.config.n_embd)  # (batch, time, d)
    block = model.gpt.transformer.h[0]
    with torch.no_grad():
        mlp = sum(s.gpt.transformer.h[0].mlp(x) for s in shards) - block.mlp.c_proj.bias
        attn = sum(s.gpt.transformer.h[0].attn(x)[0] for s in shards) - block.attn.c_proj.bias
        assert torch.allclose(mlp, block.mlp(x), atol=1e-5)
        assert torch.allclose(attn, block.attn(x)[0], atol=1e-5)
    with pytest.raises(ValueError, match="nproc=3"):
        D.shard_gpt(model, 0, 3, D.Clock())


def test_llama_mlp_slices_add_up():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=36, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=9, num_key_value_heads=3)
    model = LlamaForCausalLM(config).eval()
    shards = [D.shard_llama_mlp(model, rank, 2, D.Clock()) for rank in range(2)]
    x = torch.randn(2, 4, 36)
    with torch.no_grad():
        total = sum(s.model.layers[0].mlp(x) for s in shards)
        assert torch.allclose(total, model.model.layers[0].mlp(x), atol=1e-6)
    with pytest.raises(ValueError, match="nproc=5"):
        D.shard_llama_mlp(model, 0, 5, D.Clock())


def test_pipeline_on_one_process_is_the_model(small):
    model, data = small
    inputs, _, mask = next(iter(D.document_batches(data.head("test", 6), "test", 6)))
    with torch.no_grad():
        expected = model.gpt(input_ids=inputs, attention_mask=mask).logits
    assert torch.allclose(D.pipeline_forward(model, inputs, mask, micro_batches=3), expected, atol=1e-5)
    with pytest.raises(ValueError, match="micro_batches=7"):
        D.pipeline_forward(model, inputs, mask, micro_batches=7)


def test_stages_balance_blocks_and_the_output_layer():
    assert D.stage_bounds(4, 1) == [(0, 4)]
    assert D.stage_bounds(4, 2) == [(0, 2), (2, 4)]
    assert D.stage_bounds(4, 2, head_cost=2.6) == [(0, 3), (3, 4)]  # gpt-large: 7973 / (12 · 256) ≈ 2.6 blocks
    assert D.stage_bounds(2, 2, head_cost=5.2) == [(0, 2), (2, 2)]  # gpt-small: the head is a stage of its own


def test_amdahl():
    assert D.amdahl_speedup(1.0, 4) == 4.0
    assert D.amdahl_speedup(0.0, 4) == 1.0
    assert math.isclose(D.amdahl_speedup(0.9, 2), 1 / 0.55)
    with pytest.raises(ValueError, match="parallel_fraction=1.5"):
        D.amdahl_speedup(1.5, 2)
    with pytest.raises(ValueError, match="n=0"):
        D.amdahl_speedup(0.5, 0)


@pytest.mark.parametrize("argv, named", [
    (["--scheme", "sharded"], "scheme='sharded'"),
    (["--model", "gpt-huge"], "model='gpt-huge'"),
    (["--nproc-per-node", "0"], "nproc_per_node=0"),
    (["--nnodes", "2"], "rdzv_endpoint"),
    (["--scheme", "tensor", "--model", "gpt-medium", "--nproc-per-node", "4"], "6 heads"),
    (["--micro-batches", "9", "--batch-size", "8"], "micro_batches=9"),
    (["--documents", "0"], "documents=0"),
])
def test_cli_refuses_bad_arguments(argv, named, capsys):
    assert main(["parallel", *argv]) == 2
    assert named in capsys.readouterr().err


def test_torchrun_command_for_several_machines():
    command = D.torchrun_command("pipeline", "gpt-large", 2, nnodes=2, rdzv_endpoint="10.0.0.1:29400")
    assert "--standalone" not in command
    assert command[command.index("--rdzv-endpoint") + 1] == "10.0.0.1:29400"
    assert command[command.index("--nnodes") + 1] == "2"
    assert "--standalone" in D.torchrun_command("data", "gpt-small", 1)


def test_the_scaling_model_lives_in_scaling():
    # fit_allreduce, ring_allreduce_ms and scaling_model moved to lmlab.scale.scaling (tests/test_scaling.py tests
    # them); the old names still import from here.
    from lmlab.scale import scaling

    assert D.scaling_model is scaling.scaling_model and D.fit_allreduce is scaling.fit_allreduce
    assert D.ring_allreduce_ms(4e6, 8, 0.3, 1e-6) == pytest.approx(7 * 0.3 + 2 * 7 / 8 * 4.0)


def test_llama_parameter_count_is_exact():
    from transformers import LlamaConfig, LlamaForCausalLM

    for tied in (True, False):
        config = LlamaConfig(hidden_size=48, num_hidden_layers=2, intermediate_size=96, num_attention_heads=6,
                             num_key_value_heads=2, vocab_size=100, tie_word_embeddings=tied)
        expected = LlamaForCausalLM(config).num_parameters()
        assert D.llama_parameters(48, 2, 96, 6, 2, 100, tied) == expected
    assert D.llama_parameters(576, 30, 1536, 9, 3, 49152, True) == 134_515_008  # SmolLM2-135M: its num_parameters()
    with pytest.raises(ValueError, match="kv_heads"):
        D.llama_parameters(48, 2, 96, 6, 4, 100, True)


def test_run_parallel_refuses_bad_schemes_before_launching():
    with pytest.raises(ValueError, match="scheme='ring'"):
        D.run_parallel(["data", "ring"], "gpt-small")
    command = D.torchrun_command(["data", "tensor"], "gpt-small")
    assert command[command.index("--scheme"):][:4] == ["--scheme", "data", "tensor", "--model"]


def test_smollm2_windows_shard_exactly_and_its_mlp_split_gives_its_logits():
    from lmlab.models.pretrained import load_smollm2

    model, tokenizer = load_smollm2()
    windows = D.smollm2_windows(tokenizer, documents=12, window=32)
    whole = D.score_windows(model, windows, batch_size=2)
    parts = sum(D.score_windows(model, windows, 2, rank, 2) for rank in range(2))
    assert torch.allclose(parts, whole, rtol=1e-12, atol=0) and whole[2] == windows.numel() - len(windows)
    assert D.scores(whole)["perplexity"] < 100  # SmolLM2 reads the King James text well
    # Without a group each rank's RowParallel sums only its own units; the two ranks' MLP outputs add to the whole.
    shards = [D.shard_llama_mlp(model, rank, 2, D.Clock()) for rank in range(2)]
    x = torch.randn(1, 3, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        total, whole = sum(s.model.layers[5].mlp(x) for s in shards), model.model.layers[5].mlp(x)
        assert (total - whole).abs().max() <= 1e-5 * whole.abs().max()  # float32 sums in another order
    with pytest.raises(ValueError, match="scheme='pipeline' runs on the shipped GPTs"):
        D.torchrun_command("pipeline", "smollm2")
    with pytest.raises(ValueError, match="1536 MLP units"):
        D.torchrun_command("tensor", "smollm2", 5)


def test_the_slowest_ranks_compute_is_its_wall_minus_its_own_communication():
    # rank 0 waited 40 ms for rank 1 (slowest: 100 ms, 10 ms of it communicating); the mean, 25 ms, is neither's
    wall_ms, compute_ms, communication_ms = D.slowest_rank([(90.0, 40.0), (100.0, 10.0)])
    assert (wall_ms, compute_ms, communication_ms) == (100.0, 90.0, 10.0)
    assert D.slowest_rank([(5.0, 1.0)]) == (5.0, 4.0, 1.0)
    with pytest.raises(ValueError, match="shares is empty"):
        D.slowest_rank([])
    with pytest.raises(ValueError, match=r"shares\[1\]=\(2.0, 3.0\)"):
        D.slowest_rank([(5.0, 1.0), (2.0, 3.0)])
