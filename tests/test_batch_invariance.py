"""Batch invariance: every format lmlab decodes gives a row the same greedy tokens alone and in a batch of 8.

With blocks of 128 (lmlab's int8 before 2026-12-07), ONNX Runtime's int8 kernels for one row and for several
rows added a row's block products in different orders, and a server's greedy replies changed with the load; left
padding that is not the same mod 4 alone and batched moves the attention's float32 sums (``PAD_MULTIPLE``).
"""

import numpy as np
import pytest

from lmlab.compress.export import onnx_matmul
from lmlab.inference.decode import as_causal_lm
from lmlab.inference.invariance import batch_invariance, why_rows_differ
from lmlab.models.checkpoints import load_checkpoint

# Every backend lmlab decodes with; a new one (the fused decoder's "fused", "fused-int8", "fused-int4") is one more
# entry here. "compile" is left out: compiling a model takes longer than the rest of this module.
DECODED = ["eager", "onnx", "onnx-int8", "fused", "fused-int8", "fused-int4"]
BIT_EXACT = {"onnx", "onnx-int8"}  # ONNX Runtime's kernels give a row the same bits; PyTorch's matmul does not
GPT_PROMPTS = ["in the beginning god created", "and he said", "the lord is my shepherd i shall not want",
               "and it came to pass that", "blessed are the", "for god so loved the world that he gave", "thou shalt",
               "and the earth was without form and void and darkness was upon the face"]
SMOL_PROMPTS = ["The capital of France is", "Once upon a time",
                "The best way to learn a language is to practise every day and", "Water boils at",
                "In 1969, the first people to walk on the Moon were", "Python is a programming language that",
                "My favourite recipe for bread needs flour, water, salt and", "The"]


@pytest.fixture(scope="module")
def gpt():
    return as_causal_lm(load_checkpoint("data/gpt-small").eval(), name="gpt-small")


@pytest.mark.parametrize("backend", [b for b in DECODED if not b.startswith("fused")])  # fused: Llama-family only
def test_a_shipped_gpt_answers_the_same_alone_and_in_a_batch(gpt, backend):
    found = batch_invariance(gpt, GPT_PROMPTS, backend, batch=8, new_tokens=16)
    assert found.differing_tokens == 0, found
    assert found.compared_tokens == 8 * 16 and found.invariant and found.as_dict()["backend"] == backend
    # PyTorch picks another matmul kernel for one row than for several: its logits move by rounding only
    assert found.max_logit_diff == 0.0 if backend in BIT_EXACT else found.max_logit_diff < 1e-3
    assert found.alone_ms_per_token > 0 and found.batched_ms_per_token > 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", DECODED)
def test_smollm2_answers_the_same_alone_and_in_a_batch(smol, backend):
    """Blocks of 128: int8 changed 44 of these 128 tokens (6 of 8 replies); blocks of 32 but a batch's width not
    rounded to a multiple of 4: 20 tokens (3 replies)."""
    found = batch_invariance(smol, SMOL_PROMPTS, backend, batch=8, new_tokens=16)
    assert found.differing_tokens == 0, found
    assert found.max_logit_diff == 0.0 if backend in BIT_EXACT else found.max_logit_diff < 1e-3


@pytest.mark.parametrize("block_size", [32, 64])
def test_an_int8_row_has_the_same_bits_for_every_batch_size(block_size):
    """SmolLM2's three matrix shapes (the MLP's two and the output layer's), one row alone against 2..16 rows."""
    rng = np.random.default_rng(0)
    for size in ((576, 1536), (1536, 576), (576, 4096)):
        product = onnx_matmul(rng.standard_normal(size).astype(np.float32), block_size=block_size)
        x = rng.standard_normal((16, size[0])).astype(np.float32)  # (rows, in)
        alone = np.concatenate([product(x[i:i + 1]) for i in range(16)])  # (rows, out), one row per call
        for rows in (2, 3, 8, 16):
            assert np.array_equal(product(x[:rows]), alone[:rows]), (size, rows)


def test_why_rows_differ_names_the_cause():
    found = why_rows_differ(rows=8, size=(576, 256))
    assert found["int8 block 64"] == found["int8 block 32"] == 0.0  # what lmlab relies on (int8: 64, int4: 32)
    assert found["float32 attention, 4 pad"] == 0.0
    assert set(found) == {"int8 block 128", "int8 block 64", "int8 block 32", "float32 matmul rows",
                          "float32 attention, 1 pad", "float32 attention, 4 pad", "float32 sum in chunks"}
    assert all(np.isfinite(value) and value >= 0 for value in found.values())
    assert found["float32 sum in chunks"] < 1e-3  # another order of the same sum: rounding, not a bug


