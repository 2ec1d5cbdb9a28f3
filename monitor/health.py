"""Liveness and readiness, and the HTTP server for ``/metrics``, ``/healthz``, ``/readyz``.

* ``/healthz`` (liveness): 200 while the processing loop has made progress, or been retrying,
  within ``stall_after_s``; 503 once it is stuck or stopped. Restart the process on 503.
* ``/readyz`` (readiness): 200 while the source (Kafka) is reachable and the last sink flush
  succeeded; 503 with the reason during a broker or database outage.

Both answer a small JSON object so an operator sees why.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:  # the supervisor serves without importing the metrics (and scipy)
    from monitor.metrics import Metrics


@dataclass
class Health:
    stall_after_s: float = 120.0
    source_connected: bool = True
    storage_ok: bool = True
    storage_error: str = ""
    stopped: bool = False
    # Asked at request time, so an outage shows even while the loop is busy elsewhere.
    source_probe: Callable[[], bool] | None = None
    _last_beat: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def live(self) -> tuple[bool, dict[str, object]]:
        age = time.monotonic() - self._last_beat
        ok = not self.stopped and age < self.stall_after_s
        return ok, {"loop_seconds_since_progress": round(age, 3), "stopped": self.stopped}

    def ready(self) -> tuple[bool, dict[str, object]]:
        source = self.source_probe() if self.source_probe is not None else self.source_connected
        ok = source and self.storage_ok and not self.stopped
        return ok, {"source_connected": source, "storage_ok": self.storage_ok,
                    "storage_error": self.storage_error, "stopped": self.stopped}


class Probes(Protocol):
    """What the HTTP server asks: a :class:`Health`, or the supervisor's aggregate of them."""

    def live(self) -> tuple[bool, dict[str, object]]: ...

    def ready(self) -> tuple[bool, dict[str, object]]: ...


def serve(metrics: Metrics, health: Probes, address: str,
          port: int) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve the three endpoints from a daemon thread; port 0 picks a free port."""
    return serve_endpoints(lambda: generate_latest(metrics.registry), health, address, port)


def serve_endpoints(exposition: Callable[[], bytes], probes: Probes, address: str,
                    port: int) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """:func:`serve` with the ``/metrics`` body from ``exposition`` (the supervisor merges
    its workers' bodies there)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, exposition())
            elif path in ("/healthz", "/readyz"):
                ok, detail = probes.live() if path == "/healthz" else probes.ready()
                body = json.dumps({"ok": ok, **detail}).encode()
                self._send(200 if ok else 503, "application/json", body)
            else:
                self._send(404, "text/plain", b"not found: try /metrics, /healthz, /readyz\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would flood the log

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="driftline-http", daemon=True)
    thread.start()
    return server, thread
