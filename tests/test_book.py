"""The book (`make book`): built from the committed chapters, every warning an error, and read in a real browser.

The build runs once per test session into a temporary folder. The fast tests check what book/build.py does to a
chapter (the executed check, the stills of saved panels) and that no page asks the network for anything. The
browser tests serve the site on 127.0.0.1 and open it in headless Chromium told that no other host exists: every
chapter loads without console errors, its formulas are rendered, its figures load, the contents link every chapter,
search finds a chapter's term, and the links into lmlab's reference land on the entry they name.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browsing import ROOT, chromium, free_port, needs_browser, stop, wait, wait_for_port

spec = importlib.util.spec_from_file_location("book_build", ROOT / "book" / "build.py")
book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(book)
CHAPTERS = list(book.chapters())


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The whole site, built as `make book` builds it (any Sphinx warning fails the build)."""
    work = tmp_path_factory.mktemp("book")
    return book.build(work / "html", work=work)


def _widget_notebook() -> dict:
    image = {"model_name": "ImageModel", "state": {"format": "png", "description": ""},
             "buffers": [{"path": ["value"], "data": "aGVsbG8=", "encoding": "base64"}]}
    state = {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_row", "IPY_MODEL_text", "IPY_MODEL_img"]}},
        "row": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_lr", "IPY_MODEL_menu", "IPY_MODEL_go"]}},
        "lr": {"model_name": "FloatSliderModel", "state": {"description": "learning rate", "value": 0.1}},
        "menu": {"model_name": "DropdownModel", "state": {"description": "model", "index": 1,
                                                          "_options_labels": ["mlp", "gpt"]}},
        "go": {"model_name": "ButtonModel", "state": {"description": "generate"}},
        "text": {"model_name": "HTMLModel", "state": {"value": "<b>loss 0.12</b>"}},
        "img": image,
    }
    output = {"output_type": "display_data", "metadata": {},
              "data": {"text/plain": ["'Panel: it answers in a running kernel (`make lab`).'"],
                       book.WIDGET_VIEW: {"model_id": "box", "version_major": 2, "version_minor": 0}}}
    return {"cells": [{"cell_type": "code", "execution_count": 1, "outputs": [output], "source": "p", "metadata": {}}],
            "metadata": {"widgets": {book.WIDGET_STATE: {"state": state}}}}


def test_a_saved_panel_becomes_a_still_of_its_saved_state():
    notebook = _widget_notebook()
    assert book.still_panels(notebook) == 1
    data = notebook["cells"][0]["outputs"][0]["data"]
    shown = data["text/html"]
    assert book.WIDGET_VIEW not in data and "widgets" not in notebook["metadata"]  # nothing asks for a widget manager
    assert "learning rate: <b>0.1</b>" in shown and "model: <b>gpt</b>" in shown and "[generate]" in shown
    assert "<b>loss 0.12</b>" in shown and 'src="data:image/png;base64,aGVsbG8="' in shown
    assert "<code>make lab</code>" in shown  # the panel's own line on running it live, first
    assert shown.index("running kernel") < shown.index("learning rate")


def test_an_unexecuted_chapter_stops_the_build_naming_it():
    notebook = {"cells": [{"cell_type": "code", "execution_count": 1}, {"cell_type": "code", "execution_count": None}]}
    with pytest.raises(ValueError, match=r"03_x.ipynb: code cell 2 has execution_count=None"):
        book.check_executed(Path("03_x.ipynb"), notebook)
    book.check_executed(Path("ok.ipynb"), {"cells": [{"cell_type": "markdown"}, {"cell_type": "code",
                                                                                 "execution_count": 1}]})


def test_every_committed_chapter_was_executed_top_to_bottom():
    for path in book.chapters().values():
        book.check_executed(path, json.loads(path.read_text(encoding="utf-8")))


def test_the_packages_come_in_course_order():
    order = book.packages()
    assert order[0] == "lmlab.measure" and order[-1] == "lmlab.cli" and len(order) == len(set(order))
    assert order.index("lmlab.models") < order.index("lmlab.train") < order.index("lmlab.inference")


class _Resources(HTMLParser):
    """Every address a page loads by itself: scripts, stylesheets, images, frames (not the links a reader clicks)."""

    def __init__(self):
        super().__init__()
        self.loads: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe", "source") and attrs.get("src"):
            self.loads.append(attrs["src"])
        if tag == "link" and attrs.get("href") and set((attrs.get("rel") or "").split()) & {"stylesheet", "preload",
                                                                                               "icon", "modulepreload"}:
            self.loads.append(attrs["href"])


def test_no_page_loads_anything_from_the_network(site):
    pages = sorted(site.rglob("*.html"))
    assert {f"{name}.html" for name in CHAPTERS} <= {page.name for page in pages}
    remote = re.compile(r"^(https?:)?//")
    for page in pages:
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8"))
        assert parser.loads, f"{page.name} loads nothing at all: the check reads no page"
        assert not [a for a in parser.loads if remote.match(a)], f"{page.name} loads from the network"
    for sheet in site.rglob("*.css"):
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", sheet.read_text(encoding="utf-8")), sheet.name


