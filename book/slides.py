"""Every chapter as slides for instructors: one rule gives each cell its RISE slide type; one table, the live demos.

jupyterlab-rise (requirements.txt) presents a notebook as reveal.js slides whose cells still run in the kernel. It
reads `cell.metadata.slideshow.slide_type` and the notebook's `metadata.rise`; this module writes both from one rule,
so no cell is typed by hand and a new cell cannot be left without a slide type (tests/test_slides.py checks the
committed notebooks against the rule). The rule:

- a markdown cell holding a `#` or `##` heading (outside fenced code) starts a slide, one holding a `###` heading a
  subslide (a slide below the current one: Space or the down arrow reaches it);
- a code cell with a figure starts a subslide when its slide already shows more than FIGURE_AFTER_LINES lines (a
  figure counts as FIGURE_LINES), so each figure is seen whole at projector size instead of below a scroll;
- any other cell starts a subslide when its slide already shows more than SLIDE_LINES lines (about two screens), so a
  long section without headings is cut where a cell begins instead of scrolling on;
- every other cell continues the slide ("-").

The live demos, the cells an instructor runs in front of the class, are named in LIVE_DEMOS (chapter -> a line of the
cell's source, and what it shows) and tagged `live-demo`. `chapter_times` reads how long each demo and each chapter
took from the committed notebooks' execution metadata (nbconvert's timestamps), for the README's table.

    python book/slides.py           # write the metadata into notebooks/*.ipynb (metadata only)
    python book/slides.py --check   # exit 1, naming each notebook whose metadata differs from the rule
    python book/slides.py --table   # print the README's instructor table
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TAG = "live-demo"
# Sizes in lines of text at the slides' text size (STYLE below), on a 1080p screen: about 30 lines fill it.
FIGURE_LINES = 25  # the height of a saved figure
FIGURE_AFTER_LINES = 12  # what fits above a figure on the same screen (headings and wrapped prose take more)
SLIDE_LINES = 45  # about two screens: beyond it the next cell starts a subslide

# What the slideshow adds to every slide, as the `overlay` setting (HTML that RISE inserts as-is): a style that hides
# the notebook's "Click to add a cell." footer (it would sit over each slide's first heading) and sets larger text and
# code for a projector (JupyterLab's own size variables, so rendered Markdown, code and outputs all grow).
STYLE = ("<style>.reveal .jp-Notebook-footer {display: none}"
         " .reveal {--jp-content-font-size1: 20px; --jp-code-font-size: 17px; --jp-code-line-height: 1.35}"
         " .reveal .jp-OutputArea-output pre {font-size: var(--jp-code-font-size)}</style>")

# reveal.js settings for every chapter: scroll (a long slide, or a long output, scrolls), no transition, content from
# the top rather than centred, the slide number as "current/total", start at the first slide, and the "white" theme,
# whose fonts ship with RISE ("simple", RISE's default, fetches its fonts from Google: a console error offline).
RISE = {"scroll": True, "transition": "none", "center": False, "slideNumber": "c/t", "controls": True,
        "progress": True, "start_slideshow_at": "beginning", "theme": "white", "overlay": STYLE}


@dataclass(frozen=True)
class Demo:
    """A live demo: the cell whose source holds the line ``marker``, and what running it shows."""

    marker: str
    shows: str


# Per chapter: the cells an instructor runs live. The panels (cells whose output is an ipywidgets view) are all here;
# then the chapter's main measurement and its closing accuracy-against-milliseconds plot.
LIVE_DEMOS: dict[str, tuple[Demo, ...]] = {
    "00_measuring_milliseconds": (
        Demo('"bigram table": NGramModel.fit(data, n=2, smoothing="add-k", k=1.0),',
             "three next-letter guessers measured: accuracy and ms per guess"),
        Demo('fig = tradeoff_plot(rows, title="Next letter of a census name: accuracy against ms per prediction")',
             "their accuracy against ms plot"),
    ),
    "01_ngram_language_models": (
        Demo("ngram_rows = measure_ngrams(kjv)", "n-grams of order 1 to 5 measured on the King James text"),
        Demo('tradeoff_plot(ngram_rows, title=f"KJV next word: {y} against ms", y=y, ax=axes[row, 0], label_all=True,',
             "accuracy and perplexity against ms and memory"),
        Demo('lambda text: tokenize(text, "word"), text="and god said")', "panel: next-word probabilities"),
    ),
    "02_neural_language_models": (
        Demo("mid_verse = deep_contexts(contexts, kjv.vocab.bos_id)[:8]  # contexts with 12+ words before them",
             "n-grams and GPTs timed at batch 1 and 8"),
        Demo('unit = "ms per call" if batch == 1 else "ms per context (a call\'s time / 8)"',
             "accuracy against ms, batch 1 and 8"),
    ),
    "03_gradient_descent": (
        Demo("runs = compare_optimizers(", "a real training run: optimizers compared over seeds"),
        Demo("fig = loss_bands(runs, title, target_nats=TARGET_NATS)", "validation loss bands against steps"),
        Demo("DescentPanel(x, y, lr=0.1, batch_size=10).widget", "panel: descent with your learning rate and batch"),
    ),
    "04_quantization": (
        Demo("from lmlab.compress.quantize_study import bits_sweep, llm_subject, lm_subject, sweep_table",
             "MLP, GPT and SmolLM2 quantized bit by bit, scored"),
        Demo("tradeoff_figure([(kjv_rows, f\"King James next word, batch 1, {slice_name}\", \"word\"),",
             "accuracy against ms: fake and real int8"),
        Demo("from lmlab.notebook.widgets import CompressionPanel", "panel: quantize a model and score it"),
    ),
    "05_pruning_and_low_rank": (
        Demo("results = sweep_methods(gpt, sweeps, verses)", "six ways to remove weights, perplexity against share"),
        Demo('title=f"King James next word on {slice_label}, batch 1: pruned, factored and dense")',
             "accuracy against ms: pruned, factored, dense"),
        Demo('"mlp-units", "heads", "low-rank",', "panel: prune a model and score it"),
    ),
    "06_acceleration": (
        Demo("runs = [generate(smol, text_ids[:length], 8, stop_at_eos=False) for _ in range(2)]",
             "SmolLM2's prefill and decode steps timed"),
        Demo('fig = tradeoff_plot(rows, title="Decoding: ms between two tokens against next-token accuracy',
             "decoding paths: accuracy against ms per token"),
        Demo("from lmlab.notebook.widgets import DecodePanel", "panel: stream a reply, token by token"),
    ),
    "07_realtime_pipeline": (
        Demo('stages = reply_stages(server, tokenizer, ask("Can I return shoes that I have worn?"), max_tokens=32)',
             "one served reply, its milliseconds by stage"),
        Demo('fig = tradeoff_plot(rows, title="SmolLM2 served the FAQ workload at 3 requests/s',
             "answers right against time to first token"),
    ),
    "08_parallel_and_distributed": (
        Demo('rows = dist_lm.run_parallel(SCHEMES, "gpt-large", 2,',
             "every parallel scheme launched on two processes"),
        Demo('fig = tradeoff_plot(results, f"Chapters 01–07 on one slice (kjv test[:100]): {y}", y=y)',
             "chapters 01–07 on one frontier, from a Ray sweep"),
    ),
    "09_recurrent_vectors_classifiers": (
        Demo("kjv_rows = by_family([run(name, documents=40, repeat=5) for name in kjv_names])",
             "n-grams, GPTs and an LSTM timed on the King James text"),
        Demo("cls_fig = classify.classifier_tradeoff_plot(cls_panels, se_multiple=2)",
             "classifiers: accuracy against ms"),
        Demo('cls_panel = ClassifyPanel(cls_models["verse → book group"],',
             "panel: every classifier on your text"),
    ),
}


def source(cell: dict) -> str:
    """A cell's source as one string (nbformat stores it as a list of lines or as one string)."""
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def heading_level(cell: dict) -> int | None:
    """The highest Markdown heading level (1 for `#`) in a markdown cell outside fenced code, or None."""
    if cell["cell_type"] != "markdown":
        return None
    levels, fenced = [], False
    for line in source(cell).splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (match := re.match(r"(#{1,6})\s", line)):
            levels.append(len(match.group(1)))
    return min(levels, default=None)


