"""lmlab's fused SmolLM2 decoder: eager's logits and tokens, a KV buffer allocated once, rows alone == in a
batch, crop, and refusals. Builds the fused graphs in the user cache, which chapter 06 then loads in seconds."""

import pytest
import torch

from lmlab.compress.export import graph_op_counts, profile_step
from lmlab.compress.fused import fused_decoder
from lmlab.inference.decode import generate
from lmlab.inference.step import DecodeStep, positions

PROMPTS = ["The capital of France is", "Once upon a time, in a land far away, there lived", "2 + 2 =",
           "def fibonacci(n):", "The three primary colors are", "Water boils at", "My favourite book is",
           "In 1492, Columbus"]


@pytest.fixture(scope="module")
def decoders(smol):
    return {fmt: fused_decoder(smol.source, fmt, threads=1, max_length=256) for fmt in ("float32", "int8", "int4")}


def test_float32_fused_gives_eagers_logits_at_prefill_and_each_cached_step(smol, decoders):
    decoder, model = decoders["float32"], smol.source
    ids = torch.tensor([smol.encode(PROMPTS[1])])  # (1, prompt)
    mask = torch.ones_like(ids)
    logits, past = decoder(ids, mask, positions(mask))
    with torch.no_grad():
        torch.testing.assert_close(logits, model(input_ids=ids).logits, atol=1e-4, rtol=0)
    for _ in range(6):
        ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
        mask = torch.ones_like(ids)
        logits, past = decoder(ids[:, -1:], mask, positions(mask, 1), past)
        with torch.no_grad():
            torch.testing.assert_close(logits, model(input_ids=ids).logits[:, -1:], atol=1e-4, rtol=0)
    assert past.length == ids.shape[1] and past.lengths.tolist() == [ids.shape[1]]


def test_fused_backend_generates_eagers_greedy_tokens(smol, decoders):
    eager = generate(smol, PROMPTS[0], 24, stop_at_eos=False)
    assert generate(smol, PROMPTS[0], 24, stop_at_eos=False, backend="fused").tokens == eager.tokens
    assert generate(smol, PROMPTS[0], 24, stop_at_eos=False, step=decoders["float32"]).tokens == eager.tokens
    uncached = generate(smol, PROMPTS[0], 6, stop_at_eos=False, cache=False, step=decoders["float32"])
    assert uncached.tokens[0] == eager.tokens[0][:6]


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_quantized_fused_decodes_in_one_buffer_allocated_once(smol, decoders, fmt):
    decoder = decoders[fmt]
    assert decoder.backend == f"fused-{fmt}" and isinstance(decoder, DecodeStep)
    ids = torch.tensor([smol.encode(PROMPTS[0])] * 2)  # (2, prompt)
    mask = torch.ones_like(ids)
    logits, past = decoder(ids, mask, positions(mask))
    buffers = [value.data_ptr() for value in past.values]
    arrays = past.arrays
    for _ in range(4):
        ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
        mask = torch.ones_like(ids)
        logits, past = decoder(ids[:, -1:], mask, positions(mask, 1), past)
    assert [value.data_ptr() for value in past.values] == buffers and past.arrays is arrays
    assert decoder.past_bytes(past) == 2 * 30 * 3 * 64 * 256 * 4 * 2  # layers, kv heads, head dim, max_length, batch
    reply = generate(smol, PROMPTS[0], 8, step=decoder, stop_at_eos=False)
    assert len(reply.tokens[0]) == 8 and reply.cache_bytes == 2 * 30 * 3 * 64 * 256 * 4
    if fmt == "int8":
        assert reply.text.startswith(" Paris")


@pytest.mark.parametrize("fmt", ["float32", "int8"])
def test_a_rows_tokens_alone_equal_its_tokens_in_a_left_padded_batch(smol, decoders, fmt):
    decoder = decoders[fmt]
    batch = generate(smol, PROMPTS, 12, step=decoder, stop_at_eos=False)
    assert len({len(smol.encode(p)) for p in PROMPTS}) > 3  # prompts of several lengths: padding differs by row
    for prompt, tokens in zip(PROMPTS, batch.tokens):
        assert generate(smol, prompt, 12, step=decoder, stop_at_eos=False).tokens[0] == tokens


