"""Fast text classifiers on labelled text shipped offline, measured like the language models: accuracy against ms.

Introduced in notebooks/09_recurrent_vectors_classifiers.ipynb. Three tasks (``TASKS``):

- ``"names-sex"``: a US census first name -> "female" or "male" (the ``names`` package's two lists). 331 names
  are on both lists; each is labelled by the list where its census frequency is higher, and the few exact ties
  are dropped (``names_by_sex().info`` counts them).
- ``"kjv-testament"``: a King James verse -> "Old" or "New" Testament.
- ``"kjv-books"``: a verse -> its book's group (``BOOK_GROUPS``: law, history, poetry, major prophets, minor
  prophets, gospels & Acts, epistles, Revelation).

The verses are exactly ``lmlab.data.corpora.load_kjv()``'s documents in the same order, and ``LabelledTexts.split``
cuts them with the same seeded permutation as ``Corpus.split``: seed 0 gives the language models' test verses.

Four classifiers answer one interface (``fit``, ``predict_logits`` -> (batch, classes), ``predict``, ``timed``):
a bag-of-n-grams linear model (fastText-like), a BiLSTM, a CNN over time, and a small BERT encoder pre-trained
briefly as a masked language model, then fine-tuned. ``classification_metrics`` scores them from class labels;
``measure_classifier`` makes the results rows; ``onnx_steps`` exports the transformer to ONNX in three steps.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from lmlab.compress.export import _initializer_bytes, _optimization_level, _session
from lmlab.data.corpora import kjv_books, kjv_verses, name_frequencies, split_indices, tokenize
from lmlab.measure.plots import FONT_SIZE, tradeoff_plot
from lmlab.measure.results import Result
from lmlab.measure.runtime import check_int, seed_everything, torch_threads
from lmlab.measure.stats import (  # within_noise: the one rule every chapter uses; document_picks: the one resampler
    Comparison,
    binomial_se,
    check_bootstrap,
    document_picks,
    timing_verdict,
    within_noise,
)
from lmlab.measure.timing import Stopwatch, Timing, format_ms, time_ms
from lmlab.train.loop import _step

TASKS = ("names-sex", "kjv-testament", "kjv-books")
# Book groups by canonical book number (Genesis 1 ... Malachi 39, Matthew 40 ... Revelation 66), first and last.
BOOK_GROUPS = {
    "law": (1, 5),  # Genesis - Deuteronomy
    "history": (6, 17),  # Joshua - Esther
    "poetry": (18, 22),  # Job - Song of Solomon
    "major prophets": (23, 27),  # Isaiah - Daniel
    "minor prophets": (28, 39),  # Hosea - Malachi
    "gospels & Acts": (40, 44),  # Matthew - Acts
    "epistles": (45, 65),  # Romans - Jude
    "Revelation": (66, 66),
}
PAD, UNK, CLS, MASK = 0, 1, 2, 3  # the ids every classifier's vocabulary starts with
SPECIALS = ("<pad>", "<unk>", "[CLS]", "[MASK]")
MODELS = ("linear", "bilstm", "cnn", "transformer")


def book_group(number: int) -> str:
    """Return the group (a key of ``BOOK_GROUPS``) of canonical book ``number`` in 1..66; ValueError otherwise."""
    check_int("number", number, 1, 66)
    return next(group for group, (first, last) in BOOK_GROUPS.items() if first <= number <= last)


@dataclass(frozen=True)
class LabelledTexts:
    """Texts and their class labels: ``labels[i]`` is the index in ``classes`` of ``texts[i]``'s class.

    ``level`` is how the classifiers read the texts ("char" or "word"); ``info`` holds counts about how the
    labels were made. Raises ValueError for fewer than 2 classes, an empty text, a label outside the classes,
    or texts and labels of different lengths.
    """

    name: str
    level: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    info: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.level not in ("char", "word"):
            raise ValueError(f"level={self.level!r} is not a token level; use 'char' or 'word'")
        if len(set(self.classes)) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes={self.classes!r}: a classifier needs at least 2 distinct classes")
        if len(self.texts) != len(self.labels):
            raise ValueError(f"texts ({len(self.texts)}) and labels ({len(self.labels)}) differ in length")
        for i, text in enumerate(self.texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"texts[{i}]={text!r} is empty; every text needs at least one character")
        bad = [label for label in self.labels
               if not (isinstance(label, (int, np.integer)) and 0 <= label < len(self.classes))]
        if bad:
            raise ValueError(f"label={bad[0]!r} is unknown; labels are class indices in [0, {len(self.classes) - 1}]")

    @classmethod
    def from_names(cls, name: str, level: str, texts: Sequence[str], label_names: Sequence[str],
                   classes: Sequence[str], info: dict | None = None) -> LabelledTexts:
        """Build from label names; ValueError for a label name that is not one of ``classes``."""
        index = {c: i for i, c in enumerate(classes)}
        unknown = [label for label in label_names if label not in index]
        if unknown:
            raise ValueError(f"label={unknown[0]!r} is unknown; use one of {tuple(classes)}")
        return cls(name, level, tuple(texts), tuple(index[label] for label in label_names), tuple(classes),
                   dict(info or {}))

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> dict[str, int]:
        """Return how many texts each class has, in class order."""
        tally = Counter(self.labels)
        return {c: tally.get(i, 0) for i, c in enumerate(self.classes)}

    def split(self, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, LabelledTexts]:
        """Return {"train", "valid", "test"}: ``lmlab.data.corpora.split_indices``'s seeded cut, labels carried along.

        The same permutation as ``Corpus.split``: for the verses, seed 0 gives the language models' test verses.
        """
        cuts = split_indices(len(self.texts), fractions, seed, what=f"texts {self.name!r}")
        return {part: LabelledTexts(f"{self.name} {part}", self.level, tuple(self.texts[i] for i in idx),
                                    tuple(self.labels[i] for i in idx), self.classes, self.info)
                for part, idx in cuts.items()}


def names_by_sex() -> LabelledTexts:
    """First names (lowercase) labelled "female" or "male" from the census lists ``dist.female.first`` and
    ``dist.male.first``.

    A name on both lists takes the label of the list where its frequency (percent of people) is higher; an
    exact tie is dropped. ``info`` counts: "on both lists", "both -> female", "both -> male", "ties dropped".
    """
    male, female = name_frequencies("male"), name_frequencies("female")
    both = [name for name in male if name in female]
    texts, labels = [], []
    for name in dict.fromkeys([*male, *female]):
        m, f = male.get(name, 0.0), female.get(name, 0.0)
        if m != f:
            texts.append(name)
            labels.append("male" if m > f else "female")
    info = {"on both lists": len(both), "both -> female": sum(female[n] > male[n] for n in both),
            "both -> male": sum(male[n] > female[n] for n in both),
            "ties dropped": sum(male[n] == female[n] for n in both)}
    return LabelledTexts.from_names("names", "char", texts, labels, ("female", "male"), info)


def kjv_by_testament() -> LabelledTexts:
    """King James verses (``load_kjv()``'s documents, same order) labelled "Old" or "New" Testament."""
    verses = kjv_verses()
    return LabelledTexts.from_names("kjv", "word", [text for _, text in verses],
                                    ["Old" if book <= 39 else "New" for book, _ in verses], ("Old", "New"))


def kjv_by_book_group() -> LabelledTexts:
    """King James verses (``load_kjv()``'s documents, same order) labelled by their book's group (``BOOK_GROUPS``)."""
    verses = kjv_verses()
    return LabelledTexts.from_names("kjv", "word", [text for _, text in verses],
                                    [book_group(book) for book, _ in verses], tuple(BOOK_GROUPS))


def book_group_table() -> pd.DataFrame:
    """Return the book-group table: each group, its books (first - last) and how many books it holds."""
    names = kjv_books()
    return pd.DataFrame([{"group": group, "books": f"{names[first - 1]} - {names[last - 1]}" if last > first
                          else names[first - 1], "count": last - first + 1}
                         for group, (first, last) in BOOK_GROUPS.items()])


def load_task(task: str) -> LabelledTexts:
    """Return the labelled texts of ``task`` (one of ``TASKS``); ValueError for another name."""
    loaders = {"names-sex": names_by_sex, "kjv-testament": kjv_by_testament, "kjv-books": kjv_by_book_group}
    if task not in loaders:
        raise ValueError(f"task={task!r} is unknown; use one of {TASKS}")
    return loaders[task]()


# Metrics from class labels ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassMetrics:
    """Accuracy with its standard error, macro precision / recall / F1, and the confusion matrix (rows true,
    columns predicted), of ``n`` predictions."""

    classes: tuple[str, ...]
    accuracy: float
    accuracy_se: float
    precision: float
    recall: float
    f1: float
    confusion: np.ndarray
    n: int


def _as_indices(name: str, values, classes: Sequence[str]) -> np.ndarray:
    values = list(values)
    if values and all(isinstance(v, str) for v in values):
        index = {c: i for i, c in enumerate(classes)}
        unknown = [v for v in values if v not in index]
        if unknown:
            raise ValueError(f"{name} holds label={unknown[0]!r}, which is unknown; use one of {tuple(classes)}")
        return np.array([index[v] for v in values], dtype=np.int64)
    array = np.asarray(values)
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= len(classes)):
        bad = next(v for v in values if not (isinstance(v, (int, np.integer)) and 0 <= v < len(classes)))
        raise ValueError(f"{name} holds label={bad!r}, which is unknown; use class indices in [0, {len(classes) - 1}]")
    return array.astype(np.int64)


