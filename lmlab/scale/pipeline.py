"""Pipeline parallelism: each rank holds a stage of the GPT's layers, and micro-batches flow through the stages.

Introduced in notebooks/08_parallel_and_distributed.ipynb. A batch is cut into m **micro-batches**; stage r runs
its blocks on micro-batch i as soon as stage r − 1 has sent it (point-to-point send/recv, no collective), so the
stages work on different micro-batches at once. A stage that has nothing to do waits: the **bubble**, the share of
a step a stage spends idle while the pipeline fills and drains. With p equal stages and messages that cost
nothing it is (p − 1) / (m + p − 1) of the step, so more micro-batches shrink it.

Training needs a backward pass too, and the order of forwards and backwards is the **schedule**:

- GPipe: all m forwards, then all m backwards; a stage holds the activations of all m micro-batches at once.
- 1F1B: stage r runs p − r − 1 warm-up forwards, then alternates one forward and one backward, then drains the
  remaining backwards; it holds at most p − r micro-batches' activations. Same bubble, less memory.

``load_stage`` reads only a stage's own tensors from the checkpoint (``safetensors``' ``safe_open``), so a rank no
longer holds the whole model; ``pipeline_train_step`` runs one training step under either schedule and
``run_pipeline_training`` returns the rows that compare it with one process. Run it under torchrun:

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m lmlab.scale.distributed \
        --scheme gpipe 1f1b --model gpt-large --micro-batches 1 2 4 8
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import nn

from lmlab.data.corpora import TokenizedCorpus, Vocab, document_batches, load_corpus, tokenize_corpus
from lmlab.data.shipped import DATA_DIR
from lmlab.measure.runtime import check_int
from lmlab.measure.timing import Stopwatch, Timing
from lmlab.models.kinds import build_model
from lmlab.models.neural import GPTLanguageModel
from lmlab.models.registry import load_model, model_entry, names
from lmlab.models.scoring import IGNORE
from lmlab.scale.group import Clock, rank_and_world

if TYPE_CHECKING:  # transformers is imported where a model is built; the casts below only name its types
    from transformers import GPT2LMHeadModel

SCHEDULES = ("gpipe", "1f1b")

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (inputs, targets, mask), each (batch, time)


def stage_bounds(n_layer: int, world: int, head_cost: float = 0.0) -> list[tuple[int, int]]:
    """Split blocks 0..n_layer-1 into ``world`` contiguous stages of about equal cost; the last also runs the head.

    A block costs 1 and the output layer ``head_cost`` blocks (for a GPT, vocab · d / (12 d²) = vocab / (12 d),
    its weights over a block's); stage s ends at the block nearest (s + 1) · (n_layer + head_cost) / world.
    """
    target = (n_layer + head_cost) / world
    ends = [min(n_layer, max(0, round(target * (s + 1)))) for s in range(world - 1)] + [n_layer]
    ends = [max(ends[: i + 1]) for i in range(world)]  # never step back
    return list(zip([0] + ends[:-1], ends))


class Stage(nn.Module):
    """Stage ``rank`` of ``world``: GPT-2 blocks [start, stop), the embeddings on the first stage, ln_f and the
    output layer on the last. The output layer is tied to the token embedding wte, so the last stage holds wte too
    (as the output layer: logits = ln_f(h) · wteᵀ). Parameter names are the whole model's after ``transformer.``.
    ``load_stage`` returns it in eval mode, dropout off: a training step is deterministic and can equal one
    process's (gradients flow in eval mode too).
    """

    def __init__(self, hf: GPT2LMHeadModel, rank: int, world: int):
        super().__init__()
        gpt, cfg = hf.transformer, hf.config
        self.rank, self.world, self.config = rank, world, cfg
        self.start, self.stop = stage_bounds(cfg.n_layer, world, cfg.vocab_size / (12 * cfg.n_embd))[rank]
        self.first, self.last = rank == 0, rank == world - 1
        self.wte = gpt.wte if self.first or self.last else None
        self.wpe = gpt.wpe if self.first else None
        self.h = nn.ModuleDict({str(i): gpt.h[i] for i in range(self.start, self.stop)})
        self.ln_f = gpt.ln_f if self.last else None

    @classmethod
    def of_model(cls, model: GPTLanguageModel, rank: int = 0, world: int = 1) -> Stage:
        """The stage of a whole model that is already loaded (its modules shared, not copied)."""
        return cls(cast("GPT2LMHeadModel", model.gpt), rank, world)

    @property
    def parameter_bytes(self) -> int:
        """Bytes of the parameters this stage holds: Σ numel · element size."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters(), torch.empty(0)).device  # a stage may hold no parameters (gpt-small on 3)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings of (micro, time) ids: (micro, time, d). First stage only."""
        if self.wte is None or self.wpe is None:
            raise RuntimeError(f"stage {self.rank} holds no embeddings; stage 0 embeds")
        return self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device)[None, :])

    def blocks(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run this stage's blocks on (micro, time, d) hidden states, with the (micro, time) padding mask."""
        from transformers.masking_utils import create_causal_mask

        positions = torch.arange(h.shape[1], device=h.device)[None, :]  # (1, time)
        causal = create_causal_mask(config=self.config, inputs_embeds=h, attention_mask=mask, cache=None,
                                    position_ids=positions)
        for block in self.h.values():
            h = block(h, None, causal, position_ids=positions)
        return h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits = ln_f(h) · wteᵀ: (micro, time, vocab). Last stage only."""
        if self.ln_f is None or self.wte is None:
            raise RuntimeError(f"stage {self.rank} holds no output layer; the last stage does")
        return nn.functional.linear(self.ln_f(h), self.wte.weight)  # what the tied lm_head computes


def load_stage(model_name: str, rank: int, world: int) -> Stage:
    """Build stage ``rank`` of ``world`` of a shipped GPT, reading only its own tensors from data/NAME.safetensors.

    The model is first built on the meta device (shapes, no memory); the stage's modules then take their tensors
    from the file, one ``safe_open(...).get_tensor(key)`` per key: its blocks, wte and wpe on stage 0, ln_f and wte
    (the tied output layer) on the last. Compare ``stage.parameter_bytes`` with ``whole_parameter_bytes``.
    Raises ValueError for a model that is not a shipped GPT or a rank outside [0, world).
    """
    model_entry(model_name, names("gpt"), "is not a shipped GPT")
    check_int("world", world, 1)
    check_int("rank", rank, 0, world - 1)
    card = json.loads((DATA_DIR / f"{model_name}.json").read_text(encoding="utf-8"))
    config = {k: v for k, v in card["config"].items() if k not in ("kind", "vocab_size")}
    with torch.device("meta"):
        model = build_model(card["config"]["kind"], Vocab.from_dict(card["vocab"]), **config)
    stage = Stage.of_model(cast(GPTLanguageModel, model), rank, world)
    with safe_open(str(DATA_DIR / f"{model_name}.safetensors"), framework="pt") as tensors:
        state = {name: tensors.get_tensor(f"gpt.transformer.{name}") for name in stage.state_dict()}
    stage.load_state_dict(state, assign=True)  # the meta tensors are replaced by the file's
    return stage.eval()


def whole_parameter_bytes(model_name: str) -> int:
    """Bytes of a shipped GPT's parameters, read from its file's header (the tied wte counted once)."""
    model_entry(model_name, names("gpt"), "is not a shipped GPT")
    with safe_open(str(DATA_DIR / f"{model_name}.safetensors"), framework="pt") as tensors:
        return sum(math.prod(tensors.get_slice(k).get_shape()) * 4 for k in tensors.keys())  # float32


@functools.lru_cache(maxsize=2)
def stage_corpus(model_name: str) -> TokenizedCorpus:
    """The tokenized corpus a shipped GPT was trained on (as its card says), without loading the model; read once
    per process (a TokenizedCorpus is never modified)."""
    card = json.loads((DATA_DIR / f"{model_name}.json").read_text(encoding="utf-8"))
    return tokenize_corpus(load_corpus(card["corpus"]), min_count=card["min_count"])


def pipeline_forward(model: GPTLanguageModel | Stage, inputs: torch.Tensor, mask: torch.Tensor,
                     micro_batches: int = 4, clock: Clock | None = None) -> torch.Tensor | None:
    """Run the GPT as a pipeline, GPipe-style: stage r takes micro-batch i from rank r−1 and sends it to r+1.

    ``model`` is this rank's ``Stage`` (``load_stage``), or a whole model, of which it runs its stage. Rank 0
    embeds, every rank runs its blocks (``stage_bounds``), the last applies ln_f and the output layer and returns
    the logits, (batch, time, vocab); the other ranks return None. Every rank must hold the same ``inputs`` and
    ``mask`` (batch, time). Raises ValueError if micro_batches is not in [1, batch].
    """
    check_int("micro_batches", micro_batches, 1, inputs.shape[0])
    clock = clock or Clock()
    rank, world = rank_and_world()
    stage = model if isinstance(model, Stage) else Stage.of_model(model, rank, world)
    device = stage.device
    outputs, pending = [], []
    with torch.no_grad():
        for ids, m in zip(inputs.to(device).tensor_split(micro_batches), mask.to(device).tensor_split(micro_batches)):
            h = stage.embed(ids) if stage.first else _recv((*ids.shape, stage.config.n_embd), rank - 1, clock, device)
            h = stage.blocks(h, m)  # (micro, time, d)
            if stage.last:
                outputs.append(stage.head(h))  # (micro, time, vocab)
            else:
                pending.append(_send(h, rank + 1, clock))
        _wait(pending, clock)
    return torch.cat(outputs) if outputs else None


def _recv(shape: tuple[int, ...], src: int, clock: Clock, device: torch.device) -> torch.Tensor:
    message = torch.empty(*shape, device=device)
    with clock.comm():
        dist.recv(message, src=src)
    return message


def _send(tensor: torch.Tensor, dst: int, clock: Clock) -> tuple[torch.Tensor, dist.Work]:
    tensor = tensor.detach().contiguous()  # kept alive with its request until the send completes
    with clock.comm():
        request = dist.isend(tensor, dst=dst)
    if request is None:  # isend returns None only to a rank outside the group
        raise RuntimeError(f"rank {dist.get_rank()} is not in the process group it sends in")
    return tensor, request


def _wait(pending: list[tuple[torch.Tensor, dist.Work]], clock: Clock) -> None:
    with clock.comm():
        for _, request in pending:
            request.wait()
    pending.clear()


# --- training: two schedules ----------------------------------------------------------------------------------


def schedule_order(schedule: str, rank: int, world: int, micro_batches: int) -> list[tuple[str, int]]:
    """The order in which stage ``rank`` runs forwards ("F", i) and backwards ("B", i) of micro-batches 0..m−1.

    GPipe: F0 … F(m−1), then B0 … B(m−1). 1F1B: w = min(p − r − 1, m) warm-up forwards, then m − w pairs
    (F(w + j), Bj), then the last w backwards. Raises ValueError for an unknown schedule or a count out of range.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is unknown; use one of {SCHEDULES}")
    check_int("world", world, 1)
    check_int("rank", rank, 0, world - 1)
    check_int("micro_batches", micro_batches, 1)
    forwards = [("F", i) for i in range(micro_batches)]
    backwards = [("B", i) for i in range(micro_batches)]
    if schedule == "gpipe":
        return forwards + backwards
    warm = min(world - rank - 1, micro_batches)
    steady = [op for j in range(micro_batches - warm) for op in (forwards[warm + j], backwards[j])]
    return forwards[:warm] + steady + backwards[micro_batches - warm:]


def peak_activations(order: Sequence[tuple[str, int]]) -> int:
    """The most micro-batches whose activations a stage holds at once: max over the order of #F run − #B run."""
    held = peak = 0
    for kind, _ in order:
        held += 1 if kind == "F" else -1
        peak = max(peak, held)
    return peak


def bubble_predicted(stages: int, micro_batches: int) -> float:
    """The pipeline's idle share with equal stages and free messages: (p − 1) / (m + p − 1).

    Raises ValueError for a count below 1.
    """
    check_int("stages", stages, 1)
    check_int("micro_batches", micro_batches, 1)
    return (stages - 1) / (micro_batches + stages - 1)


class _Busy:
    """Sums the milliseconds a stage spends computing: ``with busy: ...`` around each forward and backward."""

    def __init__(self) -> None:
        self.ms = 0.0
        self._watch: Stopwatch | None = None

    def __enter__(self) -> _Busy:
        self._watch = Stopwatch().start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._watch is not None:
            self.ms += self._watch.elapsed_ms()


def pipeline_train_step(stage: Stage, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                        micro_batches: int = 4, schedule: str = "1f1b", clock: Clock | None = None) -> dict:
    """Run one training step's forwards and backwards through the pipeline under ``schedule``; gradients accumulate.

    Micro-batch i's activations go forward with send/recv, their gradients come back the same way. The loss is
    Σ token NLL over the whole batch / its N tokens: each micro-batch adds Σᵢ NLL / N, so the gradients equal one
    process's on the whole batch. Afterwards the first and last stages exchange and add their gradients of the
    tied wte (embedding on one, output layer on the other), so both hold the whole model's. Every rank must hold
    the same (batch, time) ``inputs``, ``targets`` (padding −100) and ``mask``.
    Returns {"loss": the step's loss on the last stage (nan elsewhere), "wall_ms", "busy_ms" (forwards and
    backwards; not send, recv or waiting), "communication_ms", "peak_activations" (the most micro-batches whose
    activations the stage held at once)}. Raises ValueError for micro_batches outside [1, batch] or an unknown
    schedule.
    """
    check_int("micro_batches", micro_batches, 1, inputs.shape[0])
    order = schedule_order(schedule, stage.rank, stage.world, micro_batches)
    clock, busy = clock or Clock(), _Busy()
    comm_before = clock.comm_ms
    device, rank = stage.device, stage.rank
    tokens = int((targets != IGNORE).sum())
    parts = list(zip(*(t.to(device).tensor_split(micro_batches) for t in (inputs, targets, mask))))
    held: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}  # micro-batch -> (input activation, output)
    pending: list[tuple[torch.Tensor, dist.Work]] = []
    loss, peak = 0.0, 0
    with Stopwatch() as wall:
        for kind, i in order:
            ids, tgt, m = parts[i]
            if kind == "F":
                x = None if stage.first else _recv((*ids.shape, stage.config.n_embd), rank - 1, clock, device)
                with busy:
                    if x is not None:
                        x.requires_grad_()
                    out = stage.blocks(stage.embed(ids) if x is None else x, m)  # (micro, time, d)
                    if stage.last:
                        logits = stage.head(out)  # (micro, time, vocab)
                        out = nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=IGNORE,
                                                          reduction="sum") / tokens
                if stage.last:
                    loss += float(out.detach())
                else:
                    pending.append(_send(out, rank + 1, clock))
                held[i] = (x, out)
                peak = max(peak, len(held))
            else:
                x, out = held.pop(i)
                grad = None if stage.last else _recv(tuple(out.shape), rank + 1, clock, device)
                with busy:
                    out.backward(grad)
                if x is not None and x.grad is not None:
                    pending.append(_send(x.grad, rank - 1, clock))
        _wait(pending, clock)
        _add_tied_gradients(stage, clock)
    return {"loss": loss if stage.last else float("nan"), "wall_ms": wall.ms, "busy_ms": busy.ms,
            "communication_ms": clock.comm_ms - comm_before, "peak_activations": peak}


