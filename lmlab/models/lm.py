"""What every lmlab language model answers, and the one evaluation that serves them all.

Introduced in notebooks/00_measuring_milliseconds.ipynb.

A language model here is any object with
  - ``vocab``: a ``lmlab.data.corpora.Vocab``;
  - ``context_size``: how many previous tokens it reads;
  - ``next_token_logprobs(contexts)``: for int64 contexts of shape (batch, context_size), the natural-log
    probabilities of every next token, a float tensor of shape (batch, vocab).
Count-based and neural models alike; then ``evaluate`` and ``measure`` work for every chapter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from lmlab.data.corpora import Vocab
from lmlab.measure.results import Result
from lmlab.measure.runtime import check_int
from lmlab.measure.timing import time_ms
from lmlab.models.protocols import LanguageModel
from lmlab.models.scoring import TokenScores, score_tokens


class UniformModel:
    """Guess every token with the same probability: P(w | context) = 1 / |V|. The baseline of baselines."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.context_size = 0

    def next_token_logprobs(self, contexts: np.ndarray | torch.Tensor) -> torch.Tensor:
        batch = len(contexts)
        return torch.full((batch, len(self.vocab)), -math.log(len(self.vocab)), dtype=torch.float64)

    def size_bytes(self) -> int:
        return 0