def classification_metrics(y_true, y_pred, classes: Sequence[str]) -> ClassMetrics:
    """Score predicted class labels against true ones (indices into ``classes``, or class names).

    accuracy = mean(ŷ = y), its standard error √(p (1 − p) / n); per class c: precision_c = TP_c / (TP_c + FP_c),
    recall_c = TP_c / (TP_c + FN_c), F1_c = 2 P_c R_c / (P_c + R_c); macro = the plain mean over all classes.
    Zero division counts as 0: a class never predicted has precision 0, a class never true recall 0, and
    F1_c = 0 when P_c + R_c = 0 (scikit-learn's ``zero_division=0``). confusion[i, j] counts true i predicted j.
    Raises ValueError for fewer than 2 classes, no predictions, lengths that differ, or an unknown label.
    """
    classes = tuple(classes)
    if len(set(classes)) < 2:
        raise ValueError(f"classes={classes!r}: metrics need at least 2 distinct classes")
    truth, pred = _as_indices("y_true", y_true, classes), _as_indices("y_pred", y_pred, classes)
    if len(truth) != len(pred) or len(truth) == 0:
        raise ValueError(f"y_true has {len(truth)} labels and y_pred {len(pred)}; give the same number, at least 1")
    k = len(classes)
    confusion = np.bincount(truth * k + pred, minlength=k * k).reshape(k, k)  # (true, predicted)
    tp = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(0).astype(float), confusion.sum(1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    accuracy = float(tp.sum() / len(truth))
    return ClassMetrics(classes, accuracy, binomial_se(accuracy, len(truth)), float(precision.mean()),
                        float(recall.mean()), float(f1.mean()), confusion, len(truth))


def _macro_f1_rows(weights: np.ndarray, truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Macro F1 of each row of ``weights`` (resamples, n): row r counts how often each text is in resample r, so
    TP_c = Σ_t w_t [y_t = c = ŷ_t] and the predicted and true totals likewise. Returns (resamples,)."""
    truth_hot, pred_hot = np.eye(k)[truth], np.eye(k)[pred]  # (n, k) each
    tp, predicted, actual = weights @ (truth_hot * pred_hot), weights @ pred_hot, weights @ truth_hot  # (resamples, k)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0).mean(1)


def compare_macro_f1(y_true, first_pred, second_pred, classes: Sequence[str], level: float = 0.95,
                     resamples: int = 2000, seed: int = 0) -> Comparison:
    """Compare two classifiers' macro F1 on the same texts with the one noise rule, paired: Δ = F1(first) − F1(second)
    and its percentile interval at ``level`` over bootstrap resamples of the texts (``document_picks``: both
    classifiers rescored on the same resampled texts, each text a document). Macro F1 is not a mean over texts, so
    the texts are resampled and the metric recomputed, as ``classification_metrics`` computes it.
    Raises ValueError as ``classification_metrics`` does, for fewer than 2 texts, or for a ``level`` outside (0, 1)
    or fewer than 100 ``resamples`` (``check_bootstrap``).
    """
    check_bootstrap(level, resamples)
    classes = tuple(classes)
    truth = _as_indices("y_true", y_true, classes)
    first, second = _as_indices("first_pred", first_pred, classes), _as_indices("second_pred", second_pred, classes)
    if not len(truth) == len(first) == len(second):
        raise ValueError(f"y_true, first_pred and second_pred have {len(truth)}, {len(first)} and {len(second)} "
                         "labels; give the same number")
    k = len(classes)
    whole = np.ones((1, len(truth)))  # every text once: the metric itself
    delta = float(_macro_f1_rows(whole, truth, first, k)[0] - _macro_f1_rows(whole, truth, second, k)[0])
    picks = document_picks(len(truth), resamples, seed)  # (resamples, n)
    offsets = np.arange(resamples)[:, None] * len(truth)
    weights = np.bincount((offsets + picks).ravel(), minlength=resamples * len(truth)).reshape(resamples, -1)
    gaps = _macro_f1_rows(weights, truth, first, k) - _macro_f1_rows(weights, truth, second, k)
    low, high = np.quantile(gaps, [(1 - level) / 2, (1 + level) / 2])
    return Comparison(delta, float(low), float(high), paired=True, documents=len(truth))


def token_list_precision(true_tokens: Sequence, predicted_tokens: Sequence) -> float:
    """The source's mistake, reconstructed: "precision" of the predicted labels read as a bag of tokens.

    Σ_c min(#c in predicted, #c in true) / #predicted: the share of predicted tokens found in the true list,
    each true token used once (clipped counts, as BLEU counts words). It never looks at WHICH text got which
    label: shuffle the predictions and it does not change. Precision is computed per class from aligned labels
    (``classification_metrics``). Raises ValueError for an empty prediction list.
    """
    if len(predicted_tokens) == 0:
        raise ValueError("predicted_tokens is empty; give at least one prediction")
    true_counts, predicted_counts = Counter(list(true_tokens)), Counter(list(predicted_tokens))
    return sum(min(count, true_counts[token]) for token, count in predicted_counts.items()) / len(predicted_tokens)


# Tokens and features ------------------------------------------------------------------------------------------


def text_tokens(text: str, level: str) -> list[str]:
    """Return a text's tokens: lowercase characters, or lowercase words (``lmlab.data.corpora.tokenize``)."""
    return list(text.lower()) if level == "char" else tokenize(text, "word")


def ngram_features(text: str, level: str) -> list[str]:
    """Return the bag-of-n-grams features: characters 1-3-grams of "<name>" (boundaries marked), or words
    and word bigrams."""
    if level == "char":
        padded = f"<{text.lower()}>"
        return [padded[i:i + n] for n in (1, 2, 3) for i in range(len(padded) - n + 1)]
    words = tokenize(text, "word")
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def _vocabulary(lists: Sequence[Sequence[str]], min_count: int) -> dict[str, int]:
    counts = Counter(token for tokens in lists for token in tokens)
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return {token: i for i, token in enumerate(SPECIALS + tuple(kept))}


def _pad(rows: Sequence[Sequence[int]], minimum: int = 1) -> torch.Tensor:
    width = max(minimum, max(len(r) for r in rows))
    out = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out  # (batch, width)


# The classifiers ------------------------------------------------------------------------------------------------


class TextClassifier(nn.Module):
    """The interface every classifier answers: ``fit`` (fixed steps, seeded), ``predict_logits`` -> (batch,
    classes), ``predict`` -> class indices, ``timed`` -> a ``Timing`` of one prediction call.

    A subclass sets ``kind`` and ``technique``, reads texts into tensors (``encode``), builds its layers once the
    vocabulary is known (``build``) and maps the tensors to logits (``forward``).
    """

    kind = "?"
    technique = "?"
    lr = 3e-3

    def __init__(self, dim: int = 64, max_length: int = 64, min_count: int = 2):
        super().__init__()
        check_int("dim", dim, 1)
        check_int("max_length", max_length, 4)
        check_int("min_count", min_count, 1)
        self.dim, self.max_length, self.min_count = dim, max_length, min_count
        self.classes: tuple[str, ...] = ()
        self.level = ""
        self.vocab: dict[str, int] = {}

    # what a subclass provides
    def tokens(self, text: str) -> list[str]:
        return text_tokens(text, self.level)

    def build(self, vocab_size: int, n_classes: int) -> None:
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """Return the model's inputs: token ids (batch, length), padded with 0, cut at ``max_length``."""
        rows = [[self.vocab.get(t, UNK) for t in self.tokens(text)][: self.max_length] or [UNK] for text in texts]
        return (_pad(rows),)

    # the shared part
    def fit(self, train: LabelledTexts, steps: int, batch_size: int = 32, seed: int = 0, lr: float | None = None,
            threads: int | None = None) -> list[float]:
        """Train on ``train`` for ``steps`` AdamW steps of ``batch_size`` texts (seeded reshuffles); return the losses.

        The vocabulary (tokens seen ``min_count`` times; characters: once) comes from ``train`` alone. Loss:
        cross-entropy −log softmax(logits)[y], mean over the batch. Raises ValueError for steps or batch_size < 1.
        """
        check_int("steps", steps, 1)
        check_int("batch_size", batch_size, 1)
        self.classes, self.level = train.classes, train.level
        seed_everything(seed)
        min_count = 1 if self.level == "char" else self.min_count
        with Stopwatch() as fitting:
            self.vocab = _vocabulary([self.tokens(t) for t in train.texts], min_count)
            with Stopwatch() as building:  # making the layers (and importing transformers) is not training
                self.build(len(self.vocab), len(self.classes))
            with torch_threads(threads):
                losses = self._pretrain(train, seed, batch_size)
                losses += self._train(train, steps, batch_size, seed, lr or self.lr, self._classification_loss)
        self.fit_seconds = (fitting.ms - building.ms) / 1e3  # vocabulary, pre-training and training
        return losses

    def _pretrain(self, train: LabelledTexts, seed: int, batch_size: int) -> list[float]:
        return []

    def _classification_loss(self, texts, labels) -> torch.Tensor:
        return nn.functional.cross_entropy(self(*self.encode(texts)), labels)

    def _train(self, train: LabelledTexts, steps: int, batch_size: int, seed: int, lr: float, loss_fn) -> list[float]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=0.01)
        rng = np.random.default_rng(seed)
        labels = torch.tensor(train.labels, dtype=torch.long)
        order, at, losses = rng.permutation(len(train)), 0, []
        self.train()
        for _ in range(steps):
            if at + batch_size > len(order):
                order, at = rng.permutation(len(train)), 0
            picks = order[at:at + batch_size]
            at += batch_size
            batch = ([train.texts[i] for i in picks], labels[picks])
            loss = _step(self, optimizer, batch, lambda _, b: loss_fn(*b), clip_norm=1.0)  # lmlab.train.loop's one step
            losses.append(float(loss.detach()))
        return losses

    def _check_texts(self, texts: Sequence[str]) -> list[str]:
        if not self.vocab:
            raise ValueError(f"this {self.kind} classifier is not trained; call fit(train, steps) first")
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty; give at least one text")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"texts[{i}]={text!r} is empty; every text needs at least one character")
        return texts

    @torch.no_grad()
    def predict_logits(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Return the class scores of ``texts``: (batch, classes), float32. Texts are read ``batch_size`` at a time.

        Raises ValueError for no text, an empty text, batch_size < 1, or an untrained classifier.
        """
        texts = self._check_texts(texts)
        check_int("batch_size", batch_size, 1)
        self.eval()
        if len(texts) <= batch_size:
            return self(*self.encode(texts))
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths together: less padding
        logits = torch.cat([self(*self.encode([texts[j] for j in order[i:i + batch_size]]))
                            for i in range(0, len(texts), batch_size)])
        return logits[torch.from_numpy(np.argsort(order, kind="stable"))]  # back to the texts' order

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Return each text's predicted class index: argmax over the CLASS axis (dim=-1) of (batch, classes)."""
        return self.predict_logits(texts).argmax(dim=-1).numpy()

    def timed(self, texts: Sequence[str], repeat: int = 20, warmup: int = 3, threads: int | None = None) -> Timing:
        """Time one prediction call on ``texts`` (one batch): reading the text into ids and the forward pass."""
        texts = self._check_texts(texts)
        return time_ms(self.predict_logits, texts, len(texts), repeat=repeat, warmup=warmup, threads=threads)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def size_mb(self) -> float:
        return sum(p.numel() * p.element_size() for p in self.parameters()) / 1e6


class NgramLinear(TextClassifier):
    """fastText-like: the mean of the text's n-gram embeddings, then one linear layer.

    logits = W · mean_{g ∈ n-grams(text)} E[g] + b, with E (features, dim), W (classes, dim). Features: characters
    1-3-grams for names, words and word bigrams for verses (``ngram_features``); unseen features are dropped.
    """

    kind, technique, lr = "linear", "bag of n-grams", 2e-2

    def tokens(self, text: str) -> list[str]:
        return ngram_features(text, self.level)

    def encode(self, texts):
        rows = [[self.vocab[f] for f in self.tokens(text) if f in self.vocab] or [UNK] for text in texts]
        return (_pad(rows),)

    def build(self, vocab_size: int, n_classes: int) -> None:
        self.embed = nn.EmbeddingBag(vocab_size, self.dim, mode="mean", padding_idx=PAD)
        self.out = nn.Linear(self.dim, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(ids))  # (batch, features) -> (batch, dim) -> (batch, classes)


class BiLSTMClassifier(TextClassifier):
    """Embedding -> bidirectional LSTM -> mean of its outputs over the real (unpadded) positions -> linear.

    h_t = [→LSTM(x_1..x_t); ←LSTM(x_T..x_t)] (2·dim); logits = W · (1/T) Σ_{t ≤ T} h_t + b. Sequences are packed
    (``pack_padded_sequence``), so the backward direction starts at each text's last real token, not at padding.
    """

    kind, technique, lr = "bilstm", "BiLSTM", 1e-2

    def build(self, vocab_size: int, n_classes: int) -> None:
        self.embed = nn.Embedding(vocab_size, self.dim, padding_idx=PAD)
        self.lstm = nn.LSTM(self.dim, self.dim, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * self.dim, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids != PAD).sum(1).clamp(min=1)  # (batch,)
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        hidden, _ = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True)  # (batch, T, 2 dim)
        return self.out(hidden.sum(1) / lengths[:, None])  # padded outputs are zeros: the mean over real steps


class CNNClassifier(TextClassifier):
    """Embedding -> Conv1d of widths 2, 3, 4 (``dim`` filters each) -> ReLU -> max over time -> linear.

    c_{k,t} = ReLU(W_k · [x_t .. x_{t+k-1}] + b_k); logits = W · [max_t c_{2,t}; max_t c_{3,t}; max_t c_{4,t}] + b.
    Windows that start past a text's end are left out of the max.
    """

    kind, technique, lr, widths = "cnn", "CNN", 1e-2, (2, 3, 4)

    def build(self, vocab_size: int, n_classes: int) -> None:
        self.embed = nn.Embedding(vocab_size, self.dim, padding_idx=PAD)
        self.convs = nn.ModuleList(nn.Conv1d(self.dim, self.dim, k) for k in self.widths)
        self.out = nn.Linear(len(self.widths) * self.dim, n_classes)

    def encode(self, texts):
        (ids,) = super().encode(texts)
        if ids.shape[1] < max(self.widths):  # the widest window needs that many positions
            ids = nn.functional.pad(ids, (0, max(self.widths) - ids.shape[1]), value=PAD)
        return (ids,)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids != PAD).sum(1).clamp(min=1)  # (batch,)
        x = self.embed(ids).transpose(1, 2)  # (batch, dim, T)
        pooled = []
        for conv in self.convs:
            c = torch.relu(conv(x))  # (batch, dim, T - k + 1)
            starts = torch.arange(c.shape[2])[None, :]
            c = c.masked_fill((starts >= lengths[:, None])[:, None, :] & (starts > 0), float("-inf"))
            pooled.append(c.max(2).values)  # (batch, dim)
        return self.out(torch.cat(pooled, 1))


class TransformerClassifier(TextClassifier):
    """A small BERT (transformers' ``BertModel`` from a ``BertConfig``, nothing downloaded) with a linear head
    reading the mean of the final hidden states over the text's real positions (a [CLS] token starts each text).

    logits = W · (1/T) Σ_{t ≤ T} h_t + b. BertModel keeps Hugging Face's pooler (tanh(W' h_[CLS] + b'), made for
    BERT's next-sentence head), which this head does NOT read, and ``mlm`` is BERT's masked-language-model head:
    ``fit`` first pre-trains the encoder for ``pretrain_steps`` steps to predict 15% of the tokens replaced by
    [MASK] (BERT's objective), then fine-tunes encoder and head on the labels. The exported classifier needs
    neither the pooler nor the LM head (``onnx_steps``).
    """

    kind, technique, lr = "transformer", "transformer", 5e-3

    def __init__(self, dim: int = 64, max_length: int = 64, min_count: int = 2, layers: int = 2, heads: int = 2,
                 pretrain_steps: int = 100):
        super().__init__(dim, max_length, min_count)
        check_int("layers", layers, 1)
        check_int("heads", heads, 1)
        check_int("pretrain_steps", pretrain_steps, 0)
        if dim % heads:
            raise ValueError(f"heads={heads} does not divide dim={dim}; use a divisor of dim")
        self.layers, self.heads, self.pretrain_steps = layers, heads, pretrain_steps

    def build(self, vocab_size: int, n_classes: int) -> None:
        from transformers import BertConfig, BertModel
        from transformers.models.bert.modeling_bert import BertOnlyMLMHead

        config = BertConfig(vocab_size=vocab_size, hidden_size=self.dim, num_hidden_layers=self.layers,
                            num_attention_heads=self.heads, intermediate_size=2 * self.dim,
                            max_position_embeddings=self.max_length + 1, pad_token_id=PAD,
                            attn_implementation="eager")  # type: ignore[call-arg]  # transformers 5's typed
        # BertConfig signature omits the keyword arguments every config accepts at run time (attn_implementation)
        self.bert = BertModel(config, add_pooling_layer=True)
        self.mlm = BertOnlyMLMHead(config)
        self.head = nn.Linear(self.dim, n_classes)

    def encode(self, texts):
        rows = [[CLS] + [self.vocab.get(t, UNK) for t in self.tokens(text)][: self.max_length] for text in texts]
        ids = _pad(rows)
        return ids, (ids != PAD).long()  # (batch, 1 + length) each

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self._pool(self.bert(input_ids=ids, attention_mask=mask).last_hidden_state, mask))

    @staticmethod
    def _pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The mean of the final hidden states over the real positions, [CLS] included: (batch, dim)."""
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (batch, T, dim) -> (batch, dim)

    def all_outputs(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything the trained module computes: MLM logits (batch, T, vocab), pooler output (batch, dim),
        class logits (batch, classes)."""
        out = self.bert(input_ids=ids, attention_mask=mask)
        return self.mlm(out.last_hidden_state), out.pooler_output, self.head(self._pool(out.last_hidden_state, mask))

    def _pretrain(self, train: LabelledTexts, seed: int, batch_size: int) -> list[float]:
        if not self.pretrain_steps:
            return []
        generator = torch.Generator().manual_seed(seed)

        def masked_lm_loss(texts, _labels):
            ids, mask = self.encode(texts)
            chosen = (torch.rand(ids.shape, generator=generator) < 0.15) & (ids > MASK)  # real tokens only
            chosen[:, 1] |= ~chosen.any(1)  # at least one token per text
            chosen &= ids != PAD
            hidden = self.bert(input_ids=ids.masked_fill(chosen, MASK), attention_mask=mask).last_hidden_state
            return nn.functional.cross_entropy(self.mlm(hidden[chosen]), ids[chosen])  # (masked tokens, vocab)

        return self._train(train, self.pretrain_steps, batch_size, seed + 1, self.lr, masked_lm_loss)


