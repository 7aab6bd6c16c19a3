"""Retries: in process, delayed retry tiers, dead letters (issue: retries).
Each item's fate is scripted through the fake model's `fake` trigger."""
import json
import signal
import statistics
import time

from conftest import item
from fakes import FakeModel
from test_pipeline import results_until, wait_items

FAST = 'retry: { max_attempts = 5; inprocess_attempts = 2; backoff_base_ms = 50; ' \
       'backoff_max_ms = 200; inprocess_max_wait_ms = 3000; delays_ms = [1000, 2000]; };'


def fated(batch, i, total, fake, **kw):
    it = item(batch, i, total, **kw)
    it["input"]["fake"] = fake
    return it


def by_index(results):
    return {r["item_index"]: r for r in results}


def test_transient_then_success_and_final_errors(env):
    with FakeModel() as fake:
        routes = f'( {{ model = "*"; base_url = "{fake.url}"; timeout_ms = 1500; }} )'
        conf = env.write_conf(routes=routes, extra=FAST)
        env.create_topics(conf, partitions=2)
        items = [fated("r", 0, 6, {"status": 500, "times": 2}),
                 fated("r", 1, 6, {"status": 429, "times": 1, "retry_after": 2}),
                 fated("r", 2, 6, {"status": 400}),
                 # libcurl itself re-sends once when a reused connection
                 # dies before answering; two resets always reach kbatch
                 fated("r", 3, 6, {"mode": "reset", "times": 2}),
                 fated("r", 4, 6, {"mode": "hang", "times": 1}),
                 item("r", 5, 6)]
        env.produce("items", items)
        w = env.worker(conf)
        res = by_index(wait_items(env, {f"req-{i}" for i in range(6)}, timeout=60))
        assert res[0]["status"] == "succeeded" and res[0]["attempts"] == 3, res[0]
        # 429 with Retry-After: 2 -> the next call no earlier than 2 s later
        assert res[1]["status"] == "succeeded" and res[1]["attempts"] == 2
        assert res[1]["latency_ms"] >= 2000, res[1]["latency_ms"]
        assert res[2]["status"] == "failed" and res[2]["attempts"] == 1
        assert res[2]["error"]["code"] == "client_error" and res[2]["http_status"] == 400
        # reset retried: by kbatch, or (on a reused connection, and that may
        # happen twice) by libcurl itself, which kbatch does not count as an
        # attempt; the fake's count below shows both resets happened
        assert res[3]["status"] == "succeeded" and 1 <= res[3]["attempts"] <= 3, res[3]
        assert res[4]["status"] == "succeeded" and res[4]["attempts"] == 2   # timeout retried
        assert res[5]["status"] == "succeeded" and res[5]["attempts"] == 1
        st = fake.stats()["by_item"]
        assert st["r:req-0"]["attempts"] == ["1", "2", "3"]
        assert st["r:req-0"]["statuses"][:2] == [500, 500]
        assert st["r:req-3"]["count"] == 3 and st["r:req-3"]["statuses"][:2] == ["reset", "reset"]
        # no DLQ copy for any of them
        assert env.consume("items.dlq", count=1, timeout=3) == []
        assert w.stop() == 0


