"""A webhook endpoint on loopback that checks driftline's HMAC signature (retraining tests)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """A webhook endpoint on loopback that checks the HMAC signature of every delivery."""

    def __init__(self, secret: bytes, fail_first: int = 0) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.repeats = 0  # deliveries whose Idempotency-Key was seen (answered 409)
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                sig = dict(p.split("=", 1) for p in self.headers["X-Driftline-Signature"]
                           .split(","))
                want = hmac.new(secret, sig["t"].encode() + b"." + body,
                                hashlib.sha256).hexdigest()
                if not hmac.compare_digest(want, sig["v1"]):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                elif receiver.fail_first > 0:
                    receiver.fail_first -= 1
                    self.send_response(500)
                elif any(d["key"] == self.headers["Idempotency-Key"]
                         for d in receiver.deliveries):
                    receiver.repeats += 1  # a re-send: already exists
                    self.send_response(409)
                else:
                    receiver.deliveries.append({"key": self.headers["Idempotency-Key"],
                                                **json.loads(body)})
                    self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"run_id": f"run-{len(receiver.deliveries)}"})
                                 .encode())

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/retrain"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
