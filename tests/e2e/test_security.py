"""kbatch against a secured Kafka (issue: reliability and security under
faults): a SASL_SSL listener with SCRAM-SHA-512 and a test CA, made by
tests/kafka/secure.sh. The worker is configured through kafka.properties
only; a wrong password fails fast with one clear error line.

The secured broker is a second broker of this module's own (started once,
about 10 s), unless KBATCH_TEST_SECURE_BOOTSTRAP and the other variables
of `secure.sh env` name one. Test clients (producing items, reading
results) use the same broker's PLAINTEXT listener; only kbatch uses SASL_SSL.
"""
import json
import os
import subprocess
import time

import pytest

from conftest import ROOT, Env, item
from fakes import FakeModel

SECURE_SH = os.path.join(ROOT, "tests", "kafka", "secure.sh")
VARS = ("KBATCH_TEST_SECURE_BOOTSTRAP", "KBATCH_TEST_PLAIN_BOOTSTRAP",
        "KBATCH_TEST_SECURE_CA", "KBATCH_TEST_SCRAM_USER", "KBATCH_TEST_SCRAM_PASSWORD")


@pytest.fixture(scope="module")
def secure():
    """{var: value} of `secure.sh env` for a running secured broker."""
    if all(os.environ.get(v) for v in VARS):
        yield {v: os.environ[v] for v in VARS}
        return
    run_dir = os.path.join(ROOT, "build", f"kafka-secure-{os.getpid()}")
    e = dict(os.environ, KAFKA_RUN_DIR=run_dir)
    r = subprocess.run([SECURE_SH, "start"], env=e, capture_output=True, text=True,
                       timeout=240)
    if r.returncode != 0:
        subprocess.run([SECURE_SH, "stop", "--clean"], env=e, capture_output=True)
        raise AssertionError(f"secure.sh start failed: {r.stderr[-3000:]}")
    try:
        out = subprocess.run([SECURE_SH, "env"], env=e, capture_output=True, text=True,
                             check=True).stdout
        yield dict(l.split("=", 1) for l in out.split())
    finally:
        subprocess.run([SECURE_SH, "stop", "--clean"], env=e, capture_output=True,
                       timeout=120)


class SecureEnv(Env):
    """An Env whose test clients use the PLAINTEXT listener and whose
    worker.conf names the SASL_SSL one, with kafka.properties for it."""

    def __init__(self, sec, tmp_path, password=None):
        super().__init__(sec["KBATCH_TEST_PLAIN_BOOTSTRAP"], tmp_path)
        self.sec = sec
        self.password = password or sec["KBATCH_TEST_SCRAM_PASSWORD"]

    def write_conf(self, *a, kafka_props=None, **kw):
        props = {"security.protocol": "SASL_SSL",
                 "sasl.mechanisms": "SCRAM-SHA-512",
                 "sasl.username": self.sec["KBATCH_TEST_SCRAM_USER"],
                 "sasl.password": self.password,
                 "ssl.ca.location": self.sec["KBATCH_TEST_SECURE_CA"]}
        props.update(kafka_props or {})
        path = super().write_conf(*a, kafka_props=props, **kw)
        text = open(path).read().replace(
            f'bootstrap_servers = "{self.bootstrap}"',
            f'bootstrap_servers = "{self.sec["KBATCH_TEST_SECURE_BOOTSTRAP"]}"')
        open(path, "w").write(text)
        return path


@pytest.fixture
def senv(secure, tmp_path):
    e = SecureEnv(secure, tmp_path)
    yield e
    e.close()


