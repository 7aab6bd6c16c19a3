"""The kbatch container image (deploy/Dockerfile) under podman: what it is,
and the worker in it (host network) against the test broker and the fake
model API: a 200-item batch end to end, and SIGTERM with items in flight
(drained within the grace period, exit 0)."""
import hashlib
import hmac
import json
import os
import re
import socket
import time
import urllib.request
import uuid

import pytest

from conftest import IMAGE, OVERLAYS, ROOT, FakeModel, Render, WebhookReceiver, e2e, podman
from test_manifests import SECRET_PLACEHOLDER


def version():
    with open(os.path.join(ROOT, "VERSION")) as f:
        return f.read().strip()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_conf(env, base_url, roles=("items",), drain_ms=10000, max_inflight=1000,
               admin="", extra="", name="worker.conf"):
    """A worker.conf for one test (own topic prefix and groups, like the
    e2e suite's), world-readable: the container runs as uid 10001."""
    roles_s = ", ".join(f'"{r}"' for r in roles)
    text = f"""
kafka: {{
  bootstrap_servers = "{env.bootstrap}";
  group_id = "{env.group}";
  aggregator_group_id = "kbatch-aggregator-{env.id}";
  notifier_group_id = "kbatch-notifier-{env.id}";
  properties = {{ statistics_interval_ms = "0"; }};
}};
topics: {{ prefix = "{env.prefix}"; partitions = 4; replication = 1; }};
worker: {{
  roles = [{roles_s}];
  max_inflight = {max_inflight};
  shutdown_drain_ms = {drain_ms};
}};
admin: {{ listen = "{admin}"; }};
log: {{ level = "info"; format = "json"; }};
routes = ( {{ model = "*"; base_url = "{base_url}"; max_inflight = 100000; }} );
{extra}
"""
    path = env.tmp / name
    path.write_text(text)
    os.chmod(path, 0o644)
    return str(path)


def create_topics(toolbox, conf):
    r = toolbox.run("topics", "create", "-c", conf)
    assert r.returncode == 0, r.stderr


def describe(toolbox, conf, topic, env=None):
    r = toolbox.run("topics", "describe", "--json", "-c", conf, env=env)
    assert r.returncode == 0, r.stderr
    return {x["name"]: x for x in json.loads(r.stdout)["topics"]}[topic]


# -- the image --------------------------------------------------------------------

def test_version_in_image():
    r = podman("run", "--rm", IMAGE, "--version")
    assert r.stdout.startswith(f"kbatch {version()} ("), r.stdout
    assert "librdkafka 2.8.0," in r.stdout  # tests/rdkafka.sh, as the tests
    assert "built with headers" not in r.stdout


def test_image_is_small_nonroot_runtime_only(toolbox):
    info = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    cfg = info["Config"]
    assert cfg["User"] == "10001:10001"
    assert cfg["Entrypoint"] == ["/usr/local/bin/kbatch"]
    assert cfg["Cmd"] == ["worker", "-c", "/etc/kbatch/worker.conf"]
    assert info["Size"] < 150_000_000, f"image is {info['Size'] / 1e6:.0f} MB"
    print(f"\nimage {IMAGE}: {info['Size'] / 1e6:.1f} MB")
    # runtime stage: no compiler, no -dev headers; every library resolved
    r = toolbox.run("/bin/sh", "-c",
                    "id -u; command -v cc gcc make || true; ls /usr/include 2>/dev/null | wc -l; "
                    "ldd /usr/local/bin/kbatch; test -r /etc/kbatch/worker.conf && echo conf-ok")
    out = r.stdout.splitlines()
    assert out[0] == "10001"
    assert "not found" not in r.stdout
    assert not any(l.endswith(("/cc", "/gcc", "/make")) for l in out), r.stdout
    assert "conf-ok" in out
    # the default configuration in the image is the repository's, and valid
    r = toolbox.run("check-config", "-q", "-c", "/etc/kbatch/worker.conf")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_config_accepted_by_image(renders, overlay, toolbox):
    """Each Deployment's rendered ConfigMap and environment, given to the
    image's own kbatch as the pod would (ConfigMap file at
    /etc/kbatch/worker.conf, the Deployment's args): `check-config` passes
    and the pod runs as the image's user."""
    r: Render = renders[overlay]
    info = json.loads(podman("image", "inspect", IMAGE).stdout)[0]["Config"]
    for d in r.of_kind("Deployment"):
        spec = d["spec"]["template"]["spec"]
        c = spec["containers"][0]
        assert c["args"][0] == "worker" and c["args"][1:] == ["-c", "/etc/kbatch/worker.conf"]
        assert str(spec["securityContext"]["runAsUser"]) == info["User"].split(":")[0]
        conf = toolbox.put(f"{overlay}-{d['metadata']['name']}.conf", r.worker_conf())
        env = {k: (v if v is not None else SECRET_PLACEHOLDER) for k, v in r.env_of(d).items()}
        env["KBATCH_WORKER_INSTANCE_ID"] = "kbatch-6b9d7-x2x"
        res = toolbox.run("check-config", "-c", conf, env=env)
        assert res.returncode == 0, f"{overlay}/{d['metadata']['name']}: {res.stderr}"
        assert 'instance_id = "kbatch-6b9d7-x2x"' in res.stdout


