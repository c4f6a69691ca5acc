"""Sweeps that scale out: a grid of models x methods x settings x batch sizes, one results row per setting.

Introduced in notebooks/08_parallel_and_distributed.ipynb. Each setting is one ``lmlab.compress.experiment.run`` in a
worker process with a pinned thread count (``threads``, default 1), so timings stay honest however many run
side by side. Two engines run the same workers, ``CachingWorker`` (``run_setting`` with a cache of the base models
the worker has loaded: each worker loads a model once, not once per setting), fed by the same dispatcher:

- ``"local"`` (default): ``workers`` processes on this machine (``concurrent.futures``, spawn context), each
  living for the whole sweep;
- ``"ray"``: ``workers`` Ray actors, on a local Ray instance with ``workers`` CPU slots, or on an existing cluster
  (``address="auto"`` or ``"ray://head:10001"``), so a sweep moves to many machines unchanged. On a cluster,
  every node needs lmlab importable (install it there, or ``ray.init(runtime_env=...)`` yourself before the
  sweep: a sweep uses a Ray connection that is already open and leaves it open).

The dispatcher sends a free worker the next setting of a model it has already loaded, else of a model no worker
has loaded, else the next setting in grid order (a second worker loads the model rather than idle): each worker
loads each model at most once (once more after its process died), and no worker waits while settings remain.

    python -m lmlab sweep --models mlp-names,gpt-small --methods quantize-channel,mlp-units \\
        --values quantize-channel=8,4 --values mlp-units=0.25,0.5 --out rows.json --workers 2

The rows file is JSON, ``{"kind": "lmlab-sweep", "version": 1, "rows": [...]}``. A row holds the ``Result`` fields
plus ``key`` (the setting, e.g. ``"gpt-small/quantize-channel=4/batch=1"``), ``method``, ``value``, ``repeat``,
``error`` (None, or ``"ValueError: ..."`` for a setting that failed; the sweep goes on), ``seconds`` (the setting's
wall time in its worker, a load included), ``host``, ``worker`` (``"host:pid"`` of the process that ran it; None if
that process died), ``loaded`` (True if the worker loaded the model for this setting, False if it reused the one it
had) and ``finished`` (UTC). The file is rewritten atomically after every finished row, so a sweep killed at any
moment leaves a valid file, and run again with the same ``out`` it skips the settings already finished. Settings
that ended in an error are run again (an error may be passing, such as a lost worker; a deterministic one fails
again in seconds). A finished row is kept whatever ``repeat`` and ``threads`` it was measured with (use a new file
to measure again under other conditions), and rows of settings outside the new grid are kept too. A file at ``out``
that is not a sweep rows file is refused, never replaced.

Hook for tests: if ``$LMLAB_SWEEP_LOG`` names a file, every setting appends its key to it as it starts, so
a test can count the settings that really ran.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
from collections.abc import Collection, Generator, Hashable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from lmlab.compress.experiment import MEASURED_KINDS, run
from lmlab.compress.methods import METHODS
from lmlab.data.shipped import check_documents
from lmlab.measure.plots import tradeoff_plot
from lmlab.measure.results import Result, atomic_write_bytes, atomic_write_text, results_table
from lmlab.measure.runtime import THREADS_ENV, check_int, describe_environment
from lmlab.measure.timing import Stopwatch
from lmlab.models.registry import load_model, model_entry, names

KIND, VERSION = "lmlab-sweep", 1
ENGINES = ("local", "ray")
LOG_ENV = "LMLAB_SWEEP_LOG"
RESULT_FIELDS = tuple(f.name for f in fields(Result))
# A few points of each method's range, mild to harsh, used when a method is given no values.
DEFAULT_VALUES: dict[str, tuple[float, ...]] = {
    "quantize-channel": (8, 6, 4, 3), "quantize-tensor": (8, 6, 4, 3), "quantize-group32": (8, 6, 4, 3),
    "quantize-step": (0.005, 0.02, 0.08), "magnitude-global": (0.25, 0.5, 0.75, 0.9),
    "magnitude-layer": (0.25, 0.5, 0.75, 0.9), "mlp-units": (0.25, 0.5, 0.75), "heads": (0.25, 0.5, 0.75),
    "low-rank": (64, 32, 16, 8), "share": (6, 4, 3, 2), "int8": (0, 1), "onnx": (32, 8),
}


@dataclass(frozen=True)
class Setting:
    """One point of a grid: a model, a method (None: the uncompressed baseline), its value, a batch size, and the
    evaluation slice (the first ``documents`` test documents; None: the whole test split)."""

    model: str
    method: str | None = None
    value: float | None = None
    batch_size: int = 1
    documents: int | None = None

    @property
    def key(self) -> str:
        """The setting as one string, e.g. ``"gpt-small/quantize-channel=4/batch=1"`` (``+"/test[:100]"``)."""
        method = "uncompressed" if self.method is None else f"{self.method}={self.value:g}"
        where = "" if self.documents is None else f"/test[:{self.documents}]"
        return f"{self.model}/{method}/batch={self.batch_size}{where}"


def default_values(method: str) -> tuple[float, ...]:
    """Return the settings a sweep tries for ``method`` when given none: a few points of its range.

    Raises ValueError for an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {tuple(METHODS)}")
    return DEFAULT_VALUES.get(method, (METHODS[method].value,))


