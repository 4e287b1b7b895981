"""The worker endpoint an embedded engine serves in Cloud Tasks mode.

Cloud Tasks delivers by HTTP push: it POSTs each task's payload to the task's URL
and retries until it gets a 2xx. In Cloud Tasks mode the engine names its own
endpoint as that URL, ``{url}/dispatch`` or ``{url}/timer``, and answers with the
status its handler returns: 200 when the delivery is done with (run, or found stale),
503 when the engine is not ready for it yet (so Cloud Tasks retries), 500 when the
handler failed. A stdlib threading server: no framework for two routes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["PushEndpoint", "PushHandler"]

PushHandler = Callable[[str, str, bytes], int]
"""(kind: "dispatch" | "timer", task name, body) -> HTTP status."""


class PushEndpoint:
    """POST ``/{kind}`` on loopback, handed to ``handler``; ``url`` once started."""

    def __init__(self, handler: PushHandler, *, host: str = "127.0.0.1", port: int = 0) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                kind = self.path.strip("/")
                name = self.headers.get("X-CloudTasks-TaskName", "")
                try:
                    status = endpoint._handler(kind, name, body)
                except Exception:
                    status = 500  # Cloud Tasks retries; the handler decides again
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._handler = handler
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="servo-push", daemon=True)
        self._thread.start()
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{bound_host!s}:{bound_port}"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