CLASSIFIERS = {"linear": NgramLinear, "bilstm": BiLSTMClassifier, "cnn": CNNClassifier,
               "transformer": TransformerClassifier}


def make_classifier(kind: str, **sizes) -> TextClassifier:
    """Return an untrained classifier of ``kind`` (one of ``MODELS``) with the given sizes (dim, max_length...)."""
    if kind not in CLASSIFIERS:
        raise ValueError(f"model={kind!r} is unknown; use one of {MODELS}")
    return CLASSIFIERS[kind](**sizes)


# Sizes and step counts that train in seconds on two CPU cores, per token level (names: "char", verses: "word").
# Chapter 09 and ``python -m lmlab classify`` use them; the verses' models are smaller and read at most 32 words.
DEFAULTS = {
    ("char", "linear"): (dict(dim=32), 200),
    ("char", "bilstm"): (dict(dim=32, max_length=16), 150),
    ("char", "cnn"): (dict(dim=32, max_length=16), 150),
    ("char", "transformer"): (dict(dim=32, max_length=16, pretrain_steps=100), 150),
    ("word", "linear"): (dict(dim=16, min_count=3), 300),
    ("word", "bilstm"): (dict(dim=32, max_length=32), 300),
    ("word", "cnn"): (dict(dim=32, max_length=32), 400),
    ("word", "transformer"): (dict(dim=32, max_length=32, pretrain_steps=100), 300),
}


