"""The command line: exit codes, one-line errors, check-config, topics."""
import json
import os
import subprocess

from conftest import KBATCH


def run(*args, env=None, input=None):
    return subprocess.run([KBATCH, *args], capture_output=True, text=True, env=env,
                          input=input, timeout=60)


def one_line(s):
    return len(s.strip().splitlines()) == 1


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("kbatch ")
    # librdkafka 2.8.0 of tests/rdkafka.sh (issue 18), found through the
    # binary's rpath, not LD_LIBRARY_PATH or the system's 2.0.2.
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    r = run("--version", env=env)
    assert r.returncode == 0 and "librdkafka 2.8.0," in r.stdout, r.stdout
    assert "built with headers" not in r.stdout, r.stdout   # and its rdkafka.h
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("worker", "topics", "check-config"):
        assert cmd in r.stdout
    for cmd in ("worker", "topics", "check-config"):
        r = run(cmd, "--help")
        assert r.returncode == 0 and "usage: kbatch" in r.stdout, cmd


def test_usage_errors_exit_2_with_one_line():
    cases = [(), ("nope",), ("--bogus",), ("worker", "--bogus"), ("worker", "extra"),
             ("topics",), ("topics", "drop"), ("topics", "create", "--partitions", "0"),
             ("topics", "describe", "--nope"), ("check-config", "--nope")]
    for args in cases:
        r = run(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert one_line(r.stderr), (args, r.stderr)
        assert r.stdout == "", args


def test_config_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text('worker = {\n  max_inflight = 0;\n};\n')
    for cmd in (["check-config"], ["worker"], ["topics", "create"]):
        r = run(*cmd, "-c", str(bad))
        assert r.returncode == 2, cmd
        assert one_line(r.stderr)
        assert f"{bad}:2:" in r.stderr and "max_inflight" in r.stderr, r.stderr
    bad.write_text('worker = {\n  max_inflight = 10;\n  nope = 1;\n};\n')
    r = run("check-config", "-c", str(bad))
    assert r.returncode == 2 and f"{bad}:3:" in r.stderr and "nope" in r.stderr
    bad.write_text('kafka = { properties = { socket_timeout_ms = "x"; }; };\n')
    r = run("check-config", "-c", str(bad))
    assert r.returncode == 2 and "socket.timeout.ms" in r.stderr, r.stderr
    r = run("check-config", "-c", str(tmp_path / "missing.conf"))
    assert r.returncode == 2 and one_line(r.stderr)


def test_check_config_prints_effective_config_redacted(tmp_path):
    conf = tmp_path / "w.conf"
    conf.write_text('kafka = { properties = { sasl_password = "hunter2"; }; };\n'
                    'routes = ( { model = "*"; base_url = "http://x"; '
                    'headers = { Authorization = "Bearer sk-secret"; }; } );\n')
    import os
    env = dict(os.environ, KBATCH_WORKER_MAX_INFLIGHT="77")
    r = run("check-config", "-c", str(conf), env=env)
    assert r.returncode == 0, r.stderr
    assert "hunter2" not in r.stdout and "sk-secret" not in r.stdout
    assert "max_inflight = 77" in r.stdout
    # the printed configuration is itself a valid configuration
    again = tmp_path / "again.conf"
    again.write_text(r.stdout)
    r2 = run("check-config", "-c", str(again), "-q")
    assert r2.returncode == 0, r2.stderr


def test_topics_create_is_idempotent_and_describe(env):
    conf = env.write_conf()
    r = env.kbatch("topics", "create", "--partitions", "3", conf=conf)
    created = {l.split()[1][len(env.prefix):] for l in r.stdout.splitlines()
               if l.startswith("created")}
    # SPEC §1's topics (3 retry tiers), the priority lane and the async job
    # ids (§12), and the HTTP API's records (§11)
    assert created == {"items", "items.retry.1", "items.retry.2", "items.retry.3",
                       "items.priority", "items.jobs", "items.dlq", "results",
                       "batches", "batches.dlq", "control", "batch-state", "files",
                       "api-batches"}, r.stdout
    r = env.kbatch("topics", "create", "--partitions", "3", conf=conf)
    assert all(l.startswith("exists") for l in r.stdout.splitlines()), r.stdout
    d = env.describe(conf)
    assert d[env.topic("items")]["partitions"] == 3
    assert d[env.topic("control")]["partitions"] == 1
    assert d[env.topic("items")]["group"] == env.group
    assert d[env.topic("items")]["lag"] == 0
    assert d[env.topic("items.priority")]["group"] == env.group
    assert d[env.topic("items.jobs")]["partitions"] == 3
    text = env.kbatch("topics", "describe", conf=conf).stdout
    assert env.topic("batch-state") in text


def test_unreachable_broker_is_a_runtime_error(tmp_path):
    conf = tmp_path / "w.conf"
    conf.write_text('kafka = { bootstrap_servers = "127.0.0.1:1"; '
                    'properties = { socket_timeout_ms = 3000; }; };\n'
                    'log = { level = "off"; };\n')
    r = subprocess.run([KBATCH, "topics", "create", "-c", str(conf)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and one_line(r.stderr), r.stderr
