"""The chat server's HTTP app: OpenAI's chat completions on lmlab's batching engine, in Starlette.

Introduced in notebooks/07_realtime_pipeline.ipynb. ``POST /v1/chat/completions`` (streamed as server-sent events
when ``"stream": true``), ``GET /v1/models``, ``GET /health`` (the engine's state and caches) and
``POST /admin/settings`` (batching policy, batch bound and caches, between experiments). Requests share the model
through ``lmlab.serving.engine.Engine``. Each reply carries its ``usage`` and a ``timing`` object (queue, prefill,
time to first token, decode ms per token, total, as the server measured them), also in ``X-Lmlab-*`` headers when
not streamed. A client that goes away mid-reply is dropped from the batch at the next step: a stream's departure is
seen by Starlette when it writes, a whole reply's by a watcher that waits for the connection to close.

With the reply cache on, a greedy request identical to one the engine is running (same prompt ids, max_tokens and
ignore_eos) is coalesced onto it: it hears the same events, from the first, and the engine runs the request once
(``/health``'s ``reply_cache.coalesced`` counts them). The engine's request is cancelled only when its last
listener has gone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import math
import os
import threading
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager

from lmlab.measure.timing import Stopwatch
from lmlab.serving.engine import LRU, POLICIES, Engine, Event, QueueFull, Ticket
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
        self.flights: dict[tuple, _Flight] = {}  # greedy requests the engine runs now, by reply-cache key
        self.coalesced = 0  # requests that listened to an identical one in flight instead of running again
        self._relay: _Relay | None = None  # made in the event loop, at the first request

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
        shared = parsed.greedy and self.replies.max_entries > 0  # a greedy reply is one reply: share it
        cached = self.replies.get(key) if shared else None
        if cached is not None:
            source = _replay(_cached_events(*cached, arrived))
        elif shared and key in self.flights:
            self.coalesced += 1
            source = self.flights[key].listen(coalesced=True)
        else:
            try:
                source = self._submit(parsed, key if shared else None).listen()
            except RequestError as error:
                return error.response()
        if parsed.stream:
            return StreamingResponse(_sse(source, reply_id, self.served.id, self.created, parsed.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _unless_gone(request, _whole(source, reply_id, self.served.id, self.created))

    def _submit(self, parsed, key: tuple | None) -> _Flight:
        """Queue the request in the engine; return its flight (listed under ``key`` unless None while it runs).
        RequestError 429 when the queue is full, 400 when the engine refuses the prompt."""
        if self._relay is None:
            self._relay = _Relay(asyncio.get_running_loop())
        relay, flight = self._relay, _Flight(self._landed, key)
        try:
            flight.ticket = self.engine.submit(parsed.ids, parsed.max_tokens, sampling=parsed.sampling,
                                               prefix_len=parsed.prefix_len, stop_at_eos=not parsed.ignore_eos,
                                               callback=lambda event: relay.post(flight, event))
        except QueueFull as full:
            raise RequestError(f"the server is busy: {full}; retry after 1 s", None, 429, "requests",
                               "rate_limit_exceeded", {"Retry-After": "1"}) from None
        except ValueError as error:
            raise RequestError(str(error), "messages") from None
        if key is not None:
            self.flights[key] = flight
        return flight

    def _landed(self, flight: _Flight, done: Event | None) -> None:
        """A flight ended (``done``) or lost its last listener (None): unlist it, keep a finished greedy reply."""
        if flight.key is None:
            return
        if self.flights.get(flight.key) is flight:
            del self.flights[flight.key]
        if done is not None and done.finish_reason in ("stop", "length"):
            tokens = tuple((e.token, e.text) for e in flight.events if e.kind == "token")
            self.replies.put(flight.key, (tokens, done))

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
                             "reply_cache": {**_cache_state(self.replies), "coalesced": self.coalesced},
                             "prefix_cache": _cache_state(engine.prefixes), "kv_cache": engine.cache_state(),
                             "pid": os.getpid(),
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
        self.coalesced = 0
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


class _Relay:
    """Carry the engine's events to the event loop, waking the loop once for all the events posted since its last
    wake-up (one decode step of B rows posts B events; each ``call_soon_threadsafe`` is a write to the loop's
    self-pipe and a hand-over of the GIL).

    Where the time goes, measured (2026-12-07, SmolLM2 float32, one torch thread, Intel Xeon with 2 vCPUs shared
    with other jobs; 16 prompts x 32 streamed tokens sent at once, max batch 8; CPU seconds per thread from
    /proc, median of 3 interleaved rounds): the engine in-process 19.3 ms CPU per token; the server's engine and
    torch threads 20.2 ms, its event loop (HTTP, SSE, this relay) 0.25 ms, and the load generator in its own
    process 0.27 ms. So the HTTP side costs about 1% of a token: the engine needs no process of its own. With this
    relay the event loop took 0.23 ms per token (within the noise); counted in the server, it woke once per 2.1
    events (gpt-small, 32 streamed clients) and per 2.5 (SmolLM2, 16), not once per step of 8: the self-pipe write
    lets go of the GIL and the loop drains at once. Wall-clock tokens/s swung from 24 to 41 between identical
    rounds on the shared vCPUs (in-process 25.7, old app 24.7, this app 29.3 tokens/s, medians), so a gap of a
    third in one run is within that swing; and an in-process engine at max batch 16 needs 10.9 ms CPU per token
    against 18.7 at max batch 8, so compare the two paths at the same max batch.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._pending: deque[tuple[_Flight, Event]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, flight: _Flight, event: Event) -> None:
        """In the engine's thread: queue the event; wake the loop unless a wake-up is already on its way."""
        with self._lock:
            self._pending.append((flight, event))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending, self._scheduled = self._pending, deque(), False
        for flight, event in pending:
            flight.deliver(event)