def test_crop_then_decoding_equals_never_having_decoded_the_cropped_tokens(smol, decoders):
    decoder = decoders["int8"]

    def decode(drafted: list[int], keep: int, then: list[int]) -> torch.Tensor:
        """Prefill two 5-token prompts, decode ``drafted`` one per step, crop the past to its first ``keep``
        columns, then decode ``then``; return the last step's logits."""
        ids = torch.tensor([smol.encode(PROMPTS[2])[:5], smol.encode(PROMPTS[0])[:5]])  # (2, 5)
        mask = torch.ones_like(ids)
        logits, past = decoder(ids, mask, positions(mask))
        for token in drafted + [None] + then:
            if token is None:  # the rollback
                past, ids = decoder.crop(past, keep), ids[:, :keep]
                continue
            ids = torch.cat([ids, torch.full((2, 1), token)], dim=1)
            mask = torch.ones_like(ids)
            logits, past = decoder(ids[:, -1:], mask, positions(mask, 1), past)
        return logits

    # drafted 11, 12, 13; the verifier keeps 11 only, rolls back 12 and 13, and decodes 42 after 11
    rolled_back = decode([11, 12, 13], 6, [42])
    assert torch.equal(rolled_back, decode([11], 6, [42]))  # the same bits: the dropped positions are never read


def test_fused_graph_is_small_and_profiles(smol, decoders):
    ops = graph_op_counts(decoders["int4"])
    assert ops["GroupQueryAttention"] == 30 and ops["MatMulNBits"] == 4 * 30 + 1  # qkv, o, gate|up, down; lm_head
    assert sum(ops.values()) < 400
    ids = torch.tensor([smol.encode(PROMPTS[0])])
    mask = torch.ones_like(ids)
    _, past = decoders["int4"](ids, mask, positions(mask))
    mask = torch.ones(1, ids.shape[1] + 1, dtype=torch.long)
    profile = profile_step(decoders["int4"], ids[:, -1:], mask, positions(mask, 1), past, runs=3)
    assert profile["node_sum_ms"] > 0 and "GroupQueryAttention" in profile["by_op"]


def test_fused_refuses_what_it_cannot_build_or_hold(smol, decoders):
    model = smol.source
    with pytest.raises(ValueError, match="fmt='int3'"):
        fused_decoder(model, "int3")
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        fused_decoder(torch.nn.Linear(2, 2))
    for bad in (0, model.config.max_position_embeddings + 1):
        with pytest.raises(ValueError, match=f"max_length={bad}"):
            fused_decoder(model, "int8", max_length=bad)
    with pytest.raises(ValueError, match="threads=0"):
        fused_decoder(model, "int8", threads=0)
    decoder = decoders["int4"]
    ids = torch.zeros(1, 250, dtype=torch.long)
    _, past = decoder(ids, torch.ones_like(ids), positions(torch.ones_like(ids)))
    too_long = torch.ones(1, 257, dtype=torch.long)
    with pytest.raises(ValueError, match="max_length=256"):
        decoder(torch.zeros(1, 7, dtype=torch.long), too_long, positions(too_long, 7), past)
    with pytest.raises(ValueError, match="length=300"):
        decoder.crop(past, 300)
    with pytest.raises(ValueError, match="attention_mask"):
        decoder(ids[:, :1], torch.ones(1, 3, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long), past)


def test_serving_engine_joins_and_drops_rows_of_the_fused_step(smol, decoders):
    """The engine moves rows through to_pairs / from_pairs (left-padded) as replies join and leave the batch."""
    from lmlab.serving.engine import Engine

    decoder = decoders["int8"]
    prompts = [smol.encode(p) for p in PROMPTS[:4]]
    lengths = [10, 4, 8, 6]
    with Engine(smol, step=decoder, max_batch=3) as engine:
        tickets = [engine.submit(ids, n, stop_at_eos=False) for ids, n in zip(prompts, lengths)]
        results = [ticket.result(timeout_s=120) for ticket in tickets]
    for ids, n, (tokens, _) in zip(prompts, lengths, results):
        assert list(tokens) == list(generate(smol, ids, n, step=decoder, stop_at_eos=False).tokens[0])
