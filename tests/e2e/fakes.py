"""Start and drive the fake model API (tests/fakes/fake_model.c) from tests.

    with FakeModel("--latency-ms", "5") as fake:
        call(fake.url + "/v1/chat/completions", ...)
        assert fake.stats()["by_status"]["200"] == 1
        fake.configure(fail_429=1.0)

The binary is $KBATCH_BUILD/fake_model (KBATCH_BUILD defaults to "build").
Standard library only.
"""

import http.client
import json
import os
import select
import signal
import subprocess
import time
import urllib.error
import urllib.request


def fake_model_binary():
    """Path of the fake model binary: $KBATCH_BUILD/fake_model."""
    return os.path.join(os.environ.get("KBATCH_BUILD", "build"), "fake_model")


class FakeModel:
    """One fake model process on a free loopback port.

    args are command-line flags for the binary (see `fake_model --help`);
    flags may also be given as keywords: latency_ms=5 -> --latency-ms 5,
    no_item_stats=True -> --no-item-stats.
    """

    def __init__(self, *args, binary=None, **flags):
        self.binary = binary or fake_model_binary()
        self.args = [str(a) for a in args]
        for name, value in flags.items():
            opt = "--" + name.replace("_", "-")
            if value is True:
                self.args.append(opt)
            elif value not in (None, False):
                self.args += [opt, str(value)]
        self.proc = None
        self.host = "127.0.0.1"
        self.port = None

    # -- life cycle --------------------------------------------------------

    def start(self, timeout=10.0):
        """Launches the binary and waits for its "listening on" line."""
        if self.proc is not None:
            return self
        args = list(self.args)
        if "--port" not in args:
            args += ["--port", "0"]
        self.proc = subprocess.Popen([self.binary] + args,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE)
        line = self._first_line(timeout)
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"fake_model did not start: {line!r}")
        hostport = line[len("listening on "):]
        host, _, port = hostport.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        return self

    def _first_line(self, timeout):
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise RuntimeError("fake_model: no 'listening on' line")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                code = self.proc.wait()
                self.proc = None
                raise RuntimeError(f"fake_model exited with {code}")
            buf += chunk
        return buf.split(b"\n", 1)[0].decode().strip()

    def stop(self, timeout=10.0):
        """SIGTERM, then wait; SIGKILL if it does not exit in time.
        Returns the exit status (None when it was not running)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()
        return proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        """Base URL, e.g. http://127.0.0.1:PORT (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- control endpoints -------------------------------------------------

    def _control(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data,
                                     method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {path}: {e.code} "
                               f"{e.read().decode(errors='replace')}")

    def stats(self, items=True):
        """GET /_stats: requests_total, by_status, by_path, inflight,
        peak_concurrency, injected, headers_seen, last_request, items_total
        and (unless items=False) by_item."""
        return self._control("GET", "/_stats" + ("" if items else "?items=0"))

    def reset(self):
        """POST /_reset: zero the statistics and the trigger counters."""
        return self._control("POST", "/_reset", {})

    def configure(self, **settings):
        """POST /_config, e.g. configure(latency_ms=50, fail_429=1.0,
        max_concurrency=20); latency_ms may be 50, "10-50" or [10, 50].
        Returns the settings now in force."""
        return self._control("POST", "/_config", settings)

    def config(self):
        """GET /_config: the settings in force."""
        return self._control("GET", "/_config")

    # -- convenience -------------------------------------------------------

    def post(self, path, body, headers=None, timeout=10.0):
        """POSTs body (bytes, str, or a JSON-able object) on a fresh
        connection; returns (status, headers dict with lower-case names,
        body bytes). Connection errors and timeouts propagate."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        conn = http.client.HTTPConnection(self.host, self.port,
                                          timeout=timeout)
        try:
            hdrs = {"Content-Type": "application/json"}
            hdrs.update(headers or {})
            conn.request("POST", path, body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            conn.close()

    def wait_for(self, pred, timeout=5.0, interval=0.05):
        """Polls stats(items=False) until pred(stats) is true; returns the
        stats, or raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats(items=False)
            if pred(st):
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met; stats: {st}")
            time.sleep(interval)
