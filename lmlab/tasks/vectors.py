"""Word vectors: skip-gram word2vec with negative sampling, by hand in torch; gensim's as the reference; GloVe's loss.

Introduced in notebooks/09_recurrent_vectors_classifiers.ipynb.

Skip-gram (Mikolov et al., 2013) gives every word w two vectors, v_w when it is the centre word and u_c when it is a
context word, and trains them so that a true (centre, context) pair scores high and k random "negative" words
score low. The loss of one pair (w, c) with negatives c_1..c_k drawn from the unigram distribution to the power 0.75:

    ℓ(w, c) = −ln σ(u_c · v_w) − Σ_k ln σ(−u_{c_k} · v_w),   σ(x) = 1 / (1 + e^−x).

``WordVectors`` holds the centre vectors v and answers nearest neighbours (cosine similarity) and analogies
(3CosAdd); ``WordVectors.from_gpt`` wraps a GPT's input embedding the same way, so the two can be compared with
``neighbour_overlap``. GloVe (Pennington et al., 2014) fits the same kind of vectors to log co-occurrence counts
instead: ``cooccurrence`` counts X, ``glove_loss`` computes its objective and ``train_glove`` minimises it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from lmlab.data.corpora import SPECIALS, TokenizedCorpus, Vocab
from lmlab.measure.plots import finish_axes, place_labels
from lmlab.measure.runtime import check_int
from lmlab.measure.timing import Stopwatch

if TYPE_CHECKING:  # scipy is imported where it is used; the annotation only names its type
    import scipy.sparse


def _documents(data_or_ids: TokenizedCorpus | Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Return the train split's documents as id arrays (a TokenizedCorpus), or the given id arrays."""
    docs = data_or_ids.ids["train"] if isinstance(data_or_ids, TokenizedCorpus) else tuple(data_or_ids)
    docs = tuple(np.asarray(doc, dtype=np.int64) for doc in docs)
    if not docs or not sum(len(doc) for doc in docs):
        raise ValueError("data_or_ids holds no tokens: give a TokenizedCorpus or a non-empty list of id arrays")
    return docs


def token_counts(data_or_ids: TokenizedCorpus | Sequence[np.ndarray], vocab_size: int | None = None) -> np.ndarray:
    """Count each id in the train documents (int64, length ``vocab_size`` or the largest id + 1); <unk> counts 0."""
    docs = _documents(data_or_ids)
    if vocab_size is None:
        vocab_size = len(data_or_ids.vocab) if isinstance(data_or_ids, TokenizedCorpus) else \
            int(max(doc.max() for doc in docs if len(doc))) + 1
    counts = np.bincount(np.concatenate(docs), minlength=vocab_size).astype(np.int64)
    counts[0] = 0  # <unk> stands for many rare words: it gets no vector of its own
    return counts


