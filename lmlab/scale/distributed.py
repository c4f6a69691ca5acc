"""Parallel inference with torch.distributed: data, tensor and pipeline parallel, and what communication costs.

Introduced in notebooks/08_parallel_and_distributed.ipynb. Every scheme follows the same four steps: split the
work, shard it (documents, weight slices or layers), assign each shard to a rank, gather the results with a
collective (all_reduce) or point-to-point messages (send/recv). Run it under torchrun, one process per rank
(gloo on CPU, NCCL when CUDA is present):

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m lmlab.scale.distributed \
        --scheme data --model gpt-large
    python -m lmlab parallel --scheme tensor --model gpt-large --nproc-per-node 2      # the same, through lmlab's CLI

Each run returns one row: the scheme's wall ms on N ranks, split into compute and communication ms, the
single-process ms for the same work, the speed-up, Amdahl's law applied to those shares (a model), and the largest
difference from the single-process numbers. Communication ms are the time inside collectives and sends/receives,
waiting for a slower rank included (load imbalance, the pipeline's bubble). Each rank runs torch on one thread
unless ``--threads`` says otherwise. gloo in torch 2.13 has ``all_gather_into_tensor`` (deprecated for
``all_gather_single``); nothing here needs it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist
from torch import nn

from lmlab.data.corpora import TokenizedCorpus, document_batches, load_kjv, tokenize_corpus
from lmlab.data.shipped import DATA_DIR
from lmlab.measure.results import atomic_write_text
from lmlab.measure.runtime import check_int, describe_environment
from lmlab.models.neural import GPTLanguageModel
from lmlab.models.registry import load_model, model_entry, names
from lmlab.models.scoring import IGNORE, score_summary, score_tokens
from lmlab.scale.group import Clock, init_process_group, rank_and_world, slowest_rank, timed
from lmlab.scale.pipeline import SCHEDULES, load_stage, pipeline_forward, run_pipeline_training, stage_corpus
from lmlab.scale.pipeline import stage_bounds as stage_bounds  # moved there; still importable from here
from lmlab.scale.scaling import allreduce_ms, amdahl_speedup, sendrecv_ms
from lmlab.scale.scaling import fit_allreduce as fit_allreduce  # moved there; imported back so old imports work
from lmlab.scale.scaling import ring_allreduce_ms as ring_allreduce_ms
from lmlab.scale.scaling import scaling_model as scaling_model
from lmlab.scale.sharding import RowParallel, check_budget_mb, gpt_corpus, load_tensor_parallel_gpt
from lmlab.scale.training import MODES, TRAINING_MODELS, train_parallel

if TYPE_CHECKING:  # transformers is imported where a model is built; the casts below only name its types
    from transformers import GPT2LMHeadModel, LlamaForCausalLM
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    from transformers.pytorch_utils import Conv1D

# inference, the message costs by size (lmlab.scale.scaling), then training (lmlab.scale.pipeline, .training)
SCHEMES = ("data", "tensor", "pipeline", "allreduce", "sendrecv", *SCHEDULES, *MODES)
PARALLEL_MODELS = names("gpt") + names("llm")  # SmolLM2: data parallel, and tensor parallel of its MLPs
SMOLLM2_WINDOW = 64  # SmolLM2 scores the test verses' text in windows of this many of its tokens

Answer = dict[str, float] | torch.Tensor | None  # a scheme's result on a rank: scores, logits, or none here


# --- data parallel: every rank scores its shard of whole batches; one all_reduce gathers the sums ------------


def score_shard(model: GPTLanguageModel, data: TokenizedCorpus, split: str = "test", batch_size: int = 32,
                rank: int = 0, world: int = 1) -> torch.Tensor:
    """Return float64 [Σ −ln P(target), Σ correct, Σ tokens] over batches rank, rank + world, ... of ``split``.

    Each batch is scored by ``lmlab.models.scoring.score_tokens`` (the argmax is the guess).

    The batches are ``document_batches(data, split, batch_size)`` in their fixed order, so each document is scored
    in the same batch whatever the world size, and only the order of the float64 sums changes.
    Raises ValueError for a rank outside [0, world).
    """
    check_int("world", world, 1)
    check_int("rank", rank, 0, world - 1)
    device = model.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    batches = document_batches(data, split, batch_size, max_len=model.config.n_positions)
    with torch.no_grad():
        for i, (inputs, targets, mask) in enumerate(batches):
            if i % world != rank:
                continue
            inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
            scored = score_tokens(model.gpt(input_ids=inputs, attention_mask=mask).logits, targets)
            sums += torch.stack([scored.nll_nats.sum(), scored.correct.sum(), scored.tokens.sum()]).to(sums.device)
    return sums


def smollm2_windows(tokenizer, documents: int | None = None, window: int = SMOLLM2_WINDOW) -> torch.Tensor:
    """SmolLM2's tokens of the King James test verses (the first ``documents``), cut into (windows, window) rows."""
    kjv = tokenize_corpus(load_kjv(), min_count=2)
    verses = kjv.head("test", documents) if documents else kjv
    ids = tokenizer(verses.normalized_text("test"))["input_ids"]
    rows = len(ids) // window
    return torch.tensor(ids[: rows * window]).view(rows, window)


