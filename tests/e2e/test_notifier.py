"""The notifier (batch-completion webhooks) on a real broker (issue:
completion webhooks).

Most tests publish BatchEvents straight to the batches topic (the
notifier's input) and run a worker with roles = ["notifier"], so they do
not depend on the aggregator; the last one runs items + aggregator +
notifier end to end. Signatures are checked with Python's hmac module, never
with kbatch's own code. The receiver is tests/fakes/webhook_receiver.py."""
import hashlib
import hmac
import json
import os
import signal
import sys
import time
import uuid

import pytest

from conftest import item
from fakes import FakeModel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fakes"))
from webhook_receiver import WebhookReceiver  # noqa: E402

SECRET = "whsec_" + uuid.uuid4().hex
ROLES = {"KBATCH_WORKER_ROLES": "notifier", "KBATCH_WEBHOOK_SECRET": SECRET}
PARTS = 4


@pytest.fixture
def rx():
    with WebhookReceiver() as r:
        yield r


def nconf(env, allow_private=True, max_attempts=5, base_ms=200, max_ms=2000,
          timeout_ms=5000, extra="", kafka_props=None, roles=None, name="worker.conf"):
    path = env.write_conf(
        name=name, kafka_props=kafka_props,
        extra=f"""notifier: {{ allow_private = {str(allow_private).lower()};
  max_attempts = {max_attempts}; backoff_base_ms = {base_ms};
  backoff_max_ms = {max_ms}; timeout_ms = {timeout_ms}; {extra} }};""")
    if roles:
        text = open(path).read().replace('roles = ["items"];', f"roles = {roles};")
        open(path, "w").write(text)
    return path


def event(batch_id, callback_url=None, revision=1, status="succeeded", total=3):
    """A BatchEvent as the aggregator writes it (SPEC §2 + callback_url)."""
    return {
        "event_id": f"{batch_id}:{revision}",
        "type": "batch.completed" if revision == 1 else "batch.updated",
        "revision": revision, "batch_id": batch_id, "status": status,
        "items_total": total, "items_succeeded": total, "items_failed": 0,
        "items_cancelled": 0, "items_expired": 0,
        "usage": {"input_tokens": 30, "output_tokens": 15, "total_tokens": 45},
        "first_result_at": 1700000000000, "completed_at": 1700000001000,
        "callback_url": callback_url, "metadata": {"team": "search"},
    }


def publish(env, events):
    """Publishes events (dicts, or raw bytes with a batch id) keyed by
    batch_id; returns the value bytes as published."""
    values = [json.dumps(e, separators=(",", ":")).encode() for e in events]
    env.produce("batches", values, keys=[e["batch_id"].encode() for e in events])
    return values


def verify(req, secret=SECRET, tolerance_s=300):
    """The receiver side of SPEC §8, with the standard library only."""
    sig = req.headers["kbatch-signature"]
    parts = dict(p.split("=", 1) for p in sig.split(","))
    t = int(parts["t"])
    want = hmac.new(secret.encode(), f"{t}.".encode() + req.body,
                    hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], want), f"bad signature {sig}"
    assert abs(time.time() - t) < tolerance_s
    return t


def notifier_group(env):
    return f"kbatch-notifier-{env.id}"


def wait_committed(env, total, timeout=60):
    """Waits until the notifier's committed offsets cover `total` events."""
    deadline = time.time() + timeout
    got = None
    while time.time() < deadline:
        tps = env.committed("batches", PARTS, group=notifier_group(env))
        got = sum(max(tp.offset, 0) for tp in tps)
        if got >= total:
            return got
        time.sleep(0.3)
    raise AssertionError(f"committed {got} of {total} in {timeout}s")


def dlq(env, count, timeout=60):
    msgs = env.consume("batches.dlq", count=count, timeout=timeout)
    assert len(msgs) >= count, f"{len(msgs)} DLQ messages, want {count}"
    return msgs


def headers_of(msg):
    return {k: v.decode() for k, v in (msg.headers() or [])}