def check_setting(setting: Setting) -> Setting:
    """Return ``setting`` with its value in its method's own type, or raise ValueError naming what is wrong.

    The model must be one of ``names(MEASURED_KINDS)`` (an n-gram or a recurrent model takes no method), the
    method one of ``METHODS`` (or None, with no value), the value inside the method's range, the batch size an
    integer >= 1, ``documents`` None or an integer >= 1. Nothing is loaded.
    """
    entry = model_entry(setting.model, names(MEASURED_KINDS))
    check_int("batch_size", setting.batch_size, 1)
    check_documents(setting.documents)
    if entry.kind == "ngram" and setting.method is not None:
        raise ValueError(f"method={setting.method!r} compresses neural models; model={setting.model!r} is an n-gram "
                         "and takes none")
    if not entry.compressible and setting.method is not None:
        raise ValueError(f"method={setting.method!r} compresses the MLP's and the GPT's layers; "
                         f"model={setting.model!r} is recurrent and takes none")
    if setting.method is None:
        if setting.value is not None:
            raise ValueError(f"value={setting.value!r} needs a method; the uncompressed baseline takes none")
        return setting
    default_values(setting.method)  # raises for an unknown method
    return Setting(setting.model, setting.method, METHODS[setting.method].check(setting.value), setting.batch_size,
                   setting.documents)


def make_grid(models: Sequence[str], methods: Sequence[str] = (),
              values: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
              batch_sizes: Sequence[int] = (1,), baseline: bool = True, documents: int | None = None) -> list[Setting]:
    """Return every setting of models x (baseline + methods x values) x batch sizes, checked, without repeats.

    ``values`` is one list for every method, or a dict ``{method: [values]}``; a method missing from it
    takes ``default_values(method)``. An n-gram or recurrent model gets its baseline only (the methods compress
    the MLP's and the GPT's layers). Every setting is scored on the first ``documents`` test documents (None: the
    whole test split). Raises ValueError naming an unknown model or method, a value outside its method's range, a
    batch size below 1, or an empty grid. Nothing is loaded or run.
    """
    models, methods, batch_sizes = list(models), list(methods), list(batch_sizes)
    for method in methods:
        default_values(method)  # raises for an unknown method
    if isinstance(values, Mapping) and set(values) - set(methods):
        raise ValueError(f"values names method={sorted(set(values) - set(methods))[0]!r}, "
                         f"which is not in methods={methods}")
    points: list[tuple[str | None, float | None]] = [(None, None)] if baseline else []
    for method in methods:
        given = values.get(method) if isinstance(values, Mapping) else values
        points += [(method, v) for v in (default_values(method) if given is None else given)]
    settings = [check_setting(Setting(m, method, v, b, documents)) for m in models for method, v in points
                for b in batch_sizes if method is None or model_entry(m, names(MEASURED_KINDS)).compressible]
    if not settings:
        raise ValueError(f"the grid is empty (models={models}, methods={methods}, batch_sizes={batch_sizes}, "
                         f"baseline={baseline}); give a model, a batch size, and a method or baseline=True")
    return list({s.key: s for s in settings}.values())


