"""The second-generation engine: KV slots without leaks, chunked prefill, automatic prefix caching and
preemption, each giving the tokens of a whole prefill of the prompt alone."""

import random

import numpy as np
import pytest
import torch

from lmlab.inference.decode import generate, make_step
from lmlab.inference.sampling import SamplingParams, pick, pick_rows
from lmlab.serving.dense import DenseEngine
from lmlab.serving.engine import Detokenizer, Engine
from lmlab.serving.kvcache import PrefixBlocks, SlotCache, block_hashes
from lmlab.serving.slots import SlotEngine, piece_length

FAQ = open("data/shop-faq.txt").read()


@pytest.fixture(scope="module")
def step(smol):
    return make_step(smol, "fused-int8", threads=1)


def alone(smol, step, ids, n):
    return list(generate(smol, [ids], n, step=step, stop_at_eos=False).tokens[0])


def test_engine_picks_the_slot_scheduler_for_fused_steps_only(smol, step):
    assert type(Engine(smol, step=step)) is SlotEngine
    assert type(Engine(smol, backend="fused-int4")) is SlotEngine
    assert type(Engine(smol, backend="eager")) is DenseEngine
    with pytest.raises(ValueError, match="speculative"):
        Engine(smol, step=step, speculative="prompt-lookup")
    with pytest.raises(ValueError, match="chunk_tokens"):
        Engine(smol, step=step, chunk_tokens=0)


def test_slot_cache_bytes_follow_the_formula_and_thousands_of_joins_and_leaves_leak_nothing(step):
    cache = SlotCache(step, slots=4, capacity=64)
    layers, heads, dim = step.num_layers, step.kv_heads, step.head_dim
    assert cache.nbytes == 2 * layers * heads * dim * 64 * 4 * 4
    assert cache.bytes_per_token == 2 * layers * heads * dim * 4
    rng = random.Random(0)
    taken: list[int] = []
    for _ in range(5000):
        if taken and (len(taken) == 4 or rng.random() < 0.5):
            slot = taken.pop(rng.randrange(len(taken)))
            cache.release(slot)
        else:
            slot = cache.take()
            assert slot not in taken and cache.lengths[slot] == 0
            cache.lengths[slot] = rng.randrange(1, 64)
            taken.append(slot)
        assert cache.free == 4 - len(taken) and sorted(cache.taken()) == sorted(taken)
    for slot in taken:
        cache.release(slot)
    assert cache.free == 4 and cache.used_tokens == 0
    with pytest.raises(ValueError, match="slot=0"):
        cache.release(0)
    with pytest.raises(ValueError, match="budget_tokens"):
        SlotCache(step, slots=2, capacity=8, budget_tokens=17)


def test_blocks_are_named_by_everything_before_their_end():
    a, b = list(range(40)), list(range(32)) + [99] * 8
    ha, hb = block_hashes(a, 16), block_hashes(b, 16)
    assert len(ha) == 2 and ha[:2] == hb[:2]  # the first 32 tokens are shared: two full blocks
    assert block_hashes([5] + a[1:], 16)[1] != ha[1]  # a block's name depends on the tokens before it too
    prefixes = PrefixBlocks(max_blocks=3, block=16)
    names, found = prefixes.match(a)
    assert found == [] and prefixes.misses == 1
    prefixes.add(names, [np.full((2, 1, 16, 1), i, np.float32) for i in range(len(names))])
    assert len(prefixes.match(list(range(33)))[1]) == 2  # the last token is never matched: 32 of 33 cached
    assert len(prefixes.match(list(range(32)))[1]) == 1
    prefixes.add(block_hashes(list(range(100, 164)), 16), [np.zeros((2, 1, 16, 1), np.float32)] * 4)
    assert len(prefixes) == 3  # the bound holds, least recently used evicted


def test_greedy_replies_are_the_same_alone_under_load_chunked_and_preempted(smol, step):
    prompts = [smol.encode(text) for text in ["Hello, how are you?", FAQ + " Do you take cash?",
                                              "The capital of France is", FAQ + " How long is delivery?",
                                              "One two three", FAQ[:300] + " Where is my parcel?"]]
    lengths = [12, 9, 14, 6, 11, 10]
    expected = [alone(smol, step, ids, n) for ids, n in zip(prompts, lengths)]
    for options in ({"chunk_tokens": None}, {"chunk_tokens": 7, "prefix_cache": 64}):
        with Engine(smol, step=step, max_batch=4, **options) as engine:
            tickets = [engine.submit(ids, n, stop_at_eos=False) for ids, n in zip(prompts, lengths)]
            replies = [ticket.result(timeout_s=120)[0] for ticket in tickets]
            assert replies == expected, options
            state = engine.cache_state()
            assert engine.active == 0 and state["free_slots"] == 4 and state["used_tokens"] == 0


