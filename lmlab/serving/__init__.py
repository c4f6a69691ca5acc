"""Serving: the continuous-batching engine, the OpenAI-compatible HTTP server, the load generator.

Modules, each importing only those above it in the course:
- ``engine``: Continuous batching: many replies share one model, each joining and leaving the batch at any decode
  step.
- ``loadgen``: An open-loop load generator for an OpenAI-compatible chat server: Poisson arrivals, streamed replies.
- ``reference``: transformers' own continuous batching, timed on CPU in this process: the reference that
  benchmarks/bench_serve.py falls back on when `transformers serve` cannot run.
- ``served``: The models the chat server serves: a registry name and a format become a decode loop and a chat
  prompt.
- ``protocol``: OpenAI's chat-completions protocol at the server's edge: checking a request, and the shapes of
  errors and usage.
- ``app``: The chat server's HTTP app: OpenAI's chat completions on lmlab's batching engine, in Starlette.
- ``launcher``: Starting the chat server: ``serve`` in this process (``python -m lmlab serve``), or a subprocess
  on a free port.
- ``clients``: What a client measures of the chat server: where one streamed reply's milliseconds go, stage by
  stage.
"""

from lmlab.serving.engine import LRU, POLICIES, Engine, Event, QueueFull, Ticket
from lmlab.serving.loadgen import (
    DEADLINE_GRACE_S, METRICS, Budget, LoadReport, RequestRecord, default_bodies, load_plot, poisson_arrivals,
    run_load, run_load_sync, sustainable_rate, table,
)
from lmlab.serving.reference import transformers_continuous_batching
from lmlab.serving.served import BACKEND_OF, FORMATS, SERVED_MODELS, ServedModel, chat_template_ids, load_served
from lmlab.serving.protocol import ROLES, ChatRequest, RequestError, error_body, parse_request
from lmlab.serving.app import ChatApp, build_app
from lmlab.serving.launcher import API_KEY_ENV, RunningServer, free_port, running_server, serve, start_server
from lmlab.serving.clients import reply_stages

__all__ = [
    "POLICIES", "QueueFull", "Event", "Ticket", "LRU", "Engine", "METRICS", "DEADLINE_GRACE_S", "poisson_arrivals",
    "RequestRecord", "LoadReport", "table", "default_bodies", "run_load", "run_load_sync", "load_plot", "Budget",
    "sustainable_rate", "transformers_continuous_batching", "FORMATS", "BACKEND_OF", "SERVED_MODELS", "API_KEY_ENV",
    "ROLES", "ServedModel", "load_served", "chat_template_ids", "RequestError", "ChatRequest", "error_body",
    "parse_request", "build_app", "ChatApp", "serve", "free_port", "RunningServer", "start_server",
    "running_server", "reply_stages",
]
