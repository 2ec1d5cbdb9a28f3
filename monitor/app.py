"""The composition root: builds the concrete pipeline from settings, serves, shuts down."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from monitor.deadletter import DeadLetter
from monitor.factory import build_models
from monitor.health import serve
from monitor.label_join import LabelJoin
from monitor.metrics import Metrics
from monitor.pipeline import Pipeline, StoredState
from monitor.report import WindowReport
from monitor.schema import Decoder
from monitor.settings import Settings
from monitor.sinks import PrometheusSink, Sink
from monitor.sources import Source
from monitor.storage import SqlStore

log = logging.getLogger("driftline")


@dataclass
class Daemon:
    """Everything ``driftline run`` owns; :meth:`close` releases it in order."""

    settings: Settings
    pipeline: Pipeline
    store: SqlStore
    metrics: Metrics
    metrics_port: int | None = None
    _server: Any = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, *, until_exhausted: bool = False) -> None:
        try:
            self.pipeline.run(self.stop, until_exhausted=until_exhausted)
        finally:
            self.pipeline.health.stopped = True
            self.close()

    def close(self) -> None:
        for closer in (self.pipeline.close, self.pipeline.source.close,
                       self.pipeline.dead_letter.close, self.store.close):
            try:
                closer()
            except Exception:
                log.exception("error while closing")
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def build_daemon(
    settings: Settings,
    *,
    source: Source | None = None,
    dead_letter: DeadLetter | None = None,
    metrics: Metrics | None = None,
    serve_metrics: bool = True,
    on_report: Callable[[WindowReport], None] | None = None,
    stop: threading.Event | None = None,
) -> Daemon:
    """Wire the daemon. ``source``/``dead_letter`` default to Kafka from the settings."""
    metrics = metrics or Metrics()

    def restore() -> StoredState:
        offsets, last = {}, {}
        for stream in ("features", "labels"):
            offsets.update({(stream, *k): v for k, v in store.stored_offsets(stream).items()})
            last.update({(stream, m): i for m, i in store.last_window_index(stream).items()})
        return StoredState(offsets, last, store.detector_states())

    built = build_models(settings, metrics)
    models, schemas = built.models, built.schemas

    # Only now touch the database: bad references fail first and leave no file behind.
    store = SqlStore(settings.storage.url)
    store.migrate()

    if source is None or dead_letter is None:
        from monitor.kafka_io import KafkaDeadLetter, KafkaSource

        source = source or KafkaSource(settings.source.kafka)
        dead_letter = dead_letter or KafkaDeadLetter(settings.source.kafka)

    sinks: list[Sink] = [store, PrometheusSink(metrics)]  # durable first, then visible
    metrics.prime(((name, [d for _n, s in state.streams() for d in s.evaluator.detector_names])
                   for name, state in models.items()),
                  sinks=[*(s.name for s in sinks), "dead_letter"])
    pipeline = Pipeline(
        source=source, decoder=Decoder(schemas, settings.limits.max_record_bytes),
        models=models, sinks=sinks, dead_letter=dead_letter, metrics=metrics,
        restore=restore, on_report=on_report,
        labels_topic=settings.source.kafka.labels_topic,
        join=LabelJoin(store, {m.name: m.labels for m in settings.models if m.labels})
        if any(m.labels for m in settings.models) else None,
        poll_timeout_s=settings.source.kafka.poll_timeout_ms / 1000,
    )
    daemon = Daemon(settings, pipeline, store, metrics, stop=stop or threading.Event())
    if serve_metrics:
        server, _thread = serve(metrics, pipeline.health, settings.metrics.address,
                                settings.metrics.port)
        daemon._server = server
        daemon.metrics_port = server.server_port
        log.info("serving /metrics, /healthz, /readyz on %s:%d", settings.metrics.address,
                 daemon.metrics_port)
    return daemon


def install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT set ``stop``: the loop finishes its batch, flushes, commits, exits.

    Returns a function that puts the previous handlers back (for callers embedding the
    daemon in a longer-lived program, such as the demo run from tests).
    """
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing the current batch, then stopping",
                 signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
