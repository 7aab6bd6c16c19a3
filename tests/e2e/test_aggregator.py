"""The aggregator (batch completion) on a real broker: batch events, exactly
once across crashes, duplicates, expiry, inconsistent input, retention, the
1,000,000-item state, and the `status` / `cancel` commands (issue: batch
completion).

Most tests publish ItemResults straight to the results topic (the
aggregator's input), so they control exactly what the aggregator sees; two
run the whole pipeline (items role + aggregator role in one worker). In the
three-batch test the "cancelled half-way" batch gets its `cancelled` results
published directly (exact counts known in advance); the real `kbatch cancel`
through the items role is test_cancelled_half_way_through_the_pipeline."""
import base64
import json
import os
import random
import re
import signal
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from conftest import item
from fakes import FakeModel

ROLES_BOTH = {"KBATCH_WORKER_ROLES": "items,aggregator"}
ROLES_AGG = {"KBATCH_WORKER_ROLES": "aggregator"}


def agg_conf(env, base_url="http://127.0.0.1:8000", commit_ms=200, extra_agg="",
             kafka_props=None, name="worker.conf", instance=None, log_level="info",
             routes=None):
    """A worker.conf whose aggregator commits every commit_ms."""
    worker_extra = f'instance_id = "{instance}";' if instance else ""
    path = env.write_conf(base_url, name=name, kafka_props=kafka_props, routes=routes,
                          worker_extra=worker_extra,
                          extra=f"aggregator: {{ commit_interval_ms = {commit_ms}; {extra_agg} }};")
    if log_level != "info":
        text = open(path).read().replace('level = "info"', f'level = "{log_level}"')
        open(path, "w").write(text)
    return path


def result(batch_id, index, total, status="succeeded", tokens=(10, 5), finished_at=None,
           deadline=None, metadata=None, callback_url=None, code=None):
    """An ItemResult as the items pipeline writes it (kb_codec_result_encode)."""
    ok = status == "succeeded"
    return {
        "batch_id": batch_id, "item_id": f"req-{index}", "item_index": index,
        "items_total": total, "model": "gpt-test", "operation": "chat.completions",
        "status": status, "http_status": 200 if ok else None,
        "output": {"ok": True} if ok else None,
        "error": None if ok else {"code": code or status, "message": status},
        "attempts": 1 if ok else 0,
        "usage": ({"input_tokens": tokens[0], "output_tokens": tokens[1],
                   "total_tokens": tokens[0] + tokens[1]} if tokens else None),
        "started_at": None, "finished_at": finished_at or int(time.time() * 1000),
        "latency_ms": None, "worker": "test", "callback_url": callback_url,
        "deadline": deadline, "metadata": metadata,
    }


def publish_results(env, results):
    env.produce("results", results, keys=[r["batch_id"].encode() for r in results])


