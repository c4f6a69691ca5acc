"""The chat server, tested as its users meet it: a real server on 127.0.0.1, the openai client, plain HTTP."""

import json
import threading
import time

import httpx
import pytest
from openai import OpenAI

from lmlab.inference.decode import as_causal_lm, generate
from lmlab.measure.timing import Stopwatch
from lmlab.models.checkpoints import load_checkpoint
from lmlab.serving.launcher import running_server

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def gpt():
    return as_causal_lm(load_checkpoint("data/gpt-small"), name="gpt-small")


@pytest.fixture(scope="module")
def server():
    with running_server("gpt-small", max_batch=4, reply_cache=2, api_key=KEY) as running:
        yield running


def expected_reply(lm, text: str, max_tokens: int) -> tuple[str, int]:
    """The reply lmlab's generation loop gives the prompt alone: its text and its token count."""
    tokens = generate(lm, text, max_tokens).tokens[0]
    return lm.decode([t for t in tokens if t != lm.eos_id]), len(tokens)


def chat(url: str, body, headers=AUTH, **options) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}/v1/chat/completions", content=content,
                      headers={"Content-Type": "application/json", **headers}, timeout=60, **options)


def body(text="and the lord said unto", **fields):
    return {"model": "gpt-small", "messages": [{"role": "user", "content": text}], "temperature": 0, **fields}


def test_openai_client_gets_the_greedy_reply_of_the_loop_alone(server, gpt):
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY)
    assert [m.id for m in client.models.list().data] == ["gpt-small"]
    text, count = expected_reply(gpt, "and god said let there be", 20)
    reply = client.chat.completions.create(model="gpt-small", max_tokens=20, temperature=0,
                                           messages=[{"role": "user", "content": "and god said let there be"}])
    assert reply.choices[0].message.content == text
    assert reply.usage.completion_tokens == count and reply.usage.prompt_tokens == len(gpt.encode("and god said "
                                                                                                  "let there be"))
    assert reply.model_extra["timing"]["ttft_ms"] > 0
    pieces, last = [], None
    for chunk in client.chat.completions.create(model="gpt-small", max_tokens=20, temperature=0, stream=True,
                                                stream_options={"include_usage": True},
                                                messages=[{"role": "user", "content": "and god said let there be"}]):
        pieces += [c.delta.content or "" for c in chunk.choices]
        last = chunk
    assert "".join(pieces) == text
    assert last.usage.completion_tokens == count and "decode_ms_per_token" in last.model_extra["timing"]


def test_plain_http_reply_and_timing_headers(server, gpt):
    response = chat(server.base_url, body(max_tokens=12))
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion" and data["choices"][0]["finish_reason"] in ("stop", "length")
    assert data["choices"][0]["message"]["content"] == expected_reply(gpt, "and the lord said unto", 12)[0]
    assert float(response.headers["x-lmlab-ttft-ms"]) > 0


