"""The fake model API (tests/fakes/fake_model.c), tested over real HTTP.

No broker needed: run with
    build/venv/bin/python -m pytest tests/e2e/test_fake_model.py -q
"""
import base64
import http.client
import json
import math
import os
import selectors
import socket
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fakes import FakeModel, fake_model_binary

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def shared():
    with FakeModel() as f:
        yield f


@pytest.fixture
def fm(shared):
    """The module's fake, with default settings and zeroed counters."""
    shared.configure(latency_ms=0, fail_500=0, fail_429=0, fail_reset=0,
                     fail_hang=0, fail_garbage=0, max_concurrency=0,
                     retry_after=1, record_items=True)
    shared.reset()
    return shared


def chat_body(text="Hello there, how are you?", **extra):
    body = {"model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": text}]}
    body.update(extra)
    return body


def ok_json(fm, path, body, headers=None):
    status, hdrs, data = fm.post(path, body, headers)
    assert status == 200, data
    assert hdrs["content-type"] == "application/json"
    return hdrs, json.loads(data)


def tokens(n_bytes):
    return math.ceil(n_bytes / 4)


# -- shapes -----------------------------------------------------------------

def test_chat_shape_and_usage(fm):
    before = time.time() * 1000
    body = chat_body("Hello there, how are you? é")
    hdrs, r = ok_json(fm, CHAT, body)
    after = time.time() * 1000
    assert r["id"].startswith("chatcmpl-") and len(r["id"]) > 20
    assert r["object"] == "chat.completion"
    assert isinstance(r["created"], int)
    assert r["model"] == "gpt-4o-mini"
    (c,) = r["choices"]
    assert c["index"] == 0 and c["finish_reason"] == "stop"
    assert c["message"]["role"] == "assistant"
    content = c["message"]["content"]
    assert content == "echo: Hello there, how are you? é"
    in_bytes = len("Be brief.".encode()) + len("Hello there, how are you? é".encode())
    u = r["usage"]
    assert u["prompt_tokens"] == tokens(in_bytes)
    assert u["completion_tokens"] == tokens(len(content.encode()))
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert hdrs["x-request-id"].startswith("req_")
    responded = float(hdrs["x-fake-responded-at"])
    assert before - 5 <= responded <= after + 5


def test_chat_echo_is_cut_and_content_parts(fm):
    long = "abcdefghij" * 20
    body = {"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": long}]},
        {"role": "assistant", "content": "ok"}]}
    _, r = ok_json(fm, CHAT, body)
    assert r["choices"][0]["message"]["content"] == "echo: " + long[:64]
    assert r["usage"]["prompt_tokens"] == tokens(len(long) + 2)


def test_chat_n_and_max_tokens(fm):
    _, r = ok_json(fm, CHAT, chat_body("x" * 40, n=3, max_tokens=3))
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    for c in r["choices"]:
        assert c["finish_reason"] == "length"
        assert len(c["message"]["content"]) <= 12
    assert r["usage"]["completion_tokens"] == 9


def test_completions_shape(fm):
    _, r = ok_json(fm, "/v1/completions",
                   {"model": "davinci-002", "prompt": ["abc", "defgh"], "n": 2})
    assert r["id"].startswith("cmpl-")
    assert r["object"] == "text_completion"
    assert r["model"] == "davinci-002"
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in r["choices"]] == ["echo: abc"] * 2 + ["echo: defgh"] * 2
    assert r["choices"][0]["finish_reason"] == "stop"
    u = r["usage"]
    assert u["prompt_tokens"] == tokens(3 + 5)
    assert u["completion_tokens"] == 2 * tokens(9) + 2 * tokens(11)
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_embeddings_shape(fm):
    _, r = ok_json(fm, "/v1/embeddings",
                   {"model": "text-embedding-3-small", "input": ["abc", "hello"],
                    "dimensions": 8})
    assert r["object"] == "list" and r["model"] == "text-embedding-3-small"
    assert [d["index"] for d in r["data"]] == [0, 1]
    for d in r["data"]:
        assert d["object"] == "embedding" and len(d["embedding"]) == 8
        assert abs(sum(x * x for x in d["embedding"]) - 1) < 1e-4
    assert r["data"][0]["embedding"] != r["data"][1]["embedding"]
    # Embeddings have no completion tokens, as in the real API.
    assert r["usage"] == {"prompt_tokens": tokens(3 + 5),
                          "total_tokens": tokens(3 + 5)}
    # The same input gives the same vector; base64 is little-endian float32.
    _, b = ok_json(fm, "/v1/embeddings", {"model": "e", "input": "abc",
                                          "dimensions": 8,
                                          "encoding_format": "base64"})
    vec = struct.unpack("<8f", base64.b64decode(b["data"][0]["embedding"]))
    assert all(abs(x - y) < 1e-6 for x, y in zip(vec, r["data"][0]["embedding"]))


