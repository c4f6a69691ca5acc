"""OpenAI's chat-completions protocol at the server's edge: checking a request, and the shapes of errors and usage.

Introduced in notebooks/07_realtime_pipeline.ipynb. Errors take OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``: 400 for a malformed body or an out-of-range field (``param``
names it), 401 without the API key, 413 for a body over the limit, 429 with ``Retry-After`` when the queue is full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmlab.inference.sampling import SamplingParams
from lmlab.serving.engine import Event
from lmlab.serving.served import ServedModel

ROLES = ("system", "user", "assistant")


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """Return OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class RequestError(ValueError):
    """A request the server refuses: its HTTP status, the field at fault, OpenAI's error type and code."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.param, self.status, self.kind, self.code, self.headers = param, status, kind, code, headers or {}

    def response(self):
        from starlette.responses import JSONResponse  # starlette: only a running server needs it

        return JSONResponse(error_body(str(self), self.kind, self.param, self.code), status_code=self.status,
                            headers=self.headers)


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

    @property
    def sampling(self) -> SamplingParams:
        """The engine's settings: greedy at temperature 0 (OpenAI's convention), else a seeded draw."""
        if self.greedy:
            return SamplingParams.greedy()
        return SamplingParams(sample=True, temperature=self.temperature, top_p=self.top_p, seed=self.seed)


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
    clean = _messages(body.get("messages"))
    if body.get("n", 1) != 1:
        raise RequestError(f"n={body.get('n')!r} is not supported; this server returns one choice (n=1)", "n")
    for unsupported in ("tools", "functions", "stop"):
        if body.get(unsupported) not in (None, [], ""):
            raise RequestError(f"{unsupported} is not supported by this server", unsupported)
    ids, prefix_len = served.to_ids(clean)
    max_tokens = _max_tokens(body, len(ids), served, default_max_tokens)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0, low_open=False)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    seed, stream, include_usage, ignore_eos = _switches(body)
    return ChatRequest(ids, prefix_len, max_tokens, temperature, None if top_p >= 1 else top_p, seed, stream,
                       include_usage, ignore_eos)


def _messages(messages: object) -> list[dict]:
    """The messages as {role, content} dicts with text content (OpenAI's text parts joined); RequestError else."""
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
    return clean


def _max_tokens(body: dict, prompt_tokens: int, served: ServedModel, default: int) -> int:
    """max_completion_tokens (or max_tokens) in [1, window - prompt tokens]; the default, capped, when absent."""
    window = served.lm.window
    room = window - prompt_tokens
    if room < 1:
        raise RequestError(f"the prompt has {prompt_tokens} tokens and {served.id}'s window is {window}; shorten "
                           f"the messages", "messages", code="context_length_exceeded")
    field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(field)
    if max_tokens is None:
        return min(default, room)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= room:
        raise RequestError(f"{field}={max_tokens!r} is out of range; with a {prompt_tokens}-token prompt use an "
                           f"integer in [1, {room}]", field)
    return max_tokens


def _switches(body: dict) -> tuple[int, bool, bool, bool]:
    """(seed, stream, stream_options.include_usage, ignore_eos), each checked for its type."""
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
    return seed, stream, bool(options.get("include_usage", False)), ignore_eos


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


def usage(done: Event) -> dict:
    """OpenAI's usage object of a finished reply: prompt, completion and total tokens."""
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def timing(done: Event) -> dict:
    """lmlab's timing object of a finished reply (ms), a NaN (not measured) as null."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in done.timing.items()}