def test_kafka_topics_match_topics_create(renders, env, toolbox):
    """The KafkaTopics of the dev overlay are the topics `kbatch topics
    create` (in the image) makes from the same configuration: names,
    partitions and settings."""
    r = renders["dev"]
    (d,) = r.of_kind("Deployment")
    conf = toolbox.put("dev-topics.conf", r.worker_conf())
    penv = {k: (v if v is not None else SECRET_PLACEHOLDER) for k, v in r.env_of(d).items()}
    penv.update(KBATCH_KAFKA_BOOTSTRAP_SERVERS=env.bootstrap, KBATCH_TOPICS_PREFIX=env.prefix)
    res = toolbox.run("topics", "create", "-c", conf, env=penv)
    assert res.returncode == 0, res.stderr
    res = toolbox.run("topics", "describe", "--json", "-c", conf, env=penv)
    assert res.returncode == 0, res.stderr
    made = {t["name"][len(env.prefix):]: t for t in json.loads(res.stdout)["topics"]}
    rendered = {t["spec"]["topicName"][len("kbatch."):]: t["spec"] for t in r.of_kind("KafkaTopic")}
    assert set(made) == set(rendered)
    for name, spec in rendered.items():
        m = made[name]
        assert m["partitions"] == spec["partitions"], name
        cfg = spec.get("config", {})
        assert "max.message.bytes" in cfg, name
        for key in ("retention.ms", "cleanup.policy", "segment.ms", "max.message.bytes"):
            if key in cfg:
                assert m["config"][key] == str(cfg[key]), (name, key)
        assert m["config"]["cleanup.policy"] == cfg.get("cleanup.policy", "delete"), name


# -- the worker in the container ---------------------------------------------------

def consume_json(env, topic, count, timeout=60, isolation="read_uncommitted"):
    msgs = env.consume(topic, count=count, timeout=timeout, isolation=isolation)
    return [json.loads(m.value()) for m in msgs]


