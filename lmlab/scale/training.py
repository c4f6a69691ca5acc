"""Distributed training: DDP, ZeRO (sharded optimizer state) and FSDP2 against one process on the same batches.

Introduced in notebooks/08_parallel_and_distributed.ipynb (second edition). Every rank starts from the same
weights and reads the same global batches in the same order; rank r takes its contiguous share of each batch's
documents. Each rank backpropagates

    loss_r = Σ_{its tokens} −ln P(target) / T_global × p        (p ranks, T_global tokens in the global batch)

so the gradient average the schemes take, (1/p) Σ_r ∇loss_r, is exactly the one-process gradient of the mean
NLL over the whole global batch (up to the order of float additions). The losses reported per step are the
global means (one all_reduce of every rank's Σ NLL, after training).

- ``ddp``: torch's DistributedDataParallel; its gradient buckets (``bucket_cap_mb``) all-reduce while the backward
  pass is still running, so part of the communication hides behind computation.
- ``zero``: DDP + ``ZeroRedundancyOptimizer(Adam)``: each rank keeps Adam's moments for its share of the parameter
  tensors and broadcasts the parameters it updated (ZeRO stage 1). It hands out whole tensors (largest first, to the
  rank holding least), so 8P/p holds for the ranks' sum, and each rank is off by up to one tensor: on gpt-small the
  tied embedding is 71% of the parameters.
- ``fsdp``: ``torch.distributed.fsdp.fully_shard`` (FSDP2) on each block and on the root: parameters, gradients and
  Adam's moments are sharded (ZeRO stage 3); a block's parameters are all-gathered just before it runs.

Dropout is off: its random draws differ per rank and per batch shape, so two runs of the same batch would not
give the same loss. Run under torchrun (``python -m lmlab parallel --scheme ddp --model gpt-large``); without a
process group ``train_parallel`` trains as one process (world 1).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lmlab.data.corpora import TokenizedCorpus, document_batches
from lmlab.measure.runtime import check_int, seed_everything
from lmlab.measure.timing import Stopwatch, Timing
from lmlab.models.neural import GPTLanguageModel
from lmlab.models.registry import load_model, model_entry, names
from lmlab.scale.group import rank_and_world, slowest_rank

MODES = ("ddp", "zero", "fsdp")
TRAINING_MODELS = names("gpt")
STAGE_OF = {"ddp": 0, "zero": 1, "fsdp": 3}  # the ZeRO stage each mode implements (0: nothing sharded)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs, targets, mask: (documents, time) each
_REFERENCES: dict[tuple, dict] = {}  # the one-process run, kept per setting: several modes in one launch share it


def check_training(mode: str, model_name: str, steps: int, global_batch: int, lr: float, bucket_mb: float,
                   repeat: int, world: int = 1) -> None:
    """Raise ValueError, naming the argument, its value and the allowed range, for a setting out of range."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is unknown; use one of {MODES}")
    model_entry(model_name, TRAINING_MODELS, "is not one the training schemes run")
    check_int("steps", steps, 2)  # the first step warms up; the others are timed
    check_int("global_batch", global_batch, world)  # every rank needs at least one document
    check_int("repeat", repeat, 1)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} is out of range; use a number > 0")
    if not (isinstance(bucket_mb, (int, float)) and math.isfinite(bucket_mb) and bucket_mb > 0):
        raise ValueError(f"bucket_mb={bucket_mb!r} is out of range; use a number of MB > 0")


def global_batches(data: TokenizedCorpus, steps: int, global_batch: int, max_len: int, seed: int = 0) -> list[Batch]:
    """The first ``steps`` full batches of ``global_batch`` training documents, shuffled with ``seed``.

    ``document_batches(data, "train", global_batch, shuffle=True, seed=seed)`` (documents of similar length
    together, batches in a seeded order); a last, shorter batch is skipped. Raises ValueError if the training
    split holds fewer than ``steps`` full batches.
    """
    out: list[Batch] = []
    for inputs, targets, mask in document_batches(data, "train", global_batch, max_len=max_len, shuffle=True,
                                                  seed=seed):
        if len(inputs) == global_batch:
            out.append((inputs, targets, mask))
        if len(out) == steps:
            return out
    raise ValueError(f"steps={steps} x global_batch={global_batch} needs more training documents than the "
                     f"{len(data.ids['train'])} there are; use fewer steps or a smaller batch")


