"""A webhook receiver for tests: records every request and answers as told.

In a test (runs in a thread of the test process):

    with WebhookReceiver() as rx:
        url = rx.url("/hook")                      # http://127.0.0.1:PORT/hook
        rx.script("/hook", [500, 500])             # then the default, 200
        rx.script("/down", [], default=503)        # always 503
        rx.script("/moved", [], default=302, headers={"Location": "http://x/"})
        rx.script("/slow", [], delay_s=3)          # answers after 3 s
        rx.script("/big", [], body_bytes=1 << 20)  # 200 with a 1 MiB body
        ...
        reqs = rx.wait(lambda rs: len(rs) >= 3, timeout=30)
        reqs[0].headers["kbatch-signature"], reqs[0].body

Standalone (for trying kbatch by hand): python3 webhook_receiver.py [PORT]
prints "listening on 127.0.0.1:PORT" and one JSON line per request.

Standard library only.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Request:
    """One recorded request. headers: dict with lower-case names."""

    def __init__(self, method, path, headers, body, status):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.status = status  # what the receiver answered
        self.at = time.time()

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.method} {self.path} -> {self.status} {self.body[:80]!r}>"


class _Script:
    def __init__(self, statuses, default, headers, delay_s, body_bytes):
        self.statuses = list(statuses)
        self.default = default
        self.headers = dict(headers or {})
        self.delay_s = delay_s
        self.body_bytes = body_bytes


class WebhookReceiver:
    def __init__(self, host="127.0.0.1", port=0):
        self.requests = []
        self._scripts = {}
        self._cond = threading.Condition()
        rx = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def _handle(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                path = self.path.split("?", 1)[0]
                with rx._cond:
                    sc = rx._scripts.get(path) or rx._scripts.get("*")
                    if sc is None:
                        status, extra, delay, size = 200, {}, 0, 0
                    else:
                        status = sc.statuses.pop(0) if sc.statuses else sc.default
                        extra, delay, size = sc.headers, sc.delay_s, sc.body_bytes
                    rec = Request(self.command, self.path,
                                  {k.lower(): v for k, v in self.headers.items()},
                                  body, status)
                    rx.requests.append(rec)
                    rx._cond.notify_all()
                if delay:
                    time.sleep(delay)
                payload = (b"x" * size) if size else json.dumps({"status": status}).encode()
                try:
                    self.send_response(status)
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_POST = _handle
            do_GET = _handle
            do_PUT = _handle

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread = None

    # -- life cycle ---------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- behaviour ----------------------------------------------------------
    def url(self, path="/hook", host=None):
        return f"http://{host or self.host}:{self.port}{path}"

    def script(self, path, statuses, default=200, headers=None, delay_s=0,
               body_bytes=0):
        """Answers requests to path ("*": any path without its own script)
        with statuses in order, then with default."""
        with self._cond:
            self._scripts[path] = _Script(statuses, default, headers, delay_s,
                                          body_bytes)

    # -- what was received --------------------------------------------------
    def received(self, path=None):
        with self._cond:
            return [r for r in self.requests
                    if path is None or r.path.split("?", 1)[0] == path]

    def wait(self, pred, timeout=60, path=None):
        """Waits until pred(requests) holds (requests of path, or all);
        returns them. AssertionError on timeout."""
        deadline = time.time() + timeout
        with self._cond:
            while True:
                reqs = [r for r in self.requests
                        if path is None or r.path.split("?", 1)[0] == path]
                if pred(reqs):
                    return reqs
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError(
                        f"webhook receiver: condition not met in {timeout}s; "
                        f"got {reqs}")
                self._cond.wait(min(left, 0.5))


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    rx = WebhookReceiver(port=port).start()
    print(f"listening on {rx.host}:{rx.port}", flush=True)
    seen = 0
    try:
        while True:
            reqs = rx.wait(lambda rs: len(rs) > seen, timeout=3600)
            for r in reqs[seen:]:
                print(json.dumps({"path": r.path, "headers": r.headers,
                                  "body": r.body.decode(errors="replace")}),
                      flush=True)
            seen = len(reqs)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
