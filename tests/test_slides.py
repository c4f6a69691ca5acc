"""Chapters as slides (book/slides.py): the committed notebooks follow the slide rule, every chapter has a live demo,
the README's instructor table is what the notebooks' execution times give, and (slow, in a real browser) one chapter
opens as a RISE slideshow in JupyterLab whose first slides render and whose code runs live.
"""

import json
import shutil
import sys

import pytest
from browsing import ROOT

if str(ROOT) not in sys.path:  # book/ is a folder beside lmlab/, not an installed package
    sys.path.insert(0, str(ROOT))

from book.slides import (  # noqa: E402
    LIVE_DEMOS,
    TAG,
    Demo,
    chapters,
    differing,
    dumps,
    read,
    run_times,
    slide_types,
    table,
    with_slides,
)

CHAPTERS = chapters()


def _cell(kind: str, text: str, start: str | None = None, end: str | None = None, outputs=None) -> dict:
    cell = {"cell_type": kind, "id": str(abs(hash(text)))[:8], "metadata": {}, "source": text}
    if kind == "code":
        cell.update(execution_count=1, outputs=outputs or [])
        if start:
            cell["metadata"]["execution"] = {"iopub.execute_input": start, "shell.execute_reply": end}
    return cell


def _tiny() -> dict:
    """A made-up chapter: a title, three timed code cells (0.5 s, 2.25 s, 1 s), 0.25 s between the last two."""
    return {"cells": [_cell("markdown", "# 99 · A tiny chapter\n\nProse."),
                      _cell("code", "a = 1", "2026-01-01T10:00:00.000000Z", "2026-01-01T10:00:00.500000Z"),
                      _cell("markdown", "## Measuring\n\nMore prose."),
                      _cell("code", "measure(a)", "2026-01-01T10:00:00.600000Z", "2026-01-01T10:00:02.850000Z"),
                      _cell("code", "plot(a)", "2026-01-01T10:00:03.100000Z", "2026-01-01T10:00:04.100000Z")],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_run_times_of_a_tiny_notebook():
    times = run_times(_tiny(), (Demo("measure(a)", "the measurement"), Demo("plot(", "the plot")))
    assert times.chapter_s == pytest.approx(4.1)  # from the first cell's start to the last one's reply
    assert [(demo.shows, seconds) for demo, seconds in times.demos] == [("the measurement", pytest.approx(2.25)),
                                                                        ("the plot", pytest.approx(1.0))]


def test_run_times_refuse_what_they_cannot_time():
    with pytest.raises(ValueError, match="marker 'nowhere' is in 0 cells"):
        run_times(_tiny(), (Demo("nowhere", "nothing"),))
    untimed = _tiny()
    untimed["cells"][3]["metadata"] = {}
    with pytest.raises(ValueError, match="execution"):
        run_times(untimed, (Demo("measure(a)", "the measurement"),))


def test_the_rule_on_a_tiny_notebook():
    figure = [{"output_type": "display_data", "data": {"image/png": "", "text/plain": "<Figure>"}, "metadata": {}}]
    cells = [*_tiny()["cells"], _cell("markdown", "Prose first.\n\n### A subsection\n\n```\n# not a heading\n```"),
             _cell("code", "fig1", outputs=figure), _cell("code", "fig2", outputs=figure),
             _cell("markdown", "```python\n# a comment in fenced code, not a heading\n```")]
    assert slide_types(cells) == ["slide", "-", "slide", "-", "-", "subslide", "-", "subslide", "-"]


def test_tags_are_added_and_removed_and_other_metadata_kept():
    notebook = _tiny()
    notebook["cells"][1]["metadata"]["tags"] = [TAG, "keep-me"]  # a demo no longer in the table loses its tag only
    tagged = with_slides(notebook, (Demo("plot(a)", "the plot"),))
    assert [c["metadata"].get("tags") for c in tagged["cells"]] == [None, ["keep-me"], None, None, [TAG]]
    assert tagged["cells"][1]["metadata"]["execution"] == notebook["cells"][1]["metadata"]["execution"]
    assert [c["source"] for c in tagged["cells"]] == [c["source"] for c in notebook["cells"]]
    assert tagged["metadata"]["rise"]["scroll"] is True


@pytest.mark.parametrize("name", CHAPTERS)
def test_committed_chapter_follows_the_rule(name):
    """A new cell without its slide type, or a demo's tag gone stale, fails here: run `python book/slides.py`."""
    path = CHAPTERS[name]
    assert dumps(with_slides(read(path), LIVE_DEMOS.get(name, ()))) == path.read_text(encoding="utf-8"), (
        f"{path.name}'s slide metadata differs from book/slides.py's rule: run `python book/slides.py`")


def test_check_names_a_notebook_that_differs(tmp_path):
    for path in list(CHAPTERS.values())[:2]:
        shutil.copy(path, tmp_path / path.name)
    first = next(iter(CHAPTERS))
    notebook = read(tmp_path / f"{first}.ipynb")
    del notebook["cells"][-1]["metadata"]["slideshow"]
    (tmp_path / f"{first}.ipynb").write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    assert differing(tmp_path) == [first]


@pytest.mark.parametrize("name", CHAPTERS)
def test_every_chapter_starts_a_slide_and_has_a_live_demo(name):
    notebook = read(CHAPTERS[name])
    first = notebook["cells"][0]
    assert first["metadata"]["slideshow"]["slide_type"] == "slide" and first["source"][0].startswith("# ")
    tagged = [cell for cell in notebook["cells"] if TAG in cell["metadata"].get("tags", [])]
    assert tagged and all(cell["cell_type"] == "code" for cell in tagged)
    panels = [cell for cell in notebook["cells"] if cell["cell_type"] == "code" and any(
        "application/vnd.jupyter.widget-view+json" in output.get("data", {}) for output in cell["outputs"])]
    assert all(TAG in cell["metadata"].get("tags", []) for cell in panels), "every panel is a live demo"


def test_readme_table_is_what_the_notebooks_measured():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Presenting a chapter (instructors)", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert "\n".join(rows) == table().rstrip("\n"), "README's instructor table: paste `python book/slides.py --table`"