class _Flight:
    """One engine request and its listeners: the client that sent it and identical requests coalesced onto it.

    Its events so far are kept, so a listener who joins late hears them all. When the done event arrives, or
    the last listener leaves before it (the engine's request is then cancelled), ``landed(flight, done or None)``
    is called once, in the event loop.
    """

    def __init__(self, landed, key: tuple | None):
        self.landed, self.key = landed, key
        self.ticket: Ticket | None = None
        self.events: list[Event] = []
        self.listeners: list[asyncio.Queue] = []
        self.ended = False

    def deliver(self, event: Event) -> None:
        self.events.append(event)
        for inbox in self.listeners:
            inbox.put_nowait(event)
        if event.kind == "done" and not self.ended:
            self.ended = True
            self.landed(self, event)

    def listen(self, coalesced: bool = False):
        """Listen from now on (even before the first read); return the async iterator of the request's events,
        from its first, until its done event (marked ``coalesced`` for a coalesced listener)."""
        inbox: asyncio.Queue[Event] = asyncio.Queue()
        for event in self.events:
            inbox.put_nowait(event)
        self.listeners.append(inbox)
        return self._events(inbox, coalesced)

    async def _events(self, inbox: asyncio.Queue[Event], coalesced: bool):
        try:
            while True:
                event = await inbox.get()
                if event.kind == "done":
                    yield dataclasses.replace(event, timing={**event.timing, "coalesced": True}) if coalesced \
                        else event
                    return
                yield event
        finally:
            self.listeners.remove(inbox)
            if not self.listeners and not self.ended:  # nobody listens any more: stop the engine's request
                self.ended = True
                assert self.ticket is not None  # set as soon as the engine took the request
                self.ticket.cancel()
                self.landed(self, None)


async def _unless_gone(request, reply):
    """Await ``reply`` (a coroutine), cancelling it the moment the client disconnects (then a 499 nobody reads).

    The body has been read, so the connection's next ASGI message is ``http.disconnect``: a watcher waits for it
    beside the reply, and the reply's listener leaves at once rather than when the next event would be sent.
    """
    from starlette.responses import JSONResponse  # starlette: only a running server needs it

    answer, gone = asyncio.ensure_future(reply), asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (answer, gone):
            if not task.done():
                task.cancel()
        await asyncio.gather(answer, gone, return_exceptions=True)
    if answer.cancelled():
        return JSONResponse(error_body("cancelled: the client went away", "server_error"), status_code=499)
    return answer.result()


async def _disconnected(receive) -> None:
    """Return when the ASGI connection reports ``http.disconnect``."""
    while (await receive())["type"] != "http.disconnect":
        pass


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
