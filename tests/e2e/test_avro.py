"""Avro (Confluent wire format) end to end: a real broker, a real Schema
Registry (Apicurio Registry with its Confluent-compatible API, global
compatibility BACKWARD: tests/kafka/registry.sh, one per session, the
`schema_registry` fixture), real kbatch workers, and an independent
implementation on the other side: the confluent-kafka Python client's
AvroSerializer/AvroDeserializer (fastavro), through the same registry.

The fake registry (tests/fakes/fake_registry.c) is used only where a real one
cannot do it on demand: a registry slower than the timeout (injected delay).
Each test says which one it uses. Issues: Avro and Schema Registry; Avro
against a real Schema Registry."""
import base64
import datetime
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from conftest import BUILD, ROOT, Env, item
from fakes import FakeModel
from registries import FakeRegistry

SCHEMAS = os.path.join(ROOT, "schemas")
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
TIMING = {"started_at", "finished_at", "latency_ms", "worker"}


def schema_text(name):
    with open(os.path.join(SCHEMAS, name + ".avsc")) as f:
        return f.read()


def serde_conf(reg, fmt="avro", more=""):
    return (f'serde: {{ format = "{fmt}"; schema_registry_url = "{reg.url}"; '
            f'schema_registry_timeout_ms = 1000; {more} }};')


ROUTES = ('( { model = "gpt-*"; base_url = "%s"; max_inflight = 1000; },'
          '  { model = "text-embed*"; base_url = "%s"; max_inflight = 1000; } )')


def avro_value(v):
    """A BatchItem dict in its Avro form: input as JSON text."""
    v = dict(v)
    v["input"] = json.dumps(v["input"])
    return v


def ms(v):
    """fastavro gives timestamp-millis as datetimes: back to epoch ms."""
    if isinstance(v, datetime.datetime):
        return (v - EPOCH) // datetime.timedelta(milliseconds=1)
    return v


def from_avro(d):
    """An ItemResult dict from AvroDeserializer in the JSON format's form."""
    out = {k: ms(v) for k, v in d.items()}
    if isinstance(out.get("output"), str):
        out["output"] = json.loads(out["output"])
    return out


def read_avro(env, reg, topic, count, timeout=120):
    """count messages of topic, decoded by the Python AvroDeserializer."""
    des = AvroDeserializer(SchemaRegistryClient({"url": reg.url}))
    msgs = env.consume(topic, count=count, timeout=timeout)
    ctx = SerializationContext(env.topic(topic), MessageField.VALUE)
    return [des(m.value(), ctx) for m in msgs], msgs


def producer_items(n):
    items = []
    for i in range(n):
        if i % 100 == 13:
            it = item("b-eq", i, n, model="unknown-model")  # unknown_model
        elif i % 100 == 29:
            it = item("b-eq", i, n, operation="bogus.op")  # invalid_item
        elif i % 3 == 0:
            it = item("b-eq", i, n, model="text-embed-1", operation="embeddings",
                      input={"input": f"text {i}"}, metadata={"k": str(i)})
        else:
            it = item("b-eq", i, n, metadata={"team": "a"} if i % 2 else None,
                      deadline=4102444800000, submitted_at=1700000000000 + i,
                      callback_url="https://example.com/hook")
            if it["metadata"] is None:
                del it["metadata"]
        items.append(it)
    return items


