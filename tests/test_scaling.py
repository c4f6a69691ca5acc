"""The scaling model (lmlab.scale.scaling): its formulas on small synthetic examples, its caps, and its predictions
against a STORED measured run (data/bench/parallel-rows.json), never live timings. No torchrun here."""

from __future__ import annotations

import pytest

from lmlab.scale import distributed as D
from lmlab.scale import scaling as S

# The stored run and how closely the model must reproduce its measured points at 2 ranks: |predicted / measured − 1|.
# The stored run was measured on 2 shared vCPUs (noisy); re-measure with benchmarks/bench_scaling.py.
STORED = S.STORED_ROWS
WALL_BOUND = 0.25
SMALL_MESSAGE_BOUND = 1.5  # the relative fit's 1 KB all-reduce point: fitted / measured within [1/1.5, 1.5]

CONFIG = {"n_layer": 2, "n_embd": 4, "n_head": 4, "vocab_size": 48, "n_positions": 8}


def _params(**over) -> dict:
    work = [{"positions": p, "tokens": p - 1} for p in (10, 30, 20, 40)]
    return {"config": CONFIG, "a_ms": 0.5, "b_ms_per_byte": 1e-3, "p2p_a_ms": 0.1, "p2p_b_ms_per_byte": 1e-3,
            "kappa": 0.1, "batches": work, "batch": 4, "time": 2, "micro_batches": 2, "vocab_parallel": False,
            **over}


@pytest.fixture(scope="module")
def stored():
    return S.stored_parameters(STORED)


def test_ring_allreduce_has_its_latency_term():
    assert S.ring_allreduce_ms(4e6, 2, 0.3, 1e-6) == pytest.approx(0.3 + 4.0)
    assert S.ring_allreduce_ms(4e6, 8, 0.3, 1e-6) == pytest.approx(7 * 0.3 + 2 * 7 / 8 * 4.0)
    assert S.ring_allreduce_ms(4e6, 1, 0.3, 1e-6) == 0
    with pytest.raises(ValueError, match="n=0"):
        S.ring_allreduce_ms(1.0, 0, 0.3, 1e-6)


def test_fit_recovers_a_line_and_fits_the_small_message(stored):
    line = [{"scheme": "allreduce", "bytes": b, "world_size": 2, "median_ms": 0.3 + 1e-6 * b}
            for b in (1_000, 100_000, 10_000_000)]
    a, b = S.fit_allreduce(line)
    assert a == pytest.approx(0.3, rel=1e-9) and b == pytest.approx(1e-6, rel=1e-9)
    with pytest.raises(ValueError, match="2 ranks"):
        S.fit_allreduce(line[:1])
    rows = [r for r in stored[0] if r["scheme"] == "allreduce"]
    a, b = S.fit_allreduce(rows)
    small = S.fit_residuals(rows, "allreduce", a, b)[0]
    assert small["bytes"] == min(r["bytes"] for r in rows)
    assert 1 / SMALL_MESSAGE_BOUND <= small["fitted_over_measured"] <= SMALL_MESSAGE_BOUND, small
    a2, b2 = S.fit_latency([r for r in stored[0] if r["scheme"] == "sendrecv"], "sendrecv")
    assert a2 > 0 and b2 > 0


def test_imbalance_and_contention_are_exact():
    work = _params()["batches"]  # positions 10, 30, 20, 40: rank 0 of 2 takes 10 + 20, rank 1 30 + 40
    assert S.rank_shares(work, 2) == pytest.approx([0.3, 0.7])
    assert S.rank_shares(work, 4) == pytest.approx([0.1, 0.3, 0.2, 0.4])
    assert S.contention(77.0, 100.0, 0.7) == pytest.approx(0.1)  # 77 / (100 · 0.7) − 1
    row = {"scheme": "data", "world_size": 2, "single_ms": 100.0}
    two = S.scaling_model(row, 2, _params())
    assert two["compute_ms"] == pytest.approx(100 * 0.7 * 1.1)
    assert two["communication_ms"] == pytest.approx(0.5 + 1e-3 * 24)  # one all-reduce of 3 float64
    assert two["waiting_ms"] == pytest.approx(100 * (0.7 - 0.3) * 1.1)  # rank 0 idles: waiting, not communication
    assert two["wall_ms"] == pytest.approx(77.0 + 0.524) and two["kind"] == "model"
    four = S.scaling_model(row, 4, _params())
    assert four["wall_ms"] == pytest.approx(100 * 0.4 * 1.1 + 3 * 0.5 + 2 * 3 / 4 * 1e-3 * 24)
    assert S.scaling_model(row, 1, _params())["wall_ms"] == pytest.approx(100.0)  # one process: no contention


