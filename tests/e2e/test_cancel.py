"""Cancellation, item side: `kbatch cancel` ends a batch's unfinished items
`cancelled` without a model call and aborts calls in flight."""
import time

from conftest import item
from fakes import FakeModel
from test_pipeline import results_until


def test_cancel_mid_batch(env):
    with FakeModel("--latency-ms", "1500") as fake:
        conf = env.write_conf(fake.url, max_inflight=40)
        env.create_topics(conf, partitions=2)
        n = 200
        env.produce("items", [item("cx", i, n) for i in range(n)] + [item("keep", 0, 1)])
        w = env.worker(conf)
        fake.wait_for(lambda st: st["inflight"] >= 30, timeout=30)
        r = env.kbatch("cancel", "cx", "--reason", "changed my mind", conf=conf)
        assert r.returncode == 0
        t_cancel = time.time()
        res = results_until(env, lambda out: len({x["item_id"] for x in out if x["batch_id"] == "cx"}) >= n
                            and any(x["batch_id"] == "keep" for x in out), timeout=60)
        took = time.time() - t_cancel
        cx = {x["item_index"]: x for x in res if x["batch_id"] == "cx"}
        assert len(cx) == n
        cancelled = [x for x in cx.values() if x["status"] == "cancelled"]
        done = [x for x in cx.values() if x["status"] == "succeeded"]
        assert len(cancelled) + len(done) == n
        assert len(cancelled) >= n - 80, len(cancelled)
        for x in cancelled:
            assert x["error"]["code"] == "cancelled"
            assert "changed my mind" in x["error"]["message"]
        # calls in flight were aborted: the cancel did not wait for them
        assert took < 1.5 + 3, took
        # no call started after the cancel was seen; items never called have
        # attempts 0, aborted ones 1
        st = fake.stats()
        called = {k for k in st["by_item"] if k.startswith("cx:")}
        assert len(called) <= 40 + len(done), (len(called), len(done))
        assert sum(1 for x in cancelled if x["attempts"] == 0) >= n - 80 - 40
        keep = [x for x in res if x["batch_id"] == "keep"]
        assert keep and keep[0]["status"] == "succeeded"
        assert w.stop() == 0


def test_cancel_before_the_worker_starts(env):
    with FakeModel() as fake:
        conf = env.write_conf(fake.url)
        env.create_topics(conf, partitions=2)
        env.produce("items", [item("early", i, 20) for i in range(20)])
        env.kbatch("cancel", "early", conf=conf)
        w = env.worker(conf)
        res = results_until(env, lambda out: len(out) >= 20, timeout=60)
        assert {x["status"] for x in res} == {"cancelled"}
        assert all(x["attempts"] == 0 for x in res)
        assert fake.stats()["requests_total"] == 0
        assert w.stop() == 0