def _add_tied_gradients(stage: Stage, clock: Clock) -> None:
    """First and last stage: grad(wte) = its embedding's gradient + its output layer's (one exchange each way)."""
    if stage.world == 1 or stage.wte is None or stage.wte.weight.grad is None:
        return
    grad = stage.wte.weight.grad
    other = stage.world - 1 if stage.first else 0
    incoming = torch.empty_like(grad)
    with clock.comm():
        request = dist.isend(grad.contiguous(), dst=other)
        dist.recv(incoming, src=other)
        if request is not None:
            request.wait()
    grad += incoming


# --- one row per schedule and micro-batch count, against one process ----------------------------------------


def run_pipeline_training(model_name: str = "gpt-large", schedule: str | Sequence[str] = SCHEDULES,
                          micro_batches: int | Sequence[int] = (1, 2, 4, 8), batch_size: int = 32,
                          repeat: int = 3) -> list[dict]:
    """Time training steps of a pipeline on every rank of the group; return one row per schedule × micro-batches.

    Each rank loads only its stage (``load_stage``); the step runs on one training batch of ``batch_size``
    documents, the first of ``document_batches(..., shuffle=True, seed=0)`` (unshuffled, the first batch holds the
    shortest documents, a few tokens each: too little work per micro-batch to show a pipeline). The last rank
    (it holds the loss) also loads the whole model and times one process's forward and
    backward on the same batch, the reference. Each row (the same on every rank): wall_ms = the slowest rank's
    median step; speedup = single_ms / wall_ms; bubble_predicted = (p − 1) / (m + p − 1); bubble_measured per
    rank = 1 − busy / wall (medians over the repeats: idle includes sending, receiving and waiting, so it exceeds
    the prediction by what messages cost); communication_ms per rank; peak_activations per rank; the loss against one
    process's (max_loss_diff) and the largest absolute gradient difference, every parameter gathered to the last
    rank (max_grad_diff); parameter_bytes per rank against whole_parameter_bytes.
    Raises ValueError for an unknown schedule or model, or a count out of range.
    """
    schedules = [schedule] if isinstance(schedule, str) else list(schedule)
    counts = [micro_batches] if isinstance(micro_batches, int) else list(micro_batches)
    for one in schedules or [""]:
        if one not in SCHEDULES:
            raise ValueError(f"schedule={one!r} is unknown; use one of {SCHEDULES}")
    check_int("batch_size", batch_size, 1)
    check_int("repeat", repeat, 1)
    rank, world = rank_and_world()
    stage = load_stage(model_name, rank, world)
    whole, data = load_model(model_name) if rank == world - 1 else (None, stage_corpus(model_name))
    batch = next(document_batches(data, "train", batch_size, max_len=stage.config.n_positions, shuffle=True, seed=0))
    for m in counts or [0]:
        check_int("micro_batches", m, 1, batch[0].shape[0])
    single = None if whole is None else _single_step(whole, batch, repeat)
    return [_training_row(stage, model_name, one, m, batch, single, repeat) for one in schedules for m in counts]


