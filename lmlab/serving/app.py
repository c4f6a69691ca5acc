"""The chat server's HTTP app: OpenAI's chat completions on lmlab's batching engine, in Starlette.

Introduced in notebooks/07_realtime_pipeline.ipynb. ``POST /v1/chat/completions`` (streamed as server-sent events
when ``"stream": true``), ``GET /v1/models``, ``GET /health`` (the engine's state and caches) and
``POST /admin/settings`` (batching policy, batch bound and caches, between experiments). Requests share the model
through ``lmlab.serving.engine.Engine``. Each reply carries its ``usage`` and a ``timing`` object (queue, prefill,
time to first token, decode ms per token, total, as the server measured them), also in ``X-Lmlab-*`` headers when
not streamed. A client that goes away mid-reply is dropped from the batch at the next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import time
import uuid
from contextlib import asynccontextmanager

from lmlab.measure.timing import Stopwatch
from lmlab.serving.engine import LRU, POLICIES, Engine, Event, QueueFull
from lmlab.serving.protocol import RequestError, error_body, parse_request, timing, usage
from lmlab.serving.served import ServedModel

SETTINGS = ("policy", "max_batch", "prefix_cache", "reply_cache")  # what POST /admin/settings may change


def build_app(served: ServedModel, engine: Engine, *, api_key: str | None = None, reply_cache: int = 0,
              max_body_bytes: int = 1_000_000, default_max_tokens: int = 64):
    """Return the Starlette app serving ``served`` through ``engine`` (started and stopped with the app).

    ``reply_cache``: how many greedy replies to keep, keyed by (prompt token ids, max_tokens), least recently
    used evicted (0: off). Sampled replies are never cached.
    """
    from starlette.applications import Starlette  # starlette: only a running server needs it
    from starlette.routing import Route

    chat = ChatApp(served, engine, api_key, LRU(reply_cache), max_body_bytes, default_max_tokens)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    routes = [Route("/v1/chat/completions", chat.chat, methods=["POST"]),
              Route("/v1/models", chat.models, methods=["GET"]), Route("/health", chat.health, methods=["GET"]),
              Route("/admin/settings", chat.settings, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.engine, app.state.served = engine, served
    return app


class ChatApp:
    """The endpoints of one server: the served model, its engine, the API key, the reply cache and body limit."""

    def __init__(self, served: ServedModel, engine: Engine, api_key: str | None, replies: LRU,
                 max_body_bytes: int, default_max_tokens: int):
        self.served, self.engine, self.api_key, self.replies = served, engine, api_key, replies
        self.max_body_bytes, self.default_max_tokens = max_body_bytes, default_max_tokens
        self.created = int(time.time())

    def authorized(self, request) -> None:
        """Raise RequestError (401) unless the request carries ``Authorization: Bearer <key>`` (when a key is set)."""
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise RequestError("a valid API key is required: send 'Authorization: Bearer <key>'", None, 401,
                               code="invalid_api_key")

    async def read_json(self, request) -> object:
        """Return the decoded JSON body; RequestError 413 past ``max_body_bytes``, 400 for invalid JSON."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(f"the body has {declared} bytes; the limit is {limit}", None, 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(f"the body exceeds the limit of {limit} bytes", None, 413)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RequestError(f"the body is not valid JSON: {error}", None) from None

    async def chat(self, request):
        """POST /v1/chat/completions: the reply, from the reply cache or the engine, whole or streamed."""
        from starlette.responses import StreamingResponse  # starlette: only a running server needs it

        try:
            self.authorized(request)
            parsed = parse_request(await self.read_json(request), self.served, self.default_max_tokens)
        except RequestError as error:
            return error.response()
        reply_id, arrived = f"chatcmpl-{uuid.uuid4().hex[:24]}", Stopwatch(sync=False).start()  # no GPU wait here
        key = (tuple(parsed.ids), parsed.max_tokens, parsed.ignore_eos)
        cached = self.replies.get(key) if parsed.greedy and self.replies.max_entries else None
        if cached is not None:
            source = _replay(_cached_events(*cached, arrived))
        else:
            try:
                source = self._submit(parsed, request, key)
            except RequestError as error:
                return error.response()
        if parsed.stream:
            return StreamingResponse(_sse(source, reply_id, self.served.id, self.created, parsed.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _whole(source, reply_id, self.served.id, self.created)

    def _submit(self, parsed, request, key):
        """Queue the request in the engine; return its events. RequestError 429 when the queue is full."""
        loop, inbox = asyncio.get_running_loop(), asyncio.Queue()
        try:
            ticket = self.engine.submit(parsed.ids, parsed.max_tokens, sampling=parsed.sampling,
                                        prefix_len=parsed.prefix_len,
                                        stop_at_eos=not parsed.ignore_eos,
                                        callback=lambda event: loop.call_soon_threadsafe(inbox.put_nowait, event))
        except QueueFull as full:
            raise RequestError(f"the server is busy: {full}; retry after 1 s", None, 429, "requests",
                               "rate_limit_exceeded", {"Retry-After": "1"}) from None
        except ValueError as error:
            raise RequestError(str(error), "messages") from None
        return _from_engine(inbox, ticket, request, self.replies if parsed.greedy else None, key)

    async def models(self, request):
        """GET /v1/models: the one model this server serves."""
        from starlette.responses import JSONResponse  # starlette: only a running server needs it

        try:
            self.authorized(request)
        except RequestError as error:
            return error.response()
        return JSONResponse({"object": "list", "data": [{"id": self.served.id, "object": "model",
                                                         "created": self.created, "owned_by": "lmlab"}]})

    async def health(self, request):
        """GET /health: the engine's policy, bounds, load and caches, and this process's id."""
        from starlette.responses import JSONResponse  # starlette: only a running server needs it

        engine = self.engine
        return JSONResponse({"status": "ok", "model": self.served.id, "format": self.served.format,
                             "policy": engine.policy, "max_batch": engine.max_batch, "max_queue": engine.max_queue,
                             "active": engine.active, "waiting": engine.waiting, "steps": engine.steps,
                             "finished": dict(engine.finished),
                             "mean_batch": None if math.isnan(engine.mean_batch) else engine.mean_batch,
                             "reply_cache": _cache_state(self.replies),
                             "prefix_cache": _cache_state(engine.prefixes), "pid": os.getpid(),
                             "speculative": {"method": engine.speculative, "draft_k": engine.draft_k,
                                             "drafted": engine.drafted, "accepted": engine.accepted}})

    async def settings(self, request):
        """Change the batching policy, batch bound and caches between experiments (clears the caches)."""
        try:
            self.authorized(request)
            body = _check_settings(await self.read_json(request))
            if self.engine.active or self.engine.waiting:
                raise RequestError("requests are in flight; change settings when the server is idle", None, 409)
        except RequestError as error:
            return error.response()
        self.engine.configure(policy=body.get("policy"), max_batch=body.get("max_batch"),
                              prefix_cache=body.get("prefix_cache", self.engine.prefixes.max_entries))
        self.replies = LRU(body.get("reply_cache", self.replies.max_entries))
        return await self.health(request)


def _check_settings(body: object) -> dict:
    """The body of POST /admin/settings, checked: known settings only, each in range; RequestError else."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", None)
    unknown = set(body) - set(SETTINGS)
    if unknown:
        raise RequestError(f"unknown settings {sorted(unknown)}", sorted(unknown)[0])
    for name in ("max_batch", "prefix_cache", "reply_cache"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0
                                  or (name == "max_batch" and not 1 <= value <= 256)):
            raise RequestError(f"{name}={value!r} is out of range", name)
    if body.get("policy") is not None and body["policy"] not in POLICIES:
        raise RequestError(f"policy={body['policy']!r} is unknown; use one of {POLICIES}", "policy")
    return body


def _cache_state(cache: LRU) -> dict:
    return {"size": len(cache), "max": cache.max_entries, "hits": cache.hits, "misses": cache.misses}


def _cached_events(tokens: tuple, done: Event, arrived: Stopwatch) -> list[Event]:
    """A cached reply's events again, its timing that of a cache hit: no queue, no prefill, TTFT from arrival."""
    events = [Event("token", token=t, text=text) for t, text in tokens]
    hit = {**done.timing, "queue_ms": 0.0, "prefill_ms": 0.0, "reply_cache_hit": True,
           "ttft_ms": arrived.elapsed_ms()}
    events.append(Event("done", finish_reason=done.finish_reason, completion_tokens=done.completion_tokens,
                        prompt_tokens=done.prompt_tokens, timing=hit))
    return events


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
            error = error_body(f"the model failed on this request: {event.error}", "server_error")["error"]
            yield f"data: {json.dumps({'error': error})}\n\n"
        else:
            yield chunk({}, event.finish_reason, timing=timing(event))
            if include_usage:  # OpenAI's last chunk: no choices, the usage (and lmlab's timing)
                last = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": usage(event), "timing": timing(event)}
                yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"
        return


async def _whole(source, reply_id: str, model: str, created: int):
    """The whole reply as one chat.completion object, its timing also in ``X-Lmlab-*`` headers."""
    from starlette.responses import JSONResponse  # starlette: only a running server needs it

    pieces, done = [], None
    async for event in source:
        if event.kind == "token":
            pieces.append(event.text)
        else:
            done = event
    if done is None:  # the client went away
        return JSONResponse(error_body("cancelled", "server_error"), status_code=499)
    if done.finish_reason == "error":
        return JSONResponse(error_body(f"the model failed on this request: {done.error}", "server_error"),
                            status_code=500)
    times = timing(done)
    headers = {f"X-Lmlab-{k.replace('_', '-')}": f"{v:.3f}" for k, v in times.items() if isinstance(v, float)}
    return JSONResponse({"id": reply_id, "object": "chat.completion", "created": created, "model": model,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                                      "finish_reason": done.finish_reason, "logprobs": None}],
                         "usage": usage(done), "timing": times}, headers=headers)
