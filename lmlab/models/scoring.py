"""The one teacher-forced scorer: summed −ln P, right guesses and predictions, for every model and chapter.

Introduced in notebooks/02_neural_language_models.ipynb (the neural models' accuracy and perplexity) and used
per document in notebooks/05_pruning_and_low_rank.ipynb.

``score_tokens`` turns a model's scores of every next token (logits, or log-probabilities) and the true next
tokens into per-row float64 sums; every evaluation in lmlab (``lmlab.models.lm.evaluate``,
``NeuralLM.evaluate_documents``, ``document_scores``, the pretrained LLM's ``perplexity``, decoding's ``score_ids``,
the distributed shards) calls it, so two chapters can never count a guess or a nat differently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmlab.data.corpora import TokenizedCorpus, document_batches
from lmlab.measure.runtime import check_int
from lmlab.models.protocols import DocumentModel

IGNORE = -100  # target id that the loss and the scorer skip (padding)
TIES = ("first", "fair")


@dataclass(frozen=True)
class TokenScores:
    """Per-row sums of a teacher-forced pass: Σ −ln P(target), right guesses, predictions counted (float64)."""

    nll_nats: torch.Tensor  # (rows,) float64: Σ −ln P(target | context) over the row's counted predictions
    correct: torch.Tensor  # (rows,) float64: right top-1 guesses (a fair share of a tie, under ties="fair")
    tokens: torch.Tensor  # (rows,) float64: predictions counted
    guesses: torch.Tensor  # (rows, time) int64: argmax_v ln P(v | context), the first of equal best scores

    @staticmethod
    def cat(parts: Sequence[TokenScores]) -> TokenScores:
        """Join the rows of several scored batches (same device) into one TokenScores, in order; guesses flat.

        Raises ValueError for no parts.
        """
        if not parts:
            raise ValueError("parts is empty: give at least one scored batch")
        return TokenScores(torch.cat([p.nll_nats for p in parts]), torch.cat([p.correct for p in parts]),
                           torch.cat([p.tokens for p in parts]),
                           torch.cat([p.guesses.reshape(-1) for p in parts])[None])

    def summary(self) -> dict[str, float]:
        """Return {"accuracy", "nll_nats", "perplexity", "tokens"} over all rows (``score_summary``)."""
        return score_summary(float(self.nll_nats.sum()), float(self.correct.sum()), float(self.tokens.sum()))


def score_summary(nll_nats: float, correct: float, tokens: float) -> dict[str, float]:
    """Turn the sums Σ −ln P, Σ correct, n into accuracy = Σ correct / n, mean nll and perplexity = exp(Σ −ln P / n).

    The perplexity is infinite when the mean nll exceeds 700 nats (a target with probability 0).
    Raises ValueError for tokens <= 0.
    """
    if not tokens > 0:
        raise ValueError(f"tokens={tokens!r}: nothing was scored; the summary needs at least one prediction")
    mean = nll_nats / tokens
    return {"accuracy": correct / tokens, "nll_nats": mean, "perplexity": math.exp(mean) if mean < 700 else math.inf,
            "tokens": int(tokens)}


def score_tokens(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None, *,
                 ties: str = "first", log_probs: bool = False) -> TokenScores:
    """Score every prediction teacher-forced: per row, Σ −ln P(target), the right top-1 guesses and the count.

    ln P = log_softmax(logits) (in float32, or float64 for float64 logits; skipped when ``log_probs`` says the
    scores already are ln P), on (rows, time, vocab) logits against (rows, time) targets, or (time, vocab) against
    (time,) as one row. A prediction counts where ``mask`` is true (default: target != IGNORE, the padding).
    nll_nats[r] = Σ_t −ln P(target_rt), summed in float64. A guess is right when argmax_v ln P(v) = target
    (``ties="first"``: the first of equal best scores, as torch.argmax picks); ``ties="fair"`` counts, as a fair
    random tie-break would on average, 1 / (number of tied best tokens) when the target is among them (a count-based
    model's equal probabilities). Raises ValueError for mismatched shapes, a counted target outside [0, vocab), or
    an unknown ``ties``.
    """
    if ties not in TIES:
        raise ValueError(f"ties={ties!r} is not a tie rule; use one of {TIES}")
    if logits.dim() == 2 and targets.dim() == 1:
        logits, targets = logits[None], targets[None]  # one row
        mask = None if mask is None else mask[None]
    if logits.dim() != 3 or tuple(logits.shape[:-1]) != tuple(targets.shape):
        raise ValueError(f"logits has shape {tuple(logits.shape)} and targets {tuple(targets.shape)}; use "
                         "(rows, time, vocab) with (rows, time), or (time, vocab) with (time,)")
    targets = targets.to(logits.device).long()
    real = (targets != IGNORE) if mask is None else mask.to(logits.device).bool()  # (rows, time)
    if tuple(real.shape) != tuple(targets.shape):
        raise ValueError(f"mask has shape {tuple(real.shape)}; it must match targets' {tuple(targets.shape)}")
    counted = targets[real]
    if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= logits.shape[-1]):
        bad = int(counted.min()) if int(counted.min()) < 0 else int(counted.max())
        raise ValueError(f"targets holds token id {bad}, outside [0, {logits.shape[-1] - 1}]")
    if log_probs:
        logp = logits
    else:
        logp = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), -1)  # (rows, time, V)
    picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (rows, time)
    guesses = logp.argmax(-1)  # (rows, time)
    if ties == "first":
        right = (guesses == targets).double()
    else:
        best = logp.max(-1, keepdim=True).values  # (rows, time, 1)
        tied = (logp >= best).sum(-1)  # (rows, time): how many tokens share the best score
        right = torch.where(picked >= best.squeeze(-1), 1.0 / tied.double(), 0.0)
    return TokenScores(nll_nats=-torch.where(real, picked.double(), 0.0).sum(-1), correct=(right * real).sum(-1),
                       tokens=real.double().sum(-1), guesses=guesses)


def document_scores(model, data: TokenizedCorpus, split: str, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Score a model on each document of ``split``: per document, the summed −ln P, the right guesses and the count.

    For a GPT or a recurrent model, the same predictions as ``model.evaluate_documents`` (every token and each </s>,
    one causal pass per document, cut at the model's ``n_positions``); for any other lmlab LM (an n-gram, the MLP),
    those of ``lmlab.models.lm.evaluate`` on ``data.examples(split, model.context_size)``, ties counted as it counts
    them (``ties="fair"``). Both through ``score_tokens``. Kept per document in the split's order, so that intervals
    can resample whole documents (``lmlab.measure.stats.perplexity_interval``) and two models can be compared
    document by document. Returns {"nll_nats", "correct", "tokens"}, three float64 arrays of one entry per document.
    Raises ValueError for batch_size < 1 or an empty split.
    """
    check_int("batch_size", batch_size, 1)
    docs = data._split_ids(split)
    if not len(docs):
        raise ValueError(f"split={split!r} has no documents to score")
    if not isinstance(model, DocumentModel):
        return _windowed_document_scores(model, data, split, docs)
    parts = []
    was_training = model.training
    model.eval()
    with torch.no_grad():  # the split's documents in order, cut at the model's window, right-padded
        for inputs, targets, mask in document_batches(data, split, batch_size, max_len=model.config.n_positions,
                                                      by_length=False):
            logits = model.document_logits(inputs.to(model.device), mask.to(model.device))  # (batch, time, vocab)
            parts.append(score_tokens(logits, targets))
    model.train(was_training)
    return _as_arrays(parts)


def document_sums(values, data: TokenizedCorpus, split: str) -> np.ndarray:
    """Sum per-prediction ``values`` into one total per document of ``split``: total_d = Σ_{i in d} values_i.

    ``values`` holds one number per prediction of ``data.examples(split, ...)``, in its order (each document's words,
    then its </s>), e.g. an n-gram's ``logprob_of``; the totals feed the paired comparisons of
    ``lmlab.measure.stats`` (introduced in notebooks/01_ngram_language_models.ipynb, Kneser-Ney against modified
    Kneser-Ney). Raises ValueError when ``values`` does not hold one entry per prediction of ``split``.
    """
    docs = data._split_ids(split)
    lengths = np.array([len(doc) + 1 for doc in docs])
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) != lengths.sum():
        raise ValueError(f"values has shape {values.shape}; split={split!r} has {lengths.sum()} predictions, "
                         "give one value per prediction")
    return np.add.reduceat(values, np.r_[0, np.cumsum(lengths)[:-1]]) if len(docs) else np.zeros(0)


