"""Operations (SPEC §10): the admin server's /healthz, /readyz and /metrics,
secrets kept out of the logs, W3C trace context on items and results."""
import json
import re
import time
import urllib.error
import urllib.request

from confluent_kafka import Consumer
from prometheus_client.parser import text_string_to_metric_families

from conftest import item
from fakes import FakeModel

TRACEPARENT_RE = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


def admin_port(w, timeout=60):
    """The admin server's port, from the worker's log (it listens on :0)."""
    line = w.wait_log(lambda l: l.get("msg", "").startswith("admin server listening on"),
                      timeout)
    return int(re.search(r":(\d+) \(", line["msg"]).group(1))


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port):
    """/metrics through prometheus_client's parser: {(sample name,
    frozenset of labels): value}."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(m, name, **labels):
    return m.get((name, frozenset(labels.items())), 0)


def total(m, name, **labels):
    """Sum over every series of name whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in m.items() if n == name and want <= set(ls))


def wait_until(pred, timeout, what):
    deadline = time.time() + timeout
    while True:
        r = pred()
        if r:
            return r
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_readyz_false_until_the_group_is_joined(env):
    conf = env.write_conf(admin_listen="127.0.0.1:0")
    env.create_topics(conf, partitions=2)
    # A member that only speaks the "range" assignor holds the group: kbatch
    # (cooperative-sticky) cannot join it until that member leaves.
    holder = Consumer({"bootstrap.servers": env.bootstrap, "group.id": env.group,
                       "partition.assignment.strategy": "range",
                       "enable.auto.commit": False})
    holder.subscribe([env.topic("items")])
    try:
        wait_until(lambda: holder.poll(0.1) is None and holder.assignment(), 30,
                   "the holder's assignment")
        w = env.worker(conf)
        port = admin_port(w)
        deadline = time.time() + 4
        seen = []
        while time.time() < deadline:
            status, body = get(port, "/readyz")
            assert status == 503, body
            seen.append(body)
            assert get(port, "/healthz")[0] == 200
            holder.poll(0.1)
        assert "not ready: items: no partition assignment yet" in seen[-1], seen[-1]
        assert not any(l.get("msg", "").startswith("assigned") for l in w.logs())
    finally:
        holder.close()
    # The group is free: kbatch joins and becomes ready.
    wait_until(lambda: get(port, "/readyz")[0] == 200, 60, "/readyz 200")
    assert get(port, "/readyz")[1] == "ready\n"
    assert w.wait_assigned(timeout=1)
    m = scrape(port)
    assert val(m, "kbatch_ready") == 1
    assert w.stop() == 0