def train_classifier(kind: str, train: LabelledTexts, steps: int | None = None, seed: int = 0,
                     threads: int | None = None, **sizes) -> TextClassifier:
    """Make a classifier of ``kind`` with ``DEFAULTS``' sizes for the texts' level (``sizes`` override them) and
    fit it for ``steps`` steps (default: ``DEFAULTS``'). Raises ValueError for an unknown kind or steps < 1."""
    if kind not in CLASSIFIERS:
        raise ValueError(f"model={kind!r} is unknown; use one of {MODELS}")
    default_sizes, default_steps = DEFAULTS[train.level, kind]
    clf = make_classifier(kind, **{**default_sizes, **sizes})
    clf.fit(train, default_steps if steps is None else steps, seed=seed, threads=threads)
    return clf


def compare_classifiers(splits: dict[str, LabelledTexts], kinds: Sequence[str] = MODELS, repeat: int = 20,
                        seed: int = 0, threads: int | None = None
                        ) -> tuple[dict[str, TextClassifier], dict[str, tuple[list[Result], ClassMetrics]]]:
    """Train each of ``kinds`` on ``splits["train"]`` (``train_classifier``'s defaults, seeded) and measure it on
    ``splits["test"]`` (``measure_classifier``). Returns ({kind: classifier}, {kind: (rows, metrics)})."""
    trained, measured = {}, {}
    for kind in kinds:
        trained[kind] = train_classifier(kind, splits["train"], seed=seed, threads=threads)
        measured[kind] = measure_classifier(trained[kind], splits["test"], repeat=repeat, threads=threads)
    return trained, measured


