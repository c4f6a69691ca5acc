"""Chapters as slides (book/slides.py): the committed notebooks follow the slide rule, every chapter has a live demo,
the README's instructor table is what the notebooks' execution times give, and (slow, in a real browser) one chapter
opens as a RISE slideshow in JupyterLab whose first slides render and whose code runs live.
"""

import json
import re
import shutil
import sys

import pytest
from browsing import ROOT, needs_browser

if str(ROOT) not in sys.path:  # book/ is a folder beside lmlab/, not an installed package
    sys.path.insert(0, str(ROOT))

from book.slides import (  # noqa: E402
    LIVE_DEMOS,
    TAG,
    Demo,
    chapters,
    differing,
    dumps,
    has_figure,
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
             _cell("markdown", "```python\n# a comment in fenced code, not a heading\n```"),
             _cell("code", "long", outputs=[{"output_type": "stream", "name": "stdout", "text": "line\n" * 40}]),
             _cell("markdown", "What the long output shows.")]  # 1 + 25 + 3 + 1 + 40 lines above it: too far down
    assert slide_types(cells) == ["slide", "-", "slide", "-", "-", "subslide", "-", "subslide", "-", "-", "subslide"]


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


# What jupyterlab-rise 0.43.1's slideshow logs as errors for every notebook, lmlab's or a two-cell one alike (checked
# with a bare notebook): each is named, with why, so that any other error still fails the test.
SLIDES_CHAPTER = "00_measuring_milliseconds"
RISE_OWN_ERRORS = (
    ("/files/rise.css", "RISE links an optional rise.css beside the notebook; absent, the 404 page is refused as CSS"),
    (f"/files/{SLIDES_CHAPTER}.css", "likewise the optional <notebook>.css beside the notebook"),
    ("Shared module @jupyterlab/console doesn't exist", "RISE's app cannot load ipywidgets 8's manager "
     "(jupyterlab-contrib/rise#119): panels show their text form in the slideshow, live in the notebook beside it"),
    ("RangeError: Maximum call stack size exceeded", "logged by RISE's bundled web components, for any notebook"),
)


def _headings(cell: dict) -> list[str]:
    return [line.lstrip("#").strip() for line in "".join(cell["source"]).splitlines() if line.startswith("#")]


def _present(driver, script: str):
    """Run ``script`` with `slide` bound to the slide now shown (the innermost present section)."""
    return driver.execute_script("const slide = [...document.querySelectorAll('.reveal .slides section.present')]"
                                 ".filter(s => !s.querySelector('section.present')).pop();" + script)


@pytest.fixture(scope="module")
def slideshow(tmp_path_factory):
    """Chapter 00 copied into a temporary folder, served by a real JupyterLab and opened in headless Chromium at
    jupyterlab-rise's slideshow URL (/rise/<notebook>), the page the RISE button opens beside the notebook."""
    from browsing import chromium, jupyter_lab, lab_env

    folder = tmp_path_factory.mktemp("slides")
    shutil.copy(CHAPTERS[SLIDES_CHAPTER], folder / CHAPTERS[SLIDES_CHAPTER].name)
    with jupyter_lab(folder, lab_env(folder)) as (url, token):
        driver = chromium()
        try:
            driver.get(f"{url}/rise/{CHAPTERS[SLIDES_CHAPTER].name}?token={token}")
            yield driver
        finally:
            driver.quit()


@pytest.mark.slow
@needs_browser("the slides' browser checks")
def test_a_chapter_opens_as_slides_and_runs_live(slideshow):
    from browsing import console_errors, wait
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    notebook, driver = read(CHAPTERS[SLIDES_CHAPTER]), slideshow
    kinds = [cell["metadata"]["slideshow"]["slide_type"] for cell in notebook["cells"]]
    starts = [cell for cell, kind in zip(notebook["cells"], kinds) if kind == "slide"]
    heading = "return (slide.querySelector('h1, h2, h3') || {textContent: ''}).textContent.replace('¶', '').trim()"
    shown = lambda d: d.execute_script("return document.querySelector('.reveal .slides section.present')")  # noqa: E731
    wait(driver, shown, "the slideshow to show its first slide")
    wait(driver, lambda d: _present(d, heading) == _headings(starts[0])[0], "the chapter's title on the first slide",
         describe=lambda d: _present(d, heading))
    leaves = driver.execute_script("return [...document.querySelectorAll('.reveal .slides section')]"
                                   ".filter(s => !s.querySelector('section')).length")
    assert leaves == kinds.count("slide") + kinds.count("subslide")

    ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()
    wait(driver, lambda d: _present(d, heading) == _headings(starts[1])[0], "the second slide's heading",
         describe=lambda d: _present(d, heading))
    wait(driver, lambda d: _present(d, "return slide.querySelectorAll('mjx-container').length"),
         "the second slide's formulas typeset by MathJax")
    markdown = "return [...document.querySelectorAll('.reveal .jp-RenderedMarkdown')].map(e => e.innerText)"
    raw_tex = lambda d: [t for t in d.execute_script(markdown) if "$$" in t or re.search(r"\$[^$\s][^$]*\$", t)]  # noqa: E731
    wait(driver, lambda d: not raw_tex(d), "no raw TeX left in any slide's Markdown", describe=raw_tex)

    figures = sum(has_figure(cell) for cell in notebook["cells"])
    images = driver.execute_script("return [...document.querySelectorAll('.reveal .jp-OutputArea-output img')]"
                                   ".map(i => [i.complete, i.naturalWidth])")
    assert len(images) == figures and all(done and width > 0 for done, width in images), images

    _run_live(driver)
    unexpected = [e for e in console_errors(driver) if not any(known in e["message"] for known, _ in RISE_OWN_ERRORS)]
    assert not unexpected, f"the slideshow's console logged errors: {unexpected}"


def _run_live(driver) -> None:
    """On the slide shown (chapter 00's latency budget), add a line to its code cell and run it with Shift+Enter, as
    an instructor would (RISE then moves on to the next cell); the cell's new output must appear under it."""
    from browsing import wait
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    cell = _present(driver, "return slide.querySelector('.jp-CodeCell')")
    editor = cell.find_element("css selector", ".cm-content")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", editor)
    editor.click()
    ActionChains(driver).key_down(Keys.CONTROL).send_keys(Keys.END).key_up(Keys.CONTROL).perform()
    ActionChains(driver).send_keys(Keys.ENTER, "print(6 * 7, 'live')").perform()
    ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
    outputs = "return [...arguments[0].querySelectorAll('.jp-OutputArea-output')].map(e => e.innerText)"
    wait(driver, lambda d: any("42 live" in text for text in d.execute_script(outputs, cell)), "the cell's live output",
         describe=lambda d: d.execute_script(outputs, cell))
