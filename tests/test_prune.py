"""Pruning, low rank and weight sharing: exact sparsity, no leftover masks, smaller shapes, exact reconstruction."""

import numpy as np
import pytest
import torch

from lmlab.neural import build_model
from lmlab.prune import (
    LowRankLinear, kmeans_1d, low_rank, magnitude_prune, prunable_layers, prune_heads, prune_mlp, share_weights,
)


@pytest.fixture(scope="module")
def gpt(names_gpt):
    return names_gpt


@pytest.fixture(scope="module")
def mlp(names_data):
    torch.manual_seed(0)
    return build_model("mlp", names_data.vocab, context_size=3, embed_dim=6, hidden_dim=40).eval()


@pytest.fixture(scope="module")
def contexts(names_data):
    return names_data.examples("valid", 15)[0][:64]


def state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.999])
def test_per_layer_sparsity_is_exact_within_one_weight(gpt, sparsity):
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    pruned = magnitude_prune(gpt, sparsity, scope="layer")
    assert state_equal(before, gpt.state_dict())  # the original is untouched
    for layer in prunable_layers(pruned.model):
        zeros = int((layer.module.weight == 0).sum())
        assert abs(zeros - sparsity * layer.module.weight.numel()) <= 1, layer.name


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.8])
def test_global_sparsity_is_exact_overall_and_keeps_the_largest(gpt, sparsity):
    pruned = magnitude_prune(gpt, sparsity, scope="global")
    weights = torch.cat([layer.module.weight.flatten() for layer in prunable_layers(pruned.model)])
    original = torch.cat([layer.module.weight.detach().flatten() for layer in prunable_layers(gpt)])
    assert abs(int((weights == 0).sum()) - sparsity * len(weights)) <= 1
    assert pruned.sparsity == pytest.approx(sparsity, abs=1 / len(weights))
    kept = weights != 0
    assert original[kept].abs().min() >= original[~kept].abs().max()  # "significant" = largest magnitude
    assert len(set(round(v, 3) for v in pruned.per_layer.values())) > 1  # layers differ under a global threshold


def test_pruning_is_permanent_no_masks_or_hooks_remain(gpt):
    pruned = magnitude_prune(gpt, 0.5).model
    names = [name for name, _ in pruned.named_parameters()] + [name for name, _ in pruned.named_buffers()]
    assert not [n for n in names if n.endswith("weight_orig") or n.endswith("weight_mask")]
    assert all(not m._forward_pre_hooks for m in pruned.modules())
    # Tied embedding and output layer stay tied and dense.
    assert pruned.gpt.lm_head.weight.data_ptr() == pruned.gpt.transformer.wte.weight.data_ptr()
    assert torch.equal(pruned.gpt.transformer.wte.weight, gpt.gpt.transformer.wte.weight)


def test_pruned_model_size_and_counts(gpt):
    pruned = magnitude_prune(gpt, 0.5)
    assert pruned.params == gpt.num_parameters() and pruned.size_bytes == gpt.size_bytes()  # dense storage
    zeros = sum(int((layer.module.weight == 0).sum()) for layer in prunable_layers(pruned.model))
    assert pruned.nonzero == pruned.params - zeros - sum(int((p == 0).sum()) for p in gpt.parameters())


def test_mlp_units_shrink_and_kept_units_compute_the_same(mlp, contexts):
    pruned = prune_mlp(mlp, 0.5).model
    assert pruned.hidden.weight.shape == (20, 18) and pruned.out.weight.shape == (mlp.out.weight.shape[0], 20)
    kept = [int((mlp.hidden.weight == row).all(1).nonzero()) for row in pruned.hidden.weight]
    assert kept == sorted(kept)
    x = mlp.embed(torch.as_tensor(contexts[:, -3:])).flatten(1)
    torch.testing.assert_close(pruned.hidden(x), mlp.hidden(x)[:, kept], rtol=0, atol=0)
    assert pruned.next_token_logprobs(contexts[:, -3:]).shape == (64, len(mlp.vocab))


def test_gpt_mlp_units_shrink_and_kept_units_compute_the_same(gpt, contexts):
    pruned = prune_mlp(gpt, 0.75)
    block, original = pruned.model.gpt.transformer.h[1].mlp, gpt.gpt.transformer.h[1].mlp
    assert block.c_fc.weight.shape == (32, 32) and block.c_proj.weight.shape == (32, 32)  # 128 -> 32 units
    assert pruned.per_layer["gpt.transformer.h.1.mlp"] == 32
    assert pruned.params < gpt.num_parameters()
    kept = [int((original.c_fc.weight.T == col).all(1).nonzero()) for col in block.c_fc.weight.T]
    h = torch.randn(3, 5, 32)
    torch.testing.assert_close(block.c_fc(h), original.c_fc(h)[..., kept], rtol=0, atol=1e-6)
    assert torch.isfinite(pruned.model.next_token_logprobs(contexts)).all()


