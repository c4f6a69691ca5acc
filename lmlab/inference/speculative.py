"""Speculative decoding: draft a few tokens cheaply, check them all with ONE pass of the model, keep greedy's tokens.

Introduced for notebooks/06_acceleration.ipynb (decoding is one pass per token; this makes it fewer passes).

A decode step reads every weight to produce ONE token, and costs about the same for 5 new positions as for 1
(chapter 06: a step is bound by memory traffic, not arithmetic). So, for one reply, greedily:

1. **draft** k tokens d_1 .. d_k cheaply: by **prompt lookup** (find the last n-gram of the text so far earlier in
   the prompt and reply, n from ``max_ngram`` down to 1, and propose the k tokens that followed it: no second
   model; it pays off when the answer copies from the prompt, an FAQ, a quoted verse) or with a **draft model**
   (a smaller model of the same vocabulary, or a cheaper format of the same model, run greedily with its own
   KV cache);
2. **verify** with ONE forward pass of the target over k + 1 positions: the last accepted token and the k drafts.
   Position i's logits give the target's own greedy choice g_i after d_1 .. d_i;
3. **accept** the longest prefix where d_{i+1} = g_i, say a tokens, and append the target's own next token g_a:
   a + 1 new tokens per target pass (at least 1, as plain decoding). The caches are cut back
   (``lmlab.inference.step.crop_past``) to the accepted length, so the rejected drafts leave no trace.

Every kept token is the target's argmax after exactly the tokens before it, so the reply is plain greedy decoding's,
token for token, whatever the draft proposes (a bad draft costs time, never correctness). One caveat, measured in
tests/test_speculative.py: a pass over k + 1 rows rounds differently from k + 1 passes over 1 row, because a
matrix product of 6 rows runs another kernel (another order of the sums) than one of 1 row: the logits differ by
up to ~3e-6 (the shipped GPT) and ~5e-5 (SmolLM2, eager), so only two logits tied that closely could flip the
argmax. No flip showed in the tests (30 verses x 3 values of k x 2 methods on gpt-large; SmolLM2 eager and ONNX).

If each draft is accepted with probability α independently, the **expected tokens per target pass** is the formula

    E = (1 − α^(k+1)) / (1 − α)    (Leviathan et al. 2023),

and with a draft step costing c target steps (c ≈ 0 for prompt lookup), the **expected speed-up** (formula) is

    S = E / (k · c + 1).

The formulas assume k drafts at every pass with independent acceptances. Measured replies differ both ways: prompt
lookup may find no match (a pass of one token that α does not count) and a reply's last pass drafts fewer, which
lower the tokens per pass; acceptances come in runs (a copied line is accepted whole), which raise it. And a pass
over k + 1 positions costs somewhat more than one over 1, which the formula's c = 0 leaves out.

``speculative_speedup`` returns both formulas beside the measured tokens per pass and the measured speed-up against
plain greedy decoding on the same step. Speculation here runs one reply at a time (batch size 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmlab.inference.decode import CausalLM, _checked_rows, _step_for, generate, make_step
from lmlab.inference.step import PAD_MULTIPLE, DecodeStep, crop_past, every_logit, left_pad, past_length
from lmlab.measure.runtime import check_int, default_threads, pick_device, torch_threads
from lmlab.measure.stats import timing_verdict
from lmlab.measure.timing import Stopwatch, Timing

METHODS = ("prompt-lookup", "draft")


def prompt_lookup(sequence: Sequence[int], k: int, max_ngram: int = 3) -> list[int]:
    """Propose up to ``k`` tokens: find the sequence's last n-gram earlier in it and copy what followed.

    For n = max_ngram, ..., 1: the latest i < len − n with sequence[i : i + n] = sequence[−n:] gives the proposal
    sequence[i + n : i + n + k]; no match for any n gives [] (the pass then decodes one token, as plain greedy).
    """
    seq = list(sequence)
    for n in range(min(max_ngram, len(seq) - 1), 0, -1):
        tail = seq[-n:]
        for i in range(len(seq) - n - 1, -1, -1):
            if seq[i:i + n] == tail:
                return seq[i + n:i + n + k]
    return []


class DraftModel:
    """A draft model's greedy tokens, with its own KV cache kept in step with the accepted reply.

    The cache always holds a prefix of the reply so far; ``propose`` feeds the tokens it has not seen, then
    drafts k tokens one step each; ``settle`` cuts the cache back to the tokens the target accepted.
    """

    def __init__(self, step: DecodeStep, vocab_size: int):
        self.step, self.vocab_size = step, vocab_size
        self.past: Any = None
        self.ms = 0.0  # time spent drafting
        self.steps = 0  # draft forward passes

    def propose(self, sequence: Sequence[int], k: int) -> list[int]:
        """Return the draft's k greedy tokens after ``sequence``."""
        with Stopwatch() as watch:
            held = past_length(self.step, self.past)
            feed, drafts = list(sequence[held:]), []
            for _ in range(k):
                ids = torch.tensor([feed], device=self.step.device)  # (1, new)
                logits, self.past = every_logit(self.step, ids, self.past)
                if logits.shape[-1] != self.vocab_size:
                    raise ValueError(f"draft has a vocabulary of {logits.shape[-1]} tokens; the target's has "
                                     f"{self.vocab_size}: use a draft with the target's tokenizer")
                feed = [int(logits[-1].argmax())]
                drafts.append(feed[0])
                self.steps += 1
        self.ms += watch.ms
        return drafts

    def settle(self, length: int) -> None:
        """Keep at most the first ``length`` positions of the draft's cache (the accepted reply's)."""
        if self.past is not None and past_length(self.step, self.past) > length:
            self.past = crop_past(self.step, self.past, length)


