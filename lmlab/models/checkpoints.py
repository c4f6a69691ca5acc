"""Save and load lmlab's neural models as safetensors plus a small JSON card. Never pickle.

Introduced in notebooks/02_neural_language_models.ipynb.

``NAME.safetensors`` holds the tensors; ``NAME.json`` holds the model config, the vocabulary, the
command and seed that trained it, and its final metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save

from lmlab.data.corpora import Vocab
from lmlab.measure.results import atomic_write_bytes, atomic_write_text
from lmlab.models.kinds import build_model, model_config
from lmlab.models.neural import NeuralLM


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """Return (tensors, card) paths for ``path`` given with or without a suffix."""
    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def save_checkpoint(model: NeuralLM, path: str | Path, card: dict, overwrite: bool = False) -> Path:
    """Write the model's tensors and its card atomically. Refuses to replace files unless ``overwrite``."""
    tensors_path, card_path = checkpoint_paths(path)
    for existing in (tensors_path, card_path):
        if existing.exists() and not overwrite:
            raise FileExistsError(f"path={str(existing)!r} exists; pass overwrite=True to replace it")
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    # Tied weights share storage; safetensors stores each tensor once, so drop the tied alias.
    state = _untie(state)
    full_card = {"config": model_config(model), "vocab": model.vocab.to_dict(), **card}
    atomic_write_bytes(tensors_path, save(state, metadata={"format": "pt"}))
    atomic_write_text(card_path, json.dumps(full_card, indent=1) + "\n")
    return tensors_path


def load_checkpoint(path: str | Path, device: str = "cpu") -> NeuralLM:
    """Load a model saved by ``save_checkpoint``, in eval mode. Its card is at ``model.card``.

    Raises FileNotFoundError if either file is missing, and ValueError if the tensors do not match
    the config in the card (a wrong, renamed or mixed-up file).
    """
    tensors_path, card_path = checkpoint_paths(path)
    for needed in (tensors_path, card_path):
        if not needed.is_file():
            raise FileNotFoundError(f"checkpoint file {str(needed)!r} is missing")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    config = dict(card["config"])
    kind = config.pop("kind")
    config.pop("vocab_size", None)
    model = build_model(kind, Vocab.from_dict(card["vocab"]), **config)
    state = load_file(tensors_path, device="cpu")
    expected = _untie(model.state_dict())
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        details = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                   "shape mismatch " + ", ".join(f"{k}: file {tuple(state[k].shape)} vs config "
                                                 f"{tuple(expected[k].shape)}" for k in wrong[:3]) if wrong else ""]
        raise ValueError(f"checkpoint {tensors_path.name} does not match its config in {card_path.name}: "
                         + "; ".join(d for d in details if d))
    model.load_state_dict(state, strict=False)  # tied aliases are filled by the tie itself
    model.card = card
    return model.to(device).eval()


def _untie(state: dict) -> dict:
    seen, out = {}, {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if tensor.data_ptr() and key in seen:
            continue
        seen[key] = name
        out[name] = tensor
    return out
