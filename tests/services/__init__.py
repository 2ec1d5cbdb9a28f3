"""Real services (Kafka, PostgreSQL, Prometheus, Alertmanager) on loopback, for tests.

Each service class starts its process in a temporary directory, logs to a file there and
raises RuntimeError (with the log tail) when it cannot start. Every started process is also
registered for an atexit kill, so an interrupted test run leaves nothing behind.

This module holds the helpers shared by the service modules.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

INSTALL_HINT = "install the test services with `sudo scripts/install-test-deps.sh` (Debian/Ubuntu)"

_cleanups: dict[int, Callable[[], None]] = {}


def register_cleanup(key: object, fn: Callable[[], None]) -> None:
    """Run `fn` at interpreter exit unless `unregister_cleanup(key)` is called first."""
    _cleanups[id(key)] = fn
    _install_signal_handlers()


def unregister_cleanup(key: object) -> None:
    _cleanups.pop(id(key), None)


def _install_signal_handlers() -> None:
    """Also clean up when the test run is terminated by SIGTERM/SIGHUP (CI cancel, timeout):
    Python's default action for those exits without running atexit handlers."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _die_cleanly)


def _die_cleanly(signum: int, _frame: object) -> None:
    _run_cleanups()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # terminate the way the signal would have


@atexit.register
def _run_cleanups() -> None:
    for fn in list(_cleanups.values()):
        try:
            fn()
        except Exception:  # best effort at exit: keep cleaning the rest
            pass
    _cleanups.clear()


def find_binary(name: str, preferred: Sequence[str] = ()) -> str:
    """Path of an executable: the first existing `preferred` path, else `name` on PATH."""
    for candidate in preferred:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"`{name}` not found; {INSTALL_HINT}")
    return found


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A background process in its own session (process group), output appended to a log."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        user: str | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.user = user
        self.cwd = cwd
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                # Switch user in the child itself (no runuser/su wrapper process), so signals
                # reach the server directly. extra_groups=[] drops root's supplementary groups.
                user=self.user,
                group=self.user,
                extra_groups=[] if self.user else None,
            )
        register_cleanup(self, self.kill)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Send `sig` to the process group, wait up to `timeout`, then SIGKILL the group."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                proc.wait()
        # Children that outlived the leader (if any) go too.
        self._signal_group(signal.SIGKILL)
        self.proc = None
        unregister_cleanup(self)

    def kill(self) -> None:
        self.stop(signal.SIGKILL, timeout=5.0)

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)  # pgid == pid: start_new_session=True
        except ProcessLookupError:
            pass


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    proc: ManagedProcess | None = None,
    interval: float = 0.1,
) -> None:
    """Poll `check` until it is true; RuntimeError with the log tail on timeout or exit."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if proc is not None and not proc.alive:
            code = proc.proc.returncode if proc.proc else None
            raise RuntimeError(
                f"{what}: process exited (code {code}); log {proc.log_path}:\n"
                f"{log_tail(proc.log_path)}"
            )
        if time.monotonic() >= deadline:
            tail = f"; log {proc.log_path}:\n{log_tail(proc.log_path)}" if proc else ""
            raise RuntimeError(f"{what}: not ready after {timeout:.0f}s{tail}")
        time.sleep(interval)


def http_json(url: str, *, method: str = "GET", body: Any = None, timeout: float = 10.0) -> Any:
    """Request `url` and decode the JSON reply. HTTP errors keep the server's error body."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        exc.close()
        raise RuntimeError(f"{method} {url}: HTTP {exc.code}: {detail}") from None
    return json.loads(raw) if raw else None


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET `url` answers 200 (used for readiness probes)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as exc:
        exc.close()
        return False
    except OSError:
        return False
