"""The decode loop: the cache changes the speed, never the tokens; a batch answers as each prompt would alone."""

import math

import pytest
import torch

from lmlab.inference.decode import as_causal_lm, generate, kv_cache_bytes, make_step, past_bytes, stream
from lmlab.inference.sampling import SamplingParams, pick, sampling_probs
from lmlab.inference.step import PAD_MULTIPLE, DecodeStep, left_pad, left_pad_to, next_logits, positions
from lmlab.models.checkpoints import load_checkpoint

PROMPTS = ["in the beginning god created", "and he said", "the lord is my shepherd i shall not want"]


@pytest.fixture(scope="module")
def gpt():
    return load_checkpoint("data/gpt-small").eval()


@pytest.fixture(scope="module")
def lm(gpt):
    return as_causal_lm(gpt, name="gpt-small")


def assert_same_or_near_tie(got, alone, tolerance=1e-4):
    """Tokens must match; where they first differ, the two best logits of the lone run must tie within rounding."""
    for j, (a, b) in enumerate(zip(got, alone.tokens[0])):
        if a != b:
            top2 = alone.logits[j][0].topk(2).values
            assert float(top2[0] - top2[1]) < tolerance, f"step {j}: {a} != {b} with a margin of {top2.tolist()}"
            return
    assert len(got) == len(alone.tokens[0])


def test_cache_gives_the_same_tokens_as_recomputing(lm):
    for prompt in PROMPTS:
        with_cache = generate(lm, prompt, 40, stop_at_eos=False)
        without = generate(lm, prompt, 40, cache=False, stop_at_eos=False)
        assert with_cache.tokens == without.tokens and len(with_cache.tokens[0]) == 40


def test_greedy_equals_transformers_generate(lm, gpt):
    for prompt in PROMPTS:
        ids = torch.tensor([lm.encode(prompt)])
        theirs = gpt.gpt.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False,
                                  pad_token_id=lm.pad_id)[0, ids.shape[1]:].tolist()
        ours = generate(lm, prompt, 30).tokens[0]
        assert list(ours) == theirs[:len(ours)] and (len(ours) == 30 or ours[-1] == lm.eos_id)


def test_a_batch_answers_as_each_prompt_alone(lm):
    batch = generate(lm, PROMPTS, 25, stop_at_eos=False)
    assert batch.batch_size == 3 and batch.prompt_tokens == tuple(len(lm.encode(p)) for p in PROMPTS)
    for row, prompt in zip(batch.tokens, PROMPTS):
        assert_same_or_near_tie(row, generate(lm, prompt, 25, stop_at_eos=False, keep_logits=True))


def test_a_row_that_ends_stops_while_the_others_go_on(lm):
    batch = generate(lm, PROMPTS, 40)
    for row, prompt in zip(batch.tokens, PROMPTS):
        alone = generate(lm, prompt, 40).tokens[0]
        assert row == alone
        assert lm.eos_id not in row[:-1]


def test_seeded_sampling_repeats(lm):
    first = generate(lm, PROMPTS[0], 20, sample=True, temperature=0.9, top_k=50, top_p=0.95, seed=7)
    again = generate(lm, PROMPTS[0], 20, sample=True, temperature=0.9, top_k=50, top_p=0.95, seed=7)
    other = [generate(lm, PROMPTS[0], 20, sample=True, seed=s, stop_at_eos=False).tokens for s in range(5)]
    assert first.tokens == again.tokens
    assert len(set(other)) > 1  # different seeds, different replies


def test_stream_yields_the_tokens_generate_returns(lm):
    pieces = list(stream(lm, PROMPTS[2], 20, stop_at_eos=False))
    whole = generate(lm, PROMPTS[2], 20, stop_at_eos=False)
    assert tuple(p.token for p in pieces) == whole.tokens[0]
    assert "".join(p.text for p in pieces) == whole.text and whole.text.startswith(" ")  # a continuation
    assert all(b.elapsed_ms >= a.elapsed_ms > 0 for a, b in zip(pieces, pieces[1:]))


