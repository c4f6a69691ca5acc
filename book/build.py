"""Build lmlab's book: a static website of the committed, executed chapters (`make book`).

Nothing is executed and nothing is fetched: the chapters' saved outputs are the book. The build
1. checks every chapter was executed top to bottom (every code cell has an execution count, in order) and
   stops, naming the chapter, if one was not: a website of missing outputs is no book;
2. stages copies of the chapters in book/_build/src, each saved panel (an ipywidgets view, which answers only in a
   running kernel) replaced by a still of its saved state: its controls' values, its text and its chart, under the
   line saying how to run it live;
3. writes the front page (the chapters in course order), the instructors' page (the README's section on presenting,
   so it is written once) and one reference page per lmlab package;
4. runs Sphinx with MyST-NB (the notebook reader Jupyter Book is built on), every warning an error, into
   book/_build/html. book/conf.py adds the links (lmlab functions, other chapters) and each chapter's
   "run it live" box; MathJax and the search index are files of the site, so it works with no network.

Run `python book/build.py` (or `make book`) and open book/_build/html/index.html; `make book-serve` serves it on
127.0.0.1, where search also shows each hit's summary (a browser reading files from disk will not fetch them).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import re
import shutil
import sys
import time
import tomllib
from pathlib import Path

BOOK = Path(__file__).resolve().parent
sys.path.insert(0, str(BOOK))  # book/slides.py: the chapters, and their run times

from slides import ROOT, chapters, read  # noqa: E402

BUILD = BOOK / "_build"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
INSTRUCTORS = "presenting"  # the page made of the README's section for instructors


def check_executed(path: Path, notebook: dict) -> None:
    """Raise ValueError naming the chapter and cell unless every code cell ran, in order, from a fresh kernel."""
    counts = [cell.get("execution_count") for cell in notebook["cells"] if cell["cell_type"] == "code"]
    for index, count in enumerate(counts, start=1):
        if count != index:
            raise ValueError(f"{path.name}: code cell {index} has execution_count={count!r}, expected {index}: "
                             "the book shows saved outputs, so execute the chapter top to bottom in a fresh kernel "
                             "and save it (jupyter nbconvert --execute --inplace) before building")


def packages() -> list[str]:
    """lmlab's packages in course order: the layers of the import-linter contract in pyproject.toml, bottom up."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    return [name.strip() for layer in reversed(contract["layers"]) for name in layer.split("|")]


# -- a saved panel as a still ----------------------------------------------------------------------------------------

def _image(state: dict) -> str:
    buffers = {tuple(b["path"]): b["data"] for b in state.get("buffers", [])}
    data = buffers.get(("value",), state["state"].get("value", ""))
    if isinstance(data, bytes):
        data = base64.b64encode(data).decode()
    kind = html.escape(state["state"].get("format", "png"))
    return f'<img class="lmlab-panel-image" alt="the panel\'s saved chart" src="data:image/{kind};base64,{data}">'


def _control(state: dict) -> str:
    """A control (slider, text box, menu, button) as its label and the value it was saved with."""
    s = state["state"]
    label = html.escape(str(s.get("description", "")))
    if state["model_name"] == "ButtonModel":
        return f'<span class="lmlab-panel-control">[{label}]</span>'
    value = s.get("value", "")
    if "_options_labels" in s and isinstance(s.get("index"), int):
        value = s["_options_labels"][s["index"]]
    shown = html.escape(str(value))
    return f'<span class="lmlab-panel-control">{label + ": " if label else ""}<b>{shown}</b></span>'


def saved_view(state: dict[str, dict], model_id: str) -> str:
    """HTML showing the widget ``model_id`` as saved: boxes nest, HTML shows, images show, controls show values."""
    widget = state[model_id]
    name, s = widget["model_name"], widget["state"]
    if name in ("VBoxModel", "HBoxModel", "BoxModel", "GridBoxModel"):
        inner = "".join(saved_view(state, child.removeprefix("IPY_MODEL_")) for child in s.get("children", []))
        return f'<div class="lmlab-panel-{"row" if name == "HBoxModel" else "column"}">{inner}</div>'
    if name in ("HTMLModel", "HTMLMathModel"):
        return f'<div class="lmlab-panel-html">{s.get("value", "")}</div>'
    if name == "LabelModel":
        return f'<div class="lmlab-panel-html">{html.escape(str(s.get("value", "")))}</div>'
    if name == "ImageModel":
        return _image(widget)
    if name == "OutputModel":
        texts = ["".join(o.get("text", "")) or "".join(o.get("data", {}).get("text/plain", ""))
                 for o in s.get("outputs", [])]
        return "".join(f"<pre>{html.escape(t)}</pre>" for t in texts if t)
    if name.endswith("Model") and ("value" in s or "index" in s or name == "ButtonModel"):
        return _control(widget)
    return ""


