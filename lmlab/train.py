"""Training: a seeded loop with a progress bar and validation curves, and the presets that made data/.

Introduced in notebooks/02_neural_language_models.ipynb (checkpoints) and 03_gradient_descent.ipynb (the loop).
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmlab.descent import check_lr
from lmlab.corpora import TokenizedCorpus, batches, document_batches, load_corpus, tokenize_corpus
from lmlab.lm import evaluate
from lmlab.neural import IGNORE, NeuralLM, build_model
from lmlab.runtime import check_int, seed_everything, torch_threads

# The shipped checkpoints: python -m lmlab train PRESET reproduces data/PRESET.safetensors from scratch.
PRESETS: dict[str, dict] = {
    "mlp-names": dict(corpus="names", min_count=1, kind="mlp", model=dict(context_size=8, embed_dim=24, hidden_dim=256),
                      batch_size=256, epochs=4, lr=3e-3, weight_decay=0.0, warmup_steps=100),
    "gpt-small": dict(corpus="kjv", min_count=2, kind="gpt", model=dict(n_layer=2, n_embd=128, n_head=4, dropout=0.1),
                      batch_size=32, epochs=4, lr=3e-3, weight_decay=0.1, warmup_steps=200),
    "gpt-medium": dict(corpus="kjv", min_count=2, kind="gpt", model=dict(n_layer=3, n_embd=192, n_head=6, dropout=0.1),
                       batch_size=32, epochs=5, lr=2e-3, weight_decay=0.1, warmup_steps=200),
    "gpt-large": dict(corpus="kjv", min_count=2, kind="gpt", model=dict(n_layer=4, n_embd=256, n_head=8, dropout=0.15),
                      batch_size=32, epochs=6, lr=1.5e-3, weight_decay=0.1, warmup_steps=300),
}


@dataclass
class History:
    """Curves recorded while training: one entry per evaluation."""

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    valid_accuracy: list[float] = field(default_factory=list)
    elapsed_ms: list[float] = field(default_factory=list)  # wall-clock since the start, evaluations included
    train_ms: list[float] = field(default_factory=list)  # the same clock with the evaluations' time taken out


def train_model(
    model: NeuralLM,
    train_batches: Callable[[int], Iterable],
    *,
    steps: int,
    evaluate_fn: Callable[[NeuralLM], dict],
    lr: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    clip_norm: float | None = 1.0,
    loss_fn: Callable[[NeuralLM, object], torch.Tensor] | None = None,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    eval_every: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> History:
    """Train for ``steps`` optimizer steps on ``train_batches(epoch)``, evaluating every ``eval_every`` steps.

    θ ← θ − α ∇J(θ) with AdamW at learning rate ``lr`` by default; the learning rate warms up linearly over
    ``warmup_steps``, then follows a cosine from ``lr`` down to ``lr / 10``. Or pass ``optimizer``: any object
    with ``zero_grad()`` and ``step()`` (lmlab.descent's hand-written ones included), which keeps its own
    learning rate (``lr`` must then be None); only a ``torch.optim`` optimizer gets the schedule.
    Before every step the gradient is **clipped** to a norm of at most ``clip_norm`` (g ← g · min(1, c / ‖g‖),
    which keeps one bad batch from throwing the weights far); None turns clipping off.
    ``evaluate_fn(model)`` returns a dict with "nll_nats" and "accuracy"; the history records, at each evaluation,
    the milliseconds since the start with (``elapsed_ms``) and without (``train_ms``) the evaluations. The loss of a
    batch is ``model.loss(batch)`` unless ``loss_fn(model, batch)`` is given (distillation uses that).
    Raises ValueError for ``lr`` missing, <= 0 or given with an optimizer, ``clip_norm`` <= 0, or ``steps`` < 1.
    """
    if optimizer is None:
        check_lr(lr)
    elif lr is not None:
        raise ValueError(f"lr={lr!r} is not used with a given optimizer; set the learning rate on the optimizer")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm={clip_norm!r} is out of range; use a norm > 0, or None for no clipping")
    check_int("steps", steps, 1)
    seed_everything(seed)
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = (torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, warmup_steps))
                if isinstance(optimizer, torch.optim.Optimizer) else None)
    history = History()
    start = time.perf_counter()
    evaluating_ms = 0.0
    model.train()
    stream = _endless(train_batches)
    running = []
    for step in tqdm(range(1, steps + 1), disable=not progress, desc="training", mininterval=2):
        batch = next(stream)
        loss = model.loss(batch) if loss_fn is None else loss_fn(model, batch)
        optimizer.zero_grad()
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        running.append(loss.item())
        if step % eval_every == 0 or step == steps:
            before_eval = time.perf_counter()
            model.eval()
            scores = evaluate_fn(model)
            model.train()
            history.train_ms.append((before_eval - start) * 1e3 - evaluating_ms)
            evaluating_ms += (time.perf_counter() - before_eval) * 1e3
            history.step.append(step)
            history.train_loss.append(sum(running) / len(running))
            history.valid_loss.append(scores["nll_nats"])
            history.valid_accuracy.append(scores["accuracy"])
            history.elapsed_ms.append((time.perf_counter() - start) * 1e3)
            running = []
    model.eval()
    return history


def compare_optimizers(
    build: Callable[[], NeuralLM],
    optimizers: dict[str, Callable[[list[torch.Tensor]], object]],
    train_batches: Callable[[int, int], Iterable],
    *,
    steps: int,
    evaluate_fn: Callable[[NeuralLM], dict],
    seeds: Sequence[int] = (0, 1, 2),
    clip_norm: float | None = 1.0,
    eval_every: int = 100,
) -> dict[str, list[History]]:
    """Train a fresh model per optimizer and seed with ``train_model``; return each optimizer's histories, one per seed.

    ``optimizers`` maps a label to ``make(parameters) -> optimizer``. Seed s fixes the initial weights
    (``build()`` runs right after seeding) and the batch order (``train_batches(s, epoch)``), the same for every
    optimizer, so under one seed the optimizers differ only in the steps they take. The seeds are the outer loop
    (every optimizer under seed 0, then under seed 1, ...), so a slow spell on a shared machine falls on all of
    them alike. Every run clips the gradient to ``clip_norm`` (None: no clipping).
    Introduced in notebooks/03_gradient_descent.ipynb.
    Raises ValueError for no optimizers, no seeds or a repeated seed (and whatever ``train_model`` refuses).
    """
    if not optimizers:
        raise ValueError("optimizers is empty; give at least one label -> make(parameters)")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={tuple(seeds)!r} must be one or more different seeds")
    runs: dict[str, list[History]] = {label: [] for label in optimizers}
    for seed in seeds:
        for label, make in optimizers.items():
            seed_everything(seed)
            model = build()
            runs[label].append(train_model(
                model, lambda epoch, seed=seed: train_batches(seed, epoch), steps=steps, evaluate_fn=evaluate_fn,
                optimizer=make(list(model.parameters())), clip_norm=clip_norm, eval_every=eval_every, seed=seed,
                progress=False))
    return runs


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _endless(train_batches: Callable[[int], Iterable]) -> Iterator:
    epoch = 0
    while True:
        yielded = False
        for batch in train_batches(epoch):
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("train_batches gave no batches: the training split is empty")
        epoch += 1


def training_data(model: NeuralLM, data: TokenizedCorpus, batch_size: int, seed: int = 0,
                  valid_documents: int | None = None) -> tuple[Callable[[int], Iterable], Callable[[NeuralLM], dict], int]:
    """Return (train_batches, evaluate_fn, batches per epoch) for training ``model`` on ``data``, for train_model.

    A GPT reads whole documents (verses); an MLP reads (context, next token) pairs. Batches are
    shuffled with a seed per epoch. ``evaluate_fn`` scores the validation split, or only its first
    ``valid_documents`` documents (a quick, fixed slice).
    """
    check_int("batch_size", batch_size, 1)
    valid = data if valid_documents is None else data.head("valid", valid_documents)
    if model.kind == "gpt":
        per_epoch = math.ceil(len(data.ids["train"]) / batch_size)

        def train_batches(epoch):
            return document_batches(data, "train", batch_size, max_len=model.config.n_positions, shuffle=True,
                                    seed=seed * 1000 + epoch)

        def evaluate_fn(m):
            return m.evaluate_documents(valid, "valid")
    else:
        contexts, targets = data.examples("train", model.context_size)
        pairs = valid.examples("valid", model.context_size)
        per_epoch = math.ceil(len(targets) / batch_size)

        def train_batches(epoch):
            return batches(contexts, targets, batch_size, shuffle=True, seed=seed * 1000 + epoch)

        def evaluate_fn(m):
            return evaluate(m, *pairs)
    return train_batches, evaluate_fn, per_epoch


def fine_tune(model: NeuralLM, data: TokenizedCorpus, steps: int, lr: float = 1e-3, batch_size: int = 32,
              seed: int = 0, eval_every: int | None = None, valid_documents: int | None = 200,
              progress: bool = False) -> History:
    """Train ``model`` in place for a few ``steps`` on ``data`` (e.g. to recover after pruning); return the curves.

    AdamW with a short warm-up and a cosine decay (``train_model``); validation on the first
    ``valid_documents`` validation documents. Introduced in notebooks/05_pruning_and_low_rank.ipynb.
    Raises ValueError for steps < 1, lr <= 0 or batch_size < 1.
    """
    train_batches, evaluate_fn, _ = training_data(model, data, batch_size, seed, valid_documents)
    return train_model(model, train_batches, steps=steps, lr=lr, evaluate_fn=evaluate_fn,
                       warmup_steps=min(20, steps // 5), eval_every=eval_every or steps, seed=seed, progress=progress)


def distillation_loss(teacher: NeuralLM, temperature: float = 2.0, alpha: float = 0.5
                      ) -> Callable[[NeuralLM, object], torch.Tensor]:
    """Return loss_fn(student, batch) for ``train_model``: learn from a teacher's soft targets and the data.

    J = α · T² · KL(softmax(z_teacher / T) ‖ softmax(z_student / T)) + (1 − α) · cross-entropy(z_student, y).
    A temperature T > 1 softens both distributions so the student also learns which wrong answers the
    teacher found plausible; T² keeps that term's gradients on the scale of the cross-entropy's.
    Raises ValueError for T <= 0 or α outside [0, 1].
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is out of range; use a number > 0")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha!r} is out of range; use a number in [0, 1]")
    teacher.eval()

    def loss_fn(student: NeuralLM, batch) -> torch.Tensor:
        logits, targets = student.batch_logits(batch)  # (tokens, vocab), (tokens,)
        with torch.no_grad():
            teacher_logits, _ = teacher.batch_logits(batch)
        real = targets != IGNORE
        soft = F.kl_div(F.log_softmax(logits[real] / temperature, -1), F.log_softmax(teacher_logits[real] / temperature, -1),
                        log_target=True, reduction="batchmean")
        return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(logits, targets, ignore_index=IGNORE)

    return loss_fn


