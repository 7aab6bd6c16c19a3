#!/usr/bin/env python3
"""kbatch's benchmark harness: kbatch against the workers a user would pick
instead, over the same items, on one real broker and the fake model.

Run through tests/bench/run.sh (`make bench`), which builds what is needed,
starts a broker and sets BENCH_BOOTSTRAP. For every scenario it preloads one
items topic, measures the ceilings (raw consume rate of that topic, raw
request rate of the fake model at the scenario's latency and connection
count), then runs one contender at a time over the same items, each with its
own consumer group and results topic, and a fresh fake model. Writes
bench/results/<stamp>.md and .json. See tests/bench/README.md.
"""
import datetime
import glob
import io
import json
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.admin import AdminClient, NewTopic

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD = os.path.join(ROOT, os.environ.get("KBATCH_BUILD", "build"))
KBATCH = os.path.join(BUILD, "kbatch")
FAKE = os.path.join(BUILD, "fake_model")
REGISTRY_SH = os.path.join(ROOT, "tests", "kafka", "registry.sh")
RAWCONSUME = os.path.join(ROOT, "build", "bench", "rawconsume")
PC_JAR = os.path.join(ROOT, "build", "bench", "pc", "pc-worker.jar")
GO_WORKER = os.path.join(ROOT, "build", "bench", "go-worker")
VENV_PY = os.path.join(ROOT, "build", "bench-venv", "bin", "python")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def env_int(name, default):
    return int(os.environ.get(name, default))


def env_float(name, default):
    return float(os.environ.get(name, default))


SCALE = env_float("BENCH_SCALE", 1.0)
PARTITIONS = env_int("BENCH_PARTITIONS", 8)
COMMIT_MS = env_int("BENCH_COMMIT_MS", 200)
RETRY_BASE_MS = env_int("BENCH_RETRY_BASE_MS", 100)
MAX_ATTEMPTS = env_int("BENCH_MAX_ATTEMPTS", 5)
RUN_TIMEOUT_S = env_int("BENCH_RUN_TIMEOUT_S", 300)
WRK_SECONDS = env_int("BENCH_WRK_SECONDS", 5)
BATCH_SIZE = env_int("BENCH_BATCH_SIZE", 1000)
PC_HEAP = os.environ.get("BENCH_PC_HEAP", "-Xms64m -Xmx256m")

# name, fake latency ms, in flight (every contender's concurrency limit),
# fail-500 rate, format, items (scaled by BENCH_SCALE, or BENCH_ITEMS_<NAME>)
SCENARIOS = [
    dict(name="overhead", title="0 ms latency (overhead)", latency=0,
         inflight=256, fail=0.0, format="json", items=50_000),
    dict(name="lat50", title="50 ms latency", latency=50,
         inflight=1000, fail=0.0, format="json", items=30_000),
    dict(name="lat500", title="500 ms latency, 2,000 in flight", latency=500,
         inflight=2000, fail=0.0, format="json", items=40_000),
    dict(name="lat2000", title="2 s latency, 10,000 in flight", latency=2000,
         inflight=10_000, fail=0.0, format="json", items=40_000),
    dict(name="errors", title="50 ms latency, 10% transient errors (HTTP 500)",
         latency=50, inflight=1000, fail=0.10, format="json", items=20_000),
    dict(name="avro", title="0 ms latency, Avro", latency=0,
         inflight=256, fail=0.0, format="avro", items=50_000),
]
CONTENDERS = ["kbatch", "go", "python", "pc"]
CONTENDER_TITLES = {
    "kbatch": "kbatch",
    "go": "Go (franz-go + net/http)",
    "python": "Python asyncio (uvloop, aiokafka + aiohttp, orjson)",
    "pc": "Parallel Consumer (Vert.x, UNORDERED)",
}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def now_ms():
    return time.time() * 1000.0


# ---------------------------------------------------------------- processes

