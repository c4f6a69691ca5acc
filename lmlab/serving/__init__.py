"""Serving: the continuous-batching engine, the OpenAI-compatible HTTP server, the load generator.

Modules, each importing only those above it in the course:
- ``engine``: Continuous batching: many replies share one model, each joining and leaving the batch at any decode
  step.
- ``kvcache``: The serving engine's KV cache: one preallocated buffer of slots, and a prefix cache of hashed token
  blocks.
- ``slots``: The second-generation scheduler: KV slots, admission by cache memory, chunked prefill, automatic prefix
  caching.
- ``dense``: The first-generation scheduler: one dense, left-padded KV cache for the whole batch.
- ``interference``: Prefill-decode interference: what a long prompt's prefill does to the streams already decoding,
  and how chunked prefill bounds it.
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
- ``grounding``: The shop assistant on its own task: does a reply agree with the FAQ it was given, and which prompt
  helps it? An evaluation set, BM25 retrieval of FAQ lines, three prompts compared.
"""

from lmlab.serving.engine import LRU, POLICIES, Detokenizer, Engine, Event, QueueFull, Ticket
from lmlab.serving.kvcache import PrefixBlocks, SlotCache, block_hashes
from lmlab.serving.slots import SlotEngine
from lmlab.serving.dense import DenseEngine
from lmlab.serving.interference import Interference, interference_plot, prefill_interference
from lmlab.serving.loadgen import (
    DEADLINE_GRACE_S, METRICS, Budget, LoadReport, RequestRecord, chat_bodies, default_bodies, load_plot,
    poisson_arrivals, run_load, run_load_sync, sustainable_rate, table,
)
from lmlab.serving.reference import transformers_continuous_batching
from lmlab.serving.served import BACKEND_OF, FORMATS, SERVED_MODELS, ServedModel, chat_template_ids, load_served
from lmlab.serving.protocol import ROLES, ChatRequest, RequestError, error_body, parse_request
from lmlab.serving.app import ChatApp, build_app
from lmlab.serving.launcher import API_KEY_ENV, RunningServer, free_port, running_server, serve, start_server
from lmlab.serving.clients import reply_stages
from lmlab.serving.grounding import (
    CHAPTER_INSTRUCTIONS, GROUNDED_INSTRUCTIONS, PROMPTS, FaqItem, PromptRun, answer_all, check_answer,
    compare_prompts, faq_accuracy, faq_messages, grounded_messages, load_faq, load_faq_eval, prompt_table,
    retrieval_messages, retrieve,
)

__all__ = [
    "POLICIES", "QueueFull", "Event", "Ticket", "LRU", "Engine", "Detokenizer", "SlotCache", "PrefixBlocks",
    "block_hashes", "SlotEngine", "DenseEngine", "Interference", "prefill_interference", "interference_plot",
    "METRICS", "DEADLINE_GRACE_S", "poisson_arrivals", "RequestRecord", "LoadReport", "table", "default_bodies",
    "chat_bodies", "run_load", "run_load_sync", "load_plot", "Budget",
    "sustainable_rate", "transformers_continuous_batching", "FORMATS", "BACKEND_OF", "SERVED_MODELS", "API_KEY_ENV",
    "ROLES", "ServedModel", "load_served", "chat_template_ids", "RequestError", "ChatRequest", "error_body",
    "parse_request", "build_app", "ChatApp", "serve", "free_port", "RunningServer", "start_server",
    "running_server", "reply_stages", "CHAPTER_INSTRUCTIONS", "GROUNDED_INSTRUCTIONS", "PROMPTS", "FaqItem",
    "PromptRun", "load_faq", "load_faq_eval", "check_answer", "faq_accuracy", "retrieve", "faq_messages",
    "grounded_messages", "retrieval_messages", "answer_all", "compare_prompts", "prompt_table",
]