@dataclass(frozen=True)
class SpeculativeGeneration:
    """One speculatively decoded reply: its tokens (plain greedy's) and what the speculation cost and saved.

    ``target_passes`` counts the verify passes after the prefill; each kept ``accepted_i`` drafted tokens plus
    the target's own next one, so with no end-of-sequence stop len(tokens) = 1 + accepted + target_passes.
    ``pass_ms[j]`` is verify pass j with its drafting; ``draft_ms`` the drafting alone.
    """

    tokens: tuple[int, ...]
    text: str
    prompt_tokens: int
    method: str
    k: int
    backend: str
    ttft_ms: float
    pass_ms: tuple[float, ...]
    target_passes: int
    drafted: int
    accepted: int
    draft_ms: float
    draft_steps: int
    threads: int

    @property
    def acceptance_rate(self) -> float:
        """α = accepted / drafted (nan when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else math.nan

    @property
    def tokens_per_pass(self) -> float:
        """Measured tokens per target pass after the prefill: (len(tokens) − 1) / target_passes."""
        return (len(self.tokens) - 1) / self.target_passes if self.target_passes else math.nan

    @property
    def ms_per_token(self) -> float:
        """Decoding time per token after the first: Σ pass_ms / (len(tokens) − 1)."""
        return sum(self.pass_ms) / (len(self.tokens) - 1) if len(self.tokens) > 1 else math.nan

    @property
    def tokens_per_s(self) -> float:
        return 1e3 / self.ms_per_token

    @property
    def draft_cost(self) -> float:
        """c = one draft step's ms / one target pass's ms (0 for prompt lookup: no draft model)."""
        if not self.draft_steps or not self.target_passes:
            return 0.0
        target_ms = (sum(self.pass_ms) - self.draft_ms) / self.target_passes
        return (self.draft_ms / self.draft_steps) / target_ms

    def expected_tokens_per_pass(self) -> float:
        """The formula E = (1 − α^(k+1)) / (1 − α) at the measured α (k + 1 when α = 1)."""
        return expected_tokens_per_pass(self.acceptance_rate, self.k)


def expected_tokens_per_pass(alpha: float, k: int) -> float:
    """Return E = (1 − α^(k+1)) / (1 − α): expected tokens per target pass (Leviathan et al. 2023); k + 1 at α = 1.

    Raises ValueError for α outside [0, 1] or k < 1.
    """
    check_int("k", k, 1)
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha!r} is out of range; use an acceptance rate in [0, 1]")
    return k + 1.0 if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def expected_speedup(alpha: float, k: int, draft_cost: float) -> float:
    """Return S = E / (k · c + 1): the expected speed-up with a draft step costing c target steps (the formula)."""
    if not (math.isfinite(draft_cost) and draft_cost >= 0):
        raise ValueError(f"draft_cost={draft_cost!r} is out of range; use a finite ratio >= 0")
    return expected_tokens_per_pass(alpha, k) / (k * draft_cost + 1)


# Steps whose verify pass does not reproduce single steps: a pass over k + 1 positions moves float32 attention by
# ~1e-6 (other sums in another order), and int8 activation rounding downstream grows that to whole logits, so the
# greedy tokens can differ (measured 2026-12-07 on SmolLM2's FAQ replies: 0 of 4 replies identical for onnx-int8 and
# fused-int4, 2 of 4 for fused-int8; 4 of 4 for onnx and fused float32). Speculation refuses them as targets.
INEXACT_BACKENDS = ("onnx-int8", "onnx-dynamic", "fused-int8", "fused-int4")


def check_exact(step: DecodeStep) -> DecodeStep:
    """Return ``step`` if a verify pass reproduces its single steps; raise ValueError for an int8 or int4 step."""
    if step.backend in INEXACT_BACKENDS:
        raise ValueError(f"step backend={step.backend!r} cannot be a speculative target: its multi-token pass rounds "
                         f"differently from single steps, so the tokens would not be greedy's; use a float32 "
                         f"backend (eager, compile, onnx, fused) as the target (an int8 step can still draft)")
    return step


def speculative_generate(lm: CausalLM, prompt: str | Sequence[int], max_new_tokens: int = 32, *,
                         method: str = "prompt-lookup", draft: CausalLM | DecodeStep | None = None, k: int = 4,
                         max_ngram: int = 3, backend: str = "eager", step: DecodeStep | None = None,
                         threads: int | None = None, stop_at_eos: bool = True) -> SpeculativeGeneration:
    """Greedy-decode one prompt with speculation: the tokens of ``generate(lm, prompt, ...)``, in fewer passes.

    Each target pass verifies k drafted tokens (``method`` "prompt-lookup": ``prompt_lookup`` with n-grams up to
    ``max_ngram``; "draft": ``draft``'s greedy tokens, a CausalLM of the same vocabulary or a DecodeStep) and keeps
    the longest agreeing prefix plus the target's own next token. ``step``/``backend``/``threads`` as ``generate``.
    Raises ValueError for a batch of prompts, an unknown method or backend, an int8 or int4 target
    (``INEXACT_BACKENDS``), k < 1, max_ngram < 1, a missing draft (or a draft given to prompt lookup), a draft of
    another vocabulary, and what ``generate`` refuses.
    """
    row = _one_row(lm, prompt, max_new_tokens)
    check_int("k", k, 1)
    check_int("max_ngram", max_ngram, 1)
    step = check_exact(_step_for(lm, step, backend, torch.device("cpu"), threads))
    drafter = _drafter(lm, method, draft, prompt, threads)
    with torch_threads(threads) as used:
        made = _speculate(step, row, max_new_tokens, drafter, k, max_ngram,
                          lm.eos_id if stop_at_eos else None, lm.pad_id)
    tokens, ttft_ms, pass_ms, drafted, accepted = made
    shown = [t for t in tokens if t != lm.eos_id]
    return SpeculativeGeneration(
        tokens=tuple(tokens), text=lm.decode(shown), prompt_tokens=len(row), method=method, k=k,
        backend=step.backend, ttft_ms=ttft_ms, pass_ms=tuple(pass_ms), target_passes=len(pass_ms),
        drafted=drafted, accepted=accepted, draft_ms=drafter.ms if drafter else 0.0,
        draft_steps=drafter.steps if drafter else 0, threads=used or default_threads())


def verify(step: DecodeStep, past: Any, sequence: Sequence[int], drafts: Sequence[int],
           pad: int = 0) -> tuple[list[int], Any]:
    """Check ``drafts`` with ONE pass of the target; return its new tokens and its cache cut to hold them but the last.

    ``past`` holds all of ``sequence`` but its last token; the pass runs that token and the drafts (k + 1
    positions), g_i = argmax of position i's logits, a = the longest prefix with d_{i+1} = g_i, and the new tokens
    are d_1 .. d_a, g_a. The cache is cropped to len(sequence) + a positions (the rejected drafts' keys and
    values are dropped), so it again holds all but the newest token. ``pad``: the left padding before the
    sequence in the cache (as the decode loop pads a prompt; ``every_logit``).
    """
    ids = torch.tensor([[sequence[-1], *drafts]], device=step.device)  # (1, k + 1)
    logits, past = every_logit(step, ids, past, pad)  # (k + 1, vocab)
    greedy = logits.argmax(-1).tolist()  # the target's choice after each prefix
    kept = 0
    while kept < len(drafts) and drafts[kept] == greedy[kept]:
        kept += 1
    if kept < len(drafts):
        past = crop_past(step, past, pad + len(sequence) + kept)
    return [*drafts[:kept], greedy[kept]], past


def _one_row(lm: CausalLM, prompt, max_new_tokens: int) -> list[int]:
    rows = _checked_rows(lm, prompt, max_new_tokens)
    if len(rows) != 1:
        raise ValueError(f"prompt is a batch of {len(rows)}; speculative decoding takes one prompt (batch size 1)")
    return rows[0]


def _drafter(lm: CausalLM, method: str, draft, prompt, threads: int | None) -> DraftModel | None:
    """The draft model for method "draft" (None for prompt lookup), refused where it cannot draft for ``lm``."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {METHODS}")
    if method == "prompt-lookup":
        if draft is not None:
            raise ValueError("draft is given but method='prompt-lookup' uses none; use method='draft'")
        return None
    if draft is None:
        raise ValueError("draft=None: method='draft' needs a draft model (a CausalLM or a DecodeStep)")
    vocab_size = int(lm.config.vocab_size)
    if isinstance(draft, CausalLM):
        theirs = int(draft.config.vocab_size)
        same_ids = not isinstance(prompt, str) or draft.encode(prompt) == lm.encode(prompt)
        if theirs != vocab_size or not same_ids:
            raise ValueError(f"draft {draft.name!r} has a vocabulary of {theirs} tokens (or tokenizes the prompt "
                             f"otherwise); the target's has {vocab_size}: use a draft with the target's tokenizer")
        return DraftModel(make_step(draft, "eager", threads), vocab_size)
    return DraftModel(draft, vocab_size)


