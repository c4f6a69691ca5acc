"""The machine's limits, measured: memory bandwidth, matmul throughput, the decode floor and the roofline.

Introduced in notebooks/06_acceleration.ipynb.

Generating one token reads every weight of the model once and does about two FLOPs with each: far too
little arithmetic per byte to keep the multipliers busy. So a decode step cannot be faster than

    floor_ms = (weight bytes + kv-cache bytes) / bandwidth

whatever the kernels do. The roofline draws the same argument for any operation: attainable
GFLOP/s = min(peak GFLOP/s, arithmetic intensity × bandwidth). GB here is 10^9 bytes, MB 10^6.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any, cast

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory
from torch import nn

from lmlab.measure.plots import FONT_SIZE, finish_axes, plain_log_ticks
from lmlab.measure.results import Result
from lmlab.measure.runtime import check_int, check_threads, default_threads, device_name
from lmlab.measure.timing import Timing, time_ms

FORMATS = ("float32", "bfloat16", "int8", "int4")
FORMAT_BYTES = {"float32": 4, "bfloat16": 2, "int8": 1, "int4": 0.5}  # bytes per weight of a 2-D matrix
# int8 and int4 store one float32 step per block of this many weights (lmlab.compress.export, lmlab.compress.fused):
# the largest blocks whose ONNX Runtime kernels give a row the same bits for any number of rows (measured 2026-12-07)
QUANT_BLOCKS = {"int8": 64, "int4": 32}
MATMUL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Published peak memory bandwidth in GB/s, from the vendors' data sheets. They are NOT measured by lmlab
# and serve only for PREDICTIONS of the decode floor on hardware the notebook does not run on.
GPU_SPECS = {
    "NVIDIA T4": 320.0,
    "NVIDIA RTX 4090": 1008.0,
    "NVIDIA A100 80GB SXM": 2039.0,
    "NVIDIA H100 SXM": 3350.0,
    "NVIDIA H200 SXM": 4800.0,
    "Apple M2": 100.0,  # unified memory, shared by CPU and GPU
}

# Published dense peaks of the SXM parts, by the name torch.cuda.get_device_name gives (the data sheets also quote
# twice the tensor-core figures, for 2:4 sparsity; PCIe and NVL parts have lower ones): TFLOP/s per matmul format
# and memory bandwidth in GB/s. NOT measured by lmlab: the ceilings that measured GPU rows are compared against.
GPU_PEAKS = {
    "NVIDIA H200": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "bandwidth_gbs": 4800.0},
    "NVIDIA H100 80GB HBM3": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "bandwidth_gbs": 3350.0},
}


def _check_real(name: str, value: float, low: float = 0.0, high: float = math.inf,
                low_inclusive: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number in the range, else raise ValueError naming ``name``."""
    if (isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value)
            or value > high or value < low or (value == low and not low_inclusive)):
        bound = f"{'>=' if low_inclusive else '>'} {low:g}" + (f" and <= {high:g}" if high < math.inf else "")
        raise ValueError(f"{name}={value!r} is out of range; use a finite number {bound}")
    return float(value)


def _threads_word(threads: int) -> str:
    return f"{threads} thread{'' if threads == 1 else 's'}"


@dataclass(frozen=True)
class Bandwidth:
    """Measured memory bandwidth: reading a buffer once, and copying it (read + write), in GB/s."""

    read_gbs: float
    copy_gbs: float
    threads: int
    buffer_mb: float
    repeat: int

    def __str__(self) -> str:
        return (f"read {self.read_gbs:.1f} GB/s, copy {self.copy_gbs:.1f} GB/s "
                f"(buffer {self.buffer_mb:g} MB, {_threads_word(self.threads)}, median of {self.repeat})")