def test_avro_and_json_runs_equal(env, schema_registry, bootstrap, tmp_path):
    """Real registry. 1,000 items written by confluent-kafka's
    AvroSerializer and the same items as JSON: kbatch gives equal results,
    field by field (the Avro ones read back with AvroDeserializer)."""
    registry = schema_registry
    n = 1000
    items = producer_items(n)
    keys = [f"b-eq:{i}".encode() for i in range(n)]
    with FakeModel("--latency-ms", "1-5") as fake:
        routes = ROUTES % (fake.url, fake.url)
        # -- Avro
        conf = env.write_conf(routes=routes, extra=serde_conf(registry))
        env.create_topics(conf, partitions=4)
        ser = AvroSerializer(SchemaRegistryClient({"url": registry.url}),
                             schema_text("BatchItem"))
        ctx = SerializationContext(env.topic("items"), MessageField.VALUE)
        env.produce("items", [ser(avro_value(it), ctx) for it in items], keys=keys)
        env.worker(conf)
        avro_res, msgs = read_avro(env, registry, "results", n)
        assert len(avro_res) == n
        assert all(m.value()[0] == 0 for m in msgs), "Confluent wire format"
        # -- JSON, same items
        jenv = Env(bootstrap, tmp_path / "json")
        (tmp_path / "json").mkdir()
        try:
            jconf = jenv.write_conf(routes=routes)
            jenv.create_topics(jconf, partitions=4)
            jenv.produce("items", items, keys=keys)
            jenv.worker(jconf)
            json_res, _ = jenv.results(n, timeout=120)
        finally:
            jenv.close()
    assert len(json_res) == n
    a = {r["item_index"]: from_avro(r) for r in avro_res}
    j = {r["item_index"]: r for r in json_res}
    assert len(a) == n and set(a) == set(j)
    statuses = {}
    for i in range(n):
        assert set(a[i]) == set(j[i]), i
        for k in j[i]:
            if k not in TIMING:
                assert a[i][k] == j[i][k], (i, k, a[i][k], j[i][k])
        assert isinstance(a[i]["finished_at"], int) and a[i]["worker"]
        statuses[a[i]["error"]["code"] if a[i]["error"] else a[i]["status"]] = 1
    assert set(statuses) == {"succeeded", "unknown_model", "invalid_item"}
    subjects = registry.get("/subjects")
    assert env.topic("results") + "-value" in subjects
    assert env.topic("items") + "-value" in subjects
    # nothing was dead-lettered
    assert env.consume("items.dlq", timeout=3, idle=2) == []


# Sample JSON forms of every message type, for the both-ways interop test.
SAMPLES = {
    "BatchItem": ("batch_item", {
        "batch_id": "b-1", "item_id": "r-1", "item_index": 0, "items_total": 2,
        "model": "gpt-x", "operation": None,
        "input": {"messages": [{"role": "user", "content": "h\u00e9"}]},
        "deadline": 4102444800000, "callback_url": None,
        "metadata": {"a": "b"}, "submitted_at": None}),
    "ItemResult": ("item_result", {
        "batch_id": "b-1", "item_id": "r-1", "item_index": 0, "items_total": 2,
        "model": "gpt-x", "operation": "chat.completions", "status": "failed",
        "http_status": 429, "output": {"error": {"message": "slow down"}},
        "error": {"code": "max_attempts_exceeded", "message": "429 x5"},
        "attempts": 5, "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
        "started_at": 1700000000000, "finished_at": 1700000001000, "latency_ms": 1000,
        "worker": "w", "callback_url": None, "deadline": None, "metadata": None,
        "route": "primary", "job": {"id": "job-1", "polls": 3, "wall_ms": 2100}}),
    "BatchEvent": ("batch_event", {
        "event_id": "b-1:2", "type": "batch.updated", "revision": 2, "batch_id": "b-1",
        "status": "partial_succeeded", "items_total": 2, "items_succeeded": 1,
        "items_failed": 1, "items_cancelled": 0, "items_expired": 0,
        "usage": {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30},
        "first_result_at": 1700000000000, "completed_at": 1700000002000,
        "metadata": {"team": "a"}, "items_invalid": 0, "updated_at": 1700000003000,
        "callback_url": "https://example.com/hook"}),
    "ControlCommand": ("control", {
        "batch_id": "b-1", "action": "cancel", "requested_at": 1700000000000,
        "reason": "user asked"}),
    "BatchState": ("batch_state", {
        "batch_id": "b-1", "revision": 1, "items_total": 9, "items_succeeded": 8,
        "items_failed": 1, "items_cancelled": 0, "items_expired": 0, "usage": None,
        "statuses": base64.b64encode(b"\x55\x55\x01").decode(),
        "first_result_at": None, "completed_at": 1700000000000, "updated_at": None,
        "callback_url": "https://example.com/h", "metadata": None}),
}
JSON_TEXT = {"input", "output"}


def to_avro_form(d):
    d = dict(d)
    for k in JSON_TEXT & set(d):
        if d[k] is not None:
            d[k] = json.dumps(d[k])
    if "statuses" in d:
        d["statuses"] = base64.b64decode(d["statuses"])
    return d


def from_avro_form(d):
    d = {k: ms(v) for k, v in d.items()}
    for k in JSON_TEXT & set(d):
        if d[k] is not None:
            d[k] = json.loads(d[k])
    if "statuses" in d:
        d["statuses"] = base64.b64encode(d["statuses"]).decode()
    return d


