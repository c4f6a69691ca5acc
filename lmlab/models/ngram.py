"""N-gram language models: probability by counting, with smoothing, vectorized with NumPy.

Introduced in notebooks/01_ngram_language_models.ipynb.

An n-gram model assumes the next token depends only on the n−1 before it:
    P(w1..wm) = Π P(wi | w1..wi-1) ≈ Π P(wi | wi-n+1..wi-1).
Counting the training text gives the estimates; c(h w) counts context h followed by w, c(h) = Σ_w c(h w).

- "none" (maximum likelihood):  P(w | h) = c(h w) / c(h). An unseen n-gram gets P = 0 (ln P = −inf);
  an unseen context gets −inf for every w: the model honestly knows nothing there.
- "add-k":  P(w | h) = (c(h w) + k) / (c(h) + k|V|); Laplace is k = 1. An unseen context gives 1/|V|.
- "kneser-ney" (interpolated, one discount D) and "modified-kneser-ney" (Chen and Goodman: three discounts per
  order, D1, D2 and D3+, the recommended default), built up from the uniform P_0, for j = 1 .. n:
      P_j(w | h) = max(c_j(h w) − D_j(c_j(h w)), 0) / c_j(h)  +  γ(h) · P_{j−1}(w | h'),
      γ(h) = Σ_w D_j(c_j(h w)) / c_j(h)  =  (D1 N1(h •) + D2 N2(h •) + D3+ N3+(h •)) / c_j(h)
  where h holds the last j−1 tokens, h' drops the oldest of them, and N_k(h •) counts the words w with
  c_j(h w) = k (N3+: k >= 3). With one discount, D_j(c) = D and γ(h) = D · N1+(h •) / c_j(h).
  The highest order (j = n) uses the raw counts c_n = c. Each lower order uses continuation counts,
  c_j(h w) = N1+(• h w) = |{v : c_{j+1}(v h w) > 0}|: in how many distinct contexts h w was seen.
  A context with c_j(h) = 0 (never seen) backs off entirely: P_j(w | h) = P_{j−1}(w | h').
  The modified discounts of each order come from its counts-of-counts n_k (the number of n-grams of that
  order whose count c_j is k), as Chen and Goodman derive them and KenLM's lmplz estimates them:
      Y = n_1 / (n_1 + 2 n_2),   D_k = k − (k + 1) · Y · n_{k+1} / n_k   (k = 1, 2, 3).

  The sentence start, as KenLM and SRILM define it: a sentence is read as one <s>, its tokens, </s>.
  (lmlab's contexts pad the start with n−1 <s>; a context with two or more <s> is never stored, so it backs
  off to the one that begins with a single <s>.) An n-gram that begins with <s> has nothing to its left, so
  it keeps its raw count at every order instead of a continuation count. <s> is never predicted: the
  uniform P_0(w) = 1/(|V| − 1) for every w but <s>, and P(<s> | h) = 0. Every other token of the vocabulary
  (even one never seen in training) gets P > 0.

Counts are stored per context length j as sorted integer keys. A context of length j gets a dense id
h_j from the pair (h_{j-1}, its oldest token): key = h_{j-1}·|V| + token, so keys fit in int64 for any n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch

from lmlab.data.corpora import SPECIALS, TokenizedCorpus, Vocab
from lmlab.measure.results import atomic_write_text
from lmlab.measure.runtime import check_int
from lmlab.models.lm import check_contexts, deep_contexts, evaluate, measure

SMOOTHINGS = ("none", "add-k", "kneser-ney", "modified-kneser-ney")
KNESER_NEY = ("kneser-ney", "modified-kneser-ney")
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # KenLM's --discount_fallback, for an order whose estimate does not exist
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

    def __post_init__(self) -> None:
        # Hash indexes over the sorted keys: O(1) lookups when scoring a whole corpus at once.
        self.context_index = pd.Index(self.context_keys)
        self.key_index = pd.Index(self.keys)
        for index in (self.context_index, self.key_index):
            index.get_indexer(index[:1])  # build the hash table now, as part of fitting

    def nbytes(self) -> int:
        arrays = sum(a.nbytes for a in (self.context_keys, self.context_parent, self.starts, self.keys,
                                        self.counts, self.totals))
        hash_tables = sum(index.memory_usage() - index.nbytes for index in (self.context_index, self.key_index))
        return arrays + hash_tables


class NGramModel:
    """An n-gram language model over token ids; answers lmlab's language-model interface.

    ``vocab`` and ``context_size`` (= n − 1) as every lmlab model; ``n``, ``smoothing``, ``k`` and
    ``discount`` as fitted. Build one with ``NGramModel.fit`` or ``NGramModel.from_examples``.
    """

    def __init__(self, vocab: Vocab, n: int, smoothing: str, k: float, discounts: Sequence[Sequence[float]],
                 levels: list[_Level], estimated: list[bool] | None = None):
        self.vocab, self.n, self.smoothing, self.k = vocab, n, smoothing, k
        self.context_size = n - 1
        self._levels = levels  # levels[j] for context length j = 0 .. n-1
        # discounts[j] = (D1, D2, D3+) of order j + 1; one discount repeated three times for "kneser-ney".
        self.discounts = [tuple(float(d) for d in ds) for ds in discounts]
        self.discount = self.discounts[0][0] if smoothing == "kneser-ney" else None
        self.discounts_estimated = estimated or [False] * len(discounts)
        self._base = np.empty(0)  # Kneser-Ney: P_1, the same for every context, computed once
        if smoothing in KNESER_NEY:
            self._discounted, self._mass = [], []  # per level: c − D(c) per n-gram, Σ_w D(c(h w)) per context
            for level, ds in zip(levels, discounts):
                d = np.asarray(ds, dtype=np.float64)[np.minimum(level.counts, 3).astype(np.int64) - 1]
                self._discounted.append(np.maximum(level.counts - d, 0.0))
                contexts = np.repeat(np.arange(len(level.totals)), np.diff(level.starts))
                self._mass.append(np.bincount(contexts, weights=d, minlength=len(level.totals)))
            base = np.full((1, len(vocab)), 1.0 / (len(vocab) - 1))  # (1, V): P_0, uniform over all but <s>
            base[0, vocab.bos_id] = 0.0
            self._kn_step(0, np.zeros(1, dtype=np.int64), base)
            self._base = base[0]

    # ----- fitting -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, data: TokenizedCorpus, n: int, smoothing: str = "modified-kneser-ney", k: float = 1.0,
            discount: float | Sequence[float] | None = None) -> NGramModel:
        """Count the training split of ``data`` (each document <s>×(n−1), tokens, </s>) and return the model.

        Raises ValueError as ``from_examples`` does.
        """
        check_int("n", n, 1)
        return cls.from_examples(*data.examples("train", n - 1), data.vocab, n, smoothing, k, discount)

    @classmethod
    def from_examples(cls, contexts: np.ndarray, targets: np.ndarray, vocab: Vocab, n: int,
                      smoothing: str = "modified-kneser-ney", k: float = 1.0,
                      discount: float | Sequence[float] | None = None) -> NGramModel:
        """Count (context, target) pairs, contexts (N, n−1) and targets (N,) token ids, into a model.

        c(h w) = number of rows with context h and target w; see the module docstring for P(w | h). Contexts
        are <s>-padded on the left, as ``TokenizedCorpus.examples`` makes them.
        ``discount``: for "kneser-ney" one D in (0, 1) (default 0.75); for "modified-kneser-ney" None (estimate
        D1, D2, D3+ of every order from its counts-of-counts) or three numbers (D1, D2, D3+) for every order,
        each D_k in (0, k). Where an order's counts-of-counts cannot give discounts in range (tiny or artificial
        data: no n-gram seen exactly k times), that order takes KenLM's fallback (0.5, 1.0, 1.5) and
        ``discounts_estimated`` says so.
        Raises ValueError for n < 1 or not an int, an unknown smoothing, k <= 0 (add-k), a discount out of
        range, no examples, contexts of the wrong shape, or ids outside the vocabulary.
        """
        check_int("n", n, 1)
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing={smoothing!r} is unknown; use one of {SMOOTHINGS}")
        if smoothing == "add-k" and not (_is_real(k) and math.isfinite(k) and k > 0):
            raise ValueError(f"k={k!r} is out of range; add-k smoothing needs a finite number k > 0")
        fixed = _check_discount(smoothing, discount)
        contexts, targets = _checked_examples(contexts, targets, vocab, n)
        kneser_ney = smoothing in KNESER_NEY
        # The longest context suffix each row may use: all of it, or (Kneser-Ney) up to its single <s>.
        real = (contexts != vocab.bos_id).sum(1)  # (N,) tokens before the target inside its document
        usable = np.minimum(real + 1, n - 1) if kneser_ney else np.full(len(targets), n - 1)
        filled = _count_levels(contexts, targets, usable, len(vocab), n, kneser_ney)
        if smoothing == "modified-kneser-ney" and fixed is None:
            estimated = [estimate_discounts(level.counts) for level in filled]
            discounts, ok = [d for d, _ in estimated], [good for _, good in estimated]
        else:
            discounts, ok = [fixed or (0.0, 0.0, 0.0)] * n, [False] * n
        return cls(vocab, n, smoothing, float(k), discounts, filled, ok)

    # ----- the language-model interface ----------------------------------------------------------
    def next_token_logprobs(self, contexts: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Return ln P(w | context) for every w in the vocabulary: (batch, n−1) ids -> (batch, |V|) float64.

        P is the fitted smoothing's formula (module docstring), one dense row per context.
        Raises ValueError for contexts of the wrong shape or ids outside the vocabulary.
        """
        ctx = check_contexts(self, contexts).cpu().numpy()
        ids, found = self._context_ids(ctx)
        V, batch = len(self.vocab), len(ctx)
        if self.smoothing in KNESER_NEY:
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
                self._scatter_add(self.n - 1, h, probs, rows, 1 / denominator[rows], top.counts)
            else:
                probs = np.zeros((batch, V))  # (batch, V); unseen contexts stay all zero
                self._scatter_add(self.n - 1, h, probs, rows, 1 / np.maximum(totals[rows], 1), top.counts)
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
        if self.smoothing in KNESER_NEY:
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

    @staticmethod
    def from_arpa(path: str | Path, vocab: Vocab | None = None) -> ArpaModel:
        """Read an ARPA file written by any toolkit (KenLM's ``lmplz``, SRILM, ``to_arpa``) and score with it.

        See ``read_arpa``; the model answers lmlab's interface, so it can go in the trade-off plot.
        """
        return read_arpa(path, vocab)

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
        log10 γ(h). An ARPA reader computes P(w | h) = P(h w) if stored, else γ(h) · P(w | h') (γ = 1 for a
        context not in the file): exactly this model, read the ordinary way, a sentence starting from one <s>
        (e.g. KenLM, which reads models of order 2 and up). <s>, which is never predicted, and any context
        that never ends an n-gram itself are written with log10 P = −99. Returns the path.
        Raises ValueError for other smoothings, whose probabilities are not backoff-shaped, and
        FileExistsError if ``path`` exists and ``overwrite`` is false.
        """
        if self.smoothing not in KNESER_NEY:
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
            with np.errstate(divide="ignore"):
                logs = np.maximum(np.log10(probs), -99.0)  # P(<s>) = 0
            entries.append({tuple(g): [float(lp), 0.0] for g, lp in zip(grams.tolist(), logs.tolist())})
        for j in range(1, self.n):  # backoff weights γ(h), stored on the j-gram h itself
            level = self._levels[j]
            gammas = np.log10(self._mass[j] / level.totals)
            for context, gamma in zip(tokens[j].tolist(), gammas.tolist()):
                entries[j - 1].setdefault(tuple(context), [-99.0, 0.0])[1] = gamma
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

    def _lookup(self, j: int, h: np.ndarray, words: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """``values`` (default: the counts) stored at level j for (context id, word) pairs; 0 where never seen."""
        level = self._levels[j]
        pos = _find(level.keys, level.key_index, h * len(self.vocab) + words)
        return np.where(pos >= 0, (level.counts if values is None else values)[pos], 0.0)

    def _kn_targets(self, ids: list[np.ndarray], found: list[np.ndarray], targets: np.ndarray, upto: int) -> np.ndarray:
        """P_{upto+1}(target | context): Kneser-Ney interpolated from the unigram level up to context ``upto``."""
        probs = self._base[targets]
        for j in range(1, upto + 1):
            rows = np.flatnonzero(found[j])
            level, h = self._levels[j], ids[j][rows]
            kept = self._lookup(j, h, targets[rows], self._discounted[j])  # c(h w) − D(c(h w)), 0 if unseen
            probs[rows] = (kept + self._mass[j][h] * probs[rows]) / level.totals[h]
        return probs

    def _scatter_add(self, j: int, h: np.ndarray, out: np.ndarray, rows: np.ndarray, scale: np.ndarray,
                     values: np.ndarray) -> None:
        """out[rows[i], w] += values[h[i] w] · scale[i] for every w stored after context h[i] at level j."""
        level = self._levels[j]
        lengths = level.starts[h + 1] - level.starts[h]
        entry = np.repeat(level.starts[h] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        # Each (row, word) pair appears once, so the fancy-index += adds every value.
        out[np.repeat(rows, lengths), level.keys[entry] % len(self.vocab)] += values[entry] * np.repeat(scale, lengths)

    def _kn_step(self, j: int, h: np.ndarray, probs: np.ndarray) -> None:
        """One interpolation step at context length j, in place on ``probs`` (the lower order on entry).

        P(w | h) = γ(h) · P_lower(w | h') + (c(h w) − D(c(h w))) / c(h) for stored w, γ(h) = Σ_w D(c(h w)) / c(h).
        """
        total = self._levels[j].totals[h]
        probs *= (self._mass[j][h] / total)[:, None]
        self._scatter_add(j, h, probs, np.arange(len(h)), 1 / total, self._discounted[j])


class ArpaModel:
    """A backoff n-gram model read from an ARPA file (e.g. one KenLM's ``lmplz`` wrote), on lmlab's interface.

    Scores as every ARPA reader does, a sentence starting from one <s>: P(w | h) = P(h w) if the file stores
    h w, else β(h) · P(w | h') with β(h) the backoff stored on h (1 if none). A token the file does not know is
    scored as <unk>. Build one with ``NGramModel.from_arpa``.
    """

    smoothing = "arpa"

    def __init__(self, vocab: Vocab, n: int, probs: list[dict], backoffs: list[dict], source: str):
        self.vocab, self.n, self.context_size, self.source = vocab, n, n - 1, source
        self._probs, self._backoffs = probs, backoffs  # per order m - 1: {ids tuple: log10}
        unk = probs[0].get((vocab.unk_id,), -math.inf)
        self._unigram = np.array([probs[0].get((i,), unk) for i in range(len(vocab))])  # (V,) log10
        self._unigram[self._unigram <= -99] = -math.inf  # ARPA's −99: probability 0
        self._unigram[vocab.bos_id] = -math.inf  # <s> is never predicted (lmplz writes log10 P(<s>) = 0, a placeholder)
        self._known = np.array([(i,) in probs[0] for i in range(len(vocab))])
        self._followers: list[dict] = [{} for _ in range(n)]  # order m - 1: {context: (word ids, log10)}
        for m in range(1, n):
            grouped: dict[tuple, list] = {}
            for gram, logp in probs[m].items():
                grouped.setdefault(gram[:-1], []).append((gram[-1], logp))
            self._followers[m] = {h: (np.array([w for w, _ in pairs]), np.array([lp for _, lp in pairs]))
                                  for h, pairs in grouped.items()}

    def _history(self, row: Sequence[int]) -> tuple:
        """The part of an <s>-padded context an ARPA reader sees: from its last <s> on, unknown tokens as <unk>."""
        bos = self.vocab.bos_id
        starts = [i for i, t in enumerate(row) if t == bos]
        h = row[starts[-1]:] if starts else row
        return tuple(t if self._known[t] else self.vocab.unk_id for t in h)

    def _log10(self, h: tuple, w: int) -> float:
        w = w if self._known[w] else self.vocab.unk_id
        backoff = 0.0
        for start in range(len(h) + 1):  # the longest stored suffix h[start:] w, collecting β of the skipped ones
            context = h[start:]
            m = len(context)
            if m == 0:
                return backoff + self._unigram[w]
            logp = self._probs[m].get(context + (w,)) if m < self.n else None
            if logp is not None:
                return backoff + logp
            backoff += self._backoffs[m - 1].get(context, 0.0)
        return -math.inf

    def next_token_logprobs(self, contexts: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Return ln P(w | context) for every w of the vocabulary: (batch, n−1) ids -> (batch, |V|) float64."""
        ctx = check_contexts(self, contexts).cpu().numpy()
        out = np.empty((len(ctx), len(self.vocab)))
        for i, row in enumerate(ctx.tolist()):
            h = self._history(row)
            logp = self._unigram.copy()  # (V,) log10 P(w), built up order by order
            for m in range(1, len(h) + 1):
                context = h[len(h) - m:]
                if context not in self._followers[m] and context not in self._backoffs[m - 1]:
                    continue  # an unknown context: no backoff, no stored words (β = 1)
                logp = logp + self._backoffs[m - 1].get(context, 0.0)
                words, stored = self._followers[m].get(context, ((), ()))
                logp[np.asarray(words, dtype=np.int64)] = stored
            unk = logp[self.vocab.unk_id]
            out[i] = np.where(self._known, logp, unk) * math.log(10)
        return torch.from_numpy(out)

    def logprob_of(self, contexts: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor) -> np.ndarray:
        """Return ln P(target_i | context_i) for each pair, shape (N,)."""
        ctx = check_contexts(self, contexts).cpu().numpy()
        targets = np.asarray(targets.cpu().numpy() if isinstance(targets, torch.Tensor) else targets)
        if targets.shape != (len(ctx),):
            raise ValueError(f"targets has shape {targets.shape}; it must be ({len(ctx)},), one per context")
        logs = [self._log10(self._history(row), int(w)) for row, w in zip(ctx.tolist(), targets.tolist())]
        return np.asarray(logs, dtype=np.float64) * math.log(10)

    def perplexity(self, contexts: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor) -> float:
        """Return exp(−(1/N) Σ ln P(target_i | context_i)), infinite if any P is 0."""
        if len(targets) == 0:
            raise ValueError("targets is empty: perplexity needs at least one (context, target) pair")
        mean_nll = -float(np.mean(self.logprob_of(contexts, targets)))
        return math.exp(mean_nll) if mean_nll < 700 else math.inf

    def num_ngrams(self) -> int:
        return sum(len(p) for p in self._probs)

    def num_parameters(self) -> int:
        return self.num_ngrams()

    def __repr__(self) -> str:
        return f"ArpaModel(n={self.n}, vocab={len(self.vocab)}, ngrams={self.num_ngrams():,}, source={self.source!r})"


def read_arpa(path: str | Path, vocab: Vocab | None = None) -> ArpaModel:
    """Read an ARPA file (plain or .gz) into an ``ArpaModel`` over ``vocab`` (default: the file's own words).

    With a given vocabulary, the file's words outside it are dropped and the vocabulary's words outside the
    file are scored as <unk>. Raises FileNotFoundError if the file is missing, ValueError if it is not ARPA.
    """
    import gzip


    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r}: no such ARPA file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    if "\\data\\" not in lines:
        raise ValueError(f"path={str(path)!r} is not an ARPA file (no \\data\\ section)")
    sizes = [int(line.split("=")[1]) for line in lines if line.startswith("ngram ")]
    raw: list[dict[tuple, tuple[float, float]]] = [{} for _ in sizes]
    order = 0
    for line in lines:
        if line.startswith("\\") and line.endswith("-grams:"):
            order = int(line[1:].split("-")[0])
        elif line.startswith("\\"):
            order = 0
        elif order and line:
            fields = line.split()
            words = tuple(fields[1:1 + order])
            raw[order - 1][words] = (float(fields[0]), float(fields[1 + order]) if len(fields) > 1 + order else 0.0)
    if vocab is None:
        vocab = Vocab(SPECIALS + tuple(sorted(w for (w,) in raw[0] if w not in SPECIALS)))
    stoi = vocab.stoi
    probs: list[dict] = [{} for _ in raw]
    backoffs: list[dict] = [{} for _ in raw]
    for m, table in enumerate(raw):
        for words, (logp, backoff) in table.items():
            if all(w in stoi for w in words):
                ids = tuple(stoi[w] for w in words)
                probs[m][ids] = logp
                if backoff:
                    backoffs[m][ids] = backoff
    return ArpaModel(vocab, len(sizes), probs, backoffs, str(path))


def estimate_discounts(counts: np.ndarray) -> tuple[tuple[float, float, float], bool]:
    """Return ((D1, D2, D3+), True) estimated from one order's n-gram counts, as Chen and Goodman and KenLM do.

    With n_k the number of n-grams counted exactly k times: Y = n_1 / (n_1 + 2 n_2) and
    D_k = k − (k + 1) · Y · n_{k+1} / n_k. If some n_k (k = 1..4) is 0 or a D_k falls outside (0, k), the
    estimate does not exist: returns KenLM's fallback ((0.5, 1.0, 1.5), False).
    """
    counts = np.asarray(counts)
    n = [int(np.count_nonzero(counts == k)) for k in range(5)]  # n[k] for k = 0..4 (n[0] unused)
    if min(n[1:]) == 0:
        return FALLBACK_DISCOUNTS, False
    y = n[1] / (n[1] + 2 * n[2])
    d1, d2, d3 = (k - (k + 1) * y * n[k + 1] / n[k] for k in (1, 2, 3))
    d = (d1, d2, d3)
    if not all(0 < dk < k for k, dk in zip((1, 2, 3), d)):
        return FALLBACK_DISCOUNTS, False
    return d, True


def _check_discount(smoothing: str, discount) -> tuple[float, float, float] | None:
    """Return the fixed discounts (D1, D2, D3+) a smoothing was given (None: estimate them), or raise ValueError."""
    if smoothing == "kneser-ney":
        discount = 0.75 if discount is None else discount
        if not (_is_real(discount) and 0 < discount < 1):
            raise ValueError(f"discount={discount!r} is out of range; Kneser-Ney needs a number 0 < D < 1")
        return (float(discount),) * 3
    if smoothing == "modified-kneser-ney" and discount is not None:
        values = tuple(discount) if isinstance(discount, (tuple, list)) else ()
        if len(values) != 3 or not all(_is_real(d) and 0 < d < k for k, d in zip((1, 2, 3), values)):
            raise ValueError(f"discount={discount!r} is out of range; modified Kneser-Ney takes None (estimate "
                             "them) or three numbers (D1, D2, D3+) with 0 < D1 < 1, 0 < D2 < 2, 0 < D3+ < 3")
        d1, d2, d3 = (float(d) for d in values)
        return d1, d2, d3
    return None


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


def _checked_examples(contexts: np.ndarray, targets: np.ndarray, vocab: Vocab,
                      n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return contexts (N, n−1) and targets (N,) as int64 arrays.

    Raises ValueError for no examples, contexts of the wrong shape, or ids outside the vocabulary.
    """
    contexts, targets = np.asarray(contexts, dtype=np.int64), np.asarray(targets, dtype=np.int64)
    if len(targets) == 0:
        raise ValueError("targets is empty: the corpus has 0 training (context, target) pairs to count")
    if targets.ndim != 1 or contexts.shape != (len(targets), n - 1):
        raise ValueError(f"contexts has shape {contexts.shape} and targets {targets.shape}; "
                         f"n={n} needs ({len(targets)}, {n - 1}) and ({len(targets)},)")
    V = len(vocab)
    for name, given in (("contexts", contexts), ("targets", targets)):
        if given.size and (given.min() < 0 or given.max() >= V):
            raise ValueError(f"{name} holds token id {given.min() if given.min() < 0 else given.max()}, "
                             f"outside [0, {V - 1}] for this vocabulary")
    return contexts, targets


def _count_levels(contexts: np.ndarray, targets: np.ndarray, usable: np.ndarray, V: int, n: int,
                  kneser_ney: bool) -> list[_Level]:
    """Count every order j = 0..n−1 into a ``_Level``: c(h w) at the top, and below it the raw counts or (Kneser-Ney)
    the continuation counts N1+(• h w), plus raw counts of rows whose usable context begins with <s>.

    Row i uses at most its last ``usable[i]`` context tokens.
    """
    # Dense context ids for each context length j, from the newest token backwards (-1: not usable).
    ids = [np.zeros(len(targets), dtype=np.int64)]  # h_0 = 0 for every example
    context_keys, parents = [np.zeros(0, np.int64)], [np.zeros(1, np.int64)]
    for j in range(1, n):
        rows = usable >= j
        keys = ids[-1][rows] * V + contexts[rows, n - 1 - j]
        unique, inverse = np.unique(keys, return_inverse=True)
        context_keys.append(unique)
        parents.append(unique // V)
        ids.append(np.full(len(targets), -1, dtype=np.int64))
        ids[-1][rows] = inverse.reshape(-1)
    # Counts of the highest order, then (for KN) continuation counts for the lower ones.
    levels: list[_Level | None] = [None] * n
    top = usable == n - 1
    top_keys, top_counts = np.unique(ids[n - 1][top] * V + targets[top], return_counts=True)
    levels[n - 1] = _make_level(context_keys[n - 1], parents[n - 1], top_keys, top_counts, V)
    for j in range(n - 2, -1, -1):
        if kneser_ney:
            above = levels[j + 1]
            assert above is not None  # set by the previous iteration (or before the loop)
            above_context = np.repeat(np.arange(len(above.totals)), np.diff(above.starts))
            keys = above.context_parent[above_context] * V + above.keys % V  # N1+(• h' w): one per distinct h w
            start = usable == j  # rows whose usable context begins with <s> (j >= 1): raw counts
            keys = np.concatenate([keys, ids[j][start] * V + targets[start]]) if j else keys
            level_keys, level_counts = np.unique(keys, return_counts=True)
        else:
            level_keys, level_counts = np.unique(ids[j] * V + targets, return_counts=True)
        levels[j] = _make_level(context_keys[j], parents[j], level_keys, level_counts, V)
    return cast(list[_Level], levels)  # every level was set above


def _make_level(context_keys: np.ndarray, parents: np.ndarray, keys: np.ndarray, counts: np.ndarray,
                V: int) -> _Level:
    contexts = keys // V  # (ngrams,) dense context id of each n-gram, sorted
    num_contexts = max(len(parents), 1)
    starts = np.concatenate([[0], np.cumsum(np.bincount(contexts, minlength=num_contexts))])
    counts = counts.astype(np.float64)
    totals = np.bincount(contexts, weights=counts, minlength=num_contexts)
    return _Level(context_keys, parents, starts, keys.astype(np.int64), counts, totals)


def measure_ngrams(
    data: TokenizedCorpus,
    orders: tuple[int, ...] = (1, 2, 3, 4, 5),
    smoothing: str = "modified-kneser-ney",
    split: str = "test",
    accuracy_tokens: int = 10_000,
    repeat: int = 50,
    threads: int | None = None,
    evaluation: TokenizedCorpus | None = None,
    technique: str | None = None,
    corpus: str | None = None,
) -> list:
    """Fit an n-gram model for each n and return one results row per model (chapter 01's baseline).

    Perplexity is over the whole ``split`` (the fast per-target path); accuracy over its first
    ``accuracy_tokens`` predictions; latency is one prediction at batch 1 on the first context whose n − 1 words
    are all real (``lmlab.models.lm.deep_contexts``, as chapter 02 times its models): the lookup an order really
    does, not a context of <s> padding that no order stores. Later chapters call this to
    put the n-gram rows beside their own, measured on the same machine in the same run: models are fitted
    on ``data``'s training split and scored on ``evaluation`` (e.g. ``data.head("test", 30)``, the slice a
    chapter scores its other models on) if given, else on ``data`` itself. ``technique`` labels the rows;
    ``corpus`` names what they were scored on (default: ``data``'s corpus name; pass the slice's name, e.g.
    ``lmlab.data.shipped.notebook_slice``'s, when scoring on ``evaluation``).
    """
    scored_on = data if evaluation is None else evaluation
    rows = []
    for n in orders:
        model = NGramModel.fit(data, n=n, smoothing=smoothing)
        contexts, targets = scored_on.examples(split, n - 1)
        scored = evaluate(model, contexts[:accuracy_tokens], targets[:accuracy_tokens])
        scores = {"accuracy": scored["accuracy"], "tokens": scored["tokens"],
                  "perplexity": model.perplexity(contexts, targets)}
        deep = deep_contexts(contexts, scored_on.vocab.bos_id, words=n - 1)  # all n - 1 words real, no <s> padding
        if not len(deep):
            raise ValueError(f"orders={orders!r}: no {split} context has {n - 1} words before its target; use lower n")
        rows.append(measure(model, contexts[deep], targets[deep], name=f"{n}-gram",
                            technique=technique or f"n-gram, {smoothing}", setting=f"n={n}",
                            corpus=corpus or data.corpus.name, repeat=repeat, threads=threads, scores=scores))
    return rows
