"""Routes under real-world limits: a throttled route does not hold back the
others, requests/tokens per minute hold, concurrency adapts to 429s, a
rotated API key file is picked up (issue: routes and operations)."""
import time

from conftest import item
from fakes import FakeModel
from test_pipeline import results_until

RETRY = 'retry: { backoff_base_ms = 100; inprocess_max_wait_ms = 2000; delays_ms = [2000]; max_attempts = 100; };'


def rate_in_window(results, batch, t_from_ms, t_to_ms):
    n = sum(1 for r in results if r["batch_id"] == batch and r["status"] == "succeeded"
            and t_from_ms <= r["finished_at"] < t_to_ms)
    return n / ((t_to_ms - t_from_ms) / 1000)


def b_rate(env, conf, with_a, fa):
    """Route B's throughput over seconds 2..10 of a run."""
    items = [item("b", i, 6000, model="b-model") for i in range(6000)]
    if with_a:
        items += [item("a", i, 3000, model="a-model") for i in range(3000)]
    env.produce("items", items)
    t0 = int(time.time() * 1000)
    w = env.worker(conf)
    time.sleep(11)
    res = results_until(env, lambda out: False, timeout=4)
    assert w.stop() == 0
    first = min((r["finished_at"] for r in res), default=t0)
    return rate_in_window(res, "b", first + 2000, first + 10000), res, w


def test_throttled_route_does_not_hold_back_others(bootstrap, tmp_path):
    from conftest import Env
    with FakeModel("--latency-ms", "50") as fa, FakeModel("--latency-ms", "50") as fb:
        routes = (f'( {{ model = "a-*"; base_url = "{fa.url}"; max_inflight = 50; }},'
                  f'  {{ model = "b-*"; base_url = "{fb.url}"; max_inflight = 20; }} )')
        base = Env(bootstrap, tmp_path / "base")
        (tmp_path / "base").mkdir()
        conf = base.write_conf(routes=routes, extra=RETRY, max_inflight=200)
        base.create_topics(conf, partitions=4)
        unthrottled, _, _ = b_rate(base, conf, False, fa)
        base.close()

        env = Env(bootstrap, tmp_path / "thr")
        (tmp_path / "thr").mkdir()
        conf = env.write_conf(routes=routes, extra=RETRY, max_inflight=200)
        env.create_topics(conf, partitions=4)
        fa.configure(fail_429=1.0, retry_after=1)
        throttled, res, w = b_rate(env, conf, True, fa)
        print(f"route B: {unthrottled:.0f} items/s alone, {throttled:.0f} items/s "
              f"while route A answers 429")
        assert fa.stats(items=False)["by_status"].get("429", 0) > 0
        assert throttled >= 0.9 * unthrottled, (throttled, unthrottled)
        # A recovers
        fa.configure(fail_429=0.0)
        w2 = env.worker(conf)
        out = results_until(env, lambda o: len({r["item_id"] for r in o
                                                if r["batch_id"] == "a" and r["status"] == "succeeded"}) >= 3000,
                            timeout=90)
        assert len({r["item_id"] for r in out if r["batch_id"] == "a" and r["status"] == "succeeded"}) == 3000
        assert w2.stop() == 0
        env.close()


def test_requests_and_tokens_per_minute(env):
    with FakeModel() as fake:
        routes = (f'( {{ model = "rpm-*"; base_url = "{fake.url}"; requests_per_minute = 600; }},'
                  f'  {{ model = "tpm-*"; base_url = "{fake.url}"; tokens_per_minute = 60000; }} )')
        conf = env.write_conf(routes=routes)
        env.create_topics(conf, partitions=2)
        # each tpm item: ~400 bytes of prompt (about 100+ tokens all told)
        env.produce("items", [item("rpm", i, 1000, model="rpm-x") for i in range(1000)] +
                    [item("tpm", i, 1000, model="tpm-x", content="y" * 400) for i in range(1000)])
        w = env.worker(conf)
        time.sleep(33)
        res = results_until(env, lambda out: False, timeout=3)
        assert w.stop() == 0
        rpm = [r for r in res if r["batch_id"] == "rpm"]
        tpm = [r for r in res if r["batch_id"] == "tpm"]
        t0 = min(r["finished_at"] for r in rpm)
        n30 = sum(1 for r in rpm if r["finished_at"] < t0 + 30000)
        # 600/min for 30 s = 300 (plus at most one second's burst)
        print(f"requests_per_minute 600: {n30} requests in 30 s")
        assert 285 <= n30 <= 315, n30
        t0 = min(r["finished_at"] for r in tpm)
        tok = sum(r["usage"]["total_tokens"] for r in tpm if r["finished_at"] < t0 + 30000)
        print(f"tokens_per_minute 60000: {tok} tokens in 30 s")
        assert 27000 <= tok <= 33000, tok