def serde_tool(mode, typ, topic, lines, reg):
    e = dict(os.environ, KBATCH_SERDE_FORMAT="avro",
             KBATCH_SERDE_SCHEMA_REGISTRY_URL=reg.url, KBATCH_LOG_LEVEL="warn")
    r = subprocess.run([os.path.join(BUILD, "serde_bench"), mode, typ, topic],
                       input="\n".join(lines) + "\n", capture_output=True, text=True,
                       timeout=60, env=e)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_interop_both_ways(schema_registry, name):
    """Real registry. Every schema: what fastavro (AvroSerializer) writes,
    kbatch's serde reads as the JSON form; what kbatch writes (registering
    its schema itself), AvroDeserializer reads."""
    registry = schema_registry
    typ, sample = SAMPLES[name]
    topic = f"interop-{uuid.uuid4().hex[:6]}.{name}"
    client = SchemaRegistryClient({"url": registry.url})
    ctx = SerializationContext(topic, MessageField.VALUE)
    # Python -> kbatch
    data = AvroSerializer(client, schema_text(name))(to_avro_form(sample), ctx)
    out = serde_tool("decode", typ, topic, [base64.b64encode(data).decode()], registry)
    assert len(out) == 1 and not out[0].startswith("ERROR"), out
    assert json.loads(out[0]) == sample
    # kbatch -> Python
    out = serde_tool("encode", typ, topic, [json.dumps(sample)], registry)
    assert len(out) == 1 and not out[0].startswith("ERROR"), out
    raw = base64.b64decode(out[0])
    assert raw[0] == 0
    got = AvroDeserializer(client)(raw, ctx)
    assert from_avro_form(got) == sample


# Writer schemas other producers may use for BatchItem, in the order of a
# producer's evolution: v1 kbatch's own; v2 adds optional fields; v3 removes
# the optional ones; v4 changes a field's type (incompatible).
OPTIONAL = ("operation", "deadline", "callback_url", "metadata", "submitted_at")


def evolved_schema(version):
    s = json.loads(schema_text("BatchItem"))
    if version >= 2:
        s["fields"].insert(3, {"name": "priority", "type": ["null", "int"], "default": None})
        s["fields"].append({"name": "labels", "type": {"type": "array", "items": "string"},
                            "default": []})
    if version >= 3:
        s["fields"] = [f for f in s["fields"] if f["name"] not in OPTIONAL]
    if version >= 4:
        for f in s["fields"]:
            if f["name"] == "item_index":
                f["type"] = "string"
    return json.dumps(s)


def test_schema_evolution_backward(env, schema_registry):
    """Real registry (compatibility BACKWARD). A producer evolves its
    BatchItem schema: an added optional field, then removed optional fields,
    both accepted by the registry; kbatch reads items of every version. An
    incompatible change is refused with HTTP 409: the producer cannot write
    it, the subject keeps its three versions, and kbatch goes on with the
    items of the accepted versions, none dead-lettered."""
    registry = schema_registry
    with FakeModel("--latency-ms", "1") as fake:
        conf = env.write_conf(fake.url, extra=serde_conf(registry))
        env.create_topics(conf, partitions=2)
        client = SchemaRegistryClient({"url": registry.url})
        subject = env.topic("items") + "-value"
        ctx = SerializationContext(env.topic("items"), MessageField.VALUE)
        values = []
        for v in (1, 2, 3):
            ser = AvroSerializer(client, evolved_schema(v))
            for i in range(10 * (v - 1), 10 * v):
                it = avro_value(item("b-evo", i, 30, metadata={"i": str(i)},
                                     operation="chat.completions", deadline=4102444800000))
                if v >= 2:
                    it.update(priority=i, labels=["x", "y"])
                if v >= 3:
                    for k in OPTIONAL:
                        it.pop(k, None)
                values.append(ser(it, ctx))
        ids = [int.from_bytes(values[i][1:5], "big") for i in (0, 10, 20)]
        assert len(set(ids)) == 3, f"three writer schemas: {ids}"
        # the incompatible change: refused, nothing written
        with pytest.raises(SchemaRegistryError) as e:
            AvroSerializer(client, evolved_schema(4))(
                dict(avro_value(item("b-evo", 99, 30)), item_index="99"), ctx)
        assert e.value.http_status_code == 409, e.value
        assert "ncompatib" in str(e.value), e.value
        assert registry.get(f"/subjects/{subject}/versions") == [1, 2, 3]
        env.produce("items", values)
        env.worker(conf)
        res, _ = read_avro(env, registry, "results", 30)
        assert env.consume("items.dlq", timeout=2, idle=1) == []
    by = {r["item_index"]: from_avro(r) for r in res}
    assert sorted(by) == list(range(30))
    for i, r in by.items():
        assert r["status"] == "succeeded", r
        assert r["item_id"] == f"req-{i}"
        assert r["output"]["choices"][0]["message"]["content"]
        if i < 20:  # written with the optional fields
            assert r["operation"] == "chat.completions" and r["metadata"] == {"i": str(i)}
            assert r["deadline"] == 4102444800000
        else:  # without them: kbatch's defaults
            assert r["operation"] == "chat.completions" and r["metadata"] is None
            assert r["deadline"] is None and r["callback_url"] is None


