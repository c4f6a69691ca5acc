"""A model of scaling out: what N ranks would give, from measured parameters and the model's config.

Introduced in notebooks/08_parallel_and_distributed.ipynb (what more ranks would give). This machine has two
cores, so 2 ranks is all it measures; beyond that every number here is a **model**, and each row says so
(``"kind": "model"``). Its parameters are each measured once or read from the config, never fitted to the
point they predict:

- a, b: an all-reduce on 2 ranks costs a + b · bytes (``fit_allreduce`` on ``allreduce_ms`` rows);
  a ring all-reduce on N ranks then costs (N − 1) · a + 2 (N − 1) / N · b · bytes (``ring_allreduce_ms``);
- a_p2p, b_p2p: one point-to-point send of a message (``sendrecv_ms`` rows, fitted the same way);
- κ, the contention: two ranks each doing half the work are each slower than one process doing it alone (they
  share memory bandwidth, caches and the operating system). It is measured on the data-parallel row after the
  load imbalance, computed exactly from the tokens each rank scores, is taken out (``contention``);
- the multiply-add shares of each part of the model (``macs_per_token``): what tensor parallelism splits, what
  every rank repeats, and what each pipeline stage runs.

Each scheme has a cap, a rank count beyond which it cannot go: data parallelism needs a batch per rank, tensor
parallelism a divisor of the heads, a pipeline a block per stage, DDP a document per rank. The message costs
are measured under torchrun, by the launcher in ``lmlab.scale.distributed``:

    python -m lmlab parallel --scheme allreduce sendrecv --model gpt-large --save rows.json
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from lmlab.data.corpora import TokenizedCorpus, document_batches
from lmlab.data.shipped import DATA_DIR
from lmlab.measure.runtime import check_int
from lmlab.measure.timing import Timing
from lmlab.scale.group import Clock, rank_and_world
from lmlab.scale.pipeline import bubble_predicted, stage_bounds

MESSAGE_BYTES = (1_000, 16_000, 256_000, 1_000_000, 4_000_000, 16_000_000)  # the sizes allreduce_ms, sendrecv_ms time
SCORE_BYTES = 3 * 8  # data parallelism's one all-reduce: [Σ nll, Σ correct, Σ tokens] in float64
STORED_ROWS = DATA_DIR / "bench" / "parallel-rows.json"  # the measured run check_model is tested on
BACKWARD_SHARE = 2 / 3  # of a training step's compute: backward ≈ 2 × forward in multiply-adds


# --- the cost of a message: measured, and fitted as a + b · bytes -------------------------------------------


def allreduce_ms(sizes_bytes: Sequence[int] = MESSAGE_BYTES, repeat: int = 20) -> list[dict]:
    """Time all_reduce(SUM) of float32 messages of each size: median and p90 ms over ``repeat`` calls.

    Needs a running process group (every rank must call it with the same sizes). Raises ValueError for a size
    below 4 bytes or repeat < 1.
    """
    return _time_messages("allreduce", sizes_bytes, repeat, lambda message, clock: clock.all_reduce(message))


def sendrecv_ms(sizes_bytes: Sequence[int] = MESSAGE_BYTES, repeat: int = 20) -> list[dict]:
    """Time a point-to-point send of float32 messages between ranks 0 and 1: median and p90 ms of one way.

    Ping-pong: rank 0 sends, rank 1 receives and sends the message back; one way = round trip / 2 (as ranks 0
    and 1 see the same link both ways). Ranks beyond 1 wait at the barriers. Needs a running process group of 2 or
    more ranks, every rank calling with the same sizes. Raises ValueError for a size below 4 bytes, repeat < 1, or
    a group of fewer than 2 ranks.
    """
    rank, world = rank_and_world()
    check_int("world_size", world, 2)

    def ping_pong(message: torch.Tensor, clock: Clock) -> None:
        with clock.comm():
            if rank == 0:
                dist.send(message, dst=1)
                dist.recv(message, src=1)
            elif rank == 1:
                dist.recv(message, src=0)
                dist.send(message, dst=0)

    return _time_messages("sendrecv", sizes_bytes, repeat, ping_pong, calls_per_time=2)


def _time_messages(scheme: str, sizes_bytes: Sequence[int], repeat: int,
                   exchange: Callable[[torch.Tensor, Clock], object], calls_per_time: int = 1) -> list[dict]:
    """Time ``exchange(message, clock)`` for float32 messages of each size, after a barrier each, two warm-ups
    first: one row per size with the median and p90 of clock.comm_ms / calls_per_time."""
    check_int("repeat", repeat, 1)
    _, world = rank_and_world()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    rows = []
    for size in sizes_bytes:
        check_int("sizes_bytes", size, 4)
        message = torch.ones(size // 4, device=device)
        times = []
        for _ in range(repeat + 2):  # two warm-up calls
            dist.barrier()
            clock = Clock()
            exchange(message, clock)
            times.append(clock.comm_ms / calls_per_time)
        timing = Timing.of(times[2:], warmup=2)
        rows.append({"scheme": scheme, "bytes": size, "world_size": world, "median_ms": timing.median_ms,
                     "p90_ms": timing.p90_ms})
    return rows


def fit_latency(rows: Sequence[dict], scheme: str) -> tuple[float, float]:
    """Fit ``scheme`` rows measured on 2 ranks to t(bytes) = a + b · bytes; return (a ms, b ms per byte).

    Relative least squares: minimise Σ ((a + b · xᵢ) / yᵢ − 1)², weights 1 / yᵢ², so a 0.3 ms message counts as
    much as a 20 ms one (plain least squares lets the largest messages set a and misses the small ones several
    times over). a is the fixed cost of a call (latency), 1 / b the bandwidth; both are kept ≥ 0. Raises
    ValueError unless the rows hold at least two message sizes of ``scheme`` on world size 2.
    """
    mine = [r for r in rows if r.get("scheme", scheme) == scheme]
    if len({r["bytes"] for r in mine}) < 2 or {r["world_size"] for r in mine} != {2}:
        raise ValueError(f"rows must hold {scheme!r} rows measured on 2 ranks, with at least two message sizes")
    x = torch.tensor([float(r["bytes"]) for r in mine], dtype=torch.float64)
    y = torch.tensor([float(r["median_ms"]) for r in mine], dtype=torch.float64)
    w = 1 / y**2
    sw, sx, sxx, sy, sxy = w.sum(), (w * x).sum(), (w * x * x).sum(), (w * y).sum(), (w * x * y).sum()
    b = float((sw * sxy - sx * sy) / (sw * sxx - sx**2))
    a = float((sy - b * sx) / sw)
    if b < 0:  # no bandwidth term: a is the weighted mean
        return float(sy / sw), 0.0
    if a < 0:  # no latency term: b alone, through the origin
        return 0.0, float(sxy / sxx)
    return a, b


def fit_allreduce(rows: Sequence[dict]) -> tuple[float, float]:
    """Fit all_reduce times on 2 ranks to t(bytes) = a + b · bytes (``fit_latency``, relative least squares).

    Raises ValueError unless the rows hold ``allreduce_ms`` rows of world size 2 with at least two sizes.
    """
    return fit_latency(rows, "allreduce")


def fit_residuals(rows: Sequence[dict], scheme: str, a_ms: float, b_ms_per_byte: float) -> list[dict]:
    """Each ``scheme`` row's measured median against the fit a + b · bytes: fitted / measured (1 is a perfect fit)."""
    return [{"scheme": scheme, "bytes": r["bytes"], "measured_ms": r["median_ms"],
             "fitted_ms": a_ms + b_ms_per_byte * r["bytes"],
             "fitted_over_measured": (a_ms + b_ms_per_byte * r["bytes"]) / r["median_ms"]}
            for r in rows if r.get("scheme", scheme) == scheme]


