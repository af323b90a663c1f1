"""A fake EC2 instance metadata service (IMDSv2 only) on 127.0.0.1 for spot-notice tests.

Behaves like the real one where the watcher cares: ``PUT /latest/api/token`` with a TTL header
returns a token; every metadata GET without a valid ``X-aws-ec2-metadata-token`` is answered 401;
``/latest/meta-data/spot/instance-action`` is 404 until :meth:`FakeIMDS.announce` is called.
Run standalone (``python tests/trainer/fake_imds.py --announce-after 3``) for benchmarks.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeIMDS:
    """Start with ``with FakeIMDS() as imds:``; ``imds.endpoint`` is the base URL."""

    def __init__(self, announce_after: float | None = None) -> None:
        self.tokens: set[str] = set()
        self.action: dict | None = None
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, had valid token)
        self.rejected = 0
        self._announce_at = None if announce_after is None else time.monotonic() + announce_after
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _send(self, code: int, body: bytes = b"", ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                ok = self.path == "/latest/api/token"
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                with fake._lock:
                    fake.requests.append(("PUT", self.path, ok))
                if not ok:
                    return self._send(404)
                if ttl is None or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    return self._send(400, b"missing or invalid TTL header")
                token = secrets.token_urlsafe(24)
                with fake._lock:
                    fake.tokens.add(token)
                self._send(200, token.encode())

            def do_GET(self) -> None:
                token = self.headers.get("X-aws-ec2-metadata-token")
                with fake._lock:
                    valid = token in fake.tokens
                    fake.requests.append(("GET", self.path, valid))
                    if not valid:
                        fake.rejected += 1
                if not valid:
                    return self._send(401)
                if self.path != "/latest/meta-data/spot/instance-action":
                    return self._send(404)
                action = fake.current_action()
                if action is None:
                    return self._send(404)
                self._send(200, json.dumps(action).encode(), "application/json")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def current_action(self) -> dict | None:
        with self._lock:
            if self.action is None and self._announce_at and time.monotonic() >= self._announce_at:
                self._set_action()
            return self.action

    def _set_action(self) -> None:
        when = datetime.now(UTC) + timedelta(seconds=120)
        self.action = {"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def announce(self) -> None:
        """From now on, answer ``spot/instance-action`` with a terminate notice (+120 s)."""
        with self._lock:
            self._set_action()

    def start(self) -> FakeIMDS:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeIMDS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--announce-after", type=float, default=None)
    a = parser.parse_args()
    with FakeIMDS(a.announce_after) as imds:
        print(imds.endpoint, flush=True)
        threading.Event().wait()
