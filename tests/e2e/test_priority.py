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
        # full and has paused the items topic. Normal: 4,000 (all fetched:
        # batches take turns among the items a worker holds; a batch behind
        # more than that waits for the fetch).
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


def test_small_batch_behind_a_large_one_finishes_in_seconds(env):
    with FakeModel("--latency-ms", str(LATENCY_MS)) as fake:
        conf = setup(env, fake, 4000)
        env.produce("items", [item("small", i, 10) for i in range(10)])
        t0 = int(time.time() * 1000)
        w = env.worker(conf)
        res = finished(env, "small", 10, timeout=60)
        assert {r["status"] for r in res.values()} == {"succeeded"}
        took = max(r["finished_at"] for r in res.values()) - t0
        print(f"10-item batch behind a 4000-item one: done {took} ms after the worker started")
        # Batches take turns on the route: ~2 x 10 calls at 10 in flight,
        # not the ~40 s the large batch needs.
        assert took < 10000, took
        w.stop()