def score_windows(model: nn.Module, windows: torch.Tensor, batch_size: int = 8, rank: int = 0,
                  world: int = 1) -> torch.Tensor:
    """float64 [Σ −ln P, Σ correct, Σ tokens] of a causal LM (SmolLM2) predicting each window's tokens 2..T, over
    batches rank, rank + world, ... of ``batch_size`` windows, each scored by ``lmlab.models.scoring.score_tokens``.
    Raises ValueError for a rank outside [0, world)."""
    check_int("world", world, 1)
    check_int("rank", rank, 0, world - 1)
    sums = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for i, start in enumerate(range(0, len(windows), batch_size)):
            if i % world != rank:
                continue
            batch = windows[start:start + batch_size]
            scored = score_tokens(model(input_ids=batch).logits[:, :-1], batch[:, 1:])  # predict tokens 2..T
            sums += torch.stack([scored.nll_nats.sum(), scored.correct.sum(), scored.tokens.sum()]).to(sums.device)
    return sums


def scores(sums: torch.Tensor) -> dict[str, float]:
    """Turn [Σ nll, Σ correct, Σ tokens] into accuracy, mean nll and perplexity = exp(Σ nll / Σ tokens).

    ``lmlab.models.scoring.score_summary`` of the three sums. Raises ValueError for Σ tokens = 0.
    """
    return score_summary(*(float(x) for x in sums))


def data_parallel_evaluate(model: GPTLanguageModel, data: TokenizedCorpus, split: str = "test",
                           batch_size: int = 32, clock: Clock | None = None) -> dict[str, float]:
    """Score this rank's shard, then all_reduce (SUM, float64) the sums: perplexity = exp(Σ_r nll_r / Σ_r n_r).

    On one process (no group) it scores the whole split. Every rank returns the same numbers.
    """
    rank, world = rank_and_world()
    sums = score_shard(model, data, split, batch_size, rank, world)
    return scores((clock or Clock()).all_reduce(sums))


# --- tensor parallel (Megatron): columns of the first matrix, rows of the second, one all_reduce per pair -----


def _conv1d(weight_in_out: torch.Tensor, bias: torch.Tensor) -> Conv1D:
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(weight_in_out.shape[1], weight_in_out.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight_in_out)
        layer.bias.copy_(bias)
    return layer