def still_panels(notebook: dict) -> int:
    """Replace each saved panel's view in ``notebook`` by a still of its saved state (HTML, with the panel's own
    plain-text line saying how to run it live); drop the widget state, which only a live kernel's page can use.
    Returns how many panels were replaced."""
    state = notebook["metadata"].pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    replaced = 0
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW not in data:
                continue
            view = data.pop(WIDGET_VIEW)
            note = html.escape("".join(data.get("text/plain", "")).strip("'\""))
            note = re.sub(r"`([^`]+)`", r"<code>\1</code>", note)
            still = saved_view(state, view["model_id"]) if view["model_id"] in state else ""
            data["text/html"] = (f'<div class="lmlab-panel"><p class="lmlab-panel-note">{note}</p>'
                                 f'<div class="lmlab-panel-still">{still}</div></div>')
            replaced += 1
    return replaced


# -- staging and building --------------------------------------------------------------------------------------------

def _front_page(titles: list[tuple[str, str]], package_names: list[str]) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(readme) if i and line.strip() and not line.startswith("#"))
    end = next((i for i in range(start, len(readme)) if not readme[i].strip()), len(readme))
    intro = " ".join(readme[start:end])
    chapter_list = "\n".join(stem for stem, _ in titles)
    reference = "\n".join(f"api/{name}" for name in package_names)
    return (f"# lmlab: the Millisecond LM Lab\n\n{intro}\n\n"
            "Every page here is a chapter of the workbook as it was last executed: its prose, code, outputs and "
            "figures. To run a chapter yourself, clone the repository and run `make lab`: it sets everything up and "
            "opens JupyterLab on the notebooks/ folder; each chapter's page says which notebook to open.\n\n"
            f"```{{toctree}}\n:caption: Chapters\n:maxdepth: 1\n\n{chapter_list}\n```\n\n"
            f"```{{toctree}}\n:caption: For instructors\n:maxdepth: 1\n\n{INSTRUCTORS}\n```\n\n"
            f"```{{toctree}}\n:caption: The lmlab library\n:maxdepth: 1\n\n{reference}\n```\n")


def readme_section(heading: str) -> str:
    """The README's ``## heading`` section (up to the next ``## ``), as a page of its own with that heading as title."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    try:
        start = lines.index(f"## {heading}")
    except ValueError:
        raise ValueError(f"heading={heading!r} is not a '## ' section of README.md") from None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join([f"# {heading}", *lines[start + 1:end]]).rstrip() + "\n"


def _package_page(package: str) -> str:
    import importlib
    import pkgutil

    module = importlib.import_module(package)
    names = [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules(getattr(module, "__path__", []))
                         if not m.name.startswith("_")]
    parts = [f"{package}\n{'=' * len(package)}\n\n.. automodule:: {package}\n\n"]
    for name in names[1:]:
        parts.append(f"{name}\n{'-' * len(name)}\n\n.. automodule:: {name}\n   :members:\n\n")
    return "".join(parts)


def stage(src: Path) -> list[str]:
    """Write the book's sources into ``src`` (emptied first): staged chapters, front page, reference pages.
    Returns the chapters' names."""
    shutil.rmtree(src, ignore_errors=True)
    (src / "api").mkdir(parents=True)
    titles = []
    for path in chapters().values():
        notebook = read(path)
        check_executed(path, notebook)
        still_panels(notebook)
        (src / path.name).write_text(json.dumps(notebook, ensure_ascii=False), encoding="utf-8")
        titles.append((path.stem, path.name))
    package_names = packages()
    for package in package_names:
        (src / "api" / f"{package}.rst").write_text(_package_page(package), encoding="utf-8")
    (src / f"{INSTRUCTORS}.md").write_text(readme_section("Presenting a chapter (instructors)"), encoding="utf-8")
    (src / "index.md").write_text(_front_page(titles, package_names), encoding="utf-8")
    return [stem for stem, _ in titles]


def _drop_unused_mathjax(folder: Path) -> None:
    """Keep the one MathJax bundle the pages load (tex-chtml.js) and the files it loads; drop the alternatives
    (SVG output, MathML input, other combined bundles) sphinx-mathjax-offline copies too."""
    for bundle in folder.glob("*.js"):
        if bundle.name not in ("tex-chtml.js", "startup.js", "loader.js", "core.js"):
            bundle.unlink()
    shutil.rmtree(folder / "output" / "svg", ignore_errors=True)


def build(out: Path = BUILD / "html", *, work: Path = BUILD, quiet: bool = True) -> Path:
    """Stage the sources in ``work`` and build the whole site into ``out`` (replaced once finished), every Sphinx
    warning an error; return ``out``."""
    from sphinx.cmd.build import build_main

    src = work / "src"
    stage(src)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    args = ["-b", "html", "-E", "-W", "--keep-going", "-c", str(BOOK), "-d", str(work / "doctrees"),
            *(["-q"] if quiet else []), str(src), str(tmp)]
    if build_main(args) != 0:
        raise RuntimeError("the book did not build: Sphinx reported the warnings or errors above")
    _drop_unused_mathjax(tmp / "_static" / "mathjax")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # the finished site replaces the last one whole, never half-written
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUILD / "html", help="where the site goes (replaced)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    start = time.monotonic()
    out = build(args.out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"built {out} in {time.monotonic() - start:.1f} s: {size / 1e6:.1f} MB; open {out / 'index.html'} "
          f"(or run `make book-serve`, for search with summaries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