def test_bad_settings_name_the_argument(gpt):
    with pytest.raises(ValueError, match="prompts"):
        batch_invariance(gpt, ["and he said"])
    with pytest.raises(ValueError, match="batch"):
        batch_invariance(gpt, GPT_PROMPTS, batch=4)
    with pytest.raises(ValueError, match="block_size"):
        onnx_matmul(np.ones((64, 8), np.float32), block_size=48)
    with pytest.raises(ValueError, match="rows"):
        why_rows_differ(rows=1)


@pytest.mark.parametrize("model, format", [("gpt-small", "int8"),
                                           pytest.param("smollm2", "int8", marks=pytest.mark.slow),
                                           pytest.param("smollm2", "fused-int8", marks=pytest.mark.slow)])
def test_the_int8_server_replies_the_same_alone_and_among_six_others(model, format):
    """A greedy int8 reply sent alone, then again while six other requests decode in the same batches.

    With blocks of 128 SmolLM2's replies changed (gpt-small's did not: its margins between the top two tokens
    are wider than what the kernels' rounding moves). Prompts are prefilled whole (``chunk_tokens=0``): the slot
    engine's chunked prefill, on by default, would cut the target's prompt into pieces only when it arrives among
    decoding streams. A last piece of ONE position ran ONNX Runtime's one-row float32 kernel, whose rounding int8
    grew enough to flip a near-tie in 1 of 4 runs of this test (2026-12-07: "la montagma" against "la maquette"
    at the 8th token); the engine no longer cuts such pieces (``slots.piece_length``, tested in test_slots.py).
    This test checks the decode rows' batch invariance, not chunking's.
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    from lmlab.serving.launcher import running_server

    prompts, target_tokens, other_tokens = (GPT_PROMPTS, 24, 100) if model == "gpt-small" else (SMOL_PROMPTS, 16, 40)

    def ask(client, text: str, max_tokens: int) -> str:
        reply = client.chat.completions.create(model=model, max_tokens=max_tokens, temperature=0,
                                               messages=[{"role": "user", "content": text}],
                                               extra_body={"ignore_eos": True})
        return reply.choices[0].message.content

    whole = {"chunk_tokens": 0} if format.startswith("fused") else {}  # the dense engine never chunks
    with running_server(model, format=format, max_batch=8, reply_cache=0, **whole) as server:
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="none", timeout=60)
        alone = [ask(client, text, target_tokens) for text in prompts[:3]]
        among = []
        with ThreadPoolExecutor(max_workers=7) as pool:
            for text in prompts[:3]:
                steps = server.health()["steps"]
                others = [pool.submit(ask, client, other, other_tokens) for other in prompts[2:]]  # six longer
                time.sleep(0.01)  # the target joins a batch already decoding
                among.append(ask(client, text, target_tokens))
                assert all(other.result() for other in others)
                # Decoded one reply at a time the round takes 6 x other_tokens + target_tokens steps; batched, at
                # most other_tokens + target_tokens, plus one round of stagger per request (7) when the requests
                # join in different rounds (measured: 131 = 100 + 24 + 7 in a fresh-clone run on 2 busy cores).
                assert server.health()["steps"] - steps <= other_tokens + target_tokens + 7
        assert among == alone


@pytest.mark.slow
def test_the_engine_gives_each_row_its_lone_int8_tokens_under_a_staggered_load(smol):
    """Requests arrive a few ms apart and join a running batch at different lengths. Measured 2026-12-07 over
    3 such rounds of these 8 prompts (384 tokens): 127 tokens differed from alone with blocks of 128, 46 with
    blocks of 32 but rows joining at any length, 0 once a row joins only at a multiple of 4 (Engine._join)."""
    import time

    from lmlab.serving.engine import Engine

    ids = [smol.encode(p) for p in SMOL_PROMPTS]
    with Engine(smol, backend="onnx-int8", max_batch=8, threads=1) as engine:
        alone = [engine.generate(i, 16, stop_at_eos=False) for i in ids]
        for first in range(2):
            order = list(range(first, len(ids))) + list(range(first))
            tickets = []
            for k, i in enumerate(order):
                tickets.append(engine.submit(ids[i], 16, stop_at_eos=False))
                time.sleep(0.013 * (k % 3))  # 0, 13 or 26 ms apart: rows join at different lengths
            assert [t.result(timeout_s=120)[0] for t in tickets] == [alone[i] for i in order]
        assert engine.mean_batch > 1.5