def share(batch: Batch, rank: int, world: int) -> Batch:
    """Rank's contiguous share of a global batch's documents, cut to its own longest document.

    Documents [r·B/p, (r+1)·B/p) (``torch.tensor_split``, so shares differ by at most one document). Cutting
    right padding changes no valid position's logits: attention is causal.
    """
    rows = torch.tensor_split(torch.arange(len(batch[0])), world)[rank]
    inputs, targets, mask = (t[rows] for t in batch)
    length = int(mask.sum(dim=1).max())
    return inputs[:, :length], targets[:, :length], mask[:, :length]


def nll_sum(gpt: nn.Module, batch: Batch) -> torch.Tensor:
    """Σ −ln P(target) over the batch's tokens (padded targets, −100, left out), with gradients."""
    inputs, targets, mask = batch
    logits = gpt(input_ids=inputs, attention_mask=mask).logits  # (documents, time, vocab)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")


def training_model(model_name: str, seed: int = 0) -> tuple[GPTLanguageModel, TokenizedCorpus]:
    """The shipped checkpoint (the same weights on every rank) in training mode with dropout off, and its corpus."""
    seed_everything(seed)
    model, data = load_model(model_name)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0  # its draws differ per rank: no two runs would agree
    return model.train(), data


def _tokens(batch: Batch) -> int:
    return int((batch[1] != -100).sum())


def _train_steps(gpt: nn.Module, optimizer: torch.optim.Optimizer, batches: Sequence[Batch], rank: int,
                 world: int) -> tuple[list[float], list[float], list[float]]:
    """Train one step per global batch on this rank's share: (Σ NLL of its share, step ms, optimizer ms) per step.

    Each step: barrier (ranks start together), forward, backward of loss_r = Σ NLL_r / T_global × p, the
    optimizer's step. The clock covers forward, backward and step, communication inside them included; the
    optimizer's step is also timed alone (every DDP rank repeats it on all the parameters).
    """
    sums: list[float] = []
    step_ms: list[float] = []
    optimizer_ms: list[float] = []
    for batch in batches:
        mine = share(batch, rank, world)
        if world > 1:
            dist.barrier()
        with Stopwatch() as watch:
            optimizer.zero_grad(set_to_none=False)
            total = nll_sum(gpt, mine)
            (total * world / _tokens(batch)).backward()
            with Stopwatch() as update:
                optimizer.step()
        sums.append(float(total.detach()))
        step_ms.append(watch.ms)
        optimizer_ms.append(update.ms)
    return sums, step_ms, optimizer_ms