def test_timings_are_part_of_the_result(lm):
    g = generate(lm, PROMPTS[0], 12, stop_at_eos=False)
    assert g.new_tokens == 12 and len(g.step_ms) == 11 and g.ttft_ms > 0
    assert g.total_ms == pytest.approx(g.ttft_ms + sum(g.step_ms))
    assert math.isfinite(g.tokens_per_s) and g.tokens_per_s > 0 and g.decode_ms_per_token > 0


def test_the_cache_holds_what_the_formula_says(lm, gpt):
    def width(tokens: int) -> int:  # the prompts' width: the longest, its left padding rounded up to PAD_MULTIPLE
        return -(-tokens // PAD_MULTIPLE) * PAD_MULTIPLE

    prompt_tokens, new = len(lm.encode(PROMPTS[0])), 10
    g = generate(lm, PROMPTS[0], new, stop_at_eos=False)
    # After the last pick the cache holds the (padded) prompt and every new token but the last (not yet fed back).
    assert g.cache_bytes == kv_cache_bytes(gpt.gpt.config, width(prompt_tokens) + new - 1)
    batch = generate(lm, PROMPTS, new, stop_at_eos=False)
    longest = max(batch.prompt_tokens)
    assert batch.cache_bytes == kv_cache_bytes(gpt.gpt.config, width(longest) + new - 1, batch_size=3)
    assert generate(lm, PROMPTS[0], new, cache=False).cache_bytes == 0
    assert past_bytes(None) == 0


def test_sampling_distribution_sums_to_one_and_cuts():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 10.0]])
    for kwargs in ({}, {"temperature": 0.5}, {"top_k": 2}, {"top_p": 0.8}, {"top_k": 3, "top_p": 0.5}):
        probs = sampling_probs(logits, **kwargs)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    assert int((sampling_probs(logits, top_k=2) > 0).sum(-1)[0]) == 2
    full = torch.softmax(logits[0], -1)  # 0.64, 0.24, 0.09, ...: top-p 0.8 keeps the first two (0.64 < 0.8 <= 0.88)
    nucleus = sampling_probs(logits, top_p=0.8)[0]
    assert (nucleus > 0).tolist() == [True, True, False, False, False]
    torch.testing.assert_close(nucleus[:2], full[:2] / full[:2].sum())


@pytest.mark.parametrize("kwargs, name", [
    ({"prompts": ""}, "prompt"),
    ({"prompts": "   "}, "prompt"),
    ({"prompts": []}, "prompts"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 200}, "max_new_tokens"),
    ({"device": "tpu"}, "device"),
    ({"sample": True, "temperature": 0}, "temperature"),
    ({"sample": True, "temperature": -1.0}, "temperature"),
    ({"sample": True, "top_k": 0}, "top_k"),
    ({"sample": True, "top_p": 1.5}, "top_p"),
    ({"backend": "tensorrt"}, "backend"),
])
def test_bad_input_names_the_argument(lm, kwargs, name):
    args = {"prompts": PROMPTS[0], "max_new_tokens": 5, **kwargs}
    with pytest.raises(ValueError, match=name):
        generate(lm, **args)


def test_window_error_says_what_fits(lm):
    prompt_tokens = len(lm.encode(PROMPTS[0]))
    with pytest.raises(ValueError, match=f"max_new_tokens <= {128 - prompt_tokens}"):
        generate(lm, PROMPTS[0], 128)
    assert len(generate(lm, PROMPTS[0], 128 - prompt_tokens, stop_at_eos=False).tokens[0]) == 128 - prompt_tokens


def test_window_error_for_a_prompt_that_leaves_no_room_says_how_much_to_shorten_it(lm):
    long_prompt = " ".join(["and god said"] * 50)  # 150 words: more than the 128-position window holds
    tokens = len(lm.encode(long_prompt))
    with pytest.raises(ValueError, match="max_new_tokens") as refused:
        generate(lm, long_prompt, 4)
    message = str(refused.value)
    assert "<= -" not in message and f"{tokens}-token prompt" in message
    assert f"shorten the prompt by {tokens + 4 - 128} tokens" in message


