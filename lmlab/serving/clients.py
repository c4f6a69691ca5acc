"""What a client measures of the chat server: where one streamed reply's milliseconds go, stage by stage.

Introduced in notebooks/07_realtime_pipeline.ipynb.
"""

from __future__ import annotations

from typing import Any

from lmlab.measure.runtime import check_int
from lmlab.measure.timing import Stopwatch, time_ms
from lmlab.serving.launcher import RunningServer
from lmlab.serving.served import chat_template_ids


def reply_stages(server: RunningServer, tokenizer, messages: list[dict], max_tokens: int = 32,
                 model: str | None = None, repeat: int = 20) -> dict[str, Any]:
    """Measure where one streamed reply's milliseconds go, stage by stage (ms), with the openai client.

    - tokenize: the chat template and tokenizer on the messages (median of ``repeat``, in this process);
    - queue, prefill, decode: the server's own timing of the request (decode = ms per token × (tokens − 1));
    - detokenize: decoding the reply one token at a time, as a streaming server does (median of ``repeat``);
    - http: what the client waited beyond the server's total (request parsing, SSE framing, loopback);
    - client_ttft and client_total: the first token and the end as the client saw them.
    The server's decode includes its own detokenizing, so the stages overlap by that much. Also: tokens and
    prompt_tokens (counts) and the reply (text). Raises ValueError for max_tokens < 1, RuntimeError when the
    stream ends without its usage chunk.
    """
    from openai import OpenAI  # openai: only a client measurement needs it

    check_int("max_tokens", max_tokens)
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key or "none")
    model = model or client.models.list().data[0].id
    tokenize = time_ms(chat_template_ids, tokenizer, messages, generation=True, warmup=1, repeat=repeat)
    first_ms, pieces, last = None, [], None
    sent: list[Any] = list(messages)  # OpenAI's message types are TypedDicts; these are plain dicts of the same shape
    with Stopwatch(sync=False) as client_clock:  # the client's wall clock: nothing of ours runs on a GPU here
        for chunk in client.chat.completions.create(model=model, messages=sent, max_tokens=max_tokens, temperature=0,
                                                    stream=True, stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                first_ms = first_ms or client_clock.elapsed_ms()
                pieces.append(chunk.choices[0].delta.content)
            last = chunk
    if last is None or last.usage is None or not last.model_extra:
        raise RuntimeError("the server's stream ended without its usage chunk (stream_options.include_usage)")
    timing, tokens = last.model_extra["timing"], last.usage.completion_tokens
    ids = tokenizer("".join(pieces), add_special_tokens=False)["input_ids"]
    detokenize = time_ms(lambda: [tokenizer.decode(ids[:k], skip_special_tokens=True) for k in range(1, len(ids) + 1)],
                         warmup=1, repeat=repeat)
    client_total = client_clock.ms
    return {"tokenize": tokenize.median_ms, "queue": timing["queue_ms"], "prefill": timing["prefill_ms"],
            "decode": (timing["decode_ms_per_token"] or 0.0) * (tokens - 1),
            "detokenize": detokenize.median_ms, "http": client_total - timing["total_ms"],
            "client_ttft": first_ms or client_total, "client_total": client_total, "tokens": tokens,
            "prompt_tokens": last.usage.prompt_tokens, "reply": "".join(pieces)}
