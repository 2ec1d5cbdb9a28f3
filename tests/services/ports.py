"""Free loopback ports for test services."""

from __future__ import annotations

import os
import random
import socket
import threading

# Ports are drawn from below Linux's default ephemeral range (32768-60999). A port from that
# range could be taken by some outgoing connection's local end while a service is stopped
# for a restart, and the service must get the same port back.
# scripts/test.sh runs several pytest processes side by side: each draws from its own block
# (DRIFTLINE_TEST_PORT_BLOCK=i of DRIFTLINE_TEST_PORT_BLOCKS), so none takes a port another
# one's stopped service is waiting to get back.
_BLOCKS = max(1, int(os.environ.get("DRIFTLINE_TEST_PORT_BLOCKS", "1")))
_BLOCK = int(os.environ.get("DRIFTLINE_TEST_PORT_BLOCK", "0")) % _BLOCKS
_SPAN = (32000 - 20000) // _BLOCKS
_LOW, _HIGH = 20000 + _BLOCK * _SPAN, 20000 + (_BLOCK + 1) * _SPAN
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
