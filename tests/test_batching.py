"""The batching engine: a reply's tokens do not depend on its neighbours, the policy, or the prefix cache."""

import time

import pytest

from lmlab.inference.decode import as_causal_lm, generate
from lmlab.inference.sampling import SamplingParams
from lmlab.models.checkpoints import load_checkpoint
from lmlab.serving.engine import LRU, Engine, QueueFull

PROMPTS = ["in the beginning god created", "and the lord said unto moses", "blessed are the",
           "the lord is my shepherd i shall", "and jesus answered and said unto them", "for god so loved"]


@pytest.fixture(scope="module")
def gpt():
    return as_causal_lm(load_checkpoint("data/gpt-small"), name="gpt-small")


def alone(lm, ids, n, **options):
    """The tokens ``generate`` gives a prompt run by itself; the engine streams an end-of-sequence token only when
    it does not stop there (``stop_at_eos=False``)."""
    tokens = list(generate(lm, ids, n, **options).tokens[0])
    return tokens if options.get("stop_at_eos") is False else [t for t in tokens if t != lm.eos_id]


def submit_staggered(engine, prompts, lengths, **options):
    tickets = []
    for ids, n in zip(prompts, lengths):
        tickets.append(engine.submit(ids, n, **options))
        time.sleep(0.005)  # later requests join a batch that is already decoding
    return [t.result(timeout_s=60) for t in tickets]


@pytest.mark.parametrize("policy", ["continuous", "static", "sequential"])
def test_greedy_reply_is_the_same_alone_and_in_a_busy_batch(gpt, policy):
    ids = [gpt.encode(p) for p in PROMPTS]
    lengths = [30, 12, 25, 8, 30, 18]
    with Engine(gpt, max_batch=4, policy=policy) as engine:
        results = submit_staggered(engine, ids, lengths, stop_at_eos=False)
        mean_batch = engine.mean_batch
    for i, (tokens, done) in enumerate(results):
        assert tokens == alone(gpt, ids[i], lengths[i], stop_at_eos=False), PROMPTS[i]
        assert done.finish_reason == "length" and done.completion_tokens == lengths[i]
        assert done.timing["ttft_ms"] <= done.timing["total_ms"]
    if policy == "sequential":
        assert mean_batch == 1


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_requests_waiting_together_share_one_prefill_and_every_step(gpt, backend):
    """Submitted before the engine starts, four requests are admitted together: one left-padded prefill, then
    every decode step carries all four rows; each reply is still the one it gets alone."""
    ids = [gpt.encode(p) for p in PROMPTS[:4]]
    engine = Engine(gpt, backend=backend, max_batch=4)
    tickets = [engine.submit(i, 16, stop_at_eos=False) for i in ids]
    with engine:
        results = [t.result(timeout_s=60) for t in tickets]
    assert engine.steps == 15 and engine.mean_batch == 4
    assert len({done.timing["prefill_ms"] for _, done in results}) == 1  # one pass for the four prompts
    for i, (tokens, _) in enumerate(results):
        assert tokens == alone(gpt, ids[i], 16, backend=backend, stop_at_eos=False)


def test_sampled_reply_depends_on_its_seed_not_its_neighbours(gpt):
    ids = [gpt.encode(p) for p in PROMPTS[:3]]
    options = dict(sample=True, temperature=0.9, top_k=50, stop_at_eos=False)
    with Engine(gpt, max_batch=3) as engine:
        results = submit_staggered(engine, ids, [20] * 3, seed=7, **options)
    for i, (tokens, _) in enumerate(results):
        assert tokens == alone(gpt, ids[i], 20, seed=7, **options)


def test_a_reply_stops_at_its_end_of_sequence_token(gpt):
    ids = gpt.encode(PROMPTS[2])
    expected = alone(gpt, ids, 60)
    with Engine(gpt) as engine:
        tokens, done = engine.submit(ids, 60).result()
    assert tokens == expected
    assert done.finish_reason == ("stop" if len(expected) < 60 else "length")