def has_figure(cell: dict) -> bool:
    """Whether a code cell's outputs hold an image (a saved matplotlib figure)."""
    return any(key.startswith("image/") for output in cell.get("outputs", []) for key in output.get("data", {}))


def shown_lines(cell: dict) -> int:
    """About how many lines a cell takes on a slide: its source, its text outputs, FIGURE_LINES for each figure."""
    lines = len(source(cell).splitlines())
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        if any(key.startswith("image/") for key in data):
            lines += FIGURE_LINES
        else:
            lines += len("".join(output.get("text", data.get("text/plain", ""))).splitlines())
    return lines


def slide_types(cells: list[dict]) -> list[str]:
    """The rule: each cell's RISE slide type (see the module's docstring). The first cell always starts a slide."""
    types: list[str] = []
    lines = 0  # what the current (sub)slide shows so far
    for cell in cells:
        level = heading_level(cell)
        if not types or (level is not None and level <= 2):
            kind = "slide"
        elif level == 3 or lines > (FIGURE_AFTER_LINES if has_figure(cell) else SLIDE_LINES):
            kind = "subslide"
        else:
            kind = "-"
        lines = (0 if kind != "-" else lines) + shown_lines(cell)
        types.append(kind)
    return types


def demo_cells(notebook: dict, demos: tuple[Demo, ...]) -> dict[int, Demo]:
    """The index of each demo's cell: the one cell whose source holds its marker.

    Raises ValueError naming the marker when no cell, or more than one, holds it."""
    found = {}
    for demo in demos:
        hits = [i for i, cell in enumerate(notebook["cells"]) if demo.marker in source(cell)]
        if len(hits) != 1:
            raise ValueError(f"demos: marker {demo.marker!r} is in {len(hits)} cells; it must be in exactly one")
        found[hits[0]] = demo
    return found