def _speculate(step: DecodeStep, row: list[int], max_new_tokens: int, drafter: DraftModel | None, k: int,
               max_ngram: int, eos_id: int | None, pad_id: int) -> tuple[list[int], float, list[float], int, int]:
    """Prefill, then draft-and-verify until ``max_new_tokens`` or ``eos_id``; return the tokens, the TTFT, each
    pass's ms, and the drafted and accepted counts. Invariant: the target's cache holds all but the last token."""
    on = step.place(step.device)
    with Stopwatch() as watch:
        ids, mask = left_pad([row], pad_id, PAD_MULTIPLE)  # padded as the decode loop pads it: the same bits
        pad = int(mask.shape[1] - len(row))
        logits, past = every_logit(step, ids.to(on), None, pad)
        tokens = [int(logits[-1].argmax())]
    ttft_ms, pass_ms, drafted, accepted = watch.ms, [], 0, 0
    while len(tokens) < max_new_tokens and (eos_id is None or tokens[-1] != eos_id):
        with Stopwatch() as watch:
            room = min(k, max_new_tokens - len(tokens) - 1)  # a pass adds at most room + 1 tokens
            sequence = row + tokens
            drafts = [] if room == 0 else (drafter.propose(sequence, room) if drafter
                                            else prompt_lookup(sequence, room, max_ngram))
            new, past = verify(step, past, sequence, drafts, pad)
            kept = len(new) - 1
            if drafter:
                drafter.settle(len(sequence) + kept)
            if eos_id is not None and eos_id in new:
                new = new[:new.index(eos_id) + 1]
            tokens += new
        pass_ms.append(watch.ms)
        drafted, accepted = drafted + len(drafts), accepted + kept
    return tokens, ttft_ms, pass_ms, drafted, accepted