# -- errors: DLQ deserialization_error with a precise message, one each ----

def _good_value(registry, topic):
    ser = AvroSerializer(SchemaRegistryClient({"url": registry.url}), schema_text("BatchItem"))
    return ser(avro_value(item("b-err", 0, 1)),
               SerializationContext(topic, MessageField.VALUE))


ERROR_CASES = {
    "wrong_magic_byte": (lambda good: b"\x01" + good[1:],
                         "wrong magic byte 0x01: the Confluent wire format starts with 0x00"),
    "json_on_an_avro_topic": (lambda good: json.dumps(item("b-err", 0, 1)).encode(),
                              "wrong magic byte 0x7b"),
    "unknown_schema_id": (lambda good: b"\x00" + (987654).to_bytes(4, "big") + good[5:],
                          "schema id 987654 not found in the schema registry"),
    "truncated": (lambda good: good[:-7],
                  "Avro value truncated or corrupt (schema id "),
    "corrupt": (lambda good: good[:5] + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01" + good[6:],
                "Avro value truncated or corrupt"),
}


@pytest.fixture(scope="module")
def error_run(bootstrap, schema_registry, tmp_path_factory):
    """Real registry. One worker over every bad value (and good ones between
    them); the unknown schema id is the registry's own 404 (error 40403)."""
    reg = schema_registry
    env = Env(bootstrap, tmp_path_factory.mktemp("avro-errors"))
    try:
        with FakeModel("--latency-ms", "1") as fake:
            conf = env.write_conf(fake.url, extra=serde_conf(reg))
            env.create_topics(conf, partitions=1)
            good = _good_value(reg, env.topic("items"))
            names = sorted(ERROR_CASES)
            values, keys = [], []
            for n in names:
                values += [ERROR_CASES[n][0](good), good]
                keys += [n.encode(), b"good"]
            env.produce("items", values, keys=keys, partition=0)
            env.worker(conf)
            dlq = env.consume("items.dlq", count=len(names), timeout=60)
            res, _ = read_avro(env, reg, "results", len(names), timeout=60)
            # everything that reached the DLQ, after a quiet while
            all_dlq = env.consume("items.dlq", timeout=10, idle=3)
        yield {m.key().decode(): m for m in dlq}, res, all_dlq
    finally:
        env.close()


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_decoding_error_goes_to_dlq(error_run, case):
    dlq, res, all_dlq = error_run
    assert case in dlq, f"no DLQ copy for {case}: {sorted(dlq)}"
    m = dlq[case]
    h = {k: v.decode() for k, v in m.headers()}
    assert h["kbatch-error-code"] == "deserialization_error"
    assert ERROR_CASES[case][1] in h["kbatch-error-message"], h["kbatch-error-message"]
    assert h["kbatch-original-topic"].endswith("items")
    # only the bad values were dead-lettered; the good items around them
    # all finished
    assert len(all_dlq) == len(ERROR_CASES)
    assert sorted(m.key().decode() for m in all_dlq) == sorted(ERROR_CASES)
    assert len(res) == len(ERROR_CASES)
    assert all(r["status"] == "succeeded" for r in res)


# -- the registry down or slow: items wait, nothing dead-lettered --------