class ProcStat:
    """CPU seconds and memory of a process, from /proc."""

    def __init__(self, pid):
        self.pid = pid

    def cpu(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError):
            return None

    def mem(self):
        """(VmRSS, VmHWM) in bytes, or (None, None)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                text = f.read()
        except OSError:
            return None, None
        out = []
        for k in ("VmRSS", "VmHWM"):
            m = re.search(rf"^{k}:\s+(\d+) kB", text, re.M)
            out.append(int(m.group(1)) * 1024 if m else None)
        return tuple(out)


class Sampler(threading.Thread):
    """Samples (wall ms, cpu s, rss) of some processes every `period` s."""

    def __init__(self, pids, period=0.1):
        super().__init__(daemon=True)
        self.stats = {k: ProcStat(p) for k, p in pids.items() if p}
        self.samples = {k: [] for k in self.stats}
        self.period = period
        self.halt = threading.Event()

    def sample(self):
        t = now_ms()
        for k, ps in self.stats.items():
            c = ps.cpu()
            rss, hwm = ps.mem()
            if c is not None:
                self.samples[k].append((t, c, rss, hwm))

    def run(self):
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(self.period)

    def stop(self):
        self.halt.set()
        self.join()
        self.sample()

    def cpu_at(self, key, t):
        """CPU seconds of `key` at wall ms t, interpolated."""
        s = self.samples.get(key) or []
        if not s:
            return None
        if t <= s[0][0]:
            return s[0][1]
        for (t0, c0, *_), (t1, c1, *_) in zip(s, s[1:]):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1)
        return s[-1][1]

    def peak_rss(self, key):
        s = self.samples.get(key) or []
        vals = [x[3] or x[2] for x in s if (x[3] or x[2])]
        return max(vals) if vals else None


def machine_cpu():
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    idle = v[3] + v[4]
    return (sum(v) - idle) / CLK_TCK, sum(v) / CLK_TCK


def thread_cpu(pid, top=6):
    """The busiest threads of a process: [[name, CPU seconds since start]]."""
    out = []
    for t in glob.glob(f"/proc/{pid}/task/*/stat"):
        try:
            with open(t) as f:
                text = f.read()
            name = text[text.index("(") + 1:text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            out.append([name, round((int(fields[11]) + int(fields[12])) / CLK_TCK, 2)])
        except (OSError, ValueError, IndexError):
            continue
    return sorted(out, key=lambda x: -x[1])[:top]


def stop_process(p, timeout=20):
    if p is None or p.poll() is not None:
        return p.returncode if p else None
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()


class Fake:
    """One fake model process (tests/fakes/fake_model.c)."""

    def __init__(self, workdir, name, latency, fail, log_responses=True):
        self.logpath = os.path.join(workdir, f"{name}.responses") if log_responses else None
        args = [FAKE, "--port", "0", "--no-item-stats", "--threads", "2",
                "--latency-ms", str(latency)]
        if fail:
            args += ["--fail-500", str(fail)]
        if self.logpath:
            args += ["--log-responses", self.logpath]
        self.errf = open(os.path.join(workdir, f"{name}.fake.log"), "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.errf,
                                     stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"fake_model did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        rc = stop_process(self.proc)
        self.proc.stdout.close()
        self.errf.close()
        return rc

    def responses(self):
        """{"batch:item": (status, arrived_ms, responded_ms)} of each item's
        last answer, and the earliest arrival."""
        last, first = {}, None
        if not self.logpath or not os.path.exists(self.logpath):
            return last, first
        with open(self.logpath) as f:
            for line in f:
                parts = line.split()
                if len(parts) != 4:
                    continue
                key, status, arr, resp = parts[0], int(parts[1]), float(parts[2]), float(parts[3])
                if first is None or arr < first:
                    first = arr
                prev = last.get(key)
                if prev is None or resp >= prev[2]:
                    last[key] = (status, arr, resp)
        return last, first


# ---------------------------------------------------------------- Kafka

class Kafka:
    def __init__(self, bootstrap):
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self._probe = None

    def create(self, name, partitions, config=None):
        fs = self.admin.create_topics([NewTopic(name, partitions, 1, config=config or {})],
                                      operation_timeout=30)
        for _, f in fs.items():
            f.result()

    def end_offsets(self, topic, partitions):
        if self._probe is None:
            self._probe = Consumer({"bootstrap.servers": self.bootstrap,
                                    "group.id": "bench-probe"})
        return [self._probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)]

    def wait_topics(self, names, timeout=30):
        """Waits until every topic of names has a leader for each partition."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            md = self.admin.list_topics(timeout=10).topics
            if all(n in md and md[n].error is None and md[n].partitions and
                   all(p.leader >= 0 for p in md[n].partitions.values()) for n in names):
                return True
            time.sleep(0.2)
        return False

    def committed_probe(self, group):
        return Consumer({"bootstrap.servers": self.bootstrap, "group.id": group,
                         "enable.auto.commit": False})

    def read_all(self, topic, partitions, decode):
        """Every message of the topic: [(decoded value, timestamp ms)]."""
        ends = self.end_offsets(topic, partitions)
        c = Consumer({"bootstrap.servers": self.bootstrap,
                      "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
                      "enable.auto.commit": False, "enable.partition.eof": True})
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)
                  if ends[p] > 0])
        left = {p for p in range(partitions) if ends[p] > 0}
        out = []
        deadline = time.time() + 120
        try:
            while left and time.time() < deadline:
                for m in c.consume(1000, 1.0):
                    if m.error():
                        continue
                    try:
                        v = decode(m.value())
                    except Exception:   # not this format: counted as unexpected
                        v = None
                    out.append((v, m.timestamp()[1]))
                    if m.offset() + 1 >= ends[m.partition()]:
                        left.discard(m.partition())
        finally:
            c.close()
        return out


# ---------------------------------------------------------------- Avro

class Registry:
    """A real Schema Registry (Apicurio Registry, tests/kafka/registry.sh:
    the Confluent-compatible API, compatibility BACKWARD), one per Avro
    scenario, its run dir (and log, registry.out) in the work dir."""

    def __init__(self, workdir):
        self.env = dict(os.environ, REGISTRY_RUN_DIR=os.path.join(workdir, "schema-registry"))
        t = time.time()
        r = subprocess.run([REGISTRY_SH, "start"], capture_output=True, text=True,
                           env=self.env, stdin=subprocess.DEVNULL, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"registry.sh start failed: {r.stderr[-2000:]}")
        self.url = r.stdout.strip()
        log(f"schema registry at {self.url} (started in {time.time() - t:.1f} s)")
        self.cache = {}

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def register(self, subject, schema):
        return self._call("POST", f"/subjects/{subject}/versions", {"schema": schema})["id"]

    def schema(self, i):
        if i not in self.cache:
            self.cache[i] = self._call("GET", f"/schemas/ids/{i}")["schema"]
        return self.cache[i]

    def stop(self):
        subprocess.run([REGISTRY_SH, "stop"], capture_output=True, env=self.env,
                       stdin=subprocess.DEVNULL, timeout=120)


