"""The HTTP batch API (role `api`, SPEC §11) through the official `openai`
SDK (tests/e2e/requirements.txt pins it), against a real broker, a real
`kbatch worker` (items + aggregator + api) and the fake model."""
import io
import json
import os
import re
import signal
import time

import openai
import pytest
import requests

from conftest import BUILD
from fakes import FakeModel

KEYS = {"acme": "key-acme-000001", "other": "key-other-000002"}


class Api:
    """One `kbatch worker` with the api role, and clients for it."""

    def __init__(self, env, conf, worker_env):
        self.env = env
        self.conf = conf
        self.worker_env = worker_env
        self.worker = None
        self.port = None

    def start(self):
        self.worker = self.env.worker(self.conf, env=self.worker_env, name="api")
        line = self.worker.wait_log(
            lambda l: l.get("msg", "").startswith("batch API listening on"), 60)
        self.port = int(line["msg"].split(" ")[4].rsplit(":", 1)[1])
        self.worker.wait_log(lambda l: "caught up" in l.get("msg", ""), 60)
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def client(self, tenant="acme", key=None):
        return openai.OpenAI(base_url=self.url + "/v1",
                             api_key=key or KEYS[tenant], max_retries=0, timeout=60)

    def http(self, method, path, tenant="acme", **kw):
        headers = kw.pop("headers", {})
        if tenant:
            headers.setdefault("Authorization", f"Bearer {KEYS[tenant]}")
        return requests.request(method, self.url + path, headers=headers, timeout=60, **kw)


def start_api(env, fake, tmp_path, extra="", routes=None, conf_extra=""):
    keys = tmp_path / "keys"
    keys.write_text("# tenants of the test\n" +
                    "".join(f"{t} {k}\n" for t, k in KEYS.items()))
    conf = env.write_conf(
        base_url=fake.url, routes=routes,
        extra=f'api: {{ listen = "127.0.0.1:0"; keys_file = "{keys}"; {extra} }};\n'
              + conf_extra)
    env.create_topics(conf, partitions=2)
    return Api(env, conf, {"KBATCH_WORKER_ROLES": "items,aggregator,api"}).start()


@pytest.fixture
def api(env, fake, tmp_path):
    return start_api(env, fake, tmp_path)


def line(i, fail=False, model="gpt-test"):
    body = {"model": model, "messages": [{"role": "user", "content": f"hello {i}"}]}
    if fail:
        body["fake"] = {"status": 400}
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": body}


def jsonl(lines):
    return ("".join(json.dumps(l) + "\n" for l in lines)).encode()


def upload(client, lines, name="input.jsonl"):
    return client.files.create(file=(name, io.BytesIO(jsonl(lines))), purpose="batch")


def wait_status(client, batch_id, want, timeout=90):
    deadline = time.time() + timeout
    b = None
    while time.time() < deadline:
        b = client.batches.retrieve(batch_id)
        if b.status in want:
            return b
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} not {want} after {timeout}s: {b}")


