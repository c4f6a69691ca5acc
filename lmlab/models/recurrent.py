"""Recurrent language models: a state carried along the text, one token at a time.

Introduced in notebooks/09_recurrent_vectors_classifiers.ipynb.

A plain (Elman) RNN keeps one hidden vector and updates it at every token:
    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),      P(· | w_1..w_t) = softmax(W_out h_t + b_out).
An LSTM (Hochreiter & Schmidhuber, 1997) adds a cell c_t that is changed only through gates (``lstm_cell``),
so that what it carries can pass many steps almost unchanged: the gradient through c is multiplied by the
forget gate f, not by a weight matrix and a tanh slope at every step.

``RecurrentLanguageModel`` answers the same questions as the GPT (``lmlab.models.neural``): <s>-padded contexts of
``n_positions - 1`` ids in, (batch, vocab) log-probabilities out, equal to running the unpadded prefix; whole
documents for training and ``evaluate_documents``; and ``step`` for decoding at a constant cost per token.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lmlab.data.corpora import Vocab
from lmlab.measure.plots import finish_axes, plain_log_ticks
from lmlab.measure.stats import compare, perplexity_interval
from lmlab.models.neural import NeuralLM

CELLS = ("lstm", "rnn")


def lstm_cell(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
              bias_ih: torch.Tensor, bias_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance an LSTM by one step, as torch.nn.LSTM computes it: (x (batch, in), h, c (batch, hidden)) -> (h', c').

    The four gates come from one matrix product, stacked in nn.LSTM's order (i, f, g, o):
        i = σ(W_ii x + b_ii + W_hi h + b_hi)      input gate: how much of the candidate to write
        f = σ(W_if x + b_if + W_hf h + b_hf)      forget gate: how much of the old cell to keep
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)   candidate values
        o = σ(W_io x + b_io + W_ho h + b_ho)      output gate: how much of the cell to show
        c' = f ⊙ c + i ⊙ g,      h' = o ⊙ tanh(c')
    ``weight_ih`` is (4·hidden, in), ``weight_hh`` (4·hidden, hidden), the biases (4·hidden,): nn.LSTM's
    ``weight_ih_l0`` etc. Written by hand to teach; tests/test_recurrent.py checks it against nn.LSTM.
    """
    gates = x @ weight_ih.T + bias_ih + h @ weight_hh.T + bias_hh  # (batch, 4 * hidden)
    i, f, g, o = gates.chunk(4, dim=-1)  # each (batch, hidden)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_next), c_next


def rnn_cell(x: torch.Tensor, h: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
             bias_ih: torch.Tensor, bias_hh: torch.Tensor) -> torch.Tensor:
    """Advance a plain tanh RNN by one step, as torch.nn.RNN computes it: (x (batch, in), h (batch, hidden)) -> h'.

    h' = tanh(W_ih x + b_ih + W_hh h + b_hh). ``weight_ih`` is (hidden, in), ``weight_hh`` (hidden, hidden).
    """
    return torch.tanh(x @ weight_ih.T + bias_ih + h @ weight_hh.T + bias_hh)  # (batch, hidden)


@dataclass(frozen=True)
class RecurrentConfig:
    vocab_size: int
    cell: str = "lstm"
    n_layer: int = 1
    embed_dim: int = 128
    hidden_dim: int = 128
    n_positions: int = 128
    dropout: float = 0.0


def check_config(vocab: Vocab, config: RecurrentConfig) -> None:
    """Raise ValueError for a cell other than "lstm"/"rnn", a size < 1, a dropout outside [0, 1), or a vocab_size
    that is not the vocabulary's."""
    if config.cell not in CELLS:
        raise ValueError(f"cell={config.cell!r} is not a recurrent cell; use one of {CELLS}")
    if config.vocab_size != len(vocab):
        raise ValueError(f"vocab_size={config.vocab_size} does not match the vocabulary's {len(vocab)} tokens")
    for name in ("n_layer", "embed_dim", "hidden_dim", "n_positions"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "n_positions" else 1):
            low = 2 if name == "n_positions" else 1
            raise ValueError(f"{name}={value!r} is out of range; use an integer >= {low}")
    if isinstance(config.dropout, bool) or not isinstance(config.dropout, (int, float)) or not 0 <= config.dropout < 1:
        raise ValueError(f"dropout={config.dropout!r} is out of range; use a number in [0, 1)")


