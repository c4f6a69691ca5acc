"""How a language model answers: prefill the prompt, then decode one token at a time, with or without a KV cache.

Introduced in notebooks/06_acceleration.ipynb.

A causal LM gives, for every position t, the logits of the token at t + 1. To answer it

1. **prefills**: one pass over the whole prompt; the LAST position's logits give the first new token
   (time to first token, TTFT);
2. **decodes**: appends that token and runs again for the next one, until an end-of-sequence token or
   ``max_new_tokens``.

Without a cache, every decode step recomputes the keys and values of the whole prefix: step t costs a pass
over t tokens. With a **KV cache** each layer keeps the keys and values it already computed and a step
computes only the new token's (one row of every matrix product). The cache holds
2 · layers · kv_heads · head_dim · positions · bytes_per_value bytes per sequence (``kv_cache_bytes``).

The loop runs any ``lmlab.inference.step.DecodeStep``
``step(input_ids, attention_mask, position_ids, past) -> (logits (batch, new, vocab), past)``:
``TorchStep`` (eager PyTorch, optionally ``torch.compile``d), ``lmlab.compress.export.onnx_decoder`` (ONNX Runtime,
float32 or int8) or ``lmlab.compress.fused.fused_decoder`` (a fused graph, its KV buffer allocated once).
Several prompts decode together in one batch: they are padded on the LEFT, with an attention mask that hides
the padding and positions that count from each prompt's first real token, so every row computes what it would
alone (``lmlab.inference.step``: the same pieces the serving engine runs).
Each token is chosen by ``lmlab.inference.sampling.pick`` from one ``SamplingParams``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from lmlab.compress.export import onnx_decoder
from lmlab.compress.fused import fused_decoder
from lmlab.data.corpora import tokenize
from lmlab.inference.sampling import SamplingParams, pick, sampling_params
from lmlab.inference.step import PAD_MULTIPLE, DecodeStep, TorchStep, left_pad, next_logits
from lmlab.measure.results import Result
from lmlab.measure.runtime import check_int, default_threads, pick_device, torch_threads
from lmlab.measure.stats import binomial_se
from lmlab.measure.timing import Stopwatch, Timing, time_ms
from lmlab.models.neural import GPTLanguageModel
from lmlab.models.protocols import is_transformers_causal_lm
from lmlab.models.scoring import score_tokens

if TYPE_CHECKING:  # transformers is imported where a cache is built; the annotations only name its types
    from transformers import PretrainedConfig

BACKENDS = ("eager", "compile", "onnx", "onnx-int8", "fused", "fused-int8", "fused-int4")


@dataclass(frozen=True)
class CausalLM:
    """A causal LM as the decode loop sees it: the transformers module, text <-> ids, its limits.

    ``core(input_ids=..., attention_mask=..., position_ids=..., past_key_values=..., use_cache=...)`` returns
    an object with ``.logits`` (batch, time, vocab) and ``.past_key_values``.
    """

    name: str
    core: nn.Module
    encode: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]
    eos_id: int | None
    pad_id: int
    window: int  # the most positions the model can attend to (prompt + new tokens)
    source: nn.Module  # what was wrapped: lmlab's GPT, or the transformers model itself
    level: str | None = None  # how lmlab's GPT tokenizes text ("word" or "char"); None for a sub-word tokenizer

    @property
    def config(self) -> PretrainedConfig:
        """Return ``core``'s transformers config (vocabulary size, window, layers)."""
        return cast("PretrainedConfig", self.core.config)  # nn.Module types an attribute as Tensor | Module


