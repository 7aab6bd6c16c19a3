"""One e2e run with the worker under valgrind memcheck (issue: reliability
and security under faults): a batch through the items and aggregator roles,
with retries, a DLQ copy, invalid items and a SIGTERM drain at the end. The
run must be clean: no invalid read or write, no use of uninitialised
memory, no definite leak (--errors-for-leak-kinds=definite). "Still
reachable" blocks (librdkafka's and OpenSSL's process-wide state) are not
errors; no suppressions are used.

Needs valgrind (tests/deps.sh installs it)."""
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import BUILD, KBATCH, item
from fakes import FakeModel


def test_worker_under_memcheck(env, tmp_path):
    vg = shutil.which("valgrind")
    if not vg:
        pytest.fail("valgrind is not installed (run tests/deps.sh)")
    with FakeModel() as fake:
        conf = env.write_conf(
            fake.url,
            extra="aggregator: { commit_interval_ms = 300; };\n"
                  "retry: { max_attempts = 2; inprocess_attempts = 1; "
                  "backoff_base_ms = 10; backoff_max_ms = 20; delays_ms = [200]; };")
        env.create_topics(conf, partitions=2)
        n = 40
        items = [item("vg", i, n) for i in range(n)]
        items[3]["input"]["fake"] = {"status": 500, "times": 1}     # retried, then ok
        items[4]["input"]["fake"] = {"status": 503, "times": 10}    # exhausted: DLQ
        items[5]["input"]["fake"] = {"mode": "garbage"}             # invalid_response
        items[6]["input"] = "not an object"                         # invalid_item
        items[7]["input"]["fake"] = {"status": 429, "times": 1, "retry_after": 0}
        env.produce("items", items, keys=[f"vg:{i}".encode() for i in range(n)])
        env.produce("items", [b"not json at all"])                  # DLQ only
        log = tmp_path / "valgrind.log"
        wlog = open(tmp_path / "worker.log", "wb")
        cmd = [vg, "--tool=memcheck", "--leak-check=full",
               "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite",
               "--error-exitcode=99", "--track-origins=yes", "--num-callers=30",
               f"--log-file={log}", KBATCH, "worker", "-c", conf]
        e = dict(os.environ, KBATCH_WORKER_ROLES="items,aggregator")
        p = subprocess.Popen(cmd, stdout=wlog, stderr=wlog, env=e)
        try:
            res, _ = env.results(n, timeout=300)
            assert len({r["item_index"] for r in res}) == n, len(res)
            by = {r["item_index"]: r for r in res}
            assert by[3]["status"] == "succeeded"
            assert by[4]["error"]["code"] == "max_attempts_exceeded"
            assert by[5]["error"]["code"] == "invalid_response"
            assert by[6]["error"]["code"] == "invalid_item"
            assert by[7]["status"] == "succeeded"
            evs = env.consume("batches", count=1, timeout=120, isolation="read_committed")
            assert len(evs) == 1
            # let a commit or two happen, then drain and exit
            time.sleep(1)
            p.send_signal(signal.SIGTERM)
            rc = p.wait(240)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            wlog.close()
        report = log.read_text()
        summary = [l for l in report.splitlines() if "ERROR SUMMARY" in l
                   or "definitely lost" in l or "Invalid" in l]
        assert rc == 0, f"exit {rc}; valgrind says:\n" + report[-6000:]
        assert "ERROR SUMMARY: 0 errors" in report, "\n".join(summary)
        print("valgrind:", "; ".join(s.split("== ")[-1] for s in summary))
