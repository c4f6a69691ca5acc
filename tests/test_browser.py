"""Every panel in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by selenium.

A notebook in a temporary folder builds each panel from the small shipped models (or ones trained in a second);
the test runs its cells, waits for the widget views, drives each panel once (types, picks, clicks) and checks that
its output changes to the right thing, that charts are shown at their own pixel size, and that the browser's console
logged no error. Skips, saying why, where Chromium, its driver or selenium is missing (`.ci/run` installs them).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browsing import ROOT, WAIT_S, chromium, console_errors, jupyter_lab, lab_env, needs_browser, wait

pytestmark = [pytest.mark.slow, needs_browser("the real-browser panel tests")]

# One cell per panel; each tags its view with a CSS class the test finds it by.
CELLS = [
    """import torch
from lmlab.data.corpora import load_names, tokenize, tokenize_corpus
from lmlab.models.ngram import NGramModel
from lmlab.notebook.widgets import NextTokenPanel
names = tokenize_corpus(load_names())
p1 = NextTokenPanel({f"{n}-gram": NGramModel.fit(names, n=n) for n in (2, 3)}, lambda t: tokenize(t, "char"),
                    text="jo")
p1.widget.add_class("t-next")
p1.widget""",
    """from lmlab.notebook.widgets import DescentPanel
from lmlab.train.descent import linear_data
x, y = linear_data(32, seed=0)
p2 = DescentPanel(x, y, lr=0.1, batch_size=8, steps=20)
p2.widget.add_class("t-descent")
p2.widget""",
    """from lmlab.compress.methods import METHODS
from lmlab.models.kinds import build_model
from lmlab.models.lm import evaluate
from lmlab.notebook.widgets import CompressionPanel
torch.manual_seed(0)
mlp = build_model("mlp", names.vocab, context_size=3, embed_dim=4, hidden_dim=16).eval()
pairs = [a[:300] for a in names.examples("valid", 3)]
p3 = CompressionPanel({"mlp": (mlp, lambda m: evaluate(m, *pairs))},
                      {"per channel": METHODS["quantize-channel"], "magnitude": METHODS["magnitude-global"]})
p3.widget.add_class("t-compress")
p3.widget""",
    """from lmlab.inference.decode import as_causal_lm
from lmlab.models.checkpoints import load_checkpoint
from lmlab.notebook.widgets import DecodePanel
p4 = DecodePanel({"gpt-small": as_causal_lm(load_checkpoint(GPT_SMALL))}, prompt="and god said", max_new_tokens=8)
p4.widget.add_class("t-decode")
p4.widget""",
    """from lmlab.notebook.widgets import ClassifyPanel
from lmlab.tasks.classify import names_by_sex, train_classifier
train = names_by_sex().split(seed=0)["train"]
p5 = ClassifyPanel({kind: train_classifier(kind, train, steps=5) for kind in ("linear", "cnn")}, text="mary")
p5.widget.add_class("t-classify")
p5.widget""",
]


def _notebook(folder: Path, cells: list[str] | None = None, name: str = "panels.ipynb") -> Path:
    cells = cells or [f"GPT_SMALL = {str(ROOT / 'data' / 'gpt-small')!r}", *CELLS]
    notebook = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                           "outputs": [], "source": source} for i, source in enumerate(cells)],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                            "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    path = folder / name
    path.write_text(json.dumps(notebook), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free local port with a token, serving a folder that holds the panels' notebook."""
    folder = tmp_path_factory.mktemp("lab")
    _notebook(folder)
    env = lab_env(folder)
    _saved_notebooks(folder, env)
    with jupyter_lab(folder, env) as (url, token):
        yield url, token


def _saved_notebooks(folder: Path, env: dict) -> None:
    """saved.ipynb: the descent panel run by nbconvert (which stores the widget state) and trusted, as `make lab`
    trusts the workbook; untrusted.ipynb: the same file, not trusted."""
    saved = _notebook(folder, [CELLS[1]], "saved.ipynb")
    run = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace", str(saved)]
    subprocess.run(run, env=env, check=True, capture_output=True, timeout=2 * WAIT_S)
    copy = json.loads(saved.read_text(encoding="utf-8"))
    copy["metadata"]["title"] = "an untrusted copy"  # trust is per content: an identical copy would be trusted too
    (folder / "untrusted.ipynb").write_text(json.dumps(copy), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "jupyter", "trust", str(saved)], env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def browser(lab):
    """Headless Chromium with the notebook open and every cell run, the widget views rendered."""
    driver = chromium()
    try:
        url, token = lab
        driver.get(f"{url}/lab/tree/panels.ipynb?token={token}")
        _run_all_cells(driver)
        yield driver
    finally:
        driver.quit()


