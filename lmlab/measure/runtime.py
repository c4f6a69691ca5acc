"""Threads, devices and seeds: the settings every measurement in lmlab depends on.

Introduced in notebooks/00_measuring_milliseconds.ipynb.

lmlab times on ONE torch thread by default, as ``torch.utils.benchmark`` does, so
that techniques are compared on equal terms. On small shared machines (two vCPUs)
one-thread timings are stable; two-thread timings swing wildly whenever another
process is busy. Set the environment variable ``LMLAB_THREADS`` to override.
"""

from __future__ import annotations

import os
import platform
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

THREADS_ENV = "LMLAB_THREADS"
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def default_threads() -> int:
    """Return the torch thread count lmlab times with: ``$LMLAB_THREADS``, else 1.

    Raises ValueError if ``LMLAB_THREADS`` is not a whole number >= 1.
    """
    raw = os.environ.get(THREADS_ENV, "1").strip()
    try:
        threads = int(raw)
    except ValueError:
        raise ValueError(f"{THREADS_ENV}={raw!r} is not a whole number; use an integer >= 1") from None
    if threads < 1:
        raise ValueError(f"{THREADS_ENV}={threads} is out of range; use an integer >= 1")
    return threads


def check_int(name: str, value: int, minimum: int = 1, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int in [minimum, maximum], else raise ValueError naming ``name``."""
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        allowed = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name}={value!r} is out of range; use an integer {allowed}")
    return value


def check_threads(threads: int) -> int:
    """Return ``threads`` if it is an int >= 1, else raise ValueError naming it."""
    return check_int("threads", threads)


def use_threads(threads: int | None = None) -> int:
    """Set torch's thread count for everything that follows (default: ``default_threads()``); return it.

    Call it once at the top of a notebook, so training and evaluation run on the same, printed thread
    count as the timings (``time_ms`` sets it for the duration of each timing anyway).
    """
    threads = default_threads() if threads is None else check_threads(threads)
    torch.set_num_threads(threads)
    return threads


@contextmanager
def torch_threads(threads: int | None = None) -> Iterator[int]:
    """Run the body with torch using ``threads`` threads (default: ``default_threads()``), then restore.

    Yields the thread count in force.
    """
    threads = default_threads() if threads is None else check_threads(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """Return a torch.device: ``"auto"`` picks CUDA, then Apple MPS, then CPU.

    An explicit string ("cpu", "cuda", "cuda:1", "mps") is honoured as given.
    Raises ValueError for an unknown device string, or one this machine does not have.
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise ValueError(f"device={device!r} must be a string, one of {', '.join(DEVICE_CHOICES)}")
    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a device; use one of {', '.join(DEVICE_CHOICES)}") from None
    if chosen.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r} is not supported; use one of {', '.join(DEVICE_CHOICES)}")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA, but this machine has no CUDA GPU; use 'auto' or 'cpu'")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={device!r} is out of range; this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if chosen.type == "mps" and not _mps_available():
        raise ValueError(f"device={device!r} asked for Apple MPS, which this machine lacks; use 'auto' or 'cpu'")
    return chosen


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def synchronize(device: str | torch.device | None = None) -> None:
    """Wait for queued GPU work to finish, so a clock read afterwards includes it.

    With ``device=None``, synchronize CUDA if it has been used and MPS if present; CPU work is
    already synchronous.
    """
    kind = None if device is None else torch.device(device).type
    if kind in (None, "cuda") and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    if kind in (None, "mps") and _mps_available():
        torch.mps.synchronize()


def seed_everything(seed: int = 0, deterministic: bool = True) -> int:
    """Seed Python, NumPy and torch (CPU and GPU); turn on torch's deterministic algorithms.

    Returns the seed. Raises ValueError if ``seed`` is not an int in [0, 2**32).
    """
    check_int("seed", seed, 0, 2**32 - 1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs this set before its first use to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    return seed


def cpu_model() -> str:
    """Return the CPU's model name, as the operating system reports it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str | torch.device = "auto") -> str:
    """Return a human name for a device: the GPU's name, or the CPU model."""
    chosen = pick_device(device)
    if chosen.type == "cuda":
        return torch.cuda.get_device_name(chosen)
    if chosen.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return cpu_model()


def environment(device: str | torch.device = "auto", threads: int | None = None) -> dict:
    """Return what a timing was measured on: CPU model, cores, torch threads, torch version, device.

    Print it beside every table of times (``describe_environment`` makes the one-line form).
    """
    chosen = pick_device(device)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 1,
        "torch_threads": default_threads() if threads is None else check_threads(threads),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": chosen.type if chosen.type == "cpu" else f"{chosen} ({device_name(chosen)})",
    }


def describe_environment(device: str | torch.device = "auto", threads: int | None = None) -> str:
    """Return the environment as one line.

    E.g. ``CPU: ... | cores: 2 | torch threads: 1 | torch 2.13.0 | device: cpu``.
    """
    env = environment(device, threads)
    return (
        f"CPU: {env['cpu']} | cores: {env['cores']} | torch threads: {env['torch_threads']} | "
        f"torch {env['torch']} | device: {env['device']}"
    )