def test_delivered_once_signed_with_hostname_and_literal(env, rx):
    """Success: one POST per event, signed, body = the event bytes; events
    without a callback_url are skipped; allow_private lets the loopback
    receiver through, by name (resolved and pinned) and by literal."""
    conf = nconf(env)
    env.create_topics(conf, partitions=PARTS)
    rx.script("/big", [], body_bytes=1 << 20)  # large answers are cut short
    evs = [event("b-name", rx.url("/hook", host="localhost")),
           event("b-literal", rx.url("/hook2")),
           event("b-big", rx.url("/big")),
           event("b-none", None),
           event("b-empty", "")]
    values = publish(env, evs)
    w = env.worker(conf, env=ROLES)
    reqs = rx.wait(lambda rs: len(rs) >= 3, timeout=60)
    wait_committed(env, len(evs))
    assert w.stop() == 0
    reqs = rx.received()
    assert sorted(r.path for r in reqs) == ["/big", "/hook", "/hook2"], reqs
    by_path = {r.path: r for r in reqs}
    for path, ev, val in (("/hook", evs[0], values[0]), ("/hook2", evs[1], values[1]),
                          ("/big", evs[2], values[2])):
        r = by_path[path]
        assert r.method == "POST"
        assert r.headers["content-type"] == "application/json"
        assert r.headers["kbatch-event-id"] == ev["event_id"]
        assert r.headers["kbatch-attempt"] == "1"
        assert r.body == val
        verify(r)
    # A forged or stale signature fails the same check.
    with pytest.raises(AssertionError):
        verify(by_path["/hook"], secret="wrong")
    assert not env.consume("batches.dlq", idle=2, timeout=10)
    # The secret is never logged.
    assert SECRET not in open(w.logpath, encoding="utf-8", errors="replace").read()


def test_500_twice_then_200_three_attempts(env, rx):
    conf = nconf(env)
    env.create_topics(conf, partitions=PARTS)
    rx.script("/flaky", [500, 500])
    rx.script("/later", [503], headers={"Retry-After": "1"})
    publish(env, [event("b-flaky", rx.url("/flaky")), event("b-later", rx.url("/later"))])
    w = env.worker(conf, env=ROLES)
    flaky = rx.wait(lambda rs: any(r.status == 200 for r in rs), path="/flaky", timeout=60)
    later = rx.wait(lambda rs: any(r.status == 200 for r in rs), path="/later", timeout=60)
    wait_committed(env, 2)
    assert w.stop() == 0
    flaky = rx.received("/flaky")
    assert [r.status for r in flaky] == [500, 500, 200]
    assert [r.headers["kbatch-attempt"] for r in flaky] == ["1", "2", "3"]
    for r in flaky:
        verify(r)
        assert r.body == flaky[0].body
    # Backoff grows (base 200 ms, jittered in [d/2, d]).
    assert flaky[1].at - flaky[0].at >= 0.09
    assert flaky[2].at - flaky[1].at >= 0.19
    # Retry-After: 1 is honoured (capped by backoff_max_ms = 2000).
    later = rx.received("/later")
    assert [r.status for r in later] == [503, 200]
    assert later[1].at - later[0].at >= 0.95
    assert not env.consume("batches.dlq", idle=2, timeout=10)


def test_never_2xx_dead_lettered_with_headers(env, rx):
    """Never a 2xx -> DLQ after max_attempts; a redirect is not followed;
    a slow receiver times out."""
    conf = nconf(env, max_attempts=3, timeout_ms=1000)
    env.create_topics(conf, partitions=PARTS)
    rx.script("/down", [], default=503)
    rx.script("/moved", [], default=302, headers={"Location": rx.url("/elsewhere")})
    rx.script("/slow", [], delay_s=3)
    evs = [event("b-down", rx.url("/down")), event("b-moved", rx.url("/moved")),
           event("b-slow", rx.url("/slow"))]
    values = publish(env, evs)
    t0 = int(time.time() * 1000)
    w = env.worker(conf, env=ROLES)
    msgs = dlq(env, 3, timeout=90)
    wait_committed(env, 3)
    assert w.stop() == 0
    assert len(rx.received("/down")) == 3
    assert len(rx.received("/moved")) == 3
    assert len(rx.received("/slow")) == 3
    assert rx.received("/elsewhere") == []
    by_batch = {m.key().decode(): m for m in msgs}
    assert sorted(by_batch) == ["b-down", "b-moved", "b-slow"]
    for ev, val in zip(evs, values):
        m = by_batch[ev["batch_id"]]
        h = headers_of(m)
        assert m.value() == val
        assert h["kbatch-attempts"] == "3"
        assert h["kbatch-error-code"] == "webhook_failed"
        assert h["kbatch-original-topic"] == env.topic("batches")
        assert 0 <= int(h["kbatch-original-partition"]) < PARTS
        assert int(h["kbatch-original-offset"]) >= 0
        assert int(h["kbatch-original-timestamp"]) >= t0 - 60000
        assert int(h["kbatch-first-attempt-at"]) >= t0
        assert h["kbatch-worker"]
        assert "gave up after 3 attempts" in h["kbatch-error-message"]
    assert "HTTP 503" in headers_of(by_batch["b-down"])["kbatch-error-message"]
    assert "HTTP 302" in headers_of(by_batch["b-moved"])["kbatch-error-message"]
    assert "timeout" in headers_of(by_batch["b-slow"])["kbatch-error-message"]
    # The token in a URL path is not logged (only scheme://host:port).
    logs = open(w.logpath, encoding="utf-8", errors="replace").read()
    assert "/down" not in logs