def test_adaptive_concurrency_settles_near_provider_limit(env):
    with FakeModel("--latency-ms", "100", "--max-concurrency", "20", "--retry-after", "0") as fake:
        routes = f'( {{ model = "*"; base_url = "{fake.url}"; max_inflight = 100; }} )'
        conf = env.write_conf(routes=routes, extra=RETRY, max_inflight=500)
        env.create_topics(conf, partitions=2)
        env.produce("items", [item("ac", i, 3000) for i in range(3000)])
        w = env.worker(conf)
        time.sleep(3)   # let it find the limit
        fake.reset()
        samples = []
        for _ in range(60):
            samples.append(fake.stats(items=False)["inflight"])
            time.sleep(0.1)
        st = fake.stats(items=False)
        ok, thr = st["by_status"].get("200", 0), st["by_status"].get("429", 0)
        samples.sort()
        med = samples[len(samples) // 2]
        print(f"adaptive concurrency: median in flight {med} (provider limit 20), "
              f"{ok} OK and {thr} 429s in 6 s")
        assert 10 <= med <= 20, samples
        assert thr < 0.05 * ok, (thr, ok)
        assert w.stop() == 0


def test_api_key_file_rotation(env, tmp_path):
    with FakeModel() as fake:
        key = tmp_path / "key"
        key.write_text("sk-old\n")
        routes = f'( {{ model = "*"; base_url = "{fake.url}"; api_key_file = "{key}"; }} )'
        conf = env.write_conf(routes=routes)
        env.create_topics(conf, partitions=1)
        env.produce("items", [item("k", 0, 2)])
        w = env.worker(conf)
        results_until(env, lambda out: len(out) >= 1, timeout=30)
        assert fake.stats()["by_item"]["k:req-0"]["last_headers"]["authorization"] == "Bearer sk-old"
        key.write_text("sk-new\n")
        time.sleep(1.5)
        env.produce("items", [item("k", 1, 2)])
        results_until(env, lambda out: len(out) >= 2, timeout=30)
        assert fake.stats()["by_item"]["k:req-1"]["last_headers"]["authorization"] == "Bearer sk-new"
        assert w.stop() == 0


def test_a_slow_call_does_not_hold_back_the_next(env):
    """A call whose answer is slow must not make the next one wait for its
    connection: over plain HTTP libcurl cannot know whether a connection
    still waiting for its first answer could carry HTTP/2 streams, and with
    CURLOPT_PIPEWAIT it queued new calls behind it (a 1.5 s route timeout
    then failed them without a request sent)."""
    with FakeModel() as fake:
        routes = f'( {{ model = "*"; base_url = "{fake.url}"; timeout_ms = 20000; }} )'
        conf = env.write_conf(routes=routes)
        env.create_topics(conf, partitions=1)
        w = env.worker(conf)
        w.wait_assigned()
        slow = item("slow", 0, 2)
        slow["input"]["fake"] = {"latency_ms": 5000}
        env.produce("items", [slow])
        deadline = time.time() + 30
        while fake.stats(items=False)["inflight"] < 1:
            assert time.time() < deadline, "the slow call never started"
            time.sleep(0.05)
        env.produce("items", [item("slow", 1, 2)])
        res = results_until(env, lambda out: len(out) >= 2, timeout=60)
        by = {r["item_index"]: r for r in res}
        assert by[0]["status"] == "succeeded" and by[0]["latency_ms"] >= 5000
        assert by[1]["status"] == "succeeded" and by[1]["attempts"] == 1
        # it ran while the slow one was still waiting for its answer
        assert by[1]["finished_at"] < by[0]["finished_at"], (by[0], by[1])
        assert w.stop() == 0
