"""Speculative decoding: the tokens of plain greedy decoding, token for token, in fewer passes of the model."""

import math

import pytest
import torch

from lmlab.data.corpora import kjv_verses
from lmlab.inference.decode import as_causal_lm, generate, make_step
from lmlab.inference.speculative import (
    expected_speedup,
    expected_tokens_per_pass,
    prompt_lookup,
    speculative_generate,
    speculative_speedup,
)
from lmlab.inference.step import crop_past, every_logit, past_length
from lmlab.models.checkpoints import load_checkpoint


@pytest.fixture(scope="module")
def large():
    return as_causal_lm(load_checkpoint("data/gpt-large").eval(), name="gpt-large")


@pytest.fixture(scope="module")
def small():
    return as_causal_lm(load_checkpoint("data/gpt-small").eval(), name="gpt-small")


def verse_prompts(count: int) -> list[str]:
    """``count`` KJV verses spread over the book, each twice (a reply that may copy from its prompt), cut short."""
    verses = kjv_verses()
    chosen = [verses[i * (len(verses) // count)][1].lower() for i in range(count)]
    return [" ".join((v + " " + v).split()[:40]) for v in chosen]


def test_prompt_lookup_copies_what_followed_the_last_ngram():
    assert prompt_lookup([1, 2, 3, 4, 5, 9, 2, 3], k=2) == [4, 5]  # "2 3" was followed by 4 5
    assert prompt_lookup([1, 2, 3, 7, 2, 3, 8, 2, 3], k=3) == [8, 2, 3]  # the latest match wins
    assert prompt_lookup([1, 2, 3, 4, 9, 3], k=2, max_ngram=3) == [4, 9]  # falls back to n = 1
    assert prompt_lookup([1, 2, 3], k=4) == [] and prompt_lookup([5], k=4) == []


@pytest.mark.parametrize("method", ["prompt-lookup", "draft"])
def test_speculation_gives_plain_greedy_tokens_on_30_verses(large, small, method):
    step = make_step(large)
    for prompt in verse_prompts(30):
        plain = generate(large, prompt, 40, step=step).tokens[0]
        for k in (1, 3, 6):
            got = speculative_generate(large, prompt, 40, method=method, k=k, step=step,
                                       draft=small if method == "draft" else None)
            assert got.tokens == plain, f"{method} k={k} on {prompt!r}"


def test_counters_add_up(large, small):
    for method, draft in (("prompt-lookup", None), ("draft", small)):
        for prompt in verse_prompts(5):
            got = speculative_generate(large, prompt, 50, method=method, draft=draft, k=4, stop_at_eos=False)
            assert len(got.tokens) == 50 == 1 + got.accepted + got.target_passes
            assert 0 <= got.accepted <= got.drafted <= 4 * got.target_passes
            assert got.target_passes == len(got.pass_ms) and got.tokens_per_pass >= 1
            assert (got.draft_steps == got.drafted) if method == "draft" else got.draft_steps == 0
            assert got.text == large.decode([t for t in got.tokens if t != large.eos_id])


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_a_verify_pass_differs_from_single_steps_only_by_float32_rounding(large, backend):
    """Why a near-tie could flip: k + 1 rows run other matrix kernels than 1 row (sums in another order)."""
    step = make_step(large, backend, threads=1)
    ids = torch.tensor([large.encode("in the beginning god created the heaven and the earth and the earth was")])
    cut = ids.shape[1] - 6
    _, past = every_logit(step, ids[:, :cut], None)
    together, _ = every_logit(step, ids[:, cut:], past)  # (6, vocab): one pass over 6 positions
    _, past = every_logit(step, ids[:, :cut], None)
    alone = []
    for j in range(cut, ids.shape[1]):  # 6 passes over 1 position each
        logits, past = every_logit(step, ids[:, j:j + 1], past)
        alone.append(logits[-1])
    assert float((together - torch.stack(alone)).abs().max()) < 1e-4
    torch.manual_seed(0)
    weight, rows = torch.randn(768, 256), torch.randn(6, 256)
    by_row = torch.cat([torch.nn.functional.linear(rows[i:i + 1], weight) for i in range(6)])
    assert torch.allclose(torch.nn.functional.linear(rows, weight), by_row, atol=1e-4)  # close, not always equal


def test_expected_tokens_per_pass_is_the_formula():
    assert expected_tokens_per_pass(0.0, 4) == 1 and expected_tokens_per_pass(1.0, 4) == 5
    assert expected_tokens_per_pass(0.5, 3) == pytest.approx((1 - 0.5 ** 4) / 0.5)
    assert expected_speedup(0.5, 3, 0.1) == pytest.approx(1.875 / 1.3)
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens_per_pass(1.5, 3)


def test_crop_rolls_the_cache_back_exactly(large, smol):
    cases = [(large, "in the beginning god created the heaven and the earth", "eager"),
             (smol, "The capital of France is Paris, and the capital of Spain is", "eager"),
             (smol, "The capital of France is Paris, and the capital of Spain is", "onnx")]
    for lm, text, backend in cases:
        step = make_step(lm, backend, threads=1)
        ids = torch.tensor([lm.encode(text)])  # (1, n)
        short = ids[:, :-3]
        _, kept = every_logit(step, short, None)
        _, grown = every_logit(step, ids, None)
        cropped = crop_past(step, grown, short.shape[1])
        assert past_length(step, cropped) == short.shape[1]
        for (k1, v1), (k2, v2) in zip(step.to_pairs(kept), step.to_pairs(cropped)):
            assert torch.allclose(k1, k2, atol=1e-5) and torch.allclose(v1, v2, atol=1e-5)
        with pytest.raises(ValueError, match="length"):
            crop_past(step, cropped, short.shape[1] + 1)


@pytest.mark.parametrize("backend", ["eager", "onnx", "fused"])
def test_smollm2_speculation_gives_plain_greedy_tokens(smol, backend):
    step = make_step(smol, backend, threads=1)
    faq = open("data/shop-faq.txt", encoding="utf-8").read()
    prompts = [faq + "\nQuestion: What is the returns policy?\nAnswer, quoting the FAQ:\n",
               "Repeat after me: the quick brown fox jumps over the lazy dog. The quick brown fox",
               "In the beginning God created the heaven and the earth. And the earth was without form"]
    for prompt in prompts:
        plain = generate(smol, prompt, 32, step=step, threads=1).tokens[0]
        for k in (2, 5):
            got = speculative_generate(smol, prompt, 32, k=k, step=step, threads=1)
            assert got.tokens == plain, f"{backend} k={k} on {prompt[-40:]!r}"
    drafted = speculative_generate(smol, prompts[1], 32, method="draft", draft=make_step(smol, "onnx-int8"), k=3,
                                   step=step, threads=1)
    assert drafted.tokens == generate(smol, prompts[1], 32, step=step, threads=1).tokens[0]


def test_speedup_report_holds_formula_and_measurement(large):
    report = speculative_speedup(large, verse_prompts(1)[0], 30, repeat=1, method="prompt-lookup", k=3)
    assert report["identical"] and report["threads"] == 1
    assert report["speedup"] > 0 and report["plain_tokens_per_s"] > 0
    assert math.isnan(report["expected_speedup"]) or report["expected_speedup"] >= 1


@pytest.mark.parametrize("options, message", [
    (dict(k=0), "k=0"),
    (dict(max_ngram=0), "max_ngram=0"),
    (dict(method="beam"), "method='beam'"),
    (dict(method="draft"), "draft=None"),
    (dict(backend="tpu"), "backend='tpu'"),
    (dict(backend="onnx-int8"), "backend='onnx-int8' cannot be a speculative target"),
])
def test_bad_settings_are_refused(large, options, message):
    with pytest.raises(ValueError, match=message):
        speculative_generate(large, "and he said", 8, **options)


def test_a_batch_and_a_foreign_vocabulary_are_refused(large, smol):
    with pytest.raises(ValueError, match="batch"):
        speculative_generate(large, ["and he said", "and god saw"], 8)
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(large, "and he said", 8, method="draft", draft=smol)
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(large, "and he said", 8, method="draft", draft=make_step(smol))
