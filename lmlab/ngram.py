"""N-gram language models: probability by counting, with smoothing, vectorized with NumPy.

Introduced in notebooks/01_ngram_language_models.ipynb.

An n-gram model assumes the next token depends only on the n−1 before it:
    P(w1..wm) = Π P(wi | w1..wi-1) ≈ Π P(wi | wi-n+1..wi-1).
Counting the training text gives the estimates; c(h w) counts context h followed by w, c(h) = Σ_w c(h w).

- "none" (maximum likelihood):  P(w | h) = c(h w) / c(h). An unseen n-gram gets P = 0 (ln P = −inf);
  an unseen context gets −inf for every w: the model honestly knows nothing there.
- "add-k":  P(w | h) = (c(h w) + k) / (c(h) + k|V|); Laplace is k = 1. An unseen context gives 1/|V|.
- "kneser-ney" (interpolated, one discount D), built up from the uniform P_0(w) = 1/|V|, for j = 1 .. n:
      P_j(w | h) = max(c_j(h w) − D, 0) / c_j(h)  +  γ(h) · P_{j−1}(w | h'),   γ(h) = D · N1+(h •) / c_j(h)
  where h holds the last j−1 tokens, h' drops the oldest of them, and N1+(h •) = |{w : c_j(h w) > 0}|.
  The highest order (j = n) uses the raw counts c_n = c. Each lower order uses continuation counts,
  c_j(h w) = N1+(• h w) = |{v : c_{j+1}(v h w) > 0}|: in how many distinct contexts h w was seen.
  A context with c_j(h) = 0 (never seen) backs off entirely: P_j(w | h) = P_{j−1}(w | h'). Since
  P_0 > 0, every token of the vocabulary (even one never seen in training) gets P > 0.

Counts are stored per context length j as sorted integer keys. A context of length j gets a dense id
h_j from the pair (h_{j-1}, its oldest token): key = h_{j-1}·|V| + token, so keys fit in int64 for any n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lmlab.corpora import TokenizedCorpus, Vocab
from lmlab.lm import check_contexts
from lmlab.runtime import check_int

SMOOTHINGS = ("none", "add-k", "kneser-ney")
HASH_FROM = 512  # batches at least this large look keys up by hash; smaller ones by binary search


@dataclass
class _Level:
    """Counts for n-grams whose context has ``j`` tokens (order j + 1)."""

    context_keys: np.ndarray  # (contexts,) sorted keys h_{j-1}·V + oldest token; empty for j = 0
    context_parent: np.ndarray  # (contexts,) h_{j-1} of each context: its shorter suffix
    starts: np.ndarray  # (contexts + 1,) CSR row starts into keys/counts
    keys: np.ndarray  # (ngrams,) sorted keys h_j·V + w: context id, then next token
    counts: np.ndarray  # (ngrams,) float64: c(h w), or the continuation count for KN lower orders
    totals: np.ndarray  # (contexts,) c(h) = Σ_w counts
    distinct: np.ndarray  # (contexts,) N1+(h •): words with a non-zero count after h

    def __post_init__(self) -> None:
        # Hash indexes over the sorted keys: O(1) lookups when scoring a whole corpus at once.
        self.context_index = pd.Index(self.context_keys)
        self.key_index = pd.Index(self.keys)
        for index in (self.context_index, self.key_index):
            index.get_indexer(index[:1])  # build the hash table now, as part of fitting

    def nbytes(self) -> int:
        arrays = sum(a.nbytes for a in (self.context_keys, self.context_parent, self.starts, self.keys,
                                        self.counts, self.totals, self.distinct))
        hash_tables = sum(index.memory_usage() - index.nbytes for index in (self.context_index, self.key_index))
        return arrays + hash_tables


class NGramModel:
    """An n-gram language model over token ids; answers lmlab's language-model interface.

    ``vocab`` and ``context_size`` (= n − 1) as every lmlab model; ``n``, ``smoothing``, ``k`` and
    ``discount`` as fitted. Build one with ``NGramModel.fit`` or ``NGramModel.from_examples``.
    """

    def __init__(self, vocab: Vocab, n: int, smoothing: str, k: float, discount: float, levels: list[_Level]):
        self.vocab, self.n, self.smoothing, self.k, self.discount = vocab, n, smoothing, k, discount
        self.context_size = n - 1
        self._levels = levels  # levels[j] for context length j = 0 .. n-1
        self._base = None  # Kneser-Ney: P_1, the same for every context, computed once
        if smoothing == "kneser-ney":
            base = np.full((1, len(vocab)), 1.0 / len(vocab))  # (1, V): P_0, uniform
            self._kn_step(0, np.zeros(1, dtype=np.int64), base)
            self._base = base[0]

    # ----- fitting -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, data: TokenizedCorpus, n: int, smoothing: str = "kneser-ney", k: float = 1.0,
            discount: float = 0.75) -> "NGramModel":
        """Count the training split of ``data`` (each document <s>×(n−1), tokens, </s>) and return the model.

        Raises ValueError as ``from_examples`` does.
        """
        check_int("n", n, 1)
        return cls.from_examples(*data.examples("train", n - 1), data.vocab, n, smoothing, k, discount)

    @classmethod
    def from_examples(cls, contexts: np.ndarray, targets: np.ndarray, vocab: Vocab, n: int,
                      smoothing: str = "kneser-ney", k: float = 1.0, discount: float = 0.75) -> "NGramModel":
        """Count (context, target) pairs, contexts (N, n−1) and targets (N,) token ids, into a model.

        c(h w) = number of rows with context h and target w; see the module docstring for P(w | h).
        Raises ValueError for n < 1 or not an int, an unknown smoothing, k <= 0 (add-k), a discount
        outside (0, 1) (kneser-ney), no examples, contexts of the wrong shape, or ids outside the vocab.
        """
        check_int("n", n, 1)
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing={smoothing!r} is unknown; use one of {SMOOTHINGS}")
        if smoothing == "add-k" and not (_is_real(k) and math.isfinite(k) and k > 0):
            raise ValueError(f"k={k!r} is out of range; add-k smoothing needs a finite number k > 0")
        if smoothing == "kneser-ney" and not (_is_real(discount) and 0 < discount < 1):
            raise ValueError(f"discount={discount!r} is out of range; Kneser-Ney needs a number 0 < D < 1")
        contexts, targets = np.asarray(contexts, dtype=np.int64), np.asarray(targets, dtype=np.int64)
        if len(targets) == 0:
            raise ValueError("targets is empty: the corpus has 0 training (context, target) pairs to count")
        if targets.ndim != 1 or contexts.shape != (len(targets), n - 1):
            raise ValueError(f"contexts has shape {contexts.shape} and targets {targets.shape}; "
                             f"n={n} needs ({len(targets)}, {n - 1}) and ({len(targets)},)")
        V = len(vocab)
        for name, ids in (("contexts", contexts), ("targets", targets)):
            if ids.size and (ids.min() < 0 or ids.max() >= V):
                raise ValueError(f"{name} holds token id {ids.min() if ids.min() < 0 else ids.max()}, "
                                 f"outside [0, {V - 1}] for this vocabulary")
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
        """Return ln P(w | context) for every w in the vocabulary: (batch, n−1) ids -> (batch, |V|) float64.

        P is the fitted smoothing's formula (module docstring), one dense row per context.
        Raises ValueError for contexts of the wrong shape or ids outside the vocabulary.
        """
        ctx = check_contexts(self, contexts).cpu().numpy()
        ids, found = self._context_ids(ctx)
        V, batch = len(self.vocab), len(ctx)
        if self.smoothing == "kneser-ney":
            probs = np.tile(self._base, (batch, 1))  # (batch, V): P_1, the unigram level
            for j in range(1, self.n):
                rows = np.flatnonzero(found[j])
                if len(rows) == batch:
                    self._kn_step(j, ids[j], probs)
                elif len(rows):
                    part = probs[rows]  # (seen rows, V)
                    self._kn_step(j, ids[j][rows], part)
                    probs[rows] = part
        else:
            top = self._levels[self.n - 1]
            rows = np.flatnonzero(found[self.n - 1])
            h = ids[self.n - 1][rows]
            totals = np.zeros(batch)
            totals[rows] = top.totals[h]
            if self.smoothing == "add-k":
                denominator = totals + self.k * V
                probs = np.repeat((self.k / denominator)[:, None], V, axis=1)  # (batch, V)
                self._scatter_add(self.n - 1, h, probs, rows, 1 / denominator[rows], 0.0)
            else:
                probs = np.zeros((batch, V))  # (batch, V); unseen contexts stay all zero
                self._scatter_add(self.n - 1, h, probs, rows, 1 / np.maximum(totals[rows], 1), 0.0)
        with np.errstate(divide="ignore"):
            return torch.from_numpy(np.log(probs, out=probs))

    def logprob_of(self, contexts: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor) -> np.ndarray:
        """Return ln P(target_i | context_i) for each pair, shape (N,), without building (N, |V|).

        The fast path for scoring a whole corpus: a few hash lookups per order for each pair.
        Raises ValueError for contexts of the wrong shape, targets not (N,), or ids outside the vocabulary.
        """
        ctx = check_contexts(self, contexts).cpu().numpy()
        targets = self._check_targets(targets, len(ctx))
        ids, found = self._context_ids(ctx)
        V = len(self.vocab)
        if self.smoothing == "kneser-ney":
            probs = self._kn_targets(ids, found, targets, self.n - 1)
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

    def perplexity(self, contexts: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor) -> float:
        """Return the perplexity exp(−(1/N) Σ_i ln P(target_i | context_i)), infinite if any P is 0.

        Raises ValueError for no targets, and as ``logprob_of`` does.
        """
        if len(targets) == 0:
            raise ValueError("targets is empty: perplexity needs at least one (context, target) pair")
        mean_nll = -float(np.mean(self.logprob_of(contexts, targets)))
        return math.exp(mean_nll) if mean_nll < 700 else math.inf

    # ----- size ----------------------------------------------------------------------------------
    def num_ngrams(self) -> int:
        """Return how many distinct n-grams the model stores, all orders 1..n together."""
        return int(sum(len(level.keys) for level in self._levels))

    def num_parameters(self) -> int:
        """Return the parameter count: an n-gram model's parameters are its stored counts, one per n-gram."""
        return self.num_ngrams()

    def size_bytes(self) -> int:
        """Return the bytes the model holds: its count arrays (keys, counts, totals, CSR offsets) and the
        hash tables over the keys that make whole-corpus scoring fast (often the larger part)."""
        return int(sum(level.nbytes() for level in self._levels))

    def __repr__(self) -> str:
        return (f"NGramModel(n={self.n}, smoothing={self.smoothing!r}, vocab={len(self.vocab)}, "
                f"ngrams={self.num_ngrams():,}, size={self.size_bytes() / 1e6:.2f} MB)")

    def to_arpa(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write this Kneser-Ney model as an ARPA file (log10 probabilities and backoff weights), atomically.

        Each stored n-gram h w gets log10 P(w | h), the interpolated probability; each context h gets
        log10 γ(h), γ(h) = D · N1+(h •) / c(h). An ARPA reader computes P(w | h) = P(h w) if stored,
        else γ(h) · P(w | h') (γ = 1 for a context not in the file): exactly this model (e.g. KenLM,
        which reads models of order 2 and up). Contexts that never end an n-gram themselves (such as
        <s> <s>) are written with log10 P = −99. Returns the path.
        Raises ValueError for other smoothings, whose probabilities are not backoff-shaped, and
        FileExistsError if ``path`` exists and ``overwrite`` is false.
        """
        from lmlab.results import atomic_write_text

        if self.smoothing != "kneser-ney":
            raise ValueError(f"smoothing={self.smoothing!r}: only a kneser-ney model can be written as ARPA")
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"path={str(path)!r} exists; pass overwrite=True to replace it")
        V, itos = len(self.vocab), self.vocab.itos
        tokens = [np.zeros((1, 0), dtype=np.int64)]  # tokens[j][h]: the j tokens of context h at level j
        for j in range(1, self.n):
            level = self._levels[j]
            tokens.append(np.concatenate([(level.context_keys % V)[:, None], tokens[j - 1][level.context_parent]], 1))
        entries: list[dict[tuple, list[float]]] = []
        for j, level in enumerate(self._levels):
            if j == 0:
                words = np.arange(V)
                grams = words[:, None]
                probs = self._base[words]
            else:
                h = level.keys // V
                words = level.keys % V
                ids = self._suffix_ids(j, h)
                found = [np.ones(len(h), bool)] * (j + 1)
                grams = np.concatenate([tokens[j][h], words[:, None]], 1)
                probs = self._kn_targets(ids, found, words, j)
            entries.append({tuple(g): [float(lp), 0.0] for g, lp in zip(grams.tolist(), np.log10(probs).tolist())})
        for j in range(1, self.n):  # backoff weights γ(h), stored on the j-gram h itself
            level = self._levels[j]
            gammas = np.log10(self.discount * level.distinct / level.totals)
            for gram, gamma in zip(tokens[j].tolist(), gammas.tolist()):
                entries[j - 1].setdefault(tuple(gram), [-99.0, 0.0])[1] = gamma
        lines = ["", "\\data\\"] + [f"ngram {m + 1}={len(e)}" for m, e in enumerate(entries)]
        for m, table in enumerate(entries):
            lines += ["", f"\\{m + 1}-grams:"]
            for gram, (logp, backoff) in table.items():
                text = " ".join(itos[t] for t in gram)
                lines.append(f"{logp:.7f}\t{text}" + (f"\t{backoff:.7f}" if m + 1 < self.n else ""))
        lines += ["", "\\end\\", ""]
        atomic_write_text(path, "\n".join(lines))
        return path

    # ----- internals -----------------------------------------------------------------------------
    def _check_targets(self, targets: np.ndarray | torch.Tensor, rows: int) -> np.ndarray:
        """Return ``targets`` as int64 (rows,), or raise ValueError naming what is wrong."""
        targets = targets.cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
        if targets.shape != (rows,) or (rows and targets.dtype.kind not in "iu"):
            raise ValueError(f"targets has shape {targets.shape} and dtype {targets.dtype}; "
                             f"it must be ({rows},) integer token ids, one per context")
        if rows and (targets.min() < 0 or targets.max() >= len(self.vocab)):
            raise ValueError(f"targets holds token id {targets.min() if targets.min() < 0 else targets.max()}, "
                             f"outside [0, {len(self.vocab) - 1}]")
        return targets.astype(np.int64, copy=False)

    def _suffix_ids(self, j: int, h: np.ndarray) -> list[np.ndarray]:
        """For contexts h at level j, the ids of their suffixes at levels 0..j (the last is h itself)."""
        ids = [h]
        for level in range(j, 0, -1):
            ids.insert(0, self._levels[level].context_parent[ids[0]])
        return ids

    def _context_ids(self, ctx: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Dense ids h_j of each row's last j tokens, and whether that context was seen, for j = 0..n-1."""
        V = len(self.vocab)
        ids = [np.zeros(len(ctx), dtype=np.int64)]
        found = [np.ones(len(ctx), dtype=bool)]
        for j in range(1, self.n):
            level = self._levels[j]
            keys = ids[-1] * V + ctx[:, self.n - 1 - j]
            pos = _find(level.context_keys, level.context_index, keys)
            hit = found[-1] & (pos >= 0)  # a row whose shorter suffix is unseen is unseen too
            ids.append(np.where(hit, pos, 0))
            found.append(hit)
        return ids, found

    def _lookup(self, j: int, h: np.ndarray, words: np.ndarray) -> np.ndarray:
        """Counts stored at level j for (context id, word) pairs; 0 where never seen."""
        level = self._levels[j]
        pos = _find(level.keys, level.key_index, h * len(self.vocab) + words)
        return np.where(pos >= 0, level.counts[pos], 0.0)

    def _kn_targets(self, ids: list[np.ndarray], found: list[np.ndarray], targets: np.ndarray, upto: int) -> np.ndarray:
        """P_{upto+1}(target | context): Kneser-Ney interpolated from the unigram level up to context length ``upto``."""
        probs = self._base[targets]
        for j in range(1, upto + 1):
            rows = np.flatnonzero(found[j])
            level, h = self._levels[j], ids[j][rows]
            c = self._lookup(j, h, targets[rows])
            probs[rows] = (np.maximum(c - self.discount, 0) + self.discount * level.distinct[h] * probs[rows]) / level.totals[h]
        return probs

    def _scatter_add(self, j: int, h: np.ndarray, out: np.ndarray, rows: np.ndarray, scale: np.ndarray,
                     shift: float) -> None:
        """out[rows[i], w] += (count(h[i], w) + shift) · scale[i] for every w stored after context h[i] at level j."""
        level = self._levels[j]
        lengths = level.starts[h + 1] - level.starts[h]
        entry = np.repeat(level.starts[h] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        # Each (row, word) pair appears once, so the fancy-index += adds every value.
        out[np.repeat(rows, lengths), level.keys[entry] % len(self.vocab)] += \
            (level.counts[entry] + shift) * np.repeat(scale, lengths)

    def _kn_step(self, j: int, h: np.ndarray, probs: np.ndarray) -> None:
        """One interpolation step at context length j, in place on ``probs`` (the lower order on entry).

        P(w | h) = γ(h) · P_lower(w | h') + (c(h w) − D) / c(h) for stored w, where γ(h) = D · N1+(h •) / c(h).
        """
        level = self._levels[j]
        total = level.totals[h]
        probs *= (self.discount * level.distinct[h] / total)[:, None]
        self._scatter_add(j, h, probs, np.arange(len(h)), 1 / total, -self.discount)


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _find(sorted_keys: np.ndarray, index: pd.Index, queries: np.ndarray) -> np.ndarray:
    """Positions of ``queries`` in ``sorted_keys``, -1 where absent."""
    if len(sorted_keys) == 0:
        return np.full(len(queries), -1, dtype=np.int64)
    if len(queries) >= HASH_FROM:
        return index.get_indexer(queries)
    pos = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == queries, pos, -1)


def _make_level(context_keys: np.ndarray, parents: np.ndarray, keys: np.ndarray, counts: np.ndarray,
                V: int) -> _Level:
    contexts = keys // V  # (ngrams,) dense context id of each n-gram, sorted
    num_contexts = max(len(parents), 1)
    starts = np.concatenate([[0], np.cumsum(np.bincount(contexts, minlength=num_contexts))])
    counts = counts.astype(np.float64)
    totals = np.bincount(contexts, weights=counts, minlength=num_contexts)
    distinct = np.bincount(contexts, minlength=num_contexts).astype(np.float64)
    return _Level(context_keys, parents, starts, keys.astype(np.int64), counts, totals, distinct)


def measure_ngrams(
    data: TokenizedCorpus,
    orders: tuple[int, ...] = (1, 2, 3, 4, 5),
    smoothing: str = "kneser-ney",
    split: str = "test",
    accuracy_tokens: int = 10_000,
    repeat: int = 50,
    threads: int | None = None,
    evaluation: TokenizedCorpus | None = None,
    technique: str | None = None,
) -> list:
    """Fit an n-gram model for each n and return one results row per model (chapter 01's baseline).

    Perplexity is over the whole ``split`` (the fast per-target path); accuracy over its first
    ``accuracy_tokens`` predictions; latency is one prediction at batch 1. Later chapters call this to
    put the n-gram rows beside their own, measured on the same machine in the same run: models are fitted
    on ``data``'s training split and scored on ``evaluation`` (e.g. ``data.head("test", 30)``, the slice a
    chapter scores its other models on) if given, else on ``data`` itself. ``technique`` labels the rows.
    """
    from lmlab.lm import evaluate, measure

    scored_on = data if evaluation is None else evaluation
    rows = []
    for n in orders:
        model = NGramModel.fit(data, n=n, smoothing=smoothing)
        contexts, targets = scored_on.examples(split, n - 1)
        scored = evaluate(model, contexts[:accuracy_tokens], targets[:accuracy_tokens])
        scores = {"accuracy": scored["accuracy"], "tokens": scored["tokens"],
                  "perplexity": model.perplexity(contexts, targets)}
        rows.append(measure(model, contexts, targets, name=f"{n}-gram", technique=technique or f"n-gram, {smoothing}",
                            setting=f"n={n}", corpus=data.corpus.name, repeat=repeat, threads=threads,
                            scores=scores))
    return rows