def test_responses_shape(fm):
    body = {"model": "gpt-4.1", "instructions": "Be brief.",
            "input": [{"role": "user",
                       "content": [{"type": "input_text", "text": "hi there"}]}]}
    _, r = ok_json(fm, "/v1/responses", body)
    assert r["id"].startswith("resp_")
    assert r["object"] == "response" and r["status"] == "completed"
    assert r["model"] == "gpt-4.1" and isinstance(r["created_at"], int)
    (out,) = r["output"]
    assert out["type"] == "message" and out["role"] == "assistant"
    assert out["content"][0]["type"] == "output_text"
    assert out["content"][0]["text"] == "echo: hi there"
    u = r["usage"]
    assert u["input_tokens"] == tokens(len("Be brief.") + len("hi there"))
    assert u["output_tokens"] == tokens(len("echo: hi there"))
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
    _, r = ok_json(fm, "/v1/responses", {"model": "m", "input": "x" * 50,
                                         "max_output_tokens": 2})
    assert r["status"] == "incomplete"
    assert r["incomplete_details"] == {"reason": "max_output_tokens"}


def test_deterministic(fm):
    h1, b1 = ok_json(fm, CHAT, chat_body("same"))
    h2, b2 = ok_json(fm, CHAT, chat_body("same"))
    h3, b3 = ok_json(fm, CHAT, chat_body("other"))
    assert b1 == b2 and h1["x-request-id"] == h2["x-request-id"]
    assert b1["id"] != b3["id"] and h1["x-request-id"] != h3["x-request-id"]


def assert_error_shape(data):
    e = json.loads(data)["error"]
    assert isinstance(e["message"], str) and e["message"]
    assert isinstance(e["type"], str)
    assert "param" in e and "code" in e
    return e


def test_unknown_path_404(fm):
    status, _, data = fm.post("/v1/nope", {"model": "m"})
    assert status == 404
    assert assert_error_shape(data)["code"] == "unknown_url"
    conn = http.client.HTTPConnection(fm.host, fm.port, timeout=5)
    conn.request("GET", "/")
    r = conn.getresponse()
    assert r.status == 404
    assert_error_shape(r.read())
    conn.close()
    assert fm.stats()["by_path"]["/v1/nope"] == 1


def test_bad_body_400(fm):
    for body in [b"not json", b"[1, 2]", b"", b'"s"']:
        status, _, data = fm.post(CHAT, body)
        assert status == 400, body
        assert assert_error_shape(data)["type"] == "invalid_request_error"


# -- latency ----------------------------------------------------------------

def timed_post(fm, body=None, path=CHAT, timeout=10):
    t0 = time.monotonic()
    status, hdrs, data = fm.post(path, body or chat_body(), timeout=timeout)
    return time.monotonic() - t0, status


def test_fixed_latency(fm):
    fm.configure(latency_ms=200)
    took, status = timed_post(fm)
    assert status == 200 and 0.19 <= took < 0.6


