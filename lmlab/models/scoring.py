"""Score a language model document by document: summed -ln P, right guesses and predictions per document.

Introduced in notebooks/05_pruning_and_low_rank.ipynb.
"""

from __future__ import annotations

import numpy as np
import torch

from lmlab.data.corpora import TokenizedCorpus
from lmlab.measure.runtime import check_int
from lmlab.models.lm import evaluate
from lmlab.models.neural import IGNORE, NeuralLM


def document_scores(model: NeuralLM, data: TokenizedCorpus, split: str, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Score a model on each document of ``split``: per document, the summed −ln P, the right guesses and the count.

    For a GPT or a recurrent model, the same predictions as ``model.evaluate_documents`` (every token and each </s>,
    one causal pass per document, cut at the model's ``n_positions``); for any other lmlab LM (an n-gram, the MLP),
    those of ``lmlab.models.lm.evaluate`` on ``data.examples(split, model.context_size)``, ties counted as it counts
    them.
    Kept per document in the split's order, so that intervals can resample whole documents
    (``lmlab.measure.stats.perplexity_interval``) and two models can be compared document by document.
    Returns {"nll_nats", "correct", "tokens"}, three float64 arrays of one entry per document.
    Raises ValueError for batch_size < 1 or an empty split.
    """
    check_int("batch_size", batch_size, 1)
    docs = data.ids[split] if split in data.ids else data._split_ids(split)
    if not len(docs):
        raise ValueError(f"split={split!r} has no documents to score")
    if not hasattr(model, "document_logits"):
        return _windowed_document_scores(model, data, split, docs)
    longest = model.config.n_positions
    nll, correct, tokens = np.zeros(len(docs)), np.zeros(len(docs)), np.zeros(len(docs))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(docs), batch_size):
            rows = [np.concatenate([[data.vocab.bos_id], doc, [data.vocab.eos_id]])[:longest + 1]
                    for doc in docs[start:start + batch_size]]
            length = max(len(row) for row in rows) - 1
            inputs = torch.full((len(rows), length), data.vocab.eos_id, dtype=torch.long)  # (batch, time)
            targets = torch.full((len(rows), length), IGNORE, dtype=torch.long)  # (batch, time)
            for i, row in enumerate(rows):
                inputs[i, :len(row) - 1] = torch.as_tensor(row[:-1])
                targets[i, :len(row) - 1] = torch.as_tensor(row[1:])
            real = targets != IGNORE
            logits = model.document_logits(inputs.to(model.device), real.long().to(model.device))  # (batch, time, V)
            logp = torch.log_softmax(logits.float(), -1).cpu()  # (batch, time, vocab)
            picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (batch, time)
            end = start + len(rows)
            nll[start:end] = -(picked * real).sum(1).double().numpy()
            correct[start:end] = ((logp.argmax(-1) == targets) & real).sum(1).double().numpy()
            tokens[start:end] = real.sum(1).double().numpy()
    model.train(was_training)
    return {"nll_nats": nll, "correct": correct, "tokens": tokens}



def _windowed_document_scores(model, data: TokenizedCorpus, split: str, docs) -> dict[str, np.ndarray]:
    """``document_scores`` for a fixed-window model: ``lmlab.models.lm.evaluate``'s predictions, per document."""
    contexts, targets = data.examples(split, model.context_size)
    tokens = np.array([len(doc) + 1 for doc in docs], dtype=np.float64)  # each document's words and its </s>
    bounds = np.r_[0, np.cumsum(tokens)].astype(int)
    nll, correct = np.zeros(len(docs)), np.zeros(len(docs))
    for d in range(len(docs)):
        part = slice(bounds[d], bounds[d + 1])
        scores = evaluate(model, contexts[part], targets[part])
        nll[d], correct[d] = scores["nll_nats"] * tokens[d], scores["accuracy"] * tokens[d]
    return {"nll_nats": nll, "correct": correct, "tokens": tokens}
