"""Chaos scenarios on a real broker (issue: reliability and security under
faults). Each runs real `kbatch worker` processes (roles items and
aggregator) against the fake model while something goes wrong, and checks
the invariants of chaos.py: every item has a result, each batch exactly
one batch.completed with exact counts, no offset committed past unfinished
work, duplicates counted. The duplicate rates go to
build/chaos-report.jsonl (and are quoted in docs/reliability.md).

Run with tests/chaos/run.sh (make test-chaos): it starts a broker of its
own, because one scenario stops and restarts it."""
import os
import random
import signal
import subprocess
import time

import pytest

from chaos import (Outputs, Sampler, check_invariants, log, produce_items,
                   report_path, wait_all_results, wait_committed_to_end)
from e2e_conftest import ROOT, item
from fakes import FakeModel

KAFKA_SH = os.path.join(ROOT, "tests", "kafka", "kafka.sh")
PARTITIONS = 12
# fast failure detection: a SIGKILLed member leaves the group after 6 s
KAFKA_PROPS = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
# Duplicate results per item the scenarios accept (issue 18): work redone
# after a crash is bounded by what the dead process had in flight plus what
# it finished since its last commit; survivors redo nothing.
DYNAMIC_MAX_RATE = 0.10
STATIC_MAX_RATE = 0.15   # faster than dynamic: more done per second between commits
BROKER_DOWN_MAX_RATE = 0.02
FROZEN_MAX_RATE = 0.02
# The outage scenarios run with the session timeout of deploy/ (60 s,
# docs/deploy.md), longer than the outage as the workers see it: "15 s
# down" was 21-37 s without a broker here (stop and restart included, on a
# loaded machine). With a shorter session (6 s; 30 s and 45 s in slow
# runs), librdkafka declares its session timed out and the assignment lost
# during the outage, and what each worker finished since its last commit
# (up to a second of work, 6-12 % of the items here) runs again elsewhere
# (docs/reliability.md).
OUTAGE_SESSION_MS = 60000


def chaos_conf(env, fake, max_inflight, timeout_ms=30000, retry="", extra="",
               session_ms=KAFKA_PROPS["session.timeout.ms"]):
    routes = (f'( {{ model = "*"; base_url = "{fake.url}"; max_inflight = 100000; '
              f'timeout_ms = {timeout_ms}; connect_timeout_ms = 2000; }} )')
    return env.write_conf(
        routes=routes, max_inflight=max_inflight,
        kafka_props=dict(KAFKA_PROPS, **{"session.timeout.ms": session_ms}),
        commit_interval_ms=1000,    # the default
        admin_listen="127.0.0.1:0",  # for Supervisor.diagnose()
        worker_extra="revoke_drain_ms = 5000;",
        extra=("aggregator: { commit_interval_ms = 300; };\n"
               f"retry: {{ {retry or 'delays_ms = [500, 2000];'} }};\n{extra}"))


def batch_items(prefix, batches, per_batch):
    return [item(f"{prefix}-{b}", i, per_batch)
            for b in range(batches) for i in range(per_batch)]


def start_run(env, supervise, closing, fake, prefix, batches, per_batch, max_inflight,
              slots, static=False, tweak=None, **conf_kw):
    """The common start of a scenario: config, topics, `batches` x
    `per_batch` items (passed through tweak(items) first, if given)
    produced, an output reader, workers started in `slots`, the commit
    sampler. Returns (conf, items, where, outs, sup, sampler)."""
    conf = chaos_conf(env, fake, max_inflight=max_inflight, **conf_kw)
    env.create_topics(conf, partitions=PARTITIONS)
    items = batch_items(prefix, batches, per_batch)
    if tweak:
        tweak(items)
    where = produce_items(env, items)
    outs = closing(Outputs(env, retry_tiers=2))
    sup = supervise(conf, static=static)
    for s in slots:
        sup.start(s)
    sampler = closing(Sampler(env, conf, outs, where, PARTITIONS))
    return conf, items, where, outs, sup, sampler


