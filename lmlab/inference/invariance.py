"""Batch invariance: a row's greedy tokens must not depend on what else shares its batch.

Introduced in notebooks/06_acceleration.ipynb. A server batches whatever requests are in flight, so the same
request meets a different batch every time. Left padding, the attention mask and positions counted from each
row's first real token (``lmlab.inference.step``) make every row compute the same FUNCTION as alone; whether it
computes the same BITS depends on the kernels. Floating-point addition is not associative,
(a + b) + c ≠ a + (b + c) in general, and a kernel chosen for the batch's shape may add a row's partial products
in another order: its logits move by ~1e-6, and where two tokens nearly tie, the greedy pick flips and the
reply goes another way from there.

Two causes, both measured on SmolLM2 in int8 (2026-12-07, one thread):

- the batch's SIZE: ONNX Runtime's MatMulNBits kernel for one row and for several added a row's block products
  in different orders with blocks of 128 weights; with blocks of 64 or 32 (lmlab's ``QUANT_BLOCKS``) every row count
  gives the same bits;
- the left PADDING: attention weights times values, Σ_s p_s v_s over positions, is a float32 MatMul that ONNX
  Runtime adds four terms at a time; padding shifts which terms share a group, unless it changes by a
  multiple of 4. The decode loop pads every batch (one prompt too) to a width that is a multiple of
  ``PAD_MULTIPLE``, so a row's padding is the same mod 4 alone and in any batch.

A difference of 1e-7 in one layer's attention becomes a different int8 code somewhere downstream (activations
are rounded to int8 at every matrix product), and grows to whole logits by the last layer.

``batch_invariance`` measures it for one backend: each prompt decoded alone against the same prompt decoded
in a batch with the others (of different lengths, so with left padding), tokens that differ and the largest
logit difference, and what the batch costs and buys in ms per token. ``why_rows_differ`` shows the cause on
one int8 matrix product and on a plain float32 sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from lmlab.compress.export import onnx_matmul
from lmlab.inference.decode import CausalLM, Generation, generate, make_step
from lmlab.measure.runtime import check_int


@dataclass(frozen=True)
class Invariance:
    """What one backend did to each prompt alone and in a batch: a results-friendly record (``as_dict``).

    ``differing_tokens``: positions where a row's greedy token in the batch differs from alone, over all
    prompts (of ``compared_tokens``); ``differing_rows``: prompts whose reply changed. ``max_logit_diff``:
    max |logits alone − logits batched| over the steps up to each row's first differing token (after it the two
    rows read different text). ``alone_ms_per_token``: the median decode step of one prompt (median over the
    prompts); ``batched_ms_per_token``: the batch's median step divided by its rows (the cost per reply).
    """

    model: str
    backend: str
    batch: int
    prompts: int
    new_tokens: int
    differing_tokens: int
    compared_tokens: int
    differing_rows: int
    max_logit_diff: float
    unpadded_logit_diff: float
    alone_ms_per_token: float
    batched_ms_per_token: float
    threads: int

    @property
    def invariant(self) -> bool:
        """True when no row's tokens changed in the batch."""
        return self.differing_tokens == 0

    def as_dict(self) -> dict:
        """The record as one table row (``pandas.DataFrame([r.as_dict() for r in records])``)."""
        return {**asdict(self), "invariant": self.invariant}


def batch_invariance(lm: CausalLM, prompts: Sequence[str | Sequence[int]], backend: str = "eager", batch: int = 8,
                     new_tokens: int = 16, threads: int | None = 1) -> Invariance:
    """Decode each prompt alone and in one batch of ``batch`` rows; count the greedy tokens that differ.

    The batch holds the prompts in turn (row i is prompt i mod n), padded on the left; row i < n is compared with
    prompt i alone, token by token over ``new_tokens`` greedy tokens (no stop at end of sequence), and prompt 0
    also with itself in a batch of ``batch`` copies (its own padding only). Invariant means differing_tokens = 0:
    tokens_batched[i][t] = tokens_alone[i][t] for every row i and step t. One step of ``backend``
    (``make_step``) serves every call, on ``threads`` threads.
    Raises ValueError for fewer than 2 prompts, a batch smaller than the prompts, new_tokens < 1, or as
    ``generate`` does (an unknown backend, a prompt too long).
    """
    if len(prompts) < 2:
        raise ValueError(f"prompts has {len(prompts)} prompt(s); invariance needs >= 2 to share a batch")
    check_int("batch", batch, len(prompts))
    check_int("new_tokens", new_tokens, 1)
    step = make_step(lm, backend, threads)

    def run(rows, tokens: int) -> Generation:
        return generate(lm, rows, tokens, stop_at_eos=False, step=step, threads=threads, keep_logits=True)

    run(prompts[0], 2)  # warm-up: the first calls of a session pay for its set-up
    alone = [run(prompt, new_tokens) for prompt in prompts]
    batched = run([prompts[i % len(prompts)] for i in range(batch)], new_tokens)
    copies = run([prompts[0]] * batch, new_tokens)  # the padding prompt 0 has alone: only the batch size differs
    differing, changed, worst = 0, 0, 0.0
    for i, one in enumerate(alone):
        _, differ, diff = _compare_row(one, batched, i)
        differing, changed, worst = differing + differ, changed + (differ > 0), max(worst, diff)
    alone_ms = float(np.median([one.decode_ms_per_token for one in alone]))
    return Invariance(model=lm.name, backend=step.backend, batch=batch, prompts=len(prompts), new_tokens=new_tokens,
                      differing_tokens=differing, compared_tokens=len(prompts) * new_tokens, differing_rows=changed,
                      max_logit_diff=worst, unpadded_logit_diff=_compare_row(alone[0], copies, 0)[2],
                      alone_ms_per_token=alone_ms,
                      batched_ms_per_token=batched.decode_ms_per_token / batch, threads=batched.threads)