# -- in a real browser --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(site, tmp_path_factory):
    """The site on a real HTTP server on a free 127.0.0.1 port (as `python -m http.server` serves it)."""
    port = free_port()
    log = tmp_path_factory.mktemp("http") / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                   "--directory", str(site)], stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, server, log, "the book's HTTP server")
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(server)


@pytest.fixture(scope="module")
def reader(served):
    """Headless Chromium for which no host but 127.0.0.1 exists: a page that reached for a CDN would fail loudly."""
    driver = chromium("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    try:
        yield driver
    finally:
        driver.quit()


PAGE_STATE = """
const article = document.querySelector('article');
const prose = article.cloneNode(true);
prose.querySelectorAll('pre, code, .cell_output, .output, mjx-container, script').forEach(e => e.remove());
return {
  text: prose.innerText,
  math: article.querySelectorAll('.math').length,
  rendered: article.querySelectorAll('.math mjx-container').length,
  panels: article.querySelectorAll('.lmlab-panel').length,
  images: [...article.querySelectorAll('img')].map(i => [i.currentSrc, i.complete && i.naturalWidth > 0]),
  elsewhere: performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin)),
};
"""


def _open(driver, url: str) -> dict:
    driver.get(url)
    wait(driver, lambda d: d.execute_script("return document.readyState") == "complete", f"{url} to load")
    wait(driver, lambda d: d.execute_script(  # MathJax typesets after load: wait until every formula is done
        "return [...document.querySelectorAll('article .math')].every(m => m.querySelector('mjx-container'))"),
        f"the formulas of {url}")
    return driver.execute_script(PAGE_STATE)


def _saved_outputs(name: str, kind: str) -> int:
    notebook = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text(encoding="utf-8"))
    return sum(1 for cell in notebook["cells"] for output in cell.get("outputs", []) if kind in output.get("data", {}))


@pytest.mark.slow
@needs_browser("the website's browser tests")
@pytest.mark.parametrize("name", CHAPTERS)
def test_a_chapter_page_shows_its_prose_formulas_and_figures(reader, served, name):
    from browsing import console_errors

    page = _open(reader, f"{served}/{name}.html")
    assert not console_errors(reader)
    assert not page["elsewhere"], f"{name} asked for {page['elsewhere']}"
    raw = re.findall(r"\$\$|\$[^$\n]{1,80}\$", page["text"])
    assert not raw, f"{name} shows unrendered formulas: {raw[:5]}"
    assert page["rendered"] == page["math"]
    broken = [src[:80] for src, ok in page["images"] if not ok]
    assert not broken, f"{name} has broken figures: {broken}"
    assert len(page["images"]) >= _saved_outputs(name, "image/png") > 0  # every saved figure is on the page
    assert page["panels"] == _saved_outputs(name, book.WIDGET_VIEW)  # every saved panel, as a still
    assert "Run this chapter live" in page["text"] and f"notebooks/{name}.ipynb" in reader.page_source


@pytest.mark.slow
@needs_browser("the website's browser tests")
def test_the_front_page_links_every_chapter_and_the_reference(reader, served):
    from selenium.webdriver.common.by import By

    _open(reader, f"{served}/index.html")
    links = {a.get_attribute("href").split("#")[0] for a in reader.find_elements(By.CSS_SELECTOR, "article a")}
    assert {f"{served}/{name}.html" for name in CHAPTERS} <= links
    assert f"{served}/api/lmlab.measure.html" in links
    sidebar = {a.get_attribute("href") for a in reader.find_elements(By.CSS_SELECTOR, "nav.bd-docs-nav a")}
    assert {f"{served}/{name}.html" for name in CHAPTERS} <= sidebar  # the contents beside every page


@pytest.mark.slow
@needs_browser("the website's browser tests")
def test_search_finds_a_term_from_a_chapter(reader, served):
    from selenium.webdriver.common.by import By

    reader.get(f"{served}/search.html?q=Kneser")
    found = wait(reader, lambda d: [a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR,
                                                                                     "#search-results a")],
                 "search results for 'Kneser'")
    assert any("01_ngram_language_models.html" in href for href in found), found


@pytest.mark.slow
@needs_browser("the website's browser tests")
def test_a_chapter_links_to_lmlab_functions_and_other_chapters(reader, served):
    from selenium.webdriver.common.by import By

    _open(reader, f"{served}/03_gradient_descent.html")
    box = reader.find_element(By.CSS_SELECTOR, ".lmlab-run-live")
    function = box.find_element(By.LINK_TEXT, "adam_step_ratios")
    assert function.get_attribute("href").endswith("api/lmlab.train.html#lmlab.train.descent.adam_step_ratios")
    prose = [a.get_attribute("href") for a in reader.find_elements(By.CSS_SELECTOR, "article p a.reference")]
    assert f"{served}/02_neural_language_models.html" in prose  # "Chapter 02's neural language models..."
    panel = reader.find_element(By.CSS_SELECTOR, ".lmlab-panel")
    assert "make lab" in panel.text and "learning rate" in panel.text
    function.click()
    wait(reader, lambda d: d.execute_script("return location.hash") == "#lmlab.train.descent.adam_step_ratios",
         "the reference entry")
    entry = reader.find_element(By.ID, "lmlab.train.descent.adam_step_ratios")
    assert "adam_step_ratios" in entry.text