def _wrap(mode: str, gpt: nn.Module, lr: float, bucket_mb: float) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Wrap the model and build Adam as ``mode`` says (one process: the plain model and Adam)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return gpt, torch.optim.Adam(gpt.parameters(), lr=lr)
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu" if dist.get_backend() == "gloo" else "cuda", (dist.get_world_size(),))
        blocks = cast(nn.ModuleList, cast(nn.Module, gpt.transformer).h)  # transformers' GPT-2 blocks
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(gpt, mesh=mesh)
        return gpt, torch.optim.Adam(gpt.parameters(), lr=lr)
    from torch.distributed.optim import ZeroRedundancyOptimizer

    # gradient_as_bucket_view: .grad are views into DDP's buckets, so gradients take 4P bytes, not 8P
    ddp = DistributedDataParallel(gpt, bucket_cap_mb=bucket_mb, gradient_as_bucket_view=True)
    if mode == "zero":
        return ddp, ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=torch.optim.Adam, lr=lr)
    return ddp, torch.optim.Adam(ddp.parameters(), lr=lr)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of a tensor this rank holds: a DTensor's local shard, or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def held_bytes(gpt: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds, measured from its tensors: parameters, .grad, and Adam's moments.

    Parameters and gradients: Σ numel × element size over the unique parameters (FSDP2: their DTensors' local
    shards). Optimizer: Adam's exp_avg and exp_avg_sq over the state this rank keeps (ZeRO: its local
    optimizer's); Adam's per-tensor step counters are counted apart (``optimizer_step_bytes``), outside 8P.
    """
    params = list(gpt.parameters())
    inner = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer keeps its shard's Adam in .optim
    moments = steps_bytes = 0
    for state in inner.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                size = _local(value).numel() * value.element_size()
                if key == "step":
                    steps_bytes += size
                else:
                    moments += size
    return {"parameter_bytes": sum(_local(p).numel() * p.element_size() for p in params),
            "gradient_bytes": sum(_local(p.grad).numel() * p.grad.element_size() for p in params
                                  if p.grad is not None),
            "optimizer_bytes": moments, "optimizer_step_bytes": steps_bytes}


def formula_bytes(parameters: int, world: int, stage: int) -> dict[str, float]:
    """Float32 Adam's bytes per rank under ZeRO stage 0–3: 4P parameters, 4P gradients, 8P moments (m and v).

    Stage 1 divides the moments by p (8P/p), stage 2 also the gradients (4P/p), stage 3 also the parameters
    (4P/p): stage 3 holds (4 + 4 + 8)P/p. Raises ValueError for a stage outside [0, 3].
    """
    check_int("stage", stage, 0, 3)
    check_int("world", world, 1)
    p = 4.0 * parameters
    return {"formula_parameter_bytes": p / world if stage >= 3 else p,
            "formula_gradient_bytes": p / world if stage >= 2 else p,
            "formula_optimizer_bytes": 2 * p / world if stage >= 1 else 2 * p}


def bucket_elements(elements: int, bucket_mb: float) -> list[int]:
    """Split a gradient of ``elements`` float32 numbers into DDP's buckets: a first of 1 MiB, then bucket_mb MiB.

    DDP fills its first bucket up to ``dist._DEFAULT_FIRST_BUCKET_BYTES`` (1 MiB, so the last layers' gradients
    start travelling early) and the others up to ``bucket_cap_mb`` MiB; it cuts at tensor boundaries, this at
    any element (so the sizes match to within a tensor).
    """
    first, cap = (1024 * 1024) // 4, max(1, int(bucket_mb * 1024 * 1024) // 4)
    sizes = [min(first, elements)]
    while sum(sizes) < elements:
        sizes.append(min(cap, elements - sum(sizes)))
    return sizes


def allreduce_alone_ms(elements: int, bucket_mb: float, repeat: int, device: torch.device | None = None) -> float:
    """Median ms of all-reducing ``elements`` float32 gradients in DDP's buckets, nothing else running.

    One warm-up, then ``repeat`` timed rounds, each after a barrier; a round all-reduces every bucket in turn.
    0.0 without a group.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return 0.0
    buckets = [torch.zeros(n, device=device) for n in bucket_elements(elements, bucket_mb)]
    times: list[float] = []
    for _ in range(repeat + 1):
        dist.barrier()
        with Stopwatch() as watch:
            for bucket in buckets:
                dist.all_reduce(bucket)
        times.append(watch.ms)
    return Timing.of(times[1:]).median_ms


def exposed_communication_ms(ddp: DistributedDataParallel, mine: Batch, scale: float,
                             repeat: int) -> tuple[float, float]:
    """(median synced forward + backward ms, median under ``no_sync()``) on one share, alternating, after a barrier.

    Their difference is the communication the overlap failed to hide behind the backward pass. One warm-up pair,
    then ``repeat`` timed pairs; gradients are zeroed before each pass and no step is taken (weights unchanged).
    """
    from contextlib import nullcontext

    synced: list[float] = []
    alone: list[float] = []
    for _ in range(repeat + 1):
        for times, context in ((synced, nullcontext), (alone, ddp.no_sync)):
            for param in ddp.parameters():
                if param.grad is not None:
                    param.grad.zero_()
            dist.barrier()
            with Stopwatch() as watch, context():
                (nll_sum(ddp, mine) * scale).backward()
            times.append(watch.ms)
    return Timing.of(synced[1:]).median_ms, Timing.of(alone[1:]).median_ms