def run_setting(setting: Setting, repeat: int = 30, threads: int = 1, models: dict | None = None) -> dict:
    """Run one setting on ``threads`` torch threads and return its row; an exception becomes the row's ``error``.

    This is the task both engines' workers run, in a worker process or a Ray actor. ``models`` is the worker's
    cache of base models, ``{name: load_model(name)}``: a model found there is reused (the row's ``loaded`` is
    False), a missing one is loaded and kept there (``loaded`` True). Reuse needs no copy of its own: every method
    compresses a deep copy (cheaper than reading the checkpoint again), the ONNX methods export a copy (their
    graphs cached on disk under a lock that concurrent workers share), and scoring and timing leave the model as it
    was. Without ``models``, the model is loaded for this setting alone.
    """
    import torch

    os.environ[THREADS_ENV] = str(threads)  # lmlab's timings read it
    torch.set_num_threads(threads)
    if os.environ.get(LOG_ENV):
        with open(os.environ[LOG_ENV], "a", encoding="utf-8") as log:
            log.write(setting.key + "\n")
    clock = Stopwatch().start()
    cache = {} if models is None else models
    loaded = setting.model not in cache
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        if loaded:
            cache[setting.model] = load_model(setting.model)
        result = run(setting.model, setting.method, setting.value, batch_size=setting.batch_size, repeat=repeat,
                     documents=setting.documents, loaded=cache[setting.model])
    except Exception as err:  # a failing setting is a row, not the end of the sweep
        return _row(setting, repeat, error=err, seconds=clock.elapsed_ms() / 1e3, worker=worker, loaded=loaded)
    return _row(setting, repeat, result=result, seconds=clock.elapsed_ms() / 1e3, worker=worker, loaded=loaded)


class CachingWorker:
    """A sweep's worker that keeps every base model it has loaded, keyed by model name, for the sweep's length.

    The Ray engine runs ``workers`` of them as actors; the local engine keeps one in each of its worker processes.
    """

    def __init__(self) -> None:
        self.models: dict[str, tuple] = {}

    def run(self, setting: Setting, repeat: int, threads: int) -> dict:
        """Run one setting with this worker's models: ``run_setting(setting, repeat, threads, self.models)``."""
        return run_setting(setting, repeat, threads, self.models)


_PROCESS_WORKER = CachingWorker()  # a local engine's worker process runs its settings through this one


def _run_in_process(setting: Setting, repeat: int, threads: int) -> dict:
    """Run one setting in a local engine's worker process, reusing the models that process has loaded."""
    return _PROCESS_WORKER.run(setting, repeat, threads)


def _row(setting: Setting, repeat: int, result: Result | None = None, error: BaseException | None = None,
         seconds: float = 0.0, worker: str | None = None, loaded: bool | None = None) -> dict:
    values = dict.fromkeys(RESULT_FIELDS)
    values.update(name=setting.model, technique=setting.method or "uncompressed", batch_size=setting.batch_size,
                  setting=f"{METHODS[setting.method].label} {setting.value:g}" if setting.method else "")
    values.update(result.to_dict() if result else {})
    return {"key": setting.key, **values, "method": setting.method, "value": setting.value, "repeat": repeat,
            "error": None if error is None else f"{type(error).__name__}: {error}", "seconds": round(seconds, 3),
            "host": socket.gethostname(), "worker": worker, "loaded": loaded,
            "finished": datetime.now(UTC).isoformat(timespec="seconds")}


