"""Starting the chat server: ``serve`` in this process (``python -m lmlab serve``), or a subprocess on a free port.

Introduced in notebooks/07_realtime_pipeline.ipynb. ``serve`` loads the model, binds 127.0.0.1 unless told
otherwise, and runs until SIGINT or SIGTERM. ``start_server`` and ``running_server`` start ``python -m lmlab
serve`` as a subprocess for tests and notebooks, wait for its health endpoint, and stop it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.measure.runtime import check_int
from lmlab.measure.timing import Stopwatch
from lmlab.serving.app import build_app
from lmlab.serving.engine import Engine
from lmlab.serving.served import BACKEND_OF, load_served

API_KEY_ENV = "LMLAB_API_KEY"


def serve(model: str = "smollm2", format: str = "float32", *, host: str = "127.0.0.1", port: int = 8000,
          max_batch: int = 8, max_queue: int = 64, policy: str = "continuous", prefix_cache: int = 0,
          reply_cache: int = 0, api_key: str | None = None, threads: int | None = None,
          max_body_bytes: int = 1_000_000, prune_fraction: float = 0.3, log_level: str = "warning",
          speculative: str | None = None, draft_k: int = 4, chunk_tokens: int | None = None,
          cache_tokens: int | None = None) -> None:
    """Load the model, then serve it until SIGINT or SIGTERM (in-flight replies get 5 s to finish).

    ``api_key`` defaults to ``$LMLAB_API_KEY`` (none: no key needed). ``speculative="prompt-lookup"`` speculates
    ``draft_k`` tokens per pass while one greedy request is alone in the engine (non-fused formats).
    ``chunk_tokens`` (the prefill's tokens per round; 0: whole prompts) and ``cache_tokens`` (the KV cache's budget
    in positions) are the slot engine's, for the fused formats (None: its defaults). Raises ValueError for a bad
    setting.
    """
    import uvicorn  # uvicorn: only a running server needs it

    check_int("port", port, 0, 65535)
    check_int("max_body_bytes", max_body_bytes, 1)
    api_key = api_key if api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    served = load_served(model, format, prune_fraction)
    options: dict[str, Any] = {"prefix_cache": prefix_cache, "speculative": speculative, "draft_k": draft_k}
    if chunk_tokens is not None:
        options["chunk_tokens"] = chunk_tokens or None  # 0: whole prompts
    if cache_tokens is not None:
        options["cache_tokens"] = cache_tokens
    engine = Engine(served.lm, backend=BACKEND_OF[format], max_batch=max_batch, max_queue=max_queue, policy=policy,
                    threads=threads, **options)
    app = build_app(served, engine, api_key=api_key, reply_cache=reply_cache, max_body_bytes=max_body_bytes)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                            access_log=False)
    print(f"lmlab serving {served.id} ({format}, {policy} batching, max_batch {max_batch}) on "
          f"http://{host}:{port}/v1", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the handler in force:
    # make that handler a quiet note, so a stopped server exits with code 0 and no traceback.
    stopped = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: stopped.append(signal.Signals(number).name))
    uvicorn.Server(config).run()
    print(f"lmlab server stopped{' by ' + stopped[0] if stopped else ''}", flush=True)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    """A server subprocess started by ``running_server``: where it listens, its process and its log."""

    base_url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    api_key: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def health(self) -> dict:
        import httpx

        return httpx.get(f"{self.base_url}/health", timeout=5).json()

    def configure(self, **settings) -> dict:
        """POST /admin/settings (policy, max_batch, prefix_cache, reply_cache); return the new health."""
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        response = httpx.post(f"{self.base_url}/admin/settings", json=settings, headers=headers, timeout=30)
        if response.status_code != 200:
            raise ValueError(response.json()["error"]["message"])
        return response.json()

    def stop(self, timeout_s: float = 20.0) -> int:
        """Send SIGTERM and wait for the exit (SIGKILL after ``timeout_s``); return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


    def wait_ready(self, timeout_s: float = 180.0) -> RunningServer:
        """Wait until GET /health answers 200; return the server. Raises RuntimeError (with the log) if the
        process exits or is not healthy within ``timeout_s`` (the process is then stopped)."""
        import httpx

        waited = Stopwatch(sync=False).start()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if waited.elapsed_ms() > timeout_s * 1e3:
                self.stop()
                raise RuntimeError(f"the server was not healthy after {timeout_s} s:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def close(self) -> int:
        """Stop the server and delete its log; return its exit code."""
        code = self.stop()
        self.log_path.unlink(missing_ok=True)
        return code


def start_server(model: str = "smollm2", *, wait: bool = True, timeout_s: float = 180.0, env: dict | None = None,
                 **flags) -> RunningServer:
    """Start ``python -m lmlab serve`` on a free port of 127.0.0.1; return it (healthy, unless ``wait=False``).

    ``flags`` become command-line flags (``max_batch=4`` -> ``--max-batch 4``; True -> a bare flag). The server
    logs to a temporary file (``log()``). Stop it with ``close()``; on Linux it also dies with this process, so
    a notebook kernel that is killed leaves no server behind. Raises RuntimeError as ``wait_ready`` does.
    """
    port = free_port()
    args = [sys.executable, "-m", "lmlab", "serve", "--model", model, "--port", str(port)]
    for name, value in flags.items():
        if value is True:
            args.append(f"--{name.replace('_', '-')}")
        elif value not in (None, False):
            args += [f"--{name.replace('_', '-')}", str(value)]
    with tempfile.NamedTemporaryFile(prefix="lmlab-serve-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                   preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    server = RunningServer(f"http://127.0.0.1:{port}", port, process, Path(log.name),
                           flags.get("api_key") or (env or {}).get(API_KEY_ENV))
    return server.wait_ready(timeout_s) if wait else server


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent exits (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


@contextmanager
def running_server(model: str = "gpt-small", *, timeout_s: float = 180.0, env: dict | None = None,
                   **flags) -> Iterator[RunningServer]:
    """``start_server`` as a context manager: the server is stopped (SIGTERM) when the block ends."""
    server = start_server(model, timeout_s=timeout_s, env=env, **flags)
    try:
        yield server
    finally:
        server.close()


