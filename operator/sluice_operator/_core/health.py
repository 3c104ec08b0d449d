"""``/healthz`` and ``/metrics`` on one small HTTP server that runs whether or not this replica leads.

kopf's own liveness endpoint only exists while kopf runs, i.e. on the leader; a standby replica would fail
its liveness probe and be restarted forever. This server answers for both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def serve(listen: str, healthy: Callable[[], tuple[bool, str]]) -> ThreadingHTTPServer:
    host, _, port = listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/healthz"):
                ok, text = healthy()
                self._send(200 if ok else 503, text.encode() + b"\n", "text/plain; charset=utf-8")
            elif self.path.startswith("/metrics"):
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would drown the operator's log

    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    threading.Thread(target=server.serve_forever, name="sluice-health", daemon=True).start()
    return server
