"""Neural language models that answer the same questions as the n-gram model.

Introduced in notebooks/02_neural_language_models.ipynb.

- ``MLPLanguageModel``: Bengio et al. (2003). The embeddings of the last k tokens are concatenated,
  pass one tanh hidden layer, and a softmax gives P(w | context):
  P(· | w_{t-k..t-1}) = softmax(W · tanh(H · [e(w_{t-k}); ...; e(w_{t-1})] + b) + c).
- ``GPTLanguageModel``: a small GPT-2 (``transformers.GPT2LMHeadModel`` built from a ``GPT2Config``,
  nothing downloaded) that reads a whole document prefix, up to ``n_positions`` tokens.

Both take (batch, context_size) int64 contexts, <s>-padded on the left as
``lmlab.data.corpora.TokenizedCorpus.examples`` makes them, and return (batch, vocab) log-probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmlab.data.corpora import TokenizedCorpus, Vocab, document_batches
from lmlab.measure.runtime import check_int
from lmlab.models.lm import check_contexts
from lmlab.models.scoring import IGNORE, TokenScores, score_tokens


class NeuralLM(nn.Module):
    """What the neural models share: the lmlab LM interface, sizes, and the training loss."""

    vocab: Vocab
    context_size: int
    config: Any  # the kind's config: MLPConfig, GPTConfig or lmlab.models.recurrent.RecurrentConfig
    card: dict[str, Any]  # a loaded checkpoint's card (lmlab.models.checkpoints.load_checkpoint sets it)
    # GPT and recurrent models only (lmlab.models.scoring asks hasattr): (batch, time) ids, mask -> (batch, time, vocab)
    document_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def next_token_logprobs(self, contexts: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Return ln P(next token | context) for each row: (batch, context_size) ids -> (batch, vocab)."""
        ctx = check_contexts(self, contexts).to(self.device)
        return torch.log_softmax(self.last_logits(ctx).float(), dim=-1)

    def last_logits(self, contexts: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def batch_logits(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits, targets) for every prediction in a training batch: (N, vocab) and (N,).

        Targets equal to IGNORE (padding) carry no loss.
        """
        raise NotImplementedError

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Cross-entropy, −mean ln P(target | context), over the batch's real predictions."""
        logits, targets = self.batch_logits(batch)
        return F.cross_entropy(logits, targets, ignore_index=IGNORE)

    @torch.no_grad()
    def evaluate_documents(self, data: TokenizedCorpus, split: str, batch_size: int = 64) -> dict[str, float]:
        """Score every token (and each </s>) of ``split`` in one causal pass per document (GPT and recurrent models).

        The same targets and contexts as ``lmlab.models.lm.evaluate(model, *data.examples(split, k))``,
        computed about ``k`` times faster, scored by ``lmlab.models.scoring.score_tokens`` (the argmax is the guess).
        Returns {"accuracy", "nll_nats", "perplexity", "tokens"}.
        """
        was_training = self.training
        self.eval()
        batches = document_batches(data, split, batch_size, max_len=self.config.n_positions)
        parts = [score_tokens(self.document_logits(inputs.to(self.device), mask.to(self.device)), targets)
                 for inputs, targets, mask in batches]
        self.train(was_training)
        return TokenScores.cat(parts).summary()

    @property
    def device(self) -> torch.device:
        first = next(self.parameters(), None)
        return torch.device("cpu") if first is None else first.device

    def num_parameters(self) -> int:
        """Count distinct parameters (tied weights once), also those an exported graph (lmlab.compress.export) holds."""
        return parameter_count(self)

    def size_bytes(self) -> int:
        """Bytes of the distinct parameters at their current precision, plus any exported graph's weights."""
        return parameter_bytes(self)


def parameter_count(model: nn.Module) -> int:
    """Count a model's distinct parameters (tied weights once), and those any exported graph inside it holds."""
    own = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return own + sum(getattr(m, "source_parameters", 0) for m in model.modules())


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of a model's distinct parameters at their precision, plus any exported graph's stored weights."""
    own = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    return own + sum(getattr(m, "stored_bytes", 0) for m in model.modules())


@dataclass(frozen=True)
class MLPConfig:
    vocab_size: int
    context_size: int = 8
    embed_dim: int = 24
    hidden_dim: int = 256


class MLPLanguageModel(NeuralLM):
    """Bengio-style MLP language model over the last ``context_size`` tokens."""

    kind = "mlp"

    def __init__(self, vocab: Vocab, config: MLPConfig):
        super().__init__()
        _check_config(vocab, config)
        self.vocab, self.config, self.context_size = vocab, config, config.context_size
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.hidden = nn.Linear(config.context_size * config.embed_dim, config.hidden_dim)
        self.out = nn.Linear(config.hidden_dim, config.vocab_size)

    def last_logits(self, contexts: torch.Tensor) -> torch.Tensor:
        e = self.embed(contexts).flatten(1)  # (batch, context * embed)
        return self.out(torch.tanh(self.hidden(e)))  # (batch, vocab)

    def batch_logits(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """A (contexts, targets) batch -> (logits (batch, vocab), targets (batch,))."""
        contexts, targets = (t.to(self.device) for t in batch)
        return self.last_logits(contexts), targets


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128
    dropout: float = 0.1


class GPTLanguageModel(NeuralLM):
    """A small GPT-2 reading one document prefix: <s> w1 ... w_{t-1} -> P(w_t | prefix)."""

    kind = "gpt"
    gpt: nn.Module  # transformers' GPT2LMHeadModel, or a runtime called the same way (lmlab.compress.export)

    def __init__(self, vocab: Vocab, config: GPTConfig):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        _check_config(vocab, config)
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd={config.n_embd} must be a multiple of n_head={config.n_head}")
        self.vocab, self.config = vocab, config
        self.context_size = config.n_positions - 1
        hf_config = GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
            n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=config.dropout, embd_pdrop=config.dropout,
            attn_pdrop=config.dropout, bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id,
            pad_token_id=vocab.eos_id, tie_word_embeddings=True,
        )
        self.gpt = GPT2LMHeadModel(hf_config)

    def last_logits(self, contexts: torch.Tensor) -> torch.Tensor:
        # Rows are <s>-padded on the left. Keep one <s> as the document start, mask the rest, and
        # number positions from that <s>, so the result equals running the unpadded prefix.
        bos = self.vocab.bos_id
        first_word = torch.where(contexts != bos, torch.arange(contexts.shape[1], device=contexts.device),
                                 contexts.shape[1]).min(dim=1).values  # (batch,)
        start = (first_word - 1).clamp(min=0)  # index of the <s> that starts each document
        contexts = contexts[:, int(start.min()):]  # drop padding columns every row has
        start = start - int(start.min())
        positions = torch.arange(contexts.shape[1], device=contexts.device)[None, :] - start[:, None]
        mask = (positions >= 0).long()
        out = self.gpt(input_ids=contexts, attention_mask=mask, position_ids=positions.clamp(min=0))
        return out.logits[:, -1, :]  # (batch, vocab): the last position predicts the next token

    def batch_logits(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of documents -> (logits, targets) at every position: (batch · time, vocab), (batch · time,)."""
        inputs, targets, mask = (t.to(self.device) for t in batch)
        return self.document_logits(inputs, mask).flatten(0, 1), targets.flatten()

    def document_logits(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits at every position of right-padded documents: (batch, time) ids and mask -> (batch, time, vocab)."""
        return self.gpt(input_ids=inputs, attention_mask=mask).logits


def _check_config(vocab: Vocab, config) -> None:
    if config.vocab_size != len(vocab):
        raise ValueError(f"vocab_size={config.vocab_size} does not match the vocabulary's {len(vocab)} tokens")
    for name, value in asdict(config).items():
        if name != "dropout" and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r} is out of range; use an integer >= 1")
    if not 0 <= getattr(config, "dropout", 0) < 1:
        raise ValueError(f"dropout={config.dropout!r} is out of range; use a number in [0, 1)")


@dataclass(frozen=True)
class WeightLayer:
    """One weight matrix of a model, as a matrix product sees it: ``matrix`` has shape (out, in).

    nn.Linear and nn.Embedding store (out, in) already (an embedding's "out" rows are its tokens);
    transformers' GPT-2 ``Conv1D`` stores the transpose, (in, out), which ``transposed`` records.
    ``tied`` says that another module uses the same tensor (a GPT's embedding and output layer).
    """

    name: str
    module: nn.Module
    transposed: bool
    tied: bool

    @property
    def matrix(self) -> torch.Tensor:
        return as_matrix(self.module)  # (out, in)

    def set_matrix(self, matrix: torch.Tensor) -> None:
        """Overwrite the weight in place with an (out, in) matrix of the same shape."""
        with torch.no_grad():
            cast(torch.Tensor, self.module.weight).copy_(matrix.T if self.transposed else matrix)


def is_conv1d(module: nn.Module) -> bool:
    """Say whether ``module`` is transformers' GPT-2 ``Conv1D``, which stores its weight as (in, out)."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def as_matrix(module: nn.Module) -> torch.Tensor:
    """Return a layer's weight as a matrix product sees it, (out, in): Conv1D's transposed, others as stored."""
    weight = cast(torch.Tensor, module.weight)  # nn.Module types an attribute as Tensor | Module
    return weight.T if is_conv1d(module) else weight


def weight_layers(model: nn.Module, embeddings: bool = True) -> list[WeightLayer]:
    """Return every distinct weight matrix of ``model`` (ours or a transformers model), in module order.

    Finds nn.Linear, transformers' ``Conv1D`` and, with ``embeddings``, nn.Embedding. A tensor shared
    by several modules (tied embeddings) is listed once, under its first module, with ``tied=True``.
    Introduced in notebooks/04_quantization.ipynb; chapter 05's pruning uses it too.
    """
    from transformers.pytorch_utils import Conv1D

    kinds = (nn.Linear, Conv1D) + ((nn.Embedding,) if embeddings else ())
    users: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, (nn.Linear, Conv1D, nn.Embedding)):
            users[id(module.weight)] = users.get(id(module.weight), 0) + 1
    layers, seen = [], set()
    for name, module in model.named_modules():
        if isinstance(module, kinds) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            layers.append(WeightLayer(name, module, is_conv1d(module), users[id(module.weight)] > 1))
    return layers


def decode_flops(model: nn.Module, tokens: int = 1) -> float:
    """Estimate the FLOPs of decoding ``tokens`` tokens: 2 · (weights in matrix products) · tokens.

    Every nn.Linear and GPT-2 Conv1D counts, a tied output layer included (it multiplies by the whole
    embedding matrix); embedding lookups do no arithmetic and are left out. So are the attention scores
    (q·k and the weighted sum of v), which grow with the context: at short contexts they are small.
    Raises ValueError for tokens < 1.
    """
    check_int("tokens", tokens, 1)
    weights = sum(cast(torch.Tensor, m.weight).numel() for m in model.modules()
                  if isinstance(m, nn.Linear) or is_conv1d(m))
    return 2.0 * weights * tokens
