"""deploy/k8s and deploy/grafana: every overlay renders with kustomize and
validates offline against the Kubernetes API schemas and the KEDA,
Prometheus Operator and Strimzi CRD schemas (kubeconform, strict); and the
rendered objects fit together and fit kbatch's configuration (the effective
configuration comes from `kbatch check-config` of the rendered ConfigMap
with the Deployment's environment)."""
import copy
import json
import os
import re
import subprocess

import pytest
import yaml

from conftest import (BUILD, K8S_VERSIONS, OVERLAYS, ROOT, kubeconform,
                      kustomize_build)

SECRET_PLACEHOLDER = "placeholder"
POD_NAME_VARS = ("KBATCH_WORKER_INSTANCE_ID", "KBATCH_KAFKA_PROPERTIES_GROUP_INSTANCE_ID")


def effective_conf(render, deployment, tmp_path):
    """`kbatch check-config` of the overlay's worker.conf with the
    Deployment's environment: {"section.key": value text}."""
    conf = tmp_path / f"{render.name}-{deployment['metadata']['name']}.conf"
    conf.write_text(render.worker_conf())
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBATCH_")}
    for k, v in render.env_of(deployment).items():
        env[k] = v if v is not None else (
            "kbatch-7d4b9c-x2x" if k in POD_NAME_VARS else SECRET_PLACEHOLDER)
    r = subprocess.run([os.path.join(BUILD, "kbatch"), "check-config", "-c", str(conf)],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, f"{render.name}/{deployment['metadata']['name']}: {r.stderr}"
    return parse_effective(r.stdout)


def parse_effective(text):
    """The scalar and list keys of check-config's output (libconfig, one key
    a line) as {"section.key": "value"}; topic names from its comments as
    {"topic.<key>": "full.name"}."""
    out, section, depth = {}, None, 0
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_]\w*)\s*=\s*([{(])$", s)
        if m:
            depth += 1
            if depth == 1:
                section = m.group(1)
            continue
        if s in ("};", ");", "}", ")", "},", "),"):
            depth -= 1
            continue
        m = re.match(r'^([A-Za-z_][\w-]*)\s*=\s*(.*?);(?:\s*#\s*(.*))?$', s)
        if m and depth == 1:
            key, val, comment = m.groups()
            out[f"{section}.{key}"] = val.strip('"') if val.startswith('"') else val
            if comment and comment.startswith("topic "):
                out[f"topic.{key}"] = comment.split()[1]
    return out


def int_list(v):
    return [int(x) for x in re.findall(r"-?\d+", v)]


def deployments(render):
    return render.of_kind("Deployment")


def roles_of(render, dep, tmp_path):
    conf = effective_conf(render, dep, tmp_path)
    return set(re.findall(r'"(\w+)"', conf["worker.roles"]))


# -- rendering and schema validation ----------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates(renders, overlay, version, tmp_path):
    r = renders[overlay]
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(r.text)
    rc, out = kubeconform(str(path), version)
    summary = json.loads(out)["summary"]
    assert rc == 0, out
    assert summary["valid"] == len(r.objects) and summary["skipped"] == 0, summary
    kinds = {o["kind"] for o in r.objects}
    assert {"Deployment", "ConfigMap", "Service", "ServiceMonitor", "PodDisruptionBudget",
            "ScaledObject", "KafkaTopic", "ServiceAccount"} <= kinds, kinds


def test_grafana_kustomization_validates(tmp_path):
    text = kustomize_build(os.path.join(ROOT, "deploy", "grafana"))
    path = tmp_path / "grafana.yaml"
    path.write_text(text)
    rc, out = kubeconform(str(path), K8S_VERSIONS[-1])
    assert rc == 0, out
    cm = next(yaml.safe_load_all(text))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(cm["data"]["kbatch.json"])


def _mutations(obj):
    """Invalid variants of one object: an unknown field where the schema
    declares the fields, and a wrongly typed known one."""
    kind = obj["kind"]
    bad = copy.deepcopy(obj)
    if isinstance(bad.get("spec"), dict):
        bad["spec"]["replicaz"] = 3
    else:
        bad["bogusField"] = 1
    yield "unknown field", bad
    wrong = copy.deepcopy(obj)
    typed = {"KafkaTopic": ("partitions", "twelve"),
             "ScaledObject": ("maxReplicaCount", "many"),
             "ServiceMonitor": ("endpoints", "admin"),
             "Deployment": ("replicas", "three"),
             "PodDisruptionBudget": ("selector", "app=kbatch"),
             "Service": ("ports", 8080)}
    if kind in typed:
        k, v = typed[kind]
        wrong["spec"][k] = v
        yield "wrong type", wrong


def test_validation_rejects_broken_objects(renders, tmp_path):
    """The validation can fail: for every kind rendered, a broken copy of
    an object of that kind is rejected against its schema (CRDs included)."""
    seen = {}
    for r in renders.values():
        for o in r.objects:
            seen.setdefault(o["kind"], o)
    checked = []
    for kind, obj in sorted(seen.items()):
        for what, bad in _mutations(obj):
            path = tmp_path / f"bad-{kind}-{what.replace(' ', '-')}.yaml"
            path.write_text(yaml.safe_dump(bad))
            rc, out = kubeconform(str(path), K8S_VERSIONS[-1])
            assert rc != 0 and json.loads(out)["summary"]["invalid"] == 1, \
                f"{kind} with {what} passed validation: {out}"
            checked.append(kind)
    assert {"KafkaTopic", "ScaledObject", "ServiceMonitor", "Deployment"} <= set(checked)


# -- the objects fit together and fit kbatch's configuration ---------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_accepted_and_roles_covered(renders, overlay, tmp_path):
    """Each Deployment's configuration passes `kbatch check-config`; the
    Deployments together run each role exactly once (the split overlay also
    runs the HTTP API, role api), and the ScaledObject's target runs the
    items role."""
    r = renders[overlay]
    covered = []
    for d in deployments(r):
        covered += sorted(roles_of(r, d, tmp_path))
    want = ["aggregator", "items", "notifier"] + (["api"] if overlay == "split" else [])
    assert sorted(covered) == sorted(want), covered
    if overlay in ("prod", "split"):
        assert len(deployments(r)) == len(want)
    else:
        assert len(deployments(r)) == 1


def test_api_role_in_split(renders, tmp_path):
    """The split overlay's api Deployment: its port is api.listen's, a
    Service reaches it, the keys file is the Secret kbatch-api-keys mounted
    where api.keys_file says, and readiness waits for the API to catch up
    (/readyz, like every role)."""
    r = renders["split"]
    (d,) = [d for d in deployments(r) if "api" in roles_of(r, d, tmp_path)]
    conf = effective_conf(r, d, tmp_path)
    assert roles_of(r, d, tmp_path) == {"api"}
    c = d["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["api"] == int(conf["api.listen"].rsplit(":", 1)[1])
    assert d["spec"]["replicas"] >= 2
    svc = r.get("Service", "kbatch-api")
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8081, "api")]
    # no other Deployment's pods behind the API Service
    for other in deployments(r):
        if other is not d:
            ol = other["spec"]["template"]["metadata"]["labels"]
            assert not all(ol.get(k) == v for k, v in svc["spec"]["selector"].items())
    keys = conf["api.keys_file"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
    (name,) = [n for n, v in vols.items() if "secret" in v]
    assert vols[name]["secret"]["secretName"] == "kbatch-api-keys"
    (item,) = vols[name]["secret"]["items"]
    assert os.path.join(mounts[name], item["path"]) == keys
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_drain(renders, overlay, tmp_path):
    """terminationGracePeriodSeconds > shutdown_drain_ms + the producer's
    final flush (10 s) + a margin: SIGKILL never cuts a drain short."""
    r = renders[overlay]
    for d in deployments(r):
        conf = effective_conf(r, d, tmp_path)
        drain_s = int(conf["worker.shutdown_drain_ms"]) / 1000
        grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= drain_s + 10 + 5, (d["metadata"]["name"], grace, drain_s)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_static_membership_from_pod_name(renders, overlay, tmp_path):
    """Every Deployment joins its groups as a static member named after the
    pod (a restarted container takes its partitions back without a
    rebalance), with the session timeout of docs/deploy.md: longer than a
    container restart takes, short enough for a pod gone for good."""
    r = renders[overlay]
    for d in deployments(r):
        env = {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        gi = env.get("KBATCH_KAFKA_PROPERTIES_GROUP_INSTANCE_ID")
        assert gi and gi["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", \
            (d["metadata"]["name"], gi)
        st = int(r.env_of(d)["KBATCH_KAFKA_PROPERTIES_SESSION_TIMEOUT_MS"])
        assert 10000 <= st <= 60000, (d["metadata"]["name"], st)
        effective_conf(r, d, tmp_path)   # check-config accepts both


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_metrics_on_admin_port(renders, overlay, tmp_path):
    r = renders[overlay]
    svc = r.get("Service", "kbatch-metrics")
    sm = r.of_kind("ServiceMonitor")[0]
    assert all(svc["metadata"]["labels"].get(k) == v
               for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["admin"]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    for d in deployments(r):
        conf = effective_conf(r, d, tmp_path)
        port = int(conf["admin.listen"].rsplit(":", 1)[1])
        tpl = d["spec"]["template"]
        c = tpl["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["admin"] == port
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
        # the metrics Service reaches every pod
        assert all(tpl["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployments_and_disruption_budgets(renders, overlay, tmp_path):
    r = renders[overlay]
    deps = deployments(r)
    images = {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in deps}
    assert len(images) == 1, images
    pdbs = r.of_kind("PodDisruptionBudget")
    selectors = []
    for d in deps:
        sel = d["spec"]["selector"]["matchLabels"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in sel.items())
        # no other Deployment's pods match this selector
        for other in deps:
            if other is not d:
                ol = other["spec"]["template"]["metadata"]["labels"]
                assert not all(ol.get(k) == v for k, v in sel.items())
        covering = [p for p in pdbs if all(labels.get(k) == v for k, v in
                                           p["spec"]["selector"]["matchLabels"].items())]
        assert len(covering) == 1, (d["metadata"]["name"], covering)
        selectors.append(sel)
        sc = d["spec"]["template"]["spec"]
        assert sc["securityContext"]["runAsNonRoot"] is True
        assert sc["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m["name"] for m in sc["containers"][0]["volumeMounts"]}
        vols = {v["name"]: v for v in sc["volumes"]}
        cm_name = vols[mounts["/etc/kbatch"]]["configMap"]["name"]
        assert "worker.conf" in r.get("ConfigMap", cm_name)["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_referenced(renders, overlay):
    """API keys and the webhook secret come from a Secret; the dev overlay
    generates it (every referenced key present), the others expect it to be
    created outside git under the name the pods reference."""
    r = renders[overlay]
    for d in deployments(r):
        refs = {}
        for e in d["spec"]["template"]["spec"]["containers"][0]["env"]:
            sk = e.get("valueFrom", {}).get("secretKeyRef")
            if sk:
                refs[e["name"]] = sk
        assert {"OPENAI_API_KEY", "KBATCH_WEBHOOK_SECRET"} <= set(refs)
        names = {sk["name"] for sk in refs.values()}
        assert len(names) == 1
        secrets = {s["metadata"]["name"]: s for s in r.of_kind("Secret")}
        if overlay == "dev":
            (name,) = names
            data = secrets[name]["data"]
            assert all(sk["key"] in data for sk in refs.values() if not sk.get("optional"))
        else:
            assert not secrets and names == {"kbatch-secrets"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaledobject_fits(renders, overlay, tmp_path):
    r = renders[overlay]
    (so,) = r.of_kind("ScaledObject")
    ref = so["spec"]["scaleTargetRef"]
    target = r.get("Deployment", ref["name"])
    assert "items" in roles_of(r, target, tmp_path)
    assert "replicas" not in target["spec"], "KEDA owns the replica count"
    conf = effective_conf(r, target, tmp_path)
    (trig,) = so["spec"]["triggers"]
    assert trig["type"] == "kafka"
    md = trig["metadata"]
    assert md["consumerGroup"] == conf["kafka.group_id"]
    assert md["topic"] == conf["topic.items"]
    assert md["bootstrapServersFromEnv"] in r.env_of(target)
    items_topic = [t for t in r.of_kind("KafkaTopic")
                   if t["spec"]["topicName"] == conf["topic.items"]]
    assert len(items_topic) == 1
    assert so["spec"]["minReplicaCount"] >= 1
    assert so["spec"]["maxReplicaCount"] <= items_topic[0]["spec"]["partitions"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_topics_cover_spec(renders, overlay, tmp_path):
    """A KafkaTopic for every topic of SPEC §1 under the configured names:
    items, one retry topic per retry.delays_ms entry, the DLQs, results,
    batches, control (1 partition), batch-state (compacted,
    co-partitioned with results) and the API's files and batch records
    (compacted); nothing else; one Kafka cluster."""
    r = renders[overlay]
    conf = effective_conf(r, deployments(r)[0], tmp_path)
    tiers = len(int_list(conf["retry.delays_ms"]))
    want = {conf[f"topic.{k}"] for k in ("items", "items_priority", "items_jobs", "items_dlq",
                                        "results", "batches", "batches_dlq", "control",
                                        "batch_state", "files", "api_batches")}
    want |= {f"{conf['topic.items']}.retry.{n}" for n in range(1, tiers + 1)}
    topics = {t["spec"]["topicName"]: t for t in r.of_kind("KafkaTopic")}
    assert set(topics) == want
    assert len({t["metadata"]["labels"]["strimzi.io/cluster"] for t in topics.values()}) == 1
    assert topics[conf["topic.control"]]["spec"]["partitions"] == 1
    for k in ("files", "api_batches"):
        assert topics[conf[f"topic.{k}"]]["spec"]["config"]["cleanup.policy"] == "compact", k
    state = topics[conf["topic.batch_state"]]["spec"]
    assert state["config"]["cleanup.policy"] == "compact"
    assert state["partitions"] == topics[conf["topic.results"]]["spec"]["partitions"]
    for name, t in topics.items():
        if name != conf["topic.control"]:
            assert t["spec"]["partitions"] == int(conf["topics.partitions"]), name
        replicas = t["spec"]["replicas"]
        isr = int(t["spec"]["config"]["min.insync.replicas"])
        assert isr <= replicas and (replicas == 1 or isr >= 2), name


# -- the dashboard ----------------------------------------------------------------

SPEC_METRICS = {"kbatch_items_consumed_total", "kbatch_items_completed_total",
                "kbatch_model_requests_total", "kbatch_model_request_seconds",
                "kbatch_inflight", "kbatch_retries_total", "kbatch_dlq_total",
                "kbatch_batches_completed_total", "kbatch_consumer_lag",
                "kbatch_tokens_total"}


def test_dashboard_covers_spec_metrics():
    with open(os.path.join(ROOT, "deploy", "grafana", "kbatch.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = set()
    for e in exprs:
        for m in re.findall(r"\bkbatch_\w+", e):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            assert base in SPEC_METRICS, f"{m} is not a metric of SPEC §10"
            used.add(base)
    assert used == SPEC_METRICS, SPEC_METRICS - used
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("throughput", "latency", "in flight", "retries", "dead", "lag", "batches"):
        assert word in titles, word
    quantiles = {q for e in exprs for q in re.findall(r"histogram_quantile\(([\d.]+)", e)}
    assert {"0.5", "0.95", "0.99"} <= quantiles
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
