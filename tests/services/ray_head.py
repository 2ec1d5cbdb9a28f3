"""A real local Ray head (pip-installed `ray[default]`), with its Jobs API on loopback.

Started with ``ray start --head --block`` in its own process group and stopped by signalling
that group: ``ray stop`` would stop every Ray process of the user on this shared machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from services.ports import free_port


class RayHead:
    """One Ray head on free ports; :attr:`address` is its Jobs API (the dashboard)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
        self.address = ""
        self.proc: subprocess.Popen[bytes] | None = None
        # Ray puts unix sockets under its temp dir, and a socket path may not exceed ~107
        # bytes: a short folder of its own, not the (deep) pytest temporary folder.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))

    def start(self, timeout: float = 180.0) -> None:
        port, dashboard = free_port(), free_port()
        log = (self.tmp / "ray-start.log").open("ab")
        try:
            self.proc = subprocess.Popen(
                [self.ray, "start", "--head", "--block", f"--port={port}",
                 f"--dashboard-port={dashboard}", "--include-dashboard=true", "--num-cpus=1",
                 "--disable-usage-stats", f"--temp-dir={self.ray_tmp}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        except FileNotFoundError:
            raise RuntimeError("no `ray` command: pip install 'ray[default]'") from None
        finally:
            log.close()
        self.address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}: "
                                   f"{(self.tmp / 'ray-start.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2) as r:
                    if r.status == 200:
                        return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray head's Jobs API did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        # SIGTERM stops Ray's processes at once; `ray start` itself lingers in its exit
        # handlers, so the group gets SIGKILL after a few seconds.
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait)
                break
        self.proc = None
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
