"""schemathesis against docs/openapi.yaml: generated requests for every
operation of the HTTP batch API (role `api`), with a valid key, against a
real broker and the fake model. No 5xx, every response matches the
document (status, content type, schema), and the server keeps serving."""
import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.experimental import OPEN_API_3_1

from conftest import ROOT, Env
from fakes import FakeModel
from test_api import KEYS, Api

OPEN_API_3_1.enable()


@pytest.fixture(scope="module")
def server(bootstrap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schema")
    env = Env(bootstrap, tmp)
    with FakeModel() as fake:
        keys = tmp / "keys"
        keys.write_text("".join(f"{t} {k}\n" for t, k in KEYS.items()))
        conf = env.write_conf(base_url=fake.url, extra=(
            f'api: {{ listen = "127.0.0.1:0"; keys_file = "{keys}"; '
            f'max_file_bytes = 1000000; }};'))
        env.create_topics(conf, partitions=2)
        a = Api(env, conf, {"KBATCH_WORKER_ROLES": "items,aggregator,api"}).start()
        yield a
        env.close()


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.from_path(os.path.join(ROOT, "docs", "openapi.yaml"),
                                  base_url=server.url)


schema = schemathesis.from_pytest_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=int(os.environ.get("KBATCH_SCHEMA_EXAMPLES", "25")), deadline=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms(case, server):
    case.call_and_validate(headers={"Authorization": f"Bearer {KEYS['acme']}"},
                           checks=schemathesis.checks.ALL_CHECKS)


def test_server_survived(server):
    assert server.worker.proc.poll() is None
    r = requests.get(server.url + "/v1/batches",
                     headers={"Authorization": f"Bearer {KEYS['acme']}"}, timeout=10)
    assert r.status_code == 200
