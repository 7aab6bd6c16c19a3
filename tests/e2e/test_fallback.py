"""Route names, fallback routes and the circuit breaker (SPEC §12, issue 19):
a route whose endpoint is down sends its items to its fallback (results say
which route answered), the circuit closes again once the endpoint is back,
and a route blocked by a long Retry-After falls back too."""
import time

from conftest import item
from fakes import FakeModel
from test_pipeline import results_until
from test_stuck import free_port

RETRY = 'retry: { backoff_base_ms = 100; inprocess_max_wait_ms = 2000; delays_ms = [2000]; max_attempts = 5; };'


def routes(primary_url, backup_url, **extra):
    kv = "".join(f" {k} = {v};" for k, v in extra.items())
    return (f'( {{ model = "m-*"; name = "primary"; base_url = "{primary_url}";'
            f'     fallback = "backup"; max_inflight = 50;{kv} }},'
            f'  {{ model = "m-*"; name = "backup"; base_url = "{backup_url}"; max_inflight = 50; }} )')


def batch_results(env, batch, n, timeout=90):
    out = results_until(env, lambda o: len({r["item_index"] for r in o
                                            if r["batch_id"] == batch}) >= n, timeout=timeout)
    by_index = {}
    for r in out:
        if r["batch_id"] == batch:
            by_index[r["item_index"]] = r
    assert len(by_index) == n, (batch, len(by_index))
    return list(by_index.values())


def test_down_route_falls_back_and_the_breaker_closes_again(env):
    port = free_port()
    with FakeModel("--latency-ms", "5") as backup:
        conf = env.write_conf(routes=routes(f"http://127.0.0.1:{port}", backup.url,
                                            breaker_failures=3, breaker_open_ms=1000),
                              extra=RETRY)
        env.create_topics(conf, partitions=2)
        env.produce("items", [item("down", i, 200, model="m-1") for i in range(200)])
        w = env.worker(conf)
        res = batch_results(env, "down", 200)
        # Every item succeeded, answered by the fallback.
        assert {r["status"] for r in res} == {"succeeded"}, \
            [r["error"] for r in res if r["status"] != "succeeded"][:3]
        assert {r["route"] for r in res} == {"backup"}
        assert backup.stats(items=False)["requests_total"] >= 200
        # Only the calls already in flight when the circuit opened (up to
        # max_inflight, 50) met the refused connections; they were called
        # again at once on the fallback.
        retried = sum(1 for r in res if r["attempts"] > 1)
        print(f"endpoint down: {retried}/200 items called twice")
        assert retried <= 60, retried
        assert max(r["attempts"] for r in res) <= 2
        w.wait_log(lambda l: "circuit closed -> open" in l.get("msg", ""), timeout=5)

        # The endpoint comes back: after breaker_open_ms a probe closes the
        # circuit and the route takes its items again.
        with FakeModel("--latency-ms", "5", "--port", str(port)) as primary:
            time.sleep(1.5)
            # Half-open: the first item probes; while the probe runs, the
            # others still go to the fallback.
            env.produce("items", [item("probe", 0, 1, model="m-1")])
            assert batch_results(env, "probe", 1)[0]["route"] == "primary"
            env.produce("items", [item("up", i, 200, model="m-1") for i in range(200)])
            res = batch_results(env, "up", 200)
            assert {r["status"] for r in res} == {"succeeded"}
            on_primary = sum(1 for r in res if r["route"] == "primary")
            print(f"after recovery: {on_primary}/200 items on the primary route")
            assert on_primary >= 195, on_primary
            assert primary.stats(items=False)["requests_total"] >= 195
            w.wait_log(lambda l: "circuit half_open -> closed" in l.get("msg", ""), timeout=5)
        assert w.stop() == 0


def test_long_retry_after_falls_back(env):
    with FakeModel("--latency-ms", "5") as primary, FakeModel("--latency-ms", "5") as backup:
        primary.configure(fail_429=1.0, retry_after=120)
        conf = env.write_conf(routes=routes(primary.url, backup.url, fallback_after_ms=5000),
                              extra=RETRY)
        env.create_topics(conf, partitions=2)
        t0 = time.time()
        env.produce("items", [item("ra", i, 100, model="m-1") for i in range(100)])
        w = env.worker(conf)
        res = batch_results(env, "ra", 100, timeout=60)
        took = time.time() - t0
        assert {r["status"] for r in res} == {"succeeded"}
        assert {r["route"] for r in res} == {"backup"}
        # Nobody waited for the 120 s Retry-After, or went to a retry tier.
        assert took < 40, took
        st = primary.stats(items=False)
        assert st["by_status"].get("429", 0) >= 1
        # Once blocked, the primary is not called again.
        assert st["requests_total"] <= 50, st["requests_total"]
        assert w.stop() == 0


def test_route_on_every_result_and_no_fallback_keeps_errors(env):
    """Without a fallback the breaker changes nothing: a 5xx route's items
    fail as before; results name the route that made the last call, and an
    item no route matches has none."""
    with FakeModel("--latency-ms", "1") as fake:
        fake.configure(fail_500=1.0)
        r = (f'( {{ model = "m-*"; name = "solo"; base_url = "{fake.url}"; breaker_failures = 2; }} )')
        conf = env.write_conf(routes=r, extra='retry: { backoff_base_ms = 10; delays_ms = [100]; max_attempts = 2; };')
        env.create_topics(conf, partitions=1)
        env.produce("items", [item("s", i, 5, model="m-1") for i in range(4)] +
                    [item("s", 4, 5, model="other")])
        w = env.worker(conf)
        res = batch_results(env, "s", 5)
        byi = {r["item_index"]: r for r in res}
        for i in range(4):
            assert byi[i]["status"] == "failed"
            assert byi[i]["error"]["code"] == "max_attempts_exceeded"
            assert byi[i]["route"] == "solo"
        assert byi[4]["error"]["code"] == "unknown_model"
        assert byi[4]["route"] is None
        assert w.stop() == 0