def _outputs(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text[-500:] for e in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")]


def _wait(driver, condition, what: str, timeout: float = WAIT_S):
    return wait(driver, condition, what, timeout, describe=lambda d: f"the cells' outputs: {_outputs(d)}")


def _run_all_cells(driver) -> None:
    from selenium.webdriver.common.by import By

    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), "the notebook to open")
    time.sleep(1)  # JupyterLab may ask which kernel to start: take the one it offers (the notebook names it)
    for accept in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog .jp-mod-accept"):
        accept.click()
    for toast in driver.find_elements(By.CSS_SELECTOR, ".jp-toast-buttonBar button"):  # "get Jupyter news?": no
        if toast.text.strip() == "No":
            toast.click()
    run_all = "return window.jupyterapp && window.jupyterapp.commands.isEnabled('notebook:run-all-cells')"
    _wait(driver, lambda d: d.execute_script(run_all), "the notebook's commands")
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    for tag in ("t-next", "t-descent", "t-compress", "t-decode", "t-classify"):
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f".{tag}"), f"the {tag} panel to render", 2 * WAIT_S)


def _panel(driver, tag: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f".{tag}")


def _text_of(driver, tag: str, css: str) -> str:
    from selenium.webdriver.common.by import By

    return " ".join(e.text for e in _panel(driver, tag).find_elements(By.CSS_SELECTOR, css))


def _type(driver, tag: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = _panel(driver, tag).find_element(By.CSS_SELECTOR, "input[type='text']")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text)


def _image(driver, tag: str):
    from selenium.webdriver.common.by import By

    return _panel(driver, tag).find_element(By.CSS_SELECTOR, "img")


def test_next_token_panel_answers_a_new_context(browser):
    _wait(browser, lambda d: "computed this in" in _text_of(d, "t-next", ".widget-html"), "the first answer")
    before = _image(browser, "t-next").get_attribute("src")
    _type(browser, "t-next", "ma3")
    _wait(browser, lambda d: "read as <unk>: 3" in _text_of(d, "t-next", ".widget-html"), "the note on '3'")
    assert _image(browser, "t-next").get_attribute("src") != before


def test_descent_panel_redraws_for_a_new_batch_size(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    assert "mini-batch descent" in _text_of(browser, "t-descent", ".widget-html")
    readouts = _panel(browser, "t-descent").find_elements(By.CSS_SELECTOR, ".widget-readout")
    readout = readouts[-1]  # the batch size's
    readout.click()
    readout.send_keys(Keys.CONTROL, "a")
    readout.send_keys("1", Keys.ENTER)
    _wait(browser, lambda d: "stochastic descent" in _text_of(d, "t-descent", ".widget-html"), "stochastic descent")


def test_compression_panel_scores_another_method(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _wait(browser, lambda d: "per channel at 8" in _text_of(d, "t-compress", ".widget-html"), "the first score")
    menus = _panel(browser, "t-compress").find_elements(By.CSS_SELECTOR, "select")
    Select(menus[1]).select_by_visible_text("magnitude")
    _wait(browser, lambda d: "magnitude at 0.5" in _text_of(d, "t-compress", ".widget-html"), "the magnitude score")


def test_decode_panel_streams_a_reply_on_click(browser):
    from selenium.webdriver.common.by import By

    button = _panel(browser, "t-decode").find_element(By.CSS_SELECTOR, "button")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)  # clear of any toast
    button.click()
    _wait(browser, lambda d: "first token after" in _text_of(d, "t-decode", ".widget-html"), "the reply's timing")
    reply = _panel(browser, "t-decode").find_element(By.CSS_SELECTOR, ".widget-html div[style*='pre-wrap']")
    assert reply.text.startswith("and god said") and len(reply.text) > len("and god said")
    assert button.is_enabled()


def test_classify_panel_names_an_unknown_character(browser):
    _wait(browser, lambda d: "linear" in _text_of(d, "t-classify", ".widget-html"), "the first answer")
    _type(browser, "t-classify", "zoë")
    _wait(browser, lambda d: "read as unknown: ë." in _text_of(d, "t-classify", ".widget-html"), "the note on 'ë'")
    image = _image(browser, "t-classify")
    shown, natural = browser.execute_script("return [arguments[0].clientWidth, arguments[0].naturalWidth]", image)
    assert shown == natural  # at its own pixel size, not stretched to the page


def test_the_console_logged_no_error(browser):
    errors = console_errors(browser)
    assert not errors, f"the browser's console logged errors: {errors}"


@pytest.mark.parametrize("name, shows", [("saved.ipynb", "the saved view"), ("untrusted.ipynb", "the text")])
def test_a_saved_panel_shows_before_its_cell_runs(lab, name, shows):
    from selenium.webdriver.common.by import By

    url, token = lab
    driver = chromium()
    try:
        driver.get(f"{url}/lab/workspaces/{name.split('.')[0]}/tree/{name}?token={token}")
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output"), "the saved output")
        time.sleep(1)
        for dismiss in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog .jp-mod-reject"):  # no kernel needed
            dismiss.click()
        if shows == "the saved view":  # trusted, with the widget state nbconvert stored: the panel as it was
            _wait(driver, lambda d: "mini-batch descent" in " ".join(
                e.text for e in d.find_elements(By.CSS_SELECTOR, ".t-descent .widget-html")), "the saved view")
        else:  # untrusted: JupyterLab shows the plain-text form, which says what the panel is
            _wait(driver, lambda d: "DescentPanel: sliders" in " ".join(
                e.text for e in d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")), "the plain text")
            assert "VBox(" not in driver.find_element(By.CSS_SELECTOR, ".jp-OutputArea-output").text
    finally:
        driver.quit()