def with_slides(notebook: dict, demos: tuple[Demo, ...]) -> dict:
    """A copy of ``notebook`` with the rule's slide types, the `live-demo` tags on ``demos``' cells (and no other),
    and RISE's settings; sources, outputs and all other metadata are left as they are."""
    notebook = copy.deepcopy(notebook)
    live = demo_cells(notebook, demos)
    for i, (cell, kind) in enumerate(zip(notebook["cells"], slide_types(notebook["cells"]))):
        cell["metadata"]["slideshow"] = {"slide_type": kind}
        tags = [tag for tag in cell["metadata"].get("tags", []) if tag != TAG] + ([TAG] if i in live else [])
        if tags:
            cell["metadata"]["tags"] = tags
        else:
            cell["metadata"].pop("tags", None)
    notebook["metadata"]["rise"] = dict(RISE)
    return notebook


def chapters(folder: Path = NOTEBOOKS) -> dict[str, Path]:
    """Every chapter notebook in ``folder``, by name (its file name without .ipynb), in course order."""
    return {path.stem: path for path in sorted(folder.glob("[0-9][0-9]_*.ipynb"))}


def read(path: Path) -> dict:
    """A notebook file as the dict nbformat's JSON holds."""
    return json.loads(path.read_text(encoding="utf-8"))


def dumps(notebook: dict) -> str:
    """A notebook as the repository stores it: nbformat's layout (indent 1, sorted keys, UTF-8), a final newline."""
    return json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def differing(folder: Path = NOTEBOOKS) -> list[str]:
    """The chapters in ``folder`` whose stored notebook differs from what the rule and LIVE_DEMOS give."""
    return [name for name, path in chapters(folder).items()
            if dumps(with_slides(read(path), LIVE_DEMOS.get(name, ()))) != path.read_text(encoding="utf-8")]