def ring_allreduce_ms(message_bytes: float, n: int, a_ms: float, b_ms_per_byte: float) -> float:
    """Predict an all_reduce on n ranks from the 2-rank fit (a model): ring all-reduce sends 2 (n − 1) / n of the
    message from each rank in 2 (n − 1) steps, so t_n = (n − 1) · a + 2 (n − 1) / n · b · bytes (t_2 = a + b · bytes,
    t_1 = 0). Raises ValueError for n < 1.
    """
    check_int("n", n, 1)
    return (n - 1) * a_ms + 2 * (n - 1) / n * b_ms_per_byte * message_bytes


def amdahl_speedup(parallel_fraction: float, n: int) -> float:
    """Return Amdahl's speed-up on n workers, a model: S(n) = 1 / ((1 − p) + p / n).

    Raises ValueError if p is outside [0, 1] or n < 1.
    """
    if not 0.0 <= parallel_fraction <= 1.0:
        raise ValueError(f"parallel_fraction={parallel_fraction!r} is out of range; use a fraction in [0, 1]")
    check_int("n", n, 1)
    return 1.0 / ((1.0 - parallel_fraction) + parallel_fraction / n)


# --- the work: multiply-adds from the config, tokens from the fixed batches ---------------------------------


def macs_per_token(config: dict, time: int) -> dict[str, float]:
    """Multiply-adds per token position of a GPT (a config with n_layer, n_embd, vocab_size) at padded length time.

    A block: 12 d² in its matrices (q, k, v, output: 4 d²; MLP: 8 d²) plus 2 · time · d in attention (scores
    QKᵀ and their weighted sum of V, over the whole padded row as the model computes it). The output layer: V · d.
    Embeddings, layer norms and activations do no matrix products and are left out.
    """
    d = config["n_embd"]
    return {"block": 12 * d * d + 2 * time * d, "blocks": config["n_layer"] * (12 * d * d + 2 * time * d),
            "head": config["vocab_size"] * d}


