"""A webhook endpoint on loopback for the tests: it verifies each delivery's signature with the secret
of its path's last segment (a tenant, a budget) and keeps the verified events in arrival order."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from billing.market import webhooks


class SignedReceiver:
    def __init__(self, url: str) -> None:
        self.url = url  # POST to f"{url}/<name>", signed with secrets[name]
        self.secrets: dict[str, str] = {}
        self.events: list[dict[str, Any]] = []
        self.bad = 0


@contextmanager
def signed_receiver() -> Iterator[SignedReceiver]:
    holder: list[SignedReceiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            state = holder[0]
            body = self.rfile.read(int(self.headers["Content-Length"]))
            secret = state.secrets.get(self.path.rsplit("/", 1)[-1], "")
            ok = webhooks.verify(secret, self.headers.get(webhooks.SIGNATURE_HEADER, ""), body, int(time.time()))
            if ok:
                state.events.append(json.loads(body))
            else:
                state.bad += 1
            self.send_response(200 if ok else 400)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(SignedReceiver(f"http://127.0.0.1:{server.server_address[1]}/hooks"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