@pytest.mark.parametrize("payload, status, param", [
    (b"{not json", 400, None),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ({"model": "gpt-small"}, 400, "messages"),
    ({"model": "gpt-small", "messages": []}, 400, "messages"),
    ({"model": "gpt-small", "messages": [{"role": "user", "content": "  "}]}, 400, "messages[0].content"),
    ({"model": "gpt-small", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    (body(max_tokens=0), 400, "max_tokens"),
    (body(max_tokens=10_000), 400, "max_tokens"),
    (body(max_tokens="ten"), 400, "max_tokens"),
    (body(temperature=5), 400, "temperature"),
    (body(n=3), 400, "n"),
    (body(text="and " * 200), 400, "messages"),
    (b'{"model": "gpt-small", "messages": [{"role": "user", "content": "' + b"a" * 2_000_000 + b'"}]}', 413, None),
    (b"[1, 2]", 400, None),
])
def test_bad_requests_get_an_openai_error_naming_the_field(server, payload, status, param):
    response = chat(server.base_url, payload)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_requests_without_the_key_get_401(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = chat(server.base_url, body(max_tokens=2), headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 401
    assert httpx.get(f"{server.base_url}/health").status_code == 200  # the probe needs no key


def test_reply_cache_returns_the_same_reply_and_keeps_its_bound(server):
    server.configure(reply_cache=2)  # empty, two entries
    first = chat(server.base_url, body("blessed are the", max_tokens=10)).json()
    again = chat(server.base_url, body("blessed are the", max_tokens=10)).json()
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    assert again["usage"] == first["usage"] and again["timing"]["reply_cache_hit"]
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY)  # a streamed reply is cached too
    for _ in range(2):
        stream = client.chat.completions.create(model="gpt-small", max_tokens=6, temperature=0, stream=True,
                                                messages=[{"role": "user", "content": "and moses said"}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    for text in ("in the beginning", "the lord is my", "for god so"):
        chat(server.base_url, body(text, max_tokens=4))
    sampled = chat(server.base_url, body("blessed are the", max_tokens=10, temperature=0.8, seed=1)).json()
    assert "reply_cache_hit" not in sampled["timing"]  # sampled replies are never served from the cache
    cache = server.health()["reply_cache"]
    assert cache["size"] == 2 and cache["hits"] == 2
    server.configure(reply_cache=0)


def test_settings_are_checked_and_refused_while_busy(server):
    with pytest.raises(ValueError, match="policy='fifo'"):
        server.configure(policy="fifo")
    with pytest.raises(ValueError, match="max_batch=0"):
        server.configure(max_batch=0)
    assert server.configure(policy="static", max_batch=2)["policy"] == "static"
    assert server.configure(policy="continuous", max_batch=4)["max_batch"] == 4


def test_full_queue_gets_429_and_sigterm_exits_cleanly():
    with running_server("gpt-small", max_batch=1, max_queue=1, env={"LMLAB_API_KEY": KEY}) as running:
        assert chat(running.base_url, body(max_tokens=2), headers={}).status_code == 401  # the key from the env
        statuses = []

        def ask():
            statuses.append(chat(running.base_url, body(max_tokens=100, ignore_eos=True)))

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        codes = sorted(r.status_code for r in statuses)
        assert 200 in codes and 429 in codes and set(codes) <= {200, 429}
        refused = next(r for r in statuses if r.status_code == 429)
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["code"] == "rate_limit_exceeded"
        in_flight = threading.Thread(target=ask)
        in_flight.start()
        time.sleep(0.2)
        assert running.stop() == 0
        in_flight.join(30)
        log = running.log()
    assert "Traceback" not in log and "stopped by SIGTERM" in log
    assert statuses[-1].status_code == 200  # the reply in flight at SIGTERM was finished


def test_speculating_server_gives_the_greedy_reply_in_fewer_passes(gpt):
    """One request alone in a ``--speculative prompt-lookup`` server: the loop's greedy tokens, several a pass."""
    verse = "and god said let there be light and there was light"
    texts = [f"{verse} {verse} and god said", "and the lord said unto moses"]
    with running_server("gpt-small", speculative="prompt-lookup", draft_k=4) as running:
        client = OpenAI(base_url=f"{running.base_url}/v1", api_key="none")
        for text in texts:
            expected, count = expected_reply(gpt, text, 30)
            reply = client.chat.completions.create(model="gpt-small", max_tokens=30, temperature=0,
                                                   messages=[{"role": "user", "content": text}])
            assert reply.choices[0].message.content == expected and reply.usage.completion_tokens == count
            pieces = client.chat.completions.create(model="gpt-small", max_tokens=30, temperature=0, stream=True,
                                                    messages=[{"role": "user", "content": text}])
            assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == expected
        health = running.health()
    speculation = health["speculative"]
    assert speculation["method"] == "prompt-lookup" and 0 < speculation["accepted"] <= speculation["drafted"]
    assert health["steps"] < sum(health["finished"].values()) * 29  # fewer passes than one per token


@pytest.fixture(scope="module")
def smol_server():
    with running_server("smollm2", prefix_cache=2) as running:
        yield running


@pytest.mark.slow
def test_smollm2_chat_template_prefix_cache_and_stream(smol_server):
    from lmlab.models.pretrained import load_smollm2

    model, tokenizer = load_smollm2()
    smol = as_causal_lm(model, tokenizer, name="smollm2")
    system = {"role": "system", "content": "You answer for a shoe shop. Returns are free within 30 days."}
    questions = ["Can I return shoes?", "How long is shipping?"]
    expected = [smol.decode([t for t in generate(smol, tokenizer.apply_chat_template(
        [system, {"role": "user", "content": q}], add_generation_prompt=True)["input_ids"], 16).tokens[0]
        if t != smol.eos_id]) for q in questions]
    client = OpenAI(base_url=f"{smol_server.base_url}/v1", api_key="none")
    for question, text in zip(questions, expected):
        stream = client.chat.completions.create(model="SmolLM2-135M-Instruct", max_tokens=16, temperature=0,
                                                stream=True, messages=[system, {"role": "user", "content": question}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text
    assert smol_server.health()["prefix_cache"]["hits"] == 1


@pytest.mark.slow
def test_a_client_that_disconnects_frees_its_slot(smol_server):
    """SmolLM2 takes tens of ms per token: 200 tokens outlast the disconnect by far."""
    request = {"model": "smollm2", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 200,
               "ignore_eos": True, "stream": True}
    before = smol_server.health()["finished"].get("cancelled", 0)
    with httpx.stream("POST", f"{smol_server.base_url}/v1/chat/completions", json=request, timeout=30) as response:
        lines = response.iter_lines()  # held: a for loop's dropped iterator would close the connection at `break`
        for line in lines:
            if '"content": "' in line and '"role"' not in line:
                break  # the first token: still connected here
        assert smol_server.health()["active"] == 1
        lines.close()  # now leave mid-stream
    deadline = time.monotonic() + 10
    while smol_server.health()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    health = smol_server.health()
    assert health["active"] == 0 and health["finished"]["cancelled"] == before + 1


def test_fault_storm_leaves_the_server_up_correct_and_at_its_memory_baseline(server, gpt):
    """Hundreds of requests at a high rate, some clients leaving mid-stream, some bodies malformed."""
    import psutil

    from lmlab.serving.loadgen import run_load_sync

    server.configure(reply_cache=0)
    texts = ["in the beginning god", "and the lord said unto", "blessed are the", "the lord is my", "for god so"]
    expected = {t: expected_reply(gpt, t, 10)[0] for t in texts}
    bodies = [body(texts[i % len(texts)], max_tokens=10) for i in range(300)]
    leave = {i: 1 + i % 3 for i in range(0, 300, 7)}  # every 7th client disconnects after 1-3 tokens
    bad = [b"{oops", b'{"model": "gpt-small", "messages": []}', json.dumps(body(max_tokens=0)).encode(),
           json.dumps(body(temperature=-1)).encode()]
    bad_statuses = []

    def send_malformed():
        for i in range(60):
            bad_statuses.append(chat(server.base_url, bad[i % len(bad)]).status_code)
            time.sleep(0.03)

    process = psutil.Process(server.pid)
    run_load_sync(server.base_url, bodies[:100], 200.0, seed=1, timeout_s=30, api_key=KEY)  # warm the allocator
    baseline_mb = process.memory_info().rss / 1e6
    sender = threading.Thread(target=send_malformed)
    sender.start()
    report = run_load_sync(server.base_url, bodies, 100.0, seed=2, timeout_s=30, api_key=KEY,
                           disconnect_after_tokens=leave)
    sender.join(30)
    deadline = time.monotonic() + 10
    while (server.health()["active"] or server.health()["waiting"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    after_mb = process.memory_info().rss / 1e6
    health = server.health()
    stayed = [r for r in report.records if not r.disconnected]
    accepted = [r for r in stayed if r.status == 200]
    print(f"\nfault storm: {len(accepted)} of {len(stayed)} staying clients accepted "
          f"({sum(r.status == 429 for r in stayed)} refused with 429), {len(leave)} left mid-stream, "
          f"{len(bad_statuses)} malformed; throughput {report.throughput_rps:.0f} requests/s; "
          f"server memory {baseline_mb:.0f} MB before, {after_mb:.0f} MB after")
    assert len(bad_statuses) == 60 and all(400 <= s < 500 for s in bad_statuses)
    assert {r.status for r in stayed} <= {200, 429}, {r.error for r in stayed if r.status not in (200, 429)}
    assert len(accepted) >= len(stayed) // 2
    for record in accepted:
        assert record.ok, record.error
        assert record.text == expected[texts[record.index % len(texts)]]
    assert health["status"] == "ok" and health["active"] == 0 and health["waiting"] == 0
    assert after_mb < baseline_mb + 25, f"memory grew from {baseline_mb:.0f} MB to {after_mb:.0f} MB"


def finished_total(server) -> int:
    return sum(server.health()["finished"].values())


def test_identical_greedy_requests_in_flight_are_answered_by_one_engine_request(server):
    """Six identical greedy requests at once, streamed and whole: one reply, the engine runs it once."""
    server.configure(reply_cache=4)  # empty; coalescing is on with the reply cache
    request = body("the lord is my shepherd", max_tokens=100, ignore_eos=True)
    before = finished_total(server)
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY)
    replies: dict[int, str] = {}

    def ask(i: int) -> None:
        if i % 2:
            stream = client.chat.completions.create(model="gpt-small", messages=request["messages"], max_tokens=100,
                                                    temperature=0, stream=True, extra_body={"ignore_eos": True})
            replies[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        else:
            replies[i] = chat(server.base_url, request).json()["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    cache = server.health()["reply_cache"]
    assert len(replies) == 6 and len(set(replies.values())) == 1 and replies[0]
    assert finished_total(server) == before + 1  # the engine ran it once
    assert cache["coalesced"] >= 1 and cache["coalesced"] + cache["hits"] == 5
    server.configure(reply_cache=0)


def test_a_coalesced_request_gets_its_whole_reply_when_the_first_client_leaves(server):
    """The first client leaves while its request waits behind others; the one coalesced onto it still listens."""
    server.configure(reply_cache=4, max_batch=1)  # one row at a time: the request waits behind two blockers
    request = body("blessed are the meek", max_tokens=100, ignore_eos=True)
    alone = chat(server.base_url, request).json()  # the reply, run alone (the cache is cleared below)
    server.configure(reply_cache=4, max_batch=1)
    blockers = [threading.Thread(target=chat, args=(server.base_url, body(t, max_tokens=120, ignore_eos=True)))
                for t in ("in the beginning", "for god so")]
    for blocker in blockers:
        blocker.start()
    deadline = time.monotonic() + 10
    while server.health()["waiting"] < 1 and time.monotonic() < deadline:  # one blocker runs, one waits
        time.sleep(0.005)
    follower: list[httpx.Response] = []
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json={**request, "stream": True},
                      headers=AUTH, timeout=60):
        thread = threading.Thread(target=lambda: follower.append(chat(server.base_url, request)))
        thread.start()
        while server.health()["reply_cache"]["coalesced"] < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert server.health()["finished"].get("length", 0) < 2  # both blockers not done: the request still waits
    thread.join(60)
    for blocker in blockers:
        blocker.join(60)
    health = server.health()
    assert follower[0].status_code == 200
    assert follower[0].json()["choices"][0]["message"] == alone["choices"][0]["message"]
    assert follower[0].json()["timing"]["coalesced"] and "cancelled" not in health["finished"]
    server.configure(reply_cache=0, max_batch=4)


def test_a_whole_reply_client_that_hangs_up_frees_its_slot_before_the_reply_would_end(server):
    """A non-streamed client leaves a third of the way into its reply; its row leaves the batch at once."""
    import socket

    server.configure(reply_cache=0)
    request = json.dumps(body("and god said let there be", max_tokens=120, ignore_eos=True)).encode()
    whole = Stopwatch(sync=False).start()
    assert chat(server.base_url, request).status_code == 200
    full_ms = whole.elapsed_ms()  # the reply's whole duration, measured here
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(request)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sent = Stopwatch(sync=False).start()
        sock.sendall(head + request)
        time.sleep(full_ms / 3e3)
    while server.health()["active"] and sent.elapsed_ms() < 10 * full_ms:
        time.sleep(0.002)
    freed_ms = sent.elapsed_ms()
    health = server.health()
    assert health["active"] == 0 and health["finished"].get("cancelled", 0) == 1
    assert freed_ms < full_ms, f"freed after {freed_ms:.0f} ms; the whole reply takes {full_ms:.0f} ms"
