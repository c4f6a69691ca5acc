"""Guardrails that `make test` runs: ruff (lint, import order), mypy (types of lmlab/), import-linter (the layers).

Also: lmlab's docstrings name every package and module, and a deliberate upward import is caught.
`make lint` runs the three tools directly.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LMLAB = ROOT / "lmlab"
BIN = Path(sys.executable).parent  # the virtual environment's bin: ruff, mypy and lint-imports live beside python


def run_tool(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run one of the venv's tools with this checkout's lmlab first on the path; return what it printed."""
    executable = BIN / args[0]
    if not executable.exists():
        pytest.fail(f"{executable} is missing; `make setup-test` installs it from requirements-dev.txt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([str(executable), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_clean(result: subprocess.CompletedProcess) -> None:
    command = " ".join(Path(result.args[0]).name if i == 0 else a for i, a in enumerate(result.args))
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}{result.stderr}"


def test_ruff_finds_nothing():
    assert_clean(run_tool("ruff", "check", "lmlab", "tests", "benchmarks", "book"))


def test_mypy_finds_no_type_errors_in_lmlab():
    # The files and settings are pyproject.toml's [tool.mypy]; .mypy_cache makes a second run take seconds.
    assert_clean(run_tool("mypy"))


# No function in lmlab/ is longer than this, from its `def` line to its last line (lmlab issue 23): split a longer
# one into helpers with names that say what each part does.
MAX_FUNCTION_LINES = 60


def function_lengths(source: str, path: str) -> dict[str, int]:
    """Every function in ``source`` (methods and nested functions too) as "path::Qualified.name": its line count."""
    lengths: dict[str, int] = {}
    todo: list[tuple[ast.AST, str]] = [(ast.parse(source), "")]
    while todo:
        node, prefix = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    lengths[f"{path}::{name}"] = (child.end_lineno or child.lineno) - child.lineno + 1
                todo.append((child, name + "."))
            else:
                todo.append((child, prefix))
    return lengths


def test_function_lengths_count_from_def_to_last_line_with_qualified_names():
    source = "class A:\n    def f(self):\n" + "        x = 1\n" * 60 + "\n\ndef g():\n    def inner():\n        pass\n"
    assert function_lengths(source, "m.py") == {"m.py::A.f": 61, "m.py::g": 3, "m.py::g.inner": 2}


def test_no_function_in_lmlab_is_longer_than_the_limit():
    lengths: dict[str, int] = {}
    for path in sorted(LMLAB.rglob("*.py")):
        lengths.update(function_lengths(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix()))
    assert len(lengths) > 100, f"found only {len(lengths)} functions in {LMLAB}"
    too_long = {name: n for name, n in sorted(lengths.items()) if n > MAX_FUNCTION_LINES}
    assert not too_long, (f"functions over {MAX_FUNCTION_LINES} lines (name: lines): {too_long}; "
                          "split them into helpers with names that say what each does")


def test_import_linter_keeps_every_contract():
    result = run_tool("lint-imports")
    assert_clean(result)
    assert "0 broken" in result.stdout


def packages() -> list[Path]:
    return sorted(p.parent for p in LMLAB.glob("*/__init__.py"))


def modules(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("__"))


def package_lines(docstring: str, package: str) -> str:
    """The lines of lmlab's docstring about ``package``: from its ``lmlab.package`` entry to the next entry."""
    lines = docstring.splitlines()
    start = next((i for i, line in enumerate(lines) if f"``lmlab.{package}``" in line), None)
    assert start is not None, f"lmlab/__init__.py's docstring does not name ``lmlab.{package}``"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("- ``lmlab.")), len(lines))
    return "\n".join(lines[start:end])


def test_lmlab_docstring_names_every_package_and_module():
    docstring = ast.get_docstring(ast.parse((LMLAB / "__init__.py").read_text(encoding="utf-8"))) or ""
    assert packages(), "lmlab/ has no packages"
    for module in modules(LMLAB):  # top-level modules such as the command line
        assert f"``lmlab.{module}``" in docstring, f"lmlab/__init__.py's docstring does not name lmlab.{module}"
    for folder in packages():
        lines = package_lines(docstring, folder.name)
        missing = [m for m in modules(folder) if m not in lines]
        assert not missing, f"lmlab/__init__.py's entry for lmlab.{folder.name} does not name {missing}:\n{lines}"


