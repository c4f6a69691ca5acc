"""transformers' own continuous batching, timed on CPU in this process: the reference that
benchmarks/bench_serve.py falls back on when `transformers serve` (the same engine behind HTTP) cannot run. Not used
by the notebooks.

It drives ``model.continuous_batching_context_manager`` (the engine behind ``model.generate_batch``): a
background thread schedules the requests into one paged KV cache and decodes them together, greedy.
"""

from __future__ import annotations

import math

from lmlab.measure.runtime import torch_threads
from lmlab.measure.timing import Stopwatch


def transformers_continuous_batching(model, tokenizer, prompts_ids: list[list[int]], max_new_tokens: int,
                                     threads: int | None = None, ignore_eos: bool = False, **cb_options) -> dict:
    """Generate greedily for every prompt at once with transformers' continuous batching; time it.

    All prompts are submitted together to one running manager, after a small warm-up request on the
    same manager (so cache allocation, thread start and first-call costs are not timed). ``wall_s`` runs
    from submitting the prompts to receiving the last result. ``tokens`` holds each prompt's generated
    ids in prompt order, the end-of-sequence id INCLUDED when generation stopped on it (as
    ``model.generate`` returns it, minus padding). ``cb_options`` go to ``ContinuousBatchingConfig``
    (e.g. ``page_size``, ``num_blocks``, ``max_batch_tokens``); by default the cache is sized to the
    workload (transformers' default sizes it from 60% of RAM on CPU: ~10 GB RSS and 2-3x slower here).
    Prefix sharing (``allow_block_sharing``) stays on as in transformers; it only shares full pages of
    identical prompt starts. ``cb_options["attn_implementation"]`` (default ``"sdpa"``; ``"paged|eager"``
    also works on CPU) is set for the run; the model's own one is restored afterwards.
    ``ignore_eos=True`` generates all ``max_new_tokens`` for every prompt (no end-of-sequence stop), for
    comparisons at a fixed amount of work.
    Raises ValueError for no prompts, an empty prompt, or max_new_tokens < 1.
    """
    from transformers import ContinuousBatchingConfig, GenerationConfig

    if not prompts_ids:
        raise ValueError(f"prompts_ids={prompts_ids!r} is empty; pass at least one prompt (>= 1 token id each)")
    for i, prompt in enumerate(prompts_ids):
        if len(prompt) < 1:
            raise ValueError(f"prompts_ids[{i}]={prompt!r} is empty; every prompt needs >= 1 token id")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} is out of range; use an integer >= 1")
    attn = cb_options.pop("attn_implementation", "sdpa")
    page_size = cb_options.setdefault("page_size", 256)
    blocks_per_request = math.ceil((max(map(len, prompts_ids)) + max_new_tokens) / page_size)
    cb_options.setdefault("num_blocks", len(prompts_ids) * blocks_per_request + 2)
    cb_options.setdefault("max_batch_tokens", max(256, sum(map(len, prompts_ids))))
    cb_config = ContinuousBatchingConfig(auto_switch_to_flash=False, **cb_options)
    eos = model.generation_config.eos_token_id
    eos = None if ignore_eos else (tokenizer.eos_token_id if eos is None else eos)
    gen_config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                  pad_token_id=tokenizer.pad_token_id)
    original_attn = model.config._attn_implementation
    try:
        model.set_attn_implementation(attn)
        with torch_threads(threads) as used, model.continuous_batching_context_manager(
                generation_config=gen_config, continuous_batching_config=cb_config) as manager:
            _run(manager, [prompts_ids[0][:8]], 2)  # warm-up: a short prompt, two tokens
            with Stopwatch() as clock:
                results = _run(manager, prompts_ids, max_new_tokens)
            wall = clock.ms / 1e3
    finally:
        if model.config._attn_implementation != original_attn:
            model.set_attn_implementation(original_attn)
    tokens = [result.generated_tokens for result in results]
    generated = sum(map(len, tokens))
    return {"tokens": tokens, "wall_s": wall, "generated_tokens": generated, "tokens_per_s": generated / wall,
            "requests_per_s": len(tokens) / wall, "threads": used,
            "implementation": f"transformers continuous_batching_context_manager (generate_batch engine), "
                              f"attn_implementation={attn!r}, page_size={page_size}, "
                              f"num_blocks={cb_config.num_blocks}, max_batch_tokens={cb_config.max_batch_tokens}"}


def _run(manager, prompts_ids: list[list[int]], max_new_tokens: int) -> list:
    """Submit the prompts to a running manager and wait for all of them; return their outputs in order."""
    request_ids = manager.add_requests(inputs=prompts_ids, max_new_tokens=max_new_tokens)
    done: dict[str, object] = {}  # request id -> its finished output
    while len(done) < len(request_ids):
        result = manager.get_result(timeout=1)
        if result is not None and result.is_finished():
            if result.error is not None:
                raise RuntimeError(f"continuous batching request {result.request_id} failed: {result.error}")
            done[result.request_id] = result
        elif result is None and not manager.is_running():
            raise RuntimeError("transformers' continuous batching thread stopped before all requests finished")
    return [done[r] for r in request_ids]
