"""The composition root: builds the concrete pipeline from settings, serves, shuts down."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from detectors.bbse import SingularConfusionMatrixError
from monitor.deadletter import DeadLetter
from monitor.errors import ConfigError
from monitor.evaluate import ModelEvaluator, WindowReport
from monitor.health import serve
from monitor.labels import LabelEvaluator, LabelJoin
from monitor.metrics import Metrics
from monitor.pipeline import ModelState, Pipeline, StoredState, StreamState, Windows
from monitor.reference import load_reference
from monitor.refstate import load_or_build
from monitor.schema import Decoder, FeatureKind, ModelSchema
from monitor.settings import CountWindow, ModelSettings, Settings
from monitor.sinks import PrometheusSink, Sink
from monitor.sources import Source
from monitor.storage import SqlStore
from monitor.windows import CountWindows, TimeWindows

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

    models: dict[str, ModelState] = {}
    schemas: dict[str, ModelSchema] = {}
    cache = settings.storage.reference_cache_dir
    cache_dir = Path(cache).expanduser() if cache else None
    for m in settings.models:
        kinds = {f.name: f.type for f in m.features}
        columns: dict[str, FeatureKind] = dict(kinds)
        if m.prediction_drift is not None:  # the reference's predictions come along
            columns["prediction"] = ("numeric" if m.prediction_drift.task == "regression"
                                     else "categorical")
            if m.prediction_drift.label_shift and m.labels is None:
                columns["label"] = "categorical"  # BBSE's confusion matrix
        evaluator = load_or_build(
            m, lambda m=m, columns=columns: _evaluator(m, columns), cache_dir)  # type: ignore[misc]
        if m.embedding is not None:
            evaluator.embedding = _embedding(m, metrics, cache_dir)
        new_windows = _windows_factory(m)
        models[m.name] = ModelState(
            StreamState(evaluator, new_windows(None), new_windows),
            _label_stream(m) if m.labels is not None else None)
        schemas[m.name] = ModelSchema(
            kinds, needs_input=m.embedding is not None,
            numeric_prediction=m.prediction_drift is not None
            and m.prediction_drift.task == "regression")

    # Only now touch the database: bad references fail first and leave no file behind.
    store = SqlStore(settings.storage.url)
    store.create_schema()

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


def _evaluator(m: ModelSettings, columns: dict[str, FeatureKind]) -> ModelEvaluator:
    reference = load_reference(m.reference.path, columns, m.reference.format)
    labelled = None
    if m.prediction_drift is not None and m.prediction_drift.label_shift and m.labels:
        # Label shift is estimated from the labelled reference when there is one.
        labelled = load_reference(m.labels.reference.path,
                                  {"label": "categorical", "prediction": "categorical"},
                                  m.labels.reference.format)
    try:
        return ModelEvaluator(m, reference, labelled)
    except SingularConfusionMatrixError as exc:
        raise ConfigError(f"model '{m.name}', prediction_drift.label_shift: {exc}") from None


def _embedding(m: ModelSettings, metrics: Metrics, cache_dir: Path | None) -> Any:
    from embeddings.errors import EmbeddingError
    from monitor.embedding_drift import EmbeddingDrift

    assert m.embedding is not None

    def timed(n: int, seconds: float) -> None:  # the embeddings package has no metrics
        metrics.embedded_records.labels(model=m.name).inc(n)
        metrics.embedding_duration.labels(model=m.name).observe(seconds)

    try:
        return EmbeddingDrift(m.embedding, m.alpha, cache_dir, on_embedded=timed)
    except (EmbeddingError, OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"model '{m.name}', embedding: {exc}") from exc


def _label_stream(m: ModelSettings) -> StreamState:
    assert m.labels is not None
    kind: FeatureKind = "categorical" if m.labels.task == "classification" else "numeric"
    reference = load_reference(m.labels.reference.path, {"label": kind, "prediction": kind},
                               m.labels.reference.format)
    size = m.labels.window_size

    def make(last_stored: int | None) -> Windows:
        return CountWindows(m.name, size, next_index=0 if last_stored is None
                            else last_stored + 1)

    return StreamState(LabelEvaluator(m.name, m.labels, m.alpha, reference), make(None), make)


def _windows_factory(m: ModelSettings) -> Callable[[int | None], Windows]:
    window = m.window

    def make(last_stored: int | None) -> Windows:
        if isinstance(window, CountWindow):
            return CountWindows(m.name, window.size,
                                next_index=0 if last_stored is None else last_stored + 1)
        return TimeWindows(m.name, window.seconds, window.allowed_lateness_seconds,
                           last_closed_index=last_stored)

    return make


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
