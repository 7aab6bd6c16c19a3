"""Fixtures for the e2e suite: a real Kafka broker, the fake model API and
real `kbatch` processes. Every test gets its own topic prefix and group ids,
so tests share one broker without seeing each other's messages."""
import base64
import json
import os
import signal
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from fakes import FakeModel

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, os.environ.get("KBATCH_BUILD", "build"))
KBATCH = os.path.join(BUILD, "kbatch")


def decode_meta(meta):
    """The done-above map of a commit's metadata, as a set: "kb1:" + base64
    bitmap, bit i = offset committed + i done (SPEC §5)."""
    if not meta or not meta.startswith("kb1:"):
        return set()
    b64 = meta[4:]
    raw = base64.b64decode(b64 + "=" * (-len(b64) % 4))
    return {i for i in range(len(raw) * 8) if raw[i // 8] >> (i % 8) & 1}


@pytest.fixture(scope="session")
def bootstrap():
    bs = os.environ.get("KBATCH_TEST_BOOTSTRAP")
    if not bs:
        pytest.fail("KBATCH_TEST_BOOTSTRAP is not set: run tests/e2e/run.sh")
    return bs


@pytest.fixture(scope="session")
def schema_registry():
    """A real Schema Registry (Apicurio, tests/kafka/registry.sh), started
    once per session by the first test that asks for it (~5-8 s)."""
    from registries import RealRegistry
    reg = RealRegistry(os.path.join(BUILD, "registry-e2e"))
    reg.stop(clean=True)  # a leftover of an interrupted session
    reg.start()
    yield reg
    reg.stop(clean=True)


@pytest.fixture
def fake():
    with FakeModel() as f:
        yield f


class Env:
    """One test's world: topic prefix, group ids, config file, clients."""

    def __init__(self, bootstrap, tmp_path):
        self.bootstrap = bootstrap
        self.tmp = tmp_path
        self.id = uuid.uuid4().hex[:8]
        self.prefix = f"t{self.id}."
        self.group = f"kbatch-workers-{self.id}"
        self.workers = []
        self._producer = None

    def topic(self, name):
        return self.prefix + name

    def write_conf(self, base_url="http://127.0.0.1:8000", extra="",
                   routes=None, max_inflight=1000, worker_extra="", name="worker.conf", commit_interval_ms=1000,
                   kafka_props=None, admin_listen="", log_level="info"):
        if routes is None:
            routes = f'( {{ model = "*"; base_url = "{base_url}"; max_inflight = 100000; }} )'
        props = {"statistics.interval.ms": 0}
        props.update(kafka_props or {})
        # libconfig names cannot contain dots: kbatch reads "_" as "."
        props_s = "\n".join(f'    {k.replace(".", "_")} = "{v}";' for k, v in props.items())
        text = f"""
kafka: {{
  bootstrap_servers = "{self.bootstrap}";
  group_id = "{self.group}";
  aggregator_group_id = "kbatch-aggregator-{self.id}";
  notifier_group_id = "kbatch-notifier-{self.id}";
  properties = {{
{props_s}
  }};
}};
topics: {{ prefix = "{self.prefix}"; partitions = 4; replication = 1; }};
worker: {{
  roles = ["items"];
  max_inflight = {max_inflight};
  shutdown_drain_ms = 10000;
  commit_interval_ms = {commit_interval_ms};
  {worker_extra}
}};
admin: {{ listen = "{admin_listen}"; }};
log: {{ level = "{log_level}"; format = "json"; }};
routes = {routes};
{extra}
"""
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def kbatch(self, *args, conf=None, check=True, timeout=120, env=None):
        cmd = [KBATCH] + list(args)
        if conf:
            cmd += ["-c", conf]
        e = dict(os.environ)
        e.update(env or {})
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
        if check and r.returncode != 0:
            raise AssertionError(f"{cmd} exited {r.returncode}: {r.stderr}")
        return r

    def create_topics(self, conf, partitions=4):
        self.kbatch("topics", "create", "--partitions", str(partitions), conf=conf)

    # -- producing ---------------------------------------------------
    @property
    def producer(self):
        if self._producer is None:
            self._producer = Producer({"bootstrap.servers": self.bootstrap,
                                       "linger.ms": 5, "enable.idempotence": True,
                                       "partitioner": "murmur2_random"})
        return self._producer

    def produce(self, topic, values, keys=None, headers=None, partition=None):
        """values: list of dicts (JSON-encoded) or bytes."""
        errs = []

        def dr(err, msg):
            if err:
                errs.append(err)
        for i, v in enumerate(values):
            if isinstance(v, (dict, list)):
                v = json.dumps(v).encode()
            kw = {}
            if partition is not None:
                kw["partition"] = partition
            self.producer.produce(self.topic(topic) if not topic.startswith(self.prefix) else topic,
                                  value=v, key=(keys[i] if keys else None),
                                  headers=(headers[i] if headers else None),
                                  on_delivery=dr, **kw)
            if i % 1000 == 999:
                self.producer.poll(0)
        assert self.producer.flush(30) == 0
        assert not errs, errs

    # -- consuming ---------------------------------------------------
    def consume(self, topic, count=None, timeout=60, idle=None, isolation="read_uncommitted"):
        """Reads a topic from the beginning until `count` messages were seen
        (or, with count None, until `idle` seconds pass without one)."""
        c = Consumer({"bootstrap.servers": self.bootstrap,
                      "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                      "auto.offset.reset": "earliest",
                      "enable.auto.commit": False,
                      "isolation.level": isolation})
        c.subscribe([self.topic(topic)])
        out = []
        deadline = time.time() + timeout
        last = time.time()
        try:
            while time.time() < deadline:
                if count is not None and len(out) >= count:
                    break
                if idle is not None and time.time() - last > idle:
                    break
                m = c.poll(0.2)
                if m is None or m.error():
                    continue
                last = time.time()
                out.append(m)
        finally:
            c.close()
        return out

    def results(self, count, timeout=60, idle=None):
        msgs = self.consume("results", count=count, timeout=timeout, idle=idle)
        return [json.loads(m.value()) for m in msgs], msgs

    def committed(self, topic, partitions, group=None):
        c = Consumer({"bootstrap.servers": self.bootstrap,
                      "group.id": group or self.group, "enable.auto.commit": False})
        try:
            tps = [TopicPartition(self.topic(topic), p) for p in range(partitions)]
            return c.committed(tps, timeout=10)
        finally:
            c.close()

    def describe(self, conf):
        """`kbatch topics describe --json`: {topic name: topic object}.
        (confluent-kafka's TopicPartition.metadata reads past the end of the
        committed metadata, so committed state is read through kbatch.)"""
        out = json.loads(self.kbatch("topics", "describe", "--json", conf=conf).stdout)
        return {t["name"]: t for t in out["topics"]}

    def end_offsets(self, topic, partitions):
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "probe"})
        try:
            return [c.get_watermark_offsets(TopicPartition(self.topic(topic), p), timeout=10)[1]
                    for p in range(partitions)]
        finally:
            c.close()

    # -- workers -----------------------------------------------------
    def worker(self, conf, env=None, name=None):
        w = Worker(conf, self.tmp / f"{name or 'worker'}-{len(self.workers)}.log", env)
        self.workers.append(w)
        w.start()
        return w

    def close(self):
        for w in self.workers:
            w.stop(sig=signal.SIGKILL)
        if self._producer is not None:
            self._producer.flush(5)