def shard_gpt(model: GPTLanguageModel, rank: int, world: int, clock: Clock) -> GPTLanguageModel:
    """Return a copy of ``model`` holding only rank's share of every block; its forward equals the whole model's.

    Attention: heads [rank·H/N, (rank+1)·H/N) (their q, k, v columns of c_attn, their rows of c_proj). MLP: units
    [rank·4d/N, (rank+1)·4d/N) (columns of c_fc, rows of c_proj). Embeddings, layer norms and the output layer
    stay whole on every rank. It deep-copies the whole model first, so every rank holds it all while sharding:
    the "tensor" scheme loads only each rank's slices instead (``lmlab.scale.sharding.load_tensor_parallel_gpt``);
    this one stays to show the split on a model already in memory. Raises ValueError if the heads do not divide
    among ``world`` ranks.
    """
    heads, d = model.config.n_head, model.config.n_embd
    if heads % world:
        raise ValueError(f"nproc={world} does not divide the {heads} attention heads; use a divisor of {heads}")
    shard = copy.deepcopy(model).eval()
    local = d // world
    mine = slice(rank * local, (rank + 1) * local)
    hf = cast("GPT2LMHeadModel", shard.gpt)  # transformers' GPT-2, whose blocks are split; nn.Module types it loosely
    for layer in hf.transformer.h:
        block = cast("GPT2Block", layer)  # nn.Module types an attribute as Tensor | Module
        attn, mlp = block.attn, block.mlp
        cols = torch.cat([torch.arange(d)[mine] + part * d for part in range(3)])  # q, k, v columns of my heads
        attn.c_attn = _conv1d(attn.c_attn.weight[:, cols], attn.c_attn.bias[cols])
        attn.c_proj = RowParallel(attn.c_proj.weight[mine], attn.c_proj.bias, clock)
        attn.num_heads, attn.split_size = heads // world, local
        width = mlp.c_fc.weight.shape[1] // world
        units = slice(rank * width, (rank + 1) * width)
        mlp.c_fc = _conv1d(mlp.c_fc.weight[:, units], mlp.c_fc.bias[units])
        mlp.c_proj = RowParallel(mlp.c_proj.weight[units], mlp.c_proj.bias, clock)
    return shard