class RecurrentLanguageModel(NeuralLM):
    """An LSTM or plain-RNN language model reading one document prefix: <s> w1 ... w_{t-1} -> P(w_t | prefix).

    Embedding e(w) (embed_dim), ``n_layer`` recurrent layers (hidden_dim), then the output layer tied to the
    embedding: logits = E · (P h) + b, with P a (embed_dim, hidden_dim) projection when the two sizes differ.
    """

    kind = "rnn"

    def __init__(self, vocab: Vocab, config: RecurrentConfig):
        super().__init__()
        check_config(vocab, config)
        self.vocab, self.config = vocab, config
        self.context_size = config.n_positions - 1
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.drop = nn.Dropout(config.dropout)
        layer_dropout = config.dropout if config.n_layer > 1 else 0.0
        self.rnn: nn.RNNBase
        if config.cell == "lstm":
            self.rnn = nn.LSTM(config.embed_dim, config.hidden_dim, config.n_layer, batch_first=True,
                               dropout=layer_dropout)
        else:
            self.rnn = nn.RNN(config.embed_dim, config.hidden_dim, config.n_layer, nonlinearity="tanh",
                              batch_first=True, dropout=layer_dropout)
        self.proj = (nn.Linear(config.hidden_dim, config.embed_dim, bias=False)
                     if config.hidden_dim != config.embed_dim else None)
        self.out = nn.Linear(config.embed_dim, config.vocab_size)
        self.out.weight = self.embed.weight  # tied: a word's input and output vectors are one

    def logits_from(self, hidden: torch.Tensor) -> torch.Tensor:
        """Map hidden states (..., hidden_dim) to next-token logits (..., vocab)."""
        hidden = self.drop(hidden)
        return self.out(hidden if self.proj is None else self.proj(hidden))

    def initial_state(self, batch: int = 1):
        """The state before the first token: zeros, (n_layer, batch, hidden) for h (and for c with an LSTM)."""
        zeros = torch.zeros(self.config.n_layer, batch, self.config.hidden_dim, device=self.device)
        return (zeros, zeros.clone()) if self.config.cell == "lstm" else zeros

    def step(self, token_ids: torch.Tensor, state) -> tuple[torch.Tensor, object]:
        """Read one token per row and return (ln P(next token), new state): (batch,) ids -> (batch, vocab).

        The cost is one cell update whatever the position: the whole past lives in ``state``
        (start from ``initial_state(batch)`` and feed <s> first).
        """
        ids = torch.as_tensor(token_ids, device=self.device).long().reshape(-1, 1)  # (batch, 1)
        output, state = self.rnn(self.drop(self.embed(ids)), state)  # (batch, 1, hidden)
        return torch.log_softmax(self.logits_from(output[:, 0]).float(), dim=-1), state

    def last_logits(self, contexts: torch.Tensor) -> torch.Tensor:
        # Rows are <s>-padded on the left. Keep one <s> as the document start and move each row's real tokens
        # to the front, then pack: the recurrence starts from zeros at that <s>, as for the unpadded prefix.
        bos = self.vocab.bos_id
        width = contexts.shape[1]
        first_word = torch.where(contexts != bos, torch.arange(width, device=contexts.device),
                                 width).min(dim=1).values  # (batch,)
        start = (first_word - 1).clamp(min=0)  # index of the <s> that starts each document
        lengths = width - start  # (batch,) real tokens per row, >= 1
        longest = int(lengths.max())
        index = (start[:, None] + torch.arange(longest, device=contexts.device)[None, :]).clamp(max=width - 1)
        moved = contexts.gather(1, index)  # (batch, longest): real tokens first, then repeats (ignored)
        packed = pack_padded_sequence(self.drop(self.embed(moved)), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, state = self.rnn(packed)
        h_last = (state[0] if isinstance(state, tuple) else state)[-1]  # (batch, hidden): top layer, last real token
        return self.logits_from(h_last)  # (batch, vocab)

    def document_logits(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at every position of right-padded documents: (batch, time) ids -> (batch, time, vocab).

        Right padding never reaches an earlier position, so ``mask`` is not needed (accepted for the GPT's
        signature).
        """
        output, _ = self.rnn(self.drop(self.embed(inputs)))  # (batch, time, hidden)
        return self.logits_from(output)

    def batch_logits(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of documents -> (logits, targets) at every position: (batch · time, vocab), (batch · time,)."""
        inputs, targets, mask = (t.to(self.device) for t in batch)
        return self.document_logits(inputs, mask).flatten(0, 1), targets.flatten()



def gradient_by_distance(model: RecurrentLanguageModel, token_ids) -> np.ndarray:
    """How much the loss at the end of a sequence still feels each earlier token: one backward pass.

    ``token_ids`` (T + 1 ids, or a (batch, T + 1) array of such rows) are read as inputs w_0..w_{T-1} and the last
    id as the target. Returns g of shape (T,) (or (batch, T)) with g[k − 1] = ‖∂ℓ / ∂e_{T−k}‖ for k = 1..T: the norm
    of the gradient of the last position's loss ℓ = −ln P(w_T | w_0..w_{T-1}) with respect to the embedding read
    k tokens before the target. A plain RNN multiplies the gradient by W_hh and a tanh slope at every step back,
    so g falls off roughly exponentially with k; an LSTM's cell path is scaled by the forget gates only.
    Dropout is off (eval mode). Rows are independent: each row's gradient comes from its own loss only.
    Raises ValueError for fewer than 2 ids per row or an id outside the vocabulary.
    """
    ids = torch.as_tensor(np.asarray(token_ids)).long()
    single = ids.dim() == 1
    ids = ids[None] if single else ids  # (batch, T + 1)
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise ValueError(f"token_ids has shape {tuple(ids.shape)}; give at least 2 ids per row (inputs, then the "
                         "target)")
    if int(ids.min()) < 0 or int(ids.max()) >= len(model.vocab):
        raise ValueError(f"token_ids holds an id outside [0, {len(model.vocab) - 1}]")
    was_training = model.training
    model.eval()
    ids = ids.to(model.device)
    embedded = model.embed(ids[:, :-1]).detach().requires_grad_(True)  # (batch, T, embed)
    output, _ = model.rnn(embedded)  # (batch, T, hidden)
    logp = torch.log_softmax(model.logits_from(output[:, -1]), dim=-1)  # (batch, vocab)
    (-logp.gather(1, ids[:, -1:]).sum()).backward()
    model.train(was_training)
    norms = embedded.grad.norm(dim=-1).flip(1).cpu().numpy()  # (batch, T); column k - 1: k tokens before the target
    return norms[0] if single else norms


def gradient_plot(curves: dict[str, np.ndarray], title: str = "How far back the gradient reaches"):
    """Plot gradient norm (log scale) against distance k for each labelled curve (``gradient_by_distance``).

    A curve may be (K,) or (rows, K): several rows are drawn as their geometric mean, with a band from the
    rows' 10th to 90th percentile. Returns the figure. Raises ValueError for no curves.
    """
    import matplotlib.pyplot as plt


    if not curves:
        raise ValueError("curves is empty: give at least one label -> gradient norms")
    fig, ax = plt.subplots(figsize=(11, 6))
    for label, values in curves.items():
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))  # (rows, K)
        k = np.arange(1, values.shape[1] + 1)
        band = f" (band: {len(values)} rows' 10th to 90th percentile)" if len(values) > 1 else ""
        line, = ax.plot(k, np.exp(np.log(values).mean(0)), lw=2.5, label=label + band)
        if len(values) > 1:
            low, high = np.percentile(values, [10, 90], axis=0)
            ax.fill_between(k, low, high, color=line.get_color(), alpha=0.2)
    ax.set_yscale("log")
    plain_log_ticks(ax.yaxis)
    finish_axes(ax, "distance k (tokens before the predicted one)", "‖∂ loss / ∂ embedding‖, log scale", title)
    return fig


