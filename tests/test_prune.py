"""Pruning, low rank and weight sharing: exact sparsity, no leftover masks, smaller shapes, exact reconstruction."""

import numpy as np
import pytest
import torch

from lmlab.compress.prune import (
    LowRankLinear,
    kmeans_1d,
    low_rank,
    magnitude_prune,
    prunable_layers,
    prune_heads,
    prune_mlp,
    share_weights,
)
from lmlab.models.kinds import build_model


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
    assert attention.num_heads == 2 and attention.c_attn.weight.shape == (32, 48)
    assert attention.c_proj.weight.shape == (16, 32)
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


# --- measuring the variants (chapter 05's tables, plots and verdicts) --------------------------------------------


@pytest.fixture(scope="module")
def names_slice(names_data):
    return names_data.head("test", 30)


@pytest.fixture(scope="module")
def sweep(gpt, names_slice):
    from lmlab.compress.prune import sweep_methods

    return sweep_methods(gpt, {"unstructured": (lambda m, s: magnitude_prune(m, s, "layer"), (0.5, 0.9)),
                               "sharing": (share_weights, (2,)),
                               "heads": (prune_heads, (0.5,))}, names_slice)


def test_sweep_scores_every_copy_on_the_same_slice_against_dense(gpt, names_slice, sweep):
    assert list(sweep.method) == ["dense", "unstructured", "unstructured", "sharing", "heads"]
    dense, half = sweep.iloc[0], sweep.iloc[1]
    assert dense["non-zero removed"] == 0 and dense["Δ nats"] == 0 and dense["Δ low"] == dense["Δ high"] == 0
    assert dense.perplexity == pytest.approx(gpt.evaluate_documents(names_slice, "test")["perplexity"], abs=0.006)
    pruned = magnitude_prune(gpt, 0.5, "layer")
    dense_nonzero = sum(int(torch.count_nonzero(p)) for p in gpt.parameters())  # zero biases are not counted
    assert half["non-zero removed"] == pytest.approx(1 - pruned.nonzero / dense_nonzero, abs=1e-3)
    assert half.perplexity == pytest.approx(pruned.model.evaluate_documents(names_slice, "test")["perplexity"],
                                            abs=0.006)
    assert (sweep.low <= sweep.perplexity).all() and (sweep.perplexity <= sweep.high).all()
    assert (sweep["Δ low"] <= sweep["Δ nats"] + 1e-3).all() and (sweep["Δ nats"] <= sweep["Δ high"] + 1e-3).all()
    sharing = sweep[sweep.method == "sharing"].iloc[0]
    assert sharing["non-zero removed"] <= 0.001 and sharing["MB stored"] < dense["MB stored"]  # bits, not weights
    heads = sweep[sweep.method == "heads"].iloc[0]
    assert 0 < heads["non-zero removed"] < 0.5 and heads.parameters < dense.parameters  # half the heads: < half
    from lmlab.compress.prune import sweep_methods

    with pytest.raises(ValueError, match="sweeps is empty"):
        sweep_methods(gpt, {}, names_slice)


def test_sweep_takeaways_follow_the_paired_intervals():
    import pandas as pd

    from lmlab.compress.prune import sweep_takeaways

    table = pd.DataFrame([
        dict(method="dense", setting="", **{"non-zero removed": 0.0, "MB stored": 20.0, "Δ nats": 0.0, "Δ low": 0.0,
                                             "Δ high": 0.0}),
        dict(method="a", setting=0.5, **{"non-zero removed": 0.3, "MB stored": 20.0, "Δ nats": 0.01, "Δ low": -0.02,
                                          "Δ high": 0.04}),
        dict(method="a", setting=0.7, **{"non-zero removed": 0.5, "MB stored": 20.0, "Δ nats": 0.3, "Δ low": 0.2,
                                          "Δ high": 0.4}),
        dict(method="b", setting=3, **{"non-zero removed": 0.0, "MB stored": 9.0, "Δ nats": -0.1, "Δ low": -0.15,
                                        "Δ high": -0.05}),
    ])
    lines = sweep_takeaways(table)
    assert lines[0].startswith("a: indistinguishable from dense up to setting 0.5 (30% of the non-zero")
    assert lines[0].endswith("; worse than dense beyond the noise at 0.7 (by +0.300 nats per word at 0.7)")
    assert lines[1] == "b: better than dense beyond the noise at 3"


def test_removal_plot_puts_each_method_on_each_scale_it_has(sweep):
    import matplotlib.pyplot as plt

    from lmlab.compress.prune import removal_plot

    fig = removal_plot(sweep, title="names")
    left, right = (ax.get_legend_handles_labels()[1] for ax in fig.axes)
    assert "sharing" not in left and "sharing" in right  # sharing removes no parameter, only bytes
    assert {"unstructured", "heads"} <= set(left) and any(label.startswith("dense") for label in left)
    assert all(ax.get_yscale() == "log" for ax in fig.axes)
    assert not any(ax.patches for ax in fig.axes)  # no band: the bars are the verdicts' paired intervals
    dense = sweep[sweep.method == "dense"].iloc[0]
    first = sweep[sweep.method != "dense"].iloc[0]
    bars = [c for c in fig.axes[0].containers if c.get_label() == first.method][0]
    segment = bars.lines[2][0].get_segments()[0]  # the first point's bar, (x, low) to (x, high)
    assert segment[0][1] == pytest.approx(min(first.perplexity, dense.perplexity * np.exp(first["Δ low"])))
    assert segment[1][1] == pytest.approx(max(first.perplexity, dense.perplexity * np.exp(first["Δ high"])))
    plt.close(fig)
    with pytest.raises(ValueError, match="no 'dense' row"):
        removal_plot(sweep[sweep.method != "dense"])