def batch_work(data: TokenizedCorpus, split: str, batch_size: int, max_len: int | None = None) -> list[dict]:
    """Each batch of ``document_batches(data, split, batch_size, max_len)``, in its fixed order: the token positions
    it computes (batch · padded length) and the tokens it scores (its mask's sum). Rank r of N takes batches
    r, r + N, ...; ``rank_shares`` sums them."""
    return [{"positions": int(inputs.numel()), "tokens": int(mask.sum())}
            for inputs, _, mask in document_batches(data, split, batch_size, max_len=max_len)]


def rank_shares(work: Sequence[dict], n: int, key: str = "positions") -> list[float]:
    """Each rank's share of the work on n ranks: shareᵣ = Σ_{i ≡ r mod n} workᵢ / Σᵢ workᵢ (batches dealt round-robin).

    ``key`` is "positions" (what the model computes, padding included: the compute's share) or "tokens" (what
    it scores). Raises ValueError for n below 1 or above the number of batches (a rank with nothing to do).
    """
    check_int("n", n, 1, len(work))
    total = sum(w[key] for w in work)
    return [sum(w[key] for w in work[r::n]) / total for r in range(n)]


def contention(compute_ms: float, single_ms: float, share: float) -> float:
    """κ = compute_ms / (T1 · share) − 1: how much slower a rank runs its share than one process alone would.

    compute_ms is the slowest rank's compute, T1 = single_ms the single process's time for all the work, share
    that rank's share of it. κ = 0: no contention. Raises ValueError for a time or share that is not positive.
    """
    for name, value in (("compute_ms", compute_ms), ("single_ms", single_ms), ("share", share)):
        if not value > 0:
            raise ValueError(f"{name}={value!r} is out of range; use a positive number")
    return compute_ms / (single_ms * share) - 1


# --- the parameters, each measured once or read from the config ---------------------------------------------