def test_stream_of_a_batch_streams_its_first_row(lm):
    alone = [p.token for p in stream(lm, PROMPTS[0], 6, stop_at_eos=False)]
    batched = list(stream(lm, PROMPTS[0], 6, stop_at_eos=False, batch=3))
    assert [p.token for p in batched] == alone and batched[-1].elapsed_ms >= batched[0].elapsed_ms > 0
    with pytest.raises(ValueError, match="batch=0"):
        list(stream(lm, PROMPTS[0], 6, batch=0))


def test_only_causal_lms_are_wrapped(names_data):
    from lmlab.models.kinds import build_model

    with pytest.raises(ValueError, match="model"):
        as_causal_lm(build_model("mlp", names_data.vocab))
    with pytest.raises(ValueError, match="backend"):
        make_step(as_causal_lm(load_checkpoint("data/gpt-small")), "tvm")


@pytest.mark.slow
def test_smollm2_cache_batch_and_transformers_agree(smol):
    model, prompts = smol.source, ["The capital of France is", "Once upon a time, in a land far away,", "2 + 2 ="]
    for prompt in prompts:
        ids = torch.tensor([smol.encode(prompt)])
        theirs = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                do_sample=False)[0, ids.shape[1]:].tolist()
        ours = generate(smol, prompt, 12)
        assert list(ours.tokens[0]) == theirs[:len(ours.tokens[0])]
        assert generate(smol, prompt, 12, cache=False).tokens == ours.tokens
        width = -(-len(ids[0]) // PAD_MULTIPLE) * PAD_MULTIPLE  # the prompt, its left padding rounded up
        assert ours.cache_bytes == kv_cache_bytes(model.config, width + len(ours.tokens[0]) - 1)
    batch = generate(smol, prompts, 12, stop_at_eos=False)
    for row, prompt in zip(batch.tokens, prompts):
        assert_same_or_near_tie(row, generate(smol, prompt, 12, stop_at_eos=False, keep_logits=True))
    assert generate(smol, "The capital of France is", 6).text.startswith(" Paris")


def test_onnx_runtime_decodes_the_same_tokens(lm):
    eager = generate(lm, PROMPTS, 20, stop_at_eos=False, keep_logits=True)
    exported = generate(lm, PROMPTS, 20, stop_at_eos=False, keep_logits=True, backend="onnx")
    assert exported.tokens == eager.tokens and exported.cache_bytes == eager.cache_bytes
    assert max(float((a - b).abs().max()) for a, b in zip(exported.logits, eager.logits)) < 1e-4
    int8 = generate(lm, PROMPTS[0], 20, stop_at_eos=False, backend="onnx-int8")
    assert len(int8.tokens[0]) == 20 and int8.backend == "onnx-int8"


@pytest.mark.slow
def test_smollm2_in_onnx_runtime_answers_like_eager(smol):
    """Also builds SmolLM2's decoder graphs in the user cache, which chapter 06 then loads in seconds."""
    eager = generate(smol, "The capital of France is", 12, keep_logits=True)
    exported = generate(smol, "The capital of France is", 12, backend="onnx", keep_logits=True)
    assert exported.tokens == eager.tokens
    assert max(float((a - b).abs().max()) for a, b in zip(exported.logits, eager.logits)) < 1e-3
    assert generate(smol, "The capital of France is", 6, backend="onnx-int8").text.startswith(" Paris")


def test_break_even_counts_the_calls_that_repay_a_one_off_cost():
    from lmlab.inference.decode import break_even

    assert break_even(1000.0, 5.0, 3.0) == 500.0
    assert break_even(1000.0, 3.0, 5.0) == math.inf
    with pytest.raises(ValueError, match="one_off_ms"):
        break_even(-1.0, 5.0, 3.0)


def test_compare_steps_times_each_path_against_the_reference(lm):
    from lmlab.inference.decode import compare_steps

    rows = compare_steps(lm, PROMPTS[0], {"eager": lambda: make_step(lm, "eager"),
                                          "onnx": lambda: make_step(lm, "onnx")}, new_tokens=10)
    eager, onnx = rows
    assert eager["path"] == "eager" and eager["speed_up"] == 1.0 and eager["max_logit_diff"] == 0.0
    assert math.isnan(eager["one_off_ms"]) and onnx["one_off_ms"] > 0 and onnx["max_logit_diff"] < 1e-4
    assert onnx["break_even"] > 0 and onnx["run"].tokens == eager["run"].tokens
    with pytest.raises(ValueError, match="reference"):
        compare_steps(lm, PROMPTS[0], {"onnx": lambda: make_step(lm, "onnx")})


def test_prompts_may_be_text_ids_or_a_tensor(lm):
    ids = lm.encode(PROMPTS[0])
    expected = generate(lm, PROMPTS[0], 5, stop_at_eos=False).tokens
    assert generate(lm, ids, 5, stop_at_eos=False).tokens == expected
    assert generate(lm, torch.tensor(ids), 5, stop_at_eos=False).tokens == expected
    assert generate(lm, torch.tensor([ids, ids]), 5, stop_at_eos=False).tokens == expected * 2
    with pytest.raises(ValueError, match="batch"):
        list(stream(lm, PROMPTS, 5))


def test_stream_speed_is_ttft_then_tokens_per_second():
    from lmlab.inference.decode import StreamedToken, stream_speed

    pieces = [StreamedToken(5, " a", 100.0), StreamedToken(6, " b", 120.0), StreamedToken(7, " c", 140.0)]
    assert stream_speed(pieces) == (100.0, 50.0)  # 2 tokens after the first, in 40 ms
    assert math.isnan(stream_speed(pieces[:1])[1])
    with pytest.raises(ValueError, match="pieces"):
        stream_speed([])


def test_littles_law_counts_in_flight_and_times_with_two_clocks():
    from lmlab.inference.decode import Generation, littles_law

    # two replies: 3 and 2 new tokens; the prefill (10 ms) makes 2 tokens, step 0 (4 ms) 2, step 1 (6 ms) only 1
    run = Generation(tokens=((1, 2, 3), (4, 5)), texts=("a", "b"), prompt_tokens=(3, 3), ttft_ms=10.0,
                     step_ms=(4.0, 6.0), cache=True, backend="eager")
    law = littles_law(run, wall_ms=25.0)  # the clock around the call saw 5 ms the loop did not
    assert law["in_flight"] == pytest.approx((2 * 10 + 2 * 4 + 1 * 6) / 20)  # 1.7, not the batch of 2
    assert law["throughput_per_s"] == pytest.approx(5 / 0.025) and law["time_in_system_s"] == pytest.approx(0.0068)
    assert law["ratio"] == pytest.approx(25 / 20) and law["predicted"] == pytest.approx(1.36)
    assert littles_law(run, wall_ms=20.0)["ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"wall_ms=19\.0 is out of range"):
        littles_law(run, wall_ms=19.0)


def test_batch_littles_law_times_the_whole_call_around_the_loop(lm):
    from lmlab.inference.decode import batch_littles_law

    law = batch_littles_law(lm, [[5, 6, 7], [8, 9, 10]], 4, stop_at_eos=False, device="cpu")
    assert law["tokens"] == 8 and law["in_flight"] == pytest.approx(2.0)  # every row makes a token in every step
    assert law["wall_ms"] >= law["loop_ms"] > 0 and law["ratio"] >= 1.0

@pytest.mark.parametrize("fields, name", [
    ({"sample": "yes"}, "sample"),
    ({"temperature": 0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": math.inf}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"seed": 1.5}, "seed"),
    ({"seed": True}, "seed"),
    ({"seed": 2 ** 64}, "seed"),
])
def test_sampling_params_name_the_field_out_of_range(fields, name):
    with pytest.raises(ValueError, match=f"{name}=.*out of range"):
        SamplingParams(**{"sample": True, **fields})


def test_sampling_params_default_to_greedy_and_are_frozen():
    import dataclasses

    greedy = SamplingParams.greedy()
    assert greedy == SamplingParams() and not greedy.sample and greedy.generator(torch.device("cpu")) is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        greedy.temperature = 0.5  # type: ignore[misc]
    drawn = SamplingParams(sample=True, temperature=0.7, top_k=3, seed=11)
    assert drawn.generator(torch.device("cpu")).initial_seed() == 11


def test_pick_is_argmax_or_a_seeded_draw_from_sampling_probs():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 0.0, 5.0, 0.0]])
    assert pick(logits, SamplingParams.greedy(), None).tolist() == [0, 3]
    params = SamplingParams(sample=True, temperature=2.0, top_k=3, seed=5)
    expected = torch.multinomial(sampling_probs(logits, 2.0, 3), 1, generator=torch.Generator().manual_seed(5))
    drawn = [pick(logits, params, params.generator(torch.device("cpu"))).tolist() for _ in range(2)]
    assert drawn[0] == drawn[1] == expected.squeeze(1).tolist()
    many = torch.stack([pick(logits, params, g) for g in [torch.Generator().manual_seed(s) for s in range(200)]])
    assert set(many[:, 0].tolist()) == {0, 1, 2}  # top-k 3 keeps three tokens, and only those


def test_loose_sampling_arguments_mean_the_same_as_sampling_params(lm):
    params = SamplingParams(sample=True, temperature=0.9, top_k=50, top_p=0.95, seed=7)
    loose = dict(sample=True, temperature=0.9, top_k=50, top_p=0.95, seed=7)
    sampled = generate(lm, PROMPTS[0], 15, sampling=params, stop_at_eos=False).tokens
    assert sampled == generate(lm, PROMPTS[0], 15, stop_at_eos=False, **loose).tokens
    assert sampled != generate(lm, PROMPTS[0], 15, stop_at_eos=False).tokens  # a draw, not the greedy reply
    streamed = [p.token for p in stream(lm, PROMPTS[0], 15, sampling=params, stop_at_eos=False)]
    assert tuple(streamed) == sampled[0]
    assert streamed == [p.token for p in stream(lm, PROMPTS[0], 15, stop_at_eos=False, **loose)]
    greedy = generate(lm, PROMPTS[1], 8, sampling=SamplingParams.greedy()).tokens
    assert greedy == generate(lm, PROMPTS[1], 8).tokens == generate(lm, PROMPTS[1], 8, temperature=0.3).tokens
    with pytest.raises(ValueError, match="sampling"):
        generate(lm, PROMPTS[0], 5, sampling=params, temperature=0.5)


def test_left_pad_and_positions_count_from_each_first_real_token():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    grown = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)  # one decode step later
    assert positions(grown, 1).tolist() == [[3], [1]]
    assert left_pad_to(mask, 5).tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]]
    keys = torch.randn(2, 4, 3, 8)  # (batch, heads, time, head_dim)
    padded = left_pad_to(keys, 6)
    assert padded.shape == (2, 4, 6, 8) and torch.equal(padded[:, :, 3:], keys) and not padded[:, :, :3].any()
    with pytest.raises(ValueError, match="rows"):
        left_pad([[1], []], pad_id=0)
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, multiple=PAD_MULTIPLE)  # width 3 rounded up to 4
    assert ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]] and positions(mask).tolist() == [[0, 0, 1, 2], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="multiple"):
        left_pad([[1]], pad_id=0, multiple=0)


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_every_step_answers_the_decode_step_protocol(lm, gpt, backend):
    """backend, device, no_cache and the (keys, values) pairs: all a caller needs, without asking for the class."""
    step = make_step(lm, backend)
    assert isinstance(step, DecodeStep) and step.backend == backend and step.device == torch.device("cpu")
    ids, mask = left_pad([lm.encode(p) for p in PROMPTS], lm.pad_id)  # (3, L)
    last, past = next_logits(step, ids, mask, None)  # (3, vocab)
    pairs = step.to_pairs(past)
    config = gpt.gpt.config
    assert len(pairs) == config.n_layer
    assert pairs[0][0].shape == (3, config.n_head, ids.shape[1], config.n_embd // config.n_head)
    rebuilt = step.from_pairs([(k.clone(), v.clone()) for k, v in pairs])
    token = last.argmax(-1, keepdim=True)  # (3, 1)
    grown = torch.cat([mask, torch.ones_like(token)], dim=1)
    through_past, _ = next_logits(step, token, grown, past)
    through_pairs, _ = next_logits(step, token, grown, rebuilt)
    torch.testing.assert_close(through_pairs, through_past)
    recomputed, _ = next_logits(step, torch.cat([ids, token], 1), grown, step.no_cache)
    torch.testing.assert_close(recomputed, through_past, atol=1e-4, rtol=1e-4)