# A ladder plot's legend names each row's kind of model (the rows of experiment.run all say "uncompressed").
FAMILIES = (("gram", "n-gram (Kneser-Ney)"), ("mlp", "MLP"), ("rnn", "plain RNN"), ("lstm", "LSTM"), ("gpt", "GPT"))


def by_family(rows: list) -> list:
    """Return the results rows with ``technique`` set to the kind of model each row's name says (``FAMILIES``:
    "ngram-3" and "5-gram" -> n-gram, "lstm-kjv" -> LSTM ...), so a ladder's plot colours and names models by kind.
    Raises ValueError for a name of no known kind."""
    out = []
    for row in rows:
        family = next((label for key, label in FAMILIES if key in row.name.lower()), None)
        if family is None:
            raise ValueError(f"row name {row.name!r} is of no known kind; names contain one of "
                             f"{tuple(key for key, _ in FAMILIES)}")
        out.append(dataclasses.replace(row, technique=family))
    return out


def ladder_takeaways(scores: dict[str, dict], reference: str, level: float = 0.95) -> list[str]:
    """Say where ``reference`` sits against each other model, in perplexity, on the same documents.

    ``scores`` maps a model's name to its ``lmlab.models.scoring.document_scores`` on one slice. For each other
    model, the paired bootstrap interval (``lmlab.measure.stats.compare`` on the same documents) of
    Δ = loss(reference) − loss(other), nats per prediction: "lower" or "higher" when the interval excludes 0,
    "within noise" when it holds 0.
    Raises ValueError for an unknown ``reference`` or slices of different lengths.
    """
    if reference not in scores:
        raise ValueError(f"reference={reference!r} is not among the scored models {tuple(scores)}")
    mine = scores[reference]

    def ppl(s):
        low, high = perplexity_interval(s["nll_nats"], s["tokens"], level=level)
        return f"{math.exp(s['nll_nats'].sum() / s['tokens'].sum()):.1f} [{low:.1f}, {high:.1f}]"

    lines = [f"{reference}: perplexity {ppl(mine)} ({level:.0%} bootstrap interval over documents)"]
    for name, other in scores.items():
        if name == reference:
            continue
        found = compare(mine["nll_nats"], other["nll_nats"], mine["tokens"], level=level)
        lines.append(f"  vs {name:<11} {ppl(other)}: Δ {found.delta:+.3f} nats [{found.low:+.3f}, "
                     f"{found.high:+.3f}] -> {reference}'s perplexity is {found.verdict}")
    return lines
