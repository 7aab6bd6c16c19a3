"""Operations (SPEC §10): the admin server's /healthz, /readyz and /metrics,
secrets kept out of the logs, W3C trace context on items and results."""
import json
import re
import time
import urllib.error
import urllib.request

from confluent_kafka import Consumer
from prometheus_client.parser import text_string_to_metric_families

from conftest import item
from test_pipeline import wait_results
from fakes import FakeModel

TRACEPARENT_RE = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


def admin_port(w, timeout=60):
    """The admin server's port, from the worker's log (it listens on :0)."""
    line = w.wait_log(lambda l: l.get("msg", "").startswith("admin server listening on"),
                      timeout)
    return int(re.search(r":(\d+) \(", line["msg"]).group(1))


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port):
    """/metrics through prometheus_client's parser: {(sample name,
    frozenset of labels): value}."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(m, name, **labels):
    return m.get((name, frozenset(labels.items())), 0)


def total(m, name, **labels):
    """Sum over every series of name whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in m.items() if n == name and want <= set(ls))


def wait_until(pred, timeout, what):
    deadline = time.time() + timeout
    while True:
        r = pred()
        if r:
            return r
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_readyz_false_until_the_group_is_joined(env):
    conf = env.write_conf(admin_listen="127.0.0.1:0")
    env.create_topics(conf, partitions=2)
    # A member that only speaks the "roundrobin" assignor holds the group:
    # kbatch (eager "range", issue 18) cannot join it until that member
    # leaves.
    holder = Consumer({"bootstrap.servers": env.bootstrap, "group.id": env.group,
                       "partition.assignment.strategy": "roundrobin",
                       "enable.auto.commit": False})
    holder.subscribe([env.topic("items")])
    try:
        wait_until(lambda: holder.poll(0.1) is None and holder.assignment(), 30,
                   "the holder's assignment")
        w = env.worker(conf)
        port = admin_port(w)
        deadline = time.time() + 4
        seen = []
        while time.time() < deadline:
            status, body = get(port, "/readyz")
            assert status == 503, body
            seen.append(body)
            assert get(port, "/healthz")[0] == 200
            holder.poll(0.1)
        assert "not ready: items: no partition assignment yet" in seen[-1], seen[-1]
        assert not any(l.get("msg", "").startswith("assigned") for l in w.logs())
    finally:
        holder.close()
    # The group is free: kbatch joins and becomes ready.
    wait_until(lambda: get(port, "/readyz")[0] == 200, 60, "/readyz 200")
    assert get(port, "/readyz")[1] == "ready\n"
    assert w.wait_assigned(timeout=1)
    m = scrape(port)
    assert val(m, "kbatch_ready") == 1
    assert w.stop() == 0


# Retries: 2 in process, then tier 1 (1 s), then 2 more attempts: 5 in all.
FAST = ('retry: { max_attempts = 5; inprocess_attempts = 2; backoff_base_ms = 50; '
        'backoff_max_ms = 200; inprocess_max_wait_ms = 3000; delays_ms = [1000, 2000]; };'
        'aggregator: { commit_interval_ms = 200; };')
ROLES_BOTH = {"KBATCH_WORKER_ROLES": "items,aggregator"}


def fated(batch, i, total, fake=None, **kw):
    it = item(batch, i, total, **kw)
    if fake:
        it["input"]["fake"] = fake
    return it


def headers(msg):
    return {k: (v.decode() if v is not None else None) for k, v in (msg.headers() or [])}