class Events:
    """A read_committed reader of the batches topic that accumulates."""

    def __init__(self, env):
        self.c = Consumer({"bootstrap.servers": env.bootstrap,
                           "group.id": f"ev-{uuid.uuid4().hex[:8]}",
                           "auto.offset.reset": "earliest",
                           "enable.auto.commit": False,
                           "isolation.level": "read_committed"})
        self.c.subscribe([env.topic("batches")])
        self.events = []

    def poll(self, seconds):
        end = time.time() + seconds
        while time.time() < end:
            m = self.c.poll(0.2)
            if m is None or m.error():
                continue
            ev = json.loads(m.value())
            assert m.key().decode() == ev["batch_id"]
            self.events.append(ev)

    def wait(self, pred, timeout=90, what="events"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if pred(self.events):
                return self.events
            self.poll(0.5)
        raise AssertionError(f"{what} not seen in {timeout}s: {self.events}")

    def completed(self, batch_id):
        return [e for e in self.events if e["batch_id"] == batch_id
                and e["type"] == "batch.completed"]

    def close(self):
        self.c.close()


@pytest.fixture
def events(env):
    ev = Events(env)
    yield ev
    ev.close()


def status(env, conf, batch_id, json_out=True, check=False):
    args = ["status", batch_id] + (["--json"] if json_out else [])
    r = env.kbatch(*args, conf=conf, check=check)
    if json_out and r.returncode == 0:
        return r.returncode, json.loads(r.stdout)
    return r.returncode, r.stdout


def wait_status(env, conf, batch_id, pred, timeout=60):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        rc, st = status(env, conf, batch_id)
        last = (rc, st)
        if pred(rc, st):
            return st
        time.sleep(0.3)
    raise AssertionError(f"status of {batch_id} never matched: {last}")


def state_records(env, batch_id, partitions=4):
    """Every record of batch_id in batch-state, read_committed: (value bytes
    or None, partition)."""
    c = Consumer({"bootstrap.servers": env.bootstrap, "group.id": f"st-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "isolation.level": "read_committed"})
    c.assign([TopicPartition(env.topic("batch-state"), p, 0) for p in range(partitions)])
    out, eof = [], set()
    deadline = time.time() + 30
    try:
        while len(eof) < partitions and time.time() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                eof.add(m.partition())
                continue
            if m.key().decode() == batch_id:
                out.append((m.value(), m.partition()))
    finally:
        c.close()
    return out


# ---------------------------------------------------------------------------


def test_three_batches_through_the_pipeline(env, events):
    """succeeded, partial_succeeded (some items fail) and cancelled half-way;
    read_committed consumers see exactly one batch.completed each."""
    with FakeModel("--latency-ms", "1-5") as fake:
        conf = agg_conf(env, fake.url)
        env.create_topics(conf, partitions=4)
        md = {"team": "search"}
        items = [item("ok-batch", i, 50, metadata=md, callback_url="https://cb.example/hook")
                 for i in range(50)]
        items += [item("mixed-batch", i, 40,
                       input={"messages": [{"role": "user", "content": f"x {i}"}],
                              **({"fake": {"status": 400}} if i % 4 == 0 else {})})
                  for i in range(40)]
        env.produce("items", items, keys=[f"{it['batch_id']}:{it['item_index']}".encode()
                                          for it in items])
        # cancelled half-way: 15 of 30 items ran, then the batch was
        # cancelled and the other 15 ended `cancelled` (published directly
        # until the items role handles control commands).
        cancelled = [result("cxl-batch", i, 30) for i in range(15)]
        cancelled += [result("cxl-batch", i, 30, status="cancelled", tokens=None,
                             code="cancelled") for i in range(15, 30)]
        publish_results(env, cancelled)
        w = env.worker(conf, env=ROLES_BOTH)
        events.wait(lambda evs: {e["batch_id"] for e in evs} >=
                    {"ok-batch", "mixed-batch", "cxl-batch"}, timeout=120)
        events.poll(3)  # anything extra would show up now
        by = {}
        for e in events.events:
            by.setdefault(e["batch_id"], []).append(e)
        assert all(len(v) == 1 for v in by.values()), events.events
        ok, mixed, cxl = by["ok-batch"][0], by["mixed-batch"][0], by["cxl-batch"][0]
        for e in (ok, mixed, cxl):
            assert e["type"] == "batch.completed"
            assert e["revision"] == 1
            assert e["event_id"] == f"{e['batch_id']}:1"
            assert e["completed_at"] >= e["first_result_at"] > 0
        assert ok["status"] == "succeeded"
        assert (ok["items_total"], ok["items_succeeded"], ok["items_failed"],
                ok["items_cancelled"], ok["items_expired"]) == (50, 50, 0, 0, 0)
        assert ok["metadata"] == md
        assert ok["callback_url"] == "https://cb.example/hook"
        assert mixed["status"] == "partial_succeeded"
        assert (mixed["items_succeeded"], mixed["items_failed"]) == (30, 10)
        assert mixed["metadata"] is None
        assert cxl["status"] == "cancelled"
        assert (cxl["items_total"], cxl["items_succeeded"], cxl["items_cancelled"],
                cxl["items_failed"]) == (30, 15, 15, 0)
        assert cxl["usage"] == {"input_tokens": 150, "output_tokens": 75, "total_tokens": 225}
        # usage sums are the sums over the results
        res, _ = env.results(50 + 40 + 30, timeout=30)
        for b, e in (("ok-batch", ok), ("mixed-batch", mixed)):
            tot = sum((r["usage"] or {}).get("total_tokens", 0) for r in res
                      if r["batch_id"] == b)
            assert e["usage"]["total_tokens"] == tot > 0
        # status agrees with the event
        rc, st = status(env, conf, "mixed-batch")
        assert rc == 0 and st["status"] == "partial_succeeded"
        assert (st["items_done"], st["items_succeeded"], st["items_failed"]) == (40, 30, 10)
        assert w.stop() == 0
        logs = w.logs()
        assert any(l.get("msg") == "batch completed" and l.get("batch_id") == "ok-batch"
                   for l in logs)


def test_cancelled_half_way_through_the_pipeline(env, events):
    """`kbatch cancel` while a batch runs: the items role ends the rest
    `cancelled`, the batch completes `cancelled` with counts that match the
    results."""
    with FakeModel("--latency-ms", "100") as fake:
        routes = f'( {{ model = "*"; base_url = "{fake.url}"; max_inflight = 4; }} )'
        conf = agg_conf(env, fake.url, routes=routes)
        env.create_topics(conf, partitions=4)
        n = 80
        env.produce("items", [item("cx-real", i, n) for i in range(n)],
                    keys=[f"cx-real:{i}".encode() for i in range(n)])
        w = env.worker(conf, env=ROLES_BOTH)
        env.results(20, timeout=60)
        env.kbatch("cancel", "cx-real", "--reason", "half way", conf=conf)
        events.wait(lambda evs: events.completed("cx-real"), timeout=120)
        events.poll(2)
        assert len(events.events) == 1
        e = events.events[0]
        res, _ = env.results(n, timeout=30)
        by = {}
        for r in res:
            by.setdefault(r["item_index"], r["status"])
        assert len(by) == n
        counts = {s: sum(1 for v in by.values() if v == s) for s in ("succeeded", "cancelled")}
        assert e["status"] == "cancelled"
        assert (e["items_succeeded"], e["items_cancelled"], e["items_failed"]) == \
            (counts["succeeded"], counts["cancelled"], 0)
        assert counts["succeeded"] >= 20 and counts["cancelled"] >= 1
        assert w.stop() == 0


def test_avro_results_and_events(env, tmp_path, schema_registry):
    """serde.format = avro, the real registry (Apicurio): the aggregator
    reads Avro results and writes Avro BatchEvents (its state stays JSON)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from test_avro import serde_conf
    reg = schema_registry
    with FakeModel("--latency-ms", "1-3") as fake:
        conf = agg_conf(env, fake.url, log_level="debug")
        with open(conf, "a") as f:
            f.write(serde_conf(reg, more='items_format = "json";') + "\n")
        env.create_topics(conf, partitions=4)
        n = 30
        items = [item("av", i, n, metadata={"f": "avro"},
                      input={"messages": [{"role": "user", "content": "x"}],
                             **({"fake": {"status": 400}} if i % 3 == 0 else {})})
                 for i in range(n)]
        env.produce("items", items, keys=[f"av:{i}".encode() for i in range(n)])
        w = env.worker(conf, env=ROLES_BOTH)
        msgs = env.consume("batches", count=1, timeout=90, isolation="read_committed")
        assert len(msgs) == 1
        assert msgs[0].value()[0] == 0  # Confluent wire format
        des = AvroDeserializer(SchemaRegistryClient({"url": reg.url}))
        ev = des(msgs[0].value(), SerializationContext(env.topic("batches"),
                                                       MessageField.VALUE))
        assert (ev["event_id"], ev["type"], ev["status"], ev["items_total"],
                ev["items_succeeded"], ev["items_failed"]) == \
            ("av:1", "batch.completed", "partial_succeeded", n, 20, 10)
        assert ev["metadata"] == {"f": "avro"}
        assert ev["usage"]["total_tokens"] > 0
        rc, st = status(env, conf, "av")
        assert rc == 0 and st["items_done"] == n
        assert w.stop() == 0
        # the first result waited for its writer schema, then counted
        assert any("writer schema not available" in l.get("msg", "")
                   for l in w.logs())


def test_crash_safety_sigkill_five_times(env, events, tmp_path):
    """A 20,000-item batch while the aggregator is SIGKILLed five times at
    random moments of its work: exactly one batch.completed, counts exact.
    Also measures the transaction commit latency (debug log lines)."""
    conf = agg_conf(env, commit_ms=100, instance="agg-crash", log_level="debug",
                    kafka_props={"session.timeout.ms": 6000,
                                 "heartbeat.interval.ms": 500})
    env.create_topics(conf, partitions=4)
    total = 20000
    rnd = random.Random(7)
    statuses = ["succeeded"] * 17 + ["failed"] * 2 + ["expired"]
    rs = []
    for i in range(total):
        st = rnd.choice(statuses)
        rs.append(result("big", i, total, status=st,
                         tokens=(3, 2) if st == "succeeded" else None))
    rnd.shuffle(rs)
    want = {s: sum(1 for r in rs if r["status"] == s) for s in ("succeeded", "failed", "expired")}
    # small batches on the same partitions complete in between
    small = [result(f"small-{k}", i, 5) for k in range(10) for i in range(5)]
    chunks = [rs[i:i + 500] + small[n * 2:n * 2 + 2]
              for n, i in enumerate(range(0, total, 500))]

    def committed_since(w, n):
        return sum(1 for l in w.logs() if l.get("msg") == "transaction committed") > n

    agg = env.worker(conf, env=ROLES_AGG, name="agg")
    agg.wait_assigned(timeout=60)
    for kill in range(5):
        for _ in range(rnd.randint(2, 5)):
            publish_results(env, chunks.pop(0))
            time.sleep(rnd.uniform(0.05, 0.3))
        # at a random moment once it is working: SIGKILL, restart at once
        agg.wait_log(lambda l: l.get("msg") == "transaction committed", timeout=60)
        time.sleep(rnd.uniform(0, 0.6))
        agg.proc.send_signal(signal.SIGKILL)
        agg.proc.wait()
        agg = env.worker(conf, env=ROLES_AGG, name="agg")
        agg.wait_assigned(timeout=60)
    while chunks:
        publish_results(env, chunks.pop(0))
    publish_results(env, small[2 * (total // 500):])
    events.wait(lambda evs: len(events.completed("big")) >= 1, timeout=240,
                what="big batch completion")
    events.poll(4)
    big = [e for e in events.events if e["batch_id"] == "big"]
    assert len(big) == 1, big
    e = big[0]
    assert e["type"] == "batch.completed" and e["revision"] == 1
    assert (e["items_total"], e["items_succeeded"], e["items_failed"],
            e["items_expired"], e["items_cancelled"]) == \
        (total, want["succeeded"], want["failed"], want["expired"], 0)
    assert e["status"] == "expired"
    assert e["usage"]["total_tokens"] == 5 * want["succeeded"]
    for k in range(10):
        evs = [x for x in events.events if x["batch_id"] == f"small-{k}"]
        assert len(evs) == 1 and evs[0]["items_succeeded"] == 5, (k, evs)
    assert len(events.events) == 11
    rc, st = status(env, conf, "big")
    assert (st["items_done"], st["items_succeeded"]) == (total, want["succeeded"])
    assert agg.stop() == 0
    # every process restored what its predecessor committed
    lat, restores = [], []
    for p in sorted(tmp_path.glob("agg-*.log")):
        for l in open(p):
            if not l.startswith("{"):
                continue
            l = json.loads(l)
            if l.get("msg") == "transaction committed":
                lat.append(int(l["latency_ms"]))
            elif l.get("msg", "").startswith("restored"):
                restores.append(l["msg"])
    assert len(list(tmp_path.glob("agg-*.log"))) == 6
    assert sum(1 for r in restores if not r.startswith("restored 0 ")) >= 5, restores
    lat.sort()
    report = (f"transaction commit latency over {len(lat)} commits: p50 "
              f"{lat[len(lat) // 2]} ms, p99 {lat[len(lat) * 99 // 100]} ms, max {lat[-1]} ms")
    print("\n" + report)
    with open(os.path.join(os.environ.get("KBATCH_BUILD", "build"),
                           "aggregator-commit-latency.txt"), "w") as f:
        f.write(report + "\n")


def test_duplicates_do_not_change_counts(env, events):
    """Every result published twice: counts unchanged, one event."""
    conf = agg_conf(env)
    env.create_topics(conf, partitions=4)
    rs = [result("dup", i, 300, status="failed" if i % 10 == 3 else "succeeded",
                 code="client_error") for i in range(300)]
    copies = rs[:150] + rs[:150] + rs[150:] + list(reversed(rs[150:]))
    agg = env.worker(conf, env=ROLES_AGG, name="agg")
    publish_results(env, copies)
    events.wait(lambda evs: events.completed("dup"), timeout=60)
    # a third copy after completion changes nothing either
    publish_results(env, rs[:20])
    events.poll(3)
    evs = [e for e in events.events if e["batch_id"] == "dup"]
    assert len(evs) == 1, evs
    assert (evs[0]["items_succeeded"], evs[0]["items_failed"]) == (270, 30)
    assert evs[0]["usage"]["total_tokens"] == 300 * 15
    rc, st = status(env, conf, "dup")
    assert (st["items_done"], st["items_succeeded"], st["items_failed"]) == (300, 270, 30)
    assert agg.stop() == 0
    assert any("duplicates" in l.get("msg", "") and " 320 duplicates" in l["msg"]
               for l in agg.logs()), agg.tail()


def spread_batches(env, events, test_env, prefix, total, fail_every, seed, pause):
    """An aggregator (extra environment test_env, commits every 50 ms) fed
    three batches of `total` results, shuffled, published 100 at a time
    `pause` seconds apart (several transactions with content); waits for
    the three events and checks one batch.completed each with exact
    counts. Returns the worker, still running."""
    conf = agg_conf(env, commit_ms=50)
    env.create_topics(conf, partitions=4)
    agg = env.worker(conf, env={**ROLES_AGG, **test_env}, name="agg")
    agg.wait_assigned(timeout=60)
    rs = [result(f"{prefix}-{k}", i, total,
                 status="failed" if i % fail_every == 0 else "succeeded")
          for k in range(3) for i in range(total)]
    random.Random(seed).shuffle(rs)
    for n in range(0, len(rs), 100):
        publish_results(env, rs[n:n + 100])
        time.sleep(pause)
    events.wait(lambda evs: all(events.completed(f"{prefix}-{k}") for k in range(3)),
                timeout=120)
    events.poll(3)
    assert agg.proc.poll() is None, agg.tail()
    assert len(events.events) == 3, events.events
    failed = sum(1 for i in range(total) if i % fail_every == 0)
    for e in events.events:
        assert (e["items_succeeded"], e["items_failed"], e["revision"]) == \
            (total - failed, failed, 1), e
    return agg


def test_aborted_transactions_rewind(env, events):
    """Every 2nd transaction aborted (as on an abortable error): the
    aggregator rewinds to the last commit and restores its state; still
    exactly one event per batch and exact counts."""
    # spread over ~3 s: a rewind (seek, re-fetch) takes ~0.5 s, and the
    # test wants several transactions with content, so several aborts
    agg = spread_batches(env, events, {"KBATCH_AGGREGATOR_TEST_TXN_ABORT_EVERY": "2"}, "ab", 400, 7,
                         seed=5, pause=0.25)
    logs = agg.logs()
    assert sum(1 for l in logs if l.get("msg", "").startswith("rewound")) >= 2
    assert agg.stop() == 0


def test_fatal_transactional_error_recreates_the_producer(env, events):
    """A fatal transactional error (injected before every 3rd commit with
    rd_kafka_test_fatal_error, as INVALID_TXN_STATE after a broker outage):
    the aggregator recreates its transactional producer in process, fences
    the failed one, restores its state and rewinds; it never exits, and
    each batch gets exactly one batch.completed with exact counts."""
    agg = spread_batches(env, events, {"KBATCH_AGGREGATOR_TEST_TXN_FATAL_EVERY": "3"}, "fx", 300, 9,
                         seed=7, pause=0.4)
    logs = agg.logs()
    assert sum(1 for l in logs if l.get("msg", "").startswith(
        "transactional producer recreated")) >= 1, agg.tail()
    assert not any(l.get("msg", "").startswith("fatal") for l in logs), agg.tail()
    assert agg.stop() == 0


def test_replayed_item_emits_batch_updated(env, events):
    """A failed item re-driven to success after completion: batch.updated
    with revision 2; a second identical success changes nothing."""
    conf = agg_conf(env)
    env.create_topics(conf, partitions=4)
    agg = env.worker(conf, env=ROLES_AGG, name="agg")
    rs = [result("rp", i, 4) for i in range(3)] + \
        [result("rp", 3, 4, status="failed", code="server_error", tokens=None)]
    publish_results(env, rs)
    events.wait(lambda evs: events.completed("rp"), timeout=60)
    assert events.completed("rp")[0]["status"] == "partial_succeeded"
    publish_results(env, [result("rp", 3, 4)])
    events.wait(lambda evs: any(e["type"] == "batch.updated" for e in evs), timeout=60)
    publish_results(env, [result("rp", 3, 4), result("rp", 1, 4, status="failed")])
    events.poll(3)
    assert [(e["type"], e["revision"], e["status"], e["items_succeeded"], e["items_failed"])
            for e in events.events] == [
        ("batch.completed", 1, "partial_succeeded", 3, 1),
        ("batch.updated", 2, "succeeded", 4, 0)]
    assert events.events[1]["event_id"] == "rp:2"
    assert events.events[1]["updated_at"] >= events.events[0]["completed_at"]
    assert agg.stop() == 0


def test_expiry_and_inconsistent_input(env, events):
    """A batch past deadline + grace with items never published completes
    `expired` (late results change nothing); items disagreeing on
    items_total or out of range count as invalid_item failures; garbage on
    the results topic is logged and skipped."""
    conf = agg_conf(env, extra_agg="expiry_grace_ms = 1500;")
    env.create_topics(conf, partitions=4)
    agg = env.worker(conf, env=ROLES_AGG, name="agg")
    past = int(time.time() * 1000) - 500
    # 6 of 10 results, deadline already passed: missing 4 end expired
    publish_results(env, [result("exp", i, 10, deadline=past) for i in range(6)])
    # a batch whose deadline is far away waits
    publish_results(env, [result("later", i, 10, deadline=past + 3600_000)
                          for i in range(6)])
    # inconsistent: total 6, one item says 7 (in range), one index 9 (out)
    bad = [result("inc", i, 6) for i in range(5)]
    bad += [result("inc", 5, 7), result("inc", 9, 6), result("inc", 9, 6)]
    publish_results(env, bad)
    env.produce("results", [b"\x00not json", {"no": "batch"}], keys=[b"inc", None])
    events.wait(lambda evs: events.completed("exp") and events.completed("inc"), timeout=60)
    exp = events.completed("exp")[0]
    assert (exp["status"], exp["items_succeeded"], exp["items_expired"]) == ("expired", 6, 4)
    inc = events.completed("inc")[0]
    assert (inc["status"], inc["items_total"], inc["items_succeeded"],
            inc["items_failed"], inc["items_invalid"]) == \
        ("partial_succeeded", 6, 5, 2, 2)
    # late results for the expired ones do not change it
    publish_results(env, [result("exp", i, 10) for i in range(6, 10)])
    events.poll(3)
    assert [e["batch_id"] for e in events.events].count("exp") == 1
    assert not events.completed("later")
    rc, st = status(env, conf, "later")
    assert rc == 0 and st["status"] == "in_progress" and st["items_done"] == 6
    assert agg.proc.poll() is None
    logs = agg.logs()
    assert any("unreadable result" in l.get("msg", "") for l in logs)
    assert any("without a usable batch_id" in l.get("msg", "") for l in logs)
    assert sum(1 for l in logs if "invalid_item" in l.get("msg", "")) == 2
    assert agg.stop() == 0


def test_status_before_during_after(env, events):
    conf = agg_conf(env)
    env.create_topics(conf, partitions=4)
    # usage errors
    assert env.kbatch("status", conf=conf, check=False).returncode == 2
    assert env.kbatch("status", "bad id!", conf=conf, check=False).returncode == 2
    assert env.kbatch("status", "a", "b", conf=conf, check=False).returncode == 2
    agg = env.worker(conf, env=ROLES_AGG, name="agg")
    agg.wait_log(lambda l: l.get("msg", "").startswith("assigned"), timeout=60)
    # before
    r = env.kbatch("status", "st-batch", conf=conf, check=False)
    assert r.returncode == 1 and "unknown batch 'st-batch'" in r.stderr
    # during
    t0 = int(time.time() * 1000)
    publish_results(env, [result("st-batch", i, 100, finished_at=t0 + i) for i in range(40)])
    st = wait_status(env, conf, "st-batch", lambda rc, s: rc == 0 and s["items_done"] == 40)
    assert st["status"] == "in_progress"
    assert (st["items_total"], st["items_succeeded"], st["completed_at"]) == (100, 40, None)
    assert st["first_result_at"] == t0 and st["last_result_at"] == t0 + 39
    assert st["usage"]["total_tokens"] == 40 * 15
    rc, text = status(env, conf, "st-batch", json_out=False)
    assert rc == 0 and "in_progress" in text and "40 done" in text
    # after
    publish_results(env, [result("st-batch", i, 100, finished_at=t0 + i) for i in range(40, 100)])
    events.wait(lambda evs: events.completed("st-batch"), timeout=60)
    rc, st = status(env, conf, "st-batch")
    assert rc == 0
    assert (st["status"], st["items_done"], st["items_succeeded"], st["revision"]) == \
        ("succeeded", 100, 100, 1)
    assert st["completed_at"] == t0 + 99
    rc, text = status(env, conf, "st-batch", json_out=False)
    assert text.splitlines()[0] == "batch st-batch: succeeded"
    assert re.search(r"usage\s+1000 input \+ 500 output = 1500 tokens", text), text
    assert agg.stop() == 0


def test_retention_retires_state(env, events):
    conf = agg_conf(env, extra_agg="retention_ms = 1500;")
    env.create_topics(conf, partitions=4)
    agg = env.worker(conf, env=ROLES_AGG, name="agg")
    publish_results(env, [result("ret", i, 3, finished_at=int(time.time() * 1000))
                          for i in range(3)])
    events.wait(lambda evs: events.completed("ret"), timeout=60)
    wait_status(env, conf, "ret", lambda rc, s: rc == 1, timeout=30)
    recs = state_records(env, "ret")
    assert recs and recs[-1][0] is None  # the tombstone
    assert any(l.get("msg") == "batch state retired" for l in agg.logs())
    assert agg.stop() == 0


def test_cancel_command(env):
    conf = agg_conf(env)
    env.create_topics(conf, partitions=4)
    r = env.kbatch("cancel", "b-cx", "--reason", "operator request", conf=conf)
    assert "cancel requested for batch b-cx" in r.stdout
    env.kbatch("cancel", "b-cx2", conf=conf)
    msgs = env.consume("control", count=2, timeout=30)
    cmds = [json.loads(m.value()) for m in msgs]
    assert [m.key() for m in msgs] == [b"b-cx", b"b-cx2"]
    assert cmds[0]["batch_id"] == "b-cx" and cmds[0]["action"] == "cancel"
    assert cmds[0]["reason"] == "operator request"
    assert abs(cmds[0]["requested_at"] - time.time() * 1000) < 60000
    assert cmds[1]["reason"] is None
    assert env.kbatch("cancel", conf=conf, check=False).returncode == 2
    assert env.kbatch("cancel", "no spaces", conf=conf, check=False).returncode == 2
    assert env.kbatch("cancel", "x", "--reason", "r" * 2000, conf=conf,
                      check=False).returncode == 2


def test_fenced_instance_exits_nonzero(env):
    """Two aggregators with the same instance id: the newer one fences the
    older, which stops with exit code 1."""
    conf = agg_conf(env, instance="same-id")
    env.create_topics(conf, partitions=4)
    a = env.worker(conf, env=ROLES_AGG, name="agg")
    a.wait_log(lambda l: l.get("msg", "").startswith("assigned"), timeout=60)
    b = env.worker(conf, env=ROLES_AGG, name="agg")
    b.wait_log(lambda l: "consuming" in l.get("msg", ""), timeout=60)
    publish_results(env, [result("fz", i, 2) for i in range(2)])
    deadline = time.time() + 60
    while a.proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert a.proc.returncode == 1, a.tail()
    assert any("fatal" in l.get("msg", "") for l in a.logs())
    assert b.proc.poll() is None
    assert b.stop() == 0


def test_million_item_state(env, events, tmp_path):
    """A 1,000,000-item batch's state: the record's size, the restore time,
    and that the restored state is the one counted on (measured and printed;
    the bounds are loose)."""
    conf = agg_conf(env, instance="agg-1m")
    env.create_topics(conf, partitions=4)
    total = 1_000_000
    missing = 1000
    rnd = random.Random(3)
    # A state as the aggregator writes it: all but `missing` items terminal,
    # in random order of outcomes (the worst case for compression).
    slots = bytearray(rnd.choices([1, 1, 1, 1, 1, 1, 2, 3], k=total))
    for i in rnd.sample(range(total), missing):
        slots[i] = 0
    holes = [i for i in range(total) if slots[i] == 0]
    packed = bytearray((total + 3) // 4)
    for i, v in enumerate(slots):
        packed[i >> 2] |= v << ((i & 3) * 2)
    ok, failed, ended = slots.count(1), slots.count(2), slots.count(3)
    now = int(time.time() * 1000)
    rec = {"v": 1, "batch_id": "million", "status": "in_progress", "revision": 0,
           "items_total": total, "items_done": total - missing,
           "items_succeeded": ok, "items_failed": failed, "items_cancelled": 0,
           "items_expired": ended, "items_invalid": 0,
           "usage": {"input_tokens": ok * 10, "output_tokens": ok * 5, "total_tokens": ok * 15},
           "first_result_at": now - 3600_000, "last_result_at": now - 1000,
           "completed_at": None, "updated_at": None, "deadline": None,
           "callback_url": None, "metadata": {"size": "1M"}, "extra_indexes": [],
           "statuses": base64.b64encode(bytes(packed)).decode()}
    env.produce("batch-state", [rec], keys=[b"million"], partition=_partition_of(env, conf, "million"))
    agg = env.worker(conf, env=ROLES_AGG, name="agg")
    restore_line = agg.wait_log(lambda l: l.get("msg", "").startswith("restored 1 batches"),
                                timeout=120)
    publish_results(env, [result("million", i, total) for i in holes])
    events.wait(lambda evs: events.completed("million"), timeout=120)
    e = events.completed("million")[0]
    assert (e["items_succeeded"], e["items_failed"], e["items_expired"]) == \
        (ok + missing, failed, ended)
    assert e["usage"]["total_tokens"] == (ok + missing) * 15
    # what the aggregator itself wrote
    recs = state_records(env, "million")
    written = [v for v, p in recs if v is not None]
    size = len(written[-1])
    assert 333_000 < size < 340_000
    # restore time of the aggregator's own record after a clean restart
    assert agg.stop() == 0
    agg2 = env.worker(conf, env=ROLES_AGG, name="agg")
    line2 = agg2.wait_log(lambda l: l.get("msg", "").startswith("restored 1 batches"),
                          timeout=120)
    ms1 = int(re.search(r"in (\d+) ms", restore_line["msg"]).group(1))
    ms2 = int(re.search(r"in (\d+) ms", line2["msg"]).group(1))
    t0 = time.time()
    rc, st = status(env, conf, "million")
    status_s = time.time() - t0
    assert rc == 0 and st["status"] == e["status"] and st["items_done"] == total
    report = (f"1,000,000-item batch state: record {size} bytes; restore "
              f"{ms1} ms (synthetic record), {ms2} ms (after restart: {line2['msg']}); "
              f"`kbatch status` {status_s:.2f} s")
    print("\n" + report)
    with open(os.path.join(os.environ.get("KBATCH_BUILD", "build"), "aggregator-1m.txt"), "w") as f:
        f.write(report + "\n")
    assert ms2 < 30000
    assert agg2.stop() == 0


def _partition_of(env, conf, key, partitions=4):
    """The partition of key under murmur2 (Kafka's Java partitioner, which
    librdkafka's murmur2_random matches for non-empty keys): where the
    aggregator and `kbatch status` look for a batch's state."""
    data = key.encode()
    m, h = 0x5bd1e995, 0x9747b28c ^ len(data)
    for i in range(len(data) // 4):
        k = int.from_bytes(data[i * 4:i * 4 + 4], "little")
        k = (k * m) & 0xffffffff
        k ^= k >> 24
        k = (k * m) & 0xffffffff
        h = ((h * m) & 0xffffffff) ^ k
    tail, rest = len(data) & ~3, len(data) % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xffffffff
    h ^= h >> 13
    h = (h * m) & 0xffffffff
    h ^= h >> 15
    return (h & 0x7fffffff) % partitions
