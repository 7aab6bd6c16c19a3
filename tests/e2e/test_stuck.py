"""Nothing stuck, nothing hung (issue 15), on a real broker: each test is
the regression test of a defect where an item never became terminal, the
loop spun forever, a batch could never complete, or a process exited with
the wrong code. docs/reliability.md lists them with their class of bug."""
import json
import signal
import socket
import subprocess
import time

from conftest import KBATCH, item
from fakes import FakeModel
from test_limits import results_by


def test_item_at_the_size_limit_can_be_retried_and_dead_lettered(env):
    """An item of worker.max_item_bytes (1 MiB) that fails transiently:
    its retry-tier copy (the item plus kbatch's headers) must be produced
    (the producer's message.max.bytes was librdkafka's 1,000,000 and the
    copy was re-queued every 100 ms forever). Then always failing: the DLQ
    copy must be produced too, and the item ends failed."""
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, extra='retry: { max_attempts = 2; inprocess_attempts = 0; '
                                               'delays_ms = [500]; };')
        env.create_topics(conf)
        topics = env.describe(conf)
        for name, want in (("items", "2097152"), ("results", "2097152"),
                           ("batch-state", "2097152"), ("items.retry.1", "2162688"),
                           ("items.dlq", "2162688"), ("batches.dlq", "2162688")):
            assert topics[env.topic(name)]["config"]["max.message.bytes"] == want, name
        big_ok = item("big", 0, 2)
        big_ok["input"]["fake"] = {"status": 503, "times": 1}
        big_ok = sized_item_with(big_ok, 1048576)
        big_bad = item("big", 1, 2)
        big_bad["input"]["fake"] = {"status": 503}
        big_bad = sized_item_with(big_bad, 1048000)
        big_producer(env, [big_ok, big_bad])
        w = env.worker(conf)
        got = results_by(env, {("big", 0), ("big", 1)}, timeout=90)
        assert got[("big", 0)]["status"] == "succeeded", got[("big", 0)]["error"]
        assert got[("big", 0)]["attempts"] == 2
        assert got[("big", 1)]["status"] == "failed"
        assert got[("big", 1)]["error"]["code"] == "max_attempts_exceeded"
        dlq = env.consume("items.dlq", count=1, timeout=30)
        assert len(dlq) == 1 and len(dlq[0].value()) == 1048000
        assert dict(dlq[0].headers())["kbatch-error-code"] == b"max_attempts_exceeded"
        assert w.stop() == 0