def test_pruning_nothing_changes_nothing(gpt, contexts):
    for compressed in (prune_mlp(gpt, 0.0), prune_heads(gpt, 0.0)):
        torch.testing.assert_close(compressed.model.next_token_logprobs(contexts), gpt.next_token_logprobs(contexts))


def test_heads_shrink_and_the_model_still_runs(gpt, contexts):
    pruned = prune_heads(gpt, 0.5)
    attention = pruned.model.gpt.transformer.h[0].attn
    assert attention.num_heads == 2 and attention.c_attn.weight.shape == (32, 48) and attention.c_proj.weight.shape == (16, 32)
    logp = pruned.model.next_token_logprobs(contexts)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(len(contexts)), atol=1e-5)


def test_calibrated_importance_uses_activations(gpt, names_data):
    inputs = torch.as_tensor(names_data.examples("valid", 15)[0][:32])
    seen = []
    pruned = prune_mlp(gpt, 0.5, calibrate=lambda m: seen.append(m.next_token_logprobs(inputs)))
    assert seen and pruned.model.gpt.transformer.h[0].mlp.c_fc.weight.shape == (32, 64)
    with pytest.raises(ValueError, match="calibrate ran the model without"):
        prune_mlp(gpt, 0.5, calibrate=lambda m: None)


def test_full_rank_svd_reconstructs_every_layer(gpt, contexts):
    factored = low_rank(gpt, energy=1.0)
    for layer in prunable_layers(gpt):
        module = factored.model.get_submodule(layer.name)
        assert isinstance(module, LowRankLinear) and module.rank == min(layer.matrix.shape)
        rebuilt = module.second.weight @ module.first.weight  # (out, in)
        torch.testing.assert_close(rebuilt, layer.matrix.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(factored.model.next_token_logprobs(contexts), gpt.next_token_logprobs(contexts),
                               rtol=0, atol=1e-5)


def test_low_rank_keeps_the_energy_asked_for(gpt):
    factored = low_rank(gpt, energy=0.5, only="mlp")
    assert set(factored.per_layer) == {layer.name for layer in prunable_layers(gpt) if "mlp" in layer.name}
    for name, rank in factored.per_layer.items():
        S = torch.linalg.svdvals(gpt.get_submodule(name).weight.detach().double())
        energy = S.pow(2).cumsum(0) / S.pow(2).sum()
        assert energy[rank - 1] >= 0.5 - 1e-9 and (rank == 1 or energy[rank - 2] < 0.5)
    assert low_rank(gpt, rank=4).params < gpt.num_parameters()


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_weight_sharing_uses_at_most_2_to_the_bits_values(gpt, bits):
    shared = share_weights(gpt, bits)
    for layer in prunable_layers(shared.model):
        assert len(layer.module.weight.unique()) <= 2**bits
    n = sum(layer.module.weight.numel() for layer in prunable_layers(gpt))
    other = gpt.size_bytes() - 4 * n
    assert shared.size_bytes == other + len(prunable_layers(gpt)) * 4 * 2**bits + sum(
        -(-layer.module.weight.numel() * bits // 8) for layer in prunable_layers(gpt))


def test_kmeans_finds_obvious_clusters():
    values = torch.tensor([0.0, 0.1, -0.1, 5.0, 5.2, 4.8, -7.0])
    centroids, index = kmeans_1d(values, 3)
    assert torch.allclose(centroids, torch.tensor([-7.0, 0.0, 5.0]), atol=1e-6)
    assert index.tolist() == [1, 1, 1, 2, 2, 2, 0]


@pytest.mark.parametrize("call, match", [
    (lambda m: magnitude_prune(m, 1.0), r"sparsity=1.0 is out of range.*\[0, 1\)"),
    (lambda m: magnitude_prune(m, -0.1), "sparsity=-0.1"),
    (lambda m: magnitude_prune(m, float("nan")), "sparsity=nan"),
    (lambda m: magnitude_prune(m, 0.5, scope="row"), "scope='row'"),
    (lambda m: prune_mlp(m, 1.0), "sparsity=1.0"),
    (lambda m: low_rank(m, rank=0), r"rank=0 is out of range"),
    (lambda m: low_rank(m, rank=33), r"rank=33 is above the full rank 32"),
    (lambda m: low_rank(m, energy=0.0), "energy=0.0"),
    (lambda m: low_rank(m), "exactly one"),
    (lambda m: low_rank(m, rank=2, only="nothing"), "only='nothing'"),
    (lambda m: share_weights(m, 0), r"bits=0 is out of range"),
    (lambda m: share_weights(m, 9), r"bits=9 is out of range"),
])
def test_bad_settings_are_clear_errors(gpt, call, match):
    with pytest.raises(ValueError, match=match):
        call(gpt)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="no attention heads"):
        prune_heads(torch.nn.Sequential(torch.nn.Linear(4, 4)), 0.5)
    assert np.isclose(magnitude_prune(torch.nn.Sequential(torch.nn.Linear(10, 10)), 0.5).sparsity, 0.5)