def as_causal_lm(model: nn.Module, tokenizer=None, name: str | None = None, level: str = "word") -> CausalLM:
    """Wrap lmlab's GPT (``level``: how its corpus was tokenized) or a transformers causal LM with its tokenizer.

    lmlab's GPT reads <s> w1 w2 ... and ends a document with </s>; its window is ``n_positions`` (128 for the
    shipped GPTs), <s> included. Raises ValueError for another kind of model, or a transformers model
    without its tokenizer.
    """
    if isinstance(model, GPTLanguageModel):
        vocab = model.vocab
        joiner = "" if level == "char" else " "

        def encode(text: str) -> list[int]:
            return [vocab.bos_id] + vocab.encode(tokenize(text, level)).tolist()

        def decode(ids: Sequence[int]) -> str:  # a continuation: words start with their space, as sub-words do
            return "".join(joiner + tok for tok in vocab.decode(ids) if tok not in ("<s>", "</s>"))

        return CausalLM(name or f"gpt-{model.config.n_layer}x{model.config.n_embd}", model.gpt, encode, decode,
                        vocab.eos_id, vocab.eos_id, model.config.n_positions, model, level)
    if is_transformers_causal_lm(model):
        if tokenizer is None:
            raise ValueError(f"tokenizer=None: a {type(model).__name__} needs its tokenizer to turn text into ids")
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
        return CausalLM(name or getattr(model.config, "name_or_path", "") or type(model).__name__, model,
                        lambda text: tokenizer(text).input_ids,
                        lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True),
                        eos, pad, cast("PretrainedConfig", model.config).max_position_embeddings, model)
    raise ValueError(f"model of type {type(model).__name__} is not a causal LM lmlab can decode; use lmlab's GPT "
                     f"or a transformers causal LM with its tokenizer")


def make_step(lm: CausalLM, backend: str = "eager", threads: int | None = None) -> DecodeStep:
    """Return the step function for ``backend``: "eager", "compile" (torch.compile), "onnx" (ONNX Runtime
    float32), "onnx-int8" (ONNX Runtime, lmlab's blockwise int8), or "fused", "fused-int8", "fused-int4"
    (lmlab's fused graph with a KV buffer allocated once, ``lmlab.compress.fused``; Llama-architecture models).
    Raises ValueError for another backend."""
    if backend == "eager":
        return TorchStep(lm.core)
    if backend == "compile":
        return TorchStep(lm.core, compile=True)
    if backend in ("onnx", "onnx-int8"):
        return onnx_decoder(lm.source, quantization=None if backend == "onnx" else "blockwise", threads=threads)
    if backend.startswith("fused"):
        return fused_decoder(lm.source, "float32" if backend == "fused" else backend.split("-")[1], threads=threads,
                             max_length=min(lm.window, 2048))  # 2048: the buffer holds max_length positions
    raise ValueError(f"backend={backend!r} is unknown; use one of {BACKENDS}")


@dataclass(frozen=True)
class Generation:
    """What one call of ``generate`` produced, and how long each part took.

    ``tokens[i]`` are prompt i's new token ids (its end-of-sequence token included if it stopped on one).
    ``ttft_ms`` is the prefill and the pick of the first token; ``step_ms[j]`` the j-th decode step after it
    (one new token for every row of the batch).
    """

    tokens: tuple[tuple[int, ...], ...]
    texts: tuple[str, ...]
    prompt_tokens: tuple[int, ...]
    ttft_ms: float
    step_ms: tuple[float, ...]
    cache: bool
    backend: str
    cache_bytes: int = 0
    threads: int = 0
    logits: tuple[torch.Tensor, ...] = field(default=(), repr=False)  # (batch, vocab) per step, if kept

    @property
    def text(self) -> str:
        """The reply of a single prompt. Raises ValueError for a batch."""
        if len(self.texts) != 1:
            raise ValueError(f"this generation has {len(self.texts)} replies; read .texts")
        return self.texts[0]

    @property
    def batch_size(self) -> int:
        return len(self.tokens)

    @property
    def new_tokens(self) -> int:
        """Tokens generated in the longest row: 1 from the prefill plus one per decode step."""
        return 1 + len(self.step_ms)

    @property
    def total_ms(self) -> float:
        return self.ttft_ms + sum(self.step_ms)

    @property
    def decode_ms_per_token(self) -> float:
        """Median decode step: the time between two tokens of one reply (nan if there was no step)."""
        return float(torch.tensor(self.step_ms).median()) if self.step_ms else math.nan

    @property
    def timing(self):
        """The decode steps as a ``lmlab.measure.timing.Timing`` (median, p90), for a results row."""
        return Timing(samples_ms=self.step_ms, threads=self.threads or default_threads(), warmup=0, first_ms=None)

    def to_result(self, name: str, technique: str, accuracy: float, setting: str = "", **values):
        """One results row: ``median_ms``/``p90_ms`` are the decode steps' (the ms between two tokens of a reply)."""
        return Result.from_timing(self.timing, name=name, technique=technique, setting=setting, accuracy=accuracy,
                                  batch_size=self.batch_size, **values)

    @property
    def tokens_per_s(self) -> float:
        """Throughput: tokens produced by the whole batch per second of decoding, TTFT excluded."""
        return 1e3 * self.batch_size * len(self.step_ms) / sum(self.step_ms) if self.step_ms else math.nan