def test_decoding_beyond_the_cache_budget_preempts_the_newest_and_swaps_it_back(smol, step):
    prompts = [smol.encode(text)[:20] for text in (FAQ, FAQ[200:], FAQ[400:])]
    expected = [alone(smol, step, ids, 30) for ids in prompts]
    with Engine(smol, step=step, max_batch=3, cache_tokens=2 * 21 + 10) as engine:  # two prompts fit, not grown
        tickets = [engine.submit(ids, 30, stop_at_eos=False) for ids in prompts]
        assert [ticket.result(timeout_s=120)[0] for ticket in tickets] == expected
        assert engine.preemptions > 0 and engine.cache.used_tokens == 0 and engine.cache.free == 3


@pytest.mark.parametrize("shared", [5, 16, 37, 250])
def test_a_prefix_cache_hit_gives_the_tokens_of_a_full_prefill_for_any_shared_prefix(smol, step, shared):
    base = smol.encode(FAQ)[:shared]
    prompts = [base + smol.encode(tail) for tail in [" Can I pay by card?", " Is delivery free?"]]
    expected = [alone(smol, step, ids, 8) for ids in prompts]
    with Engine(smol, step=step, max_batch=2, prefix_cache=64, chunk_tokens=None) as engine:
        replies = [engine.generate(ids, 8, stop_at_eos=False) for ids in prompts]  # one after the other
        assert replies == expected
        assert engine.prefixes.hit_tokens == (shared // 16) * 16  # every full shared block, and no other


def test_a_request_cancelled_mid_prefill_or_decode_frees_its_slot(smol, step):
    long = smol.encode(FAQ)
    with Engine(smol, step=step, max_batch=2, chunk_tokens=8) as engine:
        tickets = [engine.submit(long, 64, stop_at_eos=False) for _ in range(3)]
        for ticket in tickets:
            ticket.cancel()
        reasons = [ticket.result(timeout_s=60)[1].finish_reason for ticket in tickets]
        assert set(reasons) <= {"cancelled", "length"} and "cancelled" in reasons
        assert engine.generate(smol.encode("Hello"), 3, stop_at_eos=False) == alone(smol, step,
                                                                                     smol.encode("Hello"), 3)
        assert engine.cache.free == 2 and engine.cache.used_tokens == 0


def test_a_request_larger_than_the_cache_budget_is_refused(smol, step):
    engine = Engine(smol, step=step, max_batch=2, cache_tokens=64)
    with pytest.raises(ValueError, match="max_new_tokens=40"):
        engine.submit(list(range(30)), 40)


def test_incremental_detokenization_gives_the_whole_decode(smol):
    ids = smol.encode("Façade — naïve café: 3½ € · 東京 😀 done.\nNext line")
    detokenizer = Detokenizer(smol.decode, smol.eos_id)
    pieces = [detokenizer.add(t) for t in ids + [smol.eos_id]]
    assert "".join(pieces) == smol.decode(ids)
    assert pieces[-1] == ""


def test_batched_picks_are_each_rows_pick_alone():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams.greedy(), SamplingParams(True, 0.8, 10, None, 1), SamplingParams(True, 0.8, 10, None, 2),
              SamplingParams(True, 1.2, None, 0.9, 3), SamplingParams.greedy()]
    together = pick_rows(logits, params, [p.generator(torch.device("cpu")) for p in params])
    apart = [int(pick(logits[i:i + 1], p, p.generator(torch.device("cpu")))[0]) for i, p in enumerate(params)]
    assert together == apart
    with pytest.raises(ValueError, match="one setting and one generator per row"):
        pick_rows(logits, params[:2], [None, None])


def test_interference_run_records_every_streams_tokens_and_the_newcomers_first(smol, step):
    from lmlab.serving.interference import prefill_interference

    streams = [smol.encode(q) for q in ["Hello", "How are you?", "One two"]]
    run = prefill_interference(smol, step, streams, smol.encode(FAQ)[:120], chunk_tokens=16, tokens=12, warm=4)
    assert [len(s) for s in run.stamps_ms] == [12, 12, 12]
    assert all(np.all(np.diff(s) >= 0) for s in run.stamps_ms) and run.first_token_ms > run.arrival_ms
    summary = run.summary()
    assert summary["itl_p99_ms"] >= summary["itl_p50_ms"] > 0 and summary["newcomer_ttft_ms"] > 0
    with pytest.raises(ValueError, match="warm=12"):
        prefill_interference(smol, step, streams, [1, 2], chunk_tokens=16, tokens=12, warm=12)


@pytest.fixture(scope="module")
def tokenizer(smol):  # smol first: loading it writes the tokenizer folder into the cache
    from transformers import AutoTokenizer

    from lmlab.models.pretrained import cache_dir

    return AutoTokenizer.from_pretrained(cache_dir() / "smollm2-135m-instruct", local_files_only=True)


