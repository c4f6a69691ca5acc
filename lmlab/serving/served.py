"""The models the chat server serves: a registry name and a format become a decode loop and a chat prompt.

Introduced in notebooks/07_realtime_pipeline.ipynb. SmolLM2-135M-Instruct speaks through its chat template; a
shipped GPT, which has none, reads the messages' contents joined by spaces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmlab.compress.prune import prune_mlp
from lmlab.inference.decode import CausalLM, as_causal_lm
from lmlab.models.registry import load_model, model_entry, names

# eager PyTorch, ONNX Runtime float32 / int8, MLP units pruned, and lmlab's fused graph (Llama-family models only)
FORMATS = ("float32", "onnx", "int8", "pruned", "fused", "fused-int8", "fused-int4")
BACKEND_OF = {"float32": "eager", "onnx": "onnx", "int8": "onnx-int8", "pruned": "eager", "fused": "fused",
              "fused-int8": "fused-int8", "fused-int4": "fused-int4"}
SERVED_MODELS = names("llm") + names("gpt")  # the registry's models with a decode loop: SmolLM2 first (the default)
SERVED_NAMES = {"smollm2": "SmolLM2-135M-Instruct"}  # the id a client sees, where it is not the registry name


@dataclass
class ServedModel:
    """A model as the server offers it: its id, its decode loop, and how messages become token ids."""

    id: str
    aliases: tuple[str, ...]
    lm: CausalLM
    format: str
    to_ids: Callable[[list[dict]], tuple[list[int], int]]  # messages -> (prompt ids, shared prefix length)


def load_served(model: str = "smollm2", format: str = "float32", prune_fraction: float = 0.3) -> ServedModel:
    """Load a model for serving: SmolLM2-135M-Instruct with its chat template, or a shipped GPT.

    A GPT has no chat template: its prompt is the messages' contents joined by spaces. ``format`` picks the
    path: "float32" (eager PyTorch), "onnx" (ONNX Runtime float32), "int8" (ONNX Runtime, lmlab's blockwise
    int8, chapter 04), "pruned" (``prune_fraction`` of the MLP units removed, chapter 05), "fused", "fused-int8",
    "fused-int4" (lmlab's fused decoder graph, chapter 06; SmolLM2 only).
    Raises ValueError for an unknown model or format.
    """
    entry = model_entry(model, SERVED_MODELS, "is not served")
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is unknown; use one of {FORMATS}")
    source, tokenizer = load_model(model)
    tokenizer = tokenizer if entry.kind == "llm" else None  # a GPT's second part is its corpus: it has no template
    if format == "pruned":
        source = getattr(prune_mlp(source, prune_fraction), "model", source)
    lm = as_causal_lm(source, tokenizer, name=model)
    name = SERVED_NAMES.get(model, model)
    served_id = name if format == "float32" else f"{name}-{format}"
    return ServedModel(served_id, (model, name), lm, format, _prompt_ids(lm, tokenizer))


def _prompt_ids(lm: CausalLM, tokenizer) -> Callable[[list[dict]], tuple[list[int], int]]:
    """messages -> (prompt ids, the length of the system message's ids when they start the prompt, else 0)."""

    def to_ids(messages: list[dict]) -> tuple[list[int], int]:
        system = [m for m in messages[:1] if m["role"] == "system"]
        if tokenizer is not None:
            ids = chat_template_ids(tokenizer, messages, generation=True)
            prefix = chat_template_ids(tokenizer, system, generation=False) if system else []
        else:
            ids = lm.encode(" ".join(m["content"] for m in messages))
            prefix = lm.encode(system[0]["content"]) if system else []
        return ids, len(prefix) if prefix and ids[:len(prefix)] == prefix and len(prefix) < len(ids) else 0

    return to_ids


def chat_template_ids(tokenizer, messages: list[dict], generation: bool) -> list[int]:
    """Return the token ids of ``messages`` through the tokenizer's chat template (with the assistant's cue when
    ``generation``)."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)
