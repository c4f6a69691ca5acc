"""Where lmlab's shipped files live, and the notebooks' one evaluation slice of the King James test split.

Introduced in notebooks/02_neural_language_models.ipynb.
"""

from __future__ import annotations

from pathlib import Path

from lmlab.measure.runtime import check_int

DATA_DIR = Path(__file__).resolve().parents[2] / "data"  # the shipped checkpoints, next to lmlab/


# The notebooks' one evaluation slice of the King James test split: its first 40 verses, "kjv test[:40]". Every
# chapter that compares models on the KJV text scores them on this slice (the shipped cards report the validation
# split, chapter 08's frontier and the GPU runs the first 100 verses: each names its slice).
NOTEBOOK_DOCUMENTS = 40



def notebook_slice(data):
    """Return the notebooks' evaluation slice of ``data`` (its first ``NOTEBOOK_DOCUMENTS`` test documents) and its
    name: ``(slice, "kjv test[:40]")``."""
    return data.head("test", NOTEBOOK_DOCUMENTS), slice_name(data.corpus.name, NOTEBOOK_DOCUMENTS)



def check_documents(documents: int | None) -> int | None:
    """Return ``documents`` (None: the whole test split) if it is an integer >= 1, else raise ValueError."""
    return None if documents is None else check_int("documents", documents, 1)



def slice_name(corpus: str, documents: int | None) -> str:
    """Name an evaluation slice: ``"kjv test"`` (the whole test split) or ``"kjv test[:30]"`` (its first 30)."""
    return f"{corpus} test" + ("" if documents is None else f"[:{documents}]")