# Measuring --------------------------------------------------------------------------------------------------


def measure_classifier(clf: TextClassifier, split: LabelledTexts, batch_sizes: Sequence[int] = (1, 32),
                       repeat: int = 20, corpus: str | None = None, threads: int | None = None
                       ) -> tuple[list[Result], ClassMetrics]:
    """Score ``clf`` on every text of ``split`` and time one prediction call at each batch size: results rows.

    Returns (one ``Result`` per batch size: setting "batch b", the accuracy with ``predictions`` = the split's
    size for its standard error, the median and p90 ms of a call on the split's first b texts, parameters and
    float32 MB; the ``ClassMetrics`` with macro F1 and the confusion matrix). ``corpus`` names the slice
    (default "names test" or "kjv test"). Raises ValueError for a batch size < 1 or one larger than the split.
    """
    for b in batch_sizes:
        check_int("batch_size", b, 1, len(split))
    if tuple(split.classes) != tuple(clf.classes):
        raise ValueError(f"split has classes {split.classes}, the classifier {clf.classes}; score it on its own task")
    metrics = classification_metrics(split.labels, clf.predict(split.texts), split.classes)
    corpus = corpus or f"{split.name.split()[0]} test"
    rows = [Result.from_timing(clf.timed(split.texts[:b], repeat=repeat, threads=threads), name=clf.kind,
                               technique=clf.technique, setting=f"batch {b}", accuracy=metrics.accuracy,
                               params=clf.params, size_mb=clf.size_mb, batch_size=b, corpus=corpus,
                               predictions=metrics.n)
            for b in batch_sizes]
    return rows, metrics