def load_rows(path: str | Path) -> list[dict]:
    """Read the rows of a sweep rows file.

    Raises FileNotFoundError if it is missing, and ValueError if it is not a sweep rows file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r}: no such sweep rows file")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"path={str(path)!r} is not a sweep rows file (not JSON: {err}); "
                         "choose another --out") from None
    if not (isinstance(payload, dict) and payload.get("kind") == KIND and isinstance(payload.get("rows"), list)):
        raise ValueError(f"path={str(path)!r} is not a sweep rows file (no \"kind\": {KIND!r}); choose another --out")
    if payload.get("version") != VERSION:
        raise ValueError(f"path={str(path)!r} is a sweep rows file of version {payload.get('version')!r}; "
                         f"this lmlab reads version {VERSION}")
    return payload["rows"]


def _write_rows(path: Path, rows: Mapping[str, dict]) -> None:
    """Merge ``rows`` into the file at ``path`` (rows already there are kept) and write it atomically."""
    merged = {row["key"]: row for row in (load_rows(path) if path.exists() else [])}
    merged.update(rows)
    payload = {"kind": KIND, "version": VERSION, "rows": list(merged.values())}
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


def rows_to_results(rows: Sequence[dict]) -> list[Result]:
    """Return the rows that finished without an error as ``Result`` rows, e.g. for ``plots.tradeoff_plot``."""
    return [Result(**{name: row[name] for name in RESULT_FIELDS if name in row}) for row in rows
            if row.get("error") is None]


def sweep(models: Sequence[str] = (), methods: Sequence[str] = (),
          values: Sequence[float] | Mapping[str, Sequence[float]] | None = None, batch_sizes: Sequence[int] = (1,),
          *, grid: Sequence[Setting] | None = None, baseline: bool = True, documents: int | None = None,
          out: str | Path | None = None,
          engine: str = "local", workers: int = 1, address: str | None = None, threads: int = 1,
          repeat: int = 30, progress: bool = True) -> list[dict]:
    """Run every setting of a grid and return its rows, in grid order (see the module docstring for a row).

    The grid is ``grid``, or ``make_grid(models, methods, values, batch_sizes, baseline, documents)``. With
    ``out``, rows are written atomically as they finish and settings already finished there are skipped. ``engine`` is
    "local" (``workers`` processes) or "ray" (``workers`` actors on a local Ray instance, or on the cluster at
    ``address``); each worker keeps the models it loads, and each setting uses ``threads`` torch threads and
    ``repeat`` timed calls.
    Raises ValueError, before anything runs, for a bad grid or argument, or an ``out`` that is not a
    sweep rows file.
    """
    if grid is None:
        settings = make_grid(models, methods, values, batch_sizes, baseline, documents)
    else:
        settings = list({s.key: s for s in map(check_setting, grid)}.values())
        if not settings:
            raise ValueError("grid is empty; give at least one Setting")
    _check_run(engine, address, workers, threads, repeat)
    rows: dict[str, dict] = {}
    if out is not None:
        out = Path(out)
        if out.exists():
            rows = {row["key"]: row for row in load_rows(out)}  # raises if it is not a sweep rows file
        _write_rows(out, {})  # claims the path, and checks it is writable, before any work
    todo = [s for s in settings if s.key not in rows or rows[s.key].get("error") is not None]

    from tqdm.auto import tqdm

    bar = tqdm(total=len(settings), initial=len(settings) - len(todo), desc="sweep", unit="setting",
               disable=not progress)
    runner = _engine_rows(engine, todo, repeat, threads, workers, address)
    try:
        for row in runner:
            rows[row["key"]] = row
            if out is not None:
                _write_rows(out, {row["key"]: row})
            bar.set_postfix_str(row["key"] if row["error"] is None else f"{row['key']} failed", refresh=False)
            bar.update()
    finally:
        runner.close()
        bar.close()
    return [rows[s.key] for s in settings]


def _check_run(engine: str, address: str | None, workers: int, threads: int, repeat: int) -> None:
    """Raise ValueError naming a bad engine, address, worker count, thread count or repeat count."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is unknown; use one of {ENGINES}")
    if address is not None and engine != "ray":
        raise ValueError(f"address={address!r} needs engine='ray' (engine={engine!r} runs on this machine only)")
    check_int("workers", workers, 1)
    check_int("threads", threads, 1)
    check_int("repeat", repeat, 1)
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("engine='ray' needs Ray: pip install 'ray>=2.9'") from None


class _Workers(Protocol):
    """An engine's ``workers`` worker slots: a setting is started on the slot chosen, and rows come back."""

    def start(self, slot: int, setting: Setting) -> Hashable: ...

    def finish(self, running: Collection) -> tuple[Hashable, dict | None, Exception | None]: ...

    def replace(self, slot: int) -> None: ...

    def close(self) -> None: ...