def finish(name, env, conf, outs, sampler, sup, items, where, t0, timeout=300, extra=None,
           fake=None):
    """Waits for every result and the final commit, stops everything, checks
    the invariants; returns the report."""
    missing = wait_all_results(outs, set(where), timeout)
    assert not missing, (f"{name}: no result for {len(missing)} items, e.g. "
                         f"{sorted(missing)[:5]}\n{sup.diagnose()}")
    ok, com = wait_committed_to_end(env, conf, where, PARTITIONS, timeout=90)
    assert ok, f"{name}: committed offsets never reached the end: {com}\n{sup.diagnose()}"
    # the last batch events (transactions commit every 300 ms)
    batches = {it["batch_id"] for it in items}
    deadline = time.time() + 90
    while time.time() < deadline:
        with outs.lock:
            seen = {e["batch_id"] for e in outs.events if e["type"] == "batch.completed"}
        if batches <= seen:
            break
        time.sleep(0.5)
    time.sleep(1.5)        # a late duplicate event would show here
    sampler.close()
    sup.close()
    outs.close()
    extra = dict(extra or {})
    if fake:   # every model call beyond one per item is money spent twice
        calls = fake.stats(items=False)["requests_total"]
        extra.update(model_calls=calls, extra_model_calls=calls - len(items))
    assert not sampler.violations, \
        f"{name}: offsets committed past unfinished items: {sampler.violations[:5]}"
    assert sampler.samples >= 3, f"{name}: only {sampler.samples} commit samples"
    rep = check_invariants(name, outs, items, where, sup, report_path(),
                           extra=dict(extra, commit_samples=sampler.samples,
                                      committed_items_checked=sampler.covered,
                                      seconds=round(time.time() - t0)))
    return rep


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_sigkill_one_of_three_workers_every_few_seconds(env, supervise, closing, static):
    """Three workers on 12 partitions, 20,000 items; every 3-5 s one
    worker (at random) gets SIGKILL and is started again at once."""
    rnd = random.Random(1)
    with FakeModel("--latency-ms", "30-90", "--threads", "4", "--no-item-stats") as fake:
        conf, items, where, outs, sup, sampler = start_run(
            env, supervise, closing, fake, "kill", 20, 1000, max_inflight=40,
            slots=("w0", "w1", "w2"), static=static)
        t0 = time.time()
        keys = set(where)
        while len(keys - outs.done_keys()) > 1500 and time.time() - t0 < 240:
            time.sleep(rnd.uniform(3, 5))
            victim = rnd.choice(sup.running())
            log(f"SIGKILL {victim} ({len(outs.done_keys())} of {len(keys)} items done)")
            sup.kill(victim)
        assert sup.kills >= 5, f"the run ended after {sup.kills} kills"
        rep = finish("sigkill-" + ("static" if static else "dynamic"),
                     env, conf, outs, sampler, sup, items, where, t0, fake=fake)
        assert not sup.unexpected, sup.unexpected
        assert rep["status_counts"]["succeeded"] == len(items)
        # Work redone is what a dead worker had finished since its last
        # commit (every second; max_inflight 40 at 30-90 ms: ~700 items a
        # second at most) — survivors redo nothing, even with the group
        # rebalancing without pause (dynamic: a kill every 3-5 s, sessions
        # expire after 6 s; docs/reliability.md).
        assert rep["duplicate_rate"] < (STATIC_MAX_RATE if static else DYNAMIC_MAX_RATE), rep
        assert rep["duplicates_per_kill_max"] <= 1000, rep
        assert rep["survivor_duplicates"] <= len(items) // 200, rep


def outage_run(env, supervise, closing, name, outage, max_rate):
    """Two workers on 8,000 items; at 35 % done, outage() (which returns
    the report's extra figures); then every result, no process exit at all
    (a transactional error turned fatal by the outage, INVALID_TXN_STATE
    of librdkafka#3297/#4849, makes the aggregator recreate its producer
    in process), the invariants, and fewer duplicates than max_rate."""
    with FakeModel("--latency-ms", "20-60", "--threads", "4", "--no-item-stats") as fake:
        conf, items, where, outs, sup, sampler = start_run(
            env, supervise, closing, fake, name, 10, 800, max_inflight=30,
            slots=("w0", "w1"), session_ms=OUTAGE_SESSION_MS)
        t0 = time.time()
        keys = set(where)
        while len(outs.done_keys()) < len(keys) * 0.35:
            assert time.time() - t0 < 120, "no progress before the outage"
            time.sleep(0.2)
        log(f"{name}: outage at {len(outs.done_keys())} of {len(keys)} items done")
        extra = outage()
        rep = finish(name, env, conf, outs, sampler, sup, items, where, t0,
                     extra=extra, fake=fake)
        assert not sup.unexpected, sup.unexpected
        assert rep["status_counts"]["succeeded"] == len(items)
        assert rep["duplicate_rate"] < max_rate, rep


