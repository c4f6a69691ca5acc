"""Serving: the continuous-batching engine, the OpenAI-compatible HTTP server, the load generator.

Modules, each importing only those above it in the course:
- ``engine``: Continuous batching: many replies share one model, each joining and leaving the batch at any decode
  step.
- ``loadgen``: An open-loop load generator for an OpenAI-compatible chat server: Poisson arrivals, streamed replies.
- ``reference``: transformers' own continuous batching, timed on CPU: the reference implementation that
  benchmarks/bench_serve.py compares lmlab's server against.
- ``server``: An OpenAI-compatible chat server on lmlab's batching engine: ``python -m lmlab serve``.
"""

from lmlab.serving.engine import LRU, POLICIES, Engine, Event, QueueFull, Ticket
from lmlab.serving.loadgen import (
    DEADLINE_GRACE_S,
    METRICS,
    Budget,
    LoadReport,
    RequestRecord,
    default_bodies,
    load_plot,
    poisson_arrivals,
    run_load,
    run_load_sync,
    sustainable_rate,
    table,
)
from lmlab.serving.reference import transformers_continuous_batching
from lmlab.serving.server import (
    API_KEY_ENV,
    BACKEND_OF,
    FORMATS,
    ROLES,
    SERVED_MODELS,
    ChatRequest,
    RequestError,
    RunningServer,
    ServedModel,
    build_app,
    free_port,
    load_served,
    parse_request,
    reply_stages,
    running_server,
    serve,
    start_server,
)

__all__ = [
    "POLICIES",
    "QueueFull",
    "Event",
    "Ticket",
    "LRU",
    "Engine",
    "METRICS",
    "DEADLINE_GRACE_S",
    "poisson_arrivals",
    "RequestRecord",
    "LoadReport",
    "table",
    "default_bodies",
    "run_load",
    "run_load_sync",
    "load_plot",
    "Budget",
    "sustainable_rate",
    "transformers_continuous_batching",
    "FORMATS",
    "BACKEND_OF",
    "SERVED_MODELS",
    "API_KEY_ENV",
    "ROLES",
    "ServedModel",
    "load_served",
    "RequestError",
    "ChatRequest",
    "parse_request",
    "build_app",
    "serve",
    "free_port",
    "RunningServer",
    "start_server",
    "running_server",
    "reply_stages",
]
