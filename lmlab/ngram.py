"""N-gram language models: probability by counting, with smoothing, vectorized with NumPy.

Introduced in notebooks/01_ngram_language_models.ipynb.

An n-gram model assumes the next token depends only on the n−1 before it:
    P(w1..wm) = Π P(wi | w1..wi-1) ≈ Π P(wi | wi-n+1..wi-1).
Counting the training text gives the estimates. Three smoothings:

- "none" (maximum likelihood):  P(w | h) = c(h w) / c(h). Unseen n-grams get probability 0.
- "add-k":                       P(w | h) = (c(h w) + k) / (c(h) + k|V|); Laplace is k = 1.
- "kneser-ney" (interpolated, one discount D):
      P(w | h) = max(c(h w) − D, 0) / c(h)  +  D · N1+(h •) / c(h) · P_lower(w | h')
  where h' drops the oldest token of h, and N1+(h •) is the number of distinct words seen after h.
  The lower orders use continuation counts N1+(• h' w) (in how many distinct contexts h' w was seen)
  in place of c(h' w); the lowest order interpolates with the uniform 1/|V|, so no token gets 0.
  A context never seen in training backs off entirely: P(w | h) = P_lower(w | h').

Counts are stored per context length j as sorted integer keys. A context of length j gets a dense id
h_j from the pair (h_{j-1}, its oldest token): key = h_{j-1}·|V| + token, so keys fit in int64 for any n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lmlab.corpora import TokenizedCorpus, Vocab
from lmlab.lm import check_contexts

SMOOTHINGS = ("none", "add-k", "kneser-ney")


@dataclass
class _Level:
    """Counts for n-grams whose context has ``j`` tokens (order j + 1)."""

    context_keys: np.ndarray  # (contexts,) sorted keys h_{j-1}·V + oldest token; empty for j = 0
    context_parent: np.ndarray  # (contexts,) h_{j-1} of each context: its shorter suffix
    starts: np.ndarray  # (contexts + 1,) CSR row starts into keys/counts
    keys: np.ndarray  # (ngrams,) sorted keys h_j·V + w: context id, then next token
    counts: np.ndarray  # (ngrams,) float64: c(h w), or the continuation count for KN lower orders
    totals: np.ndarray  # (contexts,) Σ_w counts
    distinct: np.ndarray  # (contexts,) N1+(h •): words with a non-zero count after h

    def nbytes(self) -> int:
        return sum(a.nbytes for a in vars(self).values())


class NGramModel:
    """An n-gram language model over token ids; answers lmlab's language-model interface."""

    def __init__(self, vocab: Vocab, n: int, smoothing: str, k: float, discount: float, levels: list[_Level]):
        self.vocab, self.n, self.smoothing, self.k, self.discount = vocab, n, smoothing, k, discount
        self.context_size = n - 1
        self._levels = levels  # levels[j] for context length j = 0 .. n-1

    # ----- fitting -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, data: TokenizedCorpus, n: int, smoothing: str = "kneser-ney", k: float = 1.0,
            discount: float = 0.75) -> "NGramModel":
        """Count the training split of ``data`` (contexts <s>-padded per document) and return the model."""
        _check_n(n)
        return cls.from_examples(*data.examples("train", n - 1), data.vocab, n, smoothing, k, discount)

    @classmethod
    def from_examples(cls, contexts: np.ndarray, targets: np.ndarray, vocab: Vocab, n: int,
                      smoothing: str = "kneser-ney", k: float = 1.0, discount: float = 0.75) -> "NGramModel":
        """Count (context, target) pairs: contexts (N, n-1) and targets (N,) int ids.

        Raises ValueError for n < 1, an unknown smoothing, k <= 0 (add-k), a discount outside (0, 1)
        (kneser-ney), no examples, or contexts of the wrong width.
        """
        _check_n(n)
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing={smoothing!r} is unknown; use one of {SMOOTHINGS}")
        if smoothing == "add-k" and not (math.isfinite(k) and k > 0):
            raise ValueError(f"k={k!r} is out of range; add-k smoothing needs a finite k > 0")
        if smoothing == "kneser-ney" and not 0 < discount < 1:
            raise ValueError(f"discount={discount!r} is out of range; Kneser-Ney needs 0 < D < 1")
        contexts, targets = np.asarray(contexts, dtype=np.int64), np.asarray(targets, dtype=np.int64)
        if len(targets) == 0:
            raise ValueError("the corpus is empty: there are no training (context, target) pairs to count")
        if contexts.shape != (len(targets), n - 1):
            raise ValueError(f"contexts has shape {contexts.shape}; n={n} needs ({len(targets)}, {n - 1})")
        V = len(vocab)
        # Dense context ids for each context length j, from the newest token backwards.
        ids = [np.zeros(len(targets), dtype=np.int64)]  # h_0 = 0 for every example
        context_keys, parents = [np.zeros(0, np.int64)], [np.zeros(1, np.int64)]
        for j in range(1, n):
            keys = ids[-1] * V + contexts[:, n - 1 - j]
            unique, inverse = np.unique(keys, return_inverse=True)
            context_keys.append(unique)
            parents.append(unique // V)
            ids.append(inverse.reshape(-1))
        # Counts of the highest order, then (for KN) continuation counts for the lower ones.
        levels: list[_Level | None] = [None] * n
        top_keys, top_counts = np.unique(ids[n - 1] * V + targets, return_counts=True)
        levels[n - 1] = _make_level(context_keys[n - 1], parents[n - 1], top_keys, top_counts, V)
        for j in range(n - 2, -1, -1):
            if smoothing == "kneser-ney":
                above = levels[j + 1]
                above_context = np.repeat(np.arange(len(above.totals)), np.diff(above.starts))
                keys = above.context_parent[above_context] * V + above.keys % V  # N1+(• h' w): one per distinct h w
                level_keys, level_counts = np.unique(keys, return_counts=True)
            else:
                level_keys, level_counts = np.unique(ids[j] * V + targets, return_counts=True)
            levels[j] = _make_level(context_keys[j], parents[j], level_keys, level_counts, V)
        return cls(vocab, n, smoothing, float(k), float(discount), levels)

    # ----- the language-model interface ----------------------------------------------------------
    def next_token_logprobs(self, contexts: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Return ln P(w | context) for every w in the vocabulary: (batch, n-1) ids -> (batch, |V|) float64."""
        ctx = check_contexts(self, contexts).numpy()
        ids, found = self._context_ids(ctx)
        V = len(self.vocab)
        if self.smoothing == "kneser-ney":
            probs = np.tile(self._lowest_kn(), (len(ctx), 1))  # (batch, V)
            for j in range(self.n):
                rows = np.flatnonzero(found[j])
                if len(rows):
                    probs[rows] = self._kn_step(j, ids[j][rows], probs[rows])
        else:
            top = self.n - 1
            counts = np.zeros((len(ctx), V))
            rows = np.flatnonzero(found[top])
            self._scatter_counts(top, ids[top][rows], counts, rows)
            totals = np.zeros(len(ctx))
            totals[rows] = self._levels[top].totals[ids[top][rows]]
            if self.smoothing == "add-k":
                probs = (counts + self.k) / (totals[:, None] + self.k * V)
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    probs = np.where(totals[:, None] > 0, counts / np.maximum(totals[:, None], 1), 0.0)
        with np.errstate(divide="ignore"):
            return torch.from_numpy(np.log(probs))

    def logprob_of(self, contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Return ln P(target | context) for each pair, (N,), without building (N, |V|): fast corpus scoring."""
        ctx = check_contexts(self, contexts).numpy()
        targets = np.asarray(targets, dtype=np.int64)
        ids, found = self._context_ids(ctx)
        V = len(self.vocab)
        if self.smoothing == "kneser-ney":
            lowest = self._lowest_kn()
            probs = lowest[targets]
            for j in range(self.n):
                rows = np.flatnonzero(found[j])
                level = self._levels[j]
                h = ids[j][rows]
                c = self._lookup(j, h, targets[rows])
                total = level.totals[h]
                probs[rows] = (np.maximum(c - self.discount, 0) + self.discount * level.distinct[h] * probs[rows]) / total
        else:
            top = self.n - 1
            c = np.zeros(len(targets))
            total = np.zeros(len(targets))
            rows = np.flatnonzero(found[top])
            c[rows] = self._lookup(top, ids[top][rows], targets[rows])
            total[rows] = self._levels[top].totals[ids[top][rows]]
            if self.smoothing == "add-k":
                probs = (c + self.k) / (total + self.k * V)
            else:
                probs = np.where(total > 0, c / np.maximum(total, 1), 0.0)
        with np.errstate(divide="ignore"):
            return np.log(probs)

    def perplexity(self, contexts: np.ndarray, targets: np.ndarray) -> float:
        """Return exp(−mean ln P(target | context)); infinite if any target has probability 0."""
        if len(targets) == 0:
            raise ValueError("targets is empty: perplexity needs at least one (context, target) pair")
        mean_nll = -float(np.mean(self.logprob_of(contexts, targets)))
        return math.exp(mean_nll) if mean_nll < 700 else math.inf

    # ----- size ----------------------------------------------------------------------------------
    def num_ngrams(self) -> int:
        """Return how many distinct n-grams the model stores, all orders together."""
        return int(sum(len(level.keys) for level in self._levels))

    def size_bytes(self) -> int:
        """Return the bytes of every array the model stores."""
        return int(sum(level.nbytes() for level in self._levels))

    def __repr__(self) -> str:
        return (f"NGramModel(n={self.n}, smoothing={self.smoothing!r}, vocab={len(self.vocab)}, "
                f"ngrams={self.num_ngrams():,}, size={self.size_bytes() / 1e6:.2f} MB)")

    # ----- internals -----------------------------------------------------------------------------
    def _context_ids(self, ctx: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Dense ids h_j of each row's last j tokens, and whether that context was seen, for j = 0..n-1."""
        V = len(self.vocab)
        ids = [np.zeros(len(ctx), dtype=np.int64)]
        found = [np.ones(len(ctx), dtype=bool)]
        for j in range(1, self.n):
            table = self._levels[j].context_keys
            keys = ids[-1] * V + ctx[:, self.n - 1 - j]
            pos = np.minimum(np.searchsorted(table, keys), max(len(table) - 1, 0))
            hit = found[-1] & (len(table) > 0) & (table[pos] == keys if len(table) else False)
            ids.append(np.where(hit, pos, 0))
            found.append(hit)
        return ids, found

    def _lookup(self, j: int, h: np.ndarray, words: np.ndarray) -> np.ndarray:
        """Counts stored at level j for (context id, word) pairs; 0 where never seen."""
        level = self._levels[j]
        keys = h * len(self.vocab) + words
        pos = np.minimum(np.searchsorted(level.keys, keys), len(level.keys) - 1)
        return np.where(level.keys[pos] == keys, level.counts[pos], 0.0)

    def _scatter_counts(self, j: int, h: np.ndarray, out: np.ndarray, rows: np.ndarray) -> None:
        """out[rows[i], w] = count of (h[i], w) at level j, for every stored w."""
        level = self._levels[j]
        lengths = level.starts[h + 1] - level.starts[h]
        row_index = np.repeat(rows, lengths)
        entry = np.repeat(level.starts[h] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        out[row_index, level.keys[entry] % len(self.vocab)] = level.counts[entry]

    def _kn_step(self, j: int, h: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """One interpolation step at context length j: discounted counts plus weighted lower order."""
        level = self._levels[j]
        counts = np.zeros_like(lower)
        self._scatter_counts(j, h, counts, np.arange(len(h)))
        total = level.totals[h][:, None]
        return (np.maximum(counts - self.discount, 0) + self.discount * level.distinct[h][:, None] * lower) / total

    def _lowest_kn(self) -> np.ndarray:
        """The uniform distribution the lowest Kneser-Ney order interpolates with."""
        return np.full(len(self.vocab), 1.0 / len(self.vocab))


def _make_level(context_keys: np.ndarray, parents: np.ndarray, keys: np.ndarray, counts: np.ndarray,
                V: int) -> _Level:
    contexts = keys // V
    num_contexts = max(len(parents), 1)
    starts = np.zeros(num_contexts + 1, dtype=np.int64)
    np.add.at(starts, contexts + 1, 1)
    starts = np.cumsum(starts)
    counts = counts.astype(np.float64)
    totals = np.bincount(contexts, weights=counts, minlength=num_contexts)
    distinct = np.bincount(contexts, minlength=num_contexts).astype(np.float64)
    return _Level(context_keys, parents, starts, keys.astype(np.int64), counts, totals, distinct)


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} is out of range; an n-gram model needs an integer n >= 1")
