"""lmlab.measure.hardware: bandwidth and matmul measurements, the decode floor, weight bytes and the roofline."""

import math

import pytest
import torch
from matplotlib.figure import Figure

from lmlab.measure.hardware import (
    FORMATS,
    GPU_SPECS,
    Bandwidth,
    Throughput,
    arithmetic_intensity,
    decode_floor_ms,
    matmul_gflops,
    memory_bandwidth,
    predicted_decode_ms,
    roofline_plot,
    weight_bytes,
)
from lmlab.models.kinds import build_model
from lmlab.models.neural import decode_flops, parameter_count


def test_memory_bandwidth_is_positive_and_finite():
    bw = memory_bandwidth(threads=1, buffer_mb=32, repeat=2)
    assert isinstance(bw, Bandwidth)
    for gbs in (bw.read_gbs, bw.copy_gbs):
        assert math.isfinite(gbs) and gbs > 0
    assert (bw.threads, bw.buffer_mb, bw.repeat) == (1, 32.0, 2)
    assert "GB/s" in str(bw) and "1 thread," in str(bw) and "median of 2" in str(bw)


def test_matmul_gflops_is_positive_and_finite_for_both_dtypes():
    for dtype, name in ((torch.float32, "float32"), (torch.bfloat16, "bfloat16")):
        tp = matmul_gflops(n=128, dtype=dtype, threads=1, repeat=2)
        assert isinstance(tp, Throughput)
        assert math.isfinite(tp.gflops) and tp.gflops > 0
        assert tp.gflops == pytest.approx(2 * 128**3 / (tp.median_ms * 1e-3) / 1e9)
        assert (tp.n, tp.dtype, tp.threads) == (128, name, 1)
        assert "GFLOP/s" in str(tp)


def test_matmul_leaves_the_global_seed_alone():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    matmul_gflops(n=16, repeat=1)
    assert torch.equal(torch.rand(4), expected)


def test_decode_floor_is_the_formula():
    assert decode_floor_ms(10**9, 10.0) == 100.0  # 1 GB at 10 GB/s
    assert decode_floor_ms(6 * 10**8, 100.0, kv_cache_bytes=4 * 10**8) == 10.0
    assert decode_floor_ms(0, 1.0) == 0.0
    # the weights are read once per step, whatever the batch
    assert decode_floor_ms(10**9, 10.0, batch_size=8) == decode_floor_ms(10**9, 10.0)


def test_arithmetic_intensity_and_decode_flops(names_gpt):
    assert arithmetic_intensity(2e9, 1e9) == 2.0
    gpt = names_gpt.gpt
    matrices = sum(m.weight.numel() for m in gpt.transformer.h.modules() if hasattr(m, "nf"))  # Conv1D
    matrices += gpt.lm_head.weight.numel()  # the tied output layer multiplies by the whole embedding
    assert decode_flops(names_gpt) == 2 * matrices
    assert decode_flops(names_gpt, tokens=5) == 5 * decode_flops(names_gpt)


def test_weight_bytes_counts_tied_weights_once(names_gpt):
    gpt = names_gpt.gpt
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    params = parameter_count(names_gpt)
    with_tied_twice = sum(p.numel() for _, p in names_gpt.named_parameters(remove_duplicate=False))
    assert with_tied_twice > params
    f32 = weight_bytes(names_gpt)
    assert f32 == weight_bytes(names_gpt, "float32") == 4 * params
    assert weight_bytes(names_gpt, "bfloat16") * 2 == f32
    assert 0.25 * f32 < weight_bytes(names_gpt, "int8") < 0.32 * f32  # 1 + 4/32 bytes per weight, vectors in float32
    assert 0.125 * f32 < weight_bytes(names_gpt, "int4") < weight_bytes(names_gpt, "int8")


def test_weight_bytes_int8_keeps_vectors_in_float32():
    layer = torch.nn.Linear(256, 4)  # 1024 weights: 16 blocks of 64 (int8), 32 of 32 (int4); 4 biases
    assert weight_bytes(layer, "int8") == 1024 + 16 * 4 + 4 * 4
    assert weight_bytes(layer, "int4") == 512 + 32 * 4 + 4 * 4
    assert FORMATS == ("float32", "bfloat16", "int8", "int4")


def test_an_untied_model_counts_both_matrices(names_data):
    torch.manual_seed(0)
    untied = build_model("gpt", names_data.vocab, n_layer=1, n_embd=16, n_head=2, n_positions=8)
    tied_bytes = weight_bytes(untied)
    untied.gpt.lm_head.weight = torch.nn.Parameter(untied.gpt.lm_head.weight.detach().clone())
    extra = untied.gpt.lm_head.weight.numel()
    assert weight_bytes(untied) == tied_bytes + 4 * extra
    assert weight_bytes(untied) == 4 * parameter_count(untied)


def test_predicted_decode_ms_uses_the_data_sheet():
    for gpu, bandwidth_gbs in GPU_SPECS.items():
        assert predicted_decode_ms(2 * 10**9, gpu) == pytest.approx(2e9 / (bandwidth_gbs * 1e9) * 1e3, rel=1e-12)
    assert predicted_decode_ms(3350 * 10**6, "NVIDIA H100 SXM") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="gpu"):
        predicted_decode_ms(10**9, "NVIDIA Imaginary 9000")


