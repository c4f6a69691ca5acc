"""Training: a seeded loop with a progress bar and validation curves, and the presets that made data/.

Introduced in notebooks/02_neural_language_models.ipynb (checkpoints) and 03_gradient_descent.ipynb (the loop).
"""

from __future__ import annotations

import copy
import math
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lmlab.data.corpora import TokenizedCorpus, batches, document_batches, load_corpus, tokenize_corpus
from lmlab.measure.plots import finish_axes
from lmlab.measure.runtime import check_int, device_name, seed_everything, torch_threads
from lmlab.measure.stats import Comparison, compare, paired_nll_interval, perplexity_interval
from lmlab.measure.timing import Stopwatch
from lmlab.models.checkpoints import save_checkpoint
from lmlab.models.kinds import build_model
from lmlab.models.lm import evaluate
from lmlab.models.neural import IGNORE, NeuralLM
from lmlab.models.protocols import DocumentModel
from lmlab.models.scoring import document_scores
from lmlab.train.descent import check_lr

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
    # Chapter 09's recurrent models: whole documents, like the GPTs (lmlab.models.recurrent).
    "lstm-kjv": dict(corpus="kjv", min_count=2, kind="rnn",
                     model=dict(cell="lstm", n_layer=1, embed_dim=256, hidden_dim=512, dropout=0.1),
                     batch_size=32, epochs=4, lr=3e-3, weight_decay=0.0, warmup_steps=200),
    "lstm-names": dict(corpus="names", min_count=1, kind="rnn",
                       model=dict(cell="lstm", n_layer=1, embed_dim=64, hidden_dim=128, n_positions=32, dropout=0.0),
                       batch_size=64, epochs=4, lr=3e-3, weight_decay=0.0, warmup_steps=100),
    "rnn-names": dict(corpus="names", min_count=1, kind="rnn",
                      model=dict(cell="rnn", n_layer=1, embed_dim=64, hidden_dim=128, n_positions=32, dropout=0.0),
                      batch_size=64, epochs=4, lr=3e-3, weight_decay=0.0, warmup_steps=100),
}
Model = TypeVar("Model", bound=nn.Module)


class Stepper(Protocol):
    """What training asks of an optimizer: a ``torch.optim`` one or lmlab.train.descent's hand-written ones."""

    def zero_grad(self) -> None: ...

    def step(self) -> object: ...


@dataclass
class History:
    """Curves recorded while training: one entry per evaluation."""

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    valid_accuracy: list[float] = field(default_factory=list)
    elapsed_ms: list[float] = field(default_factory=list)  # wall-clock since the start, evaluations included
    train_ms: list[float] = field(default_factory=list)  # the same clock with the evaluations' time taken out

    def add_evaluation(self, step: int, train_losses: Sequence[float], scores: dict, train_ms: float,
                       elapsed_ms: float) -> None:
        """Record one evaluation: the mean training loss since the last one, the validation scores and the clocks."""
        self.step.append(step)
        self.train_loss.append(sum(train_losses) / len(train_losses))
        self.valid_loss.append(scores["nll_nats"])
        self.valid_accuracy.append(scores["accuracy"])
        self.train_ms.append(train_ms)
        self.elapsed_ms.append(elapsed_ms)