def test_range_latency(fm):
    fm.configure(latency_ms="100-300")
    with ThreadPoolExecutor(12) as ex:
        res = list(ex.map(lambda i: timed_post(fm, chat_body(str(i))), range(12)))
    took = [t for t, s in res]
    assert all(s == 200 for _, s in res)
    assert min(took) >= 0.095 and max(took) < 1.0
    assert max(took) - min(took) > 0.03  # not all alike


def test_trigger_latency_adds(fm):
    fm.configure(latency_ms=100)
    took, _ = timed_post(fm, chat_body(fake={"latency_ms": 150}))
    assert 0.24 <= took < 0.7


def test_many_slow_requests_are_cheap(fm):
    """1,000 requests in flight at once, each with 1.5 s of latency, finish
    together: waiting costs no thread (two threads, one at a time, would
    take 750 s)."""
    fm.configure(latency_ms=1500)
    body = json.dumps(chat_body()).encode()
    req = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    sel = selectors.DefaultSelector()
    n = 1000
    t0 = time.monotonic()
    for _ in range(n):
        s = socket.create_connection((fm.host, fm.port))
        s.sendall(req)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, bytearray())
    done = 0
    while done < n and time.monotonic() - t0 < 10:
        for key, _ in sel.select(timeout=1):
            chunk = key.fileobj.recv(65536)
            if chunk:
                key.data.extend(chunk)
                continue
            sel.unregister(key.fileobj)
            key.fileobj.close()
            assert key.data.startswith(b"HTTP/1.1 200")
            done += 1
    took = time.monotonic() - t0
    assert done == n
    assert took < 5, took
    assert fm.stats(items=False)["peak_concurrency"] == n


# -- failures by rate -------------------------------------------------------

def test_fail_500(fm):
    fm.configure(fail_500=1.0)
    status, _, data = fm.post(CHAT, chat_body())
    assert status == 500
    assert assert_error_shape(data)["type"] == "server_error"
    assert fm.stats()["injected"]["500"] == 1


def test_fail_429_with_retry_after(fm):
    fm.configure(fail_429=1.0, retry_after=7)
    status, hdrs, data = fm.post(CHAT, chat_body())
    assert status == 429 and hdrs["retry-after"] == "7"
    assert assert_error_shape(data)["code"] == "rate_limit_exceeded"


def test_fail_reset(fm):
    fm.configure(fail_reset=1.0)
    with pytest.raises(ConnectionError):
        fm.post(CHAT, chat_body())
    st = fm.stats()
    assert st["injected"]["reset"] == 1 and st["by_status"] == {}


def test_fail_hang_until_client_gives_up(fm):
    fm.configure(fail_hang=1.0)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        fm.post(CHAT, chat_body(), timeout=0.5)
    assert time.monotonic() - t0 < 1.5
    fm.configure(fail_hang=0)
    # Other requests are not held up meanwhile ...
    assert fm.post(CHAT, chat_body("other"))[0] == 200
    # ... and the hung one is dropped once its client has gone.
    fm.wait_for(lambda s: s["inflight"] == 0, timeout=3)
    assert fm.stats()["injected"]["hang"] == 1


def test_fail_garbage(fm):
    fm.configure(fail_garbage=1.0)
    status, hdrs, data = fm.post(CHAT, chat_body())
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(data)


def test_fail_rate_is_a_rate(fm):
    fm.configure(fail_500=0.3)
    with ThreadPoolExecutor(8) as ex:
        statuses = list(ex.map(lambda i: fm.post(CHAT, chat_body(str(i)))[0],
                               range(300)))
    n500 = statuses.count(500)
    assert statuses.count(200) + n500 == 300
    assert 50 <= n500 <= 130, n500
    assert fm.stats()["by_status"] == {"200": 300 - n500, "500": n500}