@pytest.mark.slow
def test_prefix_cache_gives_the_tokens_of_a_full_prefill():
    from lmlab.models.pretrained import load_smollm2

    model, tokenizer = load_smollm2()
    smol = as_causal_lm(model, tokenizer, name="smollm2")
    system = [{"role": "system", "content": "You answer for a shoe shop. Returns are free within 30 days."}]
    prefix = tokenizer.apply_chat_template(system)["input_ids"]
    prompts = [list(tokenizer.apply_chat_template(system + [{"role": "user", "content": q}],
                                                  add_generation_prompt=True)["input_ids"])
               for q in ("Can I return shoes?", "How long is shipping?", "Do you sell socks?")]
    assert all(p[:len(prefix)] == prefix for p in prompts)
    with Engine(smol, max_batch=3, prefix_cache=2) as engine:
        results = submit_staggered(engine, prompts, [12] * 3, prefix_len=len(prefix), stop_at_eos=False)
        assert engine.prefixes.hits == 2 and len(engine.prefixes) == 1
    hits = [done.timing["prefix_cache_hit"] for _, done in results]
    assert hits == [False, True, True]
    for ids, (tokens, _) in zip(prompts, results):
        assert tokens == alone(smol, ids, 12, stop_at_eos=False)


def test_cancel_frees_the_slot_at_the_next_step(gpt):
    with Engine(gpt, max_batch=2) as engine:
        ticket = engine.submit(gpt.encode(PROMPTS[0]), 100, stop_at_eos=False)
        events = ticket.events()
        next(events)  # the first token: the request is joining the batch
        deadline = time.monotonic() + 2
        while engine.active == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert engine.active == 1
        ticket.cancel()
        kinds = [e for e in events]
        assert kinds[-1].finish_reason == "cancelled"
        deadline = time.monotonic() + 5
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.active == 0 and engine._past is None


def test_a_full_queue_refuses_and_bad_requests_raise(gpt):
    ids = gpt.encode(PROMPTS[0])
    engine = Engine(gpt, max_queue=2)  # not started: nothing leaves the queue
    engine.submit(ids, 4)
    engine.submit(ids, 4)
    with pytest.raises(QueueFull):
        engine.submit(ids, 4)
    with pytest.raises(ValueError, match="max_new_tokens=200 .*128"):
        engine.submit(ids, 200)
    with pytest.raises(ValueError, match="a 130-token prompt .*: shorten the prompt by 6 tokens$"):
        engine.check([5] * 130, 4)  # no room left for even one new token: no negative max_new_tokens advised
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.submit([], 4)
    with pytest.raises(ValueError, match="temperature"):
        engine.submit(ids, 4, sample=True, temperature=0)
    with pytest.raises(ValueError, match="policy='fifo' is unknown"):
        Engine(gpt, policy="fifo")
    with pytest.raises(ValueError, match="max_batch=0"):
        Engine(gpt, max_batch=0)


def test_lru_keeps_its_bound_and_evicts_the_least_recently_used():
    cache = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert cache.keys() == ["a", "c"] and len(cache) == 2
    assert cache.get("b") is None and (cache.hits, cache.misses) == (1, 1)
    assert cache.peek("a") == 1 and cache.peek("b") is None and (cache.hits, cache.misses) == (1, 1)
    off = LRU(0)
    off.put("a", 1)
    assert len(off) == 0


def test_sampling_params_give_the_engine_the_draw_generate_gives(gpt):
    """One SamplingParams, one seed: the engine and generate draw the same reply; the loose arguments still work."""
    params = SamplingParams(sample=True, temperature=0.8, top_p=0.9, seed=3)
    ids = gpt.encode(PROMPTS[1])
    with Engine(gpt, max_batch=3) as engine:
        tickets = [engine.submit(gpt.encode(p), 20, stop_at_eos=False) for p in PROMPTS[2:4]]  # busy neighbours
        drawn = engine.generate(ids, 20, sampling=params, stop_at_eos=False)
        loose = engine.generate(ids, 20, sample=True, temperature=0.8, top_p=0.9, seed=3, stop_at_eos=False)
        for ticket in tickets:
            ticket.result(timeout_s=60)
        with pytest.raises(ValueError, match="sampling"):
            engine.submit(ids, 4, sampling=params, seed=4)
        with pytest.raises(ValueError, match="top_p"):
            engine.submit(ids, 4, sample=True, top_p=0.0)
    assert drawn == loose == list(generate(gpt, ids, 20, sampling=params, stop_at_eos=False).tokens[0])
    assert drawn != list(generate(gpt, ids, 20, stop_at_eos=False).tokens[0])  # a draw, not the greedy reply