def timing(*samples):
    from lmlab.measure.timing import Timing

    return Timing(samples_ms=tuple(samples), threads=1, warmup=0, first_ms=None)


def test_timing_verdict_calls_overlapping_spreads_noise():
    from lmlab.measure.stats import timing_verdict

    reference = timing(*range(10, 20))
    assert timing_verdict(reference, timing(*range(2, 8))) == "faster"
    assert timing_verdict(reference, timing(*range(30, 40))) == "slower"
    assert timing_verdict(reference, timing(*range(15, 25))) == "within noise"
    assert timing_verdict(reference, reference) == "within noise"


def test_time_variants_times_each_part_against_the_first(gpt):
    from lmlab.compress.prune import time_variants

    half = prune_mlp(gpt, 0.5).model
    ids = torch.zeros(1, 8, dtype=torch.long)  # (1, 8)
    table = time_variants({"dense": gpt, "half": half}, ids, torch.randn(1, 8, 32), repeat=3, warmup=1)
    assert list(table.variant) == ["dense", "half"]
    assert table.parameters.tolist() == [gpt.num_parameters(), half.num_parameters()]
    assert table["forward speed"][0] == "1.00×" and table["forward verdict"][0] == "within noise"
    assert table.forward[0].endswith(" ms") and set(table["MLP blocks verdict"]) <= {"faster", "slower", "within noise"}
    with pytest.raises(ValueError, match="variants is empty"):
        time_variants({}, ids, torch.randn(1, 8, 32))


def test_measure_variants_names_the_slice_and_marks_masks_simulated(gpt, names_slice):
    from lmlab.compress.prune import measure_variants
    from lmlab.measure.results import Result, results_table

    contexts, targets = names_slice.examples("test", gpt.context_size)
    elsewhere = Result("3-gram", "n-gram", "", 0.3, 0.1, 0.2, predictions=100, corpus="names")
    score = lambda m: m.evaluate_documents(names_slice, "test")  # noqa: E731
    rows = measure_variants({"dense": (gpt, "dense"), "masked": (magnitude_prune(gpt, 0.5), "unstructured")},
                            contexts[:8], targets[:8], score, "names test[:30]", simulated=("unstructured",),
                            repeat=3, alongside=[elsewhere], dense="dense")
    assert [r.name for r in rows] == ["3-gram", "dense", "masked"]
    assert [r.simulated for r in rows] == [False, False, True]
    assert {r.corpus for r in rows} == {"names test[:30]"}
    assert rows[1].accuracy == pytest.approx(score(gpt)["accuracy"]) and rows[1].predictions == len(targets)
    table = results_table(rows)
    assert table["± se"].tolist() == [round(r.accuracy_se, 4) for r in rows]
    assert table.columns.get_loc("± se") == table.columns.get_loc("accuracy") + 1 and "slice" in table


def test_measure_variants_gives_a_masked_row_the_dense_rows_time_exactly(gpt, names_slice):
    from lmlab.compress.prune import measure_variants
    from lmlab.measure.results import results_table

    contexts, targets = names_slice.examples("test", gpt.context_size)
    score = lambda m: m.evaluate_documents(names_slice, "test")  # noqa: E731
    masked = magnitude_prune(gpt, 0.9)
    rows = measure_variants({"masked": (masked, "unstructured"), "dense": (gpt, "dense")}, contexts[:8], targets[:8],
                            score, "names test[:30]", simulated=("unstructured",), repeat=5, dense="dense")
    by_name = {r.name: r for r in rows}
    assert [r.name for r in rows] == ["masked", "dense"]  # the models' order, whichever was timed first
    assert by_name["masked"].median_ms == by_name["dense"].median_ms  # the same timing, not a second one
    assert by_name["masked"].p90_ms == by_name["dense"].p90_ms and by_name["masked"].simulated
    assert by_name["masked"].accuracy == pytest.approx(score(masked.model)["accuracy"])
    assert results_table(rows)["median"].str.endswith("(simulated)").tolist() == [True, False]
    with pytest.raises(ValueError, match="dense=None"):
        measure_variants({"masked": (masked, "unstructured")}, contexts[:8], targets[:8], score, "names",
                         simulated=("unstructured",), repeat=1)


def test_beaten_by_separates_clear_wins_from_noise():
    from lmlab.compress.prune import beaten_by
    from lmlab.measure.results import Result

    def row(name, accuracy, median, simulated=False):
        return Result(name, "t", "", accuracy, median, median * 1.1, predictions=1000, simulated=simulated)

    target = row("target", 0.30, 10.0)
    rows = [target, row("clear", 0.40, 5.0), row("close", 0.31, 5.0), row("slower", 0.50, 20.0),
            row("masked", 0.50, 1.0, simulated=True), row("worse", 0.20, 1.0), row("near in time", 0.45, 9.5),
            row("apart by 1 SE bars", 0.335, 5.0)]
    # 9.5 · 1.1 > 10: not faster. 0.335 − 0.30 = 0.035: beyond se₁ + se₂ = 0.029, within 2·√(se₁² + se₂²) = 0.042.
    assert beaten_by(rows, target) == {"clearly": ["clear"], "within noise": ["close", "apart by 1 SE bars"]}