def test_max_concurrency(fm):
    fm.configure(latency_ms=400, max_concurrency=5, retry_after=3)
    with ThreadPoolExecutor(20) as ex:
        res = list(ex.map(lambda i: fm.post(CHAT, chat_body(str(i))), range(20)))
    statuses = [s for s, _, _ in res]
    assert statuses.count(200) >= 5
    assert statuses.count(429) >= 10
    for s, h, _ in res:
        if s == 429:
            assert h["retry-after"] == "3"
    st = fm.stats()
    assert st["peak_concurrency"] == 5
    assert st["injected"]["concurrency_429"] == statuses.count(429)
    # Healthy again once the limit is lifted.
    fm.configure(max_concurrency=0, latency_ms=0)
    assert fm.post(CHAT, chat_body())[0] == 200


def test_peak_concurrency(fm):
    fm.configure(latency_ms=300)
    with ThreadPoolExecutor(10) as ex:
        list(ex.map(lambda i: fm.post(CHAT, chat_body(str(i))), range(10)))
    st = fm.stats()
    assert st["peak_concurrency"] == 10 and st["inflight"] == 0


# -- triggers in the body ---------------------------------------------------

def item_headers(batch, item, attempt, **more):
    h = {"kbatch-batch-id": batch, "kbatch-item-id": item,
         "kbatch-attempt": str(attempt)}
    h.update(more)
    return h


def test_trigger_status_times_per_item(fm):
    body = chat_body(fake={"status": 500, "times": 2})
    got = [fm.post(CHAT, body, item_headers("b1", "i1", a))[0] for a in (1, 2, 3, 4)]
    assert got == [500, 500, 200, 200]
    # A different item with the same body has its own counter.
    assert fm.post(CHAT, body, item_headers("b1", "i2", 1))[0] == 500
    it = fm.stats()["by_item"]["b1:i1"]
    assert it["count"] == 4
    assert it["attempts"] == ["1", "2", "3", "4"]
    assert it["statuses"] == [500, 500, 200, 200]


def test_trigger_times_by_body_without_headers(fm):
    body = chat_body("keyed by body", fake={"status": 503, "times": 1})
    assert [fm.post(CHAT, body)[0] for _ in range(3)] == [503, 200, 200]
    assert fm.stats()["items_total"] == 0


def test_trigger_429_retry_after(fm):
    status, hdrs, _ = fm.post(CHAT, chat_body(fake={"status": 429, "retry_after": 2}))
    assert status == 429 and hdrs["retry-after"] == "2"
    status, hdrs, _ = fm.post(CHAT, chat_body(fake={"status": 429}))
    assert status == 429 and hdrs["retry-after"] == "1"


def test_trigger_modes(fm):
    with pytest.raises(ConnectionError):
        fm.post(CHAT, chat_body(fake={"mode": "reset"}))
    with pytest.raises(TimeoutError):
        fm.post(CHAT, chat_body(fake={"mode": "hang"}), timeout=0.3)
    status, _, data = fm.post(CHAT, chat_body(fake={"mode": "garbage"}))
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(data)
    # Trickle: the normal answer, 64 bytes every 20 ms.
    normal = fm.post(CHAT, chat_body("t"))[2]
    t0 = time.monotonic()
    status, _, data = fm.post(CHAT, chat_body("t", fake={
        "mode": "trickle", "chunk_bytes": 64, "interval_ms": 20}))
    took = time.monotonic() - t0
    assert status == 200
    trickled, plain = json.loads(data), json.loads(normal)
    assert trickled.pop("id") != plain.pop("id")  # the bodies differ
    assert trickled == plain
    chunks = math.ceil(len(data) / 64)
    assert took >= (chunks - 1) * 0.02 * 0.9, took
    inj = fm.stats()["injected"]
    assert (inj["reset"], inj["hang"], inj["garbage"], inj["trickle"]) == (1, 1, 1, 1)


def test_trigger_body_bytes(fm):
    for path, body in [(CHAT, chat_body()),
                       ("/v1/completions", {"model": "m", "prompt": "p"}),
                       ("/v1/responses", {"model": "m", "input": "p"}),
                       ("/v1/embeddings", {"model": "m", "input": "p"})]:
        for n in (2000, 1 << 20):
            b = dict(body, fake={"body_bytes": n})
            status, hdrs, data = fm.post(path, b)
            assert status == 200 and len(data) == n, (path, n, len(data))
            json.loads(data)
    status, _, data = fm.post(CHAT, chat_body(fake={"status": 500, "body_bytes": 5000}))
    assert status == 500 and len(data) == 5000
    assert_error_shape(data)