def speculative_speedup(lm: CausalLM, prompt: str | Sequence[int], max_new_tokens: int = 64, *, repeat: int = 3,
                        step: DecodeStep | None = None, backend: str = "eager", threads: int | None = 1,
                        **options) -> dict[str, Any]:
    """Time plain greedy ``generate`` and ``speculative_generate`` on one step, alternating, ``repeat`` times each
    (after one warm-up of each); return the formulas beside the measurements.

    Keys: ``identical`` (same tokens), ``alpha``, ``tokens_per_pass`` (measured) and ``expected_tokens_per_pass``
    (formula E at that α), ``draft_cost`` c, ``expected_speedup`` (formula E / (k c + 1)) and ``speedup`` (measured:
    plain ms per token / speculative ms per token, medians), both tokens/s, ``plain_ms`` and ``speculative_ms`` (the
    ms per token of each run, as Timings), ``verdict`` (speculative against plain by ``timing_verdict``: "faster",
    "slower" or "within noise" of the runs' spread), and the runs. ``options`` go to
    ``speculative_generate`` (method, draft, k, max_ngram). Raises ValueError as those two do, or repeat < 1.
    """
    check_int("repeat", repeat, 1)
    step = _step_for(lm, step, backend, pick_device("cpu"), threads)
    plain_ms, spec_ms = [], []
    for i in range(repeat + 1):  # run 0 is the warm-up
        plain = generate(lm, prompt, max_new_tokens, step=step, threads=threads, stop_at_eos=False)
        spec = speculative_generate(lm, prompt, max_new_tokens, step=step, threads=threads, stop_at_eos=False,
                                    **options)
        if i:
            plain_ms.append(sum(plain.step_ms) / len(plain.step_ms))
            spec_ms.append(spec.ms_per_token)
    plain_times, spec_times = Timing.of(plain_ms, threads=threads), Timing.of(spec_ms, threads=threads)
    plain_median, spec_median = plain_times.median_ms, spec_times.median_ms
    alpha = spec.acceptance_rate
    return {"identical": plain.tokens[0] == spec.tokens, "alpha": alpha, "k": spec.k,
            "tokens_per_pass": spec.tokens_per_pass,
            "expected_tokens_per_pass": expected_tokens_per_pass(alpha, spec.k) if spec.drafted else math.nan,
            "draft_cost": spec.draft_cost,
            "expected_speedup": expected_speedup(alpha, spec.k, spec.draft_cost) if spec.drafted else math.nan,
            "speedup": plain_median / spec_median, "plain_tokens_per_s": 1e3 / plain_median,
            "speculative_tokens_per_s": 1e3 / spec_median, "plain_ms": plain_times, "speculative_ms": spec_times,
            "verdict": timing_verdict(plain_times, spec_times), "backend": spec.backend, "threads": spec.threads,
            "plain": plain, "speculative": spec}
