"""What the real-browser tests share: headless Chromium through selenium, a JupyterLab server, and patient waits.

tests/test_browser.py (the panels), tests/test_slides.py (a chapter as slides) and tests/test_book.py (the website)
drive Debian's chromium and chromium-driver; each skips, saying what is missing, where they or selenium are not
installed (`.ci/run` installs them, so CI always runs them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
except ImportError:  # pragma: no cover - depends on the machine
    SELENIUM = False
else:
    SELENIUM = True

MISSING = [what for what, found in (("chromium", CHROMIUM), ("chromedriver", DRIVER), ("selenium", SELENIUM))
           if not found]
WAIT_S = 60  # the longest wait for one thing to appear (a busy machine starts the kernel and torch slowly)


def needs_browser(what: str) -> pytest.MarkDecorator:
    """Skip, saying so, where Chromium, its driver or selenium is missing; ``what`` names the tests that need them."""
    return pytest.mark.skipif(bool(MISSING), reason=f"no {', '.join(MISSING)} here: {what} need Debian's chromium"
                              " and chromium-driver and selenium (.ci/run installs them)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, what: str) -> None:
    """Wait up to WAIT_S for ``process`` to listen on 127.0.0.1:``port``; fail with the end of its log if it exits."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{what} exited: {log.read_text()[-2000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{what} did not listen on port {port} within {WAIT_S} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


def lab_env(folder: Path) -> dict[str, str]:
    """The environment of a JupyterLab server whose settings, workspaces and data live in ``folder``, not the user's."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "JUPYTER_CONFIG_DIR": str(folder / ".config"), "JUPYTERLAB_SETTINGS_DIR": str(folder / ".settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(folder / ".workspaces"), "JUPYTER_DATA_DIR": str(folder / ".data"),
            "MPLBACKEND": "Agg"}


@contextlib.contextmanager
def jupyter_lab(folder: Path, env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """A real JupyterLab on a free 127.0.0.1 port with a token, serving ``folder``: yields (url, token), then stops."""
    port, token = free_port(), os.urandom(16).hex()
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
               "--LabApp.news_url=", "--LabApp.expose_app_in_browser=True",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               *(["--allow-root"] if os.geteuid() == 0 else [])]
    log_path = folder / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, server, log_path, "jupyter lab")
            yield f"http://127.0.0.1:{port}", token
        finally:
            stop(server)


def chromium(*arguments: str):
    """Headless Chromium (Debian's, through its own chromedriver: no Selenium Manager, no network), logging the
    browser console at every level."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                     "--disable-gpu", *arguments):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def wait(driver, condition, what: str, timeout: float = WAIT_S, describe=None):
    """Wait for ``condition(driver)`` to be truthy and return it; on timeout fail saying ``what`` and, if given,
    ``describe(driver)`` (what the page showed). LMLAB_BROWSER_SHOT=<file.png> saves a picture of the page."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))
    except TimeoutException:
        if os.environ.get("LMLAB_BROWSER_SHOT"):
            driver.save_screenshot(os.environ["LMLAB_BROWSER_SHOT"])
        pytest.fail(f"waited {timeout} s for {what}" + (f"; the page showed: {describe(driver)}" if describe else ""))


def console_errors(driver) -> list[dict]:
    """The browser console's SEVERE entries, after proving the log is read at all (a deliberate probe must be in it)."""
    driver.execute_script("console.error('lmlab-probe')")
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert any("lmlab-probe" in entry["message"] for entry in severe), "the browser's console log is not read"
    return [entry for entry in severe if "lmlab-probe" not in entry["message"]]