def memory_bandwidth(threads: int | None = None, buffer_mb: float = 512, repeat: int = 5) -> Bandwidth:
    """Measure how fast torch streams a float32 buffer far larger than the caches through the CPU.

    read_gbs = bytes / t(sum(x)); copy_gbs = 2 · bytes / t(y.copy_(x)), t the median of ``repeat`` runs
    after one warm-up, on ``threads`` torch threads (default ``default_threads()``).
    Raises ValueError for threads < 1, buffer_mb outside [16, 8192] or repeat < 1.
    """
    threads = default_threads() if threads is None else check_threads(threads)
    buffer_mb = _check_real("buffer_mb", buffer_mb, 16, 8192, low_inclusive=True)
    check_int("repeat", repeat, 1)
    src = torch.ones(int(buffer_mb * 1e6) // 4)  # float32; ones, so no page is left untouched
    dst = torch.empty_like(src)
    nbytes = src.numel() * src.element_size()
    # The read kernel is torch.sum. On a Zen 4 EPYC (one thread) sum, max, dot(x, x) and an int64 view's
    # sum all stream a 512 MB buffer at 26-29 GB/s, but on an 8 MB buffer that fits in cache sum runs at
    # ~85 GB/s and max at only ~35: sum has three times the headroom, so what it shows is memory, not
    # arithmetic. (torch has no bitwise-or reduction to try.)
    read = time_ms(torch.sum, src, warmup=1, repeat=repeat, threads=threads)
    # Copy counts read + write, as STREAM does; the CPU may also read each destination line before
    # writing it (write-allocate), so the wires carry up to 3 · bytes and this figure is a lower bound.
    copy = time_ms(dst.copy_, src, warmup=1, repeat=repeat, threads=threads)
    return Bandwidth(read_gbs=nbytes / read.median_ms / 1e6, copy_gbs=2 * nbytes / copy.median_ms / 1e6,
                     threads=threads, buffer_mb=float(buffer_mb), repeat=repeat)


@dataclass(frozen=True)
class Throughput:
    """Measured matrix-multiply throughput: 2 · n³ FLOPs over the median time of an n×n @ n×n product."""

    gflops: float
    n: int
    dtype: str
    threads: int
    median_ms: float

    def __str__(self) -> str:
        return (f"{self.gflops:.1f} GFLOP/s ({self.n}x{self.n} @ {self.n}x{self.n} {self.dtype} matmul, "
                f"median {self.median_ms:.4g} ms, {_threads_word(self.threads)})")


def matmul_gflops(n: int = 1024, dtype: torch.dtype = torch.float32, threads: int | None = None,
                  repeat: int = 5) -> Throughput:
    """Measure the GFLOP/s of one n×n @ n×n matrix product, timed with ``lmlab.measure.timing.time_ms``.

    gflops = 2 · n³ / t / 10⁹, t the median of ``repeat`` runs after two warm-ups, on ``threads`` threads.
    Raises ValueError for n outside [16, 8192], a dtype other than float32 or bfloat16, threads < 1 or
    repeat < 1.
    """
    check_int("n", n, 16, 8192)
    names = {v: k for k, v in MATMUL_DTYPES.items()}
    if dtype not in names:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {tuple(MATMUL_DTYPES)}")
    threads = default_threads() if threads is None else check_threads(threads)
    check_int("repeat", repeat, 1)
    generator = torch.Generator().manual_seed(0)  # its own generator: leaves the global seed alone
    a = torch.randn(n, n, generator=generator).to(dtype)  # (n, n)
    b = torch.randn(n, n, generator=generator).to(dtype)  # (n, n)
    out = torch.empty(n, n, dtype=dtype)  # written in place, so no allocation is timed
    timing = time_ms(torch.matmul, a, b, out=out, warmup=2, repeat=repeat, threads=threads)
    return Throughput(gflops=2 * n**3 / timing.median_ms / 1e6, n=n, dtype=names[dtype], threads=threads,
                      median_ms=timing.median_ms)


def linear_rows_ms(in_features: int, out_features: int, rows: Sequence[int], threads: int | None = None,
                   repeat: int = 15) -> dict[int, Timing]:
    """Time y = x Wᵀ for one (out_features, in_features) float32 weight at each row count of x (the batch).

    A decode step at batch b runs its matrix products with b rows; the matrix-multiply library picks its kernel
    by the shape, so the cost need not grow smoothly with b. Each count is timed by ``time_ms`` (three warm-ups,
    ``repeat`` runs) on ``threads`` threads. Raises ValueError for features outside [1, 65536], no rows or a
    row count outside [1, 4096], threads < 1 or repeat < 1.
    """
    check_int("in_features", in_features, 1, 65536)
    check_int("out_features", out_features, 1, 65536)
    if not len(rows):
        raise ValueError("rows is empty: give the row counts (batch sizes) to time, e.g. (1, 2, 4, 8)")
    for count in rows:
        check_int("rows", count, 1, 4096)
    threads = default_threads() if threads is None else check_threads(threads)
    check_int("repeat", repeat, 1)
    generator = torch.Generator().manual_seed(0)  # its own generator: leaves the global seed alone
    weight = torch.randn(out_features, in_features, generator=generator)  # (out, in)
    timings = {}
    for count in rows:
        x = torch.randn(count, in_features, generator=generator)  # (rows, in)
        timings[count] = time_ms(torch.nn.functional.linear, x, weight, warmup=3, repeat=repeat, threads=threads)
    return timings


def weight_bytes(model: nn.Module, fmt: str = "float32") -> int:
    """Count the bytes of weights one decode step reads per token, every distinct parameter once.

    float32: 4 · N; bfloat16: 2 · N; int8 and int4: each 2-D weight matrix W takes b/8 · |W| + 4 · ⌈|W| / B⌉
    bytes for b bits and blocks of B weights (one float32 step per block; B = QUANT_BLOCKS[fmt], 64 for int8 and 32
    for int4), and 1-D parameters (norms, biases)
    stay float32. A tied output layer reads the whole embedding matrix at every token, so tied weights count once
    and fully. (An untied input embedding or a position table is only read one row per token; counting it
    whole makes the figure an upper bound by its size.) Raises ValueError for fmt not in FORMATS.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not a format; use one of {FORMATS}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} is not a torch nn.Module")
    total = 0
    blocked = fmt in ("int8", "int4")
    for p in {id(p): p for p in model.parameters()}.values():
        if blocked and p.dim() < 2:
            total += 4 * p.numel()  # norms and biases stay float32
        elif blocked:
            total += math.ceil(FORMAT_BYTES[fmt] * p.numel()) + 4 * math.ceil(p.numel() / QUANT_BLOCKS[fmt])
        else:
            total += int(FORMAT_BYTES[fmt] * p.numel())
    return total


def decode_floor_ms(weight_bytes: int, bandwidth_gbs: float, kv_cache_bytes: int = 0, batch_size: int = 1) -> float:
    """Return the memory-bandwidth floor of one decode step, in milliseconds.

    floor_ms = (weight_bytes + kv_cache_bytes) / (bandwidth_gbs · 10⁹) · 10³. The weights are read once per
    step for the whole batch and ``kv_cache_bytes`` is the cache of the whole batch, so ``batch_size`` does
    not change the step's floor; the floor per token is floor_ms / batch_size.
    Raises ValueError for negative byte counts, bandwidth_gbs <= 0 or not finite, or batch_size < 1.
    """
    weights = _check_real("weight_bytes", weight_bytes, low_inclusive=True)  # bytes, as a float
    bandwidth_gbs = _check_real("bandwidth_gbs", bandwidth_gbs)
    kv_cache = _check_real("kv_cache_bytes", kv_cache_bytes, low_inclusive=True)  # bytes, as a float
    check_int("batch_size", batch_size, 1)
    return (weights + kv_cache) / (bandwidth_gbs * 1e6)


def predicted_decode_ms(weight_bytes: int, gpu: str) -> float:
    """Predict the decode floor on a GPU from its data-sheet bandwidth: weight_bytes / GPU_SPECS[gpu].

    A prediction from published figures, not a measurement. Raises ValueError for a gpu not in GPU_SPECS.
    """
    if gpu not in GPU_SPECS:
        raise ValueError(f"gpu={gpu!r} is not known; use one of {tuple(GPU_SPECS)}")
    return decode_floor_ms(weight_bytes, GPU_SPECS[gpu])


def arithmetic_intensity(flops: float, bytes_moved: float) -> float:
    """Return FLOPs per byte moved: I = flops / bytes_moved.

    Raises ValueError for flops < 0 or bytes_moved <= 0 (or either not finite).
    """
    return _check_real("flops", flops, low_inclusive=True) / _check_real("bytes_moved", bytes_moved)


REGIMES = ("compute-bound", "memory-bound", "overhead-bound")


def regime(intensity: float, achieved_gflops: float, peak_gflops: float, bandwidth_gbs: float,
           reached: float = 0.5) -> str:
    """Name what limits an operation, by one rule on both sides of the ridge I* = peak / bandwidth.

    Its roof is min(peak, I · bandwidth). Reaching at least ``reached`` of it, the operation is "memory-bound"
    at I <= I* (the sloped roof holds it) or "compute-bound" at I > I* (the flat roof); below that share it is
    "overhead-bound" wherever it sits: neither the arithmetic nor the memory traffic explains its time (Python,
    dispatch, small kernels).

    Raises ValueError for non-positive or non-finite numbers, or ``reached`` outside (0, 1].
    """
    for name, value in (("intensity", intensity), ("achieved_gflops", achieved_gflops),
                        ("peak_gflops", peak_gflops), ("bandwidth_gbs", bandwidth_gbs)):
        _check_real(name, value)
    _check_real("reached", reached, high=1.0)
    if achieved_gflops < reached * min(peak_gflops, intensity * bandwidth_gbs):
        return "overhead-bound"
    return "compute-bound" if intensity > peak_gflops / bandwidth_gbs else "memory-bound"


def roofline_plot(peak_gflops: float, bandwidth_gbs: float, points: list[tuple[str, float, float]],
                  title: str = "Roofline", hardware: str | None = None, ax: Axes | None = None,
                  reached: float = 0.5) -> Figure:
    """Draw the roofline, attainable GFLOP/s = min(peak, I · bandwidth), on log-log axes, with measured points.

    The ridge I* = peak_gflops / bandwidth_gbs (FLOP/byte) divides memory-bound (left) from compute-bound
    (right); below ``reached`` of the roof lies overhead-bound: the three regions ``regime`` names, each shaded
    and named. Each point is (name, intensity in FLOP/byte, measured GFLOP/s), drawn with its own colour and
    marker and keyed in a legend beside the axes as "name: regime" (no label can sit beside the wrong point);
    an empty list draws the roof alone. The hardware (default: this machine's CPU) is named in the title.
    Raises ValueError for peak or bandwidth <= 0, or a point with intensity or GFLOP/s <= 0.
    """
    peak_gflops = _check_real("peak_gflops", peak_gflops)
    bandwidth_gbs = _check_real("bandwidth_gbs", bandwidth_gbs)
    for i, point in enumerate(points):
        if not isinstance(point, (tuple, list)) or len(point) != 3:
            raise ValueError(f"points[{i}]={point!r} is not a (name, intensity, gflops) triple")
        name, intensity, gflops = point
        _check_real(f"points[{i}] ({name}) intensity", intensity)
        _check_real(f"points[{i}] ({name}) gflops", gflops)
    ridge = peak_gflops / bandwidth_gbs  # FLOP/byte
    xs = [ridge] + [p[1] for p in points]
    lo, hi = min(xs) / 10, max(xs) * 10
    if ax is None:
        fig, ax = plt.subplots(figsize=(14, 7))
    else:
        fig = cast(Figure, ax.figure)  # an Axes of a subfigure is not drawn here
    low_y = min([reached * bandwidth_gbs * lo] + [p[2] for p in points]) / 3
    _roofline_regions(ax, peak_gflops, bandwidth_gbs, (lo, hi), low_y, reached)
    markers = "os^vPX*<>ph"  # not "D": the ridge is a diamond
    for i, (name, intensity, gflops) in enumerate(points):
        where = regime(intensity, gflops, peak_gflops, bandwidth_gbs, reached)
        ax.plot([intensity], [gflops], markers[i % len(markers)], ms=12, color=plt.get_cmap("tab10")(i % 10),
                markeredgecolor="black", ls="none", label=f"{name}: {where}")
    ax.set_xlim(lo, hi)
    ax.set_ylim(low_y, peak_gflops * 4)
    finish_axes(ax, "arithmetic intensity (FLOP/byte), log scale", "attainable throughput (GFLOP/s), log scale",
                f"{title}\n{device_name('cpu') if hardware is None else hardware}")
    plain_log_ticks(ax.xaxis)
    plain_log_ticks(ax.yaxis)
    handles, labels = ax.get_legend_handles_labels()
    cast(Any, ax.get_legend()).remove()
    for color, words in (("tab:blue", "memory-bound"), ("tab:orange", "compute-bound"), ("gray", "overhead-bound")):
        handles.append(Patch(color=color, alpha=0.3))
        labels.append(f"region: {words}")
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.62, 0.95), fontsize=FONT_SIZE - 3,
               title="points, and the regime each is in", title_fontsize=FONT_SIZE - 3)
    fig.tight_layout(rect=(0, 0, 0.61, 1))  # the legend beside the axes, never over the data
    return fig


def _roofline_regions(ax: Axes, peak_gflops: float, bandwidth_gbs: float, span: tuple[float, float],
                      low_y: float, reached: float) -> None:
    """Draw the roof and shade the regions ``regime`` names: memory-bound and compute-bound between ``reached``
    of the roof and the roof, on either side of the ridge; overhead-bound below ``reached`` of the roof."""
    lo, hi = span
    ridge = peak_gflops / bandwidth_gbs
    grid = np.unique(np.concatenate([np.geomspace(lo, hi, 400), [ridge]]))
    roof = np.minimum(peak_gflops, grid * bandwidth_gbs)
    ax.loglog(grid, roof, color="black", lw=2.5,
              label=f"roof: min({peak_gflops:.4g} GFLOP/s, I × {bandwidth_gbs:.4g} GB/s)")
    ax.plot(grid, reached * roof, color="dimgray", ls="--", lw=1.5, label=f"{reached:.0%} of the roof")
    left, right = grid <= ridge, grid >= ridge
    ax.fill_between(grid[left], reached * roof[left], roof[left], color="tab:blue", alpha=0.15)
    ax.fill_between(grid[right], reached * roof[right], roof[right], color="tab:orange", alpha=0.15)
    ax.fill_between(grid, low_y / 10, reached * roof, color="gray", alpha=0.12)
    ax.axvline(ridge, color="gray", ls=":", lw=1)
    ax.plot([ridge], [peak_gflops], "D", color="black", ms=9)
    ax.annotate(f"ridge: {ridge:.3g} FLOP/byte", (ridge, peak_gflops), textcoords="offset points",
                xytext=(10, 8), fontsize=FONT_SIZE - 2)
    top = blended_transform_factory(ax.transData, ax.transAxes)  # x in data, y in axes fraction
    for x, y, words, color in ((math.sqrt(lo * ridge), 0.96, "memory-bound", "tab:blue"),
                               (math.sqrt(ridge * hi), 0.96, "compute-bound", "tab:orange"),
                               (math.sqrt(ridge * hi), 0.06, "overhead-bound", "dimgray")):
        ax.text(x, y, words, transform=top, ha="center", va="top" if y > 0.5 else "bottom", fontsize=FONT_SIZE,
                color=color, weight="bold")


# Figures measured on real GPUs by benchmarks/bench_gpu.py, one JSON file per run: the only GPU figures the
# chapters show as measurements. Every row carries the hardware, the date and the command that measured it.
# data/gpu beside lmlab/ (as lmlab.data.shipped.DATA_DIR)
GPU_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "gpu"
GPU_ROW_STAMP = ("gpu", "driver", "cuda", "torch", "date", "command")
GPU_ROW_KINDS = ("matmul", "read", "copy", "sync", "forward", "training", "decode")


def gpu_rows(kind: str | None = None, folder: str | Path | None = None) -> pd.DataFrame:
    """Return the rows measured on real GPUs (``data/gpu/*.json``), optionally of one ``kind``, as a table.

    Each row has the GPU's name, driver, CUDA and torch versions, the date and the exact command, a
    ``hardware`` column ("NVIDIA H200, 2026-11-30") to label it with, and ``measured_by``: the command without the
    GPU machine's output path, and the file it is shipped as. CPU rows measured in the same run, on
    the GPU machine's processor, are included with ``device == "cpu"``. An empty table if no file is shipped.
    Raises ValueError for a kind not in GPU_ROW_KINDS, or a row without its hardware, date or command.
    """
    table = pd.DataFrame(_gpu_records(kind, folder))
    return table.dropna(axis=1, how="all") if kind is not None else table


def _gpu_records(kind: str | None, folder: str | Path | None) -> list[dict]:
    if kind is not None and kind not in GPU_ROW_KINDS:
        raise ValueError(f"kind={kind!r} is not a kind of GPU row; use one of {GPU_ROW_KINDS}")
    folder = GPU_DATA_DIR if folder is None else Path(folder)
    rows = []
    for path in sorted(folder.glob("*.json")):
        for i, row in enumerate(json.loads(path.read_text())["rows"]):
            missing = [key for key in GPU_ROW_STAMP if not row.get(key)]
            if missing:
                raise ValueError(f"{path.name}: row {i} lacks {missing}: a GPU figure needs its hardware, date "
                                 "and command")
            if kind is None or row.get("kind") == kind:
                rows.append({**row, "file": path.name, "hardware": f"{row['gpu']}, {row['date'][:10]}",
                             "measured_by": _shipped_command(row["command"], path.name)})
    return rows


def _shipped_command(command: str, file: str) -> str:
    """The command without the GPU machine's own output path, and the file it is shipped as."""
    return re.sub(r" --out \S+", "", command) + f" (shipped as data/gpu/{file})"


def gpu_results(folder: str | Path | None = None) -> list[Result]:
    """The shipped GPU runs' forward rows (the GPTs on their slice, GPU and its machine's CPU) as results rows,
    named with where they ran ("gpt-large, NVIDIA H200 bfloat16"), ready for ``lmlab.measure.plots.tradeoff_plot``."""
    names = {f.name for f in dataclasses.fields(Result)}
    results = []
    for row in _gpu_records("forward", folder):
        where = row["gpu"] if row["device"] == "cuda" else f"its CPU, {row['threads']} thr"
        values = {k: v for k, v in row.items() if k in names}
        results.append(Result(**{**values, "name": f"{row['name']}, {where} {row['dtype']}"}))
    return results


def gpu_decode_run(file: str, folder: str | Path | None = None) -> pd.DataFrame:
    """The decode rows of ONE shipped run (``file``, as ``gpu_rows`` names it), one statistic per column.

    Columns: model, device, threads, path, dtype, ``ms_per_token`` (that run's time between two tokens),
    ``step_ms`` (the forward alone on the GPU's clock, NaN where the run did not time it), ``floor_ms`` (weights
    and cache over that run's measured read bandwidth) and ``floor_share`` = floor_ms / step_ms (NaN without
    step_ms). Nothing is mixed across runs: ``gpu_decode_summary`` gives the spread between runs.
    Raises ValueError for a file with no decode rows.
    """
    table = gpu_rows("decode", folder)
    if table.empty or file not in set(table["file"]):
        raise ValueError(f"file={file!r} has no decode rows; use one of {sorted(set(table.get('file', [])))}")
    run = table[table["file"] == file]
    step = run["step_only_ms"] if "step_only_ms" in run else pd.Series(math.nan, index=run.index)
    out = pd.DataFrame({"file": run["file"], "model": run["model"], "device": run["device"],
                        "threads": run.get("threads", math.nan), "path": run["path"], "dtype": run["dtype"],
                        "ms_per_token": run["decode_ms_per_token"], "step_ms": step, "floor_ms": run["floor_ms"]})
    out["floor_share"] = out["floor_ms"] / out["step_ms"]
    return out.reset_index(drop=True)


def gpu_decode_summary(folder: str | Path | None = None) -> pd.DataFrame:
    """The shipped decode rows run with PyTorch's defaults, one line per model, device, threads, path and dtype.

    Columns: ``ms_min`` and ``ms_max`` of the ms per token over the runs (the spread between runs), ``runs``,
    ``step_ms`` (the forward alone, timed on the GPU's clock, where a run measured it), ``floor_ms`` (weights and
    cache over the measured read bandwidth) and ``floor_share`` = floor_ms / step_ms (or / ms_min without step_ms).
    Rows measured with cuDNN attention turned off are left out (``gpu_rows("decode")`` has them).
    """
    table = gpu_rows("decode", folder)
    if table.empty:
        return table
    if "cudnn_sdp" in table:
        table = table[table["cudnn_sdp"].ne(False)]  # True, or a run from before the column: the defaults
    if "step_only_ms" not in table:
        table = table.assign(step_only_ms=math.nan)
    keys = ["model", "device", "threads", "path", "dtype"]
    summary = (table.assign(threads=table.get("threads", math.nan))
               .groupby(keys, dropna=False, sort=False)
               .agg(ms_min=("decode_ms_per_token", "min"), ms_max=("decode_ms_per_token", "max"),
                    runs=("decode_ms_per_token", "size"), step_ms=("step_only_ms", "median"),
                    floor_ms=("floor_ms", "median")).reset_index())
    summary["floor_share"] = summary["floor_ms"] / summary["step_ms"].fillna(summary["ms_min"])
    return summary
