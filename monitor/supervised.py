"""The worker's side of ``driftline run --workers N`` (see :mod:`monitor.supervisor`).

Imports nothing heavy: a worker calls :func:`watch_parent` before its slow start-up.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("driftline")

#: Internal: the pipe a worker writes its metrics port to (set by the parent).
WORKER_FD_ENV = "DRIFTLINE_WORKER_FD"
#: Internal: the parent's pid, which a worker watches.
PARENT_ENV = "DRIFTLINE_WORKER_PARENT"
#: Internal: the worker's index (0..N-1), shown in its log lines.
INDEX_ENV = "DRIFTLINE_WORKER_INDEX"

_PR_SET_PDEATHSIG = 1


def stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT set ``stop`` (monitor.app's handlers replace these once imported).
    Returns a function that puts the handlers from before this call back."""
    previous = {sig: signal.signal(sig, lambda _signum, _frame: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def watch_parent(stop: threading.Event, interval_s: float = 1.0) -> None:
    """In a supervised worker: stop (drain, commit, exit) when the parent goes away."""
    parent = os.environ.pop(PARENT_ENV, None)  # popped: not for this worker's own children
    if not parent:
        return
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): watching the parent's "
                        "pid instead", ctypes.get_errno())

    def watch() -> None:
        while not stop.is_set():
            if os.getppid() != int(parent):  # re-parented: the supervisor is gone
                log.error("the supervisor (pid %s) is gone: stopping", parent)
                stop.set()
                return
            stop.wait(interval_s)

    threading.Thread(target=watch, name="driftline-parent-watch", daemon=True).start()


def announce(port: int | None) -> None:
    """In a supervised worker: tell the parent where this worker serves ``/metrics``."""
    fd = os.environ.pop(WORKER_FD_ENV, None)
    if not fd or port is None:
        return
    try:
        os.write(int(fd), f"{port}\n".encode())
        os.close(int(fd))
    except OSError as exc:  # the parent is gone: watch_parent stops this worker
        log.warning("cannot tell the supervisor this worker's port: %s", exc)


class _WorkerTag(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index  # a JSON log line's "worker" field
        return True


def tag_logs() -> None:
    """In a supervised worker: its index in every line of driftline's log handler (text:
    ``[worker N]`` before the logger name; JSON: a ``worker`` field), since the workers
    share the supervisor's stdout and stderr."""
    index = os.environ.get(INDEX_ENV)
    if index is None or not index.isdigit():
        return
    for handler in logging.getLogger().handlers:
        if not getattr(handler, "_driftline", False):
            continue  # not ours (a program embedding driftline): left alone
        handler.addFilter(_WorkerTag(int(index)))
        if type(handler.formatter) is logging.Formatter:  # text; JSON shows the field
            handler.setFormatter(logging.Formatter(
                f"%(asctime)s %(levelname)s [worker {int(index)}] %(name)s: %(message)s"))