def test_roofline_plot_draws_log_axes():
    fig = roofline_plot(100.0, 20.0, [("decode", 0.5, 9.0), ("matmul 1024", 170.0, 80.0)], hardware="test CPU")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    texts = {t.get_text() for t in ax.texts}
    assert {"memory-bound", "compute-bound", "overhead-bound"} <= texts  # every region the plot shades is named
    keys = [t.get_text() for t in fig.legends[0].get_texts()]  # points are keyed by colour, not labelled beside
    assert "decode: memory-bound" in keys and "matmul 1024: compute-bound" in keys
    assert len(ax.collections) >= 3  # the three shaded regions
    assert any(t.startswith("ridge: 5 FLOP/byte") for t in texts)
    assert "test CPU" in ax.get_title()
    assert "FLOP/byte" in ax.get_xlabel() and "GFLOP/s" in ax.get_ylabel()
    empty = roofline_plot(100.0, 20.0, [])  # the roof alone
    assert len(empty.axes) == 1


@pytest.mark.parametrize("call, argname", [
    (lambda: memory_bandwidth(threads=0, buffer_mb=16), "threads"),
    (lambda: memory_bandwidth(buffer_mb=8), "buffer_mb"),
    (lambda: memory_bandwidth(buffer_mb=10_000), "buffer_mb"),
    (lambda: memory_bandwidth(buffer_mb=float("nan")), "buffer_mb"),
    (lambda: memory_bandwidth(buffer_mb=16, repeat=0), "repeat"),
    (lambda: matmul_gflops(n=8), "n"),
    (lambda: matmul_gflops(n=10_000), "n"),
    (lambda: matmul_gflops(n=64, dtype=torch.float16), "dtype"),
    (lambda: matmul_gflops(n=64, threads=0), "threads"),
    (lambda: matmul_gflops(n=64, repeat=0), "repeat"),
    (lambda: weight_bytes(torch.nn.Linear(2, 2), "int3"), "fmt"),
    (lambda: weight_bytes("not a model"), "model"),
    (lambda: decode_floor_ms(-1, 10.0), "weight_bytes"),
    (lambda: decode_floor_ms(10, 0.0), "bandwidth_gbs"),
    (lambda: decode_floor_ms(10, -5.0), "bandwidth_gbs"),
    (lambda: decode_floor_ms(10, float("inf")), "bandwidth_gbs"),
    (lambda: decode_floor_ms(10, 10.0, kv_cache_bytes=-1), "kv_cache_bytes"),
    (lambda: decode_floor_ms(10, 10.0, batch_size=0), "batch_size"),
    (lambda: arithmetic_intensity(1.0, 0.0), "bytes_moved"),
    (lambda: arithmetic_intensity(-1.0, 1.0), "flops"),
    (lambda: decode_flops(torch.nn.Linear(2, 2), tokens=0), "tokens"),
    (lambda: roofline_plot(0.0, 10.0, []), "peak_gflops"),
    (lambda: roofline_plot(10.0, -1.0, []), "bandwidth_gbs"),
    (lambda: roofline_plot(10.0, 1.0, [("x", 0.0, 1.0)]), "intensity"),
    (lambda: roofline_plot(10.0, 1.0, [("x", 1.0, -2.0)]), "gflops"),
    (lambda: roofline_plot(10.0, 1.0, [("x", 1.0)]), "points"),
])
def test_bad_input_raises_a_value_error_naming_the_argument(call, argname):
    with pytest.raises(ValueError, match=argname):
        call()


def test_regime_follows_the_roofline():
    from lmlab.measure.hardware import regime

    # Ridge at 100 GFLOP/s / 20 GB/s = 5 FLOP/byte.
    assert regime(50, 90, 100, 20) == "compute-bound"
    assert regime(0.5, 8, 100, 20) == "memory-bound"  # roof 10 GFLOP/s, 80% of it reached
    assert regime(0.5, 2, 100, 20) == "overhead-bound"  # 20% of the roof
    # One rule on both sides of the ridge: a point under `reached` of its roof is overhead-bound wherever it sits.
    assert regime(50, 35, 100, 20) == "overhead-bound"  # right of the ridge, 35% of the peak
    assert regime(50, 50, 100, 20) == "compute-bound"  # exactly half of the peak
    assert regime(0.5, 4.7, 100, 20) == "overhead-bound"  # 47% of its roof
    assert regime(0.5, 5, 100, 20) == "memory-bound"  # exactly half of its roof
    assert regime(5, 50, 100, 20) == "memory-bound"  # at the ridge: both roofs meet, the memory side holds it
    with pytest.raises(ValueError, match="reached"):
        regime(0.5, 2, 100, 20, reached=1.5)
    with pytest.raises(ValueError, match="bandwidth_gbs"):
        regime(0.5, 2, 100, 0)


def test_linear_rows_ms_times_one_weight_at_each_row_count():
    from lmlab.measure.hardware import linear_rows_ms

    timings = linear_rows_ms(64, 96, (1, 2, 4), threads=1, repeat=3)
    assert list(timings) == [1, 2, 4]
    assert all(t.repeat == 3 and t.threads == 1 and t.median_ms > 0 for t in timings.values())
    for call, argname in ((lambda: linear_rows_ms(0, 8, (1,)), "in_features"),
                          (lambda: linear_rows_ms(8, 8, ()), "rows"),
                          (lambda: linear_rows_ms(8, 8, (1, 0)), "rows"),
                          (lambda: linear_rows_ms(8, 8, (1,), repeat=0), "repeat")):
        with pytest.raises(ValueError, match=argname):
            call()


def test_gpu_decode_run_keeps_one_run_and_one_statistic_per_column():
    from lmlab.measure.hardware import gpu_decode_run, gpu_rows

    rows = gpu_rows("decode")
    for file in rows.file.unique():
        run = gpu_decode_run(file)
        assert set(run.file) == {file} and len(run) == (rows.file == file).sum()
        share = run.floor_ms / run.step_ms  # the floor over the forward alone, only where the run timed it
        assert run.floor_share.equals(share)
    with pytest.raises(ValueError, match="file"):
        gpu_decode_run("no-such-run.json")