def scaling_parameters(rows: Sequence[dict], config: dict, data: TokenizedCorpus, *, batch_size: int = 32,
                       micro_batches: int = 4, vocab_parallel: bool = True) -> dict:
    """Collect the model's parameters from one measured run's rows, the GPT's config and the scored test split.

    a, b from the allreduce rows and a_p2p, b_p2p from the sendrecv rows (``fit_latency``); the batches' work
    (``batch_work`` of ``data``'s test split, which must be the one the data row scored); the tensor and pipeline
    batch, the first ``batch_size`` test documents (batch, padded time); κ from the data row (``contention``):
    the heaviest rank arrives last at the one all-reduce, so its compute is wall − t_allreduce(24 bytes) (the
    row's compute_ms may be the lighter rank's: both leave the all-reduce together, so which wall is larger is a
    toss-up), and its share is the largest ``rank_shares``. Raises ValueError if a kind of row is missing.
    """
    a, b = fit_allreduce(rows)
    a_p2p, b_p2p = fit_latency(rows, "sendrecv")
    work = batch_work(data, "test", batch_size, config["n_positions"])
    first = batch_work(data.head("test", min(batch_size, len(data.ids["test"]))), "test", batch_size,
                       config["n_positions"])[0]
    batch = min(batch_size, len(data.ids["test"]))
    found = [r for r in rows if r.get("scheme") == "data" and r.get("world_size", 0) >= 2]
    if not found:
        raise ValueError("rows hold no 'data' row on 2 or more ranks: κ (the contention) is measured there")
    data_row = found[0]
    w = data_row["world_size"]
    slowest_ms = data_row["wall_ms"] - ring_allreduce_ms(SCORE_BYTES, w, a, b)
    kappa = contention(slowest_ms, data_row["single_ms"], max(rank_shares(work, w)))
    return {"config": {k: config[k] for k in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions")},
            "a_ms": a, "b_ms_per_byte": b, "p2p_a_ms": a_p2p, "p2p_b_ms_per_byte": b_p2p, "kappa": kappa,
            "batches": work, "batch": batch, "time": first["positions"] // batch, "micro_batches": micro_batches,
            "vocab_parallel": vocab_parallel}


def stored_parameters(path: str | os.PathLike = STORED_ROWS, model_name: str | None = None,
                      vocab_parallel: bool = True) -> tuple[list[dict], dict]:
    """Read a stored measured run (``STORED_ROWS``: its rows, model, documents, batch size and micro-batches) and
    return (its rows, ``scaling_parameters`` for them). Loads the shipped GPT's config and corpus."""
    from lmlab.models.registry import load_model

    record = json.loads(open(path, encoding="utf-8").read())
    name = model_name or record["model"]
    model, data = load_model(name)
    if record.get("documents"):
        data = data.head("test", record["documents"])
    config = {k: getattr(model.config, k) for k in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions")}
    params = scaling_parameters(record["rows"], config, data, batch_size=record["batch_size"],
                                micro_batches=record["micro_batches"], vocab_parallel=vocab_parallel)
    return record["rows"], params


# --- each scheme on N ranks (a model) -----------------------------------------------------------------------


def scheme_cap(scheme: str, params: dict, row: dict | None = None) -> tuple[int, str]:
    """The most ranks ``scheme`` can use, and why: data, a batch per rank; tensor, the heads (N must divide them);
    pipeline, a block per stage; ddp, a document of the global batch per rank (from its ``row``)."""
    cfg = params["config"]
    if scheme == "data":
        return len(params["batches"]), f"{len(params['batches'])} batches: a rank with no batch does nothing"
    if scheme == "tensor":
        return cfg["n_head"], f"{cfg['n_head']} heads: N must divide them"
    if scheme == "pipeline":
        return cfg["n_layer"], f"{cfg['n_layer']} blocks: at most one stage per block"
    if scheme == "ddp" and row is not None:
        return row["global_batch"], f"{row['global_batch']} documents in the global batch: one per rank at least"
    raise ValueError(f"scheme={scheme!r} is not modelled; use data, tensor, pipeline or ddp (with its row)")


def _check_cap(scheme: str, n: int, params: dict, row: dict) -> tuple[int, str]:
    check_int("n", n, 1)
    cap, reason = scheme_cap(scheme, params, row)
    if n > cap or (scheme == "tensor" and cap % n):
        raise ValueError(f"n={n} is beyond what {scheme} parallelism can use: {reason} (cap {cap})")
    return cap, reason


def _data(row: dict, n: int, p: dict, slow: float) -> dict:
    """Throughput over the test set: the heaviest rank's batches, then one all-reduce of 3 float64."""
    shares = rank_shares(p["batches"], n)
    t1 = row["single_ms"]
    return {"compute_ms": t1 * max(shares) * slow,
            "communication_ms": ring_allreduce_ms(SCORE_BYTES, n, p["a_ms"], p["b_ms_per_byte"]),
            "waiting_ms": t1 * (max(shares) - min(shares)) * slow, "imbalance_ms": t1 * (max(shares) - 1 / n) * slow,
            "max_share": max(shares)}


def _tensor(row: dict, n: int, p: dict, slow: float) -> dict:
    """Latency of one batch: the repeated part whole, the split part / N, 2 all-reduces of the activations per
    block. Vocabulary-parallel (lmlab.scale.sharding): one more for the embedding, and the cross-entropy's three
    small ones per token (the max, [Σ exp, the target's logit], the guess)."""
    cfg, message = p["config"], p["batch"] * p["time"] * p["config"]["n_embd"] * 4
    macs = macs_per_token(cfg, p["time"])
    repeated = 0.0 if p["vocab_parallel"] else macs["head"] / (macs["blocks"] + macs["head"])
    big = 2 * cfg["n_layer"] + (1 if p["vocab_parallel"] else 0)
    comm = big * ring_allreduce_ms(message, n, p["a_ms"], p["b_ms_per_byte"])
    if p["vocab_parallel"]:
        tokens = p["batch"] * p["time"]
        comm += sum(ring_allreduce_ms(tokens * size, n, p["a_ms"], p["b_ms_per_byte"]) for size in (4, 8, 8))
    return {"compute_ms": row["single_ms"] * (repeated + (1 - repeated) / n) * slow, "communication_ms": comm,
            "repeated_share": repeated, "message_bytes": message}


def _pipeline(row: dict, n: int, p: dict, slow: float) -> dict:
    """Latency of one batch in m micro-batches: (m + N − 1) slowest-stage steps plus N − 1 sends."""
    cfg, m = p["config"], row.get("micro_batches") or p["micro_batches"]
    head = cfg["vocab_size"] / (12 * cfg["n_embd"])
    costs = [stop - start for start, stop in stage_bounds(cfg["n_layer"], n, head)]
    costs[-1] += head
    step_ms = row["single_ms"] / m * max(costs) / (cfg["n_layer"] + head) * slow
    message = math.ceil(p["batch"] / m) * p["time"] * cfg["n_embd"] * 4
    return {"compute_ms": m * step_ms, "bubble_ms": (n - 1) * step_ms, "bubble_share": bubble_predicted(n, m),
            "communication_ms": (n - 1) * (p["p2p_a_ms"] + p["p2p_b_ms_per_byte"] * message),
            "stage_step_ms": step_ms, "message_bytes": message}


def _ddp(row: dict, n: int, p: dict, slow: float) -> dict:
    """One training step: the forward and backward / N, the optimizer's step on every rank (DDP repeats it on all
    the parameters: ``single_optimizer_ms``, 0 if the row lacks it), and a ring all-reduce of the gradients
    (4 bytes each) overlapped with the backward pass: step = forward + max(backward, all-reduce) + update,
    backward = BACKWARD_SHARE of the forward and backward."""
    update = row.get("single_optimizer_ms", 0.0)
    compute = (row["single_step_ms"] - update) / n * slow
    grads = ring_allreduce_ms(4 * row["parameters"], n, p["a_ms"], p["b_ms_per_byte"])
    overlapped = max(compute, (1 - BACKWARD_SHARE) * compute + grads) + update
    return {"compute_ms": compute + update, "communication_ms": grads, "no_overlap_ms": compute + grads + update,
            "exposed_communication_ms": overlapped - compute - update, "overlapped_ms": overlapped,
            "repeated_ms": update}


_SCHEMES = {"data": _data, "tensor": _tensor, "pipeline": _pipeline, "ddp": _ddp}


def scaling_model(row: dict, n: int, params: dict) -> dict:
    """Predict a scheme's wall ms and speed-up on n ranks from its measured row and ``params`` (a model).

    T1 is the row's single-process ms (``single_step_ms`` for ddp); every rank of n ≥ 2 runs (1 + κ) slower
    than alone (κ measured on 2 ranks, assumed the same on more: cores like these, sharing memory like these).

    - data (throughput over the test set): T_N = T1 · max_r shareᵣ(N) · (1 + κ) + (N − 1) a + 2 (N − 1)/N · b · 24;
      the lighter ranks' idle time, T1 (1 + κ)(max − min share), is waiting (not communication);
    - tensor (one batch): T_N = T1 (r + (1 − r)/N)(1 + κ) + 2 n_layer · ring(batch · time · d · 4 bytes), r the
      output layer's share of multiply-adds (0 once it is vocabulary-parallel, which adds 3 small all-reduces);
    - pipeline (one batch, m micro-batches): T_N = (m + N − 1) · t_stage + (N − 1) · (a_p2p + b_p2p · micro-batch
      bytes), t_stage = T1 / m · (slowest stage's cost / total) · (1 + κ); the bubble is (N − 1) · t_stage;
    - ddp (one training step): T_N = max(C, (1 − 2/3) C + ring(4 · parameters bytes)) + U, C = (T1 − U) / N ·
      (1 + κ), U the optimizer's step, which every rank repeats; no_overlap_ms = C + ring(...) + U.

    speed-up = T1 / T_N. Raises ValueError for an unknown scheme, n < 1, or n beyond the scheme's cap
    (``scheme_cap``: the message names n and the cap).
    """
    scheme = row.get("scheme")
    if scheme not in _SCHEMES:
        raise ValueError(f"row['scheme']={scheme!r} is not modelled; use one of {tuple(_SCHEMES)}")
    cap, reason = _check_cap(scheme, n, params, row)
    parts = _SCHEMES[scheme](row, n, params, 1 + params["kappa"] if n >= 2 else 1.0)
    t1 = row["single_step_ms"] if scheme == "ddp" else row["single_ms"]
    wall = parts["overlapped_ms"] if scheme == "ddp" else (
        parts["compute_ms"] + parts["communication_ms"] + parts.get("bubble_ms", 0.0))
    return {"kind": "model", "scheme": scheme, "n": n, "wall_ms": wall, "single_ms": t1, "speedup": t1 / wall,
            "kappa": params["kappa"], "waiting_ms": 0.0, "bubble_ms": 0.0, **parts, "cap": cap, "cap_reason": reason}


def model_curve(row: dict, params: dict, ranks: Sequence[int] | None = None) -> list[dict]:
    """``scaling_model(row, n, params)`` for each n in ``ranks`` that the scheme can use (default: every n from 1
    to its cap; tensor: the divisors of the heads); an n beyond the cap is left out, not guessed."""
    cap, _ = scheme_cap(row["scheme"], params, row)
    usable = [n for n in (ranks or range(1, cap + 1))
              if 1 <= n <= cap and not (row["scheme"] == "tensor" and cap % n)]
    return [scaling_model(row, n, params) for n in usable]


def check_model(measured_rows: Sequence[dict], params: dict) -> list[dict]:
    """For each measured scheme row (data, tensor, pipeline, ddp) on 2 or more ranks: its measured wall ms, the
    model's, relative error = predicted / measured − 1, and the model's parts (compute, communication, waiting,
    bubble). The data row is where κ was measured, so its compute is reproduced by construction
    (``kappa_from_here``); the others are predictions from parameters measured elsewhere.

    measured_communication_ms is the row's time inside collectives and sends, which includes waiting: at each
    of tensor parallelism's 2 · n_layer all-reduces a rank waits for the other to arrive (their compute jitters
    when they share cores), and a pipeline's last stage waits in recv through the bubble. The model's
    communication_ms is the transfer alone (the all-reduce and send fits, measured after a barrier), so the two
    differ by that waiting; compare walls, and read the difference of the parts as the waiting the model lacks.
    """
    out = []
    for row in measured_rows:
        if row.get("scheme") not in _SCHEMES or row.get("world_size", 1) < 2:
            continue
        model = scaling_model(row, row["world_size"], params)
        wall = row["step_ms"] if row["scheme"] == "ddp" else row["wall_ms"]
        out.append({"scheme": row["scheme"], "n": row["world_size"], "measured_ms": wall,
                    "predicted_ms": model["wall_ms"], "relative_error": model["wall_ms"] / wall - 1,
                    "measured_speedup": model["single_ms"] / wall, "predicted_speedup": model["speedup"],
                    **{k: model[k] for k in ("compute_ms", "communication_ms", "waiting_ms", "bubble_ms")},
                    "measured_communication_ms": row.get("communication_ms", row.get("exposed_communication_ms")),
                    "kappa_from_here": row["scheme"] == "data"})
    return out


# --- model parallelism by arithmetic ------------------------------------------------------------------------


def tensor_parallel_devices(params: int, bytes_per_param: float, device_bytes: float, heads: int,
                            kv_heads: int, kv_params: int = 0) -> dict:
    """The fewest devices that hold the weights AND are a valid tensor-parallel degree N (N divides the heads).

    Weights only (no KV cache, no activations), every matrix split N ways (embeddings and output layer
    vocabulary-parallel) except the key/value projections beyond kv_heads: with N > kv_heads each device keeps
    one KV head, copied on N / kv_heads devices, so a device holds (params − kv_params) / N + kv_params /
    min(N, kv_heads) parameters (kv_params: the k and v weights of all layers; 0 leaves this out). N must also be
    a multiple or a divisor of kv_heads. Raises ValueError for a size below 1, or when no degree up to the heads
    holds the weights (then tensor parallelism alone cannot: add pipeline stages).
    """
    for name, value in (("params", params), ("heads", heads), ("kv_heads", kv_heads)):
        check_int(name, value, 1)
    if heads % kv_heads:
        raise ValueError(f"kv_heads={kv_heads} must divide heads={heads}")
    if not (bytes_per_param > 0 and device_bytes > 0):
        raise ValueError(f"bytes_per_param={bytes_per_param!r}, device_bytes={device_bytes!r}: use positive sizes")
    for n in range(1, heads + 1):
        if heads % n or (n % kv_heads and kv_heads % n):
            continue
        per_device = ((params - kv_params) / n + kv_params / min(n, kv_heads)) * bytes_per_param
        if per_device <= device_bytes:
            return {"devices": n, "fits_on": math.ceil(params * bytes_per_param / device_bytes),
                    "bytes_per_device": per_device, "kv_copies": max(1, n // kv_heads),
                    "heads_per_device": heads // n}
    raise ValueError(f"params={params:,} at {bytes_per_param} bytes do not fit on {heads} devices of "
                     f"{device_bytes:,.0f} bytes (heads={heads} caps tensor parallelism); add pipeline stages")
