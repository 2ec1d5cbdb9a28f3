"""Free loopback ports for test services."""

from __future__ import annotations

import random
import socket
import threading

# Ports are drawn from below Linux's default ephemeral range (32768-60999). A port from that
# range could be taken by some outgoing connection's local end while a service is stopped
# for a restart, and the service must get the same port back.
_LOW, _HIGH = 20000, 32000
_rng = random.SystemRandom()  # unaffected by tests (or plugins) that seed `random`
_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port on `host` that nothing listens on and this process has not handed out."""
    with _lock:
        for _ in range(500):
            port = _rng.randrange(_LOW, _HIGH)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port found on {host} in {_LOW}-{_HIGH}")
