"""`make lab` starts JupyterLab on localhost with token authentication on."""

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status(url: str, token: str | None = None) -> int:
    """Return the HTTP status of a GET, retrying for a while if the server is not listening yet."""
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    for _ in range(60):
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code
        except urllib.error.URLError:
            time.sleep(0.5)
    raise AssertionError(f"nothing answered at {url}")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_lab_refuses_requests_without_the_token(tmp_path):
    port = free_port()
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path), BROWSER="true")
    lab = subprocess.Popen(
        ["make", "-s", "lab", f"LAB_ARGS=--no-browser --port={port} --ServerApp.port_retries=0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        token, log = None, []
        deadline = time.monotonic() + 90
        while token is None and time.monotonic() < deadline and lab.poll() is None:
            line = lab.stdout.readline()
            log.append(line)
            match = re.search(rf"http://(?:localhost|127\.0\.0\.1):{port}/lab\?token=([0-9a-f]+)", line)
            token = match and match.group(1)
        assert token, "JupyterLab did not print its token URL:\n" + "".join(log[-20:])
        api = f"http://127.0.0.1:{port}/api/contents"
        assert status(api) == 403
        assert status(api, token="not-the-token") == 403
        assert status(api, token=token) == 200
        # Listening on the loopback address only, not on every interface.
        with socket.socket() as probe:
            probe.settimeout(2)
            outside = socket.gethostbyname(socket.gethostname())
            if not outside.startswith("127."):
                assert probe.connect_ex((outside, port)) != 0
    finally:
        os.killpg(lab.pid, 15)
        lab.wait(timeout=30)
