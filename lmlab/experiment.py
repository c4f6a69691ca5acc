"""One experiment, one results row: a shipped model, compressed by a named method at a setting, scored and timed.

Introduced in notebooks/04_quantization.ipynb. ``METHODS`` names every compression technique of chapters 04 and
05 with the range of its setting; the panels offer them, and ``python -m lmlab measure`` runs one from the command
line:

    python -m lmlab measure gpt-large --method quantize-channel --value 4 --save rows.json

Each row is scored on the model's whole held-out test split (the GPTs on King James verses, the MLP on census
names) and timed predicting one context at ``batch_size`` (median and p90 ms), like the chapters' rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from lmlab.results import Result
from lmlab.runtime import check_int

MODELS = ("mlp-names", "gpt-small", "gpt-medium", "gpt-large")
DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # the shipped checkpoints, next to lmlab/


@dataclass(frozen=True)
class Method:
    """A compression technique as a function of one setting, and that setting's range.

    ``apply(model, value)`` returns the compressed copy (a model, or a ``lmlab.prune.Compressed``);
    ``size_bytes(model, value)``, if given, is the size the copy takes stored at that setting when its
    float32 tensors do not show it (fake quantization, weight sharing).
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

    def check(self, value: float) -> float:
        """Return ``value`` if it lies in the method's range, else raise ValueError naming it."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.minimum <= value <= self.maximum:
            raise ValueError(f"value={value!r} is out of range for {self.label}; use {self.minimum:g} to {self.maximum:g}")
        if self.integer and value != int(value):
            raise ValueError(f"value={value!r} must be a whole number of {self.label}")
        return int(value) if self.integer else float(value)


def _methods() -> dict[str, Method]:
    from lmlab.prune import low_rank, magnitude_prune, prune_heads, prune_mlp, share_weights
    from lmlab.quantize import model_bytes, quantize_model

    def bits(granularity: str, group: int | None = None) -> Method:
        return Method("bits", lambda m, b: quantize_model(m, b, granularity=granularity, group_size=group), 2, 8, 1, 8,
                      integer=True, size_bytes=lambda m, b: model_bytes(m, b, granularity=granularity,
                                                                         group_size=group)["total"])

    def int8(model: nn.Module, scheme: int) -> nn.Module:
        from lmlab.export import onnx_model

        return onnx_model(model, ("blockwise", "dynamic")[scheme])

    fraction = dict(minimum=0.0, maximum=0.95, step=0.05, value=0.5)
    return {
        "quantize-channel": bits("channel"),
        "quantize-tensor": bits("tensor"),
        "quantize-group32": bits("group", 32),
        "quantize-step": Method("step Q", lambda m, q: quantize_model(m, step_Q=q), 1e-3, 0.5, 0.1, 0.02, log=True),
        "magnitude-global": Method("sparsity", lambda m, s: magnitude_prune(m, s, "global"), **fraction),
        "magnitude-layer": Method("sparsity", lambda m, s: magnitude_prune(m, s, "layer"), **fraction),
        "mlp-units": Method("fraction removed", lambda m, s: prune_mlp(m, s), **fraction),
        "heads": Method("fraction removed", lambda m, s: prune_heads(m, s), **fraction),
        "low-rank": Method("rank", lambda m, r: low_rank(m, rank=r), 1, 1024, 1, 16, integer=True),
        "share": Method("bits", lambda m, b: share_weights(m, b), 1, 8, 1, 3, integer=True,
                        size_bytes=lambda m, b: share_weights(m, b).size_bytes),
        "int8": Method("scheme (0 blockwise, 1 dynamic)", int8, 0, 1, 1, 0, integer=True),
    }


METHODS: dict[str, Method] = _methods()


def load_model(name: str, data_dir: str | Path = DATA_DIR):
    """Return (model, its tokenized corpus) for a shipped checkpoint name. Raises ValueError for an unknown name."""
    from lmlab.checkpoints import load_checkpoint
    from lmlab.corpora import load_corpus, tokenize_corpus

    if name not in MODELS:
        raise ValueError(f"model={name!r} is not a shipped model; use one of {MODELS}")
    model = load_checkpoint(f"{data_dir}/{name}")
    return model, tokenize_corpus(load_corpus(model.card["corpus"]), min_count=model.card["min_count"])


def run(model_name: str, method: str | None = None, value: float | None = None, *, batch_size: int = 1,
        repeat: int = 30, data_dir: str | Path = DATA_DIR) -> Result:
    """Load a shipped model, compress it with ``METHODS[method]`` at ``value`` (or not at all), and measure it.

    Accuracy and perplexity are on the whole test split; latency is one prediction call on ``batch_size``
    contexts from the middle of held-out documents. Raises ValueError for an unknown model or method, or a
    value outside the method's range.
    """
    from lmlab.lm import deep_contexts, evaluate, measure
    from lmlab.neural import GPTLanguageModel

    check_int("batch_size", batch_size, 1)
    if method is not None and method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {tuple(METHODS)}")
    chosen = METHODS[method] if method else None
    setting = chosen.check(chosen.value if value is None else value) if chosen else None
    model, data = load_model(model_name, data_dir)
    compressed = chosen.apply(model, setting) if chosen else model
    compressed = getattr(compressed, "model", compressed)
    contexts, targets = data.examples("test", model.context_size)
    if isinstance(model, GPTLanguageModel):
        scores = compressed.evaluate_documents(data, "test")
        middle = deep_contexts(contexts, data.vocab.bos_id)
        contexts, targets = contexts[middle], targets[middle]
    else:
        scores = evaluate(compressed, contexts, targets)
    row = measure(compressed, contexts[:max(batch_size, 8)], targets[:max(batch_size, 8)], name=model_name,
                  technique=method or "uncompressed", setting=f"{chosen.label} {setting:g}" if chosen else "",
                  batch_size=batch_size, repeat=repeat, corpus=data.corpus.name, scores=scores)
    if chosen and chosen.size_bytes:
        row = Result(**{**row.to_dict(), "size_mb": chosen.size_bytes(model, setting) / 1e6})
    return row
