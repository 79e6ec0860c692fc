"""The agent's HTTP endpoints: /healthz, /readyz and /metrics.

Served from a thread so a busy event loop never makes the agent look dead; the handlers
only read plain attributes the loop writes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest

log = logging.getLogger(__name__)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A prober that gave up (its timeout passed while the agent was busy) closes the
        # connection before the answer is written: one debug line, not a traceback.
        log.debug("health client went away client=%s", client_address[0])


class HealthServer:
    def __init__(self, addr: str, port: int, *, readiness: Callable[[], dict[str, Any]],
                 registry: CollectorRegistry, metrics_path: str = "/metrics") -> None:
        self._readiness = readiness
        self._registry = registry
        self._metrics_path = metrics_path
        self._server = _QuietServer((addr, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="health",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    state = server._readiness()
                    self._send(200 if state["ready"] else 503,
                               orjson.dumps(state, option=orjson.OPT_INDENT_2),
                               "application/json")
                elif path == server._metrics_path:
                    self._send(200, generate_latest(server._registry), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the agent's log

        return Handler
