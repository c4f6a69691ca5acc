"""How the next token is chosen from the logits: greedy, or a seeded draw cut by temperature, top-k and top-p.

Introduced in notebooks/01_ngram_language_models.ipynb (``sample``) and notebooks/06_acceleration.ipynb
(``SamplingParams`` for ``generate``, ``stream`` and the serving engine).

The settings travel as one ``SamplingParams``; ``pick`` is the one place a token is chosen, for the decode loop,
the serving engine and the fixed-window models' ``sample`` alike, so one seed gives one reply everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmlab.measure.runtime import check_int
from lmlab.models.protocols import LanguageModel

SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)  # what torch.Generator.manual_seed accepts


@dataclass(frozen=True)
class SamplingParams:
    """How to choose each next token: greedy (argmax), or a seeded draw from softmax(logits / temperature).

    A draw keeps only the ``top_k`` most likely tokens and the smallest set whose probability reaches ``top_p``
    (None: no cut). ``seed`` seeds one generator per reply. The settings are checked even when greedy, so a
    typo fails where it is made. Raises ValueError naming the field: ``sample`` not a bool, temperature not a
    finite number > 0, top_k not an integer >= 1, top_p outside (0, 1], seed not an integer in ``SEED_RANGE``.
    """

    sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.sample, bool):
            raise ValueError(f"sample={self.sample!r} is out of range; use True (draw) or False (greedy)")
        temperature = self.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature={temperature!r} is out of range; sampling needs a finite number > 0 "
                             f"(for greedy decoding use sample=False)")
        if self.top_k is not None:
            check_int("top_k", self.top_k, 1)
        top_p = self.top_p
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                                  or not 0 < top_p <= 1):
            raise ValueError(f"top_p={top_p!r} is out of range; use a number in (0, 1]")
        check_int("seed", self.seed, *SEED_RANGE)

    @classmethod
    def greedy(cls) -> SamplingParams:
        """Return the default: argmax of the last position's logits, no randomness."""
        return cls()

    def generator(self, device: torch.device) -> torch.Generator | None:
        """Return a generator on ``device`` seeded with ``seed`` for a draw, None for greedy decoding."""
        return torch.Generator(device=device).manual_seed(self.seed) if self.sample else None


def sampling_params(sampling: SamplingParams | None = None, *, sample: bool | None = None,
                    temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                    seed: int | None = None) -> SamplingParams:
    """Return ``sampling``, or the SamplingParams the loose keyword arguments (``generate``'s older API) mean.

    Greedy decoding (``sample`` false or absent) ignores temperature, top_k and top_p, as it always did.
    Raises ValueError for ``sampling`` together with a loose argument, or a setting out of range.
    """
    loose = {"sample": sample, "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
    given = {name: value for name, value in loose.items() if value is not None}
    if sampling is not None:
        if given:
            raise ValueError(f"sampling={sampling!r} and {', '.join(given)} were both given; put every setting in "
                             f"the SamplingParams")
        return sampling
    if not sample:
        return SamplingParams(seed=0 if seed is None else seed)
    return SamplingParams(True, 1.0 if temperature is None else temperature, top_k, top_p, 0 if seed is None else seed)


def sampling_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """Return the distribution a sampler draws from: softmax(logits / T), cut to top-k and top-p, renormalized.

    top-k keeps the k largest logits; top-p (nucleus) keeps the most likely tokens until their probability
    reaches p (the token that crosses p included). Computed in float32, or float64 for float64 logits.
    Raises ValueError for T <= 0, k < 1 or p outside (0, 1].
    """
    SamplingParams(True, temperature, top_k, top_p)
    scaled = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # (batch, vocab)
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]  # (batch, 1)
        scaled = scaled.masked_fill(scaled < kth, -math.inf)
    probs = torch.softmax(scaled, dim=-1)
    if top_p is not None and top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # probability of the tokens ranked above each one
        drop = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, before >= top_p)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Choose each row's next token from its (batch, vocab) logits; return (batch,) ids.

    Greedy: argmax_v logits[v]. A draw: one token from ``sampling_probs(logits, T, k, p)`` with ``generator``
    (``params.generator(device)``, made once per reply so that the seed fixes the whole reply).
    """
    if not params.sample:
        return logits.argmax(dim=-1)
    probs = sampling_probs(logits, params.temperature, params.top_k, params.top_p)  # (batch, vocab)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)



def pick_rows(logits: torch.Tensor, params: Sequence[SamplingParams],
              generators: Sequence[torch.Generator | None]) -> list[int]:
    """Choose the next token of every row of (B, vocab) logits, row i with ``params[i]`` and ``generators[i]``.

    What ``pick`` gives each row alone, computed together: the greedy rows in one argmax, the sampled rows'
    distributions (``sampling_probs``) in one pass per distinct (T, k, p), then one draw per row from its own
    generator (a seeded reply must not depend on the rows beside it). Raises ValueError when the lengths differ.
    """
    if not len(params) == len(generators) == logits.shape[0]:
        raise ValueError(f"logits has {logits.shape[0]} rows, params {len(params)}, generators {len(generators)}; "
                         f"give one setting and one generator per row")
    tokens = logits.argmax(dim=-1).tolist()  # (B,): right for every greedy row
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        if p.sample:
            groups.setdefault((p.temperature, p.top_k, p.top_p), []).append(i)
    for (temperature, top_k, top_p), rows in groups.items():
        probs = sampling_probs(logits[rows], temperature, top_k, top_p)  # (rows, vocab)
        for j, i in enumerate(rows):
            tokens[i] = int(torch.multinomial(probs[j:j + 1], 1, generator=generators[i])[0, 0])
    return tokens

def sample(model: LanguageModel, prompt: Sequence[str] = (), max_tokens: int = 30, seed: int = 0,
           temperature: float = 1.0) -> list[str]:
    """Draw tokens one at a time from a fixed-window model's P(w | context) until </s> or ``max_tokens``; seeded.

    The context is the last ``model.context_size`` ids, <s>-padded at the start; each token is ``pick``ed from
    P^(1/T) (softmax(log P / T)), <s> excluded (it only pads). Works on ids and decodes once at the end.
    Returns the generated tokens (without the prompt and without </s>); stops early where the model gives no
    probability to anything. Introduced in notebooks/01_ngram_language_models.ipynb.
    Raises ValueError for max_tokens < 1, T <= 0 or a prompt token outside the vocabulary.
    """
    check_int("max_tokens", max_tokens, 1)
    params = SamplingParams(True, temperature, seed=seed)
    vocab, k = model.vocab, model.context_size
    history = [vocab.bos_id] * k + list(vocab.encode(list(prompt), strict=True))
    generator = params.generator(torch.device("cpu"))
    out: list[int] = []
    for _ in range(max_tokens):
        context = torch.tensor([history[len(history) - k:]], dtype=torch.long)  # (1, context_size)
        with torch.no_grad():
            logp = model.next_token_logprobs(context).double()  # (1, vocab)
        logp[:, vocab.bos_id] = -math.inf  # <s> only pads; it is never a next token
        if bool(logp.isnan().any()) or not bool((logp > -math.inf).any()):
            break  # the model gives no probability to anything here (e.g. an unseen context, unsmoothed)
        token = int(pick(logp, params, generator)[0])
        if token == vocab.eos_id:
            break
        out.append(token)
        history.append(token)
    return vocab.decode(out)