def big_producer(env, items):
    """Produces items as compact JSON with a producer that allows messages
    of kafka.message_max_bytes (librdkafka's default is 1,000,000)."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": env.bootstrap, "message.max.bytes": 2097152,
                  "enable.idempotence": True})
    errs = []
    for it in items:
        p.produce(env.topic("items"), value=json.dumps(it, separators=(",", ":")).encode(),
                  on_delivery=lambda err, msg: errs.append(err) if err else None)
    assert p.flush(30) == 0 and not errs, errs


def sized_item_with(it, size):
    """Pads the item's message content so that its compact JSON is `size`
    bytes (after a "fake" trigger was added to its input)."""
    it["input"]["messages"][0]["content"] = ""
    base = len(json.dumps(it, separators=(",", ":")).encode())
    it["input"]["messages"][0]["content"] = "x" * (size - base)
    assert len(json.dumps(it, separators=(",", ":")).encode()) == size
    return it


def test_copies_a_topic_refuses_end_their_items(env):
    """Topics made by other means may allow less than kbatch writes: the
    worker says so at start, and a copy the broker refuses for its size ends
    its item (failed, invalid_item: cannot be retried) or is dropped with an
    error (an unaddressable message's DLQ copy), instead of being produced
    again every 100 ms forever. The items after them are not held back."""
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                       ConfigResource)
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, extra='retry: { inprocess_attempts = 0; '
                                               'delays_ms = [500]; };')
        env.create_topics(conf, partitions=1)
        admin = AdminClient({"bootstrap.servers": env.bootstrap})
        for t in ("items.retry.1", "items.dlq"):
            res = ConfigResource("topic", env.topic(t), incremental_configs=[
                ConfigEntry("max.message.bytes", "500000",
                            incremental_operation=AlterConfigOpType.SET)])
            for f in admin.incremental_alter_configs([res]).values():
                f.result(timeout=30)
        deadline = time.time() + 30  # the broker's metadata cache follows
        while time.time() < deadline:
            cfg = env.describe(conf)
            if all(cfg[env.topic(t)]["config"]["max.message.bytes"] == "500000"
                   for t in ("items.retry.1", "items.dlq")):
                break
            time.sleep(0.5)
        w = env.worker(conf)
        w.wait_log(lambda l: "allows messages of 500000 bytes" in l.get("msg", ""), timeout=60)
        retried = item("cp", 0, 2)
        retried["input"]["fake"] = {"status": 503, "times": 1}
        retried = sized_item_with(retried, 600000)
        junk = b"{" + b"x" * 599999  # not JSON: DLQ only, and too large for it
        big_producer(env, [retried])
        env.produce("items", [junk, item("cp", 1, 2)])
        got = results_by(env, {("cp", 0), ("cp", 1)}, timeout=60)
        r = got[("cp", 0)]
        assert r["status"] == "failed" and r["error"]["code"] == "invalid_item", r["error"]
        assert "cannot be retried" in r["error"]["message"], r["error"]
        assert "server_error" in r["error"]["message"], r["error"]
        assert got[("cp", 1)]["status"] == "succeeded"
        w.wait_log(lambda l: "cannot be dead-lettered" in l.get("msg", ""), timeout=30)
        assert w.stop() == 0


def test_huge_callback_url_and_model_do_not_block_the_aggregator(env):
    """A 900,000-character callback_url (and an over-long model) made the
    batch-state record larger than a Kafka message: every transaction of
    the aggregator aborted and rewound, forever, for every batch of that
    partition. Now such an item fails invalid_item without echoing the
    field, and every batch on the partition completes."""
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, extra='aggregator: { commit_interval_ms = 200; };')
        env.create_topics(conf, partitions=1)
        items = [item("huge", 0, 2, callback_url="https://h.example/" + "a" * 900000),
                 item("huge", 1, 2, model="m" * 300)]
        items += [item(f"ok{b}", i, 5) for b in range(3) for i in range(5)]
        big_producer(env, items)
        w = env.worker(conf, env={"KBATCH_WORKER_ROLES": "items,aggregator"})
        got = results_by(env, {("huge", 0), ("huge", 1)} |
                         {(f"ok{b}", i) for b in range(3) for i in range(5)}, timeout=90)
        for i in (0, 1):
            r = got[("huge", i)]
            assert r["status"] == "failed" and r["error"]["code"] == "invalid_item"
        assert "callback_url" in got[("huge", 0)]["error"]["message"]
        assert got[("huge", 0)]["callback_url"] is None
        assert got[("huge", 1)]["model"] is None
        assert all(len(json.dumps(r)) < 100000 for r in got.values())
        events = env.consume("batches", count=4, timeout=60, isolation="read_committed")
        by = {json.loads(m.value())["batch_id"]: json.loads(m.value()) for m in events}
        assert set(by) == {"huge", "ok0", "ok1", "ok2"}, by.keys()
        assert by["huge"]["items_failed"] == 2
        assert all(by[f"ok{b}"]["items_succeeded"] == 5 for b in range(3))
        assert not any("aborting the transaction" in l.get("msg", "") for l in w.logs())
        assert w.stop() == 0


def test_long_ids_get_whole_idempotency_keys(env):
    """The Idempotency-Key line was cut at 1,024 bytes: a long batch_id +
    item_id (multi-byte characters) lost its end, possibly inside a UTF-8
    sequence, and two items could share a key."""
    with FakeModel() as fake:
        conf = env.write_conf(fake.url)
        env.create_topics(conf)
        bid = "b" * 128
        # 256 characters, 1,021 bytes of UTF-8 each: the key line is 1,167
        # bytes, and the two keys differ only in their last character
        ids = ["\U0001F600" * 255 + c for c in "xy"]
        env.produce("items", [item(bid, i, 2, item_id=ids[i]) for i in range(2)])
        w = env.worker(conf)
        results_by(env, {(bid, 0), (bid, 1)})
        st = fake.stats()
        keys = sorted(v["last_headers"].get("idempotency-key")
                      for v in st["by_item"].values())
        assert keys == sorted(f"{bid}:{i}" for i in ids), keys
        assert w.stop() == 0


def test_waiting_items_expire_at_their_deadline(env):
    """Items waiting for a route held back by its rate limit were expired
    only when admitted (with requests_per_minute = 1, minutes later). Now
    they end `expired` about when their deadline passes."""
    with FakeModel() as fake:
        routes = (f'( {{ model = "*"; base_url = "{fake.url}"; '
                  'requests_per_minute = 1; max_inflight = 10; } )')
        conf = env.write_conf(routes=routes)
        env.create_topics(conf, partitions=1)
        deadline = int(time.time() * 1000) + 4000
        env.produce("items", [item("dl", i, 4, deadline=deadline) for i in range(4)])
        w = env.worker(conf)
        got = results_by(env, {("dl", i) for i in range(4)}, timeout=30)
        statuses = sorted(r["status"] for r in got.values())
        assert statuses == ["expired"] * 3 + ["succeeded"], statuses
        for r in got.values():
            if r["status"] == "expired":
                assert r["finished_at"] - deadline < 2500, r["finished_at"] - deadline
        assert w.stop() == 0


def test_a_failed_call_gives_its_tokens_back(env):
    """An item asking max_tokens = 1,000,000 on a 60,000 tpm route that is
    refused (HTTP 400) held the route's token bucket for ~16 minutes: its
    estimate was charged whole and never given back."""
    with FakeModel() as fake:
        routes = (f'( {{ model = "*"; base_url = "{fake.url}"; '
                  'tokens_per_minute = 60000; } )')
        conf = env.write_conf(routes=routes)
        env.create_topics(conf, partitions=1)
        greedy = item("tk", 0, 21)
        greedy["input"]["max_tokens"] = 1000000
        greedy["input"]["fake"] = {"status": 400}
        env.produce("items", [greedy])
        w = env.worker(conf)
        results_by(env, {("tk", 0)}, timeout=30)
        t0 = time.time()
        env.produce("items", [item("tk", i, 21) for i in range(1, 21)])
        got = results_by(env, {("tk", i) for i in range(1, 21)}, timeout=60)
        rest = [got[("tk", i)] for i in range(1, 21)]
        assert all(r["status"] == "succeeded" for r in rest), \
            [(r["status"], r["error"]) for r in rest]
        assert time.time() - t0 < 30
        assert w.stop() == 0


def test_cancel_matches_batch_ids_exactly(env):
    """Cancelling batch b1 searched held retry messages' raw bytes for
    "b1", so it also released b12's held items before they were due."""
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, extra='retry: { inprocess_attempts = 0; '
                                               'delays_ms = [6000]; };')
        env.create_topics(conf, partitions=1)
        it = item("b12", 0, 1)
        it["input"]["fake"] = {"status": 503, "times": 1}
        env.produce("items", [it])
        w = env.worker(conf)
        # the item waits in retry tier 1 until ~6 s after its first call
        fake.wait_for(lambda s: s["requests_total"] >= 1, timeout=30)
        first = time.time()
        time.sleep(1)
        env.kbatch("cancel", "b1", conf=conf)
        r = results_by(env, {("b12", 0)}, timeout=30)[("b12", 0)]
        assert r["status"] == "succeeded"
        assert r["attempts"] == 2
        assert time.time() - first > 4.5, "b12's held item was released by cancelling b1"
        assert w.stop() == 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_broker_at_start_is_a_runtime_failure(env):
    """A broker that cannot be reached at start exited 2 (configuration
    error) through the control reader's metadata request; it is a runtime
    failure: exit 1, one clear line."""
    env.bootstrap = f"127.0.0.1:{free_port()}"
    conf = env.write_conf("http://127.0.0.1:9")
    r = subprocess.run([KBATCH, "worker", "-c", conf], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "cannot read the control topic" in r.stderr, r.stderr[-2000:]


def test_sigterm_with_publishing_blocked_ends(env):
    """drain() walked the produce-retry queue while re-queuing into it: with
    two or more jobs failing to produce synchronously, it never ended, and
    neither did SIGTERM (nor a rebalance callback). A producer queue of one
    message makes every result but one fail synchronously."""
    with FakeModel(latency_ms=300) as fake:
        conf = env.write_conf(fake.url, kafka_props={"queue.buffering.max.messages": 1,
                                                     "linger.ms": 2000})
        env.create_topics(conf, partitions=1)
        env.produce("items", [item("q", i, 50) for i in range(50)])
        w = env.worker(conf)
        w.wait_log(lambda l: "assigned" in l.get("msg", ""), timeout=60)
        fake.wait_for(lambda s: s["requests_total"] >= 20, timeout=30)
        time.sleep(0.5)
        t0 = time.time()
        w.proc.send_signal(signal.SIGTERM)
        rc = w.proc.wait(timeout=60)
        assert rc == 0, w.tail()
        assert time.time() - t0 < 30
