"""A decode step with a KV cache in ONNX Runtime: PyTorch's logits step by step, padded batches, int8, graph lessons."""

import pytest
import torch

import lmlab.compress.export as export
from lmlab.compress.export import graph_node_counts, onnx_decoder, onnx_model, profile_step
from lmlab.data.corpora import Corpus, tokenize_corpus
from lmlab.models.kinds import build_model


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def gpt(kjv_corpus):
    verses = tokenize_corpus(Corpus("kjv-slice", "word", kjv_corpus.documents[:300]), min_count=1)
    torch.manual_seed(0)
    return build_model("gpt", verses.vocab, n_layer=2, n_embd=128, n_head=2, n_positions=32).eval()


@pytest.fixture(scope="module")
def gpt_decoder(gpt, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # a cache of the module's own
        patch.setenv("LMLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        return onnx_decoder(gpt, quantization=None)


def ids_for(model, rows: int, length: int, seed: int = 0) -> torch.Tensor:
    vocab = model.config.vocab_size
    return torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (padding gets 0), as transformers' generate makes them."""
    return (mask.cumsum(1) - 1).clamp(min=0)


def decode_against_pytorch(decoder, core, full: torch.Tensor, prefill: int) -> list[torch.Tensor]:
    """Prefill ``prefill`` tokens, then one token per step; return each call's last logits and check against
    ``core`` run on the whole sequence so far (no cache)."""
    start = torch.ones_like(full[:, :prefill])
    logits, past = decoder(full[:, :prefill], start, positions(start))
    with torch.no_grad():
        expected = core(input_ids=full).logits  # (batch, length, vocab)
    torch.testing.assert_close(logits, expected[:, :prefill], atol=1e-4, rtol=0)
    lasts = [logits[:, -1]]
    for t in range(prefill, full.shape[1]):
        mask = torch.ones_like(full[:, : t + 1])
        logits, past = decoder(full[:, t : t + 1], mask, torch.full((full.shape[0], 1), t), past)
        with torch.no_grad():  # the same sequence without a cache: the logits of step t
            alone = core(input_ids=full[:, : t + 1]).logits[:, -1]
        torch.testing.assert_close(logits[:, -1], alone, atol=1e-4, rtol=0)
        assert past.length == t + 1
        lasts.append(logits[:, -1])
    return lasts


def test_float32_decoder_gives_pytorchs_logits_step_by_step(gpt, gpt_decoder):
    assert (gpt_decoder.num_layers, gpt_decoder.kv_heads, gpt_decoder.head_dim) == (2, 2, 64)
    decode_against_pytorch(gpt_decoder, gpt.gpt, ids_for(gpt, 2, 9), prefill=4)  # prefill, then 5 steps
    decode_against_pytorch(gpt_decoder, gpt.gpt, ids_for(gpt, 1, 6, seed=1), prefill=1)  # one-token prefill


def test_left_padded_batch_gives_each_rows_own_logits(gpt, gpt_decoder):
    long, short = ids_for(gpt, 1, 7, seed=2)[0], ids_for(gpt, 1, 4, seed=3)[0]
    ids = torch.stack([long, torch.cat([torch.zeros(3, dtype=torch.long), short])])  # (2, 7), row 1 padded left
    mask = torch.tensor([[1] * 7, [0] * 3 + [1] * 4])
    logits, past = gpt_decoder(ids, mask, positions(mask))
    rows = [long, short]
    with torch.no_grad():
        torch.testing.assert_close(logits[0], gpt.gpt(input_ids=long[None]).logits[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(logits[1, 3:], gpt.gpt(input_ids=short[None]).logits[0], atol=1e-4, rtol=0)
    for step in range(3):
        new = ids_for(gpt, 2, 1, seed=10 + step)  # (2, 1)
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        logits, past = gpt_decoder(new, mask, positions(mask)[:, -1:], past)
        rows = [torch.cat([row, token]) for row, token in zip(rows, new)]
        for i, row in enumerate(rows):
            with torch.no_grad():
                alone = gpt.gpt(input_ids=row[None]).logits[0, -1]
            torch.testing.assert_close(logits[i, -1], alone, atol=1e-4, rtol=0)


def test_past_bytes_count_every_layers_keys_and_values(gpt_decoder, gpt):
    ids = ids_for(gpt, 3, 5)
    assert gpt_decoder.past_bytes(None) == 0
    _, past = gpt_decoder(ids, torch.ones_like(ids), positions(torch.ones_like(ids)))
    layers, kv_heads, head_dim = 2, 2, 64
    assert gpt_decoder.past_bytes(past) == 2 * layers * kv_heads * head_dim * 5 * 4 * 3
    assert gpt_decoder.past_bytes(past.numpy()) == gpt_decoder.past_bytes(past)
    assert [a.shape for a in past.numpy()] == [(3, kv_heads, 5, head_dim)] * (2 * layers)
    _, grown = gpt_decoder(ids[:, :1], torch.ones(3, 6, dtype=torch.long), torch.full((3, 1), 5), past.numpy())
    assert gpt_decoder.past_bytes(grown) == 2 * layers * kv_heads * head_dim * 6 * 4 * 3  # arrays work as a past too


@pytest.mark.parametrize("quantization", ["blockwise", "dynamic"])
def test_int8_decoder_is_int8_smaller_and_close(gpt, gpt_decoder, quantization):
    int8 = onnx_decoder(gpt, quantization)
    assert int8.quantization == quantization and int8.stored_bytes < gpt_decoder.stored_bytes
    assert export._int8_matmuls(int8.path) == 2 * 4 + 1  # attention in and out, MLP in and out; output layer
    full = ids_for(gpt, 2, 9)
    ours, theirs = [], []
    for decoder, out in ((int8, ours), (gpt_decoder, theirs)):
        logits, past = decoder(full[:, :4], torch.ones_like(full[:, :4]), positions(torch.ones_like(full[:, :4])))
        out.append(logits[:, -1])
        for t in range(4, 9):
            logits, past = decoder(full[:, t : t + 1], torch.ones_like(full[:, : t + 1]), torch.full((2, 1), t), past)
            out.append(logits[:, -1])
    ours, theirs = torch.stack(ours), torch.stack(theirs)  # (steps, batch, vocab)
    assert (ours - theirs).abs().max() < 0.05 * theirs.abs().max()


def test_decoder_graphs_are_cached_apart_from_plain_graphs(gpt, monkeypatch, tmp_path):
    decoder = onnx_decoder(gpt, quantization=None)
    plain = onnx_model(gpt, quantization=None)
    assert decoder.path != plain.gpt.path and decoder.path.parent == plain.gpt.path.parent

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the graph is cached")

    monkeypatch.setattr(export, "_export_decoder", no_export)
    assert onnx_decoder(gpt, quantization=None, optimization="basic").path == decoder.path
    int8 = onnx_decoder(gpt, "blockwise")  # quantizes the cached float32 graph: no second export
    assert int8.path != decoder.path and export._int8_matmuls(int8.path) > 0
    with pytest.raises(AssertionError, match="exported again"):
        onnx_decoder(gpt, quantization=None, cache=False)


def test_graph_optimizer_fuses_nodes_and_the_profile_adds_up(gpt, gpt_decoder):
    counts = graph_node_counts(gpt_decoder)
    assert list(counts) == ["disabled", "basic", "extended", "all"]
    assert counts["all"] < counts["disabled"]
    ops = export.graph_op_counts(gpt_decoder, "all")
    assert sum(ops.values()) == counts["all"]
    ids = ids_for(gpt, 1, 8)
    _, past = gpt_decoder(ids, torch.ones_like(ids), positions(torch.ones_like(ids)))
    step = (ids[:, :1], torch.ones(1, 9, dtype=torch.long), torch.tensor([[8]]), past)
    profile = profile_step(gpt_decoder, *step, runs=5)
    assert profile["total_ms"] > 0 and profile["node_sum_ms"] > 0
    assert profile["profiled_ms"] > 0
    assert profile["profiler_overhead_ms"] == profile["profiled_ms"] - profile["total_ms"]
    assert "MatMul" in profile["by_op"] and all(ms >= 0 for ms in profile["by_op"].values())
    assert sum(profile["by_op"].values()) == pytest.approx(profile["node_sum_ms"], rel=1e-9)  # the same run


def test_nodes_removed_names_the_constant_folded_transpose(gpt, gpt_decoder):
    # "disabled" keeps the tied output layer's Transpose(weight), run at every step; "basic" folds it into a
    # constant once (constant folding), so that one node is all it removes from this graph.
    removed = export.nodes_removed(gpt_decoder, "disabled", "basic")
    assert [node["op"] for node in removed] == ["Transpose"]
    (shape,) = removed[0]["constants"].values()
    assert shape == (gpt.config.vocab_size, gpt.config.n_embd)
    assert removed[0]["constant_bytes"] == 4 * gpt.config.vocab_size * gpt.config.n_embd  # float32
    assert export.nodes_removed(gpt_decoder, "basic", "basic") == []
    with pytest.raises(ValueError, match="after"):
        export.nodes_removed(gpt_decoder, "disabled", "fastest")


def test_profile_step_reports_the_unprofiled_step_timed_by_time_ms(gpt, gpt_decoder, monkeypatch):
    timed = []  # (whether the session timed was profiling, its Timing)

    def spy(fn, *args, **kwargs):
        timing = real(fn, *args, **kwargs)
        timed.append((fn.__self__.get_session_options().enable_profiling, timing))
        return timing

    real = export.time_ms
    monkeypatch.setattr(export, "time_ms", spy)
    ids = ids_for(gpt, 1, 8)
    _, past = gpt_decoder(ids, torch.ones_like(ids), positions(torch.ones_like(ids)))
    profile = profile_step(gpt_decoder, ids[:, :1], torch.ones(1, 9, dtype=torch.long), torch.tensor([[8]]), past,
                           runs=5)
    plain = [timing for profiling, timing in timed if not profiling]
    profiled = [timing for profiling, timing in timed if profiling]
    assert len(plain) == 1 and len(profiled) == 1 and plain[0].repeat == 5
    assert profile["total_ms"] == plain[0].median_ms and profile["profiled_ms"] == profiled[0].median_ms
    assert profile["profiler_overhead_ms"] == profiled[0].median_ms - plain[0].median_ms


def test_bad_arguments_are_clear_errors(gpt, gpt_decoder, names_data):
    with pytest.raises(ValueError, match="quantization='int4'"):
        onnx_decoder(gpt, "int4")
    with pytest.raises(ValueError, match="optimization='fast'"):
        onnx_decoder(gpt, optimization="fast")
    with pytest.raises(ValueError, match="threads=0"):
        onnx_decoder(gpt, threads=0)
    torch.manual_seed(0)
    mlp = build_model("mlp", names_data.vocab, context_size=4, embed_dim=8, hidden_dim=16)
    with pytest.raises(ValueError, match="MLPLanguageModel is not one onnx_decoder knows"):
        onnx_decoder(mlp)
    ids = ids_for(gpt, 2, 3)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        gpt_decoder(ids, torch.ones(2, 4, dtype=torch.long), positions(torch.ones_like(ids)))
    with pytest.raises(ValueError, match="position_ids has shape"):
        gpt_decoder(ids, torch.ones_like(ids), torch.zeros(2, 2, dtype=torch.long))
    _, past = gpt_decoder(ids, torch.ones_like(ids), positions(torch.ones_like(ids)))
    with pytest.raises(ValueError, match="past holds 2 sequences"):
        gpt_decoder(ids[:1, :1], torch.ones(1, 4, dtype=torch.long), torch.tensor([[3]]), past)
    with pytest.raises(ValueError, match="runs=0"):
        profile_step(gpt_decoder, ids, torch.ones_like(ids), positions(torch.ones_like(ids)), runs=0)
    with pytest.raises(ValueError, match="decoder_or_path="):
        graph_node_counts("no-such-graph.onnx")


@pytest.mark.slow
def test_smollm2_decoder_float32_and_int8(monkeypatch):
    """SmolLM2 (30 layers, 3 KV heads of 64) decoded with its cache: float32 equals PyTorch; int8 picks the same tokens.

    Uses the user's cache, like the notebooks: this is also what makes chapter 06's first run fast.
    """
    monkeypatch.delenv("LMLAB_CACHE")
    from lmlab.models.pretrained import load_smollm2

    model, tokenizer = load_smollm2()
    full = tokenizer("The capital of France is Paris, and the capital of Italy is Rome. The river",
                     return_tensors="pt").input_ids[:, :14]
    float32 = onnx_decoder(model, quantization=None)
    assert (float32.num_layers, float32.kv_heads, float32.head_dim) == (30, 3, 64)
    expected = decode_against_pytorch(float32, model, full, prefill=9)  # prefill, then 5 steps

    short = full[0, 4:9]  # a left-padded batch: each row its own logits
    ids = torch.stack([full[0, :9], torch.cat([torch.zeros(4, dtype=torch.long), short])])
    mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    logits, _ = float32(ids, mask, positions(mask))
    with torch.no_grad():
        torch.testing.assert_close(logits[1, 4:], model(input_ids=short[None]).logits[0], atol=1e-4, rtol=0)

    int8 = onnx_decoder(model)  # blockwise, quantized from the cached float32 graph
    assert export._int8_matmuls(int8.path) == 30 * 7 + 1
    assert int8.stored_bytes < 0.6 * float32.stored_bytes
    logits, past = int8(full[:, :9], torch.ones_like(full[:, :9]), positions(torch.ones_like(full[:, :9])))
    ours = [logits[:, -1]]
    for t in range(9, full.shape[1]):
        logits, past = int8(full[:, t : t + 1], torch.ones_like(full[:, : t + 1]), torch.full((1, 1), t), past)
        ours.append(logits[:, -1])
    assert [int(o.argmax()) for o in ours] == [int(e.argmax()) for e in expected]  # greedy picks the same tokens
    assert int8.past_bytes(past) == 2 * 30 * 3 * 64 * full.shape[1] * 4


def test_an_uncached_decoder_leaves_no_file_behind(gpt, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # catch the temporary folders it makes
    decoder = onnx_decoder(gpt, quantization=None, cache=False)
    ids = torch.tensor([[5, 6, 7]])
    logits, _ = decoder(ids, torch.ones_like(ids), torch.arange(3)[None])
    assert logits.shape[:2] == (1, 3) and decoder.path is None and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="cache=False"):
        graph_node_counts(decoder)
