"""q(x) = round(x / Q) · Q and the b-bit grids built on it: properties, agreement with torch, clear errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from lmlab.compress.quantize import choose_grid, fake_quantize, model_bytes, quantize, quantize_model
from lmlab.models.neural import weight_layers

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)
steps = st.floats(1e-4, 1e3, allow_nan=False, allow_infinity=False)
tensors = arrays(np.float64, st.integers(1, 64), elements=finite).map(torch.from_numpy)
EDGES = torch.tensor([0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, 1e-300, -1e-300, 1e300, -1e300, 5e-324],
                     dtype=torch.float64)


@settings(max_examples=300, deadline=None)
@given(x=tensors, Q=steps)
def test_error_is_at_most_half_a_step(x, Q):
    # Up to the rounding of x / Q itself: a few ulps of x.
    slack = 4 * torch.finfo(torch.float64).eps * x.abs()
    assert ((quantize(x, Q) - x).abs() <= Q / 2 * (1 + 1e-12) + slack).all()


@settings(max_examples=300, deadline=None)
@given(x=tensors, Q=steps)
def test_quantizing_twice_changes_nothing(x, Q):
    once = quantize(x, Q)
    assert torch.equal(quantize(once, Q), once)


@settings(max_examples=300, deadline=None)
@given(x=tensors, Q=steps)
def test_result_is_a_whole_number_of_steps(x, Q):
    k = quantize(x, Q) / Q
    assert torch.allclose(k, torch.round(k), rtol=1e-12, atol=0)


@pytest.mark.parametrize("Q", [1.0, 0.1, 3e-3, 7.0])
def test_edge_values(Q):
    q = quantize(EDGES, Q)
    assert ((q - EDGES).abs() <= Q / 2 + 4 * torch.finfo(torch.float64).eps * EDGES.abs()).all()
    assert torch.equal(quantize(q, Q), q)
    assert quantize(torch.tensor([0.0]), Q).item() == 0.0


def test_ties_round_to_the_even_multiple():
    assert quantize(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5]), 1.0).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0]


def test_nan_and_inf_pass_through_as_documented():
    q = quantize(torch.tensor([math.nan, math.inf, -math.inf, 1.26]), 0.5)
    assert math.isnan(q[0]) and q[1] == math.inf and q[2] == -math.inf and q[3] == 1.5
    with pytest.raises(ValueError, match="NaN or inf"):
        fake_quantize(torch.tensor([1.0, math.nan]), bits=8)


def test_per_channel_steps_broadcast():
    x = torch.tensor([[0.26, -0.74], [2.6, 7.4]])
    assert torch.equal(quantize(x, torch.tensor([[0.5], [2.0]])), torch.tensor([[0.5, -0.5], [2.0, 8.0]]))


@pytest.mark.parametrize("Q", [0, -1.0, math.nan, math.inf, torch.tensor([0.1, 0.0]), True, "0.1"])
def test_bad_step_is_a_clear_error(Q):
    with pytest.raises(ValueError, match="step_Q="):
        quantize(torch.ones(2), Q)


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 2.5, None])
def test_bits_outside_the_supported_range_are_clear_errors(bits):
    with pytest.raises(ValueError, match=r"bits=.*\[2, 8\]"):
        fake_quantize(torch.ones(4), bits)


def test_unknown_granularity_and_bad_groups_are_clear_errors():
    w = torch.randn(4, 24)
    with pytest.raises(ValueError, match="granularity='row'"):
        fake_quantize(w, 8, granularity="row")
    with pytest.raises(ValueError, match="group_size=32 does not divide the 24 weights"):
        fake_quantize(w, 8, granularity="group", group_size=32)
    with pytest.raises(ValueError, match="group_size=None"):
        fake_quantize(w, 8, granularity="group")
    with pytest.raises(ValueError, match="group_size=0"):
        fake_quantize(w, 8, granularity="group", group_size=0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity, group_size", [("tensor", None), ("channel", None), ("group", 8)])
def test_grid_has_at_most_2_to_the_bits_levels_and_error_within_half_a_step(bits, symmetric, granularity,
                                                                              group_size):
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(bits))
    grid = choose_grid(w, bits, symmetric, granularity, group_size)
    codes = grid.codes(w)
    assert torch.equal(codes, torch.round(codes)) and codes.min() >= grid.low and codes.max() <= grid.high
    assert grid.high - grid.low + 1 <= 2**bits
    q = grid.dequantize(codes, w.shape)
    step = grid.step_Q.expand_as(grid.grouped(w)).reshape(w.shape)
    assert ((q - w).abs() <= step / 2 * (1 + 1e-5)).all()  # nothing is clipped: the range covers x
    for group_codes in codes.reshape(grid.scales, -1):
        assert len(group_codes.unique()) <= 2**bits


def test_finer_granularity_has_smaller_error_on_a_matrix_with_an_outlier():
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    w[3, 7] = 40.0  # one outlier stretches the per-tensor step for every other weight
    errors = {g: ((fake_quantize(w, 4, granularity=g, group_size=32) - w) ** 2).mean().item()
              for g in ("tensor", "channel", "group")}
    assert errors["group"] < errors["channel"] < errors["tensor"] / 10


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity, group_size", [("tensor", None), ("channel", None), ("group", 8)])
def test_fake_quantize_is_the_grids_codes_dequantized(symmetric, granularity, group_size):
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    grid = choose_grid(w, 3, symmetric, granularity, group_size)
    assert torch.equal(fake_quantize(w, 3, symmetric, granularity, group_size),
                       grid.dequantize(grid.codes(w), w.shape))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_single_nan_or_inf_anywhere_refuses_a_grid(bad):
    w = torch.randn(4, 8)
    w[2, 5] = bad
    for granularity in ("tensor", "channel"):
        with pytest.raises(ValueError, match="NaN or inf"):
            choose_grid(w, 4, granularity=granularity)


def test_zero_is_exact_for_asymmetric_grids_and_all_zero_groups():
    w = torch.tensor([[0.0, 0.3, 1.7, 2.0], [0.0, 0.0, 0.0, 0.0]])
    q = fake_quantize(w, 3, symmetric=False, granularity="channel")
    assert q[0, 0] == 0 and torch.equal(q[1], torch.zeros(4))


def _near_tie(x, step):
    fraction = (x / step).abs() % 1
    return (fraction - 0.5).abs() < 1e-3


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_tensor_int8_agrees_with_torch(symmetric):
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(1)) * 3
    grid = choose_grid(x, 8, symmetric=symmetric)
    ours = fake_quantize(x, 8, symmetric=symmetric)
    step, zero = float(grid.step_Q), int(grid.zero_point)
    theirs = torch.fake_quantize_per_tensor_affine(x, step, zero, grid.low, grid.high)
    differ = ours != theirs
    # torch multiplies by 1/Q where we divide by Q: the two can round apart only at (near-)ties, by one step.
    assert _near_tie(x, step)[differ].all()
    assert torch.allclose((ours - theirs)[differ].abs(), torch.tensor(step), rtol=1e-4)
    assert differ.float().mean() < 1e-3


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_int8_agrees_with_torch(symmetric):
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(2)) * torch.linspace(0.01, 5, 32)[:, None]
    grid = choose_grid(w, 8, symmetric=symmetric, granularity="channel")
    ours = fake_quantize(w, 8, symmetric=symmetric, granularity="channel")
    theirs = torch.fake_quantize_per_channel_affine(w, grid.step_Q.flatten(), grid.zero_point.flatten().int(), 0,
                                                    grid.low, grid.high)
    differ = ours != theirs
    assert _near_tie(w, grid.step_Q)[differ].all()
    assert differ.float().mean() < 1e-3


@pytest.fixture(scope="module")
def gpt(names_gpt):
    return names_gpt


def test_quantize_model_covers_every_matrix_and_leaves_the_original_untouched(gpt):
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    quantized = quantize_model(gpt, bits=4, granularity="channel")
    assert all(torch.equal(before[k], v) for k, v in gpt.state_dict().items())
    layers = weight_layers(quantized)
    # GPT-2's blocks are Conv1D, not nn.Linear: all of them, the embeddings and the tied output layer count.
    names = [layer.name for layer in layers]
    assert sum(".mlp.c_fc" in n or ".attn.c_attn" in n for n in names) == 4 and "gpt.transformer.wte" in names
    for layer in layers:
        per_channel = layer.matrix.detach()
        assert all(len(row.unique()) <= 2**4 for row in per_channel)
    assert quantized.gpt.lm_head.weight.data_ptr() == quantized.gpt.transformer.wte.weight.data_ptr()
    # Biases and layer norms are untouched.
    assert torch.equal(quantized.gpt.transformer.h[0].ln_1.weight, gpt.gpt.transformer.h[0].ln_1.weight)


def test_conv1d_channels_are_its_outputs(gpt):
    layer = next(layer for layer in weight_layers(gpt) if layer.name.endswith("h.0.mlp.c_fc"))
    assert layer.transposed and layer.matrix.shape == (128, 32)  # (out, in) although Conv1D stores (in, out)
    q = quantize_model(gpt, bits=8, granularity="channel")
    q_layer = next(layer for layer in weight_layers(q) if layer.name.endswith("h.0.mlp.c_fc"))
    expected = fake_quantize(layer.matrix.detach(), 8, granularity="channel")
    assert torch.equal(q_layer.matrix, expected)


def test_quantize_model_with_a_step_and_its_errors(gpt):
    q = quantize_model(gpt, step_Q=0.05)
    w = weight_layers(q)[1].matrix
    assert torch.allclose(w / 0.05, torch.round(w / 0.05), atol=1e-4)
    with pytest.raises(ValueError, match="exactly one"):
        quantize_model(gpt, bits=4, step_Q=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        quantize_model(gpt)
    with pytest.raises(ValueError, match="layer 'gpt.transformer.wte'.*group_size=64 does not divide"):
        quantize_model(gpt, bits=4, granularity="group", group_size=64)


def test_model_bytes_counts_codes_scales_and_zero_points(gpt):
    fp32 = model_bytes(gpt, 32)
    assert fp32["total"] == gpt.size_bytes() and model_bytes(gpt, 16)["total"] == fp32["total"] // 2
    layers = weight_layers(gpt)
    matrix_params = sum(layer.matrix.numel() for layer in layers)
    other = fp32["total"] - 4 * matrix_params
    int8 = model_bytes(gpt, 8, granularity="channel")
    assert int8["weights"] == matrix_params and int8["other"] == other
    assert int8["scales"] == 4 * sum(layer.matrix.shape[0] for layer in layers) and int8["zero_points"] == 0
    int4 = model_bytes(gpt, 4, symmetric=False, granularity="group", group_size=8)
    assert int4["weights"] == matrix_params // 2 and int4["scales"] == 4 * matrix_params // 8
    assert int4["zero_points"] == matrix_params // 8
    assert int4["total"] == sum(int4[k] for k in ("weights", "scales", "zero_points", "other"))
    with pytest.raises(ValueError, match="bits=12"):
        model_bytes(gpt, 12)


def test_quantize_model_into_an_earlier_copy_equals_a_fresh_copy(names_gpt):
    before = {k: v.clone() for k, v in names_gpt.state_dict().items()}
    work = quantize_model(names_gpt, 2, granularity="channel")
    again = quantize_model(names_gpt, 4, granularity="group", group_size=8, out=work)
    fresh = quantize_model(names_gpt, 4, granularity="group", group_size=8)
    assert again is work
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in again.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in names_gpt.state_dict().items())  # the original is untouched


def test_quantize_model_refuses_an_out_that_is_not_a_copy(names_gpt):
    other = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="out is not a copy of model"):
        quantize_model(names_gpt, 4, out=other)


def test_stored_bits_per_weight_adds_each_step_to_the_codes(gpt):
    from lmlab.compress.quantize import stored_bits_per_weight

    layers = weight_layers(gpt)
    weights, rows = sum(layer.matrix.numel() for layer in layers), sum(layer.matrix.shape[0] for layer in layers)
    assert stored_bits_per_weight(gpt) == 32.0 and stored_bits_per_weight(gpt, 16) == 16.0
    assert stored_bits_per_weight(gpt, 4, granularity="group", group_size=8) == pytest.approx(4 + 32 / 8)
    assert stored_bits_per_weight(gpt, 4, symmetric=False, granularity="group", group_size=8) == pytest.approx(9.0)
    assert stored_bits_per_weight(gpt, 8, granularity="channel") == pytest.approx(8 + 32 * rows / weights)
    assert stored_bits_per_weight(gpt, 3, granularity="tensor") == pytest.approx(
        8 * (math.ceil(weights * 3 / 8) + 4 * len(layers)) / weights)
    with pytest.raises(ValueError, match="bits=12"):
        stored_bits_per_weight(gpt, 12)