def test_pipeline_over_sasl_ssl(senv):
    """topics create, the items role and the aggregator (transactions) over
    SASL_SSL + SCRAM-SHA-512: every item has its result, the batch its
    batch.completed, and the secret appears in no log line."""
    with FakeModel() as fake:
        conf = senv.write_conf(fake.url, extra="aggregator: { commit_interval_ms = 200; };")
        assert 'security_protocol = "SASL_SSL"' in open(conf).read()
        senv.create_topics(conf, partitions=2)
        n = 200
        senv.produce("items", [item("sec", i, n) for i in range(n)],
                     keys=[f"sec:{i}".encode() for i in range(n)])
        w = senv.worker(conf, env={"KBATCH_WORKER_ROLES": "items,aggregator"})
        res, _ = senv.results(n, timeout=120)
        assert len({r["item_index"] for r in res}) == n
        assert all(r["status"] == "succeeded" for r in res)
        evs = senv.consume("batches", count=1, timeout=60, isolation="read_committed")
        assert len(evs) == 1
        ev = json.loads(evs[0].value())
        assert ev["type"] == "batch.completed" and ev["items_succeeded"] == n
        # the committed offsets reached the end: commits work over SASL_SSL
        ends = senv.end_offsets("items", 2)
        deadline = time.time() + 30
        while time.time() < deadline:
            if [tp.offset for tp in senv.committed("items", 2)] == ends:
                break
            time.sleep(0.3)
        assert [tp.offset for tp in senv.committed("items", 2)] == ends
        assert w.stop() == 0
        with open(w.logpath, "rb") as f:
            assert senv.password.encode() not in f.read()
        # check-config prints the password redacted
        out = senv.kbatch("check-config", conf=conf).stdout
        assert senv.password not in out


def test_wrong_password_fails_fast(secure, tmp_path):
    """A wrong SCRAM password: the worker exits within seconds, non-zero,
    with exactly one error line that says authentication failed and what
    to check; no reconnect storm, no secret in the log."""
    good = SecureEnv(secure, tmp_path / "good")
    (tmp_path / "good").mkdir()
    gconf = good.write_conf()
    good.create_topics(gconf, partitions=1)
    bad = SecureEnv(secure, tmp_path, password="not-the-password")
    bad.prefix, bad.group = good.prefix, good.group
    conf = bad.write_conf()
    t0 = time.time()
    w = bad.worker(conf)
    try:
        rc = w.proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker still running after 30 s: {w.tail()}")
    took = time.time() - t0
    logs = w.logs()
    errors = [l for l in logs if l["level"] == "error"]
    assert rc != 0
    assert took < 10, f"took {took:.1f} s"
    assert len(errors) == 1, errors
    msg = errors[0]["msg"]
    assert "Kafka authentication failed" in msg and "SCRAM-SHA-512" in msg, msg
    assert "sasl_password" in msg                     # what to check
    # librdkafka's own reports of the failure: a few warnings at most
    assert len(logs) < 12, [l["msg"][:120] for l in logs]
    with open(w.logpath, "rb") as f:
        text = f.read()
    assert b"not-the-password" not in text
    assert secure["KBATCH_TEST_SCRAM_PASSWORD"].encode() not in text
    # the CLI says the same, at once
    t0 = time.time()
    r = bad.kbatch("topics", "create", conf=conf, check=False)
    assert r.returncode != 0 and time.time() - t0 < 10
    assert "Kafka authentication failed" in r.stderr.splitlines()[-1]


def test_wrong_ca_is_not_trusted(secure, tmp_path):
    """A CA that did not sign the broker's certificate: TLS fails before
    SASL (the password is never sent), the worker processes nothing and
    gives up at start-up (it cannot read the control topic), naming the
    certificate failure in its log."""
    other = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=other", "-keyout", str(tmp_path / "other.key"),
                    "-out", str(other)], check=True, capture_output=True)
    e = SecureEnv(secure, tmp_path)
    gconf = e.write_conf()
    e.create_topics(gconf, partitions=1)
    e.produce("items", [item("ca", 0, 1)])
    with FakeModel() as fake:
        conf = e.write_conf(fake.url, kafka_props={"ssl.ca.location": str(other)},
                            name="other.conf")
        w = e.worker(conf)
        try:
            rc = w.proc.wait(40)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after 40 s: {w.tail()}")
        assert rc != 0
        msgs = [l.get("msg", "") for l in w.logs()]
        assert any("certificate verify failed" in m for m in msgs), msgs
        assert fake.stats(items=False)["requests_total"] == 0