def keep_probability(counts: np.ndarray, subsample: float) -> np.ndarray:
    """Mikolov's frequent-word subsampling, as word2vec's C code and gensim apply it: keep an occurrence of w with

        P_keep(w) = min(1, (√(f(w)/t) + 1) · t / f(w)),   f(w) = count(w) / total,  t = ``subsample``.

    ``subsample=0`` keeps everything. Raises ValueError for a negative ``subsample``.
    """
    if not 0 <= subsample < 1:
        raise ValueError(f"subsample={subsample!r} is out of range; use a number in [0, 1) (0 turns it off)")
    counts = np.asarray(counts, dtype=np.float64)
    if subsample == 0:
        return np.ones_like(counts)
    f = counts / max(counts.sum(), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = (np.sqrt(f / subsample) + 1) * subsample / f
    return np.where(f > 0, np.minimum(keep, 1.0), 1.0)


def skipgram_pairs(
    data_or_ids: TokenizedCorpus | Sequence[np.ndarray], window: int = 5, subsample: float = 1e-3, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return skip-gram (centre, context) id pairs from the train documents, as two int64 arrays of equal length.

    <unk> tokens are dropped first (as word2vec drops words under its min_count); then each occurrence is kept
    with probability ``keep_probability`` (a seeded draw); then every kept centre draws its own window
    b ~ Uniform{1..window} (the "dynamic window": near words are paired more often than far ones) and is paired
    with each kept word at distance ≤ b in the same document. Raises ValueError for window < 1, a subsample
    outside [0, 1), or no tokens.
    """
    check_int("window", window, 1)
    docs = _documents(data_or_ids)
    counts = token_counts(docs, len(data_or_ids.vocab) if isinstance(data_or_ids, TokenizedCorpus) else None)
    keep = keep_probability(counts, subsample)
    rng = np.random.default_rng(seed)
    ids = np.concatenate(docs)  # (L,)
    doc_of = np.repeat(np.arange(len(docs)), [len(doc) for doc in docs])  # (L,)
    kept = (ids != 0) & (rng.random(len(ids)) < keep[ids])
    ids, doc_of = ids[kept], doc_of[kept]
    reach = rng.integers(1, window + 1, size=len(ids))  # each centre's dynamic window b
    centres, contexts = [], []
    for d in range(1, window + 1):
        same = doc_of[:-d] == doc_of[d:]  # positions i with i + d in the same document
        left = np.flatnonzero(same & (reach[:-d] >= d))  # centre i, context i + d
        right = np.flatnonzero(same & (reach[d:] >= d))  # centre i + d, context i
        centres += [ids[left], ids[right + d]]
        contexts += [ids[left + d], ids[right]]
    return np.concatenate(centres), np.concatenate(contexts)


class Overlap(NamedTuple):
    """Mean neighbour overlap, its per-word values, and what two unrelated random rankings would share."""

    mean: float
    per_word: dict[str, float]
    chance: float

    @property
    def se(self) -> float:
        """The standard error of the mean over the words, s / √n (0 for a single word)."""
        values = np.array(list(self.per_word.values()))
        return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


@dataclass
class WordVectors:
    """One vector per vocabulary word, (V, dim) float32, with what made them.

    ``loss_curve`` holds (pairs seen, mean loss over the chunk of batches before it); ``settings`` the training
    settings; ``train_seconds`` the wall-clock training time (pair building included).
    """

    vectors: np.ndarray
    vocab: Vocab
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    train_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.vocab):
            raise ValueError(f"vectors has shape {self.vectors.shape}; it needs one row per vocabulary word "
                             f"({len(self.vocab)} rows)")
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self._unit = self.vectors / np.maximum(norms, 1e-12)  # rows of length 1: a dot product is a cosine
        self._candidate = np.array([tok not in SPECIALS for tok in self.vocab.itos])  # specials are never answers

    @property
    def words(self) -> int:
        """How many words can be an answer (the vocabulary without <unk>, <s>, </s>)."""
        return int(self._candidate.sum())

    def _id(self, word: str, name: str) -> int:
        if word not in self.vocab or word in SPECIALS:
            raise ValueError(f"{name}={word!r} is not a word of the vocabulary ({self.words} words)")
        return self.vocab.stoi[word]

    def _top(self, scores: np.ndarray, exclude: Sequence[int], k: int, name: str = "k") -> list[tuple[str, float]]:
        check_int(name, k, 1, self.words - len(exclude))
        scores = np.where(self._candidate, scores, -np.inf)
        scores[list(exclude)] = -np.inf
        best = np.lexsort((np.arange(len(scores)), -scores))[:k]  # highest first; ties by id, so the order is stable
        return [(self.vocab.itos[i], float(scores[i])) for i in best]

    def neighbours(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        """Return the ``k`` words nearest to ``word`` by cosine similarity cos(a, b) = a·b / (‖a‖ ‖b‖), the word
        itself excluded, as (word, cosine) pairs, nearest first.

        Raises ValueError for an unknown word or k outside [1, words − 1].
        """
        i = self._id(word, "word")
        return self._top(self._unit @ self._unit[i], [i], k)

    def analogy(self, a: str, b: str, c: str, k: int = 5) -> list[tuple[str, float]]:
        """Answer "a is to b as c is to ?" by 3CosAdd: the words d nearest (cosine) to b − a + c over unit
        vectors, i.e. maximising cos(d, b) − cos(d, a) + cos(d, c), with a, b, c themselves excluded. Returns
        (word, cos(d, b − a + c)) pairs, best first.

        Raises ValueError for an unknown word or k outside [1, words − 3].
        """
        ia, ib, ic = self._id(a, "a"), self._id(b, "b"), self._id(c, "c")
        target = self._unit[ib] - self._unit[ia] + self._unit[ic]  # (dim,)
        target = target / max(float(np.linalg.norm(target)), 1e-12)  # so each score is cos(d, b − a + c)
        return self._top(self._unit @ target, sorted({ia, ib, ic}), k)

    def neighbour_ids(self, words: Sequence[str], k: int) -> dict[str, set[str]]:
        """Return each word's ``k`` nearest neighbours as a set (for overlaps; many words at once)."""
        ids = [self._id(w, "words") for w in words]
        check_int("k", k, 1, self.words - 1)
        scores = self._unit[ids] @ self._unit.T  # (words, V)
        scores[:, ~self._candidate] = -np.inf
        scores[np.arange(len(ids)), ids] = -np.inf
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        return {w: {self.vocab.itos[j] for j in row} for w, row in zip(words, best)}

    @classmethod
    def from_gpt(cls, model) -> WordVectors:
        """Wrap a GPT's input embedding (``model.gpt.transformer.wte.weight``, (V, n_embd)) as WordVectors over its
        vocabulary. Raises ValueError if the model has no such embedding."""
        try:
            weight = model.gpt.transformer.wte.weight
        except AttributeError:
            raise ValueError(f"model={type(model).__name__} has no GPT input embedding "
                             "(model.gpt.transformer.wte); load a GPT checkpoint") from None
        card = getattr(model, "card", {}) or {}
        return cls(weight.detach().float().cpu().numpy(), model.vocab,
                   settings={"source": "GPT input embedding", "dim": int(weight.shape[1]),
                             "checkpoint": card.get("preset", "")})


def neighbour_overlap(a: WordVectors, b: WordVectors, words: Sequence[str], k: int = 10) -> Overlap:
    """Return how many of each word's ``k`` nearest neighbours two sets of vectors share:

        overlap@k(w) = |N_a(w) ∩ N_b(w)| / k,   mean over ``words``,

    with the chance level k / (V − 1) (the expected overlap of two random k-sets out of the V − 1 other words).
    Raises ValueError if the two vocabularies differ, ``words`` is empty, or a word is unknown.
    """
    if a.vocab.itos != b.vocab.itos:
        raise ValueError(f"the two WordVectors have different vocabularies ({len(a.vocab)} and {len(b.vocab)} "
                         "tokens); compare vectors built on the same vocabulary")
    if not words:
        raise ValueError("words is empty: give at least one word to compare neighbours of")
    na, nb = a.neighbour_ids(words, k), b.neighbour_ids(words, k)
    per_word = {w: len(na[w] & nb[w]) / k for w in words}
    return Overlap(float(np.mean(list(per_word.values()))), per_word, k / (a.words - 1))


def noise_table(counts: np.ndarray, size: int = 1_000_000) -> torch.Tensor:
    """Return word2vec's unigram table: ids repeated in proportion to count^0.75, so a uniform draw from it is a draw
    from the noise distribution P_n(w) = count(w)^0.75 / Σ_v count(v)^0.75. (``size`` entries, int64.)"""
    weights = np.asarray(counts, dtype=np.float64) ** 0.75
    if weights.sum() <= 0:
        raise ValueError("counts are all zero: there is no word to draw negatives from")
    edges = np.cumsum(weights) / weights.sum()  # (V,)
    return torch.from_numpy(np.searchsorted(edges, (np.arange(size) + 0.5) / size).astype(np.int64))


def _check_settings(dim: int, window: int, negatives: int, epochs: int, lr: float, batch_size: int,
                    subsample: float) -> None:
    check_int("dim", dim, 1)
    check_int("window", window, 1)
    check_int("negatives", negatives, 1)
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} is out of range; use a positive number")
    keep_probability(np.ones(1), subsample)  # validates subsample


def train_word2vec(
    data: TokenizedCorpus, dim: int = 50, window: int = 5, negatives: int = 5, epochs: int = 2, lr: float = 0.025,
    batch_size: int = 4096, subsample: float = 1e-3, seed: int = 0, chunks: int = 20,
) -> WordVectors:
    """Train skip-gram with negative sampling on ``data``'s train split; return the centre vectors v as WordVectors.

    Each epoch draws fresh pairs (``skipgram_pairs``, seed + epoch) in a seeded random order. Every batch of pairs
    (w, c) draws ``negatives`` words per pair from P_n(w) ∝ count(w)^0.75 (``noise_table``) and takes one plain
    SGD step on the SUMMED loss Σ ℓ(w, c) (see the module docstring), as word2vec does pair by pair; the learning
    rate falls linearly from ``lr`` to lr · 1e-4 over training (word2vec's and gensim's schedule). v starts uniform in
    ±0.5/dim, u at zero (as in word2vec). The loss curve records the mean ℓ per pair over ``chunks`` equal
    chunks of batches. Deterministic for a seed on a given thread count.

    Raises ValueError for a non-positive size, count or learning rate, or a subsample outside [0, 1).
    """
    _check_settings(dim, window, negatives, epochs, lr, batch_size, subsample)
    check_int("chunks", chunks, 1)
    clock = Stopwatch().start()
    generator = torch.Generator().manual_seed(seed)
    counts = token_counts(data)
    table = noise_table(counts)  # negatives are uniform draws from this table: P_n(w) ∝ count(w)^0.75
    vocab_size = len(data.vocab)
    v = (torch.rand(vocab_size, dim, generator=generator) - 0.5) / dim  # (V, dim) centre vectors
    u = torch.zeros(vocab_size, dim)  # (V, dim) context vectors
    pairs = [skipgram_pairs(data, window, subsample, seed + epoch) for epoch in range(epochs)]
    total_batches = sum(math.ceil(len(c) / batch_size) for c, _ in pairs)
    chunk_size = max(1, math.ceil(total_batches / chunks))
    sign = torch.tensor([1.0] + [-1.0] * negatives)  # σ(+u·v) for the true context, σ(−u·v) for a negative
    curve, chunk_loss, chunk_pairs, seen, step = [], 0.0, 0, 0, 0
    for centres_np, contexts_np in pairs:
        order = torch.randperm(len(centres_np), generator=generator)
        centres, contexts = torch.from_numpy(centres_np)[order], torch.from_numpy(contexts_np)[order]
        for first in range(0, len(centres), batch_size):
            w = centres[first:first + batch_size]  # (B,)
            c = torch.cat([contexts[first:first + batch_size, None],  # (B, 1 + k): the context, then negatives
                           table[torch.randint(len(table), (len(w), negatives), generator=generator)]], 1)
            vw = v.index_select(0, w)  # (B, dim)
            uc = u.index_select(0, c.flatten()).view(*c.shape, dim)  # (B, 1 + k, dim)
            score = torch.bmm(uc, vw[:, :, None])[..., 0]  # (B, 1 + k): u_c · v_w for each column
            loss = -torch.nn.functional.logsigmoid(sign * score)  # (B, 1 + k)
            # dℓ/dscore = −sign · σ(−sign · score); the chain rule through the dot products gives the two gradients.
            g = -sign * torch.sigmoid(-sign * score)  # (B, 1 + k)
            alpha = lr * max(1e-4, 1 - step / total_batches)
            step_g = -alpha * g  # (B, 1 + k): the SGD step −α·dℓ/dscore (index_add_ with alpha= is 3× slower)
            v.index_add_(0, w, (step_g[..., None] * uc).sum(1))  # v_w −= α Σ_j g_j u_j
            u.index_add_(0, c.flatten(), (step_g[..., None] * vw[:, None, :]).flatten(0, 1))  # u_j −= α g_j v_w
            chunk_loss += float(loss.sum(1).sum())
            chunk_pairs += len(w)
            seen += len(w)
            step += 1
            if step % chunk_size == 0 or step == total_batches:
                curve.append((seen, chunk_loss / chunk_pairs))
                chunk_loss, chunk_pairs = 0.0, 0
    settings = {"method": "lmlab skip-gram (SGNS)", "dim": dim, "window": window, "negatives": negatives,
                "epochs": epochs, "lr": lr, "batch_size": batch_size, "subsample": subsample, "seed": seed,
                "pairs": seen, "threads": torch.get_num_threads()}
    return WordVectors(v.numpy(), data.vocab, curve, settings, clock.elapsed_ms() / 1e3)


def train_sentences(data: TokenizedCorpus) -> list[list[str]]:
    """Return the train documents as lists of in-vocabulary words (<unk> dropped): the text gensim is given."""
    itos = data.vocab.itos
    return [[itos[i] for i in doc if i != 0] for doc in data.ids["train"]]


def _stable_hash(text: str) -> int:
    """A hash that is the same in every process (Python's hash() of a str is randomised per process)."""
    return zlib.crc32(text.encode("utf-8"))


def gensim_word2vec(
    data: TokenizedCorpus, dim: int = 50, window: int = 5, negatives: int = 5, epochs: int = 2, lr: float = 0.025,
    subsample: float = 1e-3, seed: int = 0,
) -> WordVectors:
    """Train gensim 4's Word2Vec (skip-gram, negative sampling, one worker) with the same settings on the same text.

    gensim seeds each word's first vector from hash(word + seed); a stable hash (CRC-32) makes that repeatable
    across processes, and one worker makes the order of updates fixed. Words gensim never saw keep zero rows.
    Raises ImportError naming ``pip install gensim`` if gensim is missing, and ValueError for bad settings.
    """
    _check_settings(dim, window, negatives, epochs, lr, 1, subsample)
    try:
        from gensim.models import Word2Vec
    except ImportError:
        raise ImportError("gensim is not installed; run `pip install gensim` to compare with its word2vec") from None
    with Stopwatch() as clock:
        model = Word2Vec(train_sentences(data), vector_size=dim, window=window, negative=negatives, sg=1, hs=0,
                         min_count=1, sample=subsample, epochs=epochs, alpha=lr, min_alpha=lr * 1e-4, workers=1,
                         seed=seed, hashfxn=_stable_hash)
        vectors = np.zeros((len(data.vocab), dim), dtype=np.float32)
        for word, row in model.wv.key_to_index.items():
            vectors[data.vocab.stoi[word]] = model.wv.vectors[row]
    settings = {"method": f"gensim {__import__('gensim').__version__} Word2Vec (sg=1)", "dim": dim, "window": window,
                "negatives": negatives, "epochs": epochs, "lr": lr, "subsample": subsample, "seed": seed}
    return WordVectors(vectors, data.vocab, [], settings, clock.ms / 1e3)


def neighbour_table(vector_sets: dict[str, WordVectors], words: Sequence[str], k: int = 5) -> pd.DataFrame:
    """Return a table of each word's ``k`` nearest neighbours (nearest first) under each set of vectors, side by side:
    one row per word, one column per entry of ``vector_sets``. Raises ValueError for an unknown word or k."""
    if not vector_sets:
        raise ValueError("vector_sets is empty: give at least one name -> WordVectors")
    return pd.DataFrame({name: [", ".join(w for w, _ in wv.neighbours(word, k)) for word in words]
                         for name, wv in vector_sets.items()}, index=pd.Index(list(words), name="word"))


def analogy_table(vector_sets: dict[str, WordVectors], questions: Sequence[tuple[str, str, str, str]],
                  k: int = 5) -> pd.DataFrame:
    """Ask each "a : b :: c : ?" question (with the answer a person expects, d) of each set of vectors.

    One row per question: the question, the expected word, and per set the top-``k`` 3CosAdd answers and whether the
    expected word is among them ("yes"/"no"). Raises ValueError for an unknown word or k.
    """
    if not vector_sets:
        raise ValueError("vector_sets is empty: give at least one name -> WordVectors")
    rows = []
    for a, b, c, expected in questions:
        row = {"question": f"{a} : {b} :: {c} : ?", "expected": expected}
        for name, wv in vector_sets.items():
            wv._id(expected, "expected")
            answers = [w for w, _ in wv.analogy(a, b, c, k)]
            row[f"{name} top {k}"] = ", ".join(answers)
            row[f"{name} hit"] = "yes" if expected in answers else "no"
        rows.append(row)
    return pd.DataFrame(rows)


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows onto their first two principal components: centre X, take its SVD X = U S Vᵀ, return X V[:, :2]
    ((n, 2)) and the share of the variance each of the two keeps, S_i² / Σ S². Raises ValueError for < 3 rows."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3 or x.shape[1] < 2:
        raise ValueError(f"vectors has shape {x.shape}; PCA to 2-D needs at least 3 rows of at least 2 numbers")
    x = x - x.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    vt = vt[:2] * np.sign(vt[:2, [0]] + (vt[:2, [0]] == 0))  # fix each component's sign, so pictures repeat
    return x @ vt.T, s[:2] ** 2 / (s ** 2).sum()


def loss_curve_plot(wv: WordVectors, title: str = "Skip-gram training loss") -> Figure:
    """Plot a WordVectors' loss curve: mean loss per pair against millions of pairs seen."""
    if not wv.loss_curve:
        raise ValueError("wv has no loss curve: only vectors trained by train_word2vec record one")
    seen, loss = zip(*wv.loss_curve)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(np.array(seen) / 1e6, loss, marker="o", label=wv.settings.get("method", "skip-gram"))
    finish_axes(ax, "pairs seen (millions)", "mean loss per pair (nats)", title)
    return fig


def pca_plot(vector_sets: dict[str, WordVectors], groups: dict[str, Sequence[str]]) -> Figure:
    """Draw the same words in the first two principal components of each set of vectors, one panel per set, each
    word coloured by its group. PCA is fitted on the chosen words' unit vectors (cosine geometry), per panel."""
    words = [w for members in groups.values() for w in members]
    fig, axes = plt.subplots(1, len(vector_sets), figsize=(8 * len(vector_sets), 8.5), squeeze=False)
    for ax, (name, wv) in zip(axes[0], vector_sets.items()):
        xy, share = pca_2d(wv._unit[[wv._id(w, "groups") for w in words]])
        start = 0
        for colour, (group, members) in zip(matplotlib.color_sequences["tab10"], groups.items()):
            part = xy[start:start + len(members)]
            ax.scatter(part[:, 0], part[:, 1], s=60, color=colour, label=group)
            start += len(members)
        ax.margins(0.05)  # room for the labels of the outermost words
        place_labels(ax, [(w, float(px), float(py)) for w, (px, py) in zip(words, xy)])
        finish_axes(ax, f"PC 1 ({share[0]:.0%} of variance)", f"PC 2 ({share[1]:.0%})", name, legend_loc="best")
    return fig


def cooccurrence(data_or_ids: TokenizedCorpus | Sequence[np.ndarray], window: int = 5,
                 vocab_size: int | None = None) -> scipy.sparse.csr_matrix:
    """Count GloVe's co-occurrences: X_ij = Σ 1/d over every time word j stands d ≤ ``window`` positions from word i
    in one train document (both directions, so X is symmetric; GloVe's 1/d weighting). <unk> is dropped first, as in
    ``skipgram_pairs``. Returns a (V, V) scipy CSR matrix of float64. Raises ValueError for window < 1 or no tokens.
    """
    from scipy.sparse import coo_matrix

    check_int("window", window, 1)
    docs = _documents(data_or_ids)
    if vocab_size is None:
        vocab_size = len(data_or_ids.vocab) if isinstance(data_or_ids, TokenizedCorpus) else \
            int(max(doc.max() for doc in docs if len(doc))) + 1
    ids = np.concatenate(docs)  # (L,)
    doc_of = np.repeat(np.arange(len(docs)), [len(doc) for doc in docs])
    ids, doc_of = ids[ids != 0], doc_of[ids != 0]
    rows, cols, weights = [], [], []
    for d in range(1, window + 1):
        same = np.flatnonzero(doc_of[:-d] == doc_of[d:])  # positions i with i + d in the same document
        rows += [ids[same], ids[same + d]]
        cols += [ids[same + d], ids[same]]
        weights += [np.full(2 * len(same), 1.0 / d)]
    return coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(vocab_size, vocab_size)).tocsr()  # duplicates are summed