def _engine_rows(engine: str, todo: list[Setting], repeat: int, threads: int, workers: int,
                 address: str | None) -> Generator[dict, None, None]:
    """Yield the rows of ``todo`` as ``engine``'s workers finish them; nothing starts when ``todo`` is empty."""
    if not todo:
        return
    slots = min(workers, len(todo))
    pool: _Workers = (_LocalWorkers(slots, repeat, threads) if engine == "local"
                      else _RayWorkers(slots, repeat, threads, address))
    yield from _dispatched(pool, slots, todo, repeat)


def _pick(pending: Sequence[Setting], mine: set[str], anyones: set[str]) -> int:
    """Return the index in ``pending`` of the setting a free worker runs next.

    The first setting of a model it has loaded; else the first of a model no worker has loaded; else the first
    (a second worker loads a model rather than wait: no worker idles while settings are pending).
    """
    for wanted in (lambda s: s.model in mine, lambda s: s.model not in anyones):
        found = next((i for i, s in enumerate(pending) if wanted(s)), None)
        if found is not None:
            return found
    return 0


def _dispatched(workers: _Workers, slots: int, todo: list[Setting], repeat: int) -> Generator[dict, None, None]:
    """Yield the rows of ``todo`` as ``slots`` workers finish them, each setting sent to a free worker by ``_pick``.

    A worker that dies gives its setting an error row and its slot a fresh worker (with no models loaded).
    """
    pending, running = list(todo), dict[Hashable, tuple[int, Setting]]()
    models: list[set[str]] = [set() for _ in range(slots)]
    free = list(range(slots))
    try:
        while pending or running:
            while free and pending:
                slot = free.pop(0)
                setting = pending.pop(_pick(pending, models[slot], set().union(*models)))
                models[slot].add(setting.model)
                running[workers.start(slot, setting)] = (slot, setting)
            handle, row, error = workers.finish(running)
            slot, setting = running.pop(handle)
            if row is None:  # the worker process, or its node, died: record it and go on
                row = _row(setting, repeat, error=error)
                models[slot].clear()
                workers.replace(slot)
            free.append(slot)
            yield row
    finally:
        workers.close()


class _LocalWorkers:
    """``slots`` spawned processes, each a one-process pool so that a setting goes to the process chosen; each
    lives for the whole sweep and keeps the models it has loaded."""

    def __init__(self, slots: int, repeat: int, threads: int):
        self.repeat, self.threads = repeat, threads
        self.pools = [self._pool() for _ in range(slots)]

    @staticmethod
    def _pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    def start(self, slot: int, setting: Setting) -> Future:
        return self.pools[slot].submit(_run_in_process, setting, self.repeat, self.threads)

    def finish(self, running: Collection) -> tuple[Future, dict | None, Exception | None]:
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        future = next(iter(done))
        try:
            return future, future.result(), None
        except Exception as err:  # BrokenProcessPool: the process died
            return future, None, err

    def replace(self, slot: int) -> None:
        self.pools[slot].shutdown(wait=False, cancel_futures=True)
        self.pools[slot] = self._pool()

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)


def start_ray(address: str | None = None, workers: int = 1, threads: int = 1) -> bool:
    """Connect to Ray unless already connected: a local instance with ``workers * threads`` CPUs, or ``address``.

    Ray starts with no dashboard, no usage reporting and no worker output on this console (a local
    instance keeps Ray's token authentication on). Returns True if it connected (the caller then owns
    ``ray.shutdown()``), False if a connection was already open. Raises ValueError for workers or threads < 1.
    """
    check_int("workers", workers, 1)
    check_int("threads", threads, 1)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage over the network
    import ray

    if ray.is_initialized():
        return False
    local = address is None
    # A local instance's only start-up warning says token authentication is on; keep it out of notebooks.
    auth_log = logging.getLogger("ray._private.authentication")
    level = auth_log.level
    auth_log.setLevel(logging.ERROR if local else level)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 num_cpus=workers * threads if local else None)
    finally:
        auth_log.setLevel(level)
    return True