def littles_law(generation: Generation, wall_ms: float) -> dict[str, float]:
    """Check Little's law, L = λW, on one batched generation with two independent instruments.

    L, the tokens in production, is counted from the replies: every row makes a token in the prefill, and n_j
    rows make one in decode step j (those whose reply is longer), weighted by the loop's own step times d_j:
    L = Σ n_j d_j / Σ d_j. λ = tokens made / ``wall_ms``, the clock around the whole call; W = Σ n_j d_j / Σ n_j,
    the mean time a token spends being made, by the loop's clock. L / λW = wall_ms / Σ d_j: 1 when the loop's
    clock sees the whole call, above 1 by the share it does not see (tokenizing, setting up). Introduced in
    notebooks/06_acceleration.ipynb. Raises ValueError for a ``wall_ms`` shorter than the loop's own time.
    """
    phases = (generation.ttft_ms, *generation.step_ms)  # d_j: the prefill, then each decode step
    lengths = [len(reply) for reply in generation.tokens]
    making = [generation.batch_size] + [sum(k > j + 1 for k in lengths) for j in range(len(generation.step_ms))]
    loop_ms = sum(phases)
    if not (math.isfinite(wall_ms) and wall_ms >= loop_ms):
        raise ValueError(f"wall_ms={wall_ms!r} is out of range; use the time around the whole call, at least the "
                         f"loop's own {loop_ms:.4g} ms")
    token_ms = sum(n * d for n, d in zip(making, phases))  # Σ n_j d_j: each token's time in the system, summed
    in_flight, tokens = token_ms / loop_ms, sum(making)
    rate_per_s, time_in_system_s = tokens / (wall_ms / 1e3), token_ms / tokens / 1e3
    predicted = rate_per_s * time_in_system_s
    return {"in_flight": in_flight, "tokens": tokens, "throughput_per_s": rate_per_s,
            "time_in_system_s": time_in_system_s, "predicted": predicted, "ratio": in_flight / predicted,
            "wall_ms": wall_ms, "loop_ms": loop_ms}


def batch_littles_law(lm: CausalLM, prompts: Sequence, max_new_tokens: int, warmup: int = 1,
                      **options) -> dict[str, float]:
    """Generate once for ``prompts`` inside ``lmlab.measure.timing.time_ms`` (after ``warmup`` untimed calls) and
    check Little's law on it with ``littles_law``: L counted from the replies, λ from the clock around the call,
    W from the decode loop's clock. ``options`` are ``generate``'s. Introduced in notebooks/06_acceleration.ipynb.
    Raises ValueError for what ``generate`` refuses, or warmup < 0.
    """
    made: list[Generation] = []
    wall = time_ms(lambda: made.append(generate(lm, prompts, max_new_tokens, **options)), warmup=warmup, repeat=1)
    return littles_law(made[-1], wall.median_ms)


