"""Issue 18: a fatal error of the items pipeline's idempotent producer (an
unrecoverable sequence or epoch error) no longer ends the worker: the
producer is purged and recreated in process, and the jobs it held publish
again through the new one."""
from collections import Counter

from conftest import item
from fakes import FakeModel
from test_pipeline import wait_items


def test_fatal_producer_error_recreates_the_producer(env):
    with FakeModel("--latency-ms", "50-150") as fake:
        conf = env.write_conf(fake.url, max_inflight=50)
        env.create_topics(conf, partitions=2)
        n = 4000
        env.produce("items", [item("pf", i, n) for i in range(n)])
        # the fatal error (OUT_OF_ORDER_SEQUENCE_NUMBER, injected with
        # rd_kafka_test_fatal_error) 4 s after start: mid-run
        w = env.worker(conf, env={"KBATCH_TEST_PRODUCER_FATAL_MS": "4000"})
        res = wait_items(env, {f"req-{i}" for i in range(n)}, timeout=180)
        got = Counter(r["item_id"] for r in res)
        assert set(got) == {f"req-{i}" for i in range(n)}, f"missing {n - len(got)}"
        assert w.proc.poll() is None, w.tail()
        logs = w.logs()
        msgs = [l.get("msg", "") for l in logs]
        assert any(m.startswith("producer failed:") for m in msgs), w.tail()
        assert "producer recreated" in msgs, w.tail()
        assert not any(m.startswith("fatal error") for m in msgs), w.tail()
        dups = sum(c - 1 for c in got.values())
        print(f"producer recreated: {dups} duplicate results of {n}")
        # what the old producer held unconfirmed, at most what was in flight
        # and publishing (max_inflight 50) when it failed
        assert dups <= 50, dups
        assert w.stop() == 0