def glove_weight(x: torch.Tensor, x_max: float = 100.0, alpha: float = 0.75) -> torch.Tensor:
    """GloVe's weighting f(x) = min(1, (x / x_max)^α): rare pairs count little, frequent ones no more than 1."""
    return torch.clamp((x / x_max) ** alpha, max=1.0)


def glove_loss(w: torch.Tensor, w_tilde: torch.Tensor, b: torch.Tensor, b_tilde: torch.Tensor, counts,
               x_max: float = 100.0, alpha: float = 0.75) -> torch.Tensor:
    """Return GloVe's objective over the non-zero counts (a scipy sparse matrix or a dense array X):

        J = Σ_{i,j: X_ij > 0} f(X_ij) (w_i · w̃_j + b_i + b̃_j − ln X_ij)²,

    w, w_tilde (V, dim); b, b_tilde (V,). Differentiable in the four tensors. Raises ValueError for mismatched
    shapes, a negative count, or x_max / alpha not positive.
    """
    from scipy.sparse import coo_matrix

    x = coo_matrix(counts)
    if not (x_max > 0 and alpha > 0):
        raise ValueError(f"x_max={x_max!r}, alpha={alpha!r}: both must be positive")
    if w.shape != w_tilde.shape or w.shape[0] != x.shape[0] or x.shape[0] != x.shape[1] \
            or b.shape != (w.shape[0],) or b_tilde.shape != (w.shape[0],):
        raise ValueError(f"shapes w {tuple(w.shape)}, w_tilde {tuple(w_tilde.shape)}, b {tuple(b.shape)}, b_tilde "
                         f"{tuple(b_tilde.shape)} and counts {x.shape} must agree: (V, dim), (V, dim), (V,), (V,), "
                         "(V, V)")
    if (x.data < 0).any():
        raise ValueError("counts has a negative entry; co-occurrence counts are >= 0")
    keep = x.data > 0
    i, j = torch.from_numpy(x.row[keep].astype(np.int64)), torch.from_numpy(x.col[keep].astype(np.int64))
    xij = torch.from_numpy(x.data[keep]).to(w.dtype)  # (nnz,)
    fit = (w[i] * w_tilde[j]).sum(1) + b[i] + b_tilde[j] - torch.log(xij)  # (nnz,)
    return (glove_weight(xij, x_max, alpha) * fit ** 2).sum()


