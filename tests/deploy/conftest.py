"""Fixtures of tests/deploy: the rendered Kubernetes overlays, the validator
and its schemas, the kbatch image under podman. Run by tests/deploy/run.sh,
which installs the tools, makes the schemas and the image, starts a broker
and sets the environment read here:

    KB_IMAGE                   the image to test (localhost/kbatch:test)
    KB_DEPLOY_TOOLS            directory with kustomize and kubeconform
    KB_DEPLOY_SCHEMAS          directory with kubernetes/ and crds/ schemas
    K8S_VERSIONS               Kubernetes versions to validate against
    KBATCH_TEST_BOOTSTRAP      the test broker (image tests)
    CONTAINERS_CONF, CONTAINERS_STORAGE_CONF   podman's set-up
"""
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S = os.path.join(ROOT, "deploy", "k8s")
OVERLAYS = ["dev", "prod", "split"]
BUILD = os.path.join(ROOT, os.environ.get("KBATCH_BUILD", "build"))
TOOLS = os.environ.get("KB_DEPLOY_TOOLS", os.path.join(ROOT, "build/deploy/tools/bin"))
SCHEMAS = os.environ.get("KB_DEPLOY_SCHEMAS", os.path.join(ROOT, "build/deploy/schemas"))
IMAGE = os.environ.get("KB_IMAGE", "localhost/kbatch:test")
K8S_VERSIONS = os.environ.get("K8S_VERSIONS", "1.29.0 1.33.0").split()

# The e2e suite's helpers (Env: produce/consume on the broker; FakeModel).
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
_spec = importlib.util.spec_from_file_location(
    "kb_e2e_conftest", os.path.join(ROOT, "tests", "e2e", "conftest.py"))
e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e)
from fakes import FakeModel  # noqa: E402,F401  (re-exported for the tests)
sys.path.insert(0, os.path.join(ROOT, "tests", "fakes"))
from webhook_receiver import WebhookReceiver  # noqa: E402,F401


def tool(name):
    path = os.path.join(TOOLS, name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} missing: run tests/deploy/run.sh (make test-deploy)")
    return path


def kustomize_build(path):
    r = subprocess.run([tool("kustomize"), "build", path], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"kustomize build {path}: {r.stderr}"
    return r.stdout


class Render:
    """One overlay rendered by kustomize: its YAML and its objects."""

    def __init__(self, name, text):
        self.name = name
        self.text = text
        self.objects = [o for o in yaml.safe_load_all(text) if o]

    def of_kind(self, kind):
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind, name):
        for o in self.of_kind(kind):
            if o["metadata"]["name"] == name:
                return o
        raise KeyError(f"{self.name}: no {kind} {name}")

    def configmap(self, prefix):
        """A generated ConfigMap by its name before the hash suffix."""
        found = [o for o in self.of_kind("ConfigMap")
                 if o["metadata"]["name"] == prefix
                 or o["metadata"]["name"].rsplit("-", 1)[0] == prefix]
        assert len(found) == 1, f"{self.name}: ConfigMap {prefix}: {len(found)} found"
        return found[0]

    def worker_conf(self):
        return self.configmap("kbatch-config")["data"]["worker.conf"]

    def env_of(self, deployment):
        """The environment of a Deployment's kbatch container: envFrom
        ConfigMaps, then env (literal values; fieldRef/secretKeyRef as
        None)."""
        c = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {}
        for ef in c.get("envFrom", []):
            ref = ef.get("configMapRef")
            if ref:
                env.update(self.get("ConfigMap", ref["name"])["data"])
        for e in c.get("env", []):
            env[e["name"]] = e.get("value")
        return env


@pytest.fixture(scope="session")
def renders():
    return {o: Render(o, kustomize_build(os.path.join(K8S, "overlays", o))) for o in OVERLAYS}


