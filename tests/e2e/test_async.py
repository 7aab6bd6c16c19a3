"""Async job routes (SPEC §12, issue 19): submit, poll with backoff as a
timer, output from the status answer or a result endpoint, failures,
cancel and deadline while a job runs, against the fake model's job API in
its two shapes."""
import signal
import time

from conftest import item
from fakes import FakeModel
from test_pipeline import results_until

JOBS = """{{ model = "jobs-*"; name = "jobs"; base_url = "{url}"; mode = "async";
   max_inflight = {route_inflight}; {extra}
   async = {{ submit_path = "/jobs/submit"; id_pointer = "/job/id";
     status_path = "/jobs/status/{{id}}"; status_pointer = "/status";
     succeeded = ["succeeded"]; failed = ["failed"]; output_pointer = "/output";
     cancel_path = "/jobs/cancel/{{id}}"; poll_ms = {poll_ms}; poll_max_ms = {poll_max_ms};
     {async_extra} }}; }}"""

GENVR = """{{ model = "gen-*"; name = "genvr"; base_url = "{url}"; mode = "async";
   async = {{ submit_path = "/genvr/generate-batch"; id_pointer = "/data/id";
     status_path = "/genvr/status-batch"; status_method = "POST";
     status_pointer = "/data/status"; succeeded = ["completed"];
     failed = ["failed"]; result_path = "/genvr/response-batch";
     output_pointer = "/data/output"; poll_ms = 200; poll_max_ms = 1000; }}; }}"""


def jobs_route(url, poll_ms=500, poll_max_ms=2000, extra="", async_extra="",
               route_inflight=20):
    return JOBS.format(url=url, poll_ms=poll_ms, poll_max_ms=poll_max_ms,
                       extra=extra, async_extra=async_extra,
                       route_inflight=route_inflight)


def batch(env, b, n, timeout=120):
    out = results_until(env, lambda o: len({r["item_index"] for r in o
                                            if r["batch_id"] == b}) >= n, timeout=timeout)
    res = {r["item_index"]: r for r in out if r["batch_id"] == b}
    assert len(res) == n, (b, len(res))
    return res


def test_200_jobs_of_2s_5pct_failing(env):
    with FakeModel("--job-ms", "2000", "--job-fail", "0.05") as fake:
        conf = env.write_conf(routes=f"( {jobs_route(fake.url)} )", max_inflight=50)
        env.create_topics(conf, partitions=2)
        env.produce("items", [item("aj", i, 200, model="jobs-x") for i in range(200)])
        t0 = time.time()
        w = env.worker(conf)
        res = batch(env, "aj", 200)
        took = time.time() - t0
        st = fake.stats()
        jobs = st["jobs"]["by_item"]
        failed = [r for r in res.values() if r["status"] == "failed"]
        ok = [r for r in res.values() if r["status"] == "succeeded"]
        assert len(ok) + len(failed) == 200
        # About 5% fail, with the provider's message; the others carry the
        # output at output_pointer.
        assert 1 <= len(failed) <= 25, len(failed)
        for r in failed:
            assert r["error"]["code"] == "client_error"
            assert "the job failed (status failed): the job failed (injected)" in r["error"]["message"]
        for r in ok:
            assert r["output"]["job"] == r["job"]["id"]
            assert r["output"]["input"]["messages"][0]["content"] == f"hello {r['item_index']}"
            assert r["route"] == "jobs"
            assert r["attempts"] == 1
            assert r["job"]["wall_ms"] >= 1900
        # One submit per item; polls within a small multiple of job time /
        # poll interval (2 s / 0.5 s = 4; backoff 0.5, 0.75, 1.125 s: 3).
        assert len(jobs) == 200
        assert {v["submits"] for v in jobs.values()} == {1}
        polls = sorted(v["polls"] for v in jobs.values())
        assert polls[-1] <= 8, polls[-10:]
        assert all(r["job"]["polls"] == jobs[f"aj:{r['item_id']}"]["polls"] for r in res.values())
        print(f"200 async jobs of 2 s: done in {took:.1f} s, polls per job "
              f"min {polls[0]} median {polls[100]} max {polls[-1]}, "
              f"{len(failed)} failed")
        # Waiting jobs hold no slot: 200 jobs of 2 s on max_inflight 20
        # would take 20 s if each held one while it ran.
        assert took < 12, took
        assert w.stop() == 0


def test_genvr_three_posts(env):
    with FakeModel("--job-ms", "500") as fake:
        conf = env.write_conf(routes=f"( {GENVR.format(url=fake.url)} )")
        env.create_topics(conf, partitions=1)
        env.produce("items", [item("g", i, 20, model="gen-x") for i in range(20)])
        w = env.worker(conf)
        res = batch(env, "g", 20, timeout=60)
        assert {r["status"] for r in res.values()} == {"succeeded"}
        for r in res.values():
            assert r["output"] == {"job": r["job"]["id"]}
        jobs = fake.stats()["jobs"]["by_item"]
        assert {v["submits"] for v in jobs.values()} == {1}
        assert {v["results"] for v in jobs.values()} == {1}
        assert w.stop() == 0


