"""The priority lane and fairness between batches (SPEC §12, issue 19):
items of kbatch.items.priority are served before a saturating backlog, and
a small batch published behind a large one finishes in seconds."""
import time

import pytest

from conftest import item
from fakes import FakeModel
from test_pipeline import results_until

LATENCY_MS = 100


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def setup(env, fake, n_big):
    r = f'( {{ model = "*"; base_url = "{fake.url}"; max_inflight = 10; }} )'
    conf = env.write_conf(routes=r)
    env.create_topics(conf, partitions=2)
    env.produce("items", [item("big", i, n_big) for i in range(n_big)])
    return conf


def finished(env, batch, n, timeout=60):
    out = results_until(env, lambda o: len({r["item_index"] for r in o
                                            if r["batch_id"] == batch}) >= n, timeout=timeout)
    return {r["item_index"]: r for r in out if r["batch_id"] == batch}


@pytest.mark.parametrize("lane", ["priority", "normal"])
def test_priority_items_overtake_a_saturating_backlog(env, lane):
    """50 items published 3 s into a backlog: on the priority lane they
    finish within a few model latencies; as a new batch on the normal lane
    they get every other call of the route (batches in turn), so a few
    seconds."""
    with FakeModel("--latency-ms", str(LATENCY_MS)) as fake:
        # Priority: 20,000 items, 200 s of work at 10 x 100 ms, more than a
        # route queue holds (worker.route_queue_max 10,000): the worker is
        # full and reads ahead on the items topic. Normal: 4,000 (all
        # fetched: batches take turns among the items a worker holds; see
        # the read-ahead tests below for a batch behind more than that).
        conf = setup(env, fake, 20000 if lane == "priority" else 4000)
        w = env.worker(conf)
        w.wait_assigned()
        time.sleep(3)
        t_pub = int(time.time() * 1000)
        topic = "items.priority" if lane == "priority" else "items"
        env.produce(topic, [item("prio", i, 50) for i in range(50)])
        res = finished(env, "prio", 50, timeout=60)
        assert len(res) == 50
        assert {r["status"] for r in res.values()} == {"succeeded"}
        lat = [r["finished_at"] - t_pub for r in res.values()]
        big = finished(env, "big", 1, timeout=5)
        print(f"{lane} lane under saturation: p50 {pct(lat, 50)} ms, "
              f"p99 {pct(lat, 99)} ms (model latency {LATENCY_MS} ms)")
        # Not the backlog's 200 s (40 s).
        assert pct(lat, 99) < (5000 if lane == "priority" else 15000), lat
        assert len(big) >= 1
        w.stop()


def small_behind(env, n_big, timeout):
    """Publishes a 10-item batch behind n_big items, starts a worker;
    returns ms from its start until the small batch is done."""
    with FakeModel("--latency-ms", str(LATENCY_MS)) as fake:
        conf = setup(env, fake, n_big)
        env.produce("items", [item("small", i, 10) for i in range(10)])
        t0 = int(time.time() * 1000)
        w = env.worker(conf)
        res = finished(env, "small", 10, timeout=timeout)
        assert len(res) == 10, f"{len(res)} of 10 done"
        assert {r["status"] for r in res.values()} == {"succeeded"}
        took = max(r["finished_at"] for r in res.values()) - t0
        print(f"10-item batch behind a {n_big}-item one: done {took} ms after the worker started")
        w.stop()
        return took


def test_small_batch_behind_a_large_one_finishes_in_seconds(env):
    # Batches take turns on the route: ~2 x 10 calls at 10 in flight,
    # not the ~40 s the large batch needs.
    assert small_behind(env, 4000, 60) < 10000


def test_small_batch_behind_a_very_large_one_finishes_in_seconds(env):
    """Read-ahead (worker.read_ahead): 10 items published behind 50,000
    (500 s of work at 10 x 100 ms, five times what the route queue holds)
    start at once: the worker reads past the large batch, deferring its
    items by offset, instead of pausing at the full queue."""
    assert small_behind(env, 50000, 90) < 20000