def _reference(gpt: nn.Module, batches: Sequence[Batch], lr: float, key: tuple) -> dict:
    """Train a copy of ``gpt`` as one process (plain Adam, whole global batches); kept per setting."""
    if key not in _REFERENCES:
        single = copy.deepcopy(gpt)
        adam = torch.optim.Adam(single.parameters(), lr=lr)
        sums, step_ms, optimizer_ms = _train_steps(single, adam, batches, 0, 1)
        _REFERENCES[key] = {"losses": [s / _tokens(b) for s, b in zip(sums, batches)],
                            "step_ms": Timing.of(step_ms[1:]).median_ms,
                            "optimizer_ms": Timing.of(optimizer_ms[1:]).median_ms}
    return _REFERENCES[key]


def _rank_run(mode: str, model: GPTLanguageModel, batches: Sequence[Batch], lr: float, bucket_mb: float,
              repeat: int) -> dict:
    """This rank's part: train the wrapped model, then measure bytes, exposed communication and local compute."""
    rank, world = rank_and_world()
    local = copy.deepcopy(model.gpt)  # the same steps without communication, for compute_ms
    wrapped, optimizer = _wrap(mode, copy.deepcopy(model.gpt), lr, bucket_mb)
    sums, step_ms, _ = _train_steps(wrapped, optimizer, batches, rank, world)
    out = {"sums": sums, "step_ms": Timing.of(step_ms[1:]).median_ms, **held_bytes(wrapped, optimizer)}
    synced = no_sync = float("nan")
    if mode != "fsdp" and world > 1:
        mine, scale = share(batches[0], rank, world), world / _tokens(batches[0])
        synced, no_sync = exposed_communication_ms(cast(DistributedDataParallel, wrapped), mine, scale, repeat)
    out.update(synced_ms=synced, no_sync_ms=no_sync)
    _, local_ms, _ = _train_steps(local, torch.optim.Adam(local.parameters(), lr=lr), batches, rank, world)
    out["local_ms"] = Timing.of(local_ms[1:]).median_ms
    return out


def train_parallel(mode: str, model_name: str = "gpt-large", *, steps: int = 6, global_batch: int = 32,
                   lr: float = 1e-3, seed: int = 0, bucket_mb: float = 25.0, repeat: int = 5,
                   device: torch.device | None = None) -> dict:
    """Train ``model_name`` for ``steps`` global batches under ``mode`` on every rank; return the row (every rank's).

    Rank 0 also trains the one-process reference (same weights, same global batches, plain Adam, the ranks'
    thread count) while the others wait at a barrier. Times, per rank, then the slowest rank's (``slowest_rank``):
    - step_ms: median over steps 2..steps of forward + backward + optimizer step (step 1 warms up);
      tokens_per_s = mean global tokens per timed step / step_ms; speedup = single_step_ms / step_ms.
    - compute_ms: the same rank's steps on an unwrapped copy (its shares, plain Adam, no communication);
      communication_ms = step_ms − compute_ms, clipped to [0, step_ms]: what distribution adds to a step.
    - exposed_communication_ms (ddp, zero): median synced forward + backward − the same under ``no_sync()``,
      the all-reduce time the overlap failed to hide; allreduce_alone_ms: all gradient bytes all-reduced alone
      in DDP's buckets (``allreduce_alone_ms``). Both NaN for fsdp (no ``no_sync``; it gathers as it goes).
    Bytes: ``held_bytes`` on each rank against ``formula_bytes`` for the mode's ZeRO stage (ddp 0, zero 1,
    fsdp 3); stage 2 (gradients sharded too) is given as a formula only: no torch engine runs it on its own.
    ``device``: where each rank trains (``init_process_group``'s answer: CPU under gloo, its GPU under NCCL).
    Raises ValueError for an unknown mode or model, or a setting out of range.
    """
    rank, world = rank_and_world()
    check_training(mode, model_name, steps, global_batch, lr, bucket_mb, repeat, world)
    model, data = training_model(model_name, seed)
    device = device or torch.device("cpu")
    model.gpt.to(device)
    batches = [cast(Batch, tuple(t.to(device) for t in batch))
               for batch in global_batches(data, steps, global_batch, model.config.n_positions, seed)]
    mine = _rank_run(mode, model, batches, lr, bucket_mb, repeat)
    alone_ms = allreduce_alone_ms(sum(p.numel() for p in model.gpt.parameters()), bucket_mb, repeat, device)
    key = (model_name, steps, global_batch, lr, seed, torch.get_num_threads(), str(device))
    mine["single"] = _reference(model.gpt, batches, lr, key) if rank == 0 else None
    ranks = [mine] * world
    if world > 1:
        dist.barrier()  # the other ranks wait here while rank 0 trains the one-process reference
        ranks = [{} for _ in range(world)]
        dist.all_gather_object(ranks, mine)
    return _training_row(mode, model_name, model.gpt, batches, ranks, alone_ms) | {"lr": lr, "seed": seed,
                                                                                  "bucket_mb": bucket_mb}