def test_trigger_completion_tokens(fm):
    _, r = ok_json(fm, CHAT, chat_body(fake={"completion_tokens": 1234}))
    assert r["usage"]["completion_tokens"] == 1234


# -- headers, stats, reset, config ------------------------------------------

def test_headers_seen_and_per_item(fm):
    h = item_headers("batch-9", "req-1", 1, **{
        "Authorization": "Bearer sk-test", "Idempotency-Key": "batch-9:req-1",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "X-Team": "ml"})
    fm.post(CHAT, chat_body(), h)
    fm.post(CHAT, chat_body(), item_headers("batch-9", "req-2", 1))
    st = fm.stats()
    assert st["headers_seen"]["kbatch-item-id"] == "req-2"
    assert st["last_request"] == {"method": "POST", "path": CHAT}
    last = st["by_item"]["batch-9:req-1"]["last_headers"]
    assert last["authorization"] == "Bearer sk-test"
    assert last["idempotency-key"] == "batch-9:req-1"
    assert last["traceparent"].startswith("00-4bf92f")
    assert last["x-team"] == "ml"
    assert st["requests_total"] == 2 and st["items_total"] == 2
    assert st["by_path"] == {CHAT: 2}
    assert "by_item" not in fm.stats(items=False)


def test_reset(fm):
    body = chat_body(fake={"status": 500, "times": 1})
    hdr = item_headers("r", "1", 1)
    assert fm.post(CHAT, body, hdr)[0] == 500
    assert fm.post(CHAT, body, hdr)[0] == 200
    fm.reset()
    st = fm.stats()
    assert st["requests_total"] == 0 and st["by_item"] == {} and st["by_status"] == {}
    assert st["peak_concurrency"] == 0
    # Trigger counters start over too.
    assert fm.post(CHAT, body, hdr)[0] == 500


def test_config(fm):
    c = fm.configure(latency_ms=[5, 10], fail_429=0.5, max_concurrency=20)
    assert c["latency_ms"] == "5-10" and c["fail_429"] == 0.5
    assert c["max_concurrency"] == 20
    assert fm.config() == c
    for bad in ({"fail_500": 2}, {"latency_ms": "x"}, {"nope": 1},
                {"max_concurrency": -1}):
        with pytest.raises(RuntimeError, match="400"):
            fm.configure(**bad)
    fm.configure(record_items=False)
    fm.post(CHAT, chat_body(fake={"status": 200}), item_headers("x", "y", 1))
    assert fm.stats()["by_item"] == {}


# -- command line -----------------------------------------------------------

def run_fake(*args):
    return subprocess.run([fake_model_binary(), *args], capture_output=True,
                          text=True, timeout=5)


def test_cli_help_and_bad_flags():
    r = run_fake("--help")
    assert r.returncode == 0 and "--latency-ms" in r.stdout
    for args in (["--nope"], ["--port"], ["--fail-500", "2"],
                 ["--latency-ms", "9-3"], ["--threads", "x"], ["extra"]):
        r = run_fake(*args)
        assert r.returncode == 2, args
        assert len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_cli_flags_and_port_file(tmp_path):
    pf = tmp_path / "port"
    with FakeModel("--port-file", str(pf), "--latency-ms", "50",
                   "--fail-429", "1", "--retry-after", "4",
                   "--threads", "1", "--seed", "7") as f:
        assert int(pf.read_text()) == f.port
        took = time.monotonic()
        status, hdrs, _ = f.post(CHAT, chat_body())
        took = time.monotonic() - took
        assert status == 429 and hdrs["retry-after"] == "4" and took >= 0.045
        c = f.config()
        assert c["latency_ms"] == "50" and c["fail_429"] == 1


