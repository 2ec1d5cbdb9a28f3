"""Where a retraining request goes: one class per ``retrain.action.kind``.

Every backend gets the request id as its own idempotency key, and treats "already exists"
as success; it returns an external id (a process id, an HTTP response id, a message
offset) or raises :class:`BackendError` with a reason that holds no secret.

* ``command``: any program; the request is JSON on stdin and in ``DRIFTLINE_REQUEST_*``
  environment variables. Exit 0 is success. (``kubectl create job``, ``argo submit``, a
  Makefile...)
* ``builtin``: ``driftline retrain run`` as a local background process (``torchrun`` with
  ``nproc`` > 1), the built-in fine-tuning job; its result file (or its exit) feeds the state.
* ``ray``: a Ray job (Ray Jobs API, ``submission_id`` = request id) running ``entrypoint``;
  its status feeds the state.
* ``webhook``: an HTTP(S) POST of the JSON request with ``Idempotency-Key``, and
  ``X-Driftline-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` when a secret is
  configured; 2xx and 409 (already exists) are success.
* ``kafka``: a CloudEvents 1.0 JSON message (structured mode) keyed by the model, with the
  request id in the ``ce_id`` header, on a configured topic. The topic's end offsets are
  stored with the request before the send, so a re-send after a crash between the send and
  its record finds the event there instead of writing a second one.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from monitor.errors import MonitorError
from monitor.settings import BackendSettings


class BackendError(MonitorError):
    """The backend did not accept the request (retried, then the request fails)."""


class Backend(Protocol):
    kind: str

    def submit(self, request: Mapping[str, Any]) -> str:
        """Hand ``request`` over; returns the backend's id for it. Idempotent by its id."""
        ...


def request_env(request: Mapping[str, Any]) -> dict[str, str]:
    return {f"DRIFTLINE_REQUEST_{k.upper()}": "" if v is None else str(v)
            for k, v in request.items() if not isinstance(v, dict | list)}


class CommandBackend:
    kind = "command"

    def __init__(self, cfg: BackendSettings, argv: tuple[str, ...] | None = None) -> None:
        self.argv = list(argv or cfg.command or ())
        self.timeout = cfg.timeout_seconds

    def submit(self, request: Mapping[str, Any]) -> str:
        return self._run(self.argv, request)

    def _run(self, argv: list[str], request: Mapping[str, Any]) -> str:
        body = json.dumps(request, sort_keys=True)
        try:
            done = subprocess.run(argv, input=body.encode(), capture_output=True,
                                  timeout=self.timeout, env={**os.environ,
                                                             **request_env(request)})
        except FileNotFoundError:
            raise BackendError(f"command not found: {argv[0]}") from None
        except subprocess.TimeoutExpired:
            raise BackendError(f"command timed out after {self.timeout:g}s") from None
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise BackendError(f"command exited {done.returncode}: {' | '.join(tail)[:500]}")
        out = done.stdout.decode(errors="replace").strip().splitlines()
        return out[-1][:500] if out else f"exit-0:{request['id']}"