def free_port():
    import socket
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def readyz(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def wait_readyz(port, pred, timeout=60):
    deadline = time.time() + timeout
    got = None
    while time.time() < deadline:
        got = readyz(port)
        if pred(*got):
            return got
        time.sleep(0.2)
    raise AssertionError(f"/readyz never matched: {got}")


def avro_setup(env, reg, fake_url, batch, n, more=""):
    """A worker config with an admin port, its topics, and n Avro items of
    batch in the items topic. Returns (conf, admin port)."""
    admin = free_port()
    conf = env.write_conf(fake_url, extra=serde_conf(reg, more=more),
                          admin_listen=f"127.0.0.1:{admin}")
    env.create_topics(conf, partitions=2)
    ser = AvroSerializer(SchemaRegistryClient({"url": reg.url}), schema_text("BatchItem"))
    ctx = SerializationContext(env.topic("items"), MessageField.VALUE)
    env.produce("items", [ser(avro_value(item(batch, i, n)), ctx) for i in range(n)])
    return conf, admin


def test_registry_restart_mid_run(env, schema_registry):
    """Real registry, stopped and started again (registry.sh; its storage
    survives, as a real deployment's does) in the middle of a run. Items
    whose writer schema kbatch already knows go on while it is down; an item
    with a schema new to kbatch waits: no result, no DLQ copy, no crash, the
    worker logs why and /readyz answers 503 saying why. When the registry is
    back, every item finishes, none lost."""
    reg = schema_registry
    with FakeModel("--latency-ms", "1") as fake:
        conf, admin = avro_setup(env, reg, fake.url, "b-rs", 0)
        client = SchemaRegistryClient({"url": reg.url})
        ctx = SerializationContext(env.topic("items"), MessageField.VALUE)
        v1 = AvroSerializer(client, schema_text("BatchItem"))
        v2 = AvroSerializer(client, evolved_schema(2))
        first = [v1(avro_value(item("b-rs", i, 60)), ctx) for i in range(20)]
        # serialized now: the producer needs the registry, kbatch not yet
        newer = [v2(dict(avro_value(item("b-rs", i, 60)), priority=1, labels=[]), ctx)
                 for i in range(20, 40)]
        known = [v1(avro_value(item("b-rs", i, 60)), ctx) for i in range(40, 60)]
        env.produce("items", first)
        w = env.worker(conf)
        # this client keeps the results' schema: it decodes without the
        # registry later
        des = AvroDeserializer(client)
        rctx = SerializationContext(env.topic("results"), MessageField.VALUE)
        res = [des(m.value(), rctx) for m in env.consume("results", count=20, timeout=120)]
        assert sorted(r["item_index"] for r in res) == list(range(20))
        wait_readyz(admin, lambda st, b: st == 200)

        url = reg.url
        reg.stop()
        try:
            env.produce("items", newer + known)
            w.wait_log(lambda l: "schema registry unavailable" in l.get("msg", ""), timeout=60)
            st, body = wait_readyz(admin, lambda st, b: st == 503 and "schema registry" in b)
            assert "schema registry unavailable for" in body, body
            # kbatch's caches carry the items of known schemas through
            msgs = env.consume("results", count=40, timeout=30)
            during = {des(m.value(), rctx)["item_index"] for m in msgs}
            assert set(range(40, 60)) <= during, sorted(during)
            assert not set(range(20, 40)) & during, "new schema decoded without the registry?"
            assert env.consume("items.dlq", timeout=1, idle=1) == []
            assert w.proc.poll() is None
        finally:
            reg.start()
        assert reg.url == url, "restarted on its port"
        res, _ = read_avro(env, reg, "results", 60, timeout=120)
        by = {}
        for r in res:
            by.setdefault(r["item_index"], []).append(r)
        assert sorted(by) == list(range(60)), "every item finished"
        assert all(r["status"] == "succeeded" for rs in by.values() for r in rs)
        assert env.consume("items.dlq", timeout=2, idle=1) == []
        wait_readyz(admin, lambda st, b: st == 200)
        assert w.proc.poll() is None


def test_registry_slow_items_wait(env):
    """Fake registry (a real one cannot be made slow on demand): slower than
    serde.schema_registry_timeout_ms, items wait: no result, no DLQ copy, no
    crash; the worker logs why and /readyz says it. When it is fast again,
    every item finishes."""
    reg = FakeRegistry().start()
    try:
        with FakeModel("--latency-ms", "1") as fake:
            conf, admin = avro_setup(env, reg, fake.url, "b-out", 30)
            reg.configure(delay_ms=3000)
            w = env.worker(conf)
            w.wait_log(lambda l: "schema registry unavailable" in l.get("msg", ""), timeout=60)
            st, body = wait_readyz(admin, lambda st, b: st == 503 and "schema registry" in b)
            assert "schema registry unavailable for" in body, body
            # a while of outage: nothing comes out, the worker stays up
            assert env.consume("results", timeout=4, idle=3) == []
            assert env.consume("items.dlq", timeout=1, idle=1) == []
            assert w.proc.poll() is None
            reg.configure(delay_ms=0)
            res, _ = read_avro(env, reg, "results", 30, timeout=90)
            assert sorted(r["item_index"] for r in res) == list(range(30))
            assert all(r["status"] == "succeeded" for r in res)
            assert env.consume("items.dlq", timeout=2, idle=1) == []
            wait_readyz(admin, lambda st, b: st == 200)
    finally:
        reg.stop()


def test_results_subject_incompatible_items_wait(env, schema_registry):
    """Real registry. The results subject already holds a schema kbatch's
    ItemResult is not BACKWARD compatible with: the registry refuses kbatch's
    registration with 409. Not the items' fault: they wait (no result, no DLQ
    copy), the worker logs it and /readyz says why. Once the operator
    removes the obstacle (here: deletes the subject), kbatch registers (it
    asks again every 10 s) and every item finishes, without a restart."""
    reg = schema_registry
    subject = env.topic("results") + "-value"
    old = {"type": "record", "name": "ItemResult", "namespace": "kbatch.v1",
           "fields": [{"name": "batch_id", "type": "long"}]}
    st, body = reg.request("POST", f"/subjects/{subject}/versions",
                           {"schema": json.dumps(old)})
    assert st == 200, body
    with FakeModel("--latency-ms", "1") as fake:
        conf, admin = avro_setup(env, reg, fake.url, "b-409", 10)
        w = env.worker(conf)
        st, body = wait_readyz(admin, lambda st, b: st == 503 and "HTTP 409" in b)
        assert "cannot publish kbatch.v1.ItemResult to " + env.topic("results") in body, body
        assert "refused" in body and "ncompatib" in body, body
        w.wait_log(lambda l: l.get("level") == "error" and "HTTP 409" in l.get("msg", ""))
        assert env.consume("results", timeout=4, idle=3) == []
        assert env.consume("items.dlq", timeout=1, idle=1) == []
        assert w.proc.poll() is None
        # the operator's fix. (Not PUT /config/<subject> NONE: in Apicurio a
        # subject's NONE means "no rule of its own", the global BACKWARD
        # still applies; docs/avro.md.)
        st, body = reg.request("DELETE", f"/subjects/{subject}")
        assert st == 200, body
        res, _ = read_avro(env, reg, "results", 10, timeout=90)
        assert sorted(r["item_index"] for r in res) == list(range(10))
        assert all(r["status"] == "succeeded" for r in res)
        assert env.consume("items.dlq", timeout=2, idle=1) == []
        wait_readyz(admin, lambda st, b: st == 200)
        assert len(reg.get(f"/subjects/{subject}/versions")) == 1, "kbatch's schema"


def test_lookup_only_waits_for_the_operator(env, schema_registry):
    """Real registry, serde.auto_register = false: kbatch only looks its
    results schema up; until an operator registers it the items wait and
    /readyz says why. The operator registers the schema in other formatting
    (compact JSON): with canonical hashing the registry finds it for
    kbatch's text, and every item finishes without a restart."""
    reg = schema_registry
    subject = env.topic("results") + "-value"
    with FakeModel("--latency-ms", "1") as fake:
        conf, admin = avro_setup(env, reg, fake.url, "b-lk", 10, more="auto_register = false;")
        w = env.worker(conf)
        st, body = wait_readyz(admin, lambda st, b: st == 503 and "not registered" in b)
        assert f"subject '{subject}': schema not registered" in body, body
        assert env.consume("results", timeout=4, idle=3) == []
        assert env.consume("items.dlq", timeout=1, idle=1) == []
        assert w.proc.poll() is None
        compact = json.dumps(json.loads(schema_text("ItemResult")), separators=(",", ":"))
        assert compact != schema_text("ItemResult")
        st, body = reg.request("POST", f"/subjects/{subject}/versions", {"schema": compact})
        assert st == 200, body
        res, _ = read_avro(env, reg, "results", 10, timeout=90)
        assert sorted(r["item_index"] for r in res) == list(range(10))
        assert {m for m in res[0]} >= {"batch_id", "status", "output"}
        assert env.consume("items.dlq", timeout=2, idle=1) == []
        wait_readyz(admin, lambda st, b: st == 200)
        assert reg.get(f"/subjects/{subject}/versions") == [1], "no second version"
