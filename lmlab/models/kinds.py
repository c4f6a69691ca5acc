"""The kinds of neural language model lmlab builds ("mlp", "gpt", "rnn") and their configurations.

Introduced in notebooks/02_neural_language_models.ipynb.
"""

from __future__ import annotations

from dataclasses import asdict

from lmlab.data.corpora import Vocab
from lmlab.models.neural import GPTConfig, GPTLanguageModel, MLPConfig, MLPLanguageModel, NeuralLM
from lmlab.models.recurrent import RecurrentConfig, RecurrentLanguageModel

MODEL_KINDS = {"mlp": (MLPLanguageModel, MLPConfig), "gpt": (GPTLanguageModel, GPTConfig),
               "rnn": (RecurrentLanguageModel, RecurrentConfig)}


def build_model(kind: str, vocab: Vocab, **config) -> NeuralLM:
    """Build a fresh "mlp", "gpt" or "rnn" model for ``vocab``; ``config`` fills MLPConfig, GPTConfig or
    lmlab.models.recurrent.RecurrentConfig."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind={kind!r} is not a model kind; use one of {tuple(MODEL_KINDS)}")
    model_cls, config_cls = MODEL_KINDS[kind]
    return model_cls(vocab, config_cls(vocab_size=len(vocab), **config))


def model_config(model: NeuralLM) -> dict:
    return {"kind": model.kind, **asdict(model.config)}
