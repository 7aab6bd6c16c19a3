"""Limits and hostile input on a real broker (issue: reliability and
security under faults): values at and over the size limits, 10 MiB model
responses, control characters where they could reach request headers,
deeply nested JSON, huge or negative or overflowing numbers. Each is
refused with its SPEC §4 outcome (a failed result with invalid_item or
response_too_large, or a DLQ copy when no result can be addressed), the
items around it are unaffected, and the worker's memory stays bounded."""
import json
import time

from conftest import item
from fakes import FakeModel

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def vm_hwm_kib(pid):
    """Peak resident set size of a process (VmHWM), KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def results_by(env, want, timeout=90):
    """Reads results until `want` (a set of (batch_id, item_index)) all have
    one; returns {(batch_id, item_index): result} (the last one of each)."""
    from confluent_kafka import Consumer
    import uuid
    c = Consumer({"bootstrap.servers": env.bootstrap, "group.id": f"l-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([env.topic("results")])
    out = {}
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and not want <= set(out):
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            r = json.loads(m.value())
            out[(r["batch_id"], r["item_index"])] = r
    finally:
        c.close()
    missing = want - set(out)
    assert not missing, f"no result for {sorted(missing)[:5]}"
    return out


def sized_item(batch_id, index, total, size):
    """An item whose compact JSON encoding is exactly `size` bytes."""
    it = item(batch_id, index, total)
    it["input"]["messages"][0]["content"] = ""
    base = len(json.dumps(it, separators=(",", ":")).encode())
    assert size >= base
    it["input"]["messages"][0]["content"] = "x" * (size - base)
    assert len(json.dumps(it, separators=(",", ":")).encode()) == size
    return it


def produce_raw(env, values, headers=None):
    """Produces values exactly as given (bytes: no re-encoding)."""
    env.produce("items", [v if isinstance(v, bytes) else
                          json.dumps(v, separators=(",", ":")).encode() for v in values],
                headers=headers)


def dlq_by_offset(env, n, timeout=60):
    msgs = env.consume("items.dlq", count=n, timeout=timeout)
    assert len(msgs) >= n, f"only {len(msgs)} of {n} DLQ copies"
    out = {}
    for m in msgs:
        h = {k: v.decode() for k, v in m.headers()}
        out[int(h["kbatch-original-offset"])] = (m, h)
    return out


def test_field_limits_at_and_over(env):
    """Every SPEC §2 limit, exactly at it (accepted) and one over (refused):
    item size, item_id length (in characters, not bytes), batch_id length,
    metadata entries, key and value lengths, items_total, item_index."""
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, worker_extra="max_item_bytes = 4096;")
        env.create_topics(conf, partitions=1)
        T = 30
        ok, bad = {}, {}
        ok[0] = sized_item("lim", 0, T, 4096)
        bad[1] = (sized_item("lim", 1, T, 4097), "over the limit of 4096")
        ok[2] = dict(item("lim", 2, T), item_id="\u00e9" * 256)      # 512 bytes
        bad[3] = (dict(item("lim", 3, T), item_id="x" * 257), "'item_id' must be 1-256")
        bad[4] = (dict(item("lim", 4, T), item_id=""), "'item_id' must be 1-256")
        ok[5] = item("lim", 5, T, metadata={f"k{i}": "v" for i in range(16)})
        bad[6] = (item("lim", 6, T, metadata={f"k{i}": "v" for i in range(17)}),
                  "more than 16 entries")
        ok[7] = item("lim", 7, T, metadata={"k" * 64: "v" * 512})
        bad[8] = (item("lim", 8, T, metadata={"k" * 65: "v"}), "key longer than 64")
        bad[9] = (item("lim", 9, T, metadata={"k": "v" * 513}), "longer than 512")
        bad[10] = (item("lim", 10, T, metadata={"k": 5}), "is not a string")
        bad[11] = (item("lim", 11, T, deadline=-5), "'deadline' must be a positive")
        bad[12] = (item("lim", 12, T, deadline=1.5), "'deadline' is not an integer")
        bad[13] = (item("lim", 13, T, model=""), "'model' is empty")
        bad[14] = (item("lim", 14, T, operation=7), "'operation' is not a string")
        bad[15] = (item("lim", 15, T, input=[1, 2]), "'input' is not a JSON object")
        for i in range(16, T):
            ok[i] = item("lim", i, T)
        # batches of their own: the limits of the address itself
        big_total = item("b-" + "x" * 126, 999999, 1000000)             # 128 chars, max total
        over_total = item("tot", 0, 1000001)
        huge_total = item("tot", 1, 2**63 - 1)
        neg_total = item("tot", 2, -1)
        neg_index = item("idx", -1, 5)
        index_eq_total = item("idx", 5, 5)
        float_index = item("idx", 1.0, 5)
        values = [ok.get(i) or bad[i][0] for i in range(T)]
        values += [big_total, over_total, huge_total, neg_total, neg_index,
                   index_eq_total, float_index]
        produce_raw(env, values)
        w = env.worker(conf)
        want = {("lim", i) for i in range(T)}
        want |= {("b-" + "x" * 126, 999999), ("tot", 0), ("tot", 1), ("tot", 2),
                 ("idx", -1), ("idx", 5)}
        res = results_by(env, want)
        for i in ok:
            r = res[("lim", i)]
            assert r["status"] == "succeeded", (i, r["error"])
        for i, (_, why) in bad.items():
            r = res[("lim", i)]
            assert r["status"] == "failed" and r["error"]["code"] == "invalid_item", (i, r)
            assert why in r["error"]["message"], (i, r["error"]["message"])
            assert r["attempts"] == 0
        assert res[("b-" + "x" * 126, 999999)]["status"] == "succeeded"
        for k, why in ((("tot", 0), "between 1 and 1000000"), (("tot", 1), "between 1 and 1000000"),
                       (("tot", 2), "between 1 and 1000000"),
                       (("idx", -1), "between 0 and items_total-1"),
                       (("idx", 5), "between 0 and items_total-1")):
            assert res[k]["error"]["code"] == "invalid_item", (k, res[k])
            assert why in res[k]["error"]["message"], (k, res[k]["error"])
        # a float item_index: no usable address, so no result: DLQ only
        dlq = dlq_by_offset(env, 1)
        (m, h), = dlq.values()
        assert h["kbatch-error-code"] == "invalid_item"
        assert "'item_index' is not an integer" in h["kbatch-error-message"]
        assert json.loads(m.value())["item_index"] == 1.0
        # a batch_id one over the limit cannot be addressed either
        produce_raw(env, [item("b" * 129, 0, 1)])
        dlq = dlq_by_offset(env, 2)
        assert "'batch_id' must be 1-128" in dlq[len(values)][1]["kbatch-error-message"]
        # only the valid items reached the model
        assert fake.stats(items=False)["requests_total"] == len(ok) + 1
        assert w.stop() == 0


def test_overflowing_numbers_and_deep_nesting(env):
    """Numbers jansson cannot hold and nesting deeper than its parser allows
    make a value that cannot be decoded at all: DLQ deserialization_error,
    never a crash. Nesting the parser does allow goes through, both ways."""
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, worker_extra="max_item_bytes = 1048576;")
        env.create_topics(conf, partitions=1)
        # 1000 nested objects and a 1500-deep list (written as text: too
        # deep for Python's own json module)
        ok_deep = (b'{"batch_id":"deep","item_id":"req-0","item_index":0,"items_total":2,'
                   b'"model":"gpt-test","input":{"messages":[{"role":"user","content":"hi"}],'
                   b'"nested":' + b'{"n":' * 1000 + b"{}" + b"}" * 1000 + b","
                   b'"nested_list":' + b"[" * 1500 + b"]" * 1500 + b"}}")
        raw = [
            ok_deep,
            # 2^64: not an int64
            b'{"batch_id":"num","item_id":"a","item_index":18446744073709551616,'
            b'"items_total":2,"model":"m","input":{}}',
            # 1e400 as an integer literal's neighbour: a real out of range
            b'{"batch_id":"num","item_id":"b","item_index":1,"items_total":2,'
            b'"model":"m","input":{"t":1e400}}',
            # 100,000 levels: far past the parser's depth limit
            b'{"batch_id":"deep","item_id":"x","item_index":1,"items_total":2,"model":"m",'
            b'"input":{"a":' + b"[" * 100000 + b"]" * 100000 + b"}}",
            # a NUL inside a string (jansson refuses it: C strings)
            b'{"batch_id":"num","item_id":"nul\\u0000","item_index":0,"items_total":2,'
            b'"model":"m","input":{}}',
            json.dumps(item("deep", 1, 2)).encode(),
        ]
        produce_raw(env, raw)
        w = env.worker(conf)
        res = results_by(env, {("deep", 0), ("deep", 1)})
        assert res[("deep", 0)]["status"] == "succeeded", res[("deep", 0)]["error"]
        assert res[("deep", 1)]["status"] == "succeeded"
        dlq = dlq_by_offset(env, 4)
        assert sorted(dlq) == [1, 2, 3, 4]
        for off in (1, 2, 3, 4):
            m, h = dlq[off]
            assert h["kbatch-error-code"] == "deserialization_error", h
            assert m.value() == raw[off]          # the original bytes, unchanged
        assert "depth" in dlq[3][1]["kbatch-error-message"]
        assert fake.stats(items=False)["requests_total"] == 2
        assert w.stop() == 0


def test_control_characters_never_reach_request_headers(env):
    """The item id and the W3C trace headers of an item go into the model
    request's headers: a CR/LF there would let whoever publishes items add
    headers of their choosing (or split the request). An item_id with a
    control character is invalid_item; a tracestate header with one is
    dropped; a traceparent that is not valid is replaced by a new trace."""
    with FakeModel() as fake:
        conf = env.write_conf(fake.url)
        env.create_topics(conf, partitions=1)
        values = [
            item("ctl", 0, 6, item_id="a\r\nX-Injected: 0"),
            item("ctl", 1, 6, item_id="tab\tinside"),
            item("ctl", 2, 6, item_id="del\x7f"),
            item("ctl", 3, 6),
            item("ctl", 4, 6),
            item("ctl", 5, 6, metadata={"note": "line1\r\nline2\x01\x1b[31m"}),
        ]
        headers = [None, None, None,
                   [("traceparent", TRACEPARENT.encode()),
                    ("tracestate", b"k=v\r\nX-Injected: 3")],
                   [("traceparent", b"00-abc\r\nX-Injected: 4"), ("tracestate", b"k=v")],
                   [("traceparent", TRACEPARENT.encode()), ("tracestate", b"k=v,l=w")]]
        produce_raw(env, values, headers=headers)
        w = env.worker(conf)
        res = results_by(env, {("ctl", i) for i in range(6)})
        for i in (0, 1, 2):
            r = res[("ctl", i)]
            assert r["status"] == "failed" and r["error"]["code"] == "invalid_item", r
            assert "control characters" in r["error"]["message"]
        for i in (3, 4, 5):
            assert res[("ctl", i)]["status"] == "succeeded", res[("ctl", i)]
        # metadata is JSON only: echoed exactly, control characters and all
        assert res[("ctl", 5)]["metadata"] == {"note": "line1\r\nline2\x01\x1b[31m"}
        st = fake.stats()
        assert set(st["by_item"]) == {"ctl:req-3", "ctl:req-4", "ctl:req-5"}
        for key, it in st["by_item"].items():
            hdrs = it["last_headers"]
            assert not any(k.lower().startswith("x-injected") for k in hdrs), (key, hdrs)
            for k, v in hdrs.items():
                assert "\r" not in v and "\n" not in v, (key, k, v)
        h3 = st["by_item"]["ctl:req-3"]["last_headers"]
        assert h3["traceparent"] == TRACEPARENT and "tracestate" not in h3
        h4 = st["by_item"]["ctl:req-4"]["last_headers"]
        assert h4["traceparent"] != "00-abc" and len(h4["traceparent"]) == 55
        assert "tracestate" not in h4           # it belonged to the bad trace
        h5 = st["by_item"]["ctl:req-5"]["last_headers"]
        assert h5["traceparent"] == TRACEPARENT and h5["tracestate"] == "k=v,l=w"
        assert w.stop() == 0


def test_large_model_responses_bounded_memory(env):
    """10 MiB model responses (under http.max_response_bytes, 16 MiB, but
    far over a Kafka message) end response_too_large without their body;
    a 17 MiB one is cut off while it is read. Many of them, 4 at a time:
    the worker's peak memory stays within a small multiple of
    max_inflight x response size, and the small items in between succeed."""
    with FakeModel() as fake:
        conf = env.write_conf(fake.url, max_inflight=4)
        env.create_topics(conf, partitions=1)
        values = []
        n_big = 16
        for i in range(n_big):
            it = item("big", i, n_big + 9)
            it["input"]["fake"] = {"body_bytes": 10 * 1024 * 1024}
            values.append(it)
        over = item("big", n_big, n_big + 9)
        over["input"]["fake"] = {"body_bytes": 17 * 1024 * 1024}
        values.append(over)
        values += [item("big", n_big + 1 + i, n_big + 9) for i in range(8)]
        produce_raw(env, values)
        w = env.worker(conf)
        res = results_by(env, {("big", i) for i in range(n_big + 9)}, timeout=180)
        for i in range(n_big):
            r = res[("big", i)]
            assert r["status"] == "failed" and r["error"]["code"] == "response_too_large", r
            assert r["output"] is None
            assert "Kafka message" in r["error"]["message"]
        r = res[("big", n_big)]
        assert r["error"]["code"] == "response_too_large"
        assert "16777216" in r["error"]["message"]
        for i in range(n_big + 1, n_big + 9):
            assert res[("big", i)]["status"] == "succeeded"
        hwm = vm_hwm_kib(w.proc.pid)
        print(f"limits: worker peak RSS {hwm} KiB after {n_big} x 10 MiB responses, 4 in flight")
        # 4 in flight x (response buffer + parsed copy + encoded result)
        # plus librdkafka and the process: about 110 MiB measured. Holding
        # every body (no bound) would need n_big x 2 x 10 MiB = 320 MiB.
        assert hwm < 300 * 1024, hwm
        assert w.stop() == 0
