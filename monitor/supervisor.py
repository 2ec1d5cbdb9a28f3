"""``driftline run --workers N``: N consumer processes in one consumer group, one parent.

Each worker is a whole ``driftline run --workers 1`` (its own consumer in the settings'
group, its own database connection, its own ``/metrics`` on a free loopback port), so the
delivery guarantees are exactly those of N daemons scaled out over machines: the group
splits the partitions, a worker that dies loses its uncommitted work to whoever gets its
partitions next, and stored windows are skipped on replay.

The parent (this module) only supervises:

* one ``/metrics`` (the workers' expositions merged, see :mod:`monitor.metrics_merge`),
  one ``/healthz`` and one ``/readyz`` (every worker's answer, aggregated) on the settings'
  ``metrics.address:port``;
* one shutdown: SIGTERM/SIGINT to the parent is passed to every worker, each finishes its
  batch, flushes and commits, and the parent exits 0 once all exited 0;
* a worker that dies is restarted (after ``backoff_s``, doubling), unless it exited with
  status 2 (a configuration or start-up error a restart cannot fix) or died
  ``max_restarts`` times within ``period_s``: then the parent stops every worker and
  exits non-zero, so a service manager sees the failure;
* no orphans: on Linux each worker asks the kernel for SIGTERM when the parent dies
  (``PR_SET_PDEATHSIG``), so a SIGKILL of the parent drains and stops every worker; other
  systems (and the moment before the worker set it) are covered by a thread that watches
  the parent's pid (:mod:`monitor.supervised`, the worker's side).
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from monitor.health import serve_endpoints
from monitor.metrics_merge import MergedMetrics, parse
from monitor.supervised import INDEX_ENV, PARENT_ENV, WORKER_FD_ENV

log = logging.getLogger("driftline")

_SCRAPE_TIMEOUT_S = 2.0


def cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota
    (a container limited to 2 CPUs on a 64-core host gets 2)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    try:
        quota = quota_cpus(Path("/sys/fs/cgroup/cpu.max").read_text())
    except OSError:
        quota = None
    return max(1, min(n, quota) if quota else n)


def quota_cpus(cpu_max: str) -> int | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` ("QUOTA PERIOD", or "max PERIOD": none),
    rounded up."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def resolve_workers(setting: Literal["auto"] | int, flag: str | None) -> int:
    """The worker count: ``--workers`` (auto or N) over ``daemon.workers``."""
    value: str | int = setting if flag is None else flag
    if value == "auto":
        return cores()
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--workers: 'auto' or a number >= 1, got {value!r}")
    return n


# --- the parent ----------------------------------------------------------------------------


@dataclass
class RestartPolicy:
    """When a dead worker is started again, and when the parent gives up instead."""

    max_restarts: int = 5
    period_s: float = 60.0
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    def delay(self, deaths: Sequence[float], now: float) -> float | None:
        """Seconds to wait before the next start, None: give up. ``deaths``: the slot's
        death times (monotonic), the latest last."""
        recent = [t for t in deaths if now - t <= self.period_s]
        if len(recent) > self.max_restarts:
            return None
        return min(self.max_backoff_s, self.backoff_s * 2 ** max(0, len(recent) - 1))


@dataclass
class Slot:
    """One worker position: its current process and history."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    port_pipe: int | None = None
    port: int | None = None
    incarnation: int = 0
    deaths: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    start_at: float | None = 0.0  # monotonic time of the next start; None: not scheduled
    _buf: bytes = b""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class WorkerExitError(Exception):
    """The parent gives up: a worker failed in a way restarting cannot fix."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Supervisor:
    """Starts ``n`` workers running ``command`` and serves their merged endpoints."""

    def __init__(self, command: Sequence[str], n: int, *, address: str, port: int,
                 stop: threading.Event, policy: RestartPolicy | None = None,
                 env: dict[str, str] | None = None) -> None:
        if n < 1:
            raise ValueError(f"workers: need at least 1, got {n}")
        self.command = list(command)
        self.slots = [Slot(i) for i in range(n)]
        self.address, self.port = address, port
        self.stop = stop
        self.policy = policy or RestartPolicy()
        self.env = dict(os.environ if env is None else env)
        self.merged = MergedMetrics()
        self._scrapes: dict[tuple[int, int], list[Metric]] = {}  # (slot, incarnation) ->
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.registry.register(_Merged(self))
        self.workers_running = Gauge(
            "driftline_workers", "Worker processes running under `driftline run --workers`.",
            registry=self.registry)
        self.workers_running.set_function(lambda: sum(s.running for s in self.slots))
        self.worker_restarts = Counter(
            "driftline_worker_restarts_total",
            "Workers that died and were started again by the supervisor.",
            registry=self.registry)
        self.server: object | None = None
        self.served_port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def run(self) -> int:
        """Supervise until ``stop``; returns the exit status for the parent."""
        server, _thread = serve_endpoints(lambda: generate_latest(self.registry), self,
                                          self.address, self.port)
        self.server, self.served_port = server, server.server_port
        log.info("supervisor: %d workers; serving /metrics, /healthz, /readyz on %s:%d",
                 len(self.slots), self.address, self.served_port)
        code = 0
        try:
            while not self.stop.is_set():
                self.step(time.monotonic())
                self.stop.wait(0.2)
        except WorkerExitError as exc:
            log.error("supervisor: %s; stopping every worker", exc)
            code = exc.code
        finally:
            code = max(code, self.shutdown())
            server.shutdown()
            server.server_close()
        return code

    def step(self, now: float) -> None:
        """One round: read announced ports, notice exits, start what is due."""
        for slot in self.slots:
            self._read_port(slot)
            if slot.proc is not None and slot.proc.poll() is not None:
                self._died(slot, now)
            if slot.proc is None and slot.start_at is not None and now >= slot.start_at:
                self._start(slot)

    def _start(self, slot: Slot) -> None:
        read, write = os.pipe()
        env = {**self.env, WORKER_FD_ENV: str(write), PARENT_ENV: str(os.getpid()),
               INDEX_ENV: str(slot.index)}
        try:
            slot.proc = subprocess.Popen(self.command, env=env, pass_fds=(write,),
                                         stdin=subprocess.DEVNULL)
        finally:
            os.close(write)
        slot.port_pipe, slot.port, slot._buf = read, None, b""
        slot.incarnation += 1
        slot.start_at = None
        log.info("supervisor: worker %d started (pid %d)", slot.index, slot.proc.pid)

    def _read_port(self, slot: Slot) -> None:
        if slot.port_pipe is None:
            return
        ready, _w, _x = select.select([slot.port_pipe], [], [], 0)
        if not ready:
            return
        chunk = os.read(slot.port_pipe, 64)
        slot._buf += chunk
        if b"\n" in slot._buf or not chunk:  # a line, or EOF (the worker exited first)
            os.close(slot.port_pipe)
            slot.port_pipe = None
            line = slot._buf.split(b"\n", 1)[0].strip()
            if line.isdigit():
                slot.port = int(line)

    def _died(self, slot: Slot, now: float) -> None:
        assert slot.proc is not None
        code = slot.proc.returncode
        if slot.port_pipe is not None:
            os.close(slot.port_pipe)
            slot.port_pipe = None
        with self._lock:
            self.merged.retire(self._scrapes.pop((slot.index, slot.incarnation), []))
        slot.proc, slot.port = None, None
        slot.deaths.append(now)
        what = f"signal {-code}" if code < 0 else f"status {code}"
        if code == 2:
            raise WorkerExitError(f"worker {slot.index} exited with status 2 (a configuration "
                                  "or start-up error; its log says which)", 2)
        delay = self.policy.delay(slot.deaths, now)
        if delay is None:
            recent = sum(now - t <= self.policy.period_s for t in slot.deaths)
            raise WorkerExitError(
                f"worker {slot.index} died {recent} times within "
                f"{self.policy.period_s:.0f}s, more than the {self.policy.max_restarts} "
                f"restarts allowed (last: {what})", 1)
        log.error("supervisor: worker %d exited (%s); starting it again in %.1fs",
                  slot.index, what, delay)
        self.worker_restarts.inc()
        slot.start_at = now + delay

    def shutdown(self, timeout_s: float | None = None) -> int:
        """SIGTERM every worker and wait for each; 0 when all exited 0, else 1."""
        alive = [s for s in self.slots if s.running]
        for slot in alive:
            assert slot.proc is not None
            slot.proc.send_signal(signal.SIGTERM)
        code = 0
        for slot in alive:
            assert slot.proc is not None
            rc = slot.proc.wait(timeout=timeout_s)
            self._read_port(slot)
            log.info("supervisor: worker %d stopped (exit %d)", slot.index, rc)
            # SIGTERM in the instant before a worker's handler exists: it had read nothing
            clean = rc == 0 or (rc == -signal.SIGTERM and slot.port is None)
            code = code or (0 if clean else 1)
        for slot in self.slots:
            if slot.port_pipe is not None:
                os.close(slot.port_pipe)
                slot.port_pipe = None
        return code

    # -- the merged endpoints ---------------------------------------------------------------
    def _get(self, slot: Slot, path: str) -> tuple[int | None, bytes]:
        if slot.port is None:
            return None, b""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{slot.port}{path}",
                                        timeout=_SCRAPE_TIMEOUT_S) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            exc.close()
            return exc.code, body
        except OSError:
            return None, b""

    def scrapes(self) -> list[list[Metric]]:
        """Each live worker's exposition now (its last one when it does not answer)."""
        for slot in list(self.slots):
            incarnation, port = slot.incarnation, slot.port
            status, body = self._get(slot, "/metrics")
            if status != 200 or port is None:
                continue
            try:
                families = parse(body.decode())
            except ValueError:
                log.warning("supervisor: worker %d served unparsable metrics", slot.index)
                continue
            with self._lock:
                if slot.incarnation == incarnation and slot.port == port:  # not retired since
                    self._scrapes[(slot.index, incarnation)] = families
        with self._lock:
            return list(self._scrapes.values())

    def _probe(self, path: str) -> tuple[bool, dict[str, object]]:
        workers: list[dict[str, object]] = []
        ok = not self.stop.is_set()
        for slot in self.slots:
            entry: dict[str, object] = {"worker": slot.index,
                                        "pid": slot.proc.pid if slot.proc else None}
            if slot.proc is None:
                entry["state"] = "restarting"
                ok = ok and path == "/healthz"  # the supervisor is on it: alive, not ready
            elif slot.port is None:
                entry["state"] = "starting"
                ok = ok and path == "/healthz"
            else:
                status, body = self._get(slot, path)
                entry["state"] = "running"
                try:
                    entry.update(json.loads(body) if body else {"ok": False})
                except ValueError:
                    entry["ok"] = False
                ok = ok and status == 200
            workers.append(entry)
        return ok, {"workers": workers, "stopped": self.stop.is_set()}

    def live(self) -> tuple[bool, dict[str, object]]:
        """Alive unless stopping or a running worker is stalled (a dead one is restarted)."""
        return self._probe("/healthz")

    def ready(self) -> tuple[bool, dict[str, object]]:
        """Ready when every worker runs and is ready."""
        return self._probe("/readyz")


class _Merged(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        yield from self.supervisor.merged.merge(self.supervisor.scrapes())


def worker_command(config: str, *, log_level: str | None, log_format: str | None) -> list[str]:
    """The command line of one worker: this interpreter, ``driftline run --workers 1``."""
    cmd = [sys.executable, "-m", "monitor.cli", "run", "--config", config, "--workers", "1"]
    if log_level:
        cmd += ["--log-level", log_level]
    if log_format:
        cmd += ["--log-format", log_format]
    return cmd


def worker_env() -> dict[str, str]:
    """The parent's environment, with each worker's ``/metrics`` on a free loopback port
    (the parent serves the configured one)."""
    return {**os.environ, "DRIFTLINE__METRICS__ADDRESS": "127.0.0.1",
            "DRIFTLINE__METRICS__PORT": "0"}