def test_tensor_pipeline_and_ddp_formulas():
    p = _params()
    macs = S.macs_per_token(CONFIG, 2)  # block 12 · 16 + 2 · 2 · 4 = 208, head 48 · 4 = 192
    assert (macs["block"], macs["blocks"], macs["head"]) == (208, 416, 192)
    tensor = S.scaling_model({"scheme": "tensor", "single_ms": 100.0}, 2, p)
    r = 192 / 608
    message = 4 * 2 * 4 * 4  # batch · time · d · 4 bytes
    assert tensor["compute_ms"] == pytest.approx(100 * (r + (1 - r) / 2) * 1.1)
    assert tensor["communication_ms"] == pytest.approx(2 * 2 * (0.5 + 1e-3 * message))
    vocab = S.scaling_model({"scheme": "tensor", "single_ms": 100.0}, 2, {**p, "vocab_parallel": True})
    assert vocab["compute_ms"] == pytest.approx(100 / 2 * 1.1) and vocab["repeated_share"] == 0
    pipe = S.scaling_model({"scheme": "pipeline", "single_ms": 100.0}, 2, p)
    head = 48 / 48  # vocab / (12 d): the output layer costs one block; stages: 2 blocks, then the head
    step = 100 / 2 * 2 / (2 + head) * 1.1
    assert pipe["bubble_share"] == pytest.approx(1 / 3) and pipe["bubble_ms"] == pytest.approx(step)
    assert pipe["wall_ms"] == pytest.approx(3 * step + 0.1 + 1e-3 * 2 * 2 * 4 * 4)
    assert S.scaling_model({"scheme": "pipeline", "single_ms": 100.0}, 1, p)["wall_ms"] == pytest.approx(100.0)
    ddp = {"scheme": "ddp", "world_size": 2, "single_step_ms": 100.0, "parameters": 1000, "global_batch": 8,
           "step_ms": 60.0}
    step2 = S.scaling_model(ddp, 2, p)
    grads = 0.5 + 1e-3 * 4000
    assert step2["no_overlap_ms"] == pytest.approx(55 + grads)
    assert step2["wall_ms"] == pytest.approx(max(55, 55 / 3 + grads))
    update = S.scaling_model({**ddp, "single_optimizer_ms": 10.0}, 2, p)  # every rank repeats the update
    assert update["wall_ms"] == pytest.approx(max(49.5, 49.5 / 3 + grads) + 10.0)
    checked = S.check_model([ddp, {"scheme": "allreduce", "bytes": 4, "world_size": 2}], p)  # DDP's row accepted
    assert len(checked) == 1 and checked[0]["relative_error"] == pytest.approx(step2["wall_ms"] / 60 - 1)


def test_caps_refuse():
    p = _params()
    with pytest.raises(ValueError, match=r"n=3 .*4 heads"):
        S.scaling_model({"scheme": "tensor", "single_ms": 1.0}, 3, p)
    with pytest.raises(ValueError, match=r"n=8 .*cap 4"):
        S.scaling_model({"scheme": "tensor", "single_ms": 1.0}, 8, p)
    with pytest.raises(ValueError, match=r"n=3 .*2 blocks"):
        S.scaling_model({"scheme": "pipeline", "single_ms": 1.0}, 3, p)
    with pytest.raises(ValueError, match=r"n=5 .*4 batches"):
        S.scaling_model({"scheme": "data", "single_ms": 1.0}, 5, p)
    with pytest.raises(ValueError, match=r"n=9 .*8 documents"):
        S.scaling_model({"scheme": "ddp", "single_step_ms": 1.0, "parameters": 1, "global_batch": 8}, 9, p)
    with pytest.raises(ValueError, match="allreduce"):
        S.scaling_model({"scheme": "allreduce"}, 2, p)
    assert S.scheme_cap("tensor", p) == (4, "4 heads: N must divide them")
    curve = S.model_curve({"scheme": "tensor", "single_ms": 1.0}, p, [1, 2, 3, 4, 8, 16])
    assert [r["n"] for r in curve] == [1, 2, 4] and {r["kind"] for r in curve} == {"model"}


def test_the_model_reproduces_the_stored_run(stored):
    rows, params = stored
    checks = {c["scheme"]: c for c in S.check_model(rows, params)}
    assert set(checks) == {"data", "tensor", "pipeline"}
    assert checks["data"]["kappa_from_here"] and checks["data"]["relative_error"] == pytest.approx(0, abs=1e-12)
    for scheme, check in checks.items():
        assert abs(check["relative_error"]) <= WALL_BOUND, check
        parts = check["compute_ms"] + check["communication_ms"] + check["bubble_ms"]
        assert parts == pytest.approx(check["predicted_ms"]), scheme
    assert params["config"]["n_head"] == 8 and 0 <= params["kappa"] < 1


def test_distributed_keeps_the_moved_names():
    for name in ("fit_allreduce", "ring_allreduce_ms", "amdahl_speedup", "scaling_model", "stage_bounds"):
        assert getattr(D, name) is getattr(S, name)


def test_tensor_parallel_devices_for_the_405b():
    params, kv = D.llama_parameters(16384, 126, 53248, 128, 8, 128256, False), 126 * 2 * 16384 * 1024
    bf16 = S.tensor_parallel_devices(params, 2, 80e9, 128, 8, kv)
    assert bf16["fits_on"] == 11 and bf16["devices"] == 16  # 11 do not divide 128 heads; 16 do
    assert bf16["kv_copies"] == 2 and bf16["heads_per_device"] == 8
    assert bf16["bytes_per_device"] == pytest.approx(((params - kv) / 16 + kv / 8) * 2)
    assert S.tensor_parallel_devices(params, 1, 80e9, 128, 8)["devices"] == 8  # 6 would hold it
    assert S.tensor_parallel_devices(params, 4, 80e9, 128, 8)["devices"] == 32
    assert S.tensor_parallel_devices(1000, 4, 1e6, 128, 8)["devices"] == 1
    with pytest.raises(ValueError, match="pipeline"):
        S.tensor_parallel_devices(params, 4, 1e9, 128, 8)
    with pytest.raises(ValueError, match="kv_heads=3"):
        S.tensor_parallel_devices(params, 4, 80e9, 128, 3)