def test_openai_round_trip(api):
    """upload -> create -> poll -> output and error files, as with OpenAI."""
    c = api.client()
    lines = [line(i, fail=(i in (3, 7))) for i in range(10)]
    f = upload(c, lines)
    assert f.id.startswith("file-") and f.purpose == "batch"
    assert f.bytes == len(jsonl(lines)) and f.filename == "input.jsonl"
    assert c.files.retrieve(f.id).id == f.id
    assert c.files.content(f.id).content == jsonl(lines)
    assert [x.id for x in c.files.list().data] == [f.id]

    t0 = time.time()
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="24h", metadata={"team": "search"})
    assert b.status in ("validating", "in_progress"), b
    assert b.request_counts.total == 10 and b.metadata == {"team": "search"}
    assert b.expires_at - b.created_at == 24 * 3600
    b = wait_status(c, b.id, {"completed"})
    print(f"create -> completed in {time.time() - t0:.2f}s")
    assert b.request_counts.total == 10
    assert b.request_counts.completed == 8 and b.request_counts.failed == 2
    assert b.output_file_id and b.error_file_id and b.completed_at

    out = [json.loads(l) for l in c.files.content(b.output_file_id).text.splitlines()]
    err = [json.loads(l) for l in c.files.content(b.error_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(10) if i not in (3, 7))
    assert sorted(o["custom_id"] for o in err) == ["req-3", "req-7"]
    for o in out:
        assert o["id"].startswith("batch_req_") and o["error"] is None
        assert o["response"]["status_code"] == 200
        assert o["response"]["body"]["choices"][0]["message"]["content"] == \
            f"echo: hello {o['custom_id'].split('-')[1]}"
    for o in err:
        assert o["response"]["status_code"] == 400 and o["error"]["code"]
    # the same as `kbatch collect` writes
    r = api.env.kbatch("collect", b.id, "--no-wait", "-q", conf=api.conf)
    assert sorted(r.stdout.splitlines()) == sorted(
        c.files.content(b.output_file_id).text.splitlines() +
        c.files.content(b.error_file_id).text.splitlines())


def test_cancel_mid_batch(env, tmp_path):
    """A slow model, one call at a time: cancel ends the rest cancelled."""
    with FakeModel(latency_ms=300) as slow:
        routes = (f'( {{ model = "*"; base_url = "{slow.url}"; '
                  f'max_inflight = 1; }} )')
        a = start_api(env, slow, tmp_path, routes=routes)
        c = a.client()
        f = upload(c, [line(i) for i in range(30)])
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                             completion_window="1h")
        deadline = time.time() + 30
        while slow.stats(items=False)["requests_total"] < 2 and time.time() < deadline:
            time.sleep(0.1)
        b = c.batches.cancel(b.id)
        assert b.status in ("cancelling", "cancelled"), b
        assert b.cancelling_at
        b = wait_status(c, b.id, {"cancelled"})
        assert b.request_counts.total == 30
        assert 0 < b.request_counts.completed < 30
        assert b.request_counts.failed == 30 - b.request_counts.completed
        assert b.cancelled_at
        errs = [json.loads(l) for l in c.files.content(b.error_file_id).text.splitlines()]
        assert errs and all(e["error"]["code"] == "batch_cancelled" for e in errs)
        # cancelling again changes nothing
        assert c.batches.cancel(b.id).status == "cancelled"


def test_list_pagination(api):
    c = api.client()
    f = upload(c, [line(0)])
    ids = [c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                            completion_window="24h").id for _ in range(5)]
    p1 = c.batches.list(limit=2)
    assert [b.id for b in p1.data] == ids[::-1][:2] and p1.has_more
    p2 = c.batches.list(limit=2, after=p1.data[-1].id)
    assert [b.id for b in p2.data] == ids[::-1][2:4] and p2.has_more
    p3 = c.batches.list(limit=2, after=p2.data[-1].id)
    assert [b.id for b in p3.data] == ids[::-1][4:] and not p3.has_more
    # the SDK's auto-pagination walks every page
    assert [b.id for b in c.batches.list(limit=2)] == ids[::-1]