def write_all(folder: Path = NOTEBOOKS) -> list[str]:
    """Write the rule's metadata into every chapter in ``folder``; returns the chapters that changed."""
    changed = differing(folder)
    for name in changed:
        path = chapters(folder)[name]
        path.write_text(dumps(with_slides(read(path), LIVE_DEMOS.get(name, ()))), encoding="utf-8")
    return changed


def cell_seconds(cell: dict) -> float:
    """How long a code cell ran when the notebook was executed: shell.execute_reply − iopub.execute_input.

    Raises ValueError naming the cell when nbconvert's execution timestamps are missing."""
    execution = cell.get("metadata", {}).get("execution", {})
    if not {"iopub.execute_input", "shell.execute_reply"} <= execution.keys():
        raise ValueError(f"cell: cell {cell.get('id')!r} has no execution times (metadata.execution needs "
                         "iopub.execute_input and shell.execute_reply: execute the notebook with nbconvert)")
    return (datetime.fromisoformat(execution["shell.execute_reply"])
            - datetime.fromisoformat(execution["iopub.execute_input"])).total_seconds()


@dataclass(frozen=True)
class RunTimes:
    """What a chapter's committed run took: the whole chapter (its first cell's start to its last cell's reply, the
    kernel's start not included) and each live demo's cell."""

    chapter_s: float
    demos: tuple[tuple[Demo, float], ...]


def run_times(notebook: dict, demos: tuple[Demo, ...]) -> RunTimes:
    """Read a notebook's run times from its execution metadata: the chapter's span and each of ``demos``' cells.

    Raises ValueError where a demo's marker is not in exactly one cell or a code cell has no execution times."""
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    if not code:
        raise ValueError("notebook: it has no code cells to time; a chapter has at least one")
    for cell in (code[0], code[-1]):
        cell_seconds(cell)  # raises, naming the cell, where a timestamp is missing
    start = datetime.fromisoformat(code[0]["metadata"]["execution"]["iopub.execute_input"])
    end = datetime.fromisoformat(code[-1]["metadata"]["execution"]["shell.execute_reply"])
    cells = demo_cells(notebook, demos)
    return RunTimes((end - start).total_seconds(),
                    tuple((demo, cell_seconds(notebook["cells"][i])) for i, demo in sorted(cells.items())))


def chapter_times(folder: Path = NOTEBOOKS) -> dict[str, RunTimes]:
    """Per chapter in ``folder``: the whole chapter's run time and each live demo's, from the committed notebooks."""
    return {name: run_times(read(path), LIVE_DEMOS.get(name, ())) for name, path in chapters(folder).items()}


def title(notebook: dict) -> str:
    """A chapter's short title: its first cell's `#` heading up to a colon ("04 · Quantization")."""
    heading = source(notebook["cells"][0]).splitlines()[0]
    return heading.lstrip("# ").split(":")[0].strip()


def table(folder: Path = NOTEBOOKS) -> str:
    """The README's instructor table: per chapter, its live demos by what they show, the seconds each cell took in
    the committed run, and the whole chapter's seconds."""
    lines = ["| Chapter | Live demo (tagged `live-demo`) | Cell's run | Whole chapter |", "|---|---|---:|---:|"]
    for name, times in chapter_times(folder).items():
        chapter = title(read(chapters(folder)[name]))
        for k, (demo, seconds) in enumerate(times.demos):
            lines.append(f"| {chapter if k == 0 else ''} | {demo.shows} | {seconds:.1f} s | "
                         f"{f'{times.chapter_s:.0f} s' if k == 0 else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the slide metadata (default), check it (--check) or print the instructor table (--table)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true", help="exit 1 if a notebook's metadata differs from the rule")
    what.add_argument("--table", action="store_true", help="print the README's table of live demos and run times")
    args = parser.parse_args(argv)
    if args.table:
        print(table(), end="")
        return 0
    if args.check:
        wrong = differing()
        for name in wrong:
            print(f"notebooks/{name}.ipynb: slide metadata differs from the rule (run `python book/slides.py`)")
        return 1 if wrong else 0
    for name in write_all():
        print(f"wrote the slide metadata of notebooks/{name}.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