def test_always_failing_goes_through_tiers_to_dlq(env):
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, extra=FAST)
        env.create_topics(conf, partitions=2)
        env.produce("items", [fated("d", 0, 1, {"status": 503})], keys=[b"d:0"],
                    headers=[[("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]])
        w = env.worker(conf)
        t0 = time.time()
        res = wait_items(env, {"req-0"}, timeout=60)
        r = res[0]
        assert r["status"] == "failed"
        assert r["error"]["code"] == "max_attempts_exceeded"
        assert "server_error" in r["error"]["message"] and "503" in r["error"]["message"]
        assert r["attempts"] == 5 and r["http_status"] == 503
        # 2 in process, one tier hop of 1 s, 2 more: at least 1 s
        assert time.time() - t0 >= 1.0
        assert fake.stats()["by_item"]["d:req-0"]["attempts"] == ["1", "2", "3", "4", "5"]
        # the retry copy on tier 1
        tier = env.consume("items.retry.1", count=1, timeout=10)
        assert len(tier) == 1
        th = dict((k, v.decode()) for k, v in tier[0].headers())
        assert th["kbatch-attempts"] == "3" and th["kbatch-error-code"] == "server_error"
        assert int(th["kbatch-not-before"]) >= int(th["kbatch-first-attempt-at"]) + 1000
        assert tier[0].key() == b"d:0"
        # the dead letter: original key and bytes, every header
        dlq = env.consume("items.dlq", count=1, timeout=10)
        assert len(dlq) == 1
        m = dlq[0]
        assert m.key() == b"d:0"
        assert json.loads(m.value())["input"]["fake"] == {"status": 503}
        h = dict((k, v.decode()) for k, v in m.headers())
        assert h["kbatch-attempts"] == "5"
        assert h["kbatch-error-code"] == "max_attempts_exceeded"
        assert h["kbatch-last-error-code"] == "server_error"
        assert "503" in h["kbatch-error-message"] and len(h["kbatch-error-message"]) <= 1024
        assert h["kbatch-original-topic"] == env.topic("items")
        assert h["kbatch-original-offset"] == "0"
        assert h["kbatch-original-partition"] in ("0", "1")
        assert int(h["kbatch-original-timestamp"]) > 0
        assert int(h["kbatch-first-attempt-at"]) <= r["finished_at"]
        assert h["kbatch-worker"] == r["worker"]
        assert h["traceparent"].startswith("00-0af76519")
        assert "kbatch-not-before" not in h
        assert w.stop() == 0


def test_retry_tier_delay_precision(env):
    """200 items through a 2 s tier: how late after kbatch-not-before does
    each start? Measured from the worker's own debug log."""
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, extra='retry: { inprocess_attempts = 0; '
                              'delays_ms = [2000, 5000]; };')
        conf_text = open(conf).read().replace('level = "info"', 'level = "debug"')
        open(conf, "w").write(conf_text)
        env.create_topics(conf, partitions=4)
        n = 200
        env.produce("items", [fated("p", i, n, {"status": 500, "times": 1}) for i in range(n)])
        w = env.worker(conf)
        res = wait_items(env, {f"req-{i}" for i in range(n)}, timeout=60)
        assert all(r["status"] == "succeeded" and r["attempts"] == 2 for r in res)
        late = [int(l["late_ms"]) for l in w.logs() if "late_ms" in l]
        assert len(late) == n, len(late)
        late.sort()
        p50, p99 = late[len(late) // 2], late[int(len(late) * 0.99) - 1]
        print(f"retry tier lateness over {n} items: p50 {p50} ms, p99 {p99} ms, max {late[-1]} ms")
        assert p99 < 100, (p50, p99)
        assert w.stop() == 0


def test_waiting_retry_survives_restart(env):
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, extra='retry: { inprocess_attempts = 0; delays_ms = [4000]; };')
        env.create_topics(conf, partitions=1)
        env.produce("items", [fated("s", 0, 1, {"status": 500, "times": 1})])
        w = env.worker(conf)
        fake.wait_for(lambda st: st["requests_total"] >= 1, timeout=30)
        time.sleep(1)          # the retry copy is on the tier, not due yet
        assert w.stop() == 0
        assert env.results(None, timeout=2, idle=1)[0] == []
        w2 = env.worker(conf)
        res = wait_items(env, {"req-0"}, timeout=60)
        assert res[0]["status"] == "succeeded" and res[0]["attempts"] == 2
        assert w2.stop() == 0


def test_retries_do_not_delay_fresh_items(env):
    """Items failing into a 20 s tier on every partition; fresh items
    published afterwards finish long before the tier is due."""
    with FakeModel("--latency-ms", "10") as fake:
        conf = env.write_conf(fake.url, extra='retry: { inprocess_attempts = 0; delays_ms = [20000]; };')
        env.create_topics(conf, partitions=2)
        env.produce("items", [fated("slow", i, 50, {"status": 503, "times": 1}) for i in range(50)])
        w = env.worker(conf)
        fake.wait_for(lambda st: st["requests_total"] >= 50, timeout=30)
        time.sleep(0.5)
        t0 = time.time()
        env.produce("items", [item("fresh", i, 100) for i in range(100)])
        res = wait_items(env, {f"req-{i}" for i in range(100)}, timeout=30)
        took = time.time() - t0
        fresh = [r for r in res if r["batch_id"] == "fresh"]
        assert len({r["item_id"] for r in fresh}) == 100
        assert took < 10, took          # the tier is due 20 s after the failures
        slow = [r for r in res if r["batch_id"] == "slow"]
        assert slow == [], "retries finished before their tier delay"
        assert w.stop(signal.SIGKILL) is not None


def test_replay_redrives_dead_letters_once(env):
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, extra='retry: { max_attempts = 2; inprocess_attempts = 1; '
                              'backoff_base_ms = 10; delays_ms = [1000]; };')
        env.create_topics(conf, partitions=2)
        n = 20
        # items 0..9 fail twice (503), i.e. every attempt they get; 10..19 are
        # fine; one item of another batch fails too
        items = [fated("rp", i, n, {"status": 503, "times": 2}) if i < 10 else item("rp", i, n)
                 for i in range(n)]
        items.append(fated("other", 0, 1, {"status": 503, "times": 2}))
        env.produce("items", items)
        w = env.worker(conf)
        # Every item of both batches (item ids alone: "other"'s req-0 is
        # not "rp"'s, and batches now take turns, so it may come first).
        first = results_until(env, lambda out: len({(r["batch_id"], r["item_id"]) for r in out}) >= n + 1,
                              timeout=60)
        failed = [r for r in first if r["status"] == "failed" and r["batch_id"] == "rp"]
        assert len(failed) == 10
        assert all(r["error"]["code"] == "max_attempts_exceeded" for r in failed)
        assert len(env.consume("items.dlq", count=11, timeout=20)) == 11
        # a dry run publishes nothing and commits nothing
        r = env.kbatch("replay", "--batch", "rp", "--dry-run", conf=conf)
        assert r.stdout.count("would replay") == 11, r.stdout   # 10 lines + summary
        # the provider is healthy now (the triggers are used up)
        r = env.kbatch("replay", "--batch", "rp", "--code", "server_error", conf=conf)
        assert "replayed 10 dead letters" in r.stdout, r.stdout
        def redriven(out):
            return [x for x in out if x["batch_id"] == "rp" and x["status"] == "succeeded"
                    and int(x["item_id"][4:]) < 10]
        again = redriven(results_until(env, lambda out: len(redriven(out)) >= 10, timeout=60))
        assert len(again) == 10, "replayed items succeed"
        assert all(x["attempts"] == 1 for x in again), "with fresh attempts"
        r2 = env.kbatch("replay", "--batch", "rp", conf=conf)
        assert "replayed 0 dead letters" in r2.stdout, r2.stdout
        # the other batch's dead letter is still there for a later replay
        r3 = env.kbatch("replay", "--batch", "other", "--dry-run", conf=conf)
        assert "would replay 1 dead letters" in r3.stdout, r3.stdout
        assert w.stop() == 0