def avro_schemas():
    """(BatchItem schema text, ItemResult schema text) from schemas/*.avsc,
    or a reason why the Avro scenario cannot run."""
    found = {}
    for p in sorted(glob.glob(os.path.join(ROOT, "schemas", "*.avsc"))):
        try:
            with open(p) as f:
                text = f.read()
            name = json.loads(text).get("name")
        except (OSError, ValueError, AttributeError):
            continue
        if name in ("BatchItem", "ItemResult"):
            found[name] = text
    missing = [n for n in ("BatchItem", "ItemResult") if n not in found]
    if missing:
        return None, (f"no {' / '.join(missing)} Avro schema in schemas/ "
                      "(kbatch's Avro support has not landed)")
    return (found["BatchItem"], found["ItemResult"]), None


def avro_item_value(item, schema):
    """A BatchItem as the Avro schema wants it: input as JSON text."""
    v = dict(item)
    v["input"] = json.dumps(item["input"])
    for f in schema["fields"]:
        v.setdefault(f["name"], f.get("default"))
    return v


# ---------------------------------------------------------------- items

def make_item(run_id, scn, i):
    b, idx = divmod(i, BATCH_SIZE)
    return {
        "batch_id": f"{run_id}-{scn}-{b}", "item_id": f"req-{idx}",
        "item_index": idx, "items_total": BATCH_SIZE, "model": "gpt-bench",
        "operation": "chat.completions",
        "input": {"messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Summarise item {idx} of batch {b} in one sentence."}],
            "max_tokens": 64},
        "metadata": {"team": "bench"},
    }


def preload(kafka, topic, run_id, scn, n, fmt, registry=None, item_schema=None):
    p = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 20,
                  "batch.size": 1 << 20, "acks": "all", "enable.idempotence": True,
                  "partitioner": "murmur2_random", "queue.buffering.max.messages": 1_000_000})
    if fmt == "json":
        def encode(it):
            return json.dumps(it).encode()
    else:
        import fastavro
        parsed = fastavro.parse_schema(json.loads(item_schema))
        sid = registry.register(f"{topic}-value", item_schema)
        header = b"\x00" + struct.pack(">I", sid)
        raw = json.loads(item_schema)

        def encode(it):
            buf = io.BytesIO()
            buf.write(header)
            fastavro.schemaless_writer(buf, parsed, avro_item_value(it, raw))
            return buf.getvalue()
    errs = []
    t = time.time()
    for i in range(n):
        it = make_item(run_id, scn, i)
        while True:
            try:
                p.produce(topic, encode(it), key=f"{it['batch_id']}:{it['item_index']}".encode(),
                          on_delivery=lambda e, m: e and errs.append(e))
                break
            except BufferError:
                p.poll(0.1)
        if i % 5000 == 4999:
            p.poll(0)
    if p.flush(120) != 0 or errs:
        raise RuntimeError(f"preload failed: {errs[:3]}")
    log(f"preloaded {n} items into {topic} in {time.time() - t:.1f} s")


# ---------------------------------------------------------------- contenders

def kbatch_conf(path, bootstrap, prefix, items, results, group, url, scn, registry_url):
    # Every attempt in process, as the other contenders do: retry tiers
    # (delays of seconds) are for outages, not for a 10% error rate.
    retry = (f"retry: {{ max_attempts = {MAX_ATTEMPTS}; "
             f"inprocess_attempts = {MAX_ATTEMPTS - 1}; backoff_base_ms = {RETRY_BASE_MS}; }};")
    serde = ""
    if scn["format"] == "avro":
        serde = f'serde: {{ format = "avro"; schema_registry_url = "{registry_url}"; }};'
    text = f"""# generated by tests/bench/bench.py
kafka: {{
  bootstrap_servers = "{bootstrap}";
  group_id = "{group}";
  aggregator_group_id = "{group}-aggregator";
  notifier_group_id = "{group}-notifier";
  properties = {{ statistics_interval_ms = "0"; }};
}};
topics: {{ prefix = "{prefix}"; items = "{items}"; results = "{results}";
          partitions = {PARTITIONS}; replication = 1; }};
worker: {{
  roles = ["items"];
  max_inflight = {scn["inflight"]};
  commit_interval_ms = {COMMIT_MS};
  shutdown_drain_ms = 5000;
}};
http: {{ max_connections = 0; }};
{retry}
{serde}
admin: {{ listen = ""; }};
log: {{ level = "warn"; format = "json"; }};
routes = ( {{ model = "*"; base_url = "{url}"; max_inflight = {scn["inflight"]}; }} );
"""
    with open(path, "w") as f:
        f.write(text)
    return path


