"""Inference: prefill and decode, the KV cache, sampling, generation and streaming.

Modules, each importing only those above it in the course:
- ``sampling``: How the next token is chosen from the logits: greedy, or a seeded draw cut by temperature, top-k
  and top-p.
- ``step``: A decode step, typed: the one forward pass the decode loop and the serving engine both run, and the
  batch pieces they share (left padding, positions, the next-token logits).
- ``decode``: How a language model answers: prefill the prompt, then decode one token at a time, with or without a
  KV cache.
- ``invariance``: Batch invariance: a row's greedy tokens must not depend on what else shares its batch.
- ``position_cost``: Cost of one token against its position: a recurrent step, a GPT with and without its KV cache.
- ``speculative``: Speculative decoding: draft a few tokens cheaply, check them all with ONE pass of the model, keep
  greedy's tokens.
"""

from lmlab.inference.sampling import SamplingParams, pick, pick_rows, sample, sampling_params, sampling_probs
from lmlab.inference.step import (
    PAD_MULTIPLE, DecodeStep, TorchStep, crop_past, every_logit, left_pad, left_pad_to, next_logits, past_length,
    positions,
)
from lmlab.inference.decode import (
    BACKENDS, CausalLM, Generation, StreamedToken, as_causal_lm, batch_littles_law, break_even, compare_steps,
    generate, kv_cache_bytes, littles_law, make_step, past_bytes, score_ids, stream, stream_speed,
)
from lmlab.inference.invariance import Invariance, batch_invariance, why_rows_differ
from lmlab.inference.position_cost import cost_by_position, position_cost_plot, position_ratios, position_verdicts
from lmlab.inference.speculative import (
    INEXACT_BACKENDS, DraftModel, SpeculativeGeneration, check_exact, expected_speedup, expected_tokens_per_pass,
    prompt_lookup, speculative_generate,
    speculative_speedup, verify,
)

__all__ = [
    "BACKENDS", "PAD_MULTIPLE", "CausalLM", "as_causal_lm", "DecodeStep", "TorchStep", "make_step", "left_pad",
    "left_pad_to", "positions", "next_logits", "SamplingParams", "sampling_params", "pick", "pick_rows", "sample",
    "Generation",
    "StreamedToken", "generate", "stream", "stream_speed", "littles_law", "batch_littles_law", "sampling_probs",
    "kv_cache_bytes", "past_bytes", "break_even", "compare_steps", "score_ids", "cost_by_position",
    "position_cost_plot", "position_ratios", "position_verdicts", "Invariance", "batch_invariance", "why_rows_differ",
    "crop_past", "every_logit", "past_length", "prompt_lookup",
    "DraftModel", "SpeculativeGeneration", "speculative_generate", "verify", "expected_tokens_per_pass",
    "expected_speedup", "speculative_speedup", "INEXACT_BACKENDS", "check_exact",
]