def _loss(logits: torch.Tensor, targets: torch.Tensor, tokens: int) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                       reduction="sum") / tokens


def _single_step(model: GPTLanguageModel, batch: Batch, repeat: int) -> dict:
    """One process: the whole model's forward and backward on the batch, timed (median of ``repeat`` after a warm-up);
    its loss and its gradients by the stages' parameter names."""
    model.eval()  # dropout off, as in the stages
    hf = cast("GPT2LMHeadModel", model.gpt)
    inputs, targets, mask = batch
    tokens = int((targets != IGNORE).sum())

    def step() -> float:
        model.zero_grad(set_to_none=True)
        loss = _loss(hf(input_ids=inputs, attention_mask=mask).logits, targets, tokens)
        loss.backward()
        return float(loss.detach())

    step()
    times = []
    for _ in range(repeat):
        with Stopwatch() as watch:
            loss = step()
        times.append(watch.ms)
    grads = {name.removeprefix("transformer."): p.grad for name, p in hf.named_parameters() if p.grad is not None}
    return {"single_ms": Timing.of(times).median_ms, "loss": loss, "grads": grads}


def _training_row(stage: Stage, model_name: str, schedule: str, micro_batches: int, batch: Batch,
                  single: dict | None, repeat: int) -> dict:
    """Run the step 1 + repeat times (the first warms up) on every rank, then compare with ``single``."""
    steps = []
    for _ in range(repeat + 1):
        stage.zero_grad(set_to_none=True)
        if dist.is_initialized():
            dist.barrier()  # every rank starts each step together
        steps.append(pipeline_train_step(stage, *batch, micro_batches=micro_batches, schedule=schedule))
    wall_ms = Timing.of([s["wall_ms"] for s in steps[1:]]).median_ms
    busy_ms = Timing.of([s["busy_ms"] for s in steps[1:]]).median_ms
    grads = {name: p.grad for name, p in stage.named_parameters() if p.grad is not None}
    gathered = [grads] * stage.world
    if dist.is_initialized():
        dist.gather_object(grads, gathered if single is not None else None, dst=stage.world - 1)
    mine = {"wall_ms": wall_ms, "bubble": 1 - busy_ms / wall_ms, "peak": steps[-1]["peak_activations"],
            "bytes": stage.parameter_bytes, "loss": steps[-1]["loss"],
            "comm_ms": Timing.of([s["communication_ms"] for s in steps[1:]]).median_ms}
    if single is not None:
        merged = {name: grad for share in gathered for name, grad in share.items()}  # wte: equal on both ends
        if set(merged) != set(single["grads"]):
            raise RuntimeError(f"the stages' parameters {sorted(set(merged) ^ set(single['grads']))[:3]} differ "
                               "from the whole model's")
        mine["grad_diff"] = max(float((merged[k] - g).abs().max()) for k, g in single["grads"].items())
        mine["loss_diff"] = abs(mine["loss"] - single["loss"])
        mine["single_ms"], mine["single_loss"] = single["single_ms"], single["loss"]
    shares = [mine] * stage.world
    if dist.is_initialized():
        dist.all_gather_object(shares, mine)
    judge = shares[-1]
    wall = max(s["wall_ms"] for s in shares)
    bubbles = [s["bubble"] for s in shares]
    return {"scheme": schedule, "model": model_name, "world_size": stage.world, "micro_batches": micro_batches,
            "batch_size": int(batch[0].shape[0]), "tokens": int((batch[1] != IGNORE).sum()), "wall_ms": wall,
            "single_ms": judge["single_ms"], "speedup": judge["single_ms"] / wall,
            "bubble_predicted": bubble_predicted(stage.world, micro_batches), "bubble_measured": bubbles,
            "bubble_measured_mean": sum(bubbles) / len(bubbles), "peak_activations": [s["peak"] for s in shares],
            "communication_ms": [s["comm_ms"] for s in shares], "loss": judge["loss"],
            "single_loss": judge["single_loss"], "max_loss_diff": judge["loss_diff"],
            "max_grad_diff": judge["grad_diff"], "parameter_bytes": [s["bytes"] for s in shares],
            "whole_parameter_bytes": whole_parameter_bytes(model_name), "threads": torch.get_num_threads()}