def shard_llama_mlp(model: nn.Module, rank: int, world: int, clock: Clock) -> nn.Module:
    """Return a copy of a Llama (SmolLM2) with each MLP split: gate/up rows (output units) and down columns.

    down(silu(gate(x)) · up(x)) = Σ_r down_r(silu(gate_r(x)) · up_r(x)). Attention stays whole on every rank:
    SmolLM2's 9 query heads and 3 KV heads do not divide among 2 ranks. It deep-copies the whole model: every rank
    loads and holds all of SmolLM2 (only the shipped GPTs load sharded, ``lmlab.scale.sharding``). Raises
    ValueError if the MLP width does not divide among ``world`` ranks.
    """
    shard = cast("LlamaForCausalLM", copy.deepcopy(model).eval())  # SmolLM2 is a Llama
    width = shard.config.intermediate_size
    if width % world:
        raise ValueError(f"nproc={world} does not divide the MLP's {width} units; use a divisor of {width}")
    units = slice(rank * (width // world), (rank + 1) * (width // world))
    for layer in shard.model.layers:
        mlp = layer.mlp
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = nn.Linear(old.in_features, width // world, bias=False)
            new.weight.data.copy_(old.weight[units])
            setattr(mlp, name, new)
        mlp.down_proj = RowParallel(mlp.down_proj.weight[:, units].T, None, clock)
    return shard


# --- one row per scheme -------------------------------------------------------------------------------------


def run_scheme(scheme: str, model_name: str = "gpt-small", *, batch_size: int = 32, documents: int | None = None,
               micro_batches: int = 4, repeat: int = 3, device: torch.device | None = None,
               memory_budget_mb: float | None = None) -> dict:
    """Run one scheme on every rank of the group and return its row (the same on every rank).

    Work: "data" scores the test split (its first ``documents``) in batches of ``batch_size`` documents;
    "tensor" and "pipeline" run the forward pass on the first ``batch_size`` test documents, as one batch (each
    pipeline rank loads only its stage, ``lmlab.scale.pipeline.load_stage``; the last also loads the whole model
    as the single-process reference). For
    "smollm2" (data and tensor only) the documents are ``smollm2_windows`` of its own tokens. Rank 0 also
    times the single-process model on the same work. speed-up = single_ms / wall_ms; the Amdahl model takes
    communication as the part that does not split: p = 1 − comm_ms / single_ms. "tensor" on a GPT is
    ``_tensor_row``'s: sharded loading, a memory budget, per-token scores.
    Raises ValueError for an unknown scheme or model, or a setting out of range.
    """
    if scheme not in SCHEMES[:3]:
        raise ValueError(f"scheme={scheme!r} is unknown; use one of {SCHEMES[:3]}")
    entry = model_entry(model_name, PARALLEL_MODELS, "is not one the schemes run")
    check_int("batch_size", batch_size, 1)
    check_int("repeat", repeat, 1)
    if entry.kind == "llm":
        smollm2_work, smollm2_single = _smollm2_work(scheme, batch_size, documents)
        return _row(scheme, model_name, batch_size, smollm2_work, smollm2_single, repeat)
    if scheme == "tensor":
        return _tensor_row(model_name, batch_size, documents, repeat, device, memory_budget_mb)
    if scheme == "pipeline":
        return _pipeline_scheme(model_name, batch_size, documents, micro_batches, repeat, device)
    rank, world = rank_and_world()
    model, data = load_model(model_name)
    model = model.eval().to(device or torch.device("cpu"))
    if documents is not None:
        data = data.head("test", check_int("documents", documents, 1))
    # The fixed batch of "tensor" and "pipeline": the first batch_size test documents, padded to the longest.
    first = data.head("test", min(batch_size, len(data.ids["test"])))
    inputs, _, mask = next(document_batches(first, "test", batch_size, max_len=model.config.n_positions))

    def work(clock: Clock) -> Answer:
        if scheme == "data":
            return data_parallel_evaluate(model, data, "test", batch_size, clock)
        raise RuntimeError(f"scheme={scheme!r} has no work here")

    def single() -> Answer:
        if scheme == "data":
            return scores(score_shard(model, data, "test", batch_size))
        return model.gpt(input_ids=inputs.to(model.device), attention_mask=mask.to(model.device)).logits
    return _row(scheme, model_name, batch_size, work, single, repeat)


def _tensor_row(model_name: str, batch_size: int, documents: int | None, repeat: int, device: torch.device | None,
                memory_budget_mb: float | None) -> dict:
    """The tensor scheme on a shipped GPT: each rank loads only its slices (``load_tensor_parallel_gpt``), then
    scores the first ``batch_size`` test documents: per-token −ln P and argmax guesses through the
    vocabulary-parallel cross-entropy, never gathering (batch, time, vocab) logits.

    The reference is the single-process model's per-token −ln P = −log_softmax(z)[target] and argmax(z), computed
    by the judge rank (rank 0), which loads the whole model for it after the ranks' loads were measured: a check
    outside ``memory_budget_mb``, which bounds what the ranks load to serve. max_diff = max |difference| over
    the per-token −ln P (nats) and the guess ids (a different guess counts ≥ 1). The row adds, as the largest over
    ranks, parameter_bytes_per_rank, planned_mb, peak_load_mb, and whole_parameter_bytes and memory_budget_mb.
    """
    rank, world = rank_and_world()
    device = device or torch.device("cpu")
    tp = load_tensor_parallel_gpt(model_name, rank, world, memory_budget_mb=memory_budget_mb).to(device)
    data = gpt_corpus(model_name)
    if documents is not None:
        data = data.head("test", check_int("documents", documents, 1))
    first = data.head("test", min(batch_size, len(data.ids["test"])))
    inputs, targets, mask = (t.to(device) for t in next(document_batches(first, "test", batch_size,
                                                                         max_len=tp.wpe.shape[0])))
    padded = targets == IGNORE

    def work(clock: Clock) -> Answer:
        tp.set_clock(clock)
        nll, guess = tp.score(inputs, targets)
        return torch.stack([nll, guess.double().masked_fill(padded, -1)])  # (2, batch, time)

    whole: list[GPTLanguageModel] = []

    def single() -> Answer:
        if not whole:  # the warm-up call loads it, untimed
            whole.append(cast(GPTLanguageModel, load_model(model_name)[0]).eval().to(device))
        logits = whole[0].gpt(input_ids=inputs, attention_mask=mask).logits.float()  # (batch, time, vocab)
        nll = -torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
        return torch.stack([nll.double().masked_fill(padded, 0.0), logits.argmax(-1).double().masked_fill(padded, -1)])

    row = _row("tensor", model_name, batch_size, work, single, repeat)
    loads = [tp.load_row] * world
    if dist.is_initialized():
        dist.all_gather_object(loads, tp.load_row)
    row.update({key: max(load[key] for load in loads) for key in ("parameter_bytes_per_rank", "planned_mb",
                                                                   "peak_load_mb")})
    row.update(whole_parameter_bytes=tp.load_row["whole_parameter_bytes"], memory_budget_mb=memory_budget_mb,
               diff_kind="absolute per-token nll and guess ids")
    return row
def _pipeline_scheme(model_name: str, batch_size: int, documents: int | None, micro_batches: int, repeat: int,
                     device: torch.device | None) -> dict:
    """The "pipeline" row: every rank loads only its stage (``load_stage``); the last rank, which holds the
    logits, also loads the whole model for the single-process reference."""
    rank, world = rank_and_world()
    stage = load_stage(model_name, rank, world).to(device or torch.device("cpu"))
    whole, data = load_model(model_name) if rank == world - 1 else (None, stage_corpus(model_name))
    if documents is not None:
        data = data.head("test", check_int("documents", documents, 1))
    first = data.head("test", min(batch_size, len(data.ids["test"])))
    inputs, _, mask = next(document_batches(first, "test", batch_size, max_len=stage.config.n_positions))
    check_int("micro_batches", micro_batches, 1, inputs.shape[0])
    whole = None if whole is None else whole.eval().to(stage.device)

    def single() -> Answer:
        if whole is None:
            raise RuntimeError(f"rank {rank} holds no whole model; the last rank is the judge")
        return whole.gpt(input_ids=inputs.to(whole.device), attention_mask=mask.to(whole.device)).logits

    row = _row("pipeline", model_name, batch_size,
               lambda clock: pipeline_forward(stage, inputs, mask, micro_batches, clock), single, repeat)
    return {**row, "micro_batches": micro_batches}


def _smollm2_work(scheme: str, batch_size: int,
                  documents: int | None) -> tuple[Callable[[Clock], Answer], Callable[[], Answer]]:
    """(work, single) for SmolLM2: data parallel over windows of its tokens, or its MLPs split across ranks."""
    if scheme == "pipeline":
        raise ValueError("scheme='pipeline' runs on the shipped GPTs; SmolLM2 takes 'data' or 'tensor'")
    rank, world = rank_and_world()
    model, tokenizer = load_model("smollm2")
    windows = smollm2_windows(tokenizer, documents)
    if scheme == "data":
        def work(clock: Clock) -> Answer:
            return scores(clock.all_reduce(score_windows(model, windows, batch_size, rank, world)))

        return work, lambda: scores(score_windows(model, windows, batch_size))
    batch = windows[:batch_size]
    tp = shard_llama_mlp(model, rank, world, Clock())

    def tensor(clock: Clock) -> Answer:
        for module in tp.modules():
            if isinstance(module, RowParallel):
                module.clock = clock
        with torch.no_grad():
            return tp(input_ids=batch).logits

    return tensor, lambda: model(input_ids=batch).logits


def _row(scheme: str, model_name: str, batch_size: int, work: Callable[[Clock], Answer],
         single: Callable[[], Answer] | None, repeat: int) -> dict:
    """Time ``work`` on every rank and ``single`` on the rank that holds the answer; return the scheme's row.

    Without ``single`` (no reference), single_ms, speedup and max_diff are nan."""
    rank, world = rank_and_world()
    warm_up = scheme != "data"  # a whole split is many batches: its first ones warm up
    wall_ms, comm_ms, out = timed(work, repeat, warm_up=warm_up)
    single_ms, diff = float("nan"), float("nan")
    judge = world - 1 if scheme == "pipeline" else 0  # the rank that holds the full answer
    if rank == judge and single is not None:
        with torch.no_grad():
            single_ms, _, reference = timed(lambda clock: single(), repeat, together=False, warm_up=warm_up)
        diff = _max_diff(out, reference)
    if dist.is_initialized():
        dist.barrier()  # the other ranks wait here while the judge times the single process
    shares = [(wall_ms, comm_ms, single_ms, diff)] * world  # every rank's, gathered when there is a group
    if dist.is_initialized():
        dist.all_gather_object(shares, shares[rank])
    wall_ms, compute_ms, comm_ms = slowest_rank([(s[0], s[1]) for s in shares])
    single_ms, diff = shares[judge][2], shares[judge][3]
    row = {"scheme": scheme, "model": model_name, "world_size": world, "wall_ms": wall_ms,
           "compute_ms": compute_ms, "communication_ms": comm_ms,
           "communication_share": comm_ms / wall_ms, "single_ms": single_ms, "speedup": single_ms / wall_ms,
           "amdahl_model_speedup": amdahl_speedup(min(1.0, max(0.0, 1 - comm_ms / single_ms)), world),
           "max_diff": diff, "diff_kind": "relative" if scheme == "data" else "absolute logits",
           "batch_size": batch_size, "threads": torch.get_num_threads()}
    if isinstance(out, dict):  # data parallel: every rank holds the scores
        row.update({k: out[k] for k in ("perplexity", "accuracy", "tokens")})
    return row


def _max_diff(out: Answer, reference: Answer) -> float:
    """The largest difference from the single process: relative on data parallel's perplexity and accuracy,
    absolute on the logits of the other schemes. Raises RuntimeError on a rank that holds no answer."""
    if isinstance(out, dict) and isinstance(reference, dict):
        return max(abs(out[k] - reference[k]) / abs(reference[k]) for k in ("perplexity", "accuracy"))
    if isinstance(out, torch.Tensor) and isinstance(reference, torch.Tensor):
        return float((out.float() - reference.float()).abs().max())
    raise RuntimeError("this rank holds no answer to compare with the single process's")


def torchrun_command(scheme: str | Sequence[str], model_name: str, nproc_per_node: int = 2, *, nnodes: int = 1,
                     rdzv_endpoint: str | None = None, batch_size: int = 32, documents: int | None = None,
                     micro_batches: int | Sequence[int] = 4, repeat: int = 3, threads: int | None = None,
                     save: str | None = None, steps: int | None = None, global_batch: int | None = None,
                     memory_budget_mb: float | None = None) -> list[str]:
    """Return the torchrun command line that runs ``scheme`` (one, or several in turn) on nnodes × nproc_per_node ranks.

    One machine: ``--standalone``. Several: ``--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT``, the
    same command started on every machine (rehearsed on one machine in tests/test_training.py: two launchers with
    endpoint 127.0.0.1:PORT meet as they are; torch 2.13's c10d needs no ``is_host`` or static rendezvous).
    ``micro_batches``: one count, or several (the pipeline schemes run each; "gpipe" and "1f1b" train,
    ``lmlab.scale.pipeline.run_pipeline_training``). ``steps`` and ``global_batch`` set the training schemes' run
    (ddp, zero, fsdp: ``lmlab.scale.training.train_parallel``). Raises ValueError, naming the argument, for an
    unknown scheme or model, a count below 1, several nodes without an endpoint, heads that do not divide among the
    ranks (tensor), or a memory_budget_mb that is not a positive number (the ranks check the weights against it
    when they load).
    """
    schemes = [scheme] if isinstance(scheme, str) else list(scheme)
    for one in schemes or [""]:
        if one not in SCHEMES:
            raise ValueError(f"scheme={one!r} is unknown; use one of {SCHEMES}")
    model_entry(model_name, PARALLEL_MODELS, "is not one the schemes run")
    if set(schemes) & set(MODES):
        model_entry(model_name, TRAINING_MODELS, "is not one the training schemes run")
        check_int("steps", steps if steps is not None else 6, 2)
        check_int("global_batch", global_batch if global_batch is not None else 32, nproc_per_node * nnodes)
    if model_name == "smollm2" and {"pipeline", *SCHEDULES} & set(schemes):
        raise ValueError("scheme='pipeline' runs on the shipped GPTs; SmolLM2 takes 'data' or 'tensor'")
    for name, value in (("nproc_per_node", nproc_per_node), ("nnodes", nnodes), ("batch_size", batch_size),
                        ("repeat", repeat), ("documents", documents), ("threads", threads)):
        if value is not None:
            check_int(name, value, 1)
    counts = [micro_batches] if isinstance(micro_batches, int) else list(micro_batches)
    for count in counts or [0]:
        check_int("micro_batches", count, 1, batch_size)
    check_budget_mb(memory_budget_mb)
    if nnodes > 1 and not rdzv_endpoint:
        raise ValueError(f"nnodes={nnodes} needs rdzv_endpoint='HOST:PORT', the address every machine can reach")
    if model_name == "smollm2":  # its MLPs are split: 1536 units
        parts, what = 1536, "MLP units"
    else:
        parts, what = json.loads((DATA_DIR / f"{model_name}.json").read_text())["config"]["n_head"], "heads"
    if "tensor" in schemes and parts % (nproc_per_node * nnodes):
        raise ValueError(f"nproc_per_node={nproc_per_node} x nnodes={nnodes} ranks do not divide the {parts} {what} "
                         f"of {model_name}; use a divisor of {parts}")
    where = (["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint,
              "--rdzv-id", "lmlab"] if rdzv_endpoint else ["--standalone"])
    options = {"--batch-size": batch_size, "--documents": documents, "--repeat": repeat, "--threads": threads,
               "--save": save, "--steps": steps, "--global-batch": global_batch, "--memory-budget-mb": memory_budget_mb}
    return ([sys.executable, "-m", "torch.distributed.run", *where, "--nproc-per-node", str(nproc_per_node),
             "-m", "lmlab.scale.distributed", "--scheme", *schemes, "--model", model_name]
            + [str(x) for key, value in options.items() if value is not None for x in (key, value)]
            + ["--micro-batches", *(str(count) for count in counts)])


def launch(*args, timeout_s: float | None = None, **kwargs) -> int:
    """Run ``torchrun_command(*args, **kwargs)`` and return its exit code; rank 0 prints the rows.

    Each rank gets OMP_NUM_THREADS = threads (default 1). Raises ValueError as ``torchrun_command`` does.
    """
    import subprocess

    command = torchrun_command(*args, **kwargs)
    env = {**os.environ, "OMP_NUM_THREADS": str(kwargs.get("threads") or 1)}
    return subprocess.run(command, env=env, timeout=timeout_s).returncode


def run_parallel(schemes: Sequence[str], model_name: str = "gpt-small", nproc_per_node: int = 2, *,
                 timeout_s: float = 300.0, **options) -> list[dict]:
    """Run ``schemes`` in turn under a real torchrun on this machine and return rank 0's rows.

    ``options`` are ``torchrun_command``'s (batch_size, documents, micro_batches, repeat, threads). torchrun's
    and the ranks' output is captured, not printed. Raises ValueError as ``torchrun_command`` does, and
    RuntimeError with the end of the ranks' output if the run fails or takes longer than ``timeout_s``.
    """
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lmlab-parallel-") as folder:
        save = os.path.join(folder, "rows.json")
        command = torchrun_command(schemes, model_name, nproc_per_node, save=save, **options)
        env = {**os.environ, "OMP_NUM_THREADS": str(options.get("threads") or 1)}
        try:
            done = subprocess.run(command, env=env, timeout=timeout_s, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"torchrun took longer than timeout_s={timeout_s:g} s and was stopped") from None
        if done.returncode != 0 or not os.path.exists(save):
            raise RuntimeError(f"torchrun exited with code {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
        with open(save, encoding="utf-8") as handle:
            return json.load(handle)


# --- model parallelism by arithmetic ------------------------------------------------------------------------


def llama_parameters(hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int, vocab: int,
                     tied: bool) -> int:
    """Count the parameters of a Llama-style decoder from its config (SmolLM2, Llama 3): exact, no biases.

    Per layer: q and o (d · d each), k and v (d · d · kv_heads / heads each), gate, up and down (d · ff each),
    two RMS norms (d each). Plus the embedding (V · d), the final norm (d), and an output layer (V · d) unless
    it is tied to the embedding. Raises ValueError for a size below 1 or heads that kv_heads does not divide.
    """
    for name, value in (("hidden", hidden), ("layers", layers), ("intermediate", intermediate), ("heads", heads),
                        ("kv_heads", kv_heads), ("vocab", vocab)):
        check_int(name, value, 1)
    if heads % kv_heads or hidden % heads:
        raise ValueError(f"heads={heads}, kv_heads={kv_heads}, hidden={hidden}: kv_heads must divide heads and "
                         "heads must divide hidden")
    kv = hidden // heads * kv_heads
    layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * intermediate + 2 * hidden
    return vocab * hidden + layers * layer + hidden + (0 if tied else vocab * hidden)


def main(argv: list[str] | None = None) -> int:
    """Entry point for each rank under torchrun: run the schemes, rank 0 prints the rows (and saves them)."""
    parser = argparse.ArgumentParser(prog="python -m lmlab.scale.distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", nargs="+", default=["data"], help=f"one or more of {SCHEMES}")
    parser.add_argument("--model", default="gpt-small", help=f"one of {PARALLEL_MODELS}")
    parser.add_argument("--batch-size", type=int, default=32, help="documents per batch")
    parser.add_argument("--documents", type=int, default=None, help="score only the first N test documents")
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[4],
                        help="pipeline micro-batches: one count, or several (a row each)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per rank (default 1)")
    parser.add_argument("--save", default=None, help="rank 0 writes the rows to this JSON file")
    parser.add_argument("--steps", type=int, default=6, help="training schemes: global batches trained")
    parser.add_argument("--global-batch", type=int, default=32, help="training schemes: documents per step, all ranks")
    parser.add_argument("--memory-budget-mb", type=float, default=None,
                        help="tensor: refuse to load a GPT whose weights per rank exceed this many MB")
    args = parser.parse_args(argv)
    try:
        for scheme in args.scheme:
            if scheme not in SCHEMES:
                raise ValueError(f"scheme={scheme!r} is unknown; use one of {SCHEMES}")
        device = init_process_group(args.threads)
    except ValueError as err:
        print(f"lmlab.scale.distributed: {err}", file=sys.stderr)
        return 2
    try:
        rows = []
        for scheme in args.scheme:
            if scheme == "allreduce":
                rows += allreduce_ms(repeat=max(args.repeat, 50))
            elif scheme == "sendrecv":
                rows += sendrecv_ms(repeat=max(args.repeat, 50))
            elif scheme in MODES:
                rows.append(train_parallel(scheme, args.model, steps=args.steps, global_batch=args.global_batch,
                                           repeat=args.repeat, device=device))
            elif scheme not in SCHEDULES:  # training runs below, every schedule in one call
                rows += [run_scheme(scheme, args.model, batch_size=args.batch_size, documents=args.documents,
                                    micro_batches=count, repeat=args.repeat, device=device,
                                    memory_budget_mb=args.memory_budget_mb)
                         for count in (args.micro_batches if scheme == "pipeline" else args.micro_batches[:1])]
        if set(SCHEDULES) & set(args.scheme):
            rows += run_pipeline_training(args.model, [s for s in args.scheme if s in SCHEDULES], args.micro_batches,
                                          args.batch_size, args.repeat)
        if dist.get_rank() == 0:
            _report(rows, args.save)
        dist.barrier()  # leave together: a rank that tears down early can abort its peer's gloo threads
    except ValueError as err:
        if dist.get_rank() == 0:
            print(f"lmlab.scale.distributed: {err}", file=sys.stderr)
        dist.destroy_process_group()
        return 2
    return 0  # the process group is left to the operating system: see the end of this file


def _report(rows: list[dict], path: str | None) -> None:
    import pandas as pd


    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    print(describe_environment(device, threads=torch.get_num_threads()), f"| backend: {dist.get_backend()}")
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        for scheme in dict.fromkeys(row["scheme"] for row in rows):
            print(pd.DataFrame([row for row in rows if row["scheme"] == scheme]).to_string(index=False))
    if path:
        atomic_write_text(path, json.dumps(rows, indent=1) + "\n")
        print(f"saved {path}")


if __name__ == "__main__":
    # Leave without the interpreter's teardown: once in a CI-like run, after every row was saved and both ranks had
    # passed the final barrier, one rank aborted in gloo's teardown ("terminate called without an active
    # exception"), failing a finished run. A rank is a short-lived process; the operating system frees its sockets.
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