# Each forbidden address class, as a literal and through DNS, and the URL
# checks. Nothing listens at most of these: a refusal must come before any
# connection, and never be retried.
SSRF_CASES = [
    ("loopback", "http://127.0.0.1:{port}/hook", "loopback"),
    ("loopback-name", "http://localhost:{port}/hook", "loopback"),
    ("loopback-odd", "http://2130706433:{port}/hook", "loopback"),
    ("loopback-v6", "http://[::1]:{port}/hook", "loopback"),
    ("mapped-v6", "http://[::ffff:127.0.0.1]:{port}/hook", "loopback"),
    ("nat64", "http://[64:ff9b::a9fe:a9fe]/hook", "metadata"),
    ("unspecified", "http://0.0.0.0:{port}/hook", "unspecified"),
    ("private-10", "http://10.1.2.3/hook", "private"),
    ("private-172", "http://172.16.0.1/hook", "private"),
    ("private-192", "http://192.168.0.1/hook", "private"),
    ("ula", "http://[fd12::1]/hook", "private"),
    ("link-local", "http://169.254.1.1/hook", "link-local"),
    ("link-local-v6", "http://[fe80::1]/hook", "link-local"),
    ("metadata", "http://169.254.169.254/latest/meta-data/", "metadata"),
    ("metadata-v6", "http://[fd00:ec2::254]/", "metadata"),
    ("cgnat", "http://100.64.0.1/hook", "cgnat"),
    ("multicast", "http://224.0.0.1/hook", "multicast"),
    ("multicast-v6", "http://[ff02::1]/hook", "multicast"),
    ("broadcast", "http://255.255.255.255/hook", "broadcast"),
    ("reserved", "http://240.0.0.1/hook", "reserved"),
    ("scheme", "ftp://example.com/hook", "only http and https"),
    ("file", "file:///etc/passwd", "only http and https"),
    ("userinfo", "http://user:pw@example.com/hook", "credentials"),
    ("control", "http://example.com/a\r\nX-Injected: 1", "control character"),
    ("not-a-string", 42, "not a string"),
]