@pytest.mark.parametrize("fmt", ["fused", "fused-int4"])  # fused-int8: the tests above and test_batch_invariance
def test_a_real_server_on_slots_gives_every_reply_its_lone_tokens_and_leaks_nothing(smol, tokenizer, fmt):
    """A fused server with chunks of 5 tokens, the prefix cache on and a KV budget two prompts of P tokens fill
    but for 4 positions. 24 chat requests whose system messages share FAQ prefixes of arbitrary lengths, then 3
    of P tokens, each batch sent at once (the 3 must preempt): each reply the text of its prompt decoded alone
    by generate; afterwards every slot free, nothing held, the buffer's bytes those of the formula."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    from lmlab.serving.launcher import running_server
    from lmlab.serving.served import chat_template_ids

    step = make_step(smol, fmt, threads=1)
    rng = random.Random(1)
    chats = [[{"role": "system", "content": FAQ[:rng.randrange(1, 450)]},
              {"role": "user", "content": f"Question {i}: can I pay by card?"}] for i in range(24)]
    tight = [[{"role": "system", "content": FAQ[:300]}, {"role": "user", "content": f"Question {d}"}] for d in "123"]
    ids = [chat_template_ids(tokenizer, chat, generation=True) for chat in chats + tight]
    width = len(ids[-1])
    assert {len(i) for i in ids[-3:]} == {width} and max(len(i) for i in ids) + 6 <= 2 * width + 4
    expected = [smol.decode([t for t in alone(smol, step, i, 6) if t != smol.eos_id]) for i in ids]
    with running_server("smollm2", format=fmt, max_batch=4, prefix_cache=64, chunk_tokens=5,
                        cache_tokens=2 * (width + 1) + 2, reply_cache=0) as server:
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="none", timeout=120)

        def complete(chat):
            return client.chat.completions.create(model="smollm2", messages=chat, max_tokens=6, temperature=0,
                                                  extra_body={"ignore_eos": True}).choices[0].message.content

        with ThreadPoolExecutor(max_workers=12) as pool:
            replies = list(pool.map(complete, chats)) + list(pool.map(complete, tight))
        health = server.health()
    kv = health["kv_cache"]
    assert replies == expected
    assert kv["free_slots"] == kv["slots"] == 4 and kv["used_tokens"] == 0 and health["active"] == 0
    assert kv["buffer_bytes"] == 2 * step.num_layers * step.kv_heads * step.head_dim * step.max_length * 4 * 4
    assert kv["preemptions"] > 0 and kv["prefix_hit_tokens"] > 0


@pytest.mark.parametrize("remaining, budget, expected", [(40, 7, 7), (8, 7, 8), (7, 7, 7), (1, 7, 1), (3, 1, 3),
                                                         (5, 1, 2), (5, 2, 2), (3, 2, 3), (2, 16, 2), (9, 8, 9)])
def test_a_prefill_piece_never_has_or_leaves_a_single_position(remaining, budget, expected):
    assert piece_length(remaining, budget) == expected
    assert piece_length(remaining, float("inf")) == remaining


def test_piece_length_refuses_nothing_to_prefill():
    with pytest.raises(ValueError, match="remaining"):
        piece_length(0, 7)


def test_chunked_prefill_gives_the_int8_tokens_of_a_whole_prefill_where_one_position_would_be_left(smol, step):
    """Prompts of 7k + 1 tokens in pieces of 7: a last piece of ONE position would run ONNX Runtime's one-row
    float32 path (another order of sums: ~1e-5), which int8's rounded activations grew to ~1 logit (measured
    2026-12-07: 7 of 64 prompt lengths, each one with a one-position last piece). Another stream decodes
    meanwhile, so the engine prefills in pieces."""
    text = smol.encode(FAQ)
    prompts = [text[length:2 * length] for length in (29, 36, 43, 50)]
    expected = [alone(smol, step, ids, 8) for ids in prompts]
    with Engine(smol, step=step, max_batch=2, chunk_tokens=7) as engine:
        stream = engine.submit(text[:20], 120, stop_at_eos=False)  # keeps decoding while the others prefill
        replies = []
        for ids in prompts:
            replies.append(engine.submit(ids, 8, stop_at_eos=False).result(timeout_s=120)[0])
        stream.result(timeout_s=120)
    assert replies == expected


def test_a_prefix_hit_that_would_leave_one_position_recomputes_the_last_block(smol, step):
    """A prompt of 2 cached blocks + 1 token: the last block is recomputed with it (a piece of two or more rows)."""
    base = smol.encode(FAQ)[:32]
    prompts = [base + smol.encode(" Can I pay by card?"), base + smol.encode(" Hi")[:1]]
    expected = [alone(smol, step, ids, 8) for ids in prompts]
    with Engine(smol, step=step, max_batch=2, prefix_cache=64, chunk_tokens=None) as engine:
        replies = [engine.generate(ids, 8, stop_at_eos=False) for ids in prompts]  # one after the other
        assert replies == expected
        assert engine.prefixes.hit_tokens == 32  # both blocks found; the second is recomputed with the last token
