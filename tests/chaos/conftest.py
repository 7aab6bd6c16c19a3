"""Fixtures of the chaos scenarios: the e2e suite's (tests/e2e/conftest.py:
a real broker, Env, Worker, the fake model), loaded under another module
name, plus the broker's run dir (the broker scenario stops and restarts it).
Run them with tests/chaos/run.sh (make test-chaos), which starts a broker of
their own."""
import importlib.util
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
E2E = os.path.join(HERE, "..", "e2e")
sys.path.insert(0, E2E)        # fakes.py
sys.path.insert(0, HERE)       # chaos.py

_spec = importlib.util.spec_from_file_location("e2e_conftest", os.path.join(E2E, "conftest.py"))
e2e = importlib.util.module_from_spec(_spec)
sys.modules["e2e_conftest"] = e2e
_spec.loader.exec_module(e2e)

# the e2e fixtures, as fixtures of this directory
bootstrap = e2e.bootstrap
env = e2e.env


@pytest.fixture(scope="session")
def kafka_run_dir():
    """The run dir of the broker (tests/kafka/kafka.sh), for stop/start."""
    d = os.environ.get("KBATCH_CHAOS_KAFKA_RUN_DIR")
    if not d:
        pytest.fail("KBATCH_CHAOS_KAFKA_RUN_DIR is not set: run tests/chaos/run.sh")
    return d


@pytest.fixture
def supervise(env):
    """supervise(conf, static=False) -> a Supervisor whose restarts stop
    when the test ends, whatever its outcome (a failed test must not leave
    a worker that a watcher restarts into the next test)."""
    from chaos import Supervisor
    sups = []

    def make(conf, **kw):
        s = Supervisor(env, conf, **kw)
        sups.append(s)
        return s
    yield make
    for s in sups:
        s.abort()


@pytest.fixture
def closing():
    """closing(x) -> x, closed (x.close()) when the test ends, also after a
    failure: the background readers and samplers of chaos.py."""
    objs = []

    def add(x):
        objs.append(x)
        return x
    yield add
    for x in reversed(objs):
        try:
            x.close()
        except Exception:
            pass