def test_metrics_count_what_happened(env):
    with FakeModel() as fake:
        routes = f'( {{ model = "gpt-*"; base_url = "{fake.url}"; timeout_ms = 5000; }} )'
        conf = env.write_conf(routes=routes, extra=FAST, admin_listen="127.0.0.1:0",
                              kafka_props={"statistics.interval.ms": 1000})
        env.create_topics(conf, partitions=2)
        items = [item("ok", i, 3) for i in range(3)] + [
            fated("mix", 0, 4, {"status": 500, "times": 1}),  # one in-process retry
            fated("mix", 1, 4, {"status": 400}),              # client_error
            fated("mix", 2, 4, model="nomatch"),              # unknown_model: no call
            fated("mix", 3, 4, {"status": 503}),              # exhausted, via tier 1
        ]
        env.produce("items", items + [b"not json"])           # deserialization_error
        w = env.worker(conf, env=ROLES_BOTH)
        port = admin_port(w)
        res, msgs = env.results(7, timeout=90)
        assert len(res) == 7, res
        batches = [json.loads(m.value()) for m in
                   env.consume("batches", count=2, timeout=60, isolation="read_committed")]
        assert sorted(b["status"] for b in batches) == ["partial_succeeded", "succeeded"]
        dlq = env.consume("items.dlq", count=2, timeout=30)
        assert sorted(headers(m)["kbatch-error-code"] for m in dlq) == \
            ["deserialization_error", "max_attempts_exceeded"]
        st = fake.stats()

        # What the scenario must produce (and what the fake and topics saw).
        route = "gpt-*"
        expect = {
            ("kbatch_items_consumed_total", ()): 9,  # 8 messages + 1 tier copy
            ("kbatch_items_completed_total", (("status", "succeeded"),)): 4,
            ("kbatch_items_completed_total", (("status", "failed"),)): 3,
            ("kbatch_model_requests_total", (("code", "ok"), ("route", route))): 4,
            ("kbatch_model_requests_total", (("code", "server_error"), ("route", route))): 6,
            ("kbatch_model_requests_total", (("code", "client_error"), ("route", route))): 1,
            ("kbatch_model_request_seconds_count", (("route", route),)): 11,
            ("kbatch_retries_total", (("tier", "inprocess"),)): 4,
            ("kbatch_retries_total", (("tier", "1"),)): 1,
            ("kbatch_dlq_total", (("code", "max_attempts_exceeded"),)): 1,
            ("kbatch_dlq_total", (("code", "deserialization_error"),)): 1,
            ("kbatch_batches_completed_total", (("status", "succeeded"),)): 1,
            ("kbatch_batches_completed_total", (("status", "partial_succeeded"),)): 1,
            ("kbatch_item_seconds_count", ()): 7,
            ("kbatch_retry_lateness_seconds_count", ()): 1,
            ("kbatch_inflight", ()): 0,
        }

        def settled():
            m = scrape(port)
            return m if all(val(m, n, **dict(ls)) == v for (n, ls), v in expect.items()) \
                else None
        try:
            m = wait_until(settled, 30, "the counters to settle")
        except AssertionError:
            m = scrape(port)
            wrong = {n + str(dict(ls)): (val(m, n, **dict(ls)), v)
                     for (n, ls), v in expect.items() if val(m, n, **dict(ls)) != v}
            raise AssertionError(f"metrics (got, want): {wrong}")

        # ... and agree with the fake model and the results
        assert total(m, "kbatch_model_requests_total") == st["requests_total"] == 11
        assert val(m, "kbatch_model_requests_total", route=route, code="ok") == \
            st["by_status"]["200"]
        usage = [r["usage"] for r in res if r.get("usage")]
        assert len(usage) == 4
        assert val(m, "kbatch_tokens_total", route=route, kind="input") == \
            sum(u["input_tokens"] for u in usage) > 0
        assert val(m, "kbatch_tokens_total", route=route, kind="output") == \
            sum(u["output_tokens"] for u in usage) > 0
        # histograms: buckets cumulative, +Inf equals the count
        assert val(m, "kbatch_model_request_seconds_bucket", route=route, le="+Inf") == 11
        assert val(m, "kbatch_model_request_seconds_sum", route=route) > 0
        assert val(m, "kbatch_route_concurrency_limit", route=route) >= 1
        assert val(m, "kbatch_route_queue", route=route) == 0
        assert total(m, "kbatch_build_info") == 1
        # every family of SPEC §10 is there
        _, text = get(port, "/metrics")
        for name in ["kbatch_items_consumed_total", "kbatch_items_completed_total",
                     "kbatch_model_requests_total", "kbatch_model_request_seconds",
                     "kbatch_inflight", "kbatch_retries_total", "kbatch_dlq_total",
                     "kbatch_batches_completed_total", "kbatch_consumer_lag",
                     "kbatch_tokens_total"]:
            assert f"# TYPE {name} " in text, name
        # everything committed: the lag drops to 0 (statistics every second)
        wait_until(lambda: val(scrape(port), "kbatch_consumer_lag") == 0, 15, "lag 0")

        # One trace per item, across the retry tier to the result and the DLQ
        by_id = {(r["batch_id"], r["item_id"]): headers(msg) for r, msg in zip(res, msgs)}
        tp = by_id[("mix", "req-3")]["traceparent"]
        assert TRACEPARENT_RE.match(tp), tp
        assert [headers(d)["traceparent"] for d in dlq
                if headers(d)["kbatch-error-code"] == "max_attempts_exceeded"] == [tp]
        seen = fake.stats()["by_item"]["mix:req-3"]
        assert seen["count"] == 5
        assert {k.lower(): v for k, v in seen["last_headers"].items()}["traceparent"] == tp

        # item-level log lines carry the item's context
        fin = [l for l in w.logs() if l.get("msg", "").startswith("item finished")
               and l.get("item_id") == "req-1" and l.get("batch_id") == "mix"]
        assert fin and fin[0]["attempt"] == "1" and fin[0]["code"] == "client_error", fin
        assert w.stop() == 0


def test_consumer_lag_follows_the_backlog(env):
    with FakeModel(latency_ms=300) as fake:
        conf = env.write_conf(fake.url, max_inflight=1, admin_listen="127.0.0.1:0",
                              kafka_props={"statistics.interval.ms": 500})
        env.create_topics(conf, partitions=1)
        n = 12
        env.produce("items", [item("lag", i, n) for i in range(n)])
        w = env.worker(conf)
        port = admin_port(w)
        lags = []

        def done():
            m = scrape(port)
            lags.append(val(m, "kbatch_consumer_lag"))
            return val(m, "kbatch_items_completed_total", status="succeeded") == n
        wait_until(done, 60, "all items")
        # one item at a time, 300 ms each: a backlog the statistics saw
        assert max(lags) > 0, lags
        assert max(lags) <= n, lags
        wait_until(lambda: val(scrape(port), "kbatch_consumer_lag") == 0, 15, "lag 0")
        assert w.stop() == 0


