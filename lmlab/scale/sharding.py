"""Weights that are really sharded: each tensor-parallel rank reads only its slice of the safetensors file.

Introduced in notebooks/08_parallel_and_distributed.ipynb (model parallelism). A rank of p builds its share of a
shipped GPT from byte ranges of ``data/gpt-*.safetensors`` and never holds a whole weight matrix:

- attention: heads [r·H/p, (r+1)·H/p), their q, k, v columns of c_attn (Conv1D weights are stored (in, out), so a
  column slice is ``in`` short reads, one per row and part) and their rows of c_proj (``RowParallel``);
- MLP: units [r·4d/p, (r+1)·4d/p), columns of c_fc and rows of c_proj;
- vocabulary parallel: rows [r·V // p, (r+1)·V // p) of the embedding wte, which is tied to the output layer, so
  the same rows give this rank's slice of the logits. When p does not divide V the first ranks get ⌊V/p⌋ rows and
  the last ones one more (the floor split above: for V = 7973, p = 2, ranks hold 3986 and 3987 rows);
- replicated on every rank: positions (wpe), the layer norms, and the biases added after an all-reduce.

The file is read by hand, without safetensors' ``safe_open``: 8 bytes give the header's length n, the next n bytes
are a JSON header (each tensor's dtype, shape and byte offsets, counted from the end of the header), then the data.
Each slice is read with ``os.preadv`` straight into a preallocated tensor (an unbuffered file: no read-ahead into a
Python buffer, no memory map whose page-ins would count in the process's resident memory). ``SliceReader.bytes_read``
counts what was read, so a test can check it equals ``planned_bytes``.

The vocabulary-parallel cross-entropy (Megatron-LM's) scores tokens without gathering (batch, time, vocab) logits:
all-reduce the max M = max_r max_v z_rv, then Σ_r Σ_v exp(z_rv − M) and the target's logit z_t (owned by one rank,
0 elsewhere); −ln P(t) = ln Σ exp(z − M) + M − z_t. The guess is the smallest vocabulary id whose logit equals M
(an all-reduce MIN of each rank's first argmax where its max is M), as ``torch.argmax`` picks on the whole row.

Peak memory is measured from /proc/self/status: writing "5" to /proc/self/clear_refs resets VmHWM (Linux), so the
peak resident set during a load minus the resident set before it is what loading added (``peak_rss``).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lmlab.data.corpora import TokenizedCorpus, load_corpus, tokenize_corpus
from lmlab.data.shipped import DATA_DIR
from lmlab.measure.runtime import check_int
from lmlab.models.registry import model_entry, names
from lmlab.models.scoring import IGNORE
from lmlab.scale.group import Clock

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
PREFIX = "gpt.transformer."  # the shipped GPTs' tensor names: gpt.transformer.h.0.attn.c_attn.weight, ...


# --- reading slices of a safetensors file --------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file: its dtype, shape, and absolute byte offsets [start, stop) in the file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    stop: int

    @property
    def itemsize(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()


def read_header(path: str | Path) -> dict[str, TensorInfo]:
    """Read only a safetensors file's header: u64 little-endian length n, then n bytes of JSON.

    A tensor's data offsets in the header count from byte 8 + n. Raises ValueError for a file that is not
    safetensors or holds a dtype other than F64, F32, F16, BF16.
    """
    with open(path, "rb", buffering=0) as handle:
        head = handle.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length < 100_000_000:
            raise ValueError(f"path={str(path)!r} is not a safetensors file (header length {length})")
        header = json.loads(handle.read(length))
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in DTYPES:
            raise ValueError(f"tensor {name!r} has dtype={entry['dtype']!r}; the reader knows {sorted(DTYPES)}")
        begin, end = entry["data_offsets"]
        tensors[name] = TensorInfo(DTYPES[entry["dtype"]], tuple(entry["shape"]), 8 + length + begin, 8 + length + end)
    return tensors


class SliceReader:
    """Read row or column slices of a safetensors file's tensors into fresh tensors, and count the bytes read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tensors = read_header(self.path)
        self.bytes_read = 0
        self.largest_bytes = 0  # the largest tensor it returned: never a whole split tensor
        self._fd = os.open(self.path, os.O_RDONLY)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> SliceReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise ValueError(f"{self.path.name} ended at byte {offset + done}: a truncated file")
            done += got
        self.bytes_read += done

    def _fresh(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        out = torch.empty(shape, dtype=dtype)
        self.largest_bytes = max(self.largest_bytes, out.numel() * out.element_size())
        return out

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of tensor ``name`` (the first dimension): one contiguous read."""
        info = self.tensors[name]
        out = self._fresh((stop - start, *info.shape[1:]), info.dtype)
        row_bytes = math.prod(info.shape[1:]) * info.itemsize
        self._read(_bytes_of(out), info.start + start * row_bytes)
        return out

    def columns(self, name: str, ranges: list[tuple[int, int]]) -> torch.Tensor:
        """Columns ``ranges`` (of the last dimension) of a 1-D or 2-D tensor, side by side: one read per row and
        range, so a (rows, cols) matrix costs rows · len(ranges) short reads and never the whole matrix."""
        info = self.tensors[name]
        rows, cols = (1, info.shape[0]) if len(info.shape) == 1 else info.shape
        width = sum(stop - start for start, stop in ranges)
        out = self._fresh((width,) if len(info.shape) == 1 else (rows, width), info.dtype)
        view, size = _bytes_of(out), info.itemsize
        for row in range(rows):
            at = row * width * size
            for start, stop in ranges:
                n = (stop - start) * size
                self._read(view[at:at + n], info.start + (row * cols + start) * size)
                at += n
        return out

    def whole(self, name: str) -> torch.Tensor:
        """The whole tensor ``name`` (for the small replicated ones: positions, layer norms, biases)."""
        info = self.tensors[name]
        return self.rows(name, 0, info.shape[0])


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor's memory."""
    return tensor.view(-1).view(torch.uint8).numpy().data.cast("B")


# --- which slice each rank holds ------------------------------------------------------------------------------


def split_range(size: int, rank: int, world: int) -> tuple[int, int]:
    """Rank r's share [r·size // p, (r+1)·size // p) of ``size`` items: shares differ by at most one item."""
    return rank * size // world, (rank + 1) * size // world


def slice_plan(tensors: dict[str, TensorInfo], n_head: int, rank: int, world: int) -> dict[str, tuple[str, list]]:
    """For each tensor, what rank r of p reads: ("rows", [(a, b)]), ("columns", [(a, b), ...]) or ("whole", []).

    d = n_embd (from c_attn's shape (d, 3d)), heads of width d/H; the rules are in the module's docstring.
    """
    plan: dict[str, tuple[str, list]] = {}
    for name, info in tensors.items():
        short = name.removeprefix(PREFIX)
        if short == "wte.weight":
            plan[name] = ("rows", [split_range(info.shape[0], rank, world)])
        elif short.endswith("attn.c_attn.weight") or short.endswith("attn.c_attn.bias"):
            d = info.shape[-1] // 3
            a, b = split_range(n_head, rank, world)
            plan[name] = ("columns", [(part * d + a * d // n_head, part * d + b * d // n_head) for part in range(3)])
        elif short.endswith("attn.c_proj.weight"):
            d = info.shape[0]
            a, b = split_range(n_head, rank, world)
            plan[name] = ("rows", [(a * d // n_head, b * d // n_head)])
        elif short.endswith("mlp.c_fc.weight") or short.endswith("mlp.c_fc.bias"):
            plan[name] = ("columns", [split_range(info.shape[-1], rank, world)])
        elif short.endswith("mlp.c_proj.weight"):
            plan[name] = ("rows", [split_range(info.shape[0], rank, world)])
        else:
            plan[name] = ("whole", [])
    return plan


def _slice_bytes(info: TensorInfo, how: str, ranges: list[tuple[int, int]]) -> int:
    if how == "whole":
        return info.stop - info.start
    width = sum(stop - start for start, stop in ranges)
    other = math.prod(info.shape[1:]) if how == "rows" else (info.shape[0] if len(info.shape) == 2 else 1)
    return width * other * info.itemsize


def _gpt_files(model_name: str, data_dir: str | Path) -> tuple[Path, dict]:
    model_entry(model_name, names("gpt"), "is not a shipped GPT that loads sharded")
    base = Path(data_dir) / model_name
    return base.with_suffix(".safetensors"), json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))


def _check_world(rank: int, world: int, n_head: int) -> None:
    check_int("world", world, 1, n_head)
    if n_head % world:
        raise ValueError(f"world={world} does not divide the {n_head} attention heads; use a divisor of {n_head}")
    check_int("rank", rank, 0, world - 1)


def planned_bytes(model_name: str, rank: int, world: int, data_dir: str | Path = DATA_DIR) -> dict:
    """From the file's header alone, the parameter bytes rank r of p will hold.

    sharded_bytes = Σ over split tensors of its slice's bytes (≈ 1/p of them); replicated_bytes = Σ of the tensors
    every rank holds whole; planned_bytes = sharded + replicated; whole_bytes = every tensor's bytes (the tied
    embedding counted once, as it is stored); planned_mb = planned_bytes / 1e6; share = planned / whole.
    Raises ValueError for a model that is not a shipped GPT, or a rank or world that does not fit its heads.
    """
    path, card = _gpt_files(model_name, data_dir)
    n_head = card["config"]["n_head"]
    _check_world(rank, world, n_head)
    tensors = read_header(path)
    plan = slice_plan(tensors, n_head, rank, world)
    sizes = {name: _slice_bytes(tensors[name], how, ranges) for name, (how, ranges) in plan.items()}
    replicated = sum(size for name, size in sizes.items() if plan[name][0] == "whole")
    whole = sum(info.stop - info.start for info in tensors.values())
    total = sum(sizes.values())
    return {"model": model_name, "rank": rank, "world_size": world, "sharded_bytes": total - replicated,
            "replicated_bytes": replicated, "planned_bytes": total, "whole_bytes": whole, "planned_mb": total / 1e6,
            "share": total / whole}


def check_budget_mb(memory_budget_mb: float | None) -> float | None:
    """Return ``memory_budget_mb`` if it is None or a number > 0, else raise ValueError naming it."""
    if memory_budget_mb is not None and (isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb,
                                                                                             int | float)
                                         or not memory_budget_mb > 0):
        raise ValueError(f"memory_budget_mb={memory_budget_mb!r} is out of range; use a number of MB > 0")
    return memory_budget_mb


def check_memory_budget(model_name: str, world: int, memory_budget_mb: float | None,
                        data_dir: str | Path = DATA_DIR) -> float:
    """Return the largest planned MB per rank on ``world`` ranks; raise ValueError if it exceeds the budget.

    The error names memory_budget_mb, its value, the planned MB per rank and the world sizes (divisors of the
    heads) whose largest rank fits. Every rank takes the same decision: it compares the largest rank's bytes.
    Raises ValueError for a budget that is not a positive number.
    """
    path, card = _gpt_files(model_name, data_dir)
    n_head = card["config"]["n_head"]

    def largest_mb(p: int) -> float:
        return max(planned_bytes(model_name, r, p, data_dir)["planned_bytes"] for r in range(p)) / 1e6

    planned = largest_mb(world)
    if memory_budget_mb is None:
        return planned
    check_budget_mb(memory_budget_mb)
    if planned > memory_budget_mb:
        fits = [p for p in range(1, n_head + 1) if n_head % p == 0 and largest_mb(p) <= memory_budget_mb]
        where = f"it fits on {fits} ranks" if fits else f"no split of its {n_head} heads fits"
        raise ValueError(f"memory_budget_mb={memory_budget_mb:g} is below the {planned:.2f} MB of weights each of "
                         f"{world} rank(s) would hold for {model_name}; {where}")
    return planned


# --- peak memory ------------------------------------------------------------------------------------------------


def _status_kb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return math.nan


@contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Measure the peak resident memory a block adds: peak_mb = (VmHWM after − VmRSS before) · 1024 / 1e6.

    Linux only (VmHWM is reset by writing "5" to /proc/self/clear_refs); elsewhere peak_mb is nan. Memory the
    process freed earlier and reuses is not counted: measure in a fresh process, before other work. VmRSS counts
    file-backed pages too: library code run for the first time (about 3 MB for a first load in a fresh Python,
    about 1 MB under torchrun after the group's start), and the pages of a memory-mapped file once they are read.
    """
    out = {"peak_mb": math.nan, "rss_before_mb": math.nan}
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        before = _status_kb("VmRSS")
    except OSError:
        before = math.nan
    yield out
    if not math.isnan(before):
        out["rss_before_mb"] = before * 1024 / 1e6
        out["peak_mb"] = (_status_kb("VmHWM") - before) * 1024 / 1e6


# --- the rank's module ----------------------------------------------------------------------------------------


class RowParallel(nn.Module):
    """Multiply by this rank's row slice, sum the partial products over ranks, add the bias once.

    y = Σ_r x_r W_r + b, where x_r are this rank's columns of x (its heads, or its MLP units) and W_r: (in/N, out).
    ``copy=False`` keeps the given tensors (a slice just read from the file) instead of copying them.
    """

    def __init__(self, weight_in_out: torch.Tensor, bias: torch.Tensor | None, clock: Clock, copy: bool = True):
        super().__init__()
        weight = weight_in_out.detach().clone().contiguous() if copy else weight_in_out
        self.weight = nn.Parameter(weight, requires_grad=False)
        kept = None if bias is None else (bias.detach().clone() if copy else bias)
        self.bias = None if kept is None else nn.Parameter(kept, requires_grad=False)
        self.clock = clock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.clock.all_reduce(x @ self.weight)  # (..., out): partial sums, then their total
        return y if self.bias is None else y + self.bias


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


class ShardedBlock(nn.Module):
    """One GPT-2 block holding this rank's heads and MLP units: the sum over ranks is the whole block.

    h ← h + c_proj(attention_my_heads(ln_1(h))); h ← h + mlp_proj(gelu_tanh(ln_2(h) W_fc,r + b_fc,r)), each
    c_proj a ``RowParallel`` (one all-reduce each). Attention is causal: right-padded rows need no other mask.
    """

    def __init__(self, w: dict[str, torch.Tensor], heads: int, clock: Clock):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.ParameterList([_frozen(w["ln_1.weight"]), _frozen(w["ln_1.bias"])])
        self.ln_2 = nn.ParameterList([_frozen(w["ln_2.weight"]), _frozen(w["ln_2.bias"])])
        self.c_attn = nn.ParameterList([_frozen(w["attn.c_attn.weight"]), _frozen(w["attn.c_attn.bias"])])
        self.c_fc = nn.ParameterList([_frozen(w["mlp.c_fc.weight"]), _frozen(w["mlp.c_fc.bias"])])
        self.attn_proj = RowParallel(w["attn.c_proj.weight"], w["attn.c_proj.bias"], clock, copy=False)
        self.mlp_proj = RowParallel(w["mlp.c_proj.weight"], w["mlp.c_proj.bias"], clock, copy=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch, time, d = h.shape
        x = F.layer_norm(h, (d,), self.ln_1[0], self.ln_1[1], eps=1e-5)
        q, k, v = (x @ self.c_attn[0] + self.c_attn[1]).chunk(3, dim=-1)  # each (batch, time, my heads · d_head)
        q, k, v = (t.view(batch, time, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # (batch, heads, t, dh)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, time, -1)
        h = h + self.attn_proj(y)
        x = F.layer_norm(h, (d,), self.ln_2[0], self.ln_2[1], eps=1e-5)
        return h + self.mlp_proj(F.gelu(x @ self.c_fc[0] + self.c_fc[1], approximate="tanh"))


class VocabParallelGPT(nn.Module):
    """A rank's share of a shipped GPT: its vocabulary rows of the tied embedding/output layer, its heads and MLP
    units, and the replicated positions and layer norms. ``score`` gives per-token −ln P and guesses."""

    load_row: dict  # set by load_tensor_parallel_gpt: planned and measured bytes of this rank

    def __init__(self, w: dict[str, torch.Tensor], heads: int, vocab_start: int, vocab_size: int, clock: Clock):
        super().__init__()
        self.vocab_start, self.vocab_size = vocab_start, vocab_size  # rows [vocab_start, vocab_start + len(wte))
        self.clock = clock
        self.wte, self.wpe = _frozen(w["wte.weight"]), _frozen(w["wpe.weight"])
        self.ln_f = nn.ParameterList([_frozen(w["ln_f.weight"]), _frozen(w["ln_f.bias"])])
        layers = sorted({int(name.split(".")[1]) for name in w if name.startswith("h.")})
        self.h = nn.ModuleList(
            ShardedBlock({k.split(".", 2)[2]: t for k, t in w.items() if k.startswith(f"h.{i}.")}, heads, clock)
            for i in layers)

    def set_clock(self, clock: Clock) -> None:
        """Time the all-reduces of later calls on ``clock``."""
        self.clock = clock
        for module in self.modules():
            if isinstance(module, RowParallel):
                module.clock = clock

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """wte[ids] + wpe[positions]: look up the ids in this rank's rows, zeros for the others, all-reduce."""
        local = ids - self.vocab_start
        mine = (local >= 0) & (local < self.wte.shape[0])  # (batch, time)
        rows = self.wte[local.clamp(0, self.wte.shape[0] - 1)] * mine[..., None]  # (batch, time, d)
        return self.clock.all_reduce(rows) + self.wpe[: ids.shape[1]]

    def local_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the logits: ln_f(blocks(embed(ids))) · wte_rᵀ, (batch, time, rows of this rank)."""
        h = self.embed(ids)
        for block in self.h:
            h = block(h)
        h = F.layer_norm(h, (h.shape[-1],), self.ln_f[0], self.ln_f[1], eps=1e-5)
        return h @ self.wte.T

    def score(self, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(−ln P(target), argmax guess) at every position, (batch, time) each, from ``vocab_parallel_nll``."""
        with torch.no_grad():
            return vocab_parallel_nll(self.local_logits(ids), targets, self.vocab_start, self.vocab_size, self.clock)


def _all_reduce(tensor: torch.Tensor, op, clock: Clock) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        with clock.comm():
            dist.all_reduce(tensor, op=op)
    return tensor


def vocab_parallel_nll(local_logits: torch.Tensor, targets: torch.Tensor, vocab_start: int, vocab_size: int,
                       clock: Clock | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token −ln P(target) (float64, 0 where target = −100) and argmax guesses from vocabulary-sliced logits.

    M = all-reduce max of max_v z; S = all-reduce Σ of Σ_v exp(z − M); z_t = all-reduce Σ of the target's logit
    (0 on ranks that do not own it); −ln P(t) = ln S + M − z_t. guess = all-reduce min over ranks of
    (vocab_start + first argmax) where the rank's max equals M, else vocab_size. Three all-reduces of (batch, time)
    floats; without a group it is the whole row's log-softmax. Computed in float32 like the one scorer.
    """
    clock = clock or Clock()
    z = local_logits.float()  # (batch, time, my rows)
    local_max, local_arg = z.max(dim=-1)  # (batch, time): the first maximum, as torch.argmax
    top = _all_reduce(local_max.clone(), dist.ReduceOp.MAX, clock)
    rows = z.shape[-1]
    local_t = targets - vocab_start
    mine = (local_t >= 0) & (local_t < rows)
    target_logit = z.gather(-1, local_t.clamp(0, rows - 1)[..., None]).squeeze(-1) * mine
    sums = torch.stack([torch.exp(z - top[..., None]).sum(-1), target_logit])  # (2, batch, time)
    sums = _all_reduce(sums, dist.ReduceOp.SUM, clock)
    guess = torch.where(local_max == top, local_arg + vocab_start, torch.full_like(local_arg, vocab_size))
    guess = _all_reduce(guess, dist.ReduceOp.MIN, clock)
    nll = (torch.log(sums[0]) + top - sums[1]).double()
    return torch.where(targets == IGNORE, torch.zeros_like(nll), nll), guess


# --- loading a rank's share ---------------------------------------------------------------------------------------


def load_tensor_parallel_gpt(model_name: str, rank: int, world: int, clock: Clock | None = None,
                             memory_budget_mb: float | None = None,
                             data_dir: str | Path = DATA_DIR) -> VocabParallelGPT:
    """Build rank r of p's share of a shipped GPT from its slices of the safetensors file, never the whole model.

    What each rank reads is ``slice_plan``'s (heads, MLP units, vocabulary rows; positions and norms whole). With
    ``memory_budget_mb``, ``check_memory_budget`` refuses before any weight is read. The module's ``load_row`` holds
    ``planned_bytes``' fields plus parameter_bytes_per_rank (Σ numel · itemsize of its parameters), bytes_read,
    largest_read_bytes (the largest tensor read: a slice, never a whole split tensor), peak_load_mb (``peak_rss``
    around reading and building), memory_budget_mb. Raises ValueError for a model that is not a shipped GPT, a rank
    or world that does not fit its heads, or weights over the budget.
    """
    path, card = _gpt_files(model_name, data_dir)
    config = card["config"]
    _check_world(rank, world, config["n_head"])
    check_memory_budget(model_name, world, memory_budget_mb, data_dir)
    plan_row = planned_bytes(model_name, rank, world, data_dir)
    with peak_rss() as peak, SliceReader(path) as reader:
        weights = {}
        for name, (how, ranges) in slice_plan(reader.tensors, config["n_head"], rank, world).items():
            short = name.removeprefix(PREFIX)
            if how == "rows":
                weights[short] = reader.rows(name, *ranges[0])
            elif how == "columns":
                weights[short] = reader.columns(name, ranges)
            else:
                weights[short] = reader.whole(name)
        vocab_start = split_range(config["vocab_size"], rank, world)[0]
        module = VocabParallelGPT(weights, config["n_head"] // world, vocab_start, config["vocab_size"],
                                  clock or Clock()).eval()
        del weights
    held = sum(p.numel() * p.element_size() for p in module.parameters())
    module.load_row = {**plan_row, "parameter_bytes_per_rank": held, "whole_parameter_bytes": plan_row["whole_bytes"],
                       "bytes_read": reader.bytes_read, "largest_read_bytes": reader.largest_bytes,
                       "peak_load_mb": peak["peak_mb"],
                       "memory_budget_mb": memory_budget_mb}
    return module


def gpt_corpus(model_name: str, data_dir: str | Path = DATA_DIR) -> TokenizedCorpus:
    """The tokenized corpus a shipped GPT was trained on (its card's corpus and min_count), without its weights."""
    _, card = _gpt_files(model_name, data_dir)
    return tokenize_corpus(load_corpus(card["corpus"]), min_count=card["min_count"])