def classifier_table(measured: dict[str, tuple[list[Result], ClassMetrics]]) -> pd.DataFrame:
    """Return one line per classifier: accuracy ± se, macro P / R / F1, and ms per call at each batch size, as
    fixed-width strings (a timing's digits never shift a column)."""
    lines = []
    for name, (rows, m) in measured.items():
        line = {"model": name, "accuracy ± se": f"{m.accuracy:.3f} ± {m.accuracy_se:.3f}",
                "macro P": f"{m.precision:.3f}", "macro R": f"{m.recall:.3f}", "macro F1": f"{m.f1:.3f}"}
        line.update({f"ms, {r.setting}": format_ms(r.median_ms) for r in rows})
        line["params"] = f"{rows[0].params:>9,}"
        lines.append(line)
    return pd.DataFrame(lines)


def tradeoff_summary(rows: Sequence[Result]) -> str:
    """Say which rows are the most accurate, and the fastest of them.

    "The most accurate" is every row within noise (±2 SE) of the highest accuracy, named in the rows' order: which of
    two rows within noise of each other scores a hair higher can change from one machine to the next, so the summary
    never ranks them. Among those, the fastest is named with its accuracy and the time it saves against the slowest.
    """
    best = max(rows, key=lambda r: r.accuracy)
    top = [r for r in rows if within_noise(r, best)]
    fastest, slowest = min(top, key=lambda r: r.median_ms), max(top, key=lambda r: r.median_ms)
    if len(top) == 1:
        also = " and the fastest" if best is min(rows, key=lambda r: r.median_ms) else ""
        return f"{best.name} is the most accurate ({best.accuracy:.3f}), beyond noise of every other model{also}"
    return (f"the most accurate, within noise of the best: {', '.join(r.name for r in top)}; the fastest of them is "
            f"{fastest.name} ({fastest.accuracy:.3f}), {slowest.median_ms / fastest.median_ms:.1f}× less time per call "
            f"than {slowest.name}")