def test_traceparent_forwarded_or_started(env):
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with FakeModel() as fake:
        conf = env.write_conf(fake.url)
        env.create_topics(conf, partitions=1)
        env.produce("items", [item("t", i, 4) for i in range(4)],
                    headers=[[("traceparent", given.encode()), ("tracestate", b"congo=t61rcWkgMzE")],
                             [], [],
                             [("traceparent", b"garbage"), ("tracestate", b"x=1")]])
        w = env.worker(conf)
        msgs = env.consume("results", count=4, timeout=60)
        assert len(msgs) == 4
        seen = fake.stats()["by_item"]
        got = {}
        for msg in msgs:
            r = json.loads(msg.value())
            h = headers(msg)
            sent = {k.lower(): v for k, v in seen[f"t:{r['item_id']}"]["last_headers"].items()}
            # the model request and the result carry the same trace context
            assert sent["traceparent"] == h["traceparent"], (r["item_id"], sent, h)
            assert sent.get("tracestate") == h.get("tracestate")
            got[r["item_id"]] = h
        assert got["req-0"]["traceparent"] == given
        assert got["req-0"]["tracestate"] == "congo=t61rcWkgMzE"
        started = [got[i]["traceparent"] for i in ("req-1", "req-2", "req-3")]
        assert all(TRACEPARENT_RE.match(t) for t in started), started
        assert len({t[3:35] for t in started}) == 3, started  # a trace per item
        assert "tracestate" not in got["req-3"]  # dropped with the invalid parent
        assert w.stop() == 0


def test_no_secret_in_the_logs(env):
    api_key = "sk-ops-7f3a9c1e5b2d4680"
    webhook_secret = "whsec-ops-0e1d2c3b4a596877"
    sasl_password = "sasl-pw-ops-5566778899aabb"
    secrets = [api_key, webhook_secret, sasl_password]
    with FakeModel() as fake:
        routes = f'( {{ model = "*"; base_url = "{fake.url}"; api_key_env = "OPS_API_KEY"; }} )'
        # SASL settings are ignored by librdkafka on a plaintext connection,
        # but they are in the configuration it holds and may log.
        props = {"statistics.interval.ms": 1000, "security.protocol": "plaintext",
                 "sasl.mechanisms": "PLAIN", "sasl.username": "ops",
                 "sasl.password": sasl_password, "debug": "generic,broker,conf,security"}
        conf = env.write_conf(routes=routes, kafka_props=props, log_level="debug",
                              admin_listen="127.0.0.1:0",
                              extra=FAST + "notifier: { allow_private = true; };")
        env.create_topics(conf, partitions=1)
        envs = {"OPS_API_KEY": api_key, "KBATCH_WEBHOOK_SECRET": webhook_secret,
                "KBATCH_WORKER_ROLES": "items,aggregator,notifier"}
        # the batch's webhook (signed with the secret) goes to the fake too
        hook = {"callback_url": f"{fake.url}/v1/embeddings"}
        env.produce("items", [item("s", 0, 3, **hook),
                              fated("s", 1, 3, {"status": 401}, **hook),
                              fated("s", 2, 3, {"status": 500, "times": 1}, **hook)])
        w = env.worker(conf, env=envs)
        port = admin_port(w)
        res, _ = wait_results(env, 3)
        assert sorted(r["status"] for r in res) == ["failed", "succeeded", "succeeded"]
        env.consume("batches", count=1, timeout=60, isolation="read_committed")
        fake.wait_for(lambda st: st["by_path"].get("/v1/embeddings", 0) >= 1, timeout=30)
        _, metrics = get(port, "/metrics")
        assert w.stop() == 0
        # the key and the webhook secret were in use ...
        st = fake.stats()
        sent = {k.lower(): v for k, v in st["by_item"]["s:req-0"]["last_headers"].items()}
        assert sent["authorization"] == f"Bearer {api_key}"
        hook_sent = {k.lower(): v for k, v in st["headers_seen"].items()}
        assert hook_sent["kbatch-signature"].startswith("t="), hook_sent
        # ... and the run logged plenty (debug, librdkafka debug contexts)
        with open(w.logpath, "rb") as f:
            logs = f.read().decode(errors="replace")
        assert len(logs.splitlines()) > 100
        assert "sasl.password" in logs  # librdkafka's configuration dump ran
        cc = env.kbatch("check-config", conf=conf, env=envs)
        for s in secrets:
            assert s not in logs, f"secret {s[:6]}... in the worker log"
            assert s not in metrics
            assert s not in cc.stdout + cc.stderr