@pytest.mark.parametrize("folder", packages(), ids=lambda p: p.name)
def test_each_package_docstring_lists_its_modules(folder):
    docstring = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))) or ""
    missing = [m for m in modules(folder) if f"``{m}``" not in docstring]
    assert not missing, f"lmlab/{folder.name}/__init__.py's docstring does not list {missing}"


@pytest.mark.parametrize("folder", packages(), ids=lambda p: p.name)
def test_each_package_lists_and_imports_its_modules_in_dependency_order(folder):
    # "Modules, each importing only those above it": the docstring's order is one a reader can follow top to bottom,
    # and the __init__ imports them in that order.
    tree = ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))
    order = re.findall(r"^- ``(\w+)``", ast.get_docstring(tree) or "", flags=re.M)
    for i, module in enumerate(order):
        source = ast.parse((folder / f"{module}.py").read_text(encoding="utf-8"))
        uses = {n.module.split(".")[2] for n in ast.walk(source)
                if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith(f"lmlab.{folder.name}.")}
        later = sorted(uses - set(order[:i]))
        assert not later, f"lmlab.{folder.name}.{module} imports {later}, listed after it (or not at all)"
    imported = [n.module.rsplit(".", 1)[1] for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert imported == [m for m in order if m in imported], f"lmlab/{folder.name}/__init__.py imports {imported}"


def test_an_upward_import_breaks_a_contract(tmp_path):
    # A throwaway copy of lmlab with one upward import: measuring (the bottom layer) importing the models.
    shutil.copytree(LMLAB, tmp_path / "lmlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    timing = tmp_path / "lmlab" / "measure" / "timing.py"
    timing.write_text(timing.read_text(encoding="utf-8") + "\nimport lmlab.models  # noqa: E402\n",
                      encoding="utf-8")
    result = run_tool("lint-imports", "--no-cache", cwd=tmp_path)
    assert result.returncode != 0, f"lint-imports missed lmlab.measure.timing -> lmlab.models:\n{result.stdout}"
    assert "BROKEN" in result.stdout and "lmlab.measure.timing -> lmlab.models" in result.stdout, result.stdout


# One timing path (lmlab issue 23 item 6): every millisecond lmlab reports goes through lmlab.measure.timing. The clock
# may be read directly only there, in the load generator (its client timestamps: send, first byte, each token), and in
# the modules still to convert; remove a module from this list once it times with Stopwatch, time_ms or Timing.of.
CLOCK_READERS = {
    "measure/timing.py",  # Stopwatch and time_ms: the one timing path
    "serving/loadgen.py",  # the client's timestamps, the documented exception
}


def hand_rolled_timers(root: Path) -> list[str]:
    """Return 'path:line' for every line of ``root``'s Python files outside CLOCK_READERS that names perf_counter."""
    found = []
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if name in CLOCK_READERS:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        found += [f"lmlab/{name}:{i}" for i, line in enumerate(lines, 1) if "perf_counter" in line]
    return found


def test_only_the_timing_module_reads_the_clock():
    assert all((LMLAB / name).exists() for name in CLOCK_READERS), "CLOCK_READERS names a module that is gone"
    found = hand_rolled_timers(LMLAB)
    assert not found, ("time a call with lmlab.measure.timing (Stopwatch for one interval, time_ms for repeated "
                       "calls, Timing.of for samples gathered one at a time), not time.perf_counter:\n"
                       + "\n".join(found))


def test_a_new_hand_rolled_timer_is_caught(tmp_path):
    shutil.copytree(LMLAB, tmp_path / "lmlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    tasks = tmp_path / "lmlab" / "tasks" / "classify.py"
    tasks.write_text(tasks.read_text(encoding="utf-8") + "\nfrom time import perf_counter  # noqa: E402\n",
                     encoding="utf-8")
    lines = len(tasks.read_text(encoding="utf-8").splitlines())
    assert hand_rolled_timers(tmp_path / "lmlab") == [f"lmlab/tasks/classify.py:{lines}"]
