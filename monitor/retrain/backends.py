"""Where a retraining request goes: one class per ``retrain.action.kind``.

Every backend gets the request id as its own idempotency key, and treats "already exists"
as success; it returns an external id (a process id, an HTTP response id, a message
offset) or raises :class:`BackendError` with a reason that holds no secret.

* ``command``: any program; the request is JSON on stdin and in ``DRIFTLINE_REQUEST_*``
  environment variables. Exit 0 is success. (``kubectl create job``, ``argo submit``, a
  Makefile...)
* ``builtin``: ``driftline retrain run`` as a local subprocess (``torchrun`` with ``nproc``
  > 1), the built-in fine-tuning job; its exit status and result file feed the state.
* ``webhook``: an HTTP(S) POST of the JSON request with ``Idempotency-Key``, and
  ``X-Driftline-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` when a secret is
  configured; 2xx and 409 (already exists) are success.
* ``kafka``: a CloudEvents 1.0 JSON message (structured mode) keyed by the model, with the
  request id in the ``ce_id`` header, on a configured topic. The topic's end offsets are
  stored with the request before the send, so a re-send after a crash between the send and
  its record finds the event there instead of writing a second one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shlex
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


class BuiltinBackend(CommandBackend):
    """``driftline retrain run`` for the request's model, as a subprocess."""

    kind = "builtin"

    def __init__(self, cfg: BackendSettings, config_path: Path | None) -> None:
        if config_path is None:
            raise MonitorError("retrain.action.kind 'builtin' needs the daemon's settings file")
        run = [sys.executable, "-m", "monitor.cli", "retrain", "run", "--config",
               str(config_path)]
        if cfg.nproc > 1:
            run = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={cfg.nproc}", "-m", "monitor.cli", "retrain", "run",
                   "--config", str(config_path)]
        super().__init__(cfg, tuple(run))

    def submit(self, request: Mapping[str, Any]) -> str:
        return self._run([*self.argv, "--model", str(request["model"]),
                          "--request", str(request["id"])], request)


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


def build_backend(cfg: BackendSettings, *, kafka: Any = None,
                  config_path: Path | None = None) -> Backend:
    if cfg.kind == "command":
        return CommandBackend(cfg)
    if cfg.kind == "builtin":
        return BuiltinBackend(cfg, config_path)
    if cfg.kind == "webhook":
        return WebhookBackend(cfg)
    return KafkaBackend(cfg, kafka)


def describe(cfg: BackendSettings) -> str:
    """A log-safe description (no secret, no query string)."""
    if cfg.kind == "webhook" and cfg.url:
        return f"webhook {cfg.url.split('?', 1)[0]}"
    if cfg.kind == "command" and cfg.command:
        return f"command {shlex.quote(cfg.command[0])}"
    return cfg.kind