@dataclass(frozen=True)
class StreamedToken:
    """One token as ``stream`` yields it: its id, its text, and the ms since the call began."""

    token: int
    text: str
    elapsed_ms: float


def generate(lm: CausalLM, prompts: str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]],
             max_new_tokens: int = 32, *, sampling: SamplingParams | None = None, cache: bool = True,
             stop_at_eos: bool = True, backend: str = "eager", step: DecodeStep | None = None, device: str = "auto",
             threads: int | None = None, keep_logits: bool = False, sample: bool | None = None,
             temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None) -> Generation:
    """Prefill each prompt, then decode up to ``max_new_tokens`` tokens: greedy, or seeded sampling.

    ``prompts``: a text, a list of token ids, or a list of either (a batch). ``sampling`` (default greedy) says
    how each token is picked: greedy takes argmax_v logits[-1, v] of the last position; a draw samples
    softmax(logits / temperature), restricted to the ``top_k`` most likely tokens and to the smallest set whose
    probability reaches ``top_p``. ``sample``, ``temperature``, ``top_k``, ``top_p`` and ``seed`` are the older
    spelling of the same settings. ``cache=False`` recomputes the whole prefix every step.
    ``stop_at_eos=False`` always produces ``max_new_tokens`` (for timing). ``step`` reuses a step from
    ``make_step`` (otherwise one is made for ``backend``).
    Raises ValueError for an empty prompt, max_new_tokens < 1, a prompt plus max_new_tokens beyond the model's
    window, a sampling setting out of range (or ``sampling`` with a loose setting), an unknown device or backend.
    """
    params = sampling_params(sampling, sample=sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    events = _decode_loop(lm, prompts, max_new_tokens, sampling=params, cache=cache, stop_at_eos=stop_at_eos,
                          backend=backend, step=step, device=device, threads=threads, keep_logits=keep_logits)
    for result in events:
        if isinstance(result, Generation):
            return result
    raise AssertionError("the decode loop ended without a result")  # pragma: no cover


def stream(lm: CausalLM, prompt: str | Sequence[int], max_new_tokens: int = 32, *,
           sampling: SamplingParams | None = None, sample: bool | None = None, temperature: float | None = None,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None, batch: int = 1,
           **options) -> Iterator[StreamedToken]:
    """Yield each new token of one prompt as soon as it exists, with its text and the ms since the call.

    ``batch`` > 1 decodes the prompt as that many rows at once and streams the first (the times are the
    batch's). Takes ``generate``'s options; yields exactly the tokens ``generate`` returns. The text of a token is what
    it adds to the decoded reply (a sub-word token can complete a character that earlier ones began).
    Raises ValueError for a batch of prompts, batch < 1, and as ``generate`` does.
    """
    if not isinstance(prompt, str) and len(prompt) and isinstance(prompt[0], (str, list, tuple)):
        raise ValueError("prompt is a batch; stream takes one prompt (a text or a list of token ids)")
    check_int("batch", batch, 1)
    params = sampling_params(sampling, sample=sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    shown = ""
    ids: list[int] = []
    prompts = prompt if batch == 1 else [prompt if isinstance(prompt, str) else list(prompt)] * batch
    for event in _decode_loop(lm, prompts, max_new_tokens, sampling=params, **options):
        if isinstance(event, Generation):
            return
        token, elapsed_ms = event
        ids.append(token)
        text = lm.decode(ids)
        piece, shown = text[len(shown):] if text.startswith(shown) else text, text
        yield StreamedToken(token, piece, elapsed_ms)


def stream_speed(pieces: Sequence[StreamedToken]) -> tuple[float, float]:
    """Return (time to first token in ms, tokens per second after it) of a streamed reply.

    tokens/s = 1000 · (n − 1) / (elapsed at the last token − elapsed at the first); nan with fewer than two tokens.
    Raises ValueError for an empty reply.
    """
    if not pieces:
        raise ValueError("pieces is empty: a reply needs at least one token to be timed")
    decode_ms = pieces[-1].elapsed_ms - pieces[0].elapsed_ms
    rate = 1e3 * (len(pieces) - 1) / decode_ms if len(pieces) > 1 and decode_ms > 0 else math.nan
    return pieces[0].elapsed_ms, rate


def _decode_loop(lm: CausalLM, prompts, max_new_tokens: int, *, sampling: SamplingParams, cache: bool = True,
                 stop_at_eos: bool = True, backend: str = "eager", step: DecodeStep | None = None,
                 device: str = "auto", threads: int | None = None, keep_logits: bool = False):
    """Yield (token, elapsed_ms) for row 0 as each token appears, then the Generation."""
    rows = _checked_rows(lm, prompts, max_new_tokens)
    step = _step_for(lm, step, backend, pick_device(device), threads)
    on = step.place(pick_device(device))  # where the step's inputs go: the chosen device, or the CPU for ONNX Runtime

    batch = len(rows)
    ids, mask = (t.to(on) for t in left_pad(rows, lm.pad_id, PAD_MULTIPLE))  # (batch, width), left-padded
    generator = sampling.generator(on)
    new = torch.empty((batch, 0), dtype=torch.long, device=on)
    done = torch.zeros(batch, dtype=torch.bool, device=on)
    lengths = torch.zeros(batch, dtype=torch.long)
    kept, times_ms = [], []
    past = None

    with torch_threads(threads) as used_threads:
        call = Stopwatch().start()  # the streamed tokens' elapsed ms count from here
        for t in range(max_new_tokens):
            with Stopwatch() as watch:  # one step: its forward pass and the pick (the GPU synchronized at both ends)
                feed_mask = torch.cat([mask, torch.ones_like(new)], dim=1)  # (batch, prompt + new so far)
                if cache and t > 0:  # only the newest token; the cache holds the rest
                    last, past = next_logits(step, new[:, -1:], feed_mask, past)
                else:  # the prefill, or every step without a cache: the whole sequence so far
                    last, past = next_logits(step, torch.cat([ids, new], dim=1), feed_mask,
                                             None if cache else step.no_cache)
                    past = past if cache else None
                alive = ~done  # rows still answering
                token = torch.where(alive, pick(last, sampling, generator), lm.pad_id)  # (batch,)
                new = torch.cat([new, token[:, None]], dim=1)
            times_ms.append(watch.ms)
            elapsed_ms = call.elapsed_ms()
            if keep_logits:
                kept.append(last.cpu())
            lengths += alive.cpu().long()
            if lm.eos_id is not None and stop_at_eos:
                done = done | (alive & (token == lm.eos_id))
            if bool(alive[0]):
                yield int(token[0]), elapsed_ms
            if bool(done.all()):
                break

    tokens = tuple(tuple(new[i, :int(lengths[i])].tolist()) for i in range(batch))
    texts = tuple(lm.decode([tok for tok in row if tok != lm.eos_id]) for row in tokens)
    yield Generation(tokens=tokens, texts=texts, prompt_tokens=tuple(len(r) for r in rows), ttft_ms=times_ms[0],
                     step_ms=tuple(times_ms[1:]), cache=cache, backend=step.backend,
                     cache_bytes=past_bytes(past) if cache else 0, threads=used_threads, logits=tuple(kept))


def _checked_rows(lm: CausalLM, prompts, max_new_tokens: int) -> list[list[int]]:
    """The prompts as token-id rows, refused if they and ``max_new_tokens`` do not fit the model's window."""
    check_int("max_new_tokens", max_new_tokens, 1)
    rows = _prompt_ids(lm, prompts)
    longest = max(len(r) for r in rows)
    if longest + max_new_tokens > lm.window:
        raise ValueError(window_message(lm.name, lm.window, longest, max_new_tokens))
    return rows


def window_message(name: str, window: int, prompt_tokens: int, max_new_tokens: int) -> str:
    """Say why a prompt of ``prompt_tokens`` plus ``max_new_tokens`` does not fit ``name``'s ``window`` of positions,
    and what would (``window_fix``)."""
    needed = prompt_tokens + max_new_tokens
    return f"max_new_tokens={max_new_tokens} with a {prompt_tokens}-token prompt needs {needed} positions; " \
           f"{name}'s window is {window}: {window_fix(window, prompt_tokens, max_new_tokens)}"


def window_fix(window: int, prompt_tokens: int, max_new_tokens: int) -> str:
    """What makes a prompt of ``prompt_tokens`` plus ``max_new_tokens`` fit a ``window`` of positions: fewer new
    tokens while the prompt leaves room for one, else a prompt shorter by so many tokens."""
    fix = f"shorten the prompt by {prompt_tokens + max_new_tokens - window} tokens"
    if prompt_tokens < window:
        fix = f"use max_new_tokens <= {window - prompt_tokens}, or {fix}"
    return fix


def _step_for(lm: CausalLM, step: DecodeStep | None, backend: str, chosen: torch.device,
              threads: int | None) -> DecodeStep:
    """The given step, or a new one for ``backend`` (refused if unknown, or ONNX Runtime off the CPU)."""
    if step is not None:
        return step
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; use one of {BACKENDS}")
    if backend.startswith(("onnx", "fused")) and chosen.type != "cpu":
        raise ValueError(f"backend={backend!r} runs on the CPU only; use device='cpu'")
    return make_step(lm, backend, threads)


def _prompt_ids(lm: CausalLM, prompts) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):  # (tokens,) or (batch, tokens) ids
        prompts = prompts.tolist() if prompts.dim() == 2 else [prompts.tolist()]
    if isinstance(prompts, str):
        prompts = [prompts]
    elif len(prompts) and not isinstance(prompts[0], (str, list, tuple, torch.Tensor)):
        prompts = [prompts]  # one list of ids
    if len(prompts) == 0:
        raise ValueError("prompts is empty; give a text, a list of token ids, or a list of those")
    rows = []
    for i, prompt in enumerate(prompts):
        if (isinstance(prompt, str) and not prompt.strip()) or len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty; give at least one token of text")
        row = lm.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        vocab_size = lm.config.vocab_size
        if min(row) < 0 or max(row) >= vocab_size:
            raise ValueError(f"prompt {i} holds a token id outside [0, {vocab_size - 1}]")
        rows.append(row)
    return rows


def kv_cache_bytes(config, positions: int, batch_size: int = 1, bytes_per_value: int = 4) -> int:
    """Return the KV cache's size by formula: 2 · layers · kv_heads · head_dim · positions · bytes · batch.

    ``config`` is a transformers config (GPT-2's or Llama's field names). The 2 counts keys and values.
    """
    check_int("positions", positions, 0)
    check_int("batch_size", batch_size, 1)
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return 2 * layers * kv_heads * head_dim * positions * bytes_per_value * batch_size


def past_bytes(past) -> int:
    """Return the bytes a KV cache really holds: a transformers cache, or an ONNX decoder's past."""
    if past is None or past is False:
        return 0
    if hasattr(past, "layers"):  # transformers' DynamicCache
        return sum(t.numel() * t.element_size() for layer in past.layers
                   for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)
    if hasattr(past, "nbytes"):
        return int(past.nbytes)
    return sum(past_bytes(p) if not hasattr(p, "nbytes") else int(p.nbytes) for p in past)


def break_even(one_off_ms: float, reference_ms: float, faster_ms: float) -> float:
    """Return how many calls repay a one-off cost: one_off_ms / (reference_ms - faster_ms); inf if not faster.

    Raises ValueError for a negative or non-finite time.
    """
    for name, value in (("one_off_ms", one_off_ms), ("reference_ms", reference_ms), ("faster_ms", faster_ms)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}={value!r} is out of range; use a finite time >= 0 ms")
    return one_off_ms / (reference_ms - faster_ms) if faster_ms < reference_ms else math.inf


def compare_steps(lm: CausalLM, prompt, makers: dict[str, Callable[[], DecodeStep]], new_tokens: int = 40,
                  reference: str = "eager") -> list[dict]:
    """Time the decode step of each path against ``reference``: one dict per path, in the order given.

    ``makers`` maps a path's name to a function that builds its step (``make_step``, ``onnx_decoder``...). The
    one-off cost is building the step plus a 2-token warm-up generation (``torch.compile`` compiles on its first
    decode step); then ``new_tokens`` greedy tokens are timed, with their logits kept. Each dict holds
    ``step_ms``/``p90_ms`` (decode steps), ``speed_up`` (reference median / this median), ``max_logit_diff``
    against the reference, ``one_off_ms`` (nan for the reference), ``break_even`` (calls that repay the one-off
    cost, inf if never) and the ``run`` itself. Introduced in notebooks/06_acceleration.ipynb.
    Raises ValueError if ``reference`` is not among ``makers``.
    """
    if reference not in makers:
        raise ValueError(f"reference={reference!r} is not among the paths {tuple(makers)}")
    runs, one_off = {}, {}
    for name, make in makers.items():
        with Stopwatch() as watch:
            step = make()
            generate(lm, prompt, 2, stop_at_eos=False, step=step)  # the first decode step compiles, if anything does
        one_off[name] = watch.ms
        runs[name] = generate(lm, prompt, new_tokens, stop_at_eos=False, step=step, keep_logits=True)
    base = runs[reference]
    rows = []
    for name, run in runs.items():
        diff = max(float((a - b).abs().max()) for a, b in zip(run.logits, base.logits))
        rows.append({"path": name, "step_ms": run.decode_ms_per_token, "p90_ms": run.timing.p90_ms,
                     "speed_up": base.decode_ms_per_token / run.decode_ms_per_token, "max_logit_diff": diff,
                     "one_off_ms": math.nan if name == reference else one_off[name],
                     "break_even": math.nan if name == reference else
                     break_even(one_off[name], base.decode_ms_per_token, run.decode_ms_per_token), "run": run})
    return rows


@torch.no_grad()
def score_ids(lm: CausalLM, ids: Sequence[int], step=None) -> dict[str, float]:
    """Score a token sequence teacher-forced through a path: next-token accuracy with its standard error, perplexity.

    accuracy = mean_i [argmax_v logits_i(v) = x_{i+1}], se = √(acc (1 − acc) / n), PP = exp(−mean ln p(x_{i+1})),
    over the n = len(ids) − 1 predictions, from one prefill of ``step`` (default: the eager model), scored by
    ``lmlab.models.scoring.score_tokens``. The same ids
    through two paths (float32 and int8) compare their quality on one slice. Introduced in
    notebooks/07_realtime_pipeline.ipynb. Raises ValueError for fewer than 2 ids or more than the window.
    """
    ids = [int(t) for t in ids]
    if not 2 <= len(ids) <= lm.window:
        raise ValueError(f"ids has {len(ids)} tokens; scoring needs between 2 and the window ({lm.window})")
    feed = torch.tensor([ids])  # (1, n + 1)
    logits = (step or TorchStep(lm.core)).sequence_logits(feed)  # (1, n + 1, vocab)
    scores = score_tokens(logits[0, :-1], feed[0, 1:]).summary()  # (n, vocab) against (n,)
    accuracy, n = scores["accuracy"], int(scores["tokens"])
    return {"accuracy": accuracy, "accuracy_se": binomial_se(accuracy, n),
            "perplexity": scores["perplexity"], "tokens": n}