def kubeconform(path, version, extra=()):
    """Runs kubeconform, strict, offline, on a file; every object must have a
    schema (no -ignore-missing-schemas). Returns (returncode, output)."""
    cmd = [tool("kubeconform"), "-strict", "-summary", "-output", "json",
           "-kubernetes-version", version,
           "-schema-location",
           os.path.join(SCHEMAS, "kubernetes",
                        "{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}",
                        "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
           "-schema-location",
           os.path.join(SCHEMAS, "crds", "{{ .Group }}",
                        "{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"),
           *extra, path]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


# -- podman -------------------------------------------------------------------

def podman(*args, check=True, timeout=120, input=None):
    r = subprocess.run(["podman", *args], capture_output=True, text=True,
                       timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r


class Container:
    """One detached kbatch container on the host network, config file
    mounted at /etc/kbatch/worker.conf as Kubernetes mounts its ConfigMap."""

    def __init__(self, conf, args=("worker", "-c", "/etc/kbatch/worker.conf"), env=None):
        self.name = f"kbatch-test-{uuid.uuid4().hex[:8]}"
        self.conf = conf
        self.args = list(args)
        self.env = env or {}

    def start(self):
        cmd = ["run", "-d", "--name", self.name, "--network", "host",
               "-v", f"{self.conf}:/etc/kbatch/worker.conf:ro"]
        for k, v in self.env.items():
            cmd += ["-e", f"{k}={v}"]
        podman(*cmd, IMAGE, *self.args)
        return self

    def running(self):
        r = podman("inspect", self.name, "--format", "{{.State.Running}}", check=False)
        return r.stdout.strip() == "true"

    def exit_code(self):
        return int(podman("inspect", self.name, "--format", "{{.State.ExitCode}}").stdout)

    def logs(self):
        r = podman("logs", self.name, check=False)
        return r.stdout + r.stderr

    def log_lines(self):
        out = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def wait_log(self, pred, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for rec in self.log_lines():
                if pred(rec):
                    return rec
            if not self.running():
                raise AssertionError(f"container exited {self.exit_code()}:\n{self.tail()}")
            time.sleep(0.3)
        raise AssertionError(f"log line not seen in {timeout}s:\n{self.tail()}")

    def tail(self, n=30):
        return "\n".join(self.logs().splitlines()[-n:])

    def stop(self, grace):
        """podman stop: SIGTERM, SIGKILL after `grace` seconds, as the kubelet
        does with terminationGracePeriodSeconds. Returns the seconds taken."""
        t0 = time.monotonic()
        podman("stop", "-t", str(grace), self.name, timeout=grace + 60)
        return time.monotonic() - t0

    def remove(self):
        podman("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture
def containers():
    made = []

    def make(*a, **kw):
        c = Container(*a, **kw)
        made.append(c)
        return c.start()
    yield make
    for c in made:
        c.remove()


class Toolbox:
    """One long-lived container of the image (host network, running sleep)
    for the one-shot commands (`kbatch check-config`, `topics create`, ...):
    `podman exec` is much cheaper than a new container (vfs copies the
    image's tree for each). Files for it go to `dir`, mounted at /work."""

    def __init__(self, directory):
        self.dir = directory
        os.chmod(directory, 0o755)
        self.name = f"kbatch-toolbox-{uuid.uuid4().hex[:8]}"
        podman("run", "-d", "--name", self.name, "--network", "host",
               "-v", f"{directory}:/work:ro", "--entrypoint", "/bin/sleep",
               IMAGE, "infinity")

    def put(self, name, text):
        """Writes /work/NAME (world-readable: the image runs as uid 10001)."""
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)
        return "/work/" + name

    def run(self, *args, env=None, timeout=120):
        """`kbatch ARGS` (or, with args[0] starting with "/", that program)
        as the image's user; returns the CompletedProcess."""
        cmd = ["exec"]
        for k, v in (env or {}).items():
            cmd += ["-e", f"{k}={v}"]
        prog = [] if args and args[0].startswith("/") else ["/usr/local/bin/kbatch"]
        return podman(*cmd, self.name, *prog, *args, check=False, timeout=timeout)

    def remove(self):
        podman("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture(scope="session")
def toolbox(tmp_path_factory):
    tb = Toolbox(str(tmp_path_factory.mktemp("toolbox")))
    yield tb
    tb.remove()


@pytest.fixture(scope="session")
def bootstrap():
    bs = os.environ.get("KBATCH_TEST_BOOTSTRAP")
    if not bs:
        pytest.fail("KBATCH_TEST_BOOTSTRAP is not set: run tests/deploy/run.sh")
    return bs


@pytest.fixture
def env(bootstrap, tmp_path):
    e = e2e.Env(bootstrap, tmp_path)
    yield e
    e.close()