def _compare_row(alone: Generation, batched: Generation, row: int) -> tuple[int, int, float]:
    """(tokens compared, tokens that differ, max |logit difference| up to the first differing token) of one row."""
    mine, theirs = alone.tokens[0], batched.tokens[row]
    differ = sum(a != b for a, b in zip(mine, theirs)) + abs(len(mine) - len(theirs))
    first = next((t for t, (a, b) in enumerate(zip(mine, theirs)) if a != b), len(mine) - 1)
    diff = max(float((alone.logits[t][0] - batched.logits[t][row]).abs().max()) for t in range(first + 1))
    return len(mine), differ, diff


def why_rows_differ(rows: int = 8, size: tuple[int, int] = (576, 1536), block_sizes: Sequence[int] = (128, 64, 32),
                    positions: int = 40, seed: int = 0) -> dict[str, float]:
    """Show why a row's numbers can depend on its batch: the same sums, added in another order.

    The batch's size: for each block size b, one int8 matrix product y = x W (lmlab's MatMulNBits node, W of
    ``size`` = (in, out), one thread) on row 0 alone and on ``rows`` rows at once: f"int8 block {b}" =
    max |y_alone − y_batch[0]| (0.0: the kernels for 1 and for ``rows`` rows give the same bits); "float32 matmul
    rows" the same for PyTorch's float32 product. The padding: attention's y = Σ_s p_s v_s over ``positions``
    positions, ONNX Runtime's float32 MatMul, against the same sum after k padding positions (p = 0 there):
    f"float32 attention, {k} pad" for k = 1 and 4. And "float32 sum in chunks" = |Σ x − Σ over 32 chunks of
    Σ chunk| for 4,096 numbers. Raises ValueError for rows < 2 or positions < 1.
    """
    check_int("rows", rows, 2)
    check_int("positions", positions, 1)
    generator = np.random.default_rng(seed)
    weight = generator.standard_normal(size).astype(np.float32)  # (in, out)
    x = generator.standard_normal((rows, size[0])).astype(np.float32)  # (rows, in)
    found = {}
    for block in block_sizes:
        product = onnx_matmul(weight, block_size=block, threads=1)
        found[f"int8 block {block}"] = float(np.abs(product(x[:1])[0] - product(x)[0]).max())
    weight_t, x_t = torch.from_numpy(weight), torch.from_numpy(x)
    found["float32 matmul rows"] = float((x_t[:1] @ weight_t - (x_t @ weight_t)[:1]).abs().max())
    values = generator.standard_normal((positions + 4, 64)).astype(np.float32)  # (padding + positions, head_dim)
    attention = generator.random(positions).astype(np.float32)
    attention /= attention.sum()  # (positions,): softmax-like weights
    alone = onnx_matmul(values[4:], block_size=None)(attention[None])  # (1, head_dim)
    for pad in (1, 4):
        padded = np.concatenate([np.zeros(pad, np.float32), attention])[None]  # (1, pad + positions)
        found[f"float32 attention, {pad} pad"] = float(np.abs(onnx_matmul(values[4 - pad:], None)(padded)
                                                              - alone).max())
    numbers = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal(4096).astype(np.float32))  # (4096,)
    whole, chunked = numbers.sum(), sum(chunk.sum() for chunk in numbers.chunk(32))
    found["float32 sum in chunks"] = float((whole - chunked).abs())
    return found
