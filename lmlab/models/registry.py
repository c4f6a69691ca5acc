"""The shipped models by name: what each is, and how to load it with its tokenized corpus.

Introduced in notebooks/04_quantization.ipynb.
"""

from __future__ import annotations

import functools
from pathlib import Path

from lmlab.data.corpora import load_corpus, tokenize_corpus
from lmlab.data.shipped import DATA_DIR
from lmlab.models.checkpoints import load_checkpoint
from lmlab.models.ngram import NGramModel

MODELS = ("mlp-names", "gpt-small", "gpt-medium", "gpt-large", "lstm-names", "rnn-names", "lstm-kjv")


CHARACTER_MODELS = ("mlp-names", "lstm-names", "rnn-names")  # census names, letter by letter


# Chapter 09's recurrent models: the methods know the MLP's and the GPT's layers, not nn.LSTM's gate matrices, so they
# would leave most of a recurrent model untouched; run() refuses them rather than report a half-compressed row.
RECURRENT_MODELS = ("lstm-names", "rnn-names", "lstm-kjv")


# Chapter 01's Kneser-Ney n-grams, fitted here on the GPTs' King James training verses with their tokenization, so
# their rows compare with the GPTs' on the same test verses. The methods compress neural models; an n-gram takes none.
NGRAM_MODELS = {"ngram-3": 3, "ngram-5": 5}



def load_model(name: str, data_dir: str | Path = DATA_DIR):
    """Return (model, its tokenized corpus) for a shipped checkpoint name, or a chapter 01 n-gram fitted here.

    An n-gram (``NGRAM_MODELS``) is fitted on the King James training verses, tokenized as the GPTs are (once per
    process: a fitted n-gram is never modified, so later calls return the same one).
    Raises ValueError for an unknown name.
    """
    if name in NGRAM_MODELS:
        card = load_checkpoint(f"{data_dir}/gpt-large").card  # the GPTs' corpus and tokenization
        corpus, min_count = card["corpus"], card["min_count"]
        return _fitted_ngram(corpus, min_count, NGRAM_MODELS[name]), _tokenized(corpus, min_count)
    if name not in MODELS:
        raise ValueError(f"model={name!r} is not a shipped model; use one of {MODELS + tuple(NGRAM_MODELS)}")
    model = load_checkpoint(f"{data_dir}/{name}")
    return model, _tokenized(model.card["corpus"], model.card["min_count"])



@functools.lru_cache(maxsize=2)
def _fitted_ngram(corpus: str, min_count: int, n: int):
    """An n-gram of order ``n`` fitted on a shipped corpus's training split: fitted once per process."""
    return NGramModel.fit(_tokenized(corpus, min_count), n=n)



@functools.lru_cache(maxsize=4)
def _tokenized(corpus: str, min_count: int):
    """A shipped corpus, split and tokenized: read once per process (a TokenizedCorpus is never modified)."""
    return tokenize_corpus(load_corpus(corpus), min_count=min_count)
