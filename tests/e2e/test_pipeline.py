"""The core item pipeline on a real broker, the fake model API and real
kbatch worker processes (issue: core item pipeline)."""
import json
import os
import signal
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from conftest import decode_meta, item
from fakes import FakeModel


def wait_results(env, n, timeout=120):
    res, msgs = env.results(n, timeout=timeout)
    assert len(res) >= n, f"only {len(res)} of {n} results"
    return res, msgs


def results_until(env, done, timeout=120):
    """Reads the results topic from the start until done(results) holds
    (or the timeout passes); returns every result read."""
    from confluent_kafka import Consumer as C
    import uuid
    c = C({"bootstrap.servers": env.bootstrap, "group.id": f"r-{uuid.uuid4().hex[:8]}",
           "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([env.topic("results")])
    out = []
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and not done(out):
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            out.append(json.loads(m.value()))
    finally:
        c.close()
    return out


def wait_items(env, want, timeout=120):
    """Reads results until every item_id in `want` has one; returns all."""
    return results_until(env, lambda out: want <= {r["item_id"] for r in out}, timeout)


def wait_committed(env, topic, parts, want, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = [tp.offset for tp in env.committed(topic, parts)]
        if got == want:
            return got
        time.sleep(0.3)
    return got


def test_thousand_items_two_batches(env):
    with FakeModel("--latency-ms", "5-50") as fake:
        conf = env.write_conf(fake.url)
        env.create_topics(conf, partitions=4)
        items = [item("batch-a", i, 600, metadata={"team": "a"}) for i in range(600)]
        items += [item("batch-b", i, 400, model="text-embed", operation="embeddings",
                       input={"input": f"text {i}"}) for i in range(400)]
        keys = [f"{it['batch_id']}:{it['item_index']}".encode() for it in items]
        hdrs = [[("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
                if i == 7 else None for i in range(len(items))]
        env.produce("items", items, keys=keys, headers=hdrs)
        w = env.worker(conf)
        res, msgs = wait_results(env, 1000)
        time.sleep(1)
        more, _ = env.results(None, timeout=3, idle=2)
        assert len(more) == 1000, "exactly 1,000 results"
        by = {(r["batch_id"], r["item_index"]): r for r in res}
        assert len(by) == 1000
        for (b, i), r in by.items():
            assert r["status"] == "succeeded", r
            assert r["http_status"] == 200
            assert r["error"] is None
            assert r["attempts"] == 1
            assert r["item_id"] == f"req-{i}"
            assert r["items_total"] == (600 if b == "batch-a" else 400)
            assert r["output"]["model"] == r["model"]
            assert r["usage"]["total_tokens"] == r["usage"]["input_tokens"] + r["usage"]["output_tokens"]
            assert r["usage"]["input_tokens"] > 0
            assert r["started_at"] <= r["finished_at"]
            assert r["latency_ms"] == r["finished_at"] - r["started_at"]
            assert r["latency_ms"] >= 5
            assert r["worker"]
            if b == "batch-a":
                assert r["operation"] == "chat.completions"
                assert r["metadata"] == {"team": "a"}
                assert r["output"]["object"] == "chat.completion"
            else:
                assert r["operation"] == "embeddings"
                assert r["metadata"] is None
                assert r["output"]["object"] == "list"
        # results are keyed by batch_id: one batch's results share a partition
        parts = {}
        for m in msgs:
            assert m.key().decode() == json.loads(m.value())["batch_id"]
            parts.setdefault(m.key(), set()).add(m.partition())
        assert all(len(p) == 1 for p in parts.values())
        # traceparent passed to the model and onto the result
        m7 = [m for m in msgs if json.loads(m.value())["item_index"] == 7
              and json.loads(m.value())["batch_id"] == "batch-a"][0]
        assert dict(m7.headers() or [])["traceparent"].startswith(b"00-4bf92f")
        st = fake.stats()
        assert st["by_item"]["batch-a:req-7"]["last_headers"]["traceparent"].startswith("00-4bf92f")
        # the fake saw each item exactly once
        assert len(st["by_item"]) == 1000
        assert all(v["count"] == 1 for v in st["by_item"].values())
        # committed offsets reach the end offsets
        ends = env.end_offsets("items", 4)
        assert wait_committed(env, "items", 4, ends) == ends
        assert w.stop() == 0


def test_request_headers_and_auth(env, tmp_path):
    with FakeModel() as fake:
        keyfile = tmp_path / "key"
        keyfile.write_text("sk-file-123\n")
        routes = f"""(
  {{ model = "env-*"; base_url = "{fake.url}/"; api_key_env = "TEST_KEY";
     headers = {{ X-Team = "ml"; }}; }},
  {{ model = "file-*"; base_url = "{fake.url}"; api_key_file = "{keyfile}";
     operations = {{ custom = "/v1/completions"; }}; default_operation = "custom"; }}
)"""
        conf = env.write_conf(routes=routes)
        env.create_topics(conf, partitions=1)
        env.produce("items", [item("h", 0, 2, model="env-a"), item("h", 1, 2, model="file-b")])
        w = env.worker(conf, env={"TEST_KEY": "sk-env-456"})
        res, _ = wait_results(env, 2)
        st = fake.stats()
        h0 = {k.lower(): v for k, v in st["by_item"]["h:req-0"]["last_headers"].items()}
        h1 = {k.lower(): v for k, v in st["by_item"]["h:req-1"]["last_headers"].items()}
        assert h0["authorization"] == "Bearer sk-env-456"
        assert h0["x-team"] == "ml"
        assert h0["idempotency-key"] == "h:req-0"
        assert h0["kbatch-batch-id"] == "h" and h0["kbatch-item-id"] == "req-0"
        assert h0["kbatch-attempt"] == "1"
        assert h1["authorization"] == "Bearer sk-file-123"
        r1 = [r for r in res if r["item_index"] == 1][0]
        assert r1["operation"] == "custom"
        assert r1["output"]["object"] == "text_completion"
        # the key never reaches the logs
        with open(w.logpath) as f:
            logs = f.read()
        assert "sk-env-456" not in logs and "sk-file-123" not in logs
        assert w.stop() == 0


def test_bad_input_is_isolated(env):
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, worker_extra="max_item_bytes = 4096;")
        env.create_topics(conf, partitions=1)
        good = [item("ok", i, 4) for i in range(4)]
        no_batch = item("x", 0, 1)
        del no_batch["batch_id"]
        values = [good[0],
                  b"this is not json",
                  no_batch,
                  good[1],
                  item("bad", 0, 3, input="a string"),
                  item("bad", 1, 3, content="x" * 8000),          # oversized
                  item("bad", 2, 3, model="no-such-model"),
                  good[2], good[3]]
        env.produce("items", values)
        w = env.worker(conf, env={})
        res, _ = wait_results(env, 7)
        by = {(r["batch_id"], r["item_index"]): r for r in res}
        for i in range(4):
            assert by[("ok", i)]["status"] == "succeeded"
        assert by[("bad", 0)]["status"] == "failed"
        assert by[("bad", 0)]["error"]["code"] == "invalid_item"
        assert "'input' is not a JSON object" in by[("bad", 0)]["error"]["message"]
        assert by[("bad", 1)]["error"]["code"] == "invalid_item"
        assert "over the limit" in by[("bad", 1)]["error"]["message"]
        # the catch-all route matches everything: unknown_model is tested below
        dlq = env.consume("items.dlq", count=2, timeout=30)
        assert len(dlq) == 2
        h = [dict((k, v.decode()) for k, v in m.headers()) for m in dlq]
        assert dlq[0].value() == b"this is not json"
        assert h[0]["kbatch-error-code"] == "deserialization_error"
        assert "not valid JSON" in h[0]["kbatch-error-message"]
        assert h[0]["kbatch-original-topic"] == env.topic("items")
        assert h[0]["kbatch-original-partition"] == "0"
        assert h[0]["kbatch-original-offset"] == "1"
        for k in ("kbatch-attempts", "kbatch-original-timestamp", "kbatch-first-attempt-at", "kbatch-worker"):
            assert k in h[0], k
        assert json.loads(dlq[1].value()) == no_batch
        assert h[1]["kbatch-error-code"] == "invalid_item"
        assert "'batch_id' is missing" in h[1]["kbatch-error-message"]
        # no model call for any bad item
        st = fake.stats()
        assert set(st["by_item"]) == {f"ok:req-{i}" for i in range(4)} | {"bad:req-2"}
        assert w.stop() == 0


def test_unknown_model_and_expired(env):
    with FakeModel() as fake:
        routes = f'( {{ model = "gpt-*"; base_url = "{fake.url}"; }} )'
        conf = env.write_conf(routes=routes)
        env.create_topics(conf, partitions=1)
        past = int(time.time() * 1000) - 1000
        env.produce("items", [item("u", 0, 3, model="claude-x"),
                              item("u", 1, 3, deadline=past),
                              item("u", 2, 3, operation="no-such-op")])
        w = env.worker(conf)
        res, _ = wait_results(env, 3)
        by = {r["item_index"]: r for r in res}
        assert by[0]["status"] == "failed" and by[0]["error"]["code"] == "unknown_model"
        assert by[1]["status"] == "expired" and by[1]["error"]["code"] == "expired"
        assert by[1]["attempts"] == 0
        assert by[2]["status"] == "failed" and by[2]["error"]["code"] == "invalid_item"
        assert fake.stats()["requests_total"] == 0
        assert w.stop() == 0


def test_concurrency_bound(env):
    with FakeModel("--latency-ms", "200") as fake:
        conf = env.write_conf(fake.url, max_inflight=64)
        env.create_topics(conf, partitions=4)
        env.produce("items", [item("c", i, 640) for i in range(640)])
        w = env.worker(conf)
        wait_results(env, 640)
        peak = fake.stats(items=False)["peak_concurrency"]
        assert 32 <= peak <= 64, peak
        assert w.stop() == 0


def test_two_workers_each_item_once(env):
    with FakeModel("--latency-ms", "20-60") as fake:
        conf = env.write_conf(fake.url, max_inflight=50)
        env.create_topics(conf, partitions=4)
        env.produce("items", [item("two", i, 2000) for i in range(2000)])
        w1 = env.worker(conf)
        time.sleep(2)
        w2 = env.worker(conf)
        wait_results(env, 2000, timeout=180)
        st = fake.stats()
        counts = [v["count"] for v in st["by_item"].values()]
        assert len(counts) == 2000
        assert max(counts) == 1, f"{sum(c > 1 for c in counts)} items called twice"
        assert w1.stop() == 0 and w2.stop() == 0


def test_sigterm_drains_and_restart_skips_finished(env):
    with FakeModel("--latency-ms", "1000-2000") as fake:
        conf = env.write_conf(fake.url, max_inflight=500)
        env.create_topics(conf, partitions=4)
        env.produce("items", [item("term", i, 1500) for i in range(1500)])
        w = env.worker(conf)
        deadline = time.time() + 60
        while fake.stats(items=False)["inflight"] < 400 and time.time() < deadline:
            time.sleep(0.1)
        assert fake.stats(items=False)["inflight"] >= 400
        t0 = time.time()
        assert w.stop(signal.SIGTERM, timeout=30) == 0
        assert time.time() - t0 < 10 + 2   # shutdown_drain_ms = 10000
        first, _ = env.results(None, timeout=30, idle=3)
        done_first = {r["item_id"] for r in first}
        assert len(done_first) >= 400
        w2 = env.worker(conf)
        wait_items(env, {f"req-{i}" for i in range(1500)}, timeout=180)
        st = fake.stats()
        again = [k for k in done_first if st["by_item"][f"term:{k}"]["count"] > 1]
        assert not again, f"{len(again)} finished items were called again"
        assert w2.stop() == 0


def test_sigkill_restart_loses_nothing(env):
    with FakeModel("--latency-ms", "50-400") as fake:
        # a killed member keeps its partitions until its session times out
        conf = env.write_conf(fake.url, max_inflight=200,
                              kafka_props={"session.timeout.ms": 6000})
        env.create_topics(conf, partitions=2)
        n = 3000
        env.produce("items", [item("kill", i, n) for i in range(n)])
        w = env.worker(conf)
        deadline = time.time() + 60
        while fake.stats(items=False)["requests_total"] < 1000 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)   # let a commit (every 1 s) with a done-above map happen
        w.stop(signal.SIGKILL)
        committed = env.describe(conf)[env.topic("items")]["partition_offsets"]
        # offset -> item, to know which items the committed state says are done
        item_at = {(m.partition(), m.offset()): json.loads(m.value())["item_id"]
                   for m in env.consume("items", count=n, timeout=60)}
        done = set()
        above = 0
        for p in committed:
            if p["committed"] is None:
                continue
            bits = decode_meta(p["metadata"])
            assert len(bits) == p["done_above"]
            above += len(bits)
            done |= {item_at[(p["partition"], o)] for o in range(0, p["committed"])}
            done |= {item_at[(p["partition"], p["committed"] + i)] for i in bits}
        assert done, "nothing was committed before the kill"
        calls_before = {k: v["count"] for k, v in fake.stats()["by_item"].items()}
        w2 = env.worker(conf)
        res = wait_items(env, {f"req-{i}" for i in range(n)}, timeout=180)
        got = {r["item_id"] for r in res}
        assert got == {f"req-{i}" for i in range(n)}, f"missing {n - len(got)}"
        st = fake.stats()
        recalled = [k for k in done if st["by_item"][f"kill:{k}"]["count"] > calls_before[f"kill:{k}"]]
        assert not recalled, f"{len(recalled)} items marked done were called again"
        dups = len(res) - n
        print(f"duplicates after SIGKILL: {dups} of {n}; {above} offsets were done above the committed ones")
        assert w2.stop() == 0


def rss_peak_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def test_backpressure_no_eviction(env):
    with FakeModel("--latency-ms", "2000") as fake:
        conf = env.write_conf(fake.url, max_inflight=100,
                              kafka_props={"max.poll.interval.ms": 10000,
                                          "session.timeout.ms": 6000})
        env.create_topics(conf, partitions=4)
        env.produce("items", [item("bp", i, 50000) for i in range(50000)])
        w = env.worker(conf)
        t_end = time.time() + 30
        peak = 0
        while time.time() < t_end:
            assert w.proc.poll() is None
            peak = max(peak, fake.stats(items=False)["inflight"])
            time.sleep(0.5)
        rss = rss_peak_kib(w.proc.pid)
        res, _ = env.results(None, timeout=20, idle=3)
        logs = w.logs()
        # librdkafka reports an eviction as "Application maximum poll
        # interval (10000ms) exceeded", and the partitions as lost
        evicted = [l for l in logs if "poll interval" in l.get("msg", "")
                   or l.get("fac") == "MAXPOLL" or l.get("msg", "").startswith("lost")]
        assert not evicted, evicted[:3]
        assert peak <= 100
        # ~100 in flight every 2 s for 30 s
        assert len(res) >= 1000, len(res)
        print(f"backpressure: {len(res)} results in 30 s, peak RSS {rss} KiB")
        with open(os.path.join(os.environ.get("KBATCH_BUILD", "build"), "backpressure-rss.txt"), "w") as f:
            f.write(f"{rss}\n")
        assert w.stop() == 0


def test_large_responses(env):
    """A body over http.max_response_bytes is cut off while reading; a body
    under it but too large for a Kafka message still ends the item (failed,
    response_too_large, without the body) instead of blocking its partition."""
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, extra="http: { max_response_bytes = 4194304; };")
        env.create_topics(conf, partitions=1)
        big = dict(item("big", 0, 3)); big["input"]["fake"] = {"body_bytes": 6 * 1024 * 1024}
        mid = dict(item("big", 1, 3)); mid["input"]["fake"] = {"body_bytes": 2 * 1024 * 1024}
        env.produce("items", [big, mid, item("big", 2, 3)])
        w = env.worker(conf)
        res = {r["item_index"]: r for r in wait_items(env, {"req-0", "req-1", "req-2"}, timeout=60)}
        assert res[0]["status"] == "failed" and res[0]["error"]["code"] == "response_too_large"
        assert "4194304" in res[0]["error"]["message"]
        assert res[1]["status"] == "failed" and res[1]["error"]["code"] == "response_too_large"
        assert "Kafka message" in res[1]["error"]["message"] and res[1]["output"] is None
        assert res[2]["status"] == "succeeded"
        ends = env.end_offsets("items", 1)
        assert wait_committed(env, "items", 1, ends) == ends
        assert w.stop() == 0
