"""The Schema Registries of the Avro tests.

RealRegistry: Apicurio Registry (tests/kafka/registry.sh), a real,
Confluent-compatible registry with compatibility rules (BACKWARD, as
Confluent's default) and storage that survives a restart. The tests use it
for everything it can do on demand; the `schema_registry` fixture of
conftest.py starts one per session.

FakeRegistry: tests/fakes/fake_registry.c, for what a real registry cannot
do on demand: injected delays and failures (/_fake/config), auth variants,
request counts."""
import json
import os
import select
import signal
import subprocess
import urllib.error
import urllib.request

from conftest import BUILD, ROOT

REGISTRY_SH = os.path.join(ROOT, "tests", "kafka", "registry.sh")
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class _Http:
    """JSON requests relative to self.url: (status, decoded body)."""

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": CONTENT_TYPE})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def get(self, path):
        st, body = self.request("GET", path)
        assert st == 200, (path, st, body)
        return body


class RealRegistry(_Http):
    """Apicurio Registry run by tests/kafka/registry.sh in run_dir. url is
    its Confluent-compatible base URL, http://127.0.0.1:PORT/apis/ccompat/v7."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.url = None

    def _sh(self, *args, timeout=180):
        env = dict(os.environ, REGISTRY_RUN_DIR=self.run_dir)
        r = subprocess.run([REGISTRY_SH] + list(args), capture_output=True, text=True,
                           timeout=timeout, env=env)
        assert r.returncode == 0, f"registry.sh {' '.join(args)}: {r.stderr}"
        return r.stdout.strip()

    def start(self):
        self.url = self._sh("start")
        return self

    def stop(self, clean=False):
        self._sh("stop", *(["--clean"] if clean else []))

    def running(self):
        env = dict(os.environ, REGISTRY_RUN_DIR=self.run_dir)
        return subprocess.run([REGISTRY_SH, "status"], capture_output=True,
                              env=env).returncode == 0


class FakeRegistry(_Http):
    """build/fake_registry on a loopback port (port 0: any free one)."""

    def __init__(self, *args, port=0):
        self.args = [str(a) for a in args]
        self.port = port
        self.proc = None

    def start(self, timeout=10):
        self.proc = subprocess.Popen(
            [os.path.join(BUILD, "fake_registry"), "--port", str(self.port)] + self.args,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        assert line.startswith("listening on "), f"fake_registry did not start: {line!r}"
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def configure(self, **kw):
        st, body = self.request("POST", "/_fake/config", kw)
        assert st == 200, body