def test_batch_end_to_end_in_container(env, containers, toolbox):
    """A 200-item batch through one container running every role, as the
    base Deployment does: one succeeded result per item, every model call
    made once, the offsets committed, one batch.completed event, and its
    webhook delivered once, signed with the secret from the environment."""
    n, secret = 200, "whsec_" + uuid.uuid4().hex
    with FakeModel("--latency-ms", "5-50") as fake, WebhookReceiver() as rx:
        conf = write_conf(env, fake.url, roles=("items", "aggregator", "notifier"),
                          extra="notifier: { allow_private = true; };")
        tconf = toolbox.put(f"{env.id}.conf", open(conf).read())
        create_topics(toolbox, tconf)
        bid = f"ctr-{env.id}"
        env.produce("items", [e2e.item(bid, i, n, callback_url=rx.url("/done"))
                              for i in range(n)],
                    keys=[f"{bid}:{i}".encode() for i in range(n)])
        c = containers(conf, env={"KBATCH_WEBHOOK_SECRET": secret})
        results = consume_json(env, "results", n, timeout=120)
        assert len(results) == n, f"{len(results)} of {n} results:\n{c.tail()}"
        assert sorted(r["item_index"] for r in results) == list(range(n))
        assert {r["status"] for r in results} == {"succeeded"}, \
            {r["item_id"]: r["error"] for r in results if r["status"] != "succeeded"}
        assert all(r["output"] and r["http_status"] == 200 for r in results)
        st = fake.stats()
        assert st["requests_total"] == n
        assert max(v["count"] for v in st["by_item"].values()) == 1
        events = consume_json(env, "batches", 1, timeout=60, isolation="read_committed")
        assert len(events) == 1, f"no batch event:\n{c.tail()}"
        ev = events[0]
        assert (ev["type"], ev["batch_id"], ev["status"], ev["items_succeeded"]) == \
            ("batch.completed", bid, "succeeded", n)
        reqs = rx.wait(lambda rs: len(rs) >= 1, timeout=60)
        # committed: everything done (lowest unfinished offset = the end)
        deadline = time.time() + 30
        while True:
            t = describe(toolbox, tconf, env.topic("items"))
            if t["lag"] == 0 or time.time() > deadline:
                break
            time.sleep(0.5)
        assert t["lag"] == 0, t
        assert c.stop(grace=30) < 30
        assert c.exit_code() == 0, c.tail()
    reqs = rx.received()
    assert len(reqs) == 1, reqs
    sig = dict(p.split("=", 1) for p in reqs[0].headers["kbatch-signature"].split(","))
    want = hmac.new(secret.encode(), f"{sig['t']}.".encode() + reqs[0].body,
                    hashlib.sha256).hexdigest()
    assert hmac.compare_digest(sig["v1"], want)
    assert reqs[0].json()["event_id"] == f"{bid}:1"
    assert secret not in c.logs()


def test_sigterm_drains_within_grace(env, containers, toolbox):
    """SIGTERM (podman stop, as the kubelet stops a pod) with hundreds of
    items in flight: the worker stops fetching, finishes them, commits and
    exits 0 before the grace period would SIGKILL it; every model call made
    has its result and the committed offsets account for all of them."""
    drain_ms, grace = 10000, 25
    with FakeModel("--latency-ms", "1500-2500") as fake:
        conf = write_conf(env, fake.url, drain_ms=drain_ms, max_inflight=300)
        tconf = toolbox.put(f"{env.id}.conf", open(conf).read())
        create_topics(toolbox, tconf)
        n = 1200
        env.produce("items", [e2e.item("term", i, n) for i in range(n)])
        c = containers(conf)
        deadline = time.time() + 60
        while fake.stats(items=False)["inflight"] < 200 and time.time() < deadline:
            time.sleep(0.1)
        assert fake.stats(items=False)["inflight"] >= 200, c.tail()
        took = c.stop(grace=grace)
        code = c.exit_code()
        logs = c.log_lines()
        assert code == 0, f"exit {code} (137 = killed at the end of the grace period):\n{c.tail()}"
        assert took < grace - 1, f"stop took {took:.1f}s of a {grace}s grace period"
        assert took < drain_ms / 1000 + 10, took
        stopping = [l for l in logs if l.get("msg", "").startswith("stopping:")]
        assert stopping and int(re.search(r"(\d+) items in flight", stopping[0]["msg"]).group(1)) > 0
        assert any(l.get("msg") == "stopped (0 items abandoned)" for l in logs), c.tail()
        calls = fake.stats(items=False)["requests_total"]
        results = {r["item_id"] for r in consume_json(env, "results", calls, timeout=30)}
        assert len(results) == calls, f"{calls} model calls, {len(results)} results"
        # committed offsets (+ the done-above-them bitmaps) cover every result
        t = describe(toolbox, tconf, env.topic("items"))
        done = sum((p["committed"] or 0) + p["done_above"] for p in t["partition_offsets"])
        assert done == len(results), (done, len(results))


def test_admin_endpoints_in_container(env, containers, toolbox):
    """The probes' and ServiceMonitor's endpoints answer from the container."""
    port = free_port()
    with FakeModel("--latency-ms", "5") as fake:
        conf = write_conf(env, fake.url, admin=f"127.0.0.1:{port}")
        create_topics(toolbox, toolbox.put(f"{env.id}.conf", open(conf).read()))
        c = containers(conf)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        status = None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(0.5)
        assert status == 200, c.tail()
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "kbatch_inflight" in text
        assert c.stop(grace=30) < 30 and c.exit_code() == 0