def confusion_plot(metrics: ClassMetrics, title: str, ax=None, normalize: bool = False):
    """Draw the confusion matrix as a heat map with a colour bar: rows true, columns predicted. With ``normalize``
    each row is divided by its total, so a cell reads "the share of the texts of this true class predicted as that
    class" (the diagonal is each class's recall) and a rare class is as visible as a common one; the cell shows the
    share and, below it, the count."""
    import matplotlib.pyplot as plt


    k = len(metrics.classes)
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2 + 1.1 * k, 1.6 + 1.0 * k))
    counts = metrics.confusion
    totals = np.maximum(counts.sum(1, keepdims=True), 1)
    shown = counts / totals if normalize else counts
    top = 1.0 if normalize else max(int(counts.max()), 1)
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=top)
    for i in range(k):
        for j in range(k):
            text = f"{shown[i, j]:.2f}\n({counts[i, j]})" if normalize else f"{counts[i, j]}"
            ax.text(j, i, text, ha="center", va="center", fontsize=FONT_SIZE - (3 if normalize and k > 4 else 2),
                    color="white" if shown[i, j] > top / 2 else "black")
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("share of the true class's texts" if normalize else "texts", fontsize=FONT_SIZE - 2)
    bar.ax.tick_params(labelsize=FONT_SIZE - 3)
    ax.set_xticks(range(k), metrics.classes, rotation=35, ha="right", fontsize=FONT_SIZE - 2)
    ax.set_yticks(range(k), metrics.classes, fontsize=FONT_SIZE - 2)
    ax.set_xlabel("predicted class", fontsize=FONT_SIZE)
    ax.set_ylabel("true class", fontsize=FONT_SIZE)
    ax.set_title(title, fontsize=FONT_SIZE)
    ax.figure.tight_layout()
    return ax.figure


def classifier_tradeoff_plot(panels: dict[str, Sequence[Result]], se_multiple: float = 2.0):
    """Draw one trade-off panel per task: accuracy (±``se_multiple`` SE bars) against ms per call (log x, p90
    bars), every point labelled, the Pareto frontier drawn."""
    import matplotlib.pyplot as plt


    fig, axes = plt.subplots(1, len(panels), figsize=(9.5 * len(panels), 6.5), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels.items()):
        tradeoff_plot(rows, title=title, ax=ax, label_all=True, se_multiple=se_multiple,
                      xlabel=f"ms per prediction call, {rows[0].setting}",
                      ylabel=f"test accuracy (± {se_multiple:g} SE)")
        low, high = ax.get_xlim()
        ax.set_xlim(low, high * 2)  # room for the rightmost point's label
    fig.tight_layout()
    return fig


# ONNX: export the transformer, remove what the classifier does not use, fuse ----------------------------------


class _AllOutputs(nn.Module):
    def __init__(self, clf: TransformerClassifier):
        super().__init__()
        self.clf = clf

    def forward(self, ids, mask):
        return self.clf.all_outputs(ids, mask)


def _export_onnx(module: nn.Module, example: tuple[torch.Tensor, ...], outputs: list[str], path: Path) -> None:
    """torch.onnx's TorchScript exporter (a second, where the dynamo exporter takes several): batch and length
    dynamic."""
    dynamic = {name: {0: "batch", 1: "length"} for name in ("ids", "mask")}
    dynamic.update({name: {0: "batch"} for name in outputs})
    quiet = io.StringIO()
    with (warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet),
          torch.no_grad()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, input_names=["ids", "mask"],
                          output_names=outputs, dynamic_axes=dynamic, opset_version=17)


def _node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def onnx_steps(clf: TransformerClassifier, texts: Sequence[str], batch_sizes: Sequence[int] = (1, 32),
               repeat: int = 20, threads: int | None = None) -> pd.DataFrame:
    """Export the transformer classifier to ONNX as the source does with BERT, one step at a time, and measure.

    Steps: "PyTorch (class logits only)" (eager, the reference: ``clf(ids, mask)``, which runs neither head);
    "ONNX, as trained (+ MLM logits, pooler)" (every output the module computes: MLM logits, pooler output, class
    logits; ONNX Runtime's optimizer off: more work than the PyTorch row, as its label says); "ONNX, class logits
    only" (the LM head and the pooler removed; optimizer off); "ONNX, fused (ORT_ENABLE_ALL)" (that graph under
    ONNX Runtime's optimizer: constant folding, LayerNorm, GELU and MatMul fusions);
    "ONNX, + BERT fusions" (first rewritten by
    ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")``: one Attention node per layer,
    EmbedLayerNormalization, SkipLayerNormalization, then ORT_ENABLE_ALL). Columns: nodes (the graph ONNX Runtime
    runs, after its optimizer), stored MB (its weights), the median and p90 ms per call at each batch size (the ids
    ready, ``time_ms``), the largest |logit difference| from PyTorch's class logits on ``texts``, and "timings"
    ({batch size: Timing}, for ``onnx_verdicts``). Files go to a
    temporary folder, deleted after.
    Raises ValueError for a classifier that is not a trained TransformerClassifier or a batch size < 1.
    """
    if not isinstance(clf, TransformerClassifier):
        raise ValueError(f"clf of type {type(clf).__name__} is not a TransformerClassifier")
    texts = clf._check_texts(texts)
    for b in batch_sizes:
        check_int("batch_size", b, 1, len(texts))
    clf.eval()
    ids, mask = clf.encode(texts)  # (n, T) each
    with torch.no_grad():
        reference = clf(ids, mask).numpy()  # (n, classes)
    pruned = copy.deepcopy(clf)
    del pruned.mlm
    pruned.bert.pooler = None  # BertModel skips a missing pooler
    lines = [_step_line("PyTorch (class logits only)", None, clf.size_mb,
                        lambda b: time_ms(clf, ids[:b], mask[:b], repeat=repeat, threads=threads), batch_sizes, 0.0)]
    with tempfile.TemporaryDirectory(prefix="lmlab-cls-onnx-") as folder:
        full, logits_only, bert_fused = (Path(folder) / name for name in ("full.onnx", "logits.onnx", "bert.onnx"))
        _export_onnx(_AllOutputs(clf), (ids[:2], mask[:2]), ["mlm_logits", "pooler_output", "logits"], full)
        _export_onnx(pruned, (ids[:2], mask[:2]), ["logits"], logits_only)
        _bert_fusions(logits_only, bert_fused, clf.heads, clf.dim)
        steps = [("ONNX, as trained (+ MLM logits, pooler)", full, "disabled"),
                 ("ONNX, class logits only", logits_only, "disabled"),
                 ("ONNX, fused (ORT_ENABLE_ALL)", logits_only, "all"), ("ONNX, + BERT fusions", bert_fused, "all")]
        for i, (label, path, level) in enumerate(steps):
            session = _session(path, threads, level)
            if level != "disabled":  # count and weigh the graph ONNX Runtime runs: its optimized form
                _session_writing(path, Path(folder) / f"optimized{i}.onnx", level)
                path = Path(folder) / f"optimized{i}.onnx"
            feeds = lambda b: {"ids": ids[:b].numpy(), "mask": mask[:b].numpy()}  # noqa: E731
            logits = session.run(["logits"], feeds(len(texts)))[0]
            lines.append(_step_line(label, _node_count(path), _initializer_bytes(path) / 1e6,
                                    lambda b: time_ms(session.run, ["logits"], feeds(b), repeat=repeat,
                                                      threads=threads),
                                    batch_sizes, float(np.abs(logits - reference).max())))
    return pd.DataFrame(lines)


