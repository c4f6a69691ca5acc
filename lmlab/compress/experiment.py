"""One experiment, one results row: a shipped model, compressed by a named method at a setting, scored and timed.

Introduced in notebooks/04_quantization.ipynb. ``METHODS`` names every compression technique of chapters 04 and
05 with the range of its setting; the panels offer them, and ``python -m lmlab measure`` runs one from the command
line:

    python -m lmlab measure gpt-large --method quantize-channel --value 4 --save rows.json

Each row is scored on the model's whole held-out test split (the GPTs and lstm-kjv on King James verses, the MLP
and the recurrent names models on census names) and timed predicting one context at ``batch_size`` (median and
p90 ms), like the chapters' rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict, cast

from torch import nn

from lmlab.compress.methods import CPU_ONLY_METHODS, METHODS
from lmlab.data.shipped import DATA_DIR, check_documents, slice_name
from lmlab.measure.results import Result, with_dense_speed
from lmlab.measure.runtime import check_int, pick_device
from lmlab.models.lm import deep_contexts, evaluate, measure
from lmlab.models.protocols import DocumentModel, LanguageModel
from lmlab.models.registry import load_model, model_entry, names

MEASURED_KINDS = ("mlp", "gpt", "rnn", "ngram")  # the models scored on a shipped corpus's test split


class _Timed(TypedDict):
    """How a row's prediction call is timed: ``lmlab.models.lm.measure``'s timing arguments."""

    batch_size: int
    repeat: int
    corpus: str
    device: str
    threads: int | None


def run(model_name: str, method: str | None = None, value: float | None = None, *, batch_size: int = 1,
        repeat: int = 30, documents: int | None = None, data_dir: str | Path = DATA_DIR, device: str = "cpu",
        threads: int | None = None, loaded: tuple | None = None) -> Result:
    """Load a shipped model (``names(MEASURED_KINDS)``), compress it with ``METHODS[method]`` at ``value`` (or not
    at all), and measure it: one results row.

    Accuracy and perplexity are on the test split, or its first ``documents`` documents (the slice is named in
    the row's ``corpus``, e.g. ``"kjv test[:30]"``); latency is one prediction call on ``batch_size`` contexts
    from the middle of held-out documents. A method whose speed is simulated gives a row marked ``simulated``
    that carries the uncompressed model's time, measured on the same contexts
    (``lmlab.measure.results.with_dense_speed``).
    Raises ValueError for an unknown model or method, a method on an n-gram, or a value outside the method's
    range. ``device`` ("cpu", "cuda", "auto"...) is where a neural model is scored and timed, on ``threads`` torch
    threads for the CPU's share of the work (default ``lmlab.measure.runtime.default_threads()``).
    ``loaded`` is ``load_model(model_name, data_dir)``'s (model, data) already in memory (a sweep's worker keeps
    them between settings): every method compresses a copy, and scoring and timing leave the model as it was.
    """
    check_int("batch_size", batch_size, 1)
    check_documents(documents)
    entry = model_entry(model_name, names(MEASURED_KINDS))
    if method is not None and method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {tuple(METHODS)}")
    if method is not None and entry.kind == "ngram":
        raise ValueError(f"method={method!r} compresses neural models; model={model_name!r} is an n-gram and "
                         "takes no method (use method=None)")
    if method is not None and not entry.compressible:
        raise ValueError(f"method={method!r} compresses the MLP's and the GPT's layers; model={model_name!r} is "
                         "recurrent (its nn.LSTM/nn.RNN gate matrices would stay uncompressed): use method=None")
    chosen = METHODS[method] if method else None
    on = pick_device(device)
    if on.type != "cpu" and (entry.kind == "ngram" or method in CPU_ONLY_METHODS):
        raise ValueError(f"device={device!r}: {method or model_name!r} runs on the CPU only; use device='cpu'")
    setting = chosen.check(chosen.value if value is None else value) if chosen else None
    model, data = load_model(model_name, data_dir) if loaded is None else loaded
    scored = data if documents is None else data.head("test", documents)
    applied = chosen.apply(model, setting) if chosen and setting is not None else model  # None exactly without chosen
    applied = getattr(applied, "model", applied)  # a method gives a model, or a Compressed holding one
    if on.type != "cpu":  # a neural model: the n-grams and the CPU-only methods were refused above
        applied = cast(nn.Module, applied).to(on)
    compressed = cast(LanguageModel, applied)
    contexts, targets = scored.examples("test", model.context_size)
    if isinstance(compressed, DocumentModel):  # a GPT or a recurrent model: one pass per document
        scores = compressed.evaluate_documents(scored, "test")
    else:
        scores = evaluate(compressed, contexts, targets)
    if entry.level != "character":  # word models are timed on contexts with a dozen words or more before them
        middle = deep_contexts(contexts, data.vocab.bos_id, words=min(12, model.context_size))
        contexts, targets = contexts[middle], targets[middle]
    timed = _Timed(batch_size=batch_size, repeat=repeat, corpus=slice_name(data.corpus.name, documents),
                   device=on.type, threads=threads)
    row = measure(compressed, contexts[:max(batch_size, 8)], targets[:max(batch_size, 8)], name=model_name,
                  technique=method or "uncompressed", setting=f"{chosen.label} {setting:g}" if chosen else "",
                  scores=scores, **timed)
    if chosen and chosen.size_bytes and setting is not None:
        row = Result(**{**row.to_dict(), "size_mb": chosen.size_bytes(model, setting) / 1e6})
    if chosen and chosen.simulated:  # the copy runs the dense arithmetic: its time is the dense model's
        dense = measure(model.to(on), contexts[:max(batch_size, 8)], targets[:max(batch_size, 8)], name=model_name,
                        technique="uncompressed", scores=scores, **timed)
        row = with_dense_speed(row, dense)
    return row
