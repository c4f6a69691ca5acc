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

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from lmlab.results import Result
from lmlab.runtime import check_int

MODELS = ("mlp-names", "gpt-small", "gpt-medium", "gpt-large", "lstm-names", "rnn-names", "lstm-kjv")
CHARACTER_MODELS = ("mlp-names", "lstm-names", "rnn-names")  # census names, letter by letter
# Chapter 09's recurrent models: the methods know the MLP's and the GPT's layers, not nn.LSTM's gate matrices, so they
# would leave most of a recurrent model untouched; run() refuses them rather than report a half-compressed row.
RECURRENT_MODELS = ("lstm-names", "rnn-names", "lstm-kjv")
# Chapter 01's Kneser-Ney n-grams, fitted here on the GPTs' King James training verses with their tokenization, so
# their rows compare with the GPTs' on the same test verses. The methods compress neural models; an n-gram takes none.
NGRAM_MODELS = {"ngram-3": 3, "ngram-5": 5}
DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # the shipped checkpoints, next to lmlab/


@dataclass(frozen=True)
class Method:
    """A compression technique as a function of one setting, and that setting's range.

    ``apply(model, value)`` returns the compressed copy (a model, or a ``lmlab.prune.Compressed``);
    ``size_bytes(model, value)``, if given, is the size the copy takes stored at that setting when its
    float32 tensors do not show it (fake quantization, weight sharing). ``simulated`` says the copy runs the
    dense float32 arithmetic of its original (fake quantization, masks, shared values stored as floats): its
    accuracy is real, its speed is not a measurement of the technique. ``choices``, if given, are the only
    values allowed.
    """

    label: str
    apply: Callable[[nn.Module, float], object]
    minimum: float
    maximum: float
    step: float
    value: float
    log: bool = False
    integer: bool = False
    size_bytes: Callable[[nn.Module, float], int] | None = None
    simulated: bool = False
    choices: tuple[float, ...] | None = None
    applies: Callable[[nn.Module], str | None] | None = None  # why the method cannot apply to a model, or None

    def refuses(self, model: nn.Module) -> str | None:
        """Return why this method cannot apply to ``model`` at any setting (e.g. groups that do not divide its
        rows), or None if it can."""
        return self.applies(model) if self.applies else None

    def check(self, value: float) -> float:
        """Return ``value`` if it lies in the method's range, else raise ValueError naming it."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.minimum <= value <= self.maximum:
            raise ValueError(f"value={value!r} is out of range for {self.label}; use {self.minimum:g} to {self.maximum:g}")
        if self.integer and value != int(value):
            raise ValueError(f"value={value!r} must be a whole number of {self.label}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"value={value!r} is not one of {self.label}: use one of {self.choices}")
        return int(value) if self.integer else float(value)


def _methods() -> dict[str, Method]:
    from lmlab.prune import low_rank, magnitude_prune, prune_heads, prune_mlp, share_weights
    from lmlab.quantize import model_bytes, quantize_model

    def bits(granularity: str, group: int | None = None) -> Method:
        return Method("bits", lambda m, b: quantize_model(m, b, granularity=granularity, group_size=group), 2, 8, 1, 8,
                      integer=True, size_bytes=lambda m, b: model_bytes(m, b, granularity=granularity,
                                                                         group_size=group)["total"], simulated=True,
                      applies=(lambda m: _groups_fit(m, group)) if group else None)

    def int8(model: nn.Module, scheme: int) -> nn.Module:
        from lmlab.export import onnx_model

        return onnx_model(model, ("blockwise", "dynamic")[scheme])

    def onnx(model: nn.Module, bits: int) -> nn.Module:
        from lmlab.export import onnx_model

        return onnx_model(model, None if bits == 32 else "blockwise")

    fraction = dict(minimum=0.0, maximum=0.95, step=0.05, value=0.5)
    return {
        "quantize-channel": bits("channel"),
        "quantize-tensor": bits("tensor"),
        "quantize-group32": bits("group", 32),
        "quantize-step": Method("step Q", lambda m, q: quantize_model(m, step_Q=q), 1e-3, 0.5, 0.1, 0.02, log=True,
                                simulated=True),
        "magnitude-global": Method("sparsity", lambda m, s: magnitude_prune(m, s, "global"), simulated=True, **fraction),
        "magnitude-layer": Method("sparsity", lambda m, s: magnitude_prune(m, s, "layer"), simulated=True, **fraction),
        "mlp-units": Method("fraction removed", lambda m, s: prune_mlp(m, s), **fraction),
        "heads": Method("fraction removed", lambda m, s: prune_heads(m, s), **fraction),
        "low-rank": Method("rank", lambda m, r: low_rank(m, rank=r), 1, 1024, 1, 16, integer=True),
        "share": Method("bits", lambda m, b: share_weights(m, b), 1, 8, 1, 3, integer=True,
                        size_bytes=lambda m, b: share_weights(m, b).size_bytes, simulated=True),
        "int8": Method("scheme (0 blockwise, 1 dynamic)", int8, 0, 1, 1, 0, integer=True),
        "onnx": Method("bits (32 float32, 8 int8)", onnx, 8, 32, 24, 32, integer=True, choices=(8, 32)),
    }


def _groups_fit(model: nn.Module, group: int) -> str | None:
    """Why groups of ``group`` weights cannot split every quantized row of ``model``, or None if they can."""
    from lmlab.neural import weight_layers

    for layer in weight_layers(model):
        width = layer.matrix.shape[1]
        if width % group:
            return f"groups of {group} do not divide the {width} weights per row of layer {layer.name!r}"
    return None


METHODS: dict[str, Method] = _methods()
CPU_ONLY_METHODS = ("int8", "onnx")  # ONNX Runtime graphs on the CPU


def load_model(name: str, data_dir: str | Path = DATA_DIR):
    """Return (model, its tokenized corpus) for a shipped checkpoint name, or a chapter 01 n-gram fitted here.

    An n-gram (``NGRAM_MODELS``) is fitted on the King James training verses, tokenized as the GPTs are (once per
    process: a fitted n-gram is never modified, so later calls return the same one).
    Raises ValueError for an unknown name.
    """
    from lmlab.checkpoints import load_checkpoint

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
    from lmlab.ngram import NGramModel

    return NGramModel.fit(_tokenized(corpus, min_count), n=n)


@functools.lru_cache(maxsize=4)
def _tokenized(corpus: str, min_count: int):
    """A shipped corpus, split and tokenized: read once per process (a TokenizedCorpus is never modified)."""
    from lmlab.corpora import load_corpus, tokenize_corpus

    return tokenize_corpus(load_corpus(corpus), min_count=min_count)


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


def run(model_name: str, method: str | None = None, value: float | None = None, *, batch_size: int = 1,
        repeat: int = 30, documents: int | None = None, data_dir: str | Path = DATA_DIR, device: str = "cpu",
        threads: int | None = None) -> Result:
    """Load a model (``MODELS`` or ``NGRAM_MODELS``), compress it with ``METHODS[method]`` at ``value`` (or not
    at all), and measure it: one results row.

    Accuracy and perplexity are on the test split, or its first ``documents`` documents (the slice is named in
    the row's ``corpus``, e.g. ``"kjv test[:30]"``); latency is one prediction call on ``batch_size`` contexts
    from the middle of held-out documents. A method whose speed is simulated gives a row marked ``simulated``.
    Raises ValueError for an unknown model or method, a method on an n-gram, or a value outside the method's
    range. ``device`` ("cpu", "cuda", "auto"...) is where a neural model is scored and timed, on ``threads`` torch
    threads for the CPU's share of the work (default ``lmlab.runtime.default_threads()``).
    """
    from lmlab.lm import deep_contexts, evaluate, measure
    from lmlab.runtime import pick_device
    from lmlab.train import DOCUMENT_KINDS

    check_int("batch_size", batch_size, 1)
    check_documents(documents)
    if method is not None and method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {tuple(METHODS)}")
    if method is not None and model_name in NGRAM_MODELS:
        raise ValueError(f"method={method!r} compresses neural models; model={model_name!r} is an n-gram and "
                         "takes no method (use method=None)")
    if method is not None and model_name in RECURRENT_MODELS:
        raise ValueError(f"method={method!r} compresses the MLP's and the GPT's layers; model={model_name!r} is "
                         "recurrent (its nn.LSTM/nn.RNN gate matrices would stay uncompressed): use method=None")
    chosen = METHODS[method] if method else None
    on = pick_device(device)
    if on.type != "cpu" and (model_name in NGRAM_MODELS or method in CPU_ONLY_METHODS):
        raise ValueError(f"device={device!r}: {method or model_name!r} runs on the CPU only; use device='cpu'")
    setting = chosen.check(chosen.value if value is None else value) if chosen else None
    model, data = load_model(model_name, data_dir)
    scored = data if documents is None else data.head("test", documents)
    compressed = chosen.apply(model, setting) if chosen else model
    compressed = getattr(compressed, "model", compressed)
    if on.type != "cpu":
        compressed = compressed.to(on)
    contexts, targets = scored.examples("test", model.context_size)
    if getattr(model, "kind", None) in DOCUMENT_KINDS:  # a GPT or a recurrent model: one pass per document
        scores = compressed.evaluate_documents(scored, "test")
    else:
        scores = evaluate(compressed, contexts, targets)
    if model_name not in CHARACTER_MODELS:  # word models are timed on contexts with a dozen words or more before them
        middle = deep_contexts(contexts, data.vocab.bos_id, words=min(12, model.context_size))
        contexts, targets = contexts[middle], targets[middle]
    row = measure(compressed, contexts[:max(batch_size, 8)], targets[:max(batch_size, 8)], name=model_name,
                  technique=method or "uncompressed", setting=f"{chosen.label} {setting:g}" if chosen else "",
                  batch_size=batch_size, repeat=repeat, corpus=slice_name(data.corpus.name, documents), scores=scores,
                  device=on.type, threads=threads)
    if chosen and chosen.size_bytes:
        row = Result(**{**row.to_dict(), "size_mb": chosen.size_bytes(model, setting) / 1e6})
    return Result(**{**row.to_dict(), "simulated": bool(chosen and chosen.simulated)})