def _bert_fusions(source: Path, target: Path, heads: int, hidden: int) -> None:
    """Rewrite a BERT graph with onnxruntime.transformers' fusions: whole attention blocks into one Attention
    node, embeddings + LayerNorm into EmbedLayerNormalization, residual adds + LayerNorm into
    SkipLayerNormalization, bias + GELU into BiasGelu."""
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    quiet = io.StringIO()
    logging.disable(logging.WARNING)  # its fusion reports and warnings would land in notebook outputs
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            optimize_model(str(source), model_type="bert", num_heads=heads, hidden_size=hidden,
                           opt_level=0).save_model_to_file(str(target))
    finally:
        logging.disable(logging.NOTSET)


def _session_writing(source: Path, target: Path, level: str) -> None:
    """Run ONNX Runtime's optimizer at ``level`` on ``source`` and write the optimized graph to ``target``."""
    import onnxruntime as ort


    options = ort.SessionOptions()
    options.graph_optimization_level = _optimization_level(level)
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def _step_line(label: str, nodes: int | None, stored_mb: float, timer, batch_sizes, max_diff: float) -> dict:
    line: dict = {"step": label, "nodes": nodes, "stored MB": stored_mb}
    timings = {b: timer(b) for b in batch_sizes}
    line.update({f"ms, batch {b}": t.median_ms for b, t in timings.items()})
    line.update({f"p90 ms, batch {b}": t.p90_ms for b, t in timings.items()})
    line["max |logit diff|"] = max_diff
    line["timings"] = timings  # {batch size: Timing}, for timing_verdict
    return line


def onnx_table(steps: pd.DataFrame) -> pd.DataFrame:
    """Return ``onnx_steps``' table as fixed-width strings for printing: each time as its median with the p90 in
    brackets (with their unit); a logit difference below 1e-5, float32 rounding that varies from CPU to CPU, as
    "< 1e-05"."""
    shown = steps.drop(columns=[c for c in steps.columns if c.startswith("p90 ") or c == "timings"])
    shown["nodes"] = [f"{int(n):>5}" if pd.notna(n) else "    -" for n in steps["nodes"]]
    shown["stored MB"] = [f"{v:.3f}" for v in steps["stored MB"]]
    for column in [c for c in steps.columns if c.startswith("ms, ")]:
        shown[column] = [f"{format_ms(m)} (p90 {format_ms(p)})"  # fixed width: a timing's digits never shift a column
                         for m, p in zip(steps[column], steps["p90 " + column])]
    shown = shown.rename(columns={c: f"{c}: median (p90)" for c in shown.columns if c.startswith("ms, ")})
    # Differences of float32 rounding change with the CPU's vector width; the table says what they are below.
    shown["max |logit diff|"] = ["0" if v == 0 else "< 1e-05" if v < 1e-5 else f"{v:.1e}"
                                 for v in steps["max |logit diff|"]]
    return shown


def onnx_verdicts(steps: pd.DataFrame, pairs: Sequence[tuple[str, str]] | None = None) -> list[str]:
    """Say for each (before, after) pair of ``onnx_steps``' rows (default: each step against the one before it,
    PyTorch's row left out) and each batch size whether ``after`` ran faster or slower than ``before`` beyond the
    noise of the repeats (``timing_verdict``: their p10–p90 ranges do not overlap), with the ratio of medians.
    Raises ValueError for a step name not in the table."""
    by_step = dict(zip(steps["step"], steps["timings"]))
    names = list(by_step)
    pairs = list(zip(names[1:-1], names[2:])) if pairs is None else list(pairs)
    for name in {n for pair in pairs for n in pair}:
        if name not in by_step:
            raise ValueError(f"step={name!r} is not in the table; use one of {names}")
    lines = []
    for before, after in pairs:
        parts = [f"batch {b} {by_step[before][b].median_ms / by_step[after][b].median_ms:.2f}× the speed "
                 f"({timing_verdict(by_step[before][b], by_step[after][b])})" for b in by_step[after]]
        lines.append(f"{before} → {after}: " + ", ".join(parts))
    return lines