def train_glove(counts, vocab: Vocab, dim: int = 50, steps: int = 300, batch_size: int = 16384, lr: float = 0.05,
                seed: int = 0, x_max: float = 100.0, alpha: float = 0.75) -> WordVectors:
    """Fit GloVe's vectors to the co-occurrence counts X (``cooccurrence``) by minimising ``glove_loss``:

        J = Σ_{i,j: X_ij > 0} f(X_ij) (w_i · w̃_j + b_i + b̃_j − ln X_ij)²,

    with AdaGrad (the GloVe paper's optimizer) on batches of ``batch_size`` non-zero X_ij (shuffled, seeded; a new
    shuffle after each pass) for ``steps`` steps at learning rate ``lr``, from vectors drawn uniformly in ±0.5 / dim
    and zero biases. Returns ``WordVectors`` of w + w̃ (the paper's choice), with ``loss_curve`` of (step, the batch's
    J / batch_size) and in ``settings`` the mean J per non-zero X_ij over all of X before and after training
    (``start_loss``, ``end_loss``). Raises ValueError for a count matrix that is not (V, V) for the vocabulary,
    dim, steps or batch_size < 1, or lr not positive.
    """
    from scipy.sparse import coo_matrix

    for name, value in (("dim", dim), ("steps", steps), ("batch_size", batch_size)):
        check_int(name, value, 1)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} is out of range; use a learning rate > 0, e.g. 0.05")
    if counts.shape != (len(vocab), len(vocab)):
        raise ValueError(f"counts has shape {counts.shape}; it needs ({len(vocab)}, {len(vocab)}) for the vocabulary")
    x = coo_matrix(counts)
    x = coo_matrix((x.data[x.data > 0], (x.row[x.data > 0], x.col[x.data > 0])), shape=x.shape)
    generator, rng, v = torch.Generator().manual_seed(seed), np.random.default_rng(seed), len(vocab)
    w, w_tilde = (((torch.rand(v, dim, generator=generator) - 0.5) / dim).requires_grad_(True) for _ in range(2))
    b, b_tilde = torch.zeros(v, requires_grad=True), torch.zeros(v, requires_grad=True)
    params = [w, w_tilde, b, b_tilde]
    optimizer, curve, order = torch.optim.Adagrad(params, lr=lr), [], np.array([], dtype=np.int64)

    def mean_loss() -> float:
        with torch.no_grad():
            return glove_loss(w, w_tilde, b, b_tilde, x, x_max=x_max, alpha=alpha).item() / x.nnz

    start_loss = mean_loss()
    with Stopwatch() as clock:
        for step in range(1, steps + 1):
            if len(order) < batch_size:
                order = np.concatenate([order, rng.permutation(x.nnz)])
            pick, order = order[:batch_size], order[batch_size:]
            batch = coo_matrix((x.data[pick], (x.row[pick], x.col[pick])), shape=x.shape)
            optimizer.zero_grad()
            loss = glove_loss(w, w_tilde, b, b_tilde, batch, x_max=x_max, alpha=alpha)
            loss.backward()
            optimizer.step()
            curve.append((step, loss.item() / len(pick)))
    settings = dict(dim=dim, steps=steps, batch_size=batch_size, lr=lr, seed=seed, x_max=x_max, alpha=alpha,
                    pairs=x.nnz, start_loss=start_loss, end_loss=mean_loss())
    vectors = (w + w_tilde).detach().numpy()
    return WordVectors(vectors, vocab, loss_curve=curve, settings=settings, train_seconds=clock.elapsed_ms() / 1e3)