class _RayWorkers:
    """``slots`` Ray actors (``CachingWorker``), each holding ``threads`` CPUs and the models it has loaded, on a local
    instance or the cluster at ``address``."""

    def __init__(self, slots: int, repeat: int, threads: int, address: str | None):
        import ray

        self.ray, self.repeat, self.threads = ray, repeat, threads
        self.started = start_ray(address, slots, threads)
        self.actor: Any = ray.remote(num_cpus=threads)(CachingWorker)
        self.actors: list[Any] = [self.actor.remote() for _ in range(slots)]

    def start(self, slot: int, setting: Setting) -> Hashable:
        return self.actors[slot].run.remote(setting, self.repeat, self.threads)

    def finish(self, running: Collection) -> tuple[Hashable, dict | None, Exception | None]:
        done, _ = self.ray.wait(list(running), num_returns=1)
        try:
            return done[0], self.ray.get(done[0]), None
        except Exception as err:  # RayActorError: the actor or its node died
            return done[0], None, err

    def replace(self, slot: int) -> None:
        self.ray.kill(self.actors[slot])
        self.actors[slot] = self.actor.remote()

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        if self.started:
            self.ray.shutdown()


def parse_values(texts: Sequence[str] | None, methods: Sequence[str]) -> list[float] | dict[str, list[float]] | None:
    """Turn ``--values`` flags into ``make_grid``'s ``values``: ``"8,4"`` for every method, or ``"METHOD=8,4"``.

    Raises ValueError for a value that is not a number, or for mixing the two forms.
    """
    if not texts:
        return None
    per_method: dict[str, list[float]] = {}
    shared: list[float] | None = None
    for text in texts:
        method, _, numbers = text.rpartition("=")
        try:
            parsed = [float(v) for v in numbers.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--values {text!r} is not a comma-separated list of numbers") from None
        if method:
            per_method[method.strip()] = per_method.get(method.strip(), []) + parsed
        else:
            shared = (shared or []) + parsed
    if shared is not None and per_method:
        raise ValueError("--values mixes 'V1,V2' with 'METHOD=V1,V2'; use one form")
    return per_method if per_method else shared


def sweep_command(args) -> None:
    """Run ``python -m lmlab sweep`` from its parsed flags: the sweep, then its rows as a table."""
    split = lambda text: [part.strip() for part in text.split(",") if part.strip()]  # noqa: E731
    methods = split(args.methods)
    try:
        batch_sizes = [int(b) for b in split(args.batch_sizes)]
    except ValueError:
        raise ValueError(f"--batch-sizes {args.batch_sizes!r} is not a comma-separated list of integers") from None
    if args.plot and Path(args.plot).exists():
        raise FileExistsError(f"--plot {args.plot!r} exists; choose another path (lmlab never overwrites it)")
    grid = make_grid(split(args.models), methods, parse_values(args.values, methods), batch_sizes,
                     baseline=not args.no_baseline, documents=args.documents)
    _check_run(args.engine, args.address, args.workers, args.threads, args.repeat)
    if Path(args.out).exists():
        load_rows(args.out)  # refuses another kind of file before anything is printed
    print(describe_environment("cpu", threads=args.threads))
    print(f"{len(grid)} setting{'s' * (len(grid) != 1)} on the {args.engine} engine"
          + (f" at {args.address}" if args.address else f" with {args.workers} worker(s)") + f", into {args.out}")
    with Stopwatch(sync=False) as clock:  # the workers' wall clock: they run in other processes
        rows = sweep(grid=grid, out=args.out, engine=args.engine, workers=args.workers, address=args.address,
                     threads=args.threads, repeat=args.repeat, progress=not args.no_progress)
    results = rows_to_results(rows)
    if results:
        print(results_table(results).to_string(index=False))
    for row in rows:
        if row["error"] is not None:
            print(f"failed: {row['key']}: {row['error']}")
    print(f"{len(results)} of {len(rows)} settings measured in {clock.ms / 1e3:.1f} s wall; "
          f"rows in {args.out}")
    if args.plot and results:
        import io

        import matplotlib.pyplot as plt

        buffer, figure = io.BytesIO(), tradeoff_plot(results, title="Sweep: accuracy against latency")
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        atomic_write_bytes(args.plot, buffer.getvalue())
        print(f"trade-off plot in {args.plot}")