class Worker:
    def __init__(self, conf, logpath, env=None):
        self.conf = conf
        self.logpath = logpath
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.proc = None

    def start(self):
        self.logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen([KBATCH, "worker", "-c", self.conf],
                                     stdout=self.logf, stderr=self.logf, env=self.env)
        return self

    def logs(self):
        with open(self.logpath, "rb") as f:
            return [json.loads(l) for l in f.read().decode(errors="replace").splitlines()
                    if l.startswith("{")]

    def wait_log(self, pred, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}: {self.tail()}")
            for l in self.logs():
                if pred(l):
                    return l
            time.sleep(0.2)
        raise AssertionError(f"log line not seen in {timeout}s: {self.tail()}")

    def wait_assigned(self, timeout=60):
        return self.wait_log(lambda l: l.get("msg", "").startswith("assigned"), timeout)

    def tail(self, n=30):
        with open(self.logpath, "rb") as f:
            return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"worker did not stop within {timeout}s: {self.tail()}")
        finally:
            self.logf.close()


@pytest.fixture
def env(bootstrap, tmp_path):
    e = Env(bootstrap, tmp_path)
    yield e
    e.close()


def item(batch_id, index, total, model="gpt-test", content=None, **kw):
    """A native BatchItem."""
    it = {"batch_id": batch_id, "item_id": f"req-{index}", "item_index": index,
          "items_total": total, "model": model,
          "input": {"messages": [{"role": "user", "content": content or f"hello {index}"}]}}
    it.update(kw)
    return it