def test_ssrf_refused_by_default(env, rx):
    conf = nconf(env, allow_private=False)
    env.create_topics(conf, partitions=PARTS)
    evs = []
    for name, url, _ in SSRF_CASES:
        ev = event(f"ssrf-{name}")
        ev["callback_url"] = url.format(port=rx.port) if isinstance(url, str) else url
        evs.append(ev)
    values = publish(env, evs)
    w = env.worker(conf, env=ROLES)
    msgs = dlq(env, len(evs), timeout=90)
    wait_committed(env, len(evs))
    assert w.stop() == 0
    assert rx.received() == [], "a refused URL reached the receiver"
    by_batch = {m.key().decode(): m for m in msgs}
    assert len(by_batch) == len(evs)
    for (name, _, reason), val in zip(SSRF_CASES, values):
        m = by_batch[f"ssrf-{name}"]
        h = headers_of(m)
        assert m.value() == val
        assert h["kbatch-error-code"] == "webhook_refused", (name, h)
        assert reason in h["kbatch-error-message"], (name, h["kbatch-error-message"])
        # Never retried: at most the one attempt that resolved the name.
        assert int(h["kbatch-attempts"]) <= 1, (name, h)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_restart_mid_retry_still_delivered(env, rx, sig):
    """The notifier stops while an event waits for its retry; the next one
    delivers it (at least once), and commits."""
    conf = nconf(env, base_ms=4000, max_ms=8000,
                 kafka_props={"session.timeout.ms": 6000,
                              "heartbeat.interval.ms": 500})
    env.create_topics(conf, partitions=PARTS)
    rx.script("/hook", [500])
    publish(env, [event("b-restart", rx.url("/hook"))])
    w1 = env.worker(conf, env=ROLES, name="n1")
    rx.wait(lambda rs: len(rs) >= 1, timeout=60)
    # First attempt failed: the retry is due in 2-4 s. Stop now.
    rc = w1.stop(sig=sig)
    assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    assert [r.status for r in rx.received()] == [500]
    w2 = env.worker(conf, env=ROLES, name="n2")
    reqs = rx.wait(lambda rs: any(r.status == 200 for r in rs), timeout=90)
    wait_committed(env, 1)
    assert w2.stop() == 0
    reqs = rx.received()
    assert [r.status for r in reqs][:2] == [500, 200]
    assert all(r.status == 200 for r in reqs[1:])
    assert all(r.body == reqs[0].body for r in reqs)
    verify(reqs[-1])
    assert not env.consume("batches.dlq", idle=2, timeout=10)


def test_end_to_end_items_aggregator_notifier(env, rx):
    """A whole batch: items -> results -> aggregator -> batches -> webhook."""
    with FakeModel(latency_ms=2) as fake:
        conf = env.write_conf(
            fake.url,
            extra="""notifier: { allow_private = true; backoff_base_ms = 200; };
aggregator: { commit_interval_ms = 200; };""")
        text = open(conf).read().replace('roles = ["items"];',
                                         'roles = ["items", "aggregator", "notifier"];')
        open(conf, "w").write(text)
        env.create_topics(conf, partitions=PARTS)
        bid = f"e2e-{env.id}"
        n = 5
        items = [item(bid, i, n, callback_url=rx.url("/done"),
                      metadata={"team": "search"}) for i in range(n)]
        env.produce("items", items, keys=[f"{bid}:{i}".encode() for i in range(n)])
        w = env.worker(conf, env={"KBATCH_WEBHOOK_SECRET": SECRET})
        reqs = rx.wait(lambda rs: len(rs) >= 1, timeout=120)
        wait_committed(env, 1)
        assert w.stop() == 0
    reqs = rx.received()
    assert len(reqs) == 1, reqs
    r = reqs[0]
    verify(r)
    body = r.json()
    assert r.headers["kbatch-event-id"] == f"{bid}:1" == body["event_id"]
    assert body["type"] == "batch.completed"
    assert body["batch_id"] == bid
    assert body["status"] == "succeeded"
    assert body["items_total"] == n and body["items_succeeded"] == n
    assert body["metadata"] == {"team": "search"}


def test_fatal_producer_error_recreates_the_producer(env, rx):
    """Issue 18: a fatal error of the DLQ producer (injected with
    rd_kafka_test_fatal_error) no longer ends the worker: the producer is
    recreated, and later dead letters go out through the new one."""
    conf = nconf(env, allow_private=False)
    env.create_topics(conf, partitions=PARTS)
    w = env.worker(conf, env={**ROLES, "KBATCH_TEST_PRODUCER_FATAL_MS": "1000"})
    w.wait_log(lambda l: l.get("msg") == "producer recreated", timeout=60)
    evs = [event(f"pf-{i}", callback_url=f"http://127.0.0.1:{rx.port}/hook") for i in range(5)]
    publish(env, evs)
    msgs = dlq(env, len(evs), timeout=90)
    assert {m.key().decode() for m in msgs} == {e["batch_id"] for e in evs}
    assert all(headers_of(m)["kbatch-error-code"] == "webhook_refused" for m in msgs)
    wait_committed(env, len(evs))
    assert w.proc.poll() is None, w.tail()
    assert not any(l.get("msg", "").startswith("fatal error") for l in w.logs()), w.tail()
    assert w.stop() == 0
