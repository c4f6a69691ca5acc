"""One results row for every measurement in the workbook, and one table format for any list of them.

Introduced in notebooks/00_measuring_milliseconds.ipynb. Every chapter ends by adding rows;
``lmlab.measure.plots.tradeoff_plot`` draws any list of them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd

from lmlab.measure.stats import binomial_se
from lmlab.measure.timing import Timing, format_ms


@dataclass(frozen=True)
class Result:
    """One measured point: what ran, how well (accuracy, perplexity) and how fast (ms, median and p90).

    ``predictions`` is how many predictions the accuracy was scored on (its standard error follows from it);
    ``simulated`` marks a row whose speed is not its own: a fake-quantized or mask-pruned model runs the dense
    arithmetic of its original, so its time is the dense model's. Plots draw such rows hollow and never put
    them on the Pareto frontier.
    """

    name: str
    technique: str
    setting: str
    accuracy: float
    median_ms: float
    p90_ms: float
    perplexity: float | None = None
    size_mb: float | None = None
    params: int | None = None
    device: str = "cpu"
    threads: int = 1
    batch_size: int = 1
    corpus: str = ""
    predictions: int | None = None
    simulated: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.accuracy <= 1.0:
            raise ValueError(f"accuracy={self.accuracy!r} is out of range; use a fraction in [0, 1]")
        for name in ("median_ms", "p90_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value!r} is out of range; use a finite time >= 0 ms")

    @property
    def accuracy_se(self) -> float | None:
        """The binomial standard error of the accuracy, sqrt(p (1 - p) / n) (``binomial_se``); None if n is unknown."""
        if not self.predictions:
            return None
        return binomial_se(self.accuracy, self.predictions)

    def per_context(self) -> Result:
        """The row with its times divided by its batch size: what each context of a batched call costs."""
        return dataclasses.replace(self, median_ms=self.median_ms / self.batch_size,
                                   p90_ms=self.p90_ms / self.batch_size)

    @classmethod
    def from_timing(cls, timing: Timing, **values) -> Result:
        """Make a row from a ``time_ms`` result plus the other fields (name, technique, accuracy, ...)."""
        return cls(median_ms=timing.median_ms, p90_ms=timing.p90_ms, threads=timing.threads, **values)

    def to_dict(self) -> dict:
        return asdict(self)


def with_dense_speed(row: Result, dense: Result) -> Result:
    """Return ``row`` carrying ``dense``'s speed, marked ``simulated``: its time is the dense model's.

    A fake-quantized or mask-pruned copy runs the dense float32 arithmetic of its original, so timing the copy
    measures the dense model again, with its noise; its row takes the dense row's median_ms, p90_ms, device,
    threads and batch size exactly. Introduced in notebooks/04_quantization.ipynb (its fake-quantized rows), also
    used by chapter 05's masked rows and ``lmlab.compress.experiment.run``.
    """
    return dataclasses.replace(row, median_ms=dense.median_ms, p90_ms=dense.p90_ms, device=dense.device,
                               threads=dense.threads, batch_size=dense.batch_size, simulated=True)


def results_table(results: Sequence[Result]) -> pd.DataFrame:
    """Return the rows as a pandas table, times shown with their unit (``'    1.234 ms'``).

    A simulated row's times read ``'    1.234 ms (simulated)'``: they are its dense model's (``with_dense_speed``).

    Accuracy is rounded to 4 places, with its binomial standard error beside it (``± se``, empty when the row does
    not know its number of predictions), and perplexity to 2, so a re-run with the same seed prints the same.
    ``slice`` is what the row was scored on (its ``corpus``).
    """
    rows = []
    for r in results:
        mark = " (simulated)" if r.simulated else ""
        rows.append({
            "name": r.name,
            "technique": r.technique,
            "setting": r.setting,
            "accuracy": round(r.accuracy, 4),
            "± se": None if r.accuracy_se is None else round(r.accuracy_se, 4),
            "perplexity": None if r.perplexity is None else round(r.perplexity, 2),
            "median": format_ms(r.median_ms) + mark,
            "p90": format_ms(r.p90_ms) + mark,
            "size_mb": None if r.size_mb is None else round(r.size_mb, 3),
            "params": r.params,
            "batch": r.batch_size,
            "device": r.device,
            "threads": r.threads,
            "slice": r.corpus,
        })
    return pd.DataFrame(rows)


def save_results(results: Iterable[Result], path: str | Path, overwrite: bool = False) -> Path:
    """Write rows to a JSON file atomically. Refuses to replace an existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"path={str(path)!r} exists; pass overwrite=True to replace it")
    payload = json.dumps([r.to_dict() for r in results], indent=1)
    atomic_write_text(path, payload + "\n")
    return path


def check_results_path(path: str | Path) -> Path:
    """Return ``path`` if rows can be added there, else raise ValueError saying what is wrong, before any work.

    It must not be a folder, its folder must exist, and a file already there must be a JSON file of rows.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path={str(path)!r} is a folder; give a file name for the rows, "
                         f"e.g. {str(path / 'rows.json')!r}")
    if not path.parent.is_dir():
        raise ValueError(f"path={str(path)!r}: the folder {str(path.parent)!r} does not exist; create it first")
    if path.exists():
        try:
            load_results(path)
        except (ValueError, TypeError, UnicodeDecodeError):
            raise ValueError(f"path={str(path)!r} exists and is not a JSON file of results rows; choose another "
                             "file (lmlab never replaces it)") from None
    return path


def add_results(results: Iterable[Result], path: str | Path) -> Path:
    """Add rows to a JSON file of rows, creating it if needed; the rows already there are kept (atomic write)."""
    path = Path(path)
    rows = (load_results(path) if path.exists() else []) + list(results)
    return save_results(rows, path, overwrite=True)


def load_results(path: str | Path) -> list[Result]:
    """Read rows written by ``save_results``. Raises FileNotFoundError if the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r}: no such results file")
    known = {f.name for f in fields(Result)}
    return [Result(**{k: v for k, v in row.items() if k in known}) for row in json.loads(path.read_text())]


def write_json(path: str | Path, value) -> Path:
    """Write ``value`` as indented JSON (other numbers, such as numpy's, as floats) atomically; return the path.

    What every benchmark saves under data/bench (its record: hardware, date, command, rows).
    """
    atomic_write_text(path, json.dumps(value, indent=1, default=float) + "\n")
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a crash never leaves half a file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