class BuiltinBackend:
    """``driftline retrain run`` for the request's model, started in the background.

    The job writes ``<jobs_dir>/<id>.json`` (its machine-readable result) and logs to
    ``<jobs_dir>/<id>.log``; :meth:`status` reads the result, or whether the process still
    runs (the external id is ``pid:<pid>``), so a restarted daemon still learns the outcome.
    """

    kind = "builtin"

    def __init__(self, cfg: BackendSettings, config_path: Path | None) -> None:
        if config_path is None:
            raise MonitorError("retrain.action.kind 'builtin' needs the daemon's settings file")
        self.config_path = config_path
        self.jobs_dir = (cfg.jobs_dir if cfg.jobs_dir.is_absolute()
                         else config_path.parent / cfg.jobs_dir)
        self.nproc = cfg.nproc
        self.registry = registry_dir(cfg, config_path)
        self.job_args = list(cfg.job_args)
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def argv(self, request: Mapping[str, Any]) -> list[str]:
        job = ["-m", "monitor.cli", "retrain", "run", "--config", str(self.config_path),
               "--model", str(request["model"]), "--request", str(request["id"]),
               "--result", str(self.result_path(str(request["id"]))),
               "--registry", str(self.registry), *self.job_args]
        if self.nproc > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.nproc}", *job]
        return [sys.executable, *job]

    def result_path(self, rid: str) -> Path:
        return self.jobs_dir / f"{rid}.json"

    def pid_path(self, rid: str) -> Path:
        return self.jobs_dir / f"{rid}.pid"

    def submit(self, request: Mapping[str, Any]) -> str:
        rid = str(request["id"])
        if self.result_path(rid).exists():  # it ran already (a re-send after a crash)
            return f"done:{rid}"
        started = self._started(rid)
        if started is not None:  # started before a crash, not recorded: the same job
            return started
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        with (self.jobs_dir / f"{rid}.log").open("ab") as log_file:
            try:
                proc = subprocess.Popen(self.argv(request), stdin=subprocess.DEVNULL,
                                        stdout=log_file, stderr=subprocess.STDOUT,
                                        env={**os.environ, **request_env(request)},
                                        start_new_session=True)
            except OSError as exc:
                raise BackendError(f"cannot start the retraining job: {exc.strerror}") from None
        self._procs[proc.pid] = proc
        # Written at once: a daemon killed before it records the dispatch finds the job here
        # on its re-send instead of starting a second one.
        self.pid_path(rid).write_text(f"{proc.pid}\n")
        return f"pid:{proc.pid}"

    def _started(self, rid: str) -> str | None:
        try:
            return f"pid:{int(self.pid_path(rid).read_text())}"
        except (OSError, ValueError):
            return None

    def cancel(self, external_id: str, request_id: str) -> str:
        """Stop the job (SIGTERM to its process group; it started its own session)."""
        if not external_id.startswith("pid:"):
            return "the job had ended"
        pid = int(external_id[4:])
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return f"the job (pid {pid}) had ended"
        except PermissionError:
            raise BackendError(f"cannot stop the job (pid {pid}): not permitted") from None
        proc = self._procs.pop(pid, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        return f"the job (pid {pid}) was sent SIGTERM"

    def status(self, external_id: str, request_id: str) -> tuple[str, str] | None:
        """(running | succeeded | promoted | failed, reason), or None when unknown. A job
        whose challenger the gate rejected succeeded: the champion stays, as designed."""
        result = self.result_path(request_id)
        pid = int(external_id[4:]) if external_id.startswith("pid:") else None
        proc = self._procs.get(pid) if pid is not None else None
        if proc is not None and proc.poll() is not None:
            self._procs.pop(proc.pid, None)  # reaped: it exited
        if result.exists():
            if proc is not None:  # it wrote its result: reap it as it exits
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
                    self._procs.pop(proc.pid, None)
            try:
                doc = json.loads(result.read_text())
            except (OSError, ValueError) as exc:
                return "failed", f"unreadable job result {result}: {exc}"
            status = str(doc.get("status", "failed"))
            outcome = ("promoted" if status == "promoted" else
                       "succeeded" if status in ("rejected", "dry_run") else "failed")
            detail = doc.get("reason") or (doc.get("gate") or {}).get("verdict") or ""
            return outcome, f"job {status}: {detail}".rstrip(": ")
        if pid is None:
            return None
        if proc is not None:
            code = proc.poll()
            if code is None:
                return "running", "the job is running"
            return "failed", f"the job exited {code} without writing {result.name}"
        if Path(f"/proc/{pid}").exists():
            return "running", "the job is running"
        return "failed", f"the job (pid {pid}) ended without writing {result.name}"


def registry_dir(cfg: BackendSettings, config_path: Path | None) -> Path:
    """The builtin job's registry folder (relative paths: to the settings file)."""
    if cfg.registry.is_absolute() or config_path is None:
        return cfg.registry
    return config_path.parent / cfg.registry


class WebhookBackend:
    kind = "webhook"

    def __init__(self, cfg: BackendSettings) -> None:
        assert cfg.url is not None
        self.url = cfg.url
        self.timeout = cfg.timeout_seconds
        # Read once at start-up; never logged, never stored.
        self._secret = (Path(cfg.secret_file).read_bytes().strip()
                        if cfg.secret_file is not None else None)

    def sign(self, body: bytes, timestamp: int) -> str:
        assert self._secret is not None
        mac = hmac.new(self._secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
        return f"t={timestamp},v1={mac.hexdigest()}"

    def submit(self, request: Mapping[str, Any]) -> str:
        body = json.dumps(request, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": str(request["id"]),
                   "User-Agent": "driftline"}
        if self._secret is not None:
            headers["X-Driftline-Signature"] = self.sign(body, int(time.time()))
        # the scheme is checked by the settings (http or https only)
        req = urllib.request.Request(self.url, data=body, headers=headers,  # noqa: S310
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                answer = resp.read(2000).decode(errors="replace")
                return _external_id(answer) or f"http-{resp.status}:{request['id']}"
        except urllib.error.HTTPError as exc:
            code = exc.code
            exc.close()
            if code == 409:  # already exists: the idempotency key did its job
                return f"http-409:{request['id']}"
            raise BackendError(f"webhook answered HTTP {code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BackendError(f"webhook unreachable: {reason}") from None


def _external_id(answer: str) -> str | None:
    try:
        doc = json.loads(answer)
    except ValueError:
        return None
    if isinstance(doc, dict):
        for key in ("id", "run_id", "runId", "job_id", "jobId"):
            if isinstance(doc.get(key), str | int):
                return str(doc[key])[:500]
    return None


class KafkaBackend:
    kind = "kafka"

    def __init__(self, cfg: BackendSettings, kafka: Any) -> None:
        from kafka import KafkaProducer

        from monitor.kafka_io import _client_config

        assert cfg.topic is not None
        self.topic = cfg.topic
        self.timeout = cfg.timeout_seconds
        self._client = lambda extra: _client_config(kafka, extra)
        self._producer = KafkaProducer(**_client_config(kafka, {
            "acks": "all", "enable_idempotence": True, **dict(kafka.producer)}))

    def position(self) -> str:
        """The topic's end offsets now, recorded before a send: a re-send after a crash
        first looks for the request's event from there (see :meth:`find`)."""
        from kafka import KafkaConsumer
        from kafka.structs import TopicPartition

        consumer = KafkaConsumer(**self._client({"enable_auto_commit": False,
                                                 "group_id": None}))
        try:
            parts = sorted(consumer.partitions_for_topic(self.topic) or {0})
            ends = consumer.end_offsets([TopicPartition(self.topic, p) for p in parts])
            return json.dumps({str(tp.partition): off for tp, off in ends.items()})
        except Exception as exc:  # kafka-python's errors
            raise BackendError(f"kafka topic '{self.topic}' unreadable: "
                               f"{type(exc).__name__}") from None
        finally:
            consumer.close()

    def find(self, request: Mapping[str, Any], position: str) -> str | None:
        """Where the event of ``request`` is on the topic after ``position`` (None: absent)."""
        from kafka import KafkaConsumer
        from kafka.structs import TopicPartition

        start = {int(p): int(o) for p, o in json.loads(position).items()}
        want = str(request["id"]).encode()
        consumer = KafkaConsumer(**self._client({"enable_auto_commit": False,
                                                 "group_id": None}))
        try:
            tps = [TopicPartition(self.topic, p) for p in start]
            consumer.assign(tps)
            ends = consumer.end_offsets(tps)
            todo = {tp for tp in tps if start[tp.partition] < ends[tp]}
            for tp in todo:
                consumer.seek(tp, start[tp.partition])
            deadline = time.monotonic() + self.timeout
            while todo and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=500).items():
                    for r in records:
                        if dict(r.headers or ()).get("ce_id") == want:
                            return f"{self.topic}/{tp.partition}/{r.offset}"
                todo = {tp for tp in todo if consumer.position(tp) < ends[tp]}
            if todo:
                raise BackendError(f"kafka topic '{self.topic}' not read to its end")
            return None
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"kafka topic '{self.topic}' unreadable: "
                               f"{type(exc).__name__}") from None
        finally:
            consumer.close()

    def submit(self, request: Mapping[str, Any]) -> str:
        event = cloud_event(request)
        future = self._producer.send(
            self.topic, key=str(request["model"]).encode(),
            value=json.dumps(event, sort_keys=True).encode(),
            headers=[("ce_id", str(request["id"]).encode()),
                     ("ce_type", event["type"].encode()),
                     ("content-type", b"application/cloudevents+json")])
        try:
            meta = future.get(timeout=self.timeout)
        except Exception as exc:  # kafka-python raises its own KafkaError family
            raise BackendError(f"kafka send to '{self.topic}' failed: "
                               f"{type(exc).__name__}") from None
        return f"{self.topic}/{meta.partition}/{meta.offset}"


def cloud_event(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request as a CloudEvents 1.0 structured-mode event."""
    return {"specversion": "1.0", "id": str(request["id"]), "source": "driftline",
            "type": f"io.driftline.retrain.{request['action']}",
            "subject": str(request["model"]), "time": request.get("created_at"),
            "datacontenttype": "application/json", "data": dict(request)}


class RayBackend:
    """A Ray job per request through the Ray Jobs API; ``submission_id`` is the request id."""

    kind = "ray"

    def __init__(self, cfg: BackendSettings, config_path: Path | None) -> None:
        try:
            from ray.job_submission import JobSubmissionClient  # noqa: F401
        except ImportError:
            raise MonitorError("retrain.action.kind 'ray' needs the ray extra: "
                               "pip install 'driftline[ray]'") from None
        assert cfg.address is not None
        self.address = cfg.address
        self.entrypoint = cfg.entrypoint
        self.config_path = config_path

    def _client(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        try:
            return JobSubmissionClient(self.address)
        except Exception as exc:  # ConnectionError and Ray's own errors
            raise BackendError(f"Ray Jobs API at {self.address} unreachable: "
                               f"{type(exc).__name__}") from None

    def submit(self, request: Mapping[str, Any]) -> str:
        rid = str(request["id"])
        entrypoint = self.entrypoint.format(
            id=shlex.quote(rid), model=shlex.quote(str(request["model"])),
            action=shlex.quote(str(request["action"])),
            config=shlex.quote(str(self.config_path or "")))
        try:
            return str(self._client().submit_job(
                entrypoint=entrypoint, submission_id=rid,
                metadata={"driftline_model": str(request["model"]),
                          "driftline_action": str(request["action"])}))
        except BackendError:
            raise
        except Exception as exc:
            if "already exists" in str(exc):  # the idempotency key did its job
                return rid
            raise BackendError(f"Ray job submission failed: {type(exc).__name__}: "
                               f"{str(exc)[:200]}") from None

    def cancel(self, external_id: str, request_id: str) -> str:
        """Stop the Ray job (``stop_job``; a job that ended already is left as it is)."""
        try:
            stopped = self._client().stop_job(external_id)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"Ray job {external_id} could not be stopped: "
                               f"{type(exc).__name__}: {str(exc)[:200]}") from None
        return f"Ray job {external_id} " + ("stopped" if stopped else "had ended")

    def status(self, external_id: str, request_id: str) -> tuple[str, str] | None:
        try:
            status = str(self._client().get_job_status(external_id)).rsplit(".", 1)[-1]
        except Exception:
            return None  # unreachable now: ask again next round
        if status in ("PENDING", "RUNNING"):
            return "running", f"Ray job {status.lower()}"
        if status == "SUCCEEDED":
            return "succeeded", "Ray job succeeded"
        return "failed", f"Ray job {status.lower()}"


def build_backend(cfg: BackendSettings, *, kafka: Any = None,
                  config_path: Path | None = None) -> Backend:
    if cfg.kind == "command":
        return CommandBackend(cfg)
    if cfg.kind == "builtin":
        return BuiltinBackend(cfg, config_path)
    if cfg.kind == "webhook":
        return WebhookBackend(cfg)
    if cfg.kind == "ray":
        return RayBackend(cfg, config_path)
    return KafkaBackend(cfg, kafka)


def describe(cfg: BackendSettings) -> str:
    """A log-safe description (no secret, no query string)."""
    if cfg.kind == "webhook" and cfg.url:
        return f"webhook {cfg.url.split('?', 1)[0]}"
    if cfg.kind == "command" and cfg.command:
        return f"command {shlex.quote(cfg.command[0])}"
    return cfg.kind