def test_sigterm_with_requests_waiting():
    f = FakeModel(latency_ms=5000).start()
    socks = []
    for _ in range(5):
        s = socket.create_connection((f.host, f.port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 2\r\n\r\n{}")
        socks.append(s)
    hang = socket.create_connection((f.host, f.port))
    body = b'{"fake": {"mode": "hang"}}'
    hang.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    f.wait_for(lambda s: s["inflight"] == 6)
    t0 = time.monotonic()
    assert f.stop() == 0
    assert time.monotonic() - t0 < 2
    for s in socks + [hang]:
        s.close()


# -- the job API (async providers, issue 19) ------------------------------------

def _get(fake, path, headers=None):
    conn = http.client.HTTPConnection(fake.host, fake.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_job_api_post_then_get():
    h = {"kbatch-batch-id": "b", "kbatch-item-id": "i1"}
    with FakeModel(job_ms=300) as f:
        st, _, body = f.post("/jobs/submit", {"prompt": "x"}, headers=h)
        assert st == 202
        jid = json.loads(body)["job"]["id"]
        st, j = _get(f, f"/jobs/status/{jid}", headers=h)
        assert (st, j["status"]) == (200, "running")
        time.sleep(0.4)
        st, j = _get(f, f"/jobs/status/{jid}", headers=h)
        assert j["status"] == "succeeded"
        assert j["output"]["input"] == {"prompt": "x"}
        assert _get(f, "/jobs/status/nope")[0] == 404
        # failing jobs and cancel
        f.configure(job_fail=1.0, job_ms=10000)
        _, _, body = f.post("/jobs/submit", {}, headers={"kbatch-batch-id": "b", "kbatch-item-id": "i2"})
        j2 = json.loads(body)["job"]["id"]
        st, _, body = f.post(f"/jobs/cancel/{j2}", {}, headers={"kbatch-batch-id": "b", "kbatch-item-id": "i2"})
        assert json.loads(body)["status"] == "cancelled"
        assert _get(f, f"/jobs/status/{j2}")[1]["status"] == "cancelled"
        f.configure(job_ms=0)
        _, _, body = f.post("/jobs/submit", {})
        j3 = json.loads(body)["job"]["id"]
        j = _get(f, f"/jobs/status/{j3}")[1]
        assert j["status"] == "failed" and "injected" in j["error"]["message"]
        jobs = f.stats()["jobs"]
        assert jobs["submitted"] == 3 and jobs["cancelled"] == 1
        assert jobs["by_item"]["b:i1"] == {"submits": 1, "polls": 2, "results": 0, "cancels": 0}
        assert jobs["by_item"]["b:i2"]["cancels"] == 1


def test_job_api_genvr_three_posts():
    h = {"kbatch-batch-id": "g", "kbatch-item-id": "1"}
    with FakeModel("--job-ms", "200") as f:
        st, _, body = f.post("/genvr/generate-batch", {"prompt": "p"}, headers=h)
        d = json.loads(body)
        assert st == 200 and d["success"] and d["data"]["status"] == "queued"
        jid = d["data"]["id"]
        st, _, body = f.post("/genvr/status-batch", {"prompt": "p", "id": jid}, headers=h)
        assert json.loads(body)["data"]["status"] == "processing"
        st, _, body = f.post("/genvr/response-batch", {"prompt": "p", "id": jid}, headers=h)
        assert st == 409
        time.sleep(0.3)
        st, _, body = f.post("/genvr/status-batch", {"prompt": "p", "id": jid}, headers=h)
        assert json.loads(body)["data"]["status"] == "completed"
        st, _, body = f.post("/genvr/response-batch", {"prompt": "p", "id": jid}, headers=h)
        assert st == 200 and json.loads(body)["data"]["output"] == {"job": jid}
        assert f.stats()["jobs"]["by_item"]["g:1"] == {"submits": 1, "polls": 2, "results": 2, "cancels": 0}
        assert f.stats(items=False)["jobs"]["running"] == 0