def test_cancel_and_deadline_while_polling(env):
    with FakeModel("--job-ms", "60000") as fake:
        conf = env.write_conf(routes=f"( {jobs_route(fake.url, poll_ms=200, poll_max_ms=500)} )")
        env.create_topics(conf, partitions=1)
        soon = int(time.time() * 1000) + 4000
        env.produce("items", [item("c", i, 5, model="jobs-x") for i in range(5)] +
                    [item("d", i, 5, model="jobs-x", deadline=soon) for i in range(5)])
        w = env.worker(conf)
        fake.wait_for(lambda s: s["jobs"]["submitted"] >= 10, timeout=30)
        env.kbatch("cancel", "c", "--reason", "test", conf=conf)
        c = batch(env, "c", 5, timeout=30)
        d = batch(env, "d", 5, timeout=30)
        assert {r["status"] for r in c.values()} == {"cancelled"}
        assert {r["status"] for r in d.values()} == {"expired"}
        for r in d.values():
            assert r["finished_at"] - soon < 3000
            assert r["job"]["id"]
        st = fake.wait_for(lambda s: s["jobs"]["cancelled"] >= 10, timeout=10)
        assert st["jobs"]["cancelled"] == 10
        assert w.stop() == 0


def test_job_timeout_after_max_wait(env):
    with FakeModel("--job-ms", "60000") as fake:
        r = jobs_route(fake.url, poll_ms=200, poll_max_ms=500, async_extra="max_wait_ms = 2000;")
        conf = env.write_conf(routes=f"( {r} )")
        env.create_topics(conf, partitions=1)
        env.produce("items", [item("t", 0, 1, model="jobs-x")])
        w = env.worker(conf)
        res = batch(env, "t", 1, timeout=30)[0]
        assert res["status"] == "failed"
        assert res["error"]["code"] == "job_timeout"
        assert 2000 <= res["job"]["wall_ms"] < 5000
        assert w.stop() == 0


def test_sigkill_while_jobs_run_resumes_without_resubmitting(env):
    """A worker SIGKILLed while 200 jobs run: the next one finds their ids
    in the jobs topic and polls them; an item is submitted again only when
    its id was not recorded yet (reported)."""
    with FakeModel("--job-ms", "6000") as fake:
        conf = env.write_conf(routes=f"( {jobs_route(fake.url, poll_ms=500, poll_max_ms=1000)} )",
                              max_inflight=50)
        env.create_topics(conf, partitions=2)
        env.produce("items", [item("k", i, 200, model="jobs-x") for i in range(200)])
        w = env.worker(conf)
        fake.wait_for(lambda s: s["jobs"]["submitted"] >= 200, timeout=60)
        time.sleep(1)  # the records are acknowledged
        assert w.stop(sig=signal.SIGKILL) != 0
        # What the jobs topic holds for the batch when the worker died.
        recorded = {m.key().decode() for m in env.consume("items.jobs", timeout=20, idle=8)
                    if m.value() is not None}
        w2 = env.worker(conf)
        res = batch(env, "k", 200, timeout=120)
        assert {r["status"] for r in res.values()} == {"succeeded"}
        jobs = fake.stats()["jobs"]["by_item"]
        twice = sorted(k for k, v in jobs.items() if v["submits"] > 1)
        rec_twice = [k for k in twice if k.replace(":req-", ":") in recorded]
        print(f"SIGKILL with 200 jobs running: {len(recorded)} ids recorded, "
              f"{len(twice)} items submitted twice ({len(rec_twice)} of them recorded)")
        assert len(recorded) >= 190
        assert rec_twice == []
        assert all(v["submits"] <= 2 for v in jobs.values())
        # Resumed jobs keep their first submit time and id.
        for r in res.values():
            k = f"k:{r['item_id']}"
            if jobs[k]["submits"] == 1:
                assert r["job"]["wall_ms"] >= 5500, r
        # The records are tombstoned after the results.
        time.sleep(3)
        latest = {}
        for m in env.consume("items.jobs", timeout=20, idle=8):
            latest[m.key().decode()] = m.value()
        assert all(v is None for v in latest.values()), \
            sum(1 for v in latest.values() if v is not None)
        assert w2.stop() == 0


def test_ten_thousand_jobs_running_at_once(env):
    """Jobs waiting between polls hold no slot: with max_inflight 1000, one
    worker keeps 10,000 jobs running at the provider; its RSS then."""
    with FakeModel("--job-ms", "600000", "--no-item-stats", "--threads", "4") as fake:
        conf = env.write_conf(routes=f"( {jobs_route(fake.url, poll_ms=20000, poll_max_ms=60000, route_inflight=256)} )",
                              max_inflight=1000, log_level="warn")
        env.create_topics(conf, partitions=4)
        env.produce("items", [item("many", i, 10000, model="jobs-x") for i in range(10000)])
        w = env.worker(conf)
        st = fake.wait_for(lambda s: s["jobs"]["running"] >= 10000, timeout=120, interval=1)
        with open(f"/proc/{w.proc.pid}/status") as f:
            rss_kb = int(next(l for l in f if l.startswith("VmRSS:")).split()[1])
        print(f"10,000 async jobs running at once on one worker "
              f"(max_inflight 1000): RSS {rss_kb / 1024:.0f} MiB")
        assert st["jobs"]["submitted"] == 10000
        assert rss_kb < 512 * 1024
        w.stop(sig=signal.SIGKILL)