def _training_row(mode: str, model_name: str, gpt: nn.Module, batches: Sequence[Batch], ranks: list[dict],
                  alone_ms: float) -> dict:
    """Gather the ranks' measurements into the mode's row (see ``train_parallel``)."""
    world, single = len(ranks), ranks[0]["single"]
    tokens = [_tokens(b) for b in batches]
    losses = [sum(r["sums"][i] for r in ranks) / tokens[i] for i in range(len(batches))]
    shares = [(r["step_ms"], min(max(r["step_ms"] - r["local_ms"], 0.0), r["step_ms"])) for r in ranks]
    step_ms, compute_ms, comm_ms = slowest_rank(shares)
    timed_tokens = sum(tokens[1:]) / (len(tokens) - 1)
    parameters = sum(p.numel() for p in gpt.parameters())
    diffs = [abs(a - b) for a, b in zip(losses, single["losses"])]
    row = {"scheme": mode, "model": model_name, "world_size": world, "zero_stage": STAGE_OF[mode],
           "steps": len(batches), "global_batch": len(batches[0][0]), "tokens": tokens, "losses": losses,
           "single_losses": single["losses"], "max_loss_diff": max(diffs),
           "max_loss_rel_diff": max(d / abs(s) for d, s in zip(diffs, single["losses"])),
           "step_ms": step_ms, "single_step_ms": single["step_ms"], "single_optimizer_ms": single["optimizer_ms"],
           "tokens_per_s": timed_tokens / step_ms * 1e3,
           "single_tokens_per_s": timed_tokens / single["step_ms"] * 1e3, "speedup": single["step_ms"] / step_ms,
           "exposed_communication_ms": max(r["synced_ms"] - r["no_sync_ms"] for r in ranks),
           "synced_backward_ms": max(r["synced_ms"] for r in ranks),
           "no_sync_backward_ms": max(r["no_sync_ms"] for r in ranks),
           "allreduce_alone_ms": alone_ms if mode != "fsdp" else float("nan"),
           "compute_ms": compute_ms, "communication_ms": comm_ms, "communication_share": comm_ms / step_ms,
           "parameters": parameters, "threads": torch.get_num_threads()}
    for what in ("parameter_bytes", "gradient_bytes", "optimizer_bytes", "optimizer_step_bytes"):
        row[what] = ranks[0][what]
        row[f"rank_{what}"] = [r[what] for r in ranks]
    row.update(formula_bytes(parameters, world, STAGE_OF[mode] if world > 1 else 0))
    row["formula_zero2_bytes"] = sum(formula_bytes(parameters, world, 2).values())
    row["shard_bound_parameter_bytes"] = shard_bound_bytes(gpt, world)
    return row


def shard_bound_bytes(gpt: nn.Module, world: int) -> int:
    """The most float32 parameter bytes one rank holds when each tensor is cut into ``world`` chunks along dim 0.

    FSDP2 shards every parameter along its first dimension in chunks of ⌈d0 / p⌉ rows (``torch.chunk``), so a
    rank holds at most Σ ⌈d0 / p⌉ · (numel / d0) · 4 bytes: 4P/p plus at most one row of padding per tensor.
    """
    return sum(math.ceil(p.shape[0] / world) * (p.numel() // p.shape[0]) * p.element_size()
               for p in gpt.parameters())