def check_contexts(model: LanguageModel, contexts: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Return ``contexts`` as an int64 tensor of shape (batch, model.context_size) with valid ids.

    Raises ValueError for the wrong shape or an id outside the model's vocabulary.
    """
    ctx = torch.as_tensor(np.asarray(contexts) if not isinstance(contexts, torch.Tensor) else contexts)
    if ctx.dim() != 2 or ctx.shape[1] != model.context_size:
        raise ValueError(
            f"contexts has shape {tuple(ctx.shape)}; this model needs (batch, {model.context_size}) token ids"
        )
    if ctx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"contexts has dtype {ctx.dtype}; token ids must be integers")
    if ctx.numel() and (int(ctx.min()) < 0 or int(ctx.max()) >= len(model.vocab)):
        raise ValueError(
            f"contexts holds token id {int(ctx.max()) if int(ctx.max()) >= len(model.vocab) else int(ctx.min())}, "
            f"outside [0, {len(model.vocab) - 1}]"
        )
    return ctx.long()


def evaluate(
    model: LanguageModel, contexts: np.ndarray, targets: np.ndarray, batch_size: int = 512
) -> dict[str, float]:
    """Score next-token predictions on held-out (context, target) pairs.

    - accuracy: the top-1 guess is right. Ties (e.g. a uniform model) are counted as a fair random
      tie-break would on average: 1 / (number of tied tokens) when the target is among them.
    - nll_nats: mean of -ln P(target | context), the cross-entropy.
    - perplexity: exp(nll_nats), infinite if any target gets probability 0.
    All three from ``lmlab.models.scoring.score_tokens`` (float64 sums, ``ties="fair"``).
    Raises ValueError for no pairs or different numbers of contexts and targets.
    """
    if len(targets) == 0:
        raise ValueError("targets is empty: evaluate needs at least one (context, target) pair")
    if len(contexts) != len(targets):
        raise ValueError(f"contexts has {len(contexts)} rows but targets has {len(targets)}; they must match")
    parts = []
    for start in range(0, len(targets), batch_size):
        ctx = contexts[start : start + batch_size]
        tgt = torch.as_tensor(targets[start : start + batch_size]).long()
        with torch.no_grad():
            logp = model.next_token_logprobs(ctx).double()  # (batch, vocab)
        parts.append(score_tokens(logp[:, None], tgt[:, None], ties="fair", log_probs=True))  # one row per pair
    return TokenScores.cat(parts).summary()


def measure(
    model: LanguageModel,
    contexts: np.ndarray,
    targets: np.ndarray,
    *,
    name: str,
    technique: str,
    setting: str = "",
    batch_size: int = 1,
    repeat: int = 30,
    warmup: int = 3,
    threads: int | None = None,
    corpus: str = "",
    device: str = "cpu",
    scores: dict | None = None,
) -> Result:
    """Evaluate ``model`` on the pairs and time one prediction call on ``batch_size`` contexts: one results row.

    The timed call is ``next_token_logprobs`` plus the argmax that picks the guess; ``median_ms`` is
    the time of that whole call (so per-prediction cost is ``median_ms / batch_size``). Pass
    ``scores`` (a dict with "accuracy" and "perplexity") to use figures computed another way, e.g. a
    model's faster whole-corpus path; the contexts are then only used for timing.
    """
    check_int("batch_size", batch_size, 1)
    if len(contexts) < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the {len(contexts)} contexts given to time it on")
    scores = evaluate(model, contexts, targets) if scores is None else scores
    sample = contexts[:batch_size]

    def predict() -> torch.Tensor:
        with torch.no_grad():
            return model.next_token_logprobs(sample).argmax(dim=-1)

    timing = time_ms(predict, warmup=warmup, repeat=repeat, threads=threads)
    size_bytes = model.size_bytes() if hasattr(model, "size_bytes") else None
    params = model.num_parameters() if hasattr(model, "num_parameters") else None
    return Result.from_timing(
        timing,
        name=name,
        technique=technique,
        setting=setting,
        accuracy=scores["accuracy"],
        perplexity=scores["perplexity"],
        predictions=scores.get("tokens"),
        size_mb=None if size_bytes is None else size_bytes / 1e6,
        params=params,
        device=device,
        batch_size=batch_size,
        corpus=corpus,
    )


def text_scores(nll_nats: float, words: int, chars: int, accuracy: float) -> dict[str, float]:
    """One model's scores on a text, in the units chapter 02 compares: perplexity per word = exp(nll / words), the
    next-word accuracy, and bits per character = nll / (chars · ln 2), the unit that does not depend on how a model
    splits the text into tokens. ``nll_nats`` is the summed negative log-likelihood of the whole text.
    Raises ValueError for words or chars < 1, nll_nats < 0 or accuracy outside [0, 1].
    """
    check_int("words", words, 1)
    check_int("chars", chars, 1)
    if not (math.isfinite(nll_nats) and nll_nats >= 0):
        raise ValueError(f"nll_nats={nll_nats!r} is out of range; use a finite summed negative log-likelihood >= 0")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy={accuracy!r} is out of range; use a fraction in [0, 1]")
    return {"perplexity per word": round(math.exp(nll_nats / words), 2), "next-word accuracy": round(accuracy, 4),
            "bits per char": round(nll_nats / chars / math.log(2), 4)}


def top_k(model: LanguageModel, context: Sequence[int], k: int = 5) -> list[tuple[str, float]]:
    """Return the ``k`` most likely next tokens after one context, with their probabilities."""
    check_int("k", k, 1, len(model.vocab))
    ctx = check_contexts(model, np.asarray([context], dtype=np.int64))
    with torch.no_grad():
        probs = model.next_token_logprobs(ctx)[0].exp()
    values, ids = probs.topk(k)
    return [(model.vocab.itos[i], float(p)) for p, i in zip(values.tolist(), ids.tolist())]


def make_context(model: LanguageModel, tokens: Sequence[str], strict: bool = False) -> tuple[np.ndarray, list[str]]:
    """Encode the last ``model.context_size`` tokens as a (1, context_size) context, <s>-padded on the left.

    Returns the context and the tokens that were not in the vocabulary (encoded as <unk>, or a
    ValueError if ``strict``).
    """
    vocab = model.vocab
    unknown = [tok for tok in tokens if tok not in vocab]
    ids = list(vocab.encode(list(tokens), strict=strict))
    k = model.context_size
    history = [vocab.bos_id] * k + ids
    return np.array([history[len(history) - k:]], dtype=np.int64).reshape(1, k), unknown


def deep_contexts(contexts: np.ndarray, bos_id: int, words: int = 12) -> np.ndarray:
    """Return the row indices of contexts with at least ``words`` real tokens before the target.

    Timing a model on such contexts, from the middle of documents, measures the work a real prediction
    does; the first token of a document has only padding before it. Introduced in
    notebooks/02_neural_language_models.ipynb.
    """
    return np.flatnonzero((np.asarray(contexts) != bos_id).sum(1) >= words)


def sequence_logprob(model: LanguageModel, tokens: Sequence[str], strict: bool = True) -> dict:
    """Score a token sequence by the chain rule: ln P(w1..wn) = Σ ln P(wi | w1..wi-1), ending with </s>.

    The model sees ``model.context_size`` previous tokens, <s>-padded at the start. Returns
    ``{"nats", "bits", "factors"}``, where factors lists (token, P(token | context)) in order.
    With ``strict`` (the default) a token outside the vocabulary raises ValueError instead of
    silently becoming <unk>.
    """
    vocab = model.vocab
    ids = list(vocab.encode(list(tokens), strict=strict)) + [vocab.eos_id]
    padded = [vocab.bos_id] * model.context_size + ids
    k = model.context_size
    contexts = np.array([padded[i : i + k] for i in range(len(ids))], dtype=np.int64).reshape(len(ids), k)
    with torch.no_grad():
        logp = model.next_token_logprobs(contexts).double()  # (len(ids), vocab)
    picked = logp[torch.arange(len(ids)), torch.as_tensor(ids)]
    nats = float(picked.sum())
    return {
        "nats": nats,
        "bits": nats / math.log(2),
        "factors": [(vocab.itos[i], math.exp(float(lp))) for i, lp in zip(ids, picked)],
    }
