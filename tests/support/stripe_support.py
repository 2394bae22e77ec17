"""Test support for the Stripe peers: a recording, fault-injecting HTTP proxy in front of a real
peer (stripe-mock or localstripe), and a shared invoice scenario.

The proxy forwards every request unchanged and records (method, path, Idempotency-Key, status),
so a test can compare the keys a crashed run and its retry sent. `fail_next` makes the next
requests answer a given status (429, 503) instead of forwarding, as Stripe under load would.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    idempotency_key: str | None
    status: int


@dataclass
class RecordingProxy:
    upstream: str
    calls: list[Recorded] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def posts(self) -> list[Recorded]:
        return [c for c in self.calls if c.method in ("POST", "DELETE") and c.status < 300]

    def start(self) -> RecordingProxy:
        proxy = self
        target = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                key = self.headers.get("Idempotency-Key")
                if proxy.fail_next and self.command == "POST":
                    status = proxy.fail_next.pop(0)
                    payload = b'{"error": {"type": "api_error", "message": "injected by the test proxy"}}'
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    proxy.calls.append(Recorded(self.command, self.path, key, status))
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                proxy.calls.append(Recorded(self.command, self.path, key, answer.status))
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
