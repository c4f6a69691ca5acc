"""An OpenAI-compatible chat server on lmlab's batching engine: ``python -m lmlab serve``.

Introduced in notebooks/07_realtime_pipeline.ipynb.

It speaks the API every client already speaks: ``POST /v1/chat/completions`` (streamed as server-sent events
when ``"stream": true``) and ``GET /v1/models``, on Starlette served by uvicorn, bound to 127.0.0.1 unless told
otherwise. Requests share the model through ``lmlab.serving.engine.Engine`` (continuous batching by default). Each
reply carries its ``usage`` (prompt and completion tokens) and a ``timing`` object (queue, prefill, time to first
token, decode ms per token, total, as the server measured them), also in ``X-Lmlab-*`` headers when not streamed.

Edges, in OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a malformed body or
an out-of-range field (``param`` names it), 401 without the API key when one is set, 413 for a body over
``max_body_bytes``, 429 with ``Retry-After`` when ``max_queue`` requests already wait. A client that goes away
mid-reply is dropped from the batch at the next step. ``GET /health`` reports the engine's state and caches.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from lmlab.compress.prune import prune_mlp
from lmlab.data.shipped import DATA_DIR
from lmlab.inference.decode import CausalLM, as_causal_lm
from lmlab.measure.runtime import check_int
from lmlab.measure.timing import time_ms
from lmlab.models.checkpoints import load_checkpoint
from lmlab.models.pretrained import load_smollm2
from lmlab.serving.engine import LRU, POLICIES, Engine, Event, QueueFull

FORMATS = ("float32", "onnx", "int8", "pruned")  # eager PyTorch, ONNX Runtime float32 / int8, MLP units pruned
BACKEND_OF = {"float32": "eager", "onnx": "onnx", "int8": "onnx-int8", "pruned": "eager"}
SERVED_MODELS = ("smollm2", "gpt-small", "gpt-medium", "gpt-large")
API_KEY_ENV = "LMLAB_API_KEY"
ROLES = ("system", "user", "assistant")


@dataclass
class ServedModel:
    """A model as the server offers it: its id, its decode loop, and how messages become token ids."""

    id: str
    aliases: tuple[str, ...]
    lm: CausalLM
    format: str
    to_ids: Callable[[list[dict]], tuple[list[int], int]]  # messages -> (prompt ids, shared prefix length)


def load_served(model: str = "smollm2", format: str = "float32", prune_fraction: float = 0.3) -> ServedModel:
    """Load a model for serving: SmolLM2-135M-Instruct with its chat template, or a shipped GPT.

    A GPT has no chat template: its prompt is the messages' contents joined by spaces. ``format`` picks the
    path: "float32" (eager PyTorch), "onnx" (ONNX Runtime float32), "int8" (ONNX Runtime, lmlab's blockwise
    int8, chapter 04), "pruned" (``prune_fraction`` of the MLP units removed, chapter 05).
    Raises ValueError for an unknown model or format.
    """
    if model not in SERVED_MODELS:
        raise ValueError(f"model={model!r} is not served; use one of {SERVED_MODELS}")
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is unknown; use one of {FORMATS}")
    if model == "smollm2":
        source, tokenizer = load_smollm2()
    else:
        source, tokenizer = load_checkpoint(f"{DATA_DIR}/{model}"), None
    if format == "pruned":
        source = getattr(prune_mlp(source, prune_fraction), "model", source)
    lm = as_causal_lm(source, tokenizer, name=model)
    name = "SmolLM2-135M-Instruct" if model == "smollm2" else model
    served_id = name if format == "float32" else f"{name}-{format}"

    def to_ids(messages: list[dict]) -> tuple[list[int], int]:
        system = [m for m in messages[:1] if m["role"] == "system"]
        if tokenizer is not None:
            ids = _template(tokenizer, messages, generation=True)
            prefix = _template(tokenizer, system, generation=False) if system else []
        else:
            ids = lm.encode(" ".join(m["content"] for m in messages))
            prefix = lm.encode(system[0]["content"]) if system else []
        return ids, len(prefix) if prefix and ids[:len(prefix)] == prefix and len(prefix) < len(ids) else 0

    return ServedModel(served_id, (model, name), lm, format, to_ids)


def _template(tokenizer, messages: list[dict], generation: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


class RequestError(ValueError):
    """A request the server refuses: its HTTP status, the field at fault, OpenAI's error type and code."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.param, self.status, self.kind, self.code, self.headers = param, status, kind, code, headers or {}

    def response(self):
        from starlette.responses import JSONResponse

        return JSONResponse({"error": {"message": str(self), "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat-completions request: prompt ids, their shared prefix, and the decode settings."""

    ids: list[int]
    prefix_len: int
    max_tokens: int
    temperature: float
    top_p: float | None
    seed: int
    stream: bool
    include_usage: bool
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def parse_request(body: object, served: ServedModel, default_max_tokens: int = 64) -> ChatRequest:
    """Check a decoded JSON body against OpenAI's chat-completions fields; return the request.

    Raises RequestError (HTTP 400) naming the field: a body that is not an object, a missing or unknown model,
    missing or empty messages, a message without a known role or text content, max_tokens outside
    [1, window - prompt tokens], temperature outside [0, 2], top_p outside (0, 1], n other than 1, a seed that
    is not an integer, a prompt that fills the window. ``ignore_eos`` (vLLM's extension) decodes all
    ``max_tokens`` tokens even past an end-of-sequence token, for benchmarks with fixed reply lengths.
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", None)
    model = body.get("model")
    if model is None:
        raise RequestError("model is required", "model")
    if model != served.id and model not in served.aliases:
        raise RequestError(f"model {model!r} does not exist here; this server serves {served.id!r}", "model",
                           code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {role, content} objects", "messages")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(f"messages[{i}].role must be one of {ROLES}", f"messages[{i}].role")
        content = message.get("content")
        if isinstance(content, list):  # OpenAI's content parts: keep the text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise RequestError(f"messages[{i}].content parts must all be text", f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str) or not content.strip():
            raise RequestError(f"messages[{i}].content must be a non-empty string", f"messages[{i}].content")
        clean.append({"role": message["role"], "content": content})
    if body.get("n", 1) != 1:
        raise RequestError(f"n={body.get('n')!r} is not supported; this server returns one choice (n=1)", "n")
    for unsupported in ("tools", "functions", "stop"):
        if body.get(unsupported) not in (None, [], ""):
            raise RequestError(f"{unsupported} is not supported by this server", unsupported)
    ids, prefix_len = served.to_ids(clean)
    window = served.lm.window
    room = window - len(ids)
    if room < 1:
        raise RequestError(f"the prompt has {len(ids)} tokens and {served.id}'s window is {window}; shorten the "
                           f"messages", "messages", code="context_length_exceeded")
    field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(field)
    if max_tokens is None:
        max_tokens = min(default_max_tokens, room)
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= room:
        raise RequestError(f"{field}={max_tokens!r} is out of range; with a {len(ids)}-token prompt use an "
                           f"integer in [1, {room}]", field)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0, low_open=False)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    seed = body.get("seed", 0)
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RequestError(f"seed={seed!r} must be an integer", "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"stream={stream!r} must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options must be an object", "stream_options")
    ignore_eos = body.get("ignore_eos", False)  # vLLM's extension: always max_tokens tokens (for benchmarks)
    if not isinstance(ignore_eos, bool):
        raise RequestError(f"ignore_eos={ignore_eos!r} must be true or false", "ignore_eos")
    return ChatRequest(ids, prefix_len, max_tokens, temperature, None if top_p >= 1 else top_p, seed, stream,
                       bool(options.get("include_usage", False)), ignore_eos)


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool) -> float:
    value = body.get(name)
    if value is None:
        return default
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        bounds = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        raise RequestError(f"{name}={value!r} is out of range; use a number in {bounds}", name)
    return float(value)


def build_app(served: ServedModel, engine: Engine, *, api_key: str | None = None, reply_cache: int = 0,
              max_body_bytes: int = 1_000_000, default_max_tokens: int = 64):
    """Return the Starlette app serving ``served`` through ``engine`` (started and stopped with the app).

    ``reply_cache``: how many greedy replies to keep, keyed by (prompt token ids, max_tokens), least recently
    used evicted (0: off). Sampled replies are never cached.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    replies = LRU(reply_cache)
    created = int(time.time())

    def authorized(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise RequestError("a valid API key is required: send 'Authorization: Bearer <key>'", None, 401,
                               code="invalid_api_key")

    async def read_json(request: Request) -> object:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise RequestError(f"the body has {declared} bytes; the limit is {max_body_bytes}", None, 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise RequestError(f"the body exceeds the limit of {max_body_bytes} bytes", None, 413)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RequestError(f"the body is not valid JSON: {error}", None) from None

    async def chat(request: Request):
        try:
            authorized(request)
            parsed = parse_request(await read_json(request), served, default_max_tokens)
        except RequestError as error:
            return error.response()
        reply_id, arrived = f"chatcmpl-{uuid.uuid4().hex[:24]}", time.perf_counter()
        key = (tuple(parsed.ids), parsed.max_tokens, parsed.ignore_eos)
        cached = replies.get(key) if parsed.greedy and replies.max_entries else None
        if cached is not None:
            events = [Event("token", token=t, text=text) for t, text in cached[0]]
            done = cached[1]
            timing = {**done.timing, "queue_ms": 0.0, "prefill_ms": 0.0, "reply_cache_hit": True,
                      "ttft_ms": (time.perf_counter() - arrived) * 1e3}
            events.append(Event("done", finish_reason=done.finish_reason, completion_tokens=done.completion_tokens,
                                prompt_tokens=done.prompt_tokens, timing=timing))
            source = _replay(events)
        else:
            loop, inbox = asyncio.get_running_loop(), asyncio.Queue()
            try:
                ticket = engine.submit(parsed.ids, parsed.max_tokens, sample=not parsed.greedy,
                                       temperature=parsed.temperature if not parsed.greedy else 1.0,
                                       top_p=parsed.top_p, seed=parsed.seed, prefix_len=parsed.prefix_len,
                                       stop_at_eos=not parsed.ignore_eos,
                                       callback=lambda event: loop.call_soon_threadsafe(inbox.put_nowait, event))
            except QueueFull as full:
                return RequestError(f"the server is busy: {full}; retry after 1 s", None, 429, "requests",
                                    "rate_limit_exceeded", {"Retry-After": "1"}).response()
            except ValueError as error:
                return RequestError(str(error), "messages").response()
            source = _from_engine(inbox, ticket, request, replies if parsed.greedy else None, key)
        if parsed.stream:
            return StreamingResponse(_sse(source, reply_id, served.id, created, parsed.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _whole(source, reply_id, served.id, created)

    async def models(request: Request):
        try:
            authorized(request)
        except RequestError as error:
            return error.response()
        return JSONResponse({"object": "list", "data": [{"id": served.id, "object": "model", "created": created,
                                                         "owned_by": "lmlab"}]})

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": served.id, "format": served.format,
                             "policy": engine.policy, "max_batch": engine.max_batch, "max_queue": engine.max_queue,
                             "active": engine.active, "waiting": engine.waiting, "steps": engine.steps,
                             "finished": dict(engine.finished),
                             "mean_batch": None if math.isnan(engine.mean_batch) else engine.mean_batch,
                             "reply_cache": _cache_state(replies), "prefix_cache": _cache_state(engine.prefixes),
                             "pid": os.getpid()})

    async def settings(request: Request):
        """Change the batching policy, batch bound and caches between experiments (clears the caches)."""
        nonlocal replies
        try:
            authorized(request)
            body = await read_json(request)
            if not isinstance(body, dict):
                raise RequestError("the request body must be a JSON object", None)
            unknown = set(body) - {"policy", "max_batch", "prefix_cache", "reply_cache"}
            if unknown:
                raise RequestError(f"unknown settings {sorted(unknown)}", sorted(unknown)[0])
            for name in ("max_batch", "prefix_cache", "reply_cache"):
                value = body.get(name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0
                                          or (name == "max_batch" and not 1 <= value <= 256)):
                    raise RequestError(f"{name}={value!r} is out of range", name)
            if body.get("policy") is not None and body["policy"] not in POLICIES:
                raise RequestError(f"policy={body['policy']!r} is unknown; use one of {POLICIES}", "policy")
            if engine.active or engine.waiting:
                raise RequestError("requests are in flight; change settings when the server is idle", None, 409)
        except RequestError as error:
            return error.response()
        engine.configure(policy=body.get("policy"), max_batch=body.get("max_batch"),
                         prefix_cache=body.get("prefix_cache", engine.prefixes.max_entries))
        replies = LRU(body.get("reply_cache", replies.max_entries))
        return await health(request)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models, methods=["GET"]),
              Route("/health", health, methods=["GET"]), Route("/admin/settings", settings, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.engine, app.state.served = engine, served
    return app


def _cache_state(cache: LRU) -> dict:
    return {"size": len(cache), "max": cache.max_entries, "hits": cache.hits, "misses": cache.misses}


async def _replay(events: list[Event]):
    for event in events:
        yield event


async def _from_engine(inbox: asyncio.Queue, ticket, request, replies: LRU | None, key):
    """Yield the engine's events for one request; cancel it if the client goes away or the consumer stops."""
    tokens, finished = [], False
    try:
        while True:
            try:
                event = await asyncio.wait_for(inbox.get(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            if event.kind == "token":
                tokens.append((event.token, event.text))
            else:  # the end: store the reply before handing it on (a stream's consumer stops reading here)
                finished = True
                if replies is not None and event.finish_reason in ("stop", "length"):
                    replies.put(key, (tuple(tokens), event))
            yield event
            if finished:
                return
    finally:
        if not finished:
            ticket.cancel()


def _usage(done: Event) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _timing(done: Event) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in done.timing.items()}


async def _sse(source, reply_id: str, model: str, created: int, include_usage: bool):
    """Server-sent events of OpenAI's chat.completion.chunk objects, ending with ``data: [DONE]``."""

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        body = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    async for event in source:
        if event.kind == "token":
            yield chunk({"content": event.text})
            continue
        if event.finish_reason == "error":
            error = {"message": f"the model failed on this request: {event.error}", "type": "server_error",
                     "param": None, "code": None}
            yield f"data: {json.dumps({'error': error})}\n\n"
        else:
            yield chunk({}, event.finish_reason, timing=_timing(event))
            if include_usage:  # OpenAI's last chunk: no choices, the usage (and lmlab's timing)
                last = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": _usage(event), "timing": _timing(event)}
                yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"
        return


async def _whole(source, reply_id: str, model: str, created: int):
    from starlette.responses import JSONResponse

    pieces, done = [], None
    async for event in source:
        if event.kind == "token":
            pieces.append(event.text)
        else:
            done = event
    if done is None:  # the client went away
        return JSONResponse({"error": {"message": "cancelled", "type": "server_error", "param": None,
                                       "code": None}}, status_code=499)
    if done.finish_reason == "error":
        return JSONResponse({"error": {"message": f"the model failed on this request: {done.error}",
                                       "type": "server_error", "param": None, "code": None}}, status_code=500)
    timing = _timing(done)
    headers = {f"X-Lmlab-{k.replace('_', '-')}": f"{v:.3f}" for k, v in timing.items()
               if isinstance(v, float)}
    return JSONResponse({"id": reply_id, "object": "chat.completion", "created": created, "model": model,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                                      "finish_reason": done.finish_reason, "logprobs": None}],
                         "usage": _usage(done), "timing": timing}, headers=headers)


def serve(model: str = "smollm2", format: str = "float32", *, host: str = "127.0.0.1", port: int = 8000,
          max_batch: int = 8, max_queue: int = 64, policy: str = "continuous", prefix_cache: int = 0,
          reply_cache: int = 0, api_key: str | None = None, threads: int | None = None,
          max_body_bytes: int = 1_000_000, prune_fraction: float = 0.3, log_level: str = "warning") -> None:
    """Load the model, then serve it until SIGINT or SIGTERM (in-flight replies get 5 s to finish).

    ``api_key`` defaults to ``$LMLAB_API_KEY`` (none: no key needed). Raises ValueError for a bad setting.
    """
    import uvicorn


    check_int("port", port, 0, 65535)
    check_int("max_body_bytes", max_body_bytes, 1)
    api_key = api_key if api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    served = load_served(model, format, prune_fraction)
    engine = Engine(served.lm, backend=BACKEND_OF[format], max_batch=max_batch, max_queue=max_queue, policy=policy,
                    prefix_cache=prefix_cache, threads=threads)
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

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
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


def reply_stages(server: RunningServer, tokenizer, messages: list[dict], max_tokens: int = 32,
                 model: str | None = None, repeat: int = 20) -> dict[str, float]:
    """Measure where one streamed reply's milliseconds go, stage by stage (ms), with the openai client.

    - tokenize: the chat template and tokenizer on the messages (median of ``repeat``, in this process);
    - queue, prefill, decode: the server's own timing of the request (decode = ms per token × (tokens − 1));
    - detokenize: decoding the reply one token at a time, as a streaming server does (median of ``repeat``);
    - http: what the client waited beyond the server's total (request parsing, SSE framing, loopback);
    - client_ttft and client_total: the first token and the end as the client saw them.
    The server's decode includes its own detokenizing, so the stages overlap by that much.
    Raises ValueError for max_tokens < 1.
    """
    from openai import OpenAI  # optional: the client of the serving chapter


    check_int("max_tokens", max_tokens)
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key or "none")
    model = model or client.models.list().data[0].id
    tokenize = time_ms(_template, tokenizer, messages, generation=True, warmup=1, repeat=repeat)
    start = time.perf_counter()
    first, pieces, last = None, [], None
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            pieces.append(chunk.choices[0].delta.content)
        last = chunk
    end = time.perf_counter()
    timing, tokens = last.model_extra["timing"], last.usage.completion_tokens
    ids = tokenizer("".join(pieces), add_special_tokens=False)["input_ids"]
    detokenize = time_ms(lambda: [tokenizer.decode(ids[:k], skip_special_tokens=True) for k in range(1, len(ids) + 1)],
                         warmup=1, repeat=repeat)
    client_total = (end - start) * 1e3
    return {"tokenize": tokenize.median_ms, "queue": timing["queue_ms"], "prefill": timing["prefill_ms"],
            "decode": (timing["decode_ms_per_token"] or 0.0) * (tokens - 1),
            "detokenize": detokenize.median_ms, "http": client_total - timing["total_ms"],
            "client_ttft": ((first or end) - start) * 1e3, "client_total": client_total, "tokens": tokens,
            "prompt_tokens": last.usage.prompt_tokens, "reply": "".join(pieces)}