def start_contender(name, scn, ctx):
    """Starts a contender; returns (Popen, None) or (None, why not)."""
    logf = open(os.path.join(ctx["dir"], f"{scn['name']}.{name}.log"), "wb")
    e = dict(os.environ)
    e.update({
        "BENCH_BOOTSTRAP": ctx["bootstrap"], "BENCH_ITEMS_TOPIC": ctx["items"],
        "BENCH_RESULTS_TOPIC": ctx["results"], "BENCH_GROUP": ctx["group"],
        "BENCH_MODEL_URL": ctx["url"], "BENCH_CONCURRENCY": str(scn["inflight"]),
        "BENCH_COMMIT_MS": str(COMMIT_MS), "BENCH_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "BENCH_RETRY_BASE_MS": str(RETRY_BASE_MS), "BENCH_FORMAT": scn["format"],
        "BENCH_SCHEMA_REGISTRY_URL": ctx.get("registry_url") or "",
        "BENCH_RESULT_SCHEMA": os.path.join(ROOT, "schemas", "ItemResult.avsc"),
        "BENCH_WORKER_ID": f"{name}-bench",
    })
    if name == "kbatch":
        conf = kbatch_conf(os.path.join(ctx["dir"], f"{scn['name']}.kbatch.conf"),
                           ctx["bootstrap"], ctx["prefix"], ctx["items_base"],
                           ctx["results_base"], ctx["group"], ctx["url"], scn,
                           ctx.get("registry_url"))
        r = subprocess.run([KBATCH, "check-config", "-c", conf], capture_output=True,
                           text=True)
        if r.returncode != 0:
            return None, "kbatch rejected the configuration: " + \
                (r.stderr.strip().splitlines() or ["?"])[-1]
        r = subprocess.run([KBATCH, "topics", "create", "-c", conf], capture_output=True,
                           text=True)
        if r.returncode != 0:
            return None, "kbatch topics create failed: " + r.stderr.strip()
        # Created is not yet visible everywhere: a worker started at once can
        # find its control topic unknown.
        ctx["kafka"].wait_topics([l.split()[-1] for l in r.stdout.splitlines() if l.strip()])
        # BENCH_KBATCH_WRAP: a command prefix for profiling, e.g.
        # "perf record -g -o /tmp/kbatch.perf" (figures are then the wrapper's).
        cmd = os.environ.get("BENCH_KBATCH_WRAP", "").split() + [KBATCH, "worker", "-c", conf]
    elif name == "go":
        if not os.path.exists(GO_WORKER):
            return None, "build/bench/go-worker not built (no Go toolchain?)"
        cmd = [GO_WORKER]
    elif name == "python":
        cmd = [VENV_PY, os.path.join(HERE, "contenders", "py_worker.py")]
    elif name == "pc":
        cmd = ["java"] + PC_HEAP.split() + [
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-jar", PC_JAR]
    else:
        raise ValueError(name)
    p = subprocess.Popen(cmd, stdout=logf, stderr=logf, env=e, stdin=subprocess.DEVNULL)
    p.logf = logf
    return p, None


def finished(kafka, probe, results, n, retry_topics):
    """Once the items topic is committed to its end: are there at least n
    results, and are the retry topics (if any) committed to their ends?"""
    if sum(kafka.end_offsets(results, PARTITIONS)) < n:
        return False
    for t in retry_topics:
        ends = kafka.end_offsets(t, PARTITIONS)
        got = probe.committed([TopicPartition(t, p) for p in range(PARTITIONS)], timeout=5)
        if any(ends[tp.partition] > 0 and tp.offset < ends[tp.partition] for tp in got):
            return False
    return True


def run_contender(kafka, scn, name, base, workdir, broker_pid, registry):
    """One contender over the scenario's items. Returns a result dict."""
    rid = f"{scn['name']}.{name}"
    res = {"scenario": scn["name"], "contender": name, "items": base["n"]}
    results_base = f"results.{name}"
    ctx = dict(kafka=kafka, bootstrap=kafka.bootstrap, dir=workdir, prefix=base["prefix"],
               items_base="items", items=base["items"], results_base=results_base,
               results=base["prefix"] + results_base,
               group=f"{base['prefix']}{name}", registry_url=registry.url if registry else None)
    kafka.create(ctx["results"], PARTITIONS, {"message.timestamp.type": "LogAppendTime"})
    fake = Fake(workdir, rid, scn["latency"], scn["fail"])
    ctx["url"] = fake.url
    try:
        proc, why = start_contender(name, scn, ctx)
    except Exception:
        fake.stop()
        raise
    if proc is None:
        fake.stop()
        res["skipped"] = why
        log(f"{rid}: skipped: {why}")
        return res
    sampler = Sampler({"contender": proc.pid, "fake": fake.proc.pid, "broker": broker_pid})
    sampler.start()
    probe = kafka.committed_probe(ctx["group"])
    tps = [TopicPartition(base["items"], p) for p in range(PARTITIONS)]
    ends = base["ends"]
    # kbatch's retry tiers: their offsets must be committed too.
    retry_topics = []
    if name == "kbatch":
        retry_topics = sorted(t for t in kafka.admin.list_topics(timeout=10).topics
                              if t.startswith(base["items"] + ".retry."))
    t_start = now_ms()
    m0, h0, l0 = machine_cpu(), sum(os.times()[:2]), loadavg()
    done_at, committed = None, 0
    exited = None
    try:
        while True:
            time.sleep(0.1)
            if proc.poll() is not None:
                exited = proc.returncode
                break
            try:
                got = probe.committed(tps, timeout=5)
            except Exception as e:  # broker hiccup: try again
                log(f"{rid}: committed(): {e}")
                continue
            committed = sum(max(tp.offset, 0) for tp in got)
            if all(tp.offset >= ends[tp.partition] for tp in got) and \
                    finished(kafka, probe, ctx["results"], base["n"], retry_topics):
                done_at = now_ms()
                break
            if now_ms() - t_start > RUN_TIMEOUT_S * 1000:
                break
    finally:
        m1, h1 = machine_cpu(), sum(os.times()[:2])
        threads = thread_cpu(proc.pid)
        probe.close()
        sampler.stop()
        rc = stop_process(proc, timeout=30)
        proc.logf.close()
        fake.stop()
    if exited is not None:
        res["skipped"] = f"exited with {exited} before finishing (see {rid}.log)"
        if name != "kbatch" and exited == 3:
            res["skipped"] = f"{scn['format']} is not implemented by this contender"
        log(f"{rid}: {res['skipped']}")
        return res
    res["exit_code"] = rc
    responses, first_arrival = fake.responses()
    t0 = first_arrival or t_start
    res["complete"] = done_at is not None
    end = done_at if done_at is not None else now_ms()
    res["seconds"] = (end - t0) / 1000
    res["committed"] = committed
    res["items_per_s"] = base["n"] / res["seconds"] if done_at else None
    c0, c1 = sampler.cpu_at("contender", t0), sampler.cpu_at("contender", end)
    if c0 is not None and c1 is not None:
        res["cpu_s"] = c1 - c0
        res["cpu_s_per_1000"] = res["cpu_s"] / base["n"] * 1000
        res["cpu_us_per_item"] = res["cpu_s"] / base["n"] * 1e6
    for k in ("fake", "broker"):
        a, b = sampler.cpu_at(k, t0), sampler.cpu_at(k, end)
        if a is not None and b is not None:
            res[f"{k}_cpu_s"] = b - a
    res["peak_rss"] = sampler.peak_rss("contender")
    res["threads"] = threads
    # Interference: CPU used by everything else on the machine meanwhile.
    ours = sum((sampler.cpu_at(k, end) or 0) - (sampler.cpu_at(k, t_start) or 0)
               for k in ("contender", "fake", "broker")) + (h1 - h0)
    span = max(1e-3, (end - t_start) / 1000)
    res["load_start"] = l0
    res["machine_busy_cores"] = (m1[0] - m0[0]) / span
    res["other_busy_cores"] = max(0.0, (m1[0] - m0[0]) - ours) / span

    # correctness and added latency, from the results topic
    decode = base["decode_result"]
    msgs = kafka.read_all(ctx["results"], PARTITIONS, decode)
    seen, dup, statuses, lat, extra_msgs = {}, 0, {}, [], 0
    for v, ts in msgs:
        if not isinstance(v, dict):
            extra_msgs += 1
            continue
        k = (v.get("batch_id"), v.get("item_index"))
        if k in seen:
            dup += 1
            continue
        seen[k] = True
        statuses[v.get("status")] = statuses.get(v.get("status"), 0) + 1
        r = responses.get(f"{v.get('batch_id')}:{v.get('item_id')}")
        if r is not None and ts and ts > 0:
            lat.append(ts - r[2])
    expected = base["keys"]
    missing = sum(1 for k in expected if k not in seen)
    extra = sum(1 for k in seen if k not in expected) + extra_msgs
    res["results_per_s"] = len(seen) / res["seconds"]
    if not res["complete"] and seen and "cpu_s" in res:   # per item done
        res["cpu_s_per_1000"] = res["cpu_s"] / len(seen) * 1000
        res["cpu_us_per_item"] = res["cpu_s"] / len(seen) * 1e6
    res.update(results=len(msgs), duplicates=dup, missing=missing, unexpected=extra,
               statuses=statuses, correct=(missing == 0 and dup == 0 and extra == 0))
    if lat:
        lat.sort()
        res["added_p50_ms"] = lat[len(lat) // 2]
        res["added_p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        res["latency_samples"] = len(lat)
    if msgs:
        ts = sorted(t for _, t in msgs if t and t > 0)
        if len(ts) > 10:
            a, b = ts[len(ts) // 10], ts[len(ts) * 9 // 10]
            if b > a:
                res["steady_items_per_s"] = (len(ts) * 0.8) / ((b - a) / 1000)
    res["items_called"] = len(responses)
    log(f"{rid}: {res['items_per_s'] or 0:.0f} items/s, cpu {res.get('cpu_us_per_item', 0):.0f} us/item, "
        f"rss {(res['peak_rss'] or 0) / 2**20:.0f} MiB, p50 {res.get('added_p50_ms')} ms, "
        f"correct={res['correct']} (missing {missing}, dup {dup}, {statuses})")
    return res


# ---------------------------------------------------------------- ceilings

def ceiling_consume(kafka, topic):
    r = subprocess.run([RAWCONSUME, kafka.bootstrap, topic], capture_output=True,
                       text=True, timeout=300)
    if r.returncode != 0:
        return {"error": r.stderr.strip()[-300:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def ceiling_http(scn, workdir):
    wrk = shutil.which("wrk")
    if not wrk:
        return {"error": "wrk not installed"}
    fake = Fake(workdir, f"{scn['name']}.wrk", scn["latency"], scn["fail"])
    # wrk counts completed requests over the window: the first round (one
    # latency) completes nothing, so the window is 20 latencies long.
    secs = max(WRK_SECONDS, min(40, int(20 * scn["latency"] / 1000)))
    try:
        r = subprocess.run([wrk, "-t", "2", "-c", str(scn["inflight"]), "-d", f"{secs}s",
                            "--timeout", "60s", "-s", os.path.join(HERE, "wrk_post.lua"),
                            fake.url + "/v1/chat/completions"],
                           capture_output=True, text=True, timeout=secs + 120)
    finally:
        fake.stop()
        if fake.logpath and os.path.exists(fake.logpath):
            os.unlink(fake.logpath)
    m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    if not m:
        return {"error": (r.stdout + r.stderr).strip()[-300:]}
    return {"per_second": float(m.group(1)), "connections": scn["inflight"],
            "seconds": secs}


# ---------------------------------------------------------------- report

def machine(bootstrap):
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except Exception:
            return ""
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    return {
        "cpus": os.cpu_count(), "cpu_model": cpu, "memory": mem,
        "kernel": platform.release(), "os": sh(". /etc/os-release; echo $PRETTY_NAME"),
        "virtualization": sh("systemd-detect-virt 2>/dev/null || true") or None,
        "kbatch": sh(f"{KBATCH} --version").splitlines()[0] if os.path.exists(KBATCH) else None,
        "librdkafka": sh("pkg-config --modversion rdkafka"),
        "libcurl": sh("pkg-config --modversion libcurl"),
        "kafka_broker": sh(f"grep -m1 -o '<kafka.version>[^<]*' {ROOT}/tests/kafka/pom.xml "
                           "| cut -d'>' -f2"),
        "java": sh("java -version 2>&1 | head -1"),
        "python": sh(f"{VENV_PY} --version"),
        "python_packages": sh(f"{VENV_PY} -m pip list --format=freeze 2>/dev/null | "
                              "grep -iE '^(aiokafka|aiohttp|uvloop|orjson|confluent-kafka|fastavro)=='").split(),
        "parallel_consumer": sh(f"grep -m1 -o '<parallel-consumer.version>[^<]*' "
                                f"{HERE}/pc/pom.xml | cut -d'>' -f2"),
        "wrk": sh("wrk -v 2>&1 | head -1"),
        "go": sh("go version"),
        "franz_go": sh(f"grep -m1 -o 'twmb/franz-go v[^ ]*' {HERE}/contenders/go/go.mod"),
        "gcc": sh("cc --version | head -1"),
    }


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def fmt(v, spec, dash="—"):
    return dash if v is None else format(v, spec)


def render_md(report):
    m, st = report["machine"], report["settings"]
    L = [f"# kbatch benchmark — {report['started']}", "",
         f"Machine: {m['cpus']} CPUs ({m['cpu_model']}{', ' + m['virtualization'] if m.get('virtualization') else ''}), "
         f"{m['memory']}, {m['os']}, Linux {m['kernel']}. "
         f"Load average (1/5/15 min) at start {report['load_start']}, at end {report['load_end']}.",
         "",
         f"Versions: {m['kbatch']}; Kafka broker {m['kafka_broker']} (single node, same host); "
         f"{m['java']}; {m['python']} with {', '.join(m['python_packages'])}; "
         f"Parallel Consumer {m['parallel_consumer']}; {m.get('go') or 'no Go'} with "
         f"{m.get('franz_go') or '?'}; {m['wrk']}.",
         "",
         f"Settings: {st['partitions']} partitions, commit interval {st['commit_ms']} ms for every "
         f"contender, retry base {st['retry_base_ms']} ms, max attempts {st['max_attempts']}, "
         f"batches of {st['batch_size']} items, Parallel Consumer heap `{st['pc_heap']}`, "
         f"scale {st['scale']}. Total time {report['seconds']:.0f} s.",
         "",
         "items/s: items ÷ (offsets committed to the end − first request at the fake); "
         "steady: the middle 80% of results ÷ the span of their broker timestamps. "
         "CPU: the contender's user+system CPU over that span. RSS: the contender's peak. "
         "Added latency: the result's broker append time − the fake's response time for that item. "
         "Correct: every item has exactly one result. Other load: CPU used meanwhile by "
         "processes outside the benchmark (e.g. other test runs), in cores.", ""]
    for s in report["scenarios"]:
        L.append(f"## {s['title']}")
        L.append("")
        if s.get("skipped"):
            L += [f"Not available: {s['skipped']}", ""]
            continue
        L.append(f"{s['items']} items, {s['inflight']} in flight, fake latency {s['latency']} ms"
                 + (f", {s['fail'] * 100:.0f}% HTTP 500" if s["fail"] else "") + f", {s['format']}.")
        L.append("")
        L.append("| contender | items/s | steady items/s | CPU s / 1,000 items | CPU µs / item "
                 "| peak RSS MiB | added p50 ms | added p99 ms | correct | results (status) "
                 "| other load (cores) |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
        for r in s["runs"]:
            name = CONTENDER_TITLES.get(r["contender"], r["contender"])
            if r.get("skipped"):
                L.append(f"| {name} | not available: {r['skipped']} | | | | | | | | | |")
                continue
            st = ", ".join(f"{k} {v}" for k, v in sorted(r.get("statuses", {}).items(),
                                                         key=lambda kv: str(kv[0])))
            corr = "yes" if r.get("correct") else \
                f"NO (missing {r.get('missing')}, duplicates {r.get('duplicates')})"
            ips = fmt(r.get("items_per_s"), ",.0f")
            if not r.get("complete"):
                corr += f"; did not finish in {r['seconds']:.0f} s"
                got = sum(r.get("statuses", {}).values())
                ips = (f"did not finish: {got} results in {r['seconds']:.0f} s "
                       f"({r.get('results_per_s', 0):,.0f}/s)")
            L.append(f"| {name} | {ips} | "
                     f"{fmt(r.get('steady_items_per_s'), ',.0f')} | "
                     f"{fmt(r.get('cpu_s_per_1000'), '.3f')} | {fmt(r.get('cpu_us_per_item'), ',.0f')} | "
                     f"{fmt(r['peak_rss'] / 2**20 if r.get('peak_rss') else None, '.0f')} | "
                     f"{fmt(r.get('added_p50_ms'), '.1f')} | {fmt(r.get('added_p99_ms'), '.1f')} | "
                     f"{corr} | {st} | {fmt(r.get('other_busy_cores'), '.2f')} |")
        c = s.get("ceilings", {})
        cc, ch = c.get("consume", {}), c.get("http", {})
        L.append("")
        L.append("Ceilings: raw consume (librdkafka, no work) "
                 + (f"{cc['per_second']:,.0f} msgs/s" if "per_second" in cc else f"n/a ({cc.get('error')})")
                 + "; fake model raw (wrk, "
                 + (f"{ch['connections']} connections) {ch['per_second']:,.0f} req/s" if "per_second" in ch
                    else f"n/a: {ch.get('error')})")
                 + (f"; latency bound {s['inflight'] * 1000 / s['latency']:,.0f} items/s"
                    if s["latency"] else "") + ".")
        L.append("")
    if report.get("goals"):
        L += ["## Goals (reported, not asserted)", ""]
        for g in report["goals"]:
            L.append(f"- {'met' if g['met'] else 'NOT met' if g['met'] is not None else 'n/a'}: "
                     f"{g['goal']} — {g['measured']}")
        L.append("")
    return "\n".join(L)


def goals(report):
    runs = {(r["scenario"], r["contender"]): r for s in report["scenarios"]
            for r in s.get("runs", [])}
    out = []

    def ok(r):
        return r is not None and not r.get("skipped") and r.get("items_per_s")

    k, py, pc, go = (runs.get(("overhead", c)) for c in ("kbatch", "python", "pc", "go"))
    if ok(k) and ok(go):
        x = k["items_per_s"] / go["items_per_s"]
        out.append(dict(goal="overhead: kbatch ≥ the Go worker in items/s",
                        measured=f"{x:.2f}×", met=x >= 1))
    if ok(k) and ok(py):
        x = k["items_per_s"] / py["items_per_s"]
        out.append(dict(goal="overhead: kbatch ≥ 5× the Python worker in items/s",
                        measured=f"{x:.1f}×", met=x >= 5))
    if ok(k) and ok(pc):
        x = k["items_per_s"] / pc["items_per_s"]
        out.append(dict(goal="overhead: kbatch ≥ 1.5× Parallel Consumer in items/s",
                        measured=f"{x:.1f}×", met=x >= 1.5))
    if ok(k) and k.get("cpu_us_per_item") is not None:
        out.append(dict(goal="overhead: kbatch ≤ 50 µs CPU per item",
                        measured=f"{k['cpu_us_per_item']:.0f} µs", met=k["cpu_us_per_item"] <= 50))
    r = runs.get(("lat500", "kbatch"))
    if ok(r):
        out.append(dict(goal="500 ms, 2,000 in flight: kbatch ≥ 90% of 4,000 items/s",
                        measured=f"{r['items_per_s']:,.0f} items/s "
                                 f"({r['items_per_s'] / 40:.0f}%)",
                        met=r["items_per_s"] >= 3600))
        if r.get("peak_rss"):
            out.append(dict(goal="kbatch peak RSS ≤ 64 MiB at 2,000 in flight",
                            measured=f"{r['peak_rss'] / 2**20:.0f} MiB",
                            met=r["peak_rss"] <= 64 * 2**20))
    r = runs.get(("lat2000", "kbatch"))
    if ok(r) and r.get("peak_rss"):
        out.append(dict(goal="kbatch peak RSS ≤ 192 MiB at 10,000 in flight",
                        measured=f"{r['peak_rss'] / 2**20:.0f} MiB",
                        met=r["peak_rss"] <= 192 * 2**20))
    return out


# ---------------------------------------------------------------- main

def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        # Re-renders a report's Markdown from its JSON.
        with open(sys.argv[2]) as f:
            print(render_md(json.load(f)))
        return
    bootstrap = os.environ.get("BENCH_BOOTSTRAP")
    if not bootstrap:
        sys.exit("bench: BENCH_BOOTSTRAP is not set (run tests/bench/run.sh)")
    broker_pid = env_int("BENCH_BROKER_PID", 0) or None
    want_s = [s for s in os.environ.get("BENCH_SCENARIOS", "").split(",") if s]
    want_c = [c for c in os.environ.get("BENCH_CONTENDERS", "").split(",") if c] or CONTENDERS
    scenarios = [s for s in SCENARIOS if not want_s or s["name"] in want_s]
    unknown = set(want_s) - {s["name"] for s in SCENARIOS} | set(want_c) - set(CONTENDERS)
    if unknown:
        sys.exit(f"bench: unknown scenario/contender: {', '.join(sorted(unknown))}")

    started = datetime.datetime.now()
    stamp = started.strftime("%Y-%m-%dT%H%M%S")
    run_id = f"bench{started.strftime('%H%M%S')}{uuid.uuid4().hex[:4]}"
    workdir = os.path.join(ROOT, "build", "bench", f"run-{stamp}")
    os.makedirs(workdir, exist_ok=True)
    outdir = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench", "results"))
    os.makedirs(outdir, exist_ok=True)
    # One snapshot of the binaries for the whole run: others may rebuild build/.
    bindir = os.path.join(workdir, "bin")
    os.makedirs(bindir, exist_ok=True)
    for name in ("KBATCH", "FAKE"):
        src = globals()[name]
        if os.path.exists(src):
            dst = os.path.join(bindir, os.path.basename(src))
            shutil.copy2(src, dst)
            globals()[name] = dst
    kafka = Kafka(bootstrap)
    report = {"started": started.strftime("%Y-%m-%d %H:%M"), "load_start": loadavg(),
              "machine": machine(bootstrap), "scenarios": [],
              "settings": dict(scale=SCALE, partitions=PARTITIONS, commit_ms=COMMIT_MS,
                               retry_base_ms=RETRY_BASE_MS, max_attempts=MAX_ATTEMPTS,
                               batch_size=BATCH_SIZE, pc_heap=PC_HEAP,
                               run_timeout_s=RUN_TIMEOUT_S)}
    log(f"run {run_id}, logs in {workdir}")
    t_all = time.time()
    for scn in scenarios:
        scn = dict(scn)
        n = env_int(f"BENCH_ITEMS_{scn['name'].upper()}", int(scn["items"] * SCALE))
        n = max(BATCH_SIZE, n - n % BATCH_SIZE)
        scn["items"] = n
        srep = dict(scn, runs=[], ceilings={})
        report["scenarios"].append(srep)
        log(f"== {scn['name']}: {scn['title']}, {n} items, load {loadavg()}")
        registry, schemas = None, None
        if scn["format"] == "json":
            decode = json.loads
        else:
            schemas, why = avro_schemas()
            if why:
                srep["skipped"] = why
                log(f"{scn['name']}: not available: {why}")
                continue
            import fastavro
            registry = Registry(workdir)
            cache = {}

            def decode(b, cache=cache, registry=registry):
                if len(b) < 5 or b[0] != 0:
                    return None
                sid = struct.unpack(">I", b[1:5])[0]
                if sid not in cache:
                    cache[sid] = fastavro.parse_schema(json.loads(registry.schema(sid)))
                return fastavro.schemaless_reader(io.BytesIO(b[5:]), cache[sid])
        prefix = f"{run_id}.{scn['name']}."
        items = prefix + "items"
        kafka.create(items, PARTITIONS)
        preload(kafka, items, run_id, scn["name"], n, scn["format"], registry,
                schemas[0] if schemas else None)
        base = dict(n=n, prefix=prefix, items=items, ends=kafka.end_offsets(items, PARTITIONS),
                    decode_result=decode,
                    keys={(f"{run_id}-{scn['name']}-{b}", i)
                          for b in range(n // BATCH_SIZE) for i in range(BATCH_SIZE)})
        srep["ceilings"]["consume"] = ceiling_consume(kafka, items)
        srep["ceilings"]["http"] = ceiling_http(scn, workdir)
        log(f"{scn['name']}: ceilings {srep['ceilings']}")
        for name in want_c:
            try:
                srep["runs"].append(run_contender(kafka, scn, name, base, workdir,
                                                  broker_pid, registry))
            except Exception as e:
                log(f"{scn['name']}.{name}: failed: {e!r}")
                srep["runs"].append({"scenario": scn["name"], "contender": name,
                                     "skipped": f"harness error: {e!r}"})
        if registry:
            registry.stop()
    report["seconds"] = time.time() - t_all
    report["load_end"] = loadavg()
    report["goals"] = goals(report)
    base = os.path.join(outdir, stamp)
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=2, default=str)
    with open(base + ".md", "w") as f:
        f.write(render_md(report) + "\n")
    log(f"wrote {base}.md and {base}.json ({report['seconds']:.0f} s)")
    print(base + ".md")


if __name__ == "__main__":
    main()
