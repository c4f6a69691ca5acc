"""The model seam: what a language model answers, as typed protocols that every chapter's code asks for.

Introduced in notebooks/00_measuring_milliseconds.ipynb. Code outside a model asks which of these a model answers
(``isinstance(model, DocumentModel)``), never which concrete class it is:

- ``LanguageModel``: next-token log-probabilities for a batch of fixed windows (every model: n-grams, the MLP, the
  GPTs, the recurrent models, their compressed and exported copies);
- ``DocumentModel``: also the logits at every position of whole documents in one causal pass (the GPTs and the
  recurrent models), so a document is scored in one pass instead of one window per word.

The decode step, the other half of the seam, is ``lmlab.inference``'s (it needs a KV cache).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from lmlab.data.corpora import TokenizedCorpus, Vocab


@runtime_checkable
class LanguageModel(Protocol):
    """Next-token scores over windows: ``next_token_logprobs(contexts)`` maps int64 (batch, context_size) ids to
    ln P of every next token, (batch, vocab)."""

    vocab: Vocab
    context_size: int

    def next_token_logprobs(self, contexts: np.ndarray | torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class DocumentModel(LanguageModel, Protocol):
    """A language model that also reads whole documents: ``document_logits(inputs, mask)`` maps right-padded
    (batch, time) ids and mask to the logits at every position, (batch, time, vocab); ``config.n_positions`` is the
    longest document it reads. It is a torch module (``device``, ``training``, ``eval()``, ``train()``)."""

    config: Any
    training: bool

    @property
    def device(self) -> torch.device: ...

    def document_logits(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...

    def evaluate_documents(self, data: TokenizedCorpus, split: str, batch_size: int = 64) -> dict[str, float]: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...


def is_transformers_causal_lm(model: object) -> bool:
    """Say whether ``model`` is a transformers causal LM (SmolLM2, GPT-2...): a module with a ``config`` and
    ``generate``. The one place lmlab asks; lmlab's own models answer ``LanguageModel`` instead."""
    return isinstance(model, torch.nn.Module) and hasattr(model, "config") and hasattr(model, "generate")