def train_model(
    model: NeuralLM,
    train_batches: Callable[[int], Iterable],
    *,
    steps: int,
    evaluate_fn: Callable[[NeuralLM], dict],
    lr: float | None = None,
    optimizer: Stepper | None = None,
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
    with ``zero_grad()`` and ``step()`` (lmlab.train.descent's hand-written ones included), which keeps its own
    learning rate (``lr`` must then be None); only a ``torch.optim`` optimizer gets the schedule.
    Before every step the gradient is **clipped** to a norm of at most ``clip_norm`` (g ← g · min(1, c / ‖g‖),
    which keeps one bad batch from throwing the weights far); None turns clipping off.
    ``evaluate_fn(model)`` returns a dict with "nll_nats" and "accuracy"; the history records, at each evaluation,
    the milliseconds since the start with (``elapsed_ms``) and without (``train_ms``) the evaluations. The loss of a
    batch is ``model.loss(batch)`` unless ``loss_fn(model, batch)`` is given (distillation uses that).
    Raises ValueError for ``lr`` missing, <= 0 or given with an optimizer, ``clip_norm`` <= 0, or ``steps`` < 1.
    """
    optimizer = _optimizer_for(model, optimizer, lr, weight_decay)
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm={clip_norm!r} is out of range; use a norm > 0, or None for no clipping")
    check_int("steps", steps, 1)
    seed_everything(seed)
    schedule = (torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, warmup_steps))
                if isinstance(optimizer, torch.optim.Optimizer) else None)
    history = History()
    training_ms = 0.0  # the steps' share of the clock, evaluations excluded
    model.train()
    stream = _endless(train_batches)
    running = []
    with Stopwatch() as clock:
        for step in tqdm(range(1, steps + 1), disable=not progress, desc="training", mininterval=2):
            loss = _step(model, optimizer, next(stream), _own_loss if loss_fn is None else loss_fn, clip_norm)
            if schedule is not None:
                schedule.step()
            running.append(loss.item())
            if step % eval_every == 0 or step == steps:
                training_ms += clock.lap()  # the steps since the previous evaluation
                model.eval()
                scores = evaluate_fn(model)
                model.train()
                clock.lap()  # the evaluation, which training_ms leaves out
                history.add_evaluation(step, running, scores, training_ms, clock.elapsed_ms())
                running = []
    model.eval()
    return history


def _optimizer_for(model: nn.Module, optimizer: Stepper | None, lr: float | None, weight_decay: float) -> Stepper:
    """Return ``optimizer``, or AdamW at ``lr`` without one; ValueError for lr missing, <= 0 or given with one."""
    if optimizer is None:
        if lr is None:
            raise ValueError("lr=None: give a learning rate (a finite number > 0), or an optimizer")
        return torch.optim.AdamW(model.parameters(), lr=check_lr(lr), weight_decay=weight_decay)
    if lr is not None:
        raise ValueError(f"lr={lr!r} is not used with a given optimizer; set the learning rate on the optimizer")
    return optimizer


def compare_optimizers(
    build: Callable[[], NeuralLM],
    optimizers: dict[str, Callable[[list[torch.Tensor]], Stepper]],
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
                model, partial(train_batches, seed), steps=steps, evaluate_fn=evaluate_fn,
                optimizer=make(list(model.parameters())), clip_norm=clip_norm, eval_every=eval_every, seed=seed,
                progress=False))
    return runs


def _step(model: Model, optimizer: Stepper, batch: Any, loss_fn: Callable[[Model, Any], torch.Tensor],
          clip_norm: float | None) -> torch.Tensor:
    """One optimizer step on ``batch``: the loss ``loss_fn(model, batch)``, its gradient clipped to ``clip_norm``
    (None: not clipped), the update. Returns the loss."""
    loss = loss_fn(model, batch)
    optimizer.zero_grad()
    loss.backward()
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return loss


def _own_loss(model: NeuralLM, batch: Any) -> torch.Tensor:
    """The model's own loss on ``batch``, ``model.loss(batch)``: what training minimizes without a ``loss_fn``."""
    return model.loss(batch)


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
                  valid_documents: int | None = None
                  ) -> tuple[Callable[[int], Iterable], Callable[[NeuralLM], dict], int]:
    """Return (train_batches, evaluate_fn, batches per epoch) for training ``model`` on ``data``, for train_model.

    A GPT or a recurrent model reads whole documents (verses, names); an MLP reads (context, next token) pairs.
    Batches are shuffled with a seed per epoch. ``evaluate_fn`` scores the validation split, or only its first
    ``valid_documents`` documents (a quick, fixed slice).
    """
    check_int("batch_size", batch_size, 1)
    valid = data if valid_documents is None else data.head("valid", valid_documents)
    if isinstance(model, DocumentModel):  # a GPT or a recurrent model: whole documents, one causal pass each
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
        soft = F.kl_div(F.log_softmax(logits[real] / temperature, -1),
                        F.log_softmax(teacher_logits[real] / temperature, -1), log_target=True, reduction="batchmean")
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
    preset = _preset(name)
    epochs = preset["epochs"] if epochs is None else epochs
    data = preset_data(name)
    with torch_threads(threads) as used_threads:
        seed_everything(seed)
        model = build_model(preset["kind"], data.vocab, **preset["model"])
        train_batches, evaluate_fn, per_epoch = training_data(model, data, preset["batch_size"], seed)
        steps = max(1, int(per_epoch * epochs))
        with Stopwatch() as clock:
            history = train_model(model, train_batches, steps=steps, lr=preset["lr"], evaluate_fn=evaluate_fn,
                                  weight_decay=preset["weight_decay"], warmup_steps=preset["warmup_steps"],
                                  eval_every=max(1, per_epoch // 4), seed=seed, progress=progress)
        train_s = clock.ms / 1e3
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


# --- Training against the clock: distillation at equal milliseconds -----------------------------------------------
# Introduced in notebooks/05_pruning_and_low_rank.ipynb. A distillation step also runs the teacher, so comparing it
# with training on the data alone at equal *steps* hides the teacher's cost; these compare at equal milliseconds.
# (Imported here rather than at the top, to keep this section self-contained.)


@dataclass
class TimedHistory:
    """A training run's evaluations against its training clock.

    ``train_ms[i]`` is the time spent in training steps (batch, forward, a teacher's forward if any, backward,
    update) before evaluation i, evaluations excluded; ``document_nll[i]`` and ``document_correct[i]`` hold each
    evaluated document's summed −ln P and right guesses then, over ``tokens`` predictions per document, on the
    slice named ``corpus``.
    """

    label: str
    corpus: str
    tokens: np.ndarray
    train_ms: list[float] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    document_nll: list[np.ndarray] = field(default_factory=list)
    document_correct: list[np.ndarray] = field(default_factory=list)

    @property
    def nll_nats(self) -> list[float]:
        """Mean −ln P per prediction at each evaluation (the validation loss)."""
        return [float(nll.sum() / self.tokens.sum()) for nll in self.document_nll]

    @property
    def perplexity(self) -> list[float]:
        return [math.exp(v) for v in self.nll_nats]

    @property
    def accuracy(self) -> list[float]:
        return [float(c.sum() / self.tokens.sum()) for c in self.document_correct]

    def perplexity_interval(self, i: int = -1, level: float = 0.95) -> tuple[float, float]:
        """A bootstrap interval over documents for the perplexity at evaluation ``i`` (``perplexity_interval``)."""
        return perplexity_interval(self.document_nll[i], self.tokens, level=level)

    def at_ms(self, ms: float) -> int:
        """Return the index of the last evaluation made at or before ``ms`` of training.

        Raises ValueError for a time before the first evaluation.
        """
        done = [i for i, t in enumerate(self.train_ms) if t <= ms]
        if not done:
            raise ValueError(f"ms={ms!r} is before the first evaluation at {self.train_ms[0]:g} ms")
        return done[-1]


def train_timed(model: NeuralLM, data: TokenizedCorpus, *, evaluation: TokenizedCorpus, budget_ms: float | None = None,
                steps: int | None = None, split: str = "test", corpus: str = "",
                loss_fn: Callable[[NeuralLM, object], torch.Tensor] | None = None, lr: float = 3e-3,
                batch_size: int = 16, evaluations: int = 6, clip_norm: float | None = 1.0, seed: int = 0,
                label: str = "") -> TimedHistory:
    """Train ``model`` in place for ``budget_ms`` milliseconds of training steps, or for ``steps`` steps; evaluate
    as it goes, against the training clock.

    θ ← θ − α ∇J(θ) with AdamW at a constant learning rate ``lr`` (no schedule: under a budget the number of steps
    is not known in advance), the gradient clipped to norm ``clip_norm`` as in ``train_model``, on seeded shuffled
    batches of ``data``'s training split; J is ``model.loss`` or ``loss_fn(model, batch)`` (e.g.
    ``distillation_loss``, whose teacher forward then counts in the clock). Only the steps are timed
    (``lmlab.measure.timing.Stopwatch``), not the evaluations. Under a budget a step is not started when the last step's
    duration says it would end past it. The model is scored on ``evaluation``'s ``split`` (``document_scores``)
    before training, each time another ``1 / evaluations`` of the budget (or of the steps) has passed, and at the
    end. A run by ``steps`` is repeatable (same seed, same numbers); one by ``budget_ms`` takes as many steps as
    the machine allows.
    Raises ValueError unless exactly one of budget_ms (a number > 0) and steps (>= 1) is given, and for
    evaluations < 1, lr <= 0 or batch_size < 1.
    """
    _check_budget(budget_ms, steps)
    check_int("evaluations", evaluations, 1)
    check_lr(lr)
    train_batches, _, _ = training_data(model, data, batch_size, seed)
    seed_everything(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    first = document_scores(model, evaluation, split)
    history = TimedHistory(label, corpus, first["tokens"])

    def record(ms: float, step: int) -> None:
        scores = first if step == 0 else document_scores(model, evaluation, split)
        history.train_ms.append(ms)
        history.step.append(step)
        history.document_nll.append(scores["nll_nats"])
        history.document_correct.append(scores["correct"])
        model.train()

    record(0.0, 0)
    stream = _endless(train_batches)
    elapsed_ms, last_ms, step = 0.0, 0.0, 0
    total = budget_ms if budget_ms is not None else steps  # the budget in ms, or the number of steps
    assert total is not None  # exactly one of budget_ms and steps is given (checked above)
    every = total / evaluations
    model.train()
    while (elapsed_ms + last_ms <= budget_ms) if budget_ms is not None else step < total:
        with Stopwatch() as one_step:
            _step(model, optimizer, next(stream), _own_loss if loss_fn is None else loss_fn, clip_norm)
        last_ms = one_step.ms
        elapsed_ms += last_ms
        step += 1
        progress = elapsed_ms if budget_ms is not None else step
        if progress // every > (history.train_ms[-1] if budget_ms is not None else history.step[-1]) // every:
            record(elapsed_ms, step)
    if history.step[-1] != step:
        record(elapsed_ms, step)
    model.eval()
    return history


def _check_budget(budget_ms: float | None, steps: int | None) -> None:
    """Raise ValueError unless exactly one of ``budget_ms`` (a finite number > 0) and ``steps`` (>= 1) is given."""
    if (budget_ms is None) == (steps is None):
        raise ValueError(f"budget_ms={budget_ms!r}, steps={steps!r}: give exactly one of them")
    if budget_ms is not None and (isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float))
                                  or not 0 < budget_ms < math.inf):
        raise ValueError(f"budget_ms={budget_ms!r} is out of range; use a finite number of milliseconds > 0")
    if steps is not None:
        check_int("steps", steps, 1)


def distillation_race(student: NeuralLM, teacher: NeuralLM, data: TokenizedCorpus, budget_ms: float, *,
                      evaluation: TokenizedCorpus, split: str = "test", corpus: str = "", teacher_name: str = "teacher",
                      alpha: float = 0.9, temperature: float = 1.0, **settings) -> dict[str, TimedHistory]:
    """Train two copies of ``student`` for the same ``budget_ms`` of training: on the data alone, and distilled.

    Both start from the same weights and see the same batches in the same order, at the same settings
    (``train_timed``); the distilled copy's loss is ``distillation_loss(teacher, temperature, alpha)``, so each of
    its steps also pays for the teacher's forward and it takes fewer steps in the same milliseconds. ``student`` is
    left untouched. Returns {"data alone": ..., "distilled from <teacher_name>": ...}.
    Raises ValueError for different vocabularies or bad settings.
    """
    if student.vocab != teacher.vocab:
        raise ValueError("student and teacher have different vocabularies; distillation compares their "
                         "next-token distributions, so they must share one")
    loss_fn = distillation_loss(teacher, temperature, alpha)
    runs = {}
    for label, loss in (("data alone", None), (f"distilled from {teacher_name}", loss_fn)):
        runs[label] = train_timed(copy.deepcopy(student), data, evaluation=evaluation, budget_ms=budget_ms,
                                  split=split, corpus=corpus, loss_fn=loss, label=label, **settings)
    return runs


def nll_difference(first: TimedHistory, second: TimedHistory, at_ms: float | None = None, level: float = 0.95,
                   resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Compare two runs at equal training milliseconds: Δ = loss(first) − loss(second), in nats per prediction.

    Each run is read at its last evaluation at or before ``at_ms`` (default: its final one; two runs given the
    same ``budget_ms`` end within one step of it). Both were scored on the same documents, so the interval is
    ``paired_nll_interval``'s paired bootstrap over documents. Δ < 0 means ``first`` is ahead (a lower loss); the
    gap is beyond the noise of the slice when the interval excludes 0. Returns {"difference", "low", "high",
    "first_ms", "second_ms", "first_step", "second_step"}.
    Raises ValueError for runs scored on different documents, a level outside (0, 1) or resamples < 100.
    """
    if first.tokens.shape != second.tokens.shape or not np.array_equal(first.tokens, second.tokens):
        raise ValueError("first and second were scored on different documents; compare runs on the same slice")
    i, j = (-1, -1) if at_ms is None else (first.at_ms(at_ms), second.at_ms(at_ms))
    difference, low, high = paired_nll_interval(first.document_nll[i], second.document_nll[j], first.tokens,
                                                level, resamples, seed)
    return {"difference": difference, "low": low, "high": high, "first_ms": first.train_ms[i],
            "second_ms": second.train_ms[j], "first_step": first.step[i], "second_step": second.step[j]}


def describe_race(first: TimedHistory, second: TimedHistory, level: float = 0.95) -> str:
    """Say which of two runs is ahead at equal training milliseconds, by how much, and whether beyond the noise.

    Reads ``nll_difference(first, second)``: the gap in nats per prediction with its paired bootstrap interval over
    documents, and the perplexity ratio exp(|Δ|). "within the noise of the slice" when the interval holds 0.
    """
    gap = nll_difference(first, second, level=level)
    ahead, behind = (second, first) if gap["difference"] > 0 else (first, second)
    found = Comparison(gap["difference"], gap["low"], gap["high"], paired=True)  # the one rule: the interval holds 0
    noise = "within the noise of the slice" if found.within_noise else "beyond the noise of the slice"
    return (f"after {gap['first_ms']:.0f} and {gap['second_ms']:.0f} ms of training ({gap['first_step']} and "
            f"{gap['second_step']} steps): {ahead.label} is ahead of {behind.label} by {abs(gap['difference']):.3f} "
            f"nats per prediction ({level:.0%} interval of {first.label} minus {second.label}: {gap['low']:+.3f} to "
            f"{gap['high']:+.3f}), a perplexity {math.exp(abs(gap['difference'])):.2f}× lower, {noise} "
            f"({first.corpus or 'the evaluation slice'})")


def race_plot(runs: dict[str, TimedHistory], references: dict[str, float] | None = None, title: str = "",
              ax=None, level: float = 0.95):
    """Plot each run's perplexity against its training milliseconds, with bootstrap bands.

    The band at each evaluation is ``TimedHistory.perplexity_interval`` (documents resampled). ``references`` maps
    a name to a perplexity on the same slice (e.g. a unigram's, the teacher's): drawn as a dashed line when it lies
    near the runs' range, else named in the legend with its value, so that a far reference does not squash the
    curves. Returns the figure. Raises ValueError for no runs.
    """
    import matplotlib.pyplot as plt


    if not runs:
        raise ValueError("runs is empty: give at least one TimedHistory to plot")
    if ax is None:
        fig, ax = plt.subplots(figsize=(12, 6))
    else:
        fig = ax.figure
    lowest, highest = math.inf, 0.0
    for label, run in runs.items():
        bands = np.array([run.perplexity_interval(i, level) for i in range(len(run.train_ms))])  # (evaluations, 2)
        line, = ax.plot(run.train_ms, run.perplexity, "o-", lw=2.5, ms=7, label=f"{label} ({run.step[-1]} steps)")
        ax.fill_between(run.train_ms, bands[:, 0], bands[:, 1], color=line.get_color(), alpha=0.15)
        lowest, highest = min(lowest, bands.min()), max(highest, bands.max())
    styles = iter(["--", ":", "-."])
    for name, value in (references or {}).items():
        if lowest / 1.5 <= value <= highest * 1.5:
            ax.axhline(value, color="black", ls=next(styles, "--"), lw=1.3, label=f"{name}: {value:.1f}")
        else:
            ax.plot([], [], " ", label=f"{name}: {value:.1f} ({'below' if value < lowest else 'above'} this axis)")
    corpus = next(iter(runs.values())).corpus
    threads = torch.get_num_threads()
    finish_axes(ax, "training time (ms; the teacher's forward included, evaluations excluded)",
                f"perplexity on {corpus or 'the slice'} (lower is better)", f"{title}\n{device_name('cpu')}, "
                f"{threads} thread{'s' if threads != 1 else ''}; bands: {level:.0%} bootstrap over documents")
    return fig


# --- Distillation at equal arithmetic, over several batch orders -------------------------------------------------
# Introduced in notebooks/05_pruning_and_low_rank.ipynb. Counted in steps, so the numbers repeat run to run.


def distillation_trials(student: NeuralLM, teacher: NeuralLM, data: TokenizedCorpus, *, steps: int, data_steps: int,
                        evaluation: TokenizedCorpus, seeds: Sequence[int] = (1, 2, 3),
                        temperatures: Sequence[float] = (1.0, 2.0), alpha: float = 0.9, split: str = "test",
                        **settings) -> pd.DataFrame:
    """Race copies of ``student``: ``data_steps`` on the data alone against ``steps`` distilled, once per seed.

    For each seed (the batch order) one copy trains on the data alone for ``data_steps`` steps, scored every
    ``steps`` steps, and one copy per temperature T trains ``steps`` steps on ``distillation_loss(teacher, T,
    alpha)``, on the same batches in the same order (``train_timed`` by steps, so a rerun gives the same numbers).
    Each distilled copy is compared, paired over the evaluation documents (``lmlab.measure.stats.compare``), with
    the data-alone copy at equal steps and at its end (choose ``data_steps`` so that it costs what ``steps``
    distilled steps cost). Returns one row per seed and temperature: seed, T, steps, data_steps, the three
    losses in nats per prediction, and for "equal steps" and "end" Δ = distilled − data alone with its interval
    (Δ, low, high) and verdict. ``student`` is left untouched.
    Raises ValueError for different vocabularies, data_steps not a multiple of steps, or no seeds or temperatures.
    """
    if student.vocab != teacher.vocab:
        raise ValueError("student and teacher have different vocabularies; distillation compares their "
                         "next-token distributions, so they must share one")
    check_int("steps", steps, 1)
    check_int("data_steps", data_steps, steps)
    if data_steps % steps:
        raise ValueError(f"data_steps={data_steps!r} is out of range; use a multiple of steps={steps!r}, so that "
                         "the data-alone copy is scored at equal steps too")
    if not seeds or not temperatures:
        raise ValueError(f"seeds={seeds!r}, temperatures={temperatures!r}: give at least one of each")
    rows = []
    for seed in seeds:
        plain = train_timed(copy.deepcopy(student), data, evaluation=evaluation, steps=data_steps, split=split,
                            evaluations=data_steps // steps, seed=seed, **settings)
        at_steps = plain.step.index(steps)
        for temperature in temperatures:
            taught = train_timed(copy.deepcopy(student), data, evaluation=evaluation, steps=steps, split=split,
                                 evaluations=1, seed=seed, loss_fn=distillation_loss(teacher, temperature, alpha),
                                 **settings)
            row: dict[str, Any] = {"seed": seed, "T": temperature, "steps": steps, "data_steps": data_steps,
                   "distilled": taught.nll_nats[-1], "data, equal steps": plain.nll_nats[at_steps],
                   "data, end": plain.nll_nats[-1]}
            for name, i in (("equal steps", at_steps), ("end", -1)):
                found = compare(taught.document_nll[-1], plain.document_nll[i], taught.tokens)
                row |= {f"Δ {name}": found.delta, f"low {name}": found.low, f"high {name}": found.high,
                        f"verdict {name}": found.verdict}
            rows.append(row)
    return pd.DataFrame(rows)


def describe_trials(trials: pd.DataFrame) -> list[str]:
    """One line per temperature: in how many seeds the distilled copy's loss was lower, higher or within noise of
    the data-alone copy's, at equal steps and at the data-alone copy's end (``distillation_trials``' verdicts)."""
    lines = []
    for temperature, part in trials.groupby("T", sort=False):
        said = []
        for name in ("equal steps", "end"):
            counts = part[f"verdict {name}"].map(lambda v: v.split(",")[0] if v[0] in "hl" else "within noise"
                                                 ).value_counts()
            found = ", ".join(f"{word} in {counts[word]}" for word in ("lower", "within noise", "higher")
                              if word in counts)
            when = (f"at equal steps ({part['steps'].iloc[0]})" if name == "equal steps" else
                    f"against {part['data_steps'].iloc[0]} data-alone steps")
            said.append(f"{when}: loss {found} of {len(part)} seeds")
        lines.append(f"distilled at T = {temperature:g}: " + "; ".join(said))
    return lines
