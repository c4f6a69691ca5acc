"""Data: the corpora (King James Bible, census names, your own text), vocabularies, batches, shipped files.

Modules, each importing only those above it in the course:
- ``corpora``: Corpora and tokens: the King James Bible, US census names, or your own text file, all offline.
- ``shipped``: Where lmlab's shipped files live, and the notebooks' one evaluation slice of the King James test
  split.
"""

from lmlab.data.corpora import (
    LEVELS, NAME_LISTS, SPECIALS, SPLITS, Corpus, TokenizedCorpus, Vocab, batches, document_batches, kjv_books,
    kjv_verses, load_corpus, load_kjv, load_names, load_text_file, name_frequencies, split_indices, tokenize,
    tokenize_corpus,
)
from lmlab.data.shipped import DATA_DIR, NOTEBOOK_DOCUMENTS, check_documents, notebook_slice, slice_name

__all__ = [
    "SPECIALS", "LEVELS", "SPLITS", "NAME_LISTS", "tokenize", "Corpus", "split_indices", "kjv_verses", "kjv_books",
    "load_kjv", "load_names", "name_frequencies", "load_text_file", "load_corpus", "Vocab", "TokenizedCorpus",
    "tokenize_corpus", "batches", "document_batches", "DATA_DIR", "NOTEBOOK_DOCUMENTS", "notebook_slice",
    "check_documents", "slice_name",
]