def _windowed_document_scores(model, data: TokenizedCorpus, split: str, docs, batch_size: int = 512
                              ) -> dict[str, np.ndarray]:
    """``document_scores`` for a model that reads fixed windows: ``lmlab.models.lm.evaluate``'s predictions, document
    by document (one forward per ``batch_size`` predictions of a document, as ``evaluate`` on that document makes)."""
    contexts, targets = data.examples(split, model.context_size)
    bounds = np.r_[0, np.cumsum([len(doc) + 1 for doc in docs])]  # each document's words and its </s>
    nll, correct, tokens = np.zeros(len(docs)), np.zeros(len(docs)), np.zeros(len(docs))
    for d, (first, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        for start in range(first, end, batch_size):
            stop = min(end, start + batch_size)
            with torch.no_grad():
                logp = model.next_token_logprobs(contexts[start:stop]).double()  # (batch, vocab)
            scored = score_tokens(logp, torch.as_tensor(targets[start:stop]), ties="fair", log_probs=True)  # one row
            nll[d] += float(scored.nll_nats[0])
            correct[d] += float(scored.correct[0])
            tokens[d] += float(scored.tokens[0])
    return {"nll_nats": nll, "correct": correct, "tokens": tokens}


def _as_arrays(parts: Sequence[TokenScores]) -> dict[str, np.ndarray]:
    joined = TokenScores.cat(parts)
    return {"nll_nats": joined.nll_nats.cpu().numpy(), "correct": joined.correct.cpu().numpy(),
            "tokens": joined.tokens.cpu().numpy()}
