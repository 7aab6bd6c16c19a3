"""`kbatch submit` and `kbatch collect` on a real broker (issue: the command
line users reach for): OpenAI and Anthropic round trips through a worker
(items + aggregator roles), bad input files, idempotent re-submission, and
how little `collect` reads from a busy results topic."""
import json
import os
import pty
import re
import select
import subprocess
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import KBATCH, ROOT
from fakes import FakeModel

ROLES = {"KBATCH_WORKER_ROLES": "items,aggregator"}
FAST_RETRY = ('retry: { max_attempts = 3; inprocess_attempts = 2; backoff_base_ms = 20; '
              'backoff_max_ms = 50; inprocess_max_wait_ms = 1000; delays_ms = [300]; };\n'
              'aggregator: { commit_interval_ms = 200; };')
DATA = os.path.join(ROOT, "tests", "data")


def compact(body):
    """The request body exactly as the worker sends it (jansson
    JSON_COMPACT, insertion order, UTF-8): the fake's answer is a function
    of these bytes."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def fake_answer(fake, path, body):
    """The fake's successful answer to body (a request whose `fake` trigger
    fires a given number of times is simply asked again)."""
    for _ in range(5):
        st, _, data = fake.post(path, compact(body))
        if st == 200:
            return json.loads(data)
    raise AssertionError(f"the fake never answered 200 for {body}")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def check_openai_line(l):
    """One line of the OpenAI Batch output format."""
    assert set(l) == {"id", "custom_id", "response", "error"}, l
    assert isinstance(l["id"], str) and re.fullmatch(r"batch_req_[0-9a-f]{24}", l["id"]), l
    assert isinstance(l["custom_id"], str) and l["custom_id"]
    r = l["response"]
    if r is not None:
        assert set(r) == {"status_code", "request_id", "body"}, r
        assert isinstance(r["status_code"], int) and 100 <= r["status_code"] <= 599
        assert r["request_id"] is None or isinstance(r["request_id"], str)
        assert r["body"] is None or isinstance(r["body"], dict)
    e = l["error"]
    if e is not None:
        assert set(e) == {"code", "message"} and all(isinstance(v, str) for v in e.values()), e
    assert r is not None or e is not None, l


def batch_events(env, batch_id, want=1, timeout=120, settle=2.0):
    """The batch events of batch_id (read_committed), once `want` were seen
    and `settle` seconds passed without another."""
    c = Consumer({"bootstrap.servers": env.bootstrap, "group.id": f"ev-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    c.subscribe([env.topic("batches")])
    out, deadline, quiet_until = [], time.time() + timeout, None
    try:
        while time.time() < deadline:
            if len(out) >= want and quiet_until is None:
                quiet_until = time.time() + settle
            if quiet_until is not None and time.time() > quiet_until:
                break
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            ev = json.loads(m.value())
            if ev["batch_id"] == batch_id:
                out.append(ev)
    finally:
        c.close()
    assert len(out) >= want, f"{want} events of {batch_id} not seen in {timeout}s: {out}"
    return out


def submit(env, conf, path, *args, check=True, input=None):
    cmd = [KBATCH, "submit", path, "-c", conf, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} exited {r.returncode}: {r.stderr}")
    return r


def collect_cmd(conf, batch_id, *args):
    return [KBATCH, "collect", batch_id, "-c", conf, *args]


def items_published(env, partitions=4):
    """Messages on the items topic (retried while a new topic's leaders are
    being elected)."""
    for attempt in range(50):
        try:
            return sum(env.end_offsets("items", partitions))
        except Exception:
            if attempt == 49:
                raise
            time.sleep(0.2)


def openai_file(path, n, model_of=lambda i: "gpt-test", fake_of=lambda i: None):
    bodies = {}
    with open(path, "w") as f:
        for i in range(n):
            body = {"model": model_of(i),
                    "messages": [{"role": "system", "content": "You are terse."},
                                 {"role": "user", "content": f"question {i}: é ü {i * 7}"}],
                    "max_tokens": 50}
            if fake_of(i):
                body["fake"] = fake_of(i)
            line = {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}
            f.write(json.dumps(line) + "\n")
            bodies[f"req-{i}"] = body
    return bodies


# ---------------------------------------------------------------------------


def test_openai_round_trip(env, tmp_path):
    """500 OpenAI Batch requests with a mix of outcomes: submit -> worker ->
    collect (started before the worker: it waits). Every custom_id exactly
    once across the two files, every line of the OpenAI output format,
    bodies equal to the fake's answers."""
    kinds = {0: "ok", 1: "ok", 2: "ok", 3: "ok", 4: "ok", 5: "client_error",
             6: "transient", 7: "server_error", 8: "unknown_model", 9: "ok"}
    fakes = {"client_error": {"status": 400}, "transient": {"status": 500, "times": 1},
             "server_error": {"status": 500}}
    kind = {f"req-{i}": kinds[i % 10] for i in range(500)}
    with FakeModel("--latency-ms", "0-3") as fake:
        routes = f'( {{ model = "gpt-*"; base_url = "{fake.url}"; timeout_ms = 5000; }} )'
        conf = env.write_conf(routes=routes, extra=FAST_RETRY)
        env.create_topics(conf, partitions=4)
        path = str(tmp_path / "batch.jsonl")
        bodies = openai_file(path, 500,
                             model_of=lambda i: "other-model" if kinds[i % 10] == "unknown_model"
                             else "gpt-test",
                             fake_of=lambda i: fakes.get(kinds[i % 10]))
        r = submit(env, conf, path, "--metadata", "team=search", "--completion-window", "24h")
        batch_id = r.stdout.strip()
        assert re.fullmatch(r"b-[0-9A-Z]{26}", batch_id), r.stdout
        assert "\r" not in r.stderr  # no progress bar without a terminal
        assert items_published(env) == 500
        out, err = tmp_path / "results.jsonl", tmp_path / "errors.jsonl"
        col = subprocess.Popen(collect_cmd(conf, batch_id, "-o", str(out), "--errors", str(err),
                                           "-v", "--timeout", "180s"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        w = env.worker(conf, env=ROLES)
        stdout, stderr = col.communicate(timeout=240)
        assert col.returncode == 0, stderr
        assert stdout == ""
        ok, bad = read_jsonl(out), read_jsonl(err)
        ids = [l["custom_id"] for l in ok + bad]
        assert sorted(ids) == sorted(kind), "every custom_id exactly once"
        for l in ok + bad:
            check_openai_line(l)
        assert len({l["id"] for l in ok + bad}) == 500
        for l in ok:
            assert kind[l["custom_id"]] in ("ok", "transient")
            assert l["error"] is None and l["response"]["status_code"] == 200
        want_ok = sum(1 for k in kind.values() if k in ("ok", "transient"))
        assert len(ok) == want_ok and len(bad) == 500 - want_ok
        for l in bad:
            k = kind[l["custom_id"]]
            if k == "client_error":
                assert l["response"]["status_code"] == 400
                assert "error" in l["response"]["body"]
                assert l["error"]["code"] == "client_error"
            elif k == "server_error":
                assert l["error"]["code"] == "max_attempts_exceeded", l
            else:
                assert k == "unknown_model"
                assert l["response"] is None and l["error"]["code"] == "unknown_model"
        # bodies equal to the fake's answers (a sample of each kind)
        by_id = {l["custom_id"]: l for l in ok}
        for cid in [c for c in sorted(by_id) if kind[c] == "ok"][:40] + \
                   [c for c in sorted(by_id) if kind[c] == "transient"][:20]:
            want = fake_answer(fake, "/v1/chat/completions", bodies[cid])
            assert by_id[cid]["response"]["body"] == want, cid
        evs = batch_events(env, batch_id)
        assert [e["type"] for e in evs] == ["batch.completed"]
        e = evs[0]
        assert (e["items_total"], e["items_succeeded"], e["items_failed"]) == \
            (500, want_ok, 500 - want_ok)
        assert e["status"] == "partial_succeeded" and e["metadata"] == {"team": "search"}
        m = re.search(r"messages_read=(\d+)", stderr)
        assert m and int(m.group(1)) >= 500, stderr
        assert w.stop() == 0


def test_anthropic_round_trip(env, tmp_path):
    """An Anthropic Message Batches file through the same path; collected as
    Anthropic results and as OpenAI output lines."""
    with FakeModel("--latency-ms", "0-3") as fake:
        routes = f'( {{ model = "claude-*"; base_url = "{fake.url}"; }} )'
        conf = env.write_conf(routes=routes, extra=FAST_RETRY)
        env.create_topics(conf, partitions=4)
        n = 200
        params, kind = {}, {}
        path = tmp_path / "anthropic.jsonl"
        with open(path, "w") as f:
            for i in range(n):
                p = {"model": "claude-test" if i % 20 != 19 else "gpt-nope", "max_tokens": 64,
                     "system": "Be brief.",
                     "messages": [{"role": "user",
                                   "content": [{"type": "text", "text": f"tell me {i}"}]}]}
                kind[f"msg-{i}"] = "no_route" if i % 20 == 19 else \
                    "client_error" if i % 10 == 3 else "ok"
                if kind[f"msg-{i}"] == "client_error":
                    p["fake"] = {"status": 400}
                params[f"msg-{i}"] = p
                f.write(json.dumps({"custom_id": f"msg-{i}", "params": p}) + "\n")
        r = subprocess.run([KBATCH, "submit", "-", "-c", conf, "--format", "anthropic",
                            "--batch-id", f"anthropic-{env.id}"],
                           stdin=open(path), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        batch_id = r.stdout.strip()
        assert batch_id == f"anthropic-{env.id}"
        w = env.worker(conf, env=ROLES)
        out = tmp_path / "results.jsonl"
        r = env.kbatch("collect", batch_id, "-o", str(out), "--format", "anthropic",
                       "--timeout", "120s", conf=conf)
        lines = read_jsonl(out)
        assert sorted(l["custom_id"] for l in lines) == sorted(kind)
        for l in lines:
            assert set(l) == {"custom_id", "result"}
            res, k = l["result"], kind[l["custom_id"]]
            if k == "ok":
                assert res["type"] == "succeeded"
                msg = res["message"]
                assert msg["type"] == "message" and msg["role"] == "assistant"
                assert msg["content"][0]["type"] == "text"
                assert msg["content"][0]["text"].startswith("echo: tell me")
                assert set(msg["usage"]) == {"input_tokens", "output_tokens"}
                assert msg == fake_answer(fake, "/v1/messages", params[l["custom_id"]])
            else:
                assert res["type"] == "errored"
                assert res["error"]["type"] == "error"
                assert res["error"]["error"]["type"] == "invalid_request_error", res
        # the same batch as OpenAI output lines, split
        ok, err = tmp_path / "ok.jsonl", tmp_path / "err.jsonl"
        env.kbatch("collect", batch_id, "-o", str(ok), "--errors", str(err), "-q", conf=conf)
        a, b = read_jsonl(ok), read_jsonl(err)
        assert len(a) == sum(1 for k in kind.values() if k == "ok") and len(a) + len(b) == n
        for l in a + b:
            check_openai_line(l)
        evs = batch_events(env, batch_id)
        assert len(evs) == 1 and evs[0]["items_total"] == n
        assert w.stop() == 0


def test_sample_files_validate():
    """The sample files of tests/data: every valid one passes --dry-run (which
    connects to nothing) with its request count."""
    for name, n in (("openai-batch.jsonl", 5), ("anthropic-batch.jsonl", 2),
                    ("native-batch.jsonl", 3)):
        r = subprocess.run([KBATCH, "submit", os.path.join(DATA, name), "--dry-run"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (name, r.stderr)
        assert f"{n} valid requests" in r.stderr, r.stderr


def test_bom_and_crlf(tmp_path):
    """A file saved on Windows: a byte order mark and CRLF line ends."""
    line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
                       "body": {"model": "m", "input": "x"}})
    path = tmp_path / "win.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line.encode() + b"\r\n\r\n" +
                     line.replace('"a"', '"b"').encode() + b"\r\n")
    r = subprocess.run([KBATCH, "submit", str(path), "--dry-run"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "2 valid requests" in r.stderr


def test_bad_lines_publish_nothing(env, tmp_path):
    """tests/data/bad-lines.jsonl: three bad lines (3, 5, 6) among good ones:
    three FILE:LINE errors, exit 2, nothing published."""
    conf = env.write_conf()
    env.create_topics(conf, partitions=4)
    path = Path(DATA) / "bad-lines.jsonl"
    r = submit(env, conf, str(path), check=False)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    errs = [l for l in r.stderr.splitlines() if l.startswith(f"{path}:")]
    assert [int(l.split(":")[1]) for l in errs] == [3, 5, 6], r.stderr
    assert "not valid JSON" in errs[0]
    assert 'duplicate custom_id "a" (first on line 1)' in errs[1]
    assert "'params.model' is missing" in errs[2]
    assert "3 bad lines" in r.stderr and "nothing published" in r.stderr
    # from standard input too
    r = submit(env, conf, "-", check=False, input=path.read_text())
    assert r.returncode == 2
    assert len([l for l in r.stderr.splitlines() if l.startswith("<stdin>:")]) == 3
    assert items_published(env) == 0
    # usage errors: exit 2, one line
    for args in (["submit"], ["submit", str(path), "--bogus"],
                 ["submit", str(path), "--batch-id", "x", "--idempotency-key", "k"],
                 ["submit", str(path), "--batch-id", "no spaces"],
                 ["submit", str(path), "--completion-window", "soon"],
                 ["submit", str(path), "--metadata", "novalue"],
                 ["submit", str(path), "--format", "csv"],
                 ["submit", str(tmp_path / "missing.jsonl")],
                 ["collect"], ["collect", "bad id!"], ["collect", "b", "--timeout", "x"],
                 ["collect", "b", "--format", "xml"], ["collect", "a", "b"]):
        r = env.kbatch(*args, conf=conf, check=False)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    for cmd in ("submit", "collect"):
        r = env.kbatch(cmd, "--help", check=False)
        assert r.returncode == 0 and r.stdout.startswith(f"usage: kbatch {cmd}")
    # an empty file is not a batch
    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert submit(env, conf, str(tmp_path / "empty.jsonl"), check=False).returncode == 2
    assert items_published(env) == 0


def test_idempotency_key_twice(env, tmp_path):
    """The same submission twice with --idempotency-key: one batch,
    items_total results, one batch.completed. Also twice before any worker
    ran: the items are published twice, the batch still counts each once."""
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, extra=FAST_RETRY)
        env.create_topics(conf, partitions=4)
        path = str(tmp_path / "b.jsonl")
        openai_file(path, 50)
        key = f"nightly-{env.id}"
        first = submit(env, conf, path, "--idempotency-key", key).stdout.strip()
        w = env.worker(conf, env=ROLES)
        evs = batch_events(env, first, settle=0)
        second = submit(env, conf, path, "--idempotency-key", key)
        assert second.stdout.strip() == first
        assert "already known" in second.stderr and "nothing published" in second.stderr
        assert items_published(env) == 50
        evs = batch_events(env, first, settle=3)
        assert [e["type"] for e in evs] == ["batch.completed"]
        assert evs[0]["items_succeeded"] == 50
        env_res = env.consume("results", idle=3, timeout=30)
        assert len([m for m in env_res if json.loads(m.value())["batch_id"] == first]) == 50
        # a different file under the same key is refused
        openai_file(str(tmp_path / "c.jsonl"), 51)
        r = submit(env, conf, str(tmp_path / "c.jsonl"), "--idempotency-key", key, check=False)
        assert r.returncode == 2 and "already exists with 50 items" in r.stderr
        # another key: a different batch id
        other = submit(env, conf, path, "--idempotency-key", key + "-x").stdout.strip()
        assert other != first
        assert w.stop() == 0
        # twice before a worker: the batch is not doubled
        key2 = f"again-{env.id}"
        b2 = submit(env, conf, path, "--idempotency-key", key2).stdout.strip()
        assert submit(env, conf, path, "--idempotency-key", key2).stdout.strip() == b2
        assert items_published(env) == 50 + 50 + 100
        # nothing to collect yet: --no-wait says so, --timeout gives up
        r = env.kbatch("collect", b2, "--no-wait", conf=conf, check=False)
        assert r.returncode == 1 and "is not known" in r.stderr and r.stdout == ""
        t0 = time.time()
        r = env.kbatch("collect", b2, "--timeout", "2s", "-o", str(tmp_path / "t.jsonl"),
                       conf=conf, check=False)
        assert r.returncode == 1 and "timed out" in r.stderr, r.stderr
        assert 2 <= time.time() - t0 < 30
        assert not list(tmp_path.glob("t.jsonl*")), "no file after a timeout"
        w = env.worker(conf, env=ROLES)
        evs = batch_events(env, b2, settle=3)
        assert [e["type"] for e in evs] == ["batch.completed"]
        assert (evs[0]["items_total"], evs[0]["items_succeeded"]) == (50, 50)
        r = env.kbatch("collect", b2, "--timeout", "60s", "-v", conf=conf)
        lines = [json.loads(l) for l in r.stdout.splitlines()]
        assert sorted(l["custom_id"] for l in lines) == sorted(f"req-{i}" for i in range(50))
        assert re.search(r"of batch \S+: 50 kept", r.stderr), r.stderr
        # (each item ran twice: the results topic holds both copies)
        dup = [m for m in env.consume("results", idle=3, timeout=30)
               if json.loads(m.value())["batch_id"] == b2]
        assert len(dup) == 100
        r = env.kbatch("collect", b2, "--no-wait", "--format", "native", conf=conf)
        native = [json.loads(l) for l in r.stdout.splitlines()]
        assert sorted(n["item_index"] for n in native) == list(range(50))
        assert all(n["batch_id"] == b2 and n["status"] == "succeeded" for n in native)
        assert w.stop() == 0


def test_collect_a_batch_ended_by_its_event(env, tmp_path):
    """Four of ten items never got a result (the aggregator expired them
    past the deadline): collect completes on the batch event. The results
    were written ten minutes ago and collect starts before the aggregator
    knows the batch, so it starts reading after them and goes back when the
    event tells when the first result was. A failed item replayed to success
    counts as a success; duplicates are dropped."""
    conf = env.write_conf(extra="aggregator: { commit_interval_ms = 200; "
                                "expiry_grace_ms = 1000; };")
    env.create_topics(conf, partitions=4)
    bid = f"ev-{env.id}"
    past = int(time.time() * 1000) - 600_000

    def res(i, status="succeeded"):
        ok = status == "succeeded"
        return {"batch_id": bid, "item_id": f"req-{i}", "item_index": i, "items_total": 10,
                "model": "gpt-test", "operation": "chat.completions", "status": status,
                "http_status": 200 if ok else 500, "output": {"n": i} if ok else None,
                "error": None if ok else {"code": "server_error", "message": "boom"},
                "attempts": 1, "usage": None, "started_at": None,
                "finished_at": past + i, "latency_ms": None,
                "worker": "test", "callback_url": None, "deadline": past, "metadata": None}
    rs = [res(0, "failed"), res(1), res(2), res(1), res(3, "failed"), res(4), res(5),
          res(0)]  # item 0 replayed to success
    p = Producer({"bootstrap.servers": env.bootstrap, "partitioner": "murmur2_random"})
    for r in rs:
        p.produce(env.topic("results"), key=bid, value=json.dumps(r),
                  timestamp=r["finished_at"] + 5)
    assert p.flush(30) == 0
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    col = subprocess.Popen(collect_cmd(conf, bid, "-o", str(out), "--errors", str(err), "-v",
                                       "--timeout", "90s"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # collect has looked the batch up (unknown) before the aggregator runs
    head = ""
    while "not known to the aggregator yet" not in head:
        line = col.stderr.readline()
        assert line, head
        head += line
    w = env.worker(conf, env={"KBATCH_WORKER_ROLES": "aggregator"}, name="agg")
    stderr = col.stderr.read()  # to its end: collect gives up after 90 s
    col.wait(timeout=30)
    r = subprocess.CompletedProcess(col.args, col.returncode, "", head + stderr)
    assert r.returncode == 0, r.stderr
    assert "first result is older than the start" in r.stderr, r.stderr
    ok, bad = read_jsonl(out), read_jsonl(err)
    assert sorted(l["custom_id"] for l in ok) == ["req-0", "req-1", "req-2", "req-4", "req-5"]
    assert [l["custom_id"] for l in bad] == ["req-3"]
    assert bad[0]["error"] == {"code": "server_error", "message": "boom"}
    assert bad[0]["response"]["status_code"] == 500
    assert "(expired)" in r.stderr, r.stderr
    assert "4 of 10 items have no result" in r.stderr, r.stderr
    assert re.search(r"8 of batch \S+: 6 kept, 1 duplicates", r.stderr), r.stderr
    assert w.stop() == 0


def test_progress_bar_on_a_terminal(tmp_path):
    """A progress bar on stderr when it is a terminal, none otherwise."""
    path = tmp_path / "p.jsonl"
    openai_file(str(path), 20)
    master, slave = pty.openpty()
    p = subprocess.Popen([KBATCH, "submit", str(path), "--dry-run"], stdout=subprocess.PIPE,
                         stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    out, _ = p.communicate(timeout=30)
    buf = b""
    while True:
        r, _, _ = select.select([master], [], [], 0.5)
        if not r:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
    os.close(master)
    assert p.returncode == 0, buf
    assert re.fullmatch(rb"b-[0-9A-Z]{26}\n", out)
    assert b"\r\x1b[K" in buf and b"submit: validating" in buf, buf
    assert b"20 valid requests" in buf
    r = subprocess.run([KBATCH, "submit", str(path), "--dry-run"], capture_output=True,
                       timeout=30)
    assert r.returncode == 0 and b"\r" not in r.stderr and b"validating" not in r.stderr


def test_collect_reads_little_of_a_busy_topic(env, tmp_path):
    """collect of a 10,000-item batch on a results topic holding 1,000,000
    other results reads a small multiple of the batch's own results (the
    count of messages read, from `collect -v`)."""
    total, others = 10_000, 1_000_000
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, extra=FAST_RETRY)
        env.create_topics(conf, partitions=4)
        topic = env.topic("results")
        # 1,000,000 results of 1,000 earlier batches (written an hour ago)
        p = Producer({"bootstrap.servers": env.bootstrap, "linger.ms": 50,
                      "batch.num.messages": 10000, "compression.type": "lz4",
                      "queue.buffering.max.messages": 2_000_000,
                      "partitioner": "murmur2_random"})
        old = int(time.time() * 1000) - 3600_000
        t0 = time.time()
        for i in range(others):
            b = f"old-{i % 1000}"
            v = ('{"batch_id":"%s","item_id":"r-%d","item_index":%d,"items_total":1000,'
                 '"model":"m","status":"succeeded","http_status":200,"output":{"ok":true},'
                 '"error":null}' % (b, i // 1000, i // 1000))
            while True:
                try:
                    p.produce(topic, key=b, value=v, timestamp=old + i // 1000)
                    break
                except BufferError:
                    p.poll(0.05)
            if i % 10000 == 0:
                p.poll(0)
        assert p.flush(120) == 0
        produce_s = time.time() - t0
        ends = env.end_offsets("results", 4)
        assert sum(ends) == others
        # ... already aggregated: the aggregator starts after them
        c = Consumer({"bootstrap.servers": env.bootstrap,
                      "group.id": f"kbatch-aggregator-{env.id}", "enable.auto.commit": False})
        c.commit(offsets=[TopicPartition(topic, q, ends[q]) for q in range(4)], asynchronous=False)
        c.close()
        path = str(tmp_path / "big.jsonl")
        openai_file(path, total)
        batch_id = submit(env, conf, path).stdout.strip()
        w = env.worker(conf, env=ROLES)
        # other batches keep writing results while this one runs
        for i in range(20_000):
            b = f"live-{i % 100}"
            p.produce(topic, key=b, value=('{"batch_id":"%s","item_id":"r-%d","item_index":%d,'
                                           '"items_total":200,"status":"succeeded"}'
                                           % (b, i // 100, i // 100)))
            if i % 1000 == 0:
                p.poll(0)
        assert p.flush(60) == 0
        batch_events(env, batch_id, timeout=300, settle=0)
        out = tmp_path / "out.jsonl"
        t1 = time.time()
        r = env.kbatch("collect", batch_id, "-o", str(out), "-v", "--timeout", "120s",
                       conf=conf, timeout=180)
        collect_s = time.time() - t1
        n = int(re.search(r"messages_read=(\d+)", r.stderr).group(1))
        lines = read_jsonl(out)
        assert len(lines) == total
        assert len({l["custom_id"] for l in lines}) == total
        assert total <= n <= 3 * total, r.stderr
        report = (f"collect of a {total}-item batch on a results topic holding "
                  f"{others + 20_000} other results: read {n} messages "
                  f"({n / total:.2f}x the batch's results) in {collect_s:.1f} s; "
                  f"producing the other results took {produce_s:.0f} s")
        print("\n" + report)
        with open(os.path.join(os.environ.get("KBATCH_BUILD", "build"), "collect-read.txt"),
                  "w") as f:
            f.write(report + "\n")
        assert w.stop() == 0


def test_topics_describe_shows_settings(env):
    """`topics describe --json`: each topic's replication factor and
    settings (retention of the DLQs, compaction of batch-state)."""
    conf = env.write_conf()
    env.create_topics(conf, partitions=2)
    d = env.describe(conf)
    for name, t in d.items():
        assert t["replication_factor"] == 1, t
        assert t["config"]["min.insync.replicas"] == "1", t
    assert d[env.topic("items.dlq")]["config"]["retention.ms"] == str(30 * 86400_000)
    assert d[env.topic("batches.dlq")]["config"]["retention.ms"] == str(30 * 86400_000)
    assert d[env.topic("items.retry.1")]["config"]["retention.ms"] == str(7 * 86400_000)
    assert d[env.topic("batch-state")]["config"]["cleanup.policy"] == "compact"
    assert d[env.topic("results")]["config"]["cleanup.policy"] == "delete"


def test_collect_to_a_fifo_keeps_it_a_fifo(env, tmp_path):
    """-o naming something that is not a regular file (a FIFO here, /dev/null
    in real use) is written as it is: the write-to-temp-then-rename used for
    regular files would replace it."""
    import os
    import stat
    import threading
    with FakeModel() as fake:
        conf = env.write_conf(fake.url)
        env.create_topics(conf, partitions=2)
        path = str(tmp_path / "batch.jsonl")
        openai_file(path, 5)
        batch_id = submit(env, conf, path).stdout.strip()
        w = env.worker(conf, env=ROLES)
        fifo = tmp_path / "out.fifo"
        os.mkfifo(fifo)
        got = []
        reader = threading.Thread(target=lambda: got.extend(open(fifo).read().splitlines()))
        reader.start()
        r = subprocess.run(collect_cmd(conf, batch_id, "-o", str(fifo), "--timeout", "120s"),
                           capture_output=True, text=True, timeout=180)
        reader.join(30)
        assert r.returncode == 0, r.stderr
        assert len(got) == 5
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
        assert w.stop() == 0