def distill(student: NeuralLM, teacher: NeuralLM, data: TokenizedCorpus, steps: int, lr: float = 3e-3,
            batch_size: int = 32, temperature: float = 2.0, alpha: float = 0.5, seed: int = 0,
            eval_every: int | None = None, valid_documents: int | None = 200, progress: bool = False) -> History:
    """Train ``student`` in place against ``teacher``'s soft targets (``distillation_loss``); return the curves.

    Both must share a vocabulary. With ``alpha=0`` this is ordinary training on the data, the fair
    comparison for the same steps and seed. Introduced in notebooks/05_pruning_and_low_rank.ipynb.
    Raises ValueError for different vocabularies or bad settings.
    """
    if student.vocab != teacher.vocab:
        raise ValueError("student and teacher have different vocabularies; distillation compares their "
                         "next-token distributions, so they must share one")
    train_batches, evaluate_fn, _ = training_data(student, data, batch_size, seed, valid_documents)
    return train_model(student, train_batches, steps=steps, lr=lr, evaluate_fn=evaluate_fn,
                       loss_fn=distillation_loss(teacher, temperature, alpha), warmup_steps=min(20, steps // 5),
                       eval_every=eval_every or steps, seed=seed, progress=progress)


def preset_data(name: str) -> TokenizedCorpus:
    """Load and tokenize the corpus a preset trains on (the same split and vocabulary as chapter 01)."""
    preset = _preset(name)
    return tokenize_corpus(load_corpus(preset["corpus"]), min_count=preset["min_count"])


def train_preset(name: str, out: str, seed: int = 0, threads: int | None = None, epochs: float | None = None,
                 overwrite: bool = False, progress: bool = True) -> dict:
    """Train a preset from scratch and save it to ``out`` (safetensors + JSON card). Returns the card."""
    from lmlab.checkpoints import save_checkpoint

    preset = _preset(name)
    epochs = preset["epochs"] if epochs is None else epochs
    data = preset_data(name)
    with torch_threads(threads) as used_threads:
        seed_everything(seed)
        model = build_model(preset["kind"], data.vocab, **preset["model"])
        train_batches, evaluate_fn, per_epoch = training_data(model, data, preset["batch_size"], seed)
        steps = max(1, int(per_epoch * epochs))
        start = time.perf_counter()
        history = train_model(model, train_batches, steps=steps, lr=preset["lr"], evaluate_fn=evaluate_fn,
                              weight_decay=preset["weight_decay"], warmup_steps=preset["warmup_steps"],
                              eval_every=max(1, per_epoch // 4), seed=seed, progress=progress)
        train_s = time.perf_counter() - start
        final = evaluate_fn(model)
    card = {
        "preset": name, "corpus": preset["corpus"], "min_count": preset["min_count"], "seed": seed,
        "command": "python -m lmlab train " + " ".join(shlex.quote(a) for a in sys.argv[2:])
                   if sys.argv[1:2] == ["train"] else f"python -m lmlab train {name} --out {out} --seed {seed}",
        "training": {"epochs": epochs, "steps": steps, "batch_size": preset["batch_size"], "lr": preset["lr"],
                     "weight_decay": preset["weight_decay"], "warmup_steps": preset["warmup_steps"],
                     "threads": used_threads, "train_seconds": round(train_s, 1), "torch": torch.__version__},
        "final_valid": {k: round(v, 4) for k, v in final.items() if k != "tokens"},
        "history": {"step": history.step, "valid_loss": [round(v, 4) for v in history.valid_loss],
                    "valid_accuracy": [round(v, 4) for v in history.valid_accuracy]},
        "params": model.num_parameters(),
    }
    save_checkpoint(model, out, card, overwrite=overwrite)
    return card


def _preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not a preset; use one of {tuple(PRESETS)}")
    return PRESETS[name]