def test_broker_down_15s(env, supervise, closing, kafka_run_dir):
    """The broker is stopped (SIGTERM: a controlled shutdown) half-way and
    started again 15 s later. The workers ride it out: nothing is lost, no
    batch event is doubled."""
    def outage():
        e = dict(os.environ, KAFKA_RUN_DIR=kafka_run_dir)
        subprocess.run([KAFKA_SH, "stop"], env=e, check=True, capture_output=True, timeout=120)
        t_down = time.time()
        time.sleep(15)
        log("starting the broker again")
        r = subprocess.run([KAFKA_SH, "start"], env=e, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip() == env.bootstrap, "the broker came back on another port"
        return {"broker_down_s": round(time.time() - t_down)}
    outage_run(env, supervise, closing, "broker-down", outage, BROKER_DOWN_MAX_RATE)


def test_broker_frozen_15s(env, supervise, closing, kafka_run_dir):
    """The broker is frozen (SIGSTOP: connections stay open, nothing is
    answered, requests and transactions time out) half-way and resumed
    (SIGCONT) 15 s later: the same guarantees."""
    def outage():
        with open(os.path.join(kafka_run_dir, "kafka.pid")) as f:
            pid = int(f.read().strip())
        log(f"SIGSTOP the broker (pid {pid})")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(15)
        finally:
            os.kill(pid, signal.SIGCONT)
        log("SIGCONT the broker")
        return {"broker_frozen_s": 15}
    outage_run(env, supervise, closing, "broker-frozen", outage, FROZEN_MAX_RATE)


def test_model_faults(env, supervise, closing):
    """The fake model fails at random: 500s, 429s (Retry-After), connection
    resets, hangs (cut by the route timeout), garbage bodies, and slow
    trickled bodies; a few items fail every time. Retryable failures are
    retried (in process, then through the retry topics); the rest end with
    their SPEC §4 codes; every item ends exactly once as far as the batch
    events count."""
    rnd = random.Random(3)
    with FakeModel("--latency-ms", "5-30", "--threads", "4", "--no-item-stats",
                   "--fail-500", "0.08", "--fail-429", "0.05", "--retry-after", "1",
                   "--fail-reset", "0.03", "--fail-hang", "0.01",
                   "--fail-garbage", "0.01", "--seed", "7") as fake:
        def tweak(items):
            for it in items:
                x = rnd.random()
                if x < 0.03:      # a slow body (8 bytes every 5 ms), within the timeout
                    it["input"]["fake"] = {"mode": "trickle", "chunk_bytes": 8, "interval_ms": 5}
                elif x < 0.032:   # a body slower than the route timeout: timeouts
                    it["input"]["fake"] = {"mode": "trickle", "chunk_bytes": 1, "interval_ms": 100}
                elif x < 0.035:   # fails every time: 4 attempts, then the DLQ
                    it["input"]["fake"] = {"status": 503, "times": 100}
        conf, items, where, outs, sup, sampler = start_run(
            env, supervise, closing, fake, "faults", 8, 750, max_inflight=100,
            slots=("w0", "w1"), tweak=tweak, timeout_ms=1500,
            retry="max_attempts = 4; inprocess_attempts = 1; "
                  "backoff_base_ms = 50; backoff_max_ms = 500; delays_ms = [300, 1000];")
        t0 = time.time()
        rep = finish("model-faults", env, conf, outs, sampler, sup, items, where, t0)
        st = fake.stats(items=False)
        log(f"model-faults: fake injected {st['injected']}, {st['requests_total']} calls")
        with outs.lock:
            results = [r for _, _, r in outs.results]
            dlq = outs.copy_count.get(env.topic("items.dlq"), 0)
        codes = {}
        for r in results:
            c = (r["error"] or {}).get("code", "ok")
            codes[c] = codes.get(c, 0) + 1
        log(f"model-faults: result codes {codes}, DLQ copies {dlq}")
        always = {(it["batch_id"], it["item_index"]) for it in items
                  if it["input"].get("fake", {}).get("status") == 503}
        by = {(r["batch_id"], r["item_index"]): r for r in results}
        for k in always:
            assert by[k]["error"]["code"] == "max_attempts_exceeded", by[k]
        assert dlq >= len(always)
        assert set(codes) <= {"ok", "max_attempts_exceeded", "invalid_response",
                              "timeout", "connection_error", "server_error", "rate_limited"}
        for kind in ("500", "429", "reset", "hang", "garbage", "trickle"):
            assert st["injected"].get(kind, 0) > 0, (kind, st["injected"])
        assert not sup.unexpected, sup.unexpected
        assert rep["duplicate_rate"] <= 0.01, rep


def test_scale_1_3_1(env, supervise, closing):
    """One worker, then three (two join: rebalances), then one again (two
    leave with SIGTERM: drain, commit, leave), all mid-run."""
    with FakeModel("--latency-ms", "30-90", "--threads", "4", "--no-item-stats") as fake:
        conf, items, where, outs, sup, sampler = start_run(
            env, supervise, closing, fake, "scale", 12, 1000, max_inflight=40,
            slots=("w0",))
        t0 = time.time()
        keys = set(where)

        def wait_done(frac, what):
            while len(outs.done_keys()) < len(keys) * frac:
                assert time.time() - t0 < 300, f"stuck before {what}"
                time.sleep(0.2)
        wait_done(0.15, "scaling up")
        log(f"scale 1 -> 3 ({len(outs.done_keys())} done)")
        sup.start("w1")
        sup.start("w2")
        wait_done(0.55, "scaling down")
        log(f"scale 3 -> 1 ({len(outs.done_keys())} done)")
        sup.stop("w1")
        sup.stop("w2")
        rep = finish("scale-1-3-1", env, conf, outs, sampler, sup, items, where, t0)
        assert not sup.unexpected, sup.unexpected
        assert rep["status_counts"]["succeeded"] == len(items)
        # clean rebalances (revoked partitions drained and committed) call
        # no item twice; a little slack for librdkafka#4059
        assert rep["duplicate_rate"] <= 0.01, rep
