"""The composition root: builds the concrete pipeline from settings, serves, shuts down."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from monitor.champion import Champions
from monitor.deadletter import DeadLetter
from monitor.errors import ConfigError, SinkError
from monitor.factory import build_models
from monitor.health import serve
from monitor.label_join import Joined, LabelJoin
from monitor.metrics import SETTINGS_VERSION, Metrics
from monitor.pipeline import Pipeline, StoredState
from monitor.report import WindowReport
from monitor.retrain.backends import build_backend, describe, registry_dir
from monitor.retrain.decider import RetrainDecider
from monitor.retrain.dispatcher import Dispatcher
from monitor.retrain.store import DecisionBuffer, RetrainStore
from monitor.schema import Decoder, TimeBounds
from monitor.settings import RetrainSettings, Settings
from monitor.sinks import PrometheusSink, Sink
from monitor.sources import Source
from monitor.storage import SqlStore
from monitor.story import WindowLog

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
    dispatcher: Dispatcher | None = None
    champions: Champions | None = None

    def run(self, *, until_exhausted: bool = False) -> None:
        if self.dispatcher is not None:
            self.dispatcher.start()
        try:
            self.pipeline.run(self.stop, until_exhausted=until_exhausted)
        finally:
            self.pipeline.health.stopped = True
            self.close()

    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
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
    config_path: Path | None = None,
    retrain_backends: Mapping[str, Any] | None = None,
) -> Daemon:
    """Wire the daemon. ``source``/``dead_letter`` default to Kafka from the settings."""
    if serve_metrics:  # before the slow start-up work: a taken port fails at once
        _check_port(settings.metrics.address, settings.metrics.port)
    metrics = metrics or Metrics()
    for m in settings.models:
        # the version evaluated: monitor.champion moves it to the registry's champion
        metrics.model_version.labels(model=m.name, version=m.version or SETTINGS_VERSION).set(1)
        dashboard_url, runbook_url = settings.alerts.links(m.name)
        metrics.alert_links.labels(model=m.name, dashboard_url=dashboard_url,
                                   runbook_url=runbook_url).set(1)
    window_log = WindowLog()

    def reported(report: WindowReport) -> None:
        window_log(report)  # one line per window; drift started / ended
        if on_report is not None:
            on_report(report)

    def restore() -> StoredState:
        offsets, last = {}, {}
        for stream in ("features", "labels"):
            offsets.update({(stream, *k): v for k, v in store.stored_offsets(stream).items()})
            last.update({(stream, m): i for m, i in store.last_window_index(stream).items()})
        return StoredState(offsets, last, store.detector_states(), store.dead_letter_marks())

    built = build_models(settings, metrics)
    models, schemas = built.models, built.schemas

    store = SqlStore(settings.storage.url)
    try:  # one early try, so readers of the database find the tables once this returns
        store.migrate()
        prepare = None
    except SinkError as exc:
        # A daemon started during a database outage waits for it: the loop retries (with
        # /metrics and /readyz up, saying why) instead of exiting.
        log.warning("storage not ready at start-up, retrying in the loop: %s", exc)
        prepare = store.migrate

    if source is None or dead_letter is None:
        from monitor.kafka_io import make_dead_letter, make_source

        source = source or make_source(settings.source.kafka)
        dead_letter = dead_letter or make_dead_letter(settings.source.kafka)

    # durable first, then visible; owned: read at scrape time, once `pipeline` exists below
    sinks: list[Sink] = [store, PrometheusSink(metrics, owned=lambda: pipeline.assignment)]
    metrics.prime(((name, [d for _n, s in state.streams() for d in s.evaluator.detector_names])
                   for name, state in models.items()),
                  sinks=[*(s.name for s in sinks), "dead_letter"],
                  retrain=[(m.name, m.retrain.action.kind,
                            sorted({a for a in m.retrain.actions.model_dump().values()
                                    if a != "none"}))
                           for m in settings.models if m.retrain is not None])
    retraining = {m.name: m.retrain for m in settings.models if m.retrain is not None}
    pipeline = Pipeline(
        source=source, decoder=Decoder(
            schemas, settings.limits.max_record_bytes,
            TimeBounds(settings.limits.max_future_seconds, settings.limits.max_past_seconds)),
        models=models, sinks=sinks, dead_letter=dead_letter, metrics=metrics,
        restore=restore, prepare=prepare, marks_store=store, on_report=reported,
        labels_topic=settings.source.kafka.labels_topic,
        join=LabelJoin(store, {m.name: m.labels for m in settings.models if m.labels},
                       capture=frozenset(retraining))
        if any(m.labels for m in settings.models) else None,
        poll_timeout_s=settings.source.kafka.poll_timeout_ms / 1000,
    )
    daemon = Daemon(settings, pipeline, store, metrics, stop=stop or threading.Event())
    daemon.champions = _champions(settings, pipeline, store, metrics, config_path)
    if retraining:
        daemon.dispatcher = _retraining(settings, pipeline, store, metrics, retraining,
                                        config_path, retrain_backends, daemon.champions)
    if serve_metrics:
        address, port = settings.metrics.address, settings.metrics.port
        try:
            server, _thread = serve(metrics, pipeline.health, address, port)
        except OSError as exc:
            daemon.close()
            raise MetricsPortError(address, port, exc) from None
        daemon._server = server
        daemon.metrics_port = server.server_port
        log.info("serving /metrics, /healthz, /readyz on %s:%d", settings.metrics.address,
                 daemon.metrics_port)
    return daemon


def _champions(settings: Settings, pipeline: Pipeline, store: SqlStore, metrics: Metrics,
               config_path: Path | None) -> Champions | None:
    """Models retrained by the builtin job are evaluated against their registry champion."""
    registries = {m.name: registry_dir(m.retrain.action, config_path) for m in settings.models
                  if m.retrain is not None and m.retrain.action.kind == "builtin"}
    if not registries:
        return None
    cache = settings.storage.reference_cache_dir
    champions = Champions({m.name: m for m in settings.models}, pipeline.models, store,
                          metrics, registries, Path(cache).expanduser() if cache else None)
    pipeline.restored_hooks.append(champions.restored)
    pipeline.batch_hooks.append(champions.poll)
    pipeline.admit_label = champions.admit
    return champions


def _retraining(settings: Settings, pipeline: Pipeline, store: SqlStore, metrics: Metrics,
                retraining: Mapping[str, RetrainSettings], config_path: Path | None,
                backends: Mapping[str, Any] | None,
                champions: Champions | None = None) -> Dispatcher:
    """The retraining policy in the results' transaction, and the dispatcher thread."""
    retrain_store = RetrainStore(store.engine)
    buffer = DecisionBuffer()
    store.join_transaction(buffer)
    decider = RetrainDecider(retraining, retrain_store, buffer, metrics)
    pipeline.restore_hooks.append(decider.restore)
    if champions is not None:  # a promoted version: the policy starts fresh after it
        champions.on_switch.append(
            lambda sw: decider.start_fresh(sw.model, sw.first_windows, sw.request_id))
    pipeline.delivery.before_sinks(lambda: decider.on_reports(pipeline.delivery.reports))

    def capture(pair: Joined, window_index: int) -> None:
        decider.capture(pair.model, pair.request_id, pair.timestamp, window_index,
                        pair.features, pair.y_pred, pair.y_true, pair.raw_input)

    pipeline.on_joined = capture
    made = dict(backends or {})
    for model, cfg in retraining.items():
        if model not in made:
            made[model] = build_backend(cfg.action, kafka=settings.source.kafka,
                                        config_path=config_path)
        log.info("model %s: retraining requests go to %s", model, describe(cfg.action))
    return Dispatcher(retrain_store, made, {m: c.action for m, c in retraining.items()},
                      metrics, capture={m: c.capture for m, c in retraining.items()})

class MetricsPortError(ConfigError):
    """The metrics address cannot be served (port taken, address not local): exit 2."""

    def __init__(self, address: str, port: int, exc: OSError) -> None:
        self.address, self.port = address, port
        reason = exc.strerror or str(exc)
        super().__init__(
            f"cannot serve /metrics on {address}:{port}: {reason}"
            + (" (another driftline, or the demo, may be running)" if port else "")
            + ". Choose another port: metrics.port in the settings file "
            "(or DRIFTLINE__METRICS__PORT=9109), --metrics-port for the demo; 0 picks "
            "any free port")


def _check_port(address: str, port: int) -> None:
    """MetricsPortError now if ``address:port`` cannot be bound (serve() binds it later)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(address or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, *_rest, sockaddr = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as HTTPServer does
            s.bind(sockaddr)
    except OSError as exc:  # socket.gaierror is one too
        raise MetricsPortError(address, port, exc) from None


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
