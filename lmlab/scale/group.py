"""The process group every scheme runs in: who am I, how many are we, and a clock for the time spent talking.

Introduced in notebooks/08_parallel_and_distributed.ipynb. ``init_process_group`` joins the group a launcher
(torchrun) describes in the environment; ``Clock`` sums the milliseconds spent inside collectives and
point-to-point messages; ``timed`` runs a piece of work on every rank together and returns its median times;
``slowest_rank`` splits the slowest rank's wall time into computing and communicating.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist

from lmlab.measure.runtime import check_int, use_threads
from lmlab.measure.timing import Stopwatch, Timing

T = TypeVar("T")


class Clock:
    """Milliseconds spent communicating, summed over every collective or message sent through ``comm``."""

    def __init__(self) -> None:
        self.comm_ms = 0.0

    @contextmanager
    def comm(self) -> Iterator[None]:
        with Stopwatch() as watch:  # on a GPU, it first finishes the compute queued before: not counted here
            yield
        self.comm_ms += watch.ms

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks in place (timed); a no-op on one process."""
        if dist.is_initialized() and dist.get_world_size() > 1:
            with self.comm():
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def rank_and_world() -> tuple[int, int]:
    """Return (rank, world size): the process group's, or (0, 1) when none is running."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def init_process_group(threads: int | None = None) -> torch.device:
    """Join the group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR in the environment); return the device.

    NCCL with one GPU per local rank when there are enough GPUs, else gloo on CPU. Each rank uses ``threads``
    torch threads (default: ``$LMLAB_THREADS`` or 1). Raises ValueError if no launcher set the environment.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError("RANK and WORLD_SIZE are unset; start this under torchrun (python -m torch.distributed.run)")
    use_threads(threads)
    if torch.cuda.is_available() and torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", 1)):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        return device
    dist.init_process_group("gloo")
    return torch.device("cpu")




def timed(work: Callable[[Clock], T], repeat: int, together: bool = True,
           warm_up: bool = True) -> tuple[float, float, T]:
    """Run work(clock) once to warm up, then ``repeat`` times: (median wall ms, median comm ms, last result).

    With ``together``, all ranks start each repeat at a barrier. Raises ValueError for repeat < 1.
    """
    check_int("repeat", repeat, 1)
    if warm_up:
        work(Clock())
    walls: list[float] = []
    comms: list[float] = []
    for _ in range(repeat):
        clock = Clock()
        if together and dist.is_initialized():
            dist.barrier()
        with Stopwatch() as watch:
            out = work(clock)
        walls.append(watch.ms)
        comms.append(clock.comm_ms)
    return Timing.of(walls).median_ms, Timing.of(comms).median_ms, out




def slowest_rank(shares: Sequence[tuple[float, float]]) -> tuple[float, float, float]:
    """Split the slowest rank's time into computing and communicating: (wall_ms, compute_ms, communication_ms).

    ``shares`` holds each rank's (wall ms, communication ms). The slowest rank r = argmax wallᵣ sets the scheme's
    time; compute = wallᵣ − commᵣ, its own communication, not the ranks' mean (which would mix in a rank that
    waited less or more). Introduced in notebooks/08_parallel_and_distributed.ipynb (where the time goes).
    Raises ValueError for no ranks or a rank whose communication is negative or exceeds its wall time.
    """
    if not shares:
        raise ValueError("shares is empty: give each rank's (wall ms, communication ms)")
    for rank, (wall, comm) in enumerate(shares):
        if not 0 <= comm <= wall:
            raise ValueError(f"shares[{rank}]=({wall!r}, {comm!r}): communication must lie in [0, wall ms]")
    wall_ms, comm_ms = max(shares, key=lambda share: share[0])
    return wall_ms, wall_ms - comm_ms, comm_ms