def test_read_ahead_loses_nothing_and_commits_everything(env):
    """Deferral under heavy churn (a route queue of 40, so most items are
    deferred and read again many times), small batches interleaved: every
    item has exactly one result, the small batches do not wait for the large
    one, and the committed offsets reach the end of every partition."""
    with FakeModel("--latency-ms", "2") as fake:
        r = f'( {{ model = "*"; base_url = "{fake.url}"; max_inflight = 20; }} )'
        conf = env.write_conf(routes=r, worker_extra="route_queue_max = 40;")
        env.create_topics(conf, partitions=2)
        n_big = 6000
        env.produce("items", [item("big", i, n_big) for i in range(n_big)])
        smalls = [f"s{k}" for k in range(20)]
        env.produce("items", [item(b, i, 5) for b in smalls for i in range(5)])
        want = {("big", i) for i in range(n_big)} | {(b, i) for b in smalls for i in range(5)}
        w = env.worker(conf)
        out = results_until(env, lambda o: want <= {(x["batch_id"], x["item_index"]) for x in o},
                            timeout=240)
        got = [(x["batch_id"], x["item_index"]) for x in out]
        assert want <= set(got), f"missing {len(want - set(got))}"
        dups = len(got) - len(set(got))
        assert dups == 0, f"{dups} duplicate results"
        assert {x["status"] for x in out} == {"succeeded"}
        small_done = max(x["finished_at"] for x in out if x["batch_id"] != "big")
        big_done = max(x["finished_at"] for x in out if x["batch_id"] == "big")
        print(f"small batches done {big_done - small_done} ms before the large one")
        assert small_done < big_done
        # Everything is committed: the worker's committed offsets reach the
        # log end of both partitions.
        deadline = time.time() + 30
        while True:
            d = env.describe(conf)[env.topic("items")]
            parts = d["partition_offsets"]
            if all(p["committed"] == p["end_offset"] for p in parts):
                break
            assert time.time() < deadline, parts
            time.sleep(1)
        w.stop()


def test_read_ahead_gives_up_deferred_items_deleted_by_retention(env):
    """Deferred items are only offsets: when retention deletes them before
    they are read again, the worker says so and its committed offset moves
    past them, instead of waiting forever for records that cannot come."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient
    with FakeModel("--latency-ms", "50") as fake:
        r = f'( {{ model = "*"; base_url = "{fake.url}"; max_inflight = 4; }} )'
        conf = env.write_conf(routes=r, worker_extra="route_queue_max = 20;")
        env.create_topics(conf, partitions=1)
        n, cut = 3000, 2000
        env.produce("items", [item("ret", i, n) for i in range(n)])
        w = env.worker(conf)
        results_until(env, lambda o: len(o) >= 40, timeout=60)
        admin = AdminClient({"bootstrap.servers": env.bootstrap})
        fut = admin.delete_records([TopicPartition(env.topic("items"), 0, cut)])
        for f in fut.values():
            f.result(timeout=30)
        out = results_until(env, lambda o: {x["item_index"] for x in o} >= set(range(cut, n)),
                            timeout=120)
        assert {x["item_index"] for x in out} >= set(range(cut, n))
        deadline = time.time() + 60
        while True:
            p = env.describe(conf)[env.topic("items")]["partition_offsets"][0]
            if p["committed"] == p["end_offset"] == n:
                break
            assert time.time() < deadline, p
            time.sleep(1)
        lost = [l for l in w.logs() if "deleted (retention)" in l.get("msg", "")]
        assert lost and lost[0]["level"] == "error", lost
        done_before = {x["item_index"] for x in out if x["item_index"] < cut}
        print(f"{len(done_before)} items below the cut were done before it; {lost[0]['msg']}")
        w.stop()