def test_tenants_isolated(api):
    """Another tenant's files and batches answer 404 on every endpoint."""
    acme, other = api.client("acme"), api.client("other")
    f = upload(acme, [line(0), line(1)])
    b = acme.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                            completion_window="24h")
    b = wait_status(acme, b.id, {"completed"})
    for call in (lambda: other.files.retrieve(f.id),
                 lambda: other.files.content(f.id),
                 lambda: other.files.delete(f.id),
                 lambda: other.files.retrieve(b.output_file_id),
                 lambda: other.files.content(b.output_file_id),
                 lambda: other.batches.retrieve(b.id),
                 lambda: other.batches.cancel(b.id),
                 lambda: other.batches.create(input_file_id=f.id,
                                              endpoint="/v1/chat/completions",
                                              completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert other.files.list().data == [] and other.batches.list().data == []
    # a made-up id answers exactly the same
    r1 = api.http("GET", f"/v1/batches/{b.id}", tenant="other")
    r2 = api.http("GET", "/v1/batches/batch_01AAAAAAAAAAAAAAAAAAAAAAAA", tenant="other")
    assert r1.status_code == r2.status_code == 404
    assert r1.json()["error"]["code"] == r2.json()["error"]["code"] == "not_found"
    # the owner still has everything
    assert acme.files.retrieve(f.id).id == f.id
    assert acme.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        acme.files.retrieve(f.id)


def test_auth(api):
    with pytest.raises(openai.AuthenticationError):
        api.client(key="key-wrong-000000").files.list()
    r = api.http("GET", "/v1/batches", tenant=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = api.http("GET", "/v1/batches", tenant=None, headers={"x-api-key": KEYS["other"]})
    assert r.status_code == 200 and r.json()["data"] == []
    # keys are re-read when the file changes
    keys = api.env.tmp / "keys"
    time.sleep(1.1)
    keys.write_text(f"acme sha256:{__import__('hashlib').sha256(b'key-new-000003').hexdigest()}\n")
    deadline = time.time() + 10
    while time.time() < deadline:
        if api.http("GET", "/v1/files", tenant=None,
                    headers={"Authorization": "Bearer key-new-000003"}).status_code == 200:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the new key was not accepted")
    assert api.http("GET", "/v1/files", tenant="acme").status_code == 401


def test_bad_input(api):
    """Clear 4xx in OpenAI's error shape; the server keeps serving."""
    r = api.http("POST", "/v1/files", files={"file": ("x.jsonl", b"{}\nnot json\n" +
                                                      jsonl([line(1), line(1)]))},
                 data={"purpose": "batch"})
    assert r.status_code == 400, r.text
    msg = r.json()["error"]["message"]
    assert "4 bad lines" not in msg and "line 1:" in msg and "line 2:" in msg
    assert "line 4: duplicate custom_id \"req-1\" (first on line 3)" in msg
    assert api.http("GET", "/v1/files").json()["data"] == []  # nothing stored
    r = api.http("POST", "/v1/files", data=b"--xx\r\nbroken", headers={
        "Content-Type": "multipart/form-data; boundary=xx"})
    assert r.status_code == 400, r.text
    # a part without a name: the server crashed on it once
    r = api.http("POST", "/v1/files", data=b"--xx\r\nContent-Disposition: form-data\r\n\r\n"
                 b"None\r\n--xx--\r\n",
                 headers={"Content-Type": "multipart/form-data; boundary=xx"})
    assert r.status_code == 400 and "no name" in r.json()["error"]["message"], r.text
    r = api.http("POST", "/v1/files", files={"file": ("x.jsonl", jsonl([line(1)]))},
                 data={"purpose": "fine-tune"})
    assert r.status_code == 400 and "purpose" in r.json()["error"]["message"]
    r = api.http("POST", "/v1/files", json={"purpose": "batch"})
    assert r.status_code == 400
    r = api.http("POST", "/v1/batches", data=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = api.http("POST", "/v1/batches", json=[1, 2])
    assert r.status_code == 400
    for body, param in (({"input_file_id": 5, "endpoint": "/v1/chat/completions",
                          "completion_window": "24h"}, "input_file_id"),
                        ({"input_file_id": "file-x", "endpoint": "/v2/x",
                          "completion_window": "24h"}, "endpoint"),
                        ({"input_file_id": "file-x", "endpoint": "/v1/chat/completions",
                          "completion_window": "soon"}, "completion_window"),
                        ({"input_file_id": "file-x", "endpoint": "/v1/chat/completions",
                          "completion_window": "24h", "metadata": {"k": 1}}, "metadata")):
        r = api.http("POST", "/v1/batches", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = api.http("POST", "/v1/batches", json={"input_file_id": "file-nope",
                                              "endpoint": "/v1/chat/completions",
                                              "completion_window": "24h"})
    assert r.status_code == 404
    r = api.http("GET", "/v1/batches?limit=0")
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    assert api.http("GET", "/v1/nothing").status_code == 404
    # an escaped NUL once cut the path short: /v1/batches/%00 listed the batches
    for path in ("/v1/batches/%00", "/v1/files/%00/content", "/v1/files/%00"):
        r = api.http("GET", path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.text)
    r = api.http("PUT", "/v1/batches")
    assert r.status_code == 405 and r.headers["Allow"] == "GET, POST"
    assert api.http("DELETE", "/v1/batches/batch_x").status_code == 405
    # still serving
    c = api.client()
    assert upload(c, [line(1)]).id


def test_metrics_count_api_requests(env, fake, tmp_path):
    port = None
    keys = tmp_path / "keys"
    keys.write_text(f"acme {KEYS['acme']}\n")
    conf = env.write_conf(base_url=fake.url, admin_listen="127.0.0.1:0",
                          extra=f'api: {{ listen = "127.0.0.1:0"; keys_file = "{keys}"; }};')
    env.create_topics(conf, partitions=2)
    a = Api(env, conf, {"KBATCH_WORKER_ROLES": "api"}).start()
    line_ = a.worker.wait_log(lambda l: l.get("msg", "").startswith("admin server listening"))
    port = int(re.search(r":(\d+) ", line_["msg"]).group(1))
    a.http("GET", "/v1/batches")
    a.http("GET", "/v1/batches/batch_nope")
    a.http("GET", "/v1/batches", tenant=None)
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'kbatch_api_requests_total{endpoint="/v1/batches",code="200"} 1' in text
    assert 'kbatch_api_requests_total{endpoint="/v1/batches/{id}",code="404"} 1' in text
    assert 'kbatch_api_requests_total{endpoint="/v1/batches",code="401"} 1' in text
    assert 'kbatch_api_request_seconds_count{endpoint="/v1/batches"} 2' in text


def test_no_keys_file_needs_loopback(env, fake, tmp_path):
    conf = env.write_conf(base_url=fake.url, extra='api: { listen = "0.0.0.0:0"; };')
    r = env.kbatch("worker", conf=conf, check=False, env={"KBATCH_WORKER_ROLES": "api"},
                   timeout=30)
    assert r.returncode == 2
    errors = [l for l in r.stderr.splitlines() if '"error"' in l]
    assert len(errors) == 1 and "api.keys_file is not set" in errors[0], r.stderr


def test_restart_loses_nothing(api):
    """State lives in Kafka: a replica killed with SIGKILL and started again
    answers the same (and a second replica does too)."""
    c = api.client()
    f = upload(c, [line(i) for i in range(4)])
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="24h")
    b = wait_status(c, b.id, {"completed"})
    before = (c.files.retrieve(f.id).model_dump(), b.model_dump(),
              c.files.content(b.output_file_id).text)
    api.worker.stop(sig=signal.SIGKILL)
    api.start()
    c = api.client()
    after = (c.files.retrieve(f.id).model_dump(), c.batches.retrieve(b.id).model_dump(),
             c.files.content(b.output_file_id).text)
    assert sorted(after[2].splitlines()) == sorted(before[2].splitlines())
    assert after[:2] == before[:2]


# -- Anthropic Message Batches, inline batches, items -------------------------------

def anthropic_client(api, tenant="acme"):
    import anthropic
    return anthropic.Anthropic(base_url=api.url, api_key=KEYS[tenant], max_retries=0,
                               timeout=60)


def mreq(i, fail=False):
    params = {"model": "claude-test", "max_tokens": 32,
              "messages": [{"role": "user", "content": f"tell me {i}"}]}
    if fail:
        params["fake"] = {"status": 400}
    return {"custom_id": f"msg-{i}", "params": params}


def test_anthropic_round_trip(api):
    """create -> poll -> results -> list -> delete with the anthropic SDK."""
    import anthropic
    c = anthropic_client(api)
    b = c.messages.batches.create(requests=[mreq(i, fail=(i == 2)) for i in range(6)])
    assert b.id.startswith("msgbatch_") and b.type == "message_batch"
    assert b.processing_status == "in_progress" and b.request_counts.processing == 6
    assert (b.expires_at - b.created_at).total_seconds() == 24 * 3600
    deadline = time.time() + 90
    while b.processing_status != "ended" and time.time() < deadline:
        time.sleep(0.3)
        b = c.messages.batches.retrieve(b.id)
    assert b.processing_status == "ended" and b.ended_at and b.results_url
    rc = b.request_counts
    assert (rc.processing, rc.succeeded, rc.errored, rc.canceled, rc.expired) == (0, 5, 1, 0, 0)
    res = {r.custom_id: r.result for r in c.messages.batches.results(b.id)}
    assert set(res) == {f"msg-{i}" for i in range(6)}
    for cid, r in res.items():
        if cid == "msg-2":
            assert r.type == "errored" and r.error.error.type == "invalid_request_error"
        else:
            assert r.type == "succeeded"
            assert r.message.content[0].text == f"echo: tell me {cid.split('-')[1]}"
    assert [x.id for x in c.messages.batches.list(limit=10)] == [b.id]
    # an OpenAI client does not see Anthropic batches, and the other way round
    assert api.client().batches.list().data == []
    with pytest.raises(openai.NotFoundError):
        api.client().batches.retrieve(b.id)
    # tenants
    o = anthropic_client(api, "other")
    for call in (lambda: o.messages.batches.retrieve(b.id),
                 lambda: o.messages.batches.cancel(b.id),
                 lambda: o.messages.batches.delete(b.id),
                 lambda: list(o.messages.batches.results(b.id))):
        with pytest.raises(anthropic.NotFoundError) as e:
            call()
        assert e.value.body["error"]["type"] == "not_found_error"
    r = api.http("GET", f"/v1/messages/batches/{b.id}", tenant=None)
    assert r.status_code == 401 and r.json() == {
        "type": "error", "error": {"type": "authentication_error",
                                   "message": r.json()["error"]["message"]}}
    assert c.messages.batches.delete(b.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        c.messages.batches.retrieve(b.id)
    # bad requests: every bad one numbered, in Anthropic's shape
    r = api.http("POST", "/v1/messages/batches",
                 json={"requests": [mreq(0), {"custom_id": "x"}, mreq(0)]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert "2 bad requests" in err["message"] and "requests[1]:" in err["message"]
    assert "requests[2]: duplicate custom_id" in err["message"]


def test_anthropic_cancel(env, tmp_path):
    import anthropic
    with FakeModel(latency_ms=300) as slow:
        routes = (f'( {{ model = "*"; base_url = "{slow.url}"; max_inflight = 1; }} )')
        a = start_api(env, slow, tmp_path, routes=routes)
        c = anthropic_client(a)
        b = c.messages.batches.create(requests=[mreq(i) for i in range(20)])
        time.sleep(1)
        b = c.messages.batches.cancel(b.id)
        assert b.processing_status in ("canceling", "ended") and b.cancel_initiated_at
        if b.processing_status == "canceling":
            with pytest.raises(anthropic.BadRequestError):
                c.messages.batches.delete(b.id)  # still processing
        deadline = time.time() + 60
        while b.processing_status != "ended" and time.time() < deadline:
            time.sleep(0.3)
            b = c.messages.batches.retrieve(b.id)
        rc = b.request_counts
        assert rc.canceled > 0 and rc.succeeded + rc.canceled == 20
        kinds = [r.result.type for r in c.messages.batches.results(b.id)]
        assert kinds.count("canceled") == rc.canceled and kinds.count("succeeded") == rc.succeeded


def test_inline_batch_and_idempotency(api):
    reqs = [{"custom_id": f"in-{i}",
             "body": {"model": "gpt-test", "messages": [{"role": "user", "content": f"q{i}"}]}}
            for i in range(3)]
    body = {"requests": reqs, "metadata": {"src": "inline"}}
    h = {"Idempotency-Key": "order-2026-0001"}
    r1 = api.http("POST", "/v1/batches", json=body, headers=dict(h))
    assert r1.status_code == 200, r1.text
    b = r1.json()
    assert b["endpoint"] == "/v1/chat/completions" and b["completion_window"] == "24h"
    assert b["request_counts"]["total"] == 3 and b["metadata"] == {"src": "inline"}
    # the same key and payload: the same batch, nothing published again
    r2 = api.http("POST", "/v1/batches", json=body, headers=dict(h))
    assert r2.status_code == 200 and r2.json()["id"] == b["id"]
    # the same key, another payload: 409
    r3 = api.http("POST", "/v1/batches", json={"requests": reqs[:1]}, headers=dict(h))
    assert r3.status_code == 409 and r3.json()["error"]["param"] == "Idempotency-Key"
    # another tenant's key space is its own
    r4 = api.http("POST", "/v1/batches", json=body, headers=dict(h), tenant="other")
    assert r4.status_code == 200 and r4.json()["id"] != b["id"]
    assert api.http("POST", "/v1/batches", json=body,
                    headers={"Idempotency-Key": "short"}).status_code == 400
    c = api.client()
    done = wait_status(c, b["id"], {"completed"})
    assert done.request_counts.completed == 3
    items = api.env.consume("items", idle=3)
    mine = [m for m in items if m.key().decode().startswith(b["id"] + ":")]
    assert sorted(m.key().decode() for m in mine) == [f"{b['id']}:{i}" for i in range(3)]
    out = [json.loads(l) for l in c.files.content(done.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == ["in-0", "in-1", "in-2"]


def test_items_listing(env, tmp_path):
    with FakeModel(latency_ms=200) as slow:
        routes = (f'( {{ model = "*"; base_url = "{slow.url}"; max_inflight = 1; }} )')
        a = start_api(env, slow, tmp_path, routes=routes)
        c = a.client()
        f = upload(c, [line(i, fail=(i == 1)) for i in range(8)])
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                             completion_window="24h")
        r = a.http("GET", f"/v1/batches/{b.id}/items?limit=3").json()
        assert [i["custom_id"] for i in r["data"]] == ["req-0", "req-1", "req-2"]
        assert r["has_more"] and r["last_id"] == "req-2"
        assert {i["status"] for i in r["data"]} <= {"pending", "succeeded", "failed"}
        wait_status(c, b.id, {"completed"})
        seen, after = [], None
        while True:
            q = f"/v1/batches/{b.id}/items?limit=3" + (f"&after={after}" if after else "")
            page = a.http("GET", q).json()
            seen += page["data"]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert [i["item_index"] for i in seen] == list(range(8))
        for i in seen:
            assert i["status"] == ("failed" if i["custom_id"] == "req-1" else "succeeded")
            assert i["attempts"] >= 1
            if i["status"] == "succeeded":
                assert i["error"] is None and i["response"]["status_code"] == 200
                assert i["response"]["body"]["choices"][0]["message"]["content"].startswith("echo:")
            else:
                assert i["error"]["code"] == "client_error"
        failed = a.http("GET", f"/v1/batches/{b.id}/items?status=failed").json()
        assert [i["custom_id"] for i in failed["data"]] == ["req-1"]
        assert a.http("GET", f"/v1/batches/{b.id}/items?status=weird").status_code == 400
        assert a.http("GET", f"/v1/batches/{b.id}/items", tenant="other").status_code == 404


# -- scale and crashes ----------------------------------------------------------------

def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for l in f:
            if l.startswith("VmHWM:"):
                return int(l.split()[1])
    return 0


def split_api(env, fake, tmp_path):
    """The api role alone in one process (its RSS is its own), items and
    aggregator in another."""
    keys = tmp_path / "keys"
    keys.write_text("".join(f"{t} {k}\n" for t, k in KEYS.items()))
    conf = env.write_conf(base_url=fake.url, max_inflight=2000, extra=(
        f'api: {{ listen = "127.0.0.1:0"; keys_file = "{keys}"; }};'))
    env.create_topics(conf, partitions=4)
    a = Api(env, conf, {"KBATCH_WORKER_ROLES": "api"}).start()
    env.worker(conf, env={"KBATCH_WORKER_ROLES": "items,aggregator"}, name="workers")
    return a


def test_100k_lines_sigkill_mid_batch(env, fake, tmp_path):
    """A 100,000-line file uploaded and run to completion, the api process
    killed with SIGKILL while it publishes the batch and started again:
    every item has exactly one output line."""
    import threading
    a = split_api(env, fake, tmp_path)
    c = a.client()
    n = 100_000
    data = jsonl([line(i) for i in range(n)])
    rss0 = vm_hwm_kib(a.worker.proc.pid)
    t0 = time.time()
    f = c.files.create(file=("big.jsonl", io.BytesIO(data)), purpose="batch")
    dt = time.time() - t0
    rss = vm_hwm_kib(a.worker.proc.pid)
    print(f"\nupload: {len(data) / 1e6:.1f} MB in {dt:.2f}s = {len(data) / 1e6 / dt:.1f} MB/s; "
          f"api peak RSS {rss0 / 1024:.0f} -> {rss / 1024:.0f} MiB")
    assert f.bytes == len(data)
    # the file is not held in memory: well below its size over the start
    # (not under ASan: its quarantine keeps up to 256 MiB of freed memory)
    if "san" not in os.path.basename(BUILD):
        assert (rss - rss0) * 1024 < len(data), (rss0, rss, len(data))

    errors = []
    th = threading.Thread(target=lambda: errors.append(
        pytest.raises(Exception, c.batches.create, input_file_id=f.id,
                      endpoint="/v1/chat/completions", completion_window="24h")))
    th.start()
    seen, deadline = None, time.time() + 30
    while time.time() < deadline:
        r = a.http("GET", "/v1/batches").json()["data"]
        if r and r[0]["status"] == "validating":
            seen = r[0]
            break
        time.sleep(0.01)
    assert seen, "the batch was never seen being published"
    a.worker.stop(sig=signal.SIGKILL)
    th.join(60)
    a.start()
    b = wait_status(a.client(), seen["id"], {"completed"}, timeout=400)
    assert any("publishing it again" in l.get("msg", "") for l in a.worker.logs())
    assert b.request_counts.total == n and b.request_counts.completed == n
    out = a.client().files.content(b.output_file_id).text.splitlines()
    ids = [json.loads(l)["custom_id"] for l in out]
    assert len(ids) == n and set(ids) == {f"req-{i}" for i in range(n)}
    assert b.error_file_id is None
    assert [x.id for x in a.client().batches.list()] == [seen["id"]]
    # output files stream: a client that goes away after 64 KiB leaves the
    # server serving (its writer thread stops on the closed pipe)
    for _ in range(3):
        r = a.http("GET", f"/v1/files/{b.output_file_id}/content", stream=True)
        assert r.status_code == 200 and len(r.raw.read(65536)) == 65536
        r.close()
    assert a.http("GET", f"/v1/batches/{b.id}").json()["status"] == "completed"
    assert a.worker.proc.poll() is None


def test_sigkill_mid_upload(env, fake, tmp_path):
    """An upload cut by SIGKILL leaves no file; uploading again makes one."""
    import threading
    a = split_api(env, fake, tmp_path)
    data = jsonl([line(i) for i in range(20_000)])
    boundary = "kbatchtestboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
            f"batch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"slow.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    sent = threading.Event()

    def body():
        yield head
        for off in range(0, len(data) // 2, 65536):
            yield data[off:off + 65536]
        sent.set()
        time.sleep(5)  # the process is killed meanwhile
        yield data[len(data) // 2:]
        yield tail

    def post():
        try:
            requests.post(a.url + "/v1/files", data=body(), timeout=30, headers={
                "Authorization": f"Bearer {KEYS['acme']}",
                "Content-Type": f"multipart/form-data; boundary={boundary}"})
        except requests.RequestException:
            pass

    th = threading.Thread(target=post)
    th.start()
    assert sent.wait(30)
    time.sleep(0.5)
    a.worker.stop(sig=signal.SIGKILL)
    th.join(30)
    a.start()
    c = a.client()
    assert c.files.list().data == []
    f = c.files.create(file=("again.jsonl", io.BytesIO(data)), purpose="batch")
    assert [x.id for x in c.files.list().data] == [f.id]
    assert c.files.content(f.id).content == data


def test_limits(env, fake, tmp_path):
    """Bodies over api.max_file_bytes get 413 (also while streaming, without
    a Content-Length); a file of 1,000,001 requests is refused whole."""
    a = start_api(env, fake, tmp_path, extra="max_file_bytes = 2000000;")
    big = jsonl([line(i) for i in range(20_000)])  # ~3 MB
    r = a.http("POST", "/v1/files", files={"file": ("big.jsonl", big)},
               data={"purpose": "batch"})
    assert r.status_code == 413 and "api.max_file_bytes" in r.json()["error"]["message"]

    def chunked(head=b"", tail=b""):
        yield head
        for off in range(0, len(big), 65536):
            yield big[off:off + 65536]
        yield tail
    r = a.http("POST", "/v1/batches", data=chunked(),
               headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    # a file without Content-Length: 413 once past the limit, after some
    # chunks went to Kafka
    bnd = "kbatchlimit"
    head = (f"--{bnd}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{bnd}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.jsonl\"\r\n\r\n").encode()
    try:
        r = a.http("POST", "/v1/files", data=chunked(head, f"\r\n--{bnd}--\r\n".encode()),
                   headers={"Content-Type": f"multipart/form-data; boundary={bnd}"})
        assert r.status_code == 413, r.text
    except requests.ConnectionError:
        pass  # the server answered and closed while the body was still going
    assert a.client().files.list().data == []
    # the chunks stored before the limit was passed are deleted again
    time.sleep(1)
    last = {}
    for m in env.consume("files", idle=3):
        last[m.key()] = m.value()
    assert last and all(v is None for v in last.values()), \
        {k: len(v) for k, v in last.items() if v is not None}
    assert upload(a.client(), [line(0)]).id  # still serving


def test_a_million_and_one_requests(api):
    one = ('{"custom_id":"%d","method":"POST","url":"/v1/chat/completions",'
           '"body":{"model":"m"}}\n')
    data = "".join(one % i for i in range(1_000_001)).encode()
    r = api.http("POST", "/v1/files", files={"file": ("huge.jsonl", data)},
                 data={"purpose": "batch"})
    assert r.status_code == 400, r.text[:300]
    msg = r.json()["error"]["message"]
    assert "1 bad line" in msg and "line 1000001: more than 1000000 requests" in msg
    assert api.client().files.list().data == []


def test_completed_batch_outlives_its_state(env, fake, tmp_path):
    """The aggregator retires a batch's state (aggregator.retention_ms); the
    batch record keeps the final counts, also for a replica started after."""
    a = start_api(env, fake, tmp_path,
                  conf_extra="aggregator: { retention_ms = 1500; commit_interval_ms = 200; };")
    c = a.client()
    f = upload(c, [line(0), line(1, fail=True), line(2)])
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="24h")
    a.worker.wait_log(lambda l: l.get("msg") == "batch state retired", 60)
    time.sleep(1)
    for _ in range(2):
        got = c.batches.retrieve(b.id)
        assert got.status == "completed", got
        assert (got.request_counts.total, got.request_counts.completed,
                got.request_counts.failed) == (3, 2, 1)
        assert got.output_file_id and got.error_file_id and got.completed_at
        a.worker.stop(sig=signal.SIGKILL)
        a.start()
        c = a.client()
