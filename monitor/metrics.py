"""Every Prometheus metric driftline exports, in one place.

Naming follows Prometheus conventions: prefix ``driftline_``, base units (``_seconds``),
``_total`` on counters. Label values come only from configured models, detectors and
features, or from the fixed sets below, so cardinality stays bounded; an unknown model
name in a bad record is never used as a label value.

The gauges that describe a model's last window (``driftline_model_drift_*``, the model
verdict the alert fires on; ``driftline_drift_*`` and ``driftline_feature_drift_*``, per
detector and feature, for diagnosis; ``driftline_window_*``) are not ordinary gauges: the
:class:`LatestWindows` collector builds them at scrape time from the latest report of each
model, and only for the models this process currently owns, so that after a consumer-group
rebalance a daemon stops exporting (and alerting on) models another daemon now reads.
"""

from __future__ import annotations

import threading
from collections import Counter as CounterType
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from detectors.alarms import MODEL
from monitor import __version__

if TYPE_CHECKING:
    from monitor.report import WindowReport

#: Reasons a record can be rejected (the ``reason`` label of ``driftline_records_rejected_total``).
REJECT_REASONS: tuple[str, ...] = (
    "malformed_json",
    "invalid_encoding",
    "oversize",
    "schema",
    "non_finite",
    "unknown_model",
    "late",
    "future_timestamp",
    "past_timestamp",
)

#: Join outcomes of delayed labels (the ``outcome`` label of ``driftline_labels_total``).
LABEL_OUTCOMES: tuple[str, ...] = ("joined", "late", "orphan", "invalid", "replayed",
                                   "superseded")

#: Outcomes counted by ``driftline_retrain_requests_total``.
RETRAIN_OUTCOMES: tuple[str, ...] = ("queued", "pending_approval", "collected", "dispatched",
                                     "succeeded", "promoted", "failed")

#: Events counted by ``driftline_model_switches_total`` (see monitor.champion).
SWITCH_EVENTS: tuple[str, ...] = ("promote", "rollback", "baseline")

#: ``version`` of ``driftline_model_version_info`` for a model evaluated against the settings'
#: reference files (no registry version yet) that names no ``version`` in its settings.
SETTINGS_VERSION = "settings"

#: Pipeline stages timed by ``driftline_stage_duration_seconds``.
STAGES: tuple[str, ...] = ("poll", "decode", "detect", "sink", "commit")

#: Detectors that export no ``driftline_feature_drift_*`` series: their "features" are the
#: dimensions of a reduced embedding (hundreds with ``reduction: none``), not configured
#: features. Their overall statistic and p-value are exported as for any detector.
NO_FEATURE_SERIES: frozenset[str] = frozenset({"embedding_ks"})

#: Default cap on ``driftline_feature_drift_*`` series per (model, detector).
MAX_FEATURE_SERIES = 50

#: Returns the (topic, partition)s this process owns now; None: it owns everything.
Owned = Callable[[], "set[tuple[str, int]] | frozenset[tuple[str, int]] | None"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class Metrics:
    """The metric set, registered on an injected registry (tests pass a fresh one)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.build_info = Gauge(
            "driftline_build_info", "Constant 1, labelled with the driftline version.",
            ["version"], registry=r,
        )
        self.build_info.labels(version=__version__).set(1)
        self.records_consumed = Counter(
            "driftline_records_consumed_total",
            "Valid inference records decoded and assigned to a window.", ["model"], registry=r,
        )
        self.records_rejected = Counter(
            "driftline_records_rejected_total",
            "Records rejected by decoding and sent to the dead-letter topic.", ["reason"],
            registry=r,
        )
        self.windows_evaluated = Counter(
            "driftline_windows_evaluated_total", "Windows closed and tested for drift.",
            ["model"], registry=r,
        )
        self.window_errors = Counter(
            "driftline_window_errors_total",
            "Windows whose evaluation failed unexpectedly (stored with the error, skipped).",
            ["model"], registry=r,
        )
        self.drift_windows = Counter(
            "driftline_drift_windows_total",
            "Windows in which the detector flagged drift.", ["model", "detector"], registry=r,
        )
        self.stage_duration = Histogram(
            "driftline_stage_duration_seconds",
            "Time spent per pipeline stage, per batch or window.", ["stage"], buckets=_BUCKETS,
            registry=r,
        )
        self.last_commit = Gauge(
            "driftline_last_commit_timestamp_seconds",
            "Wall-clock time of the last successful offset commit (Unix seconds).", registry=r,
        )
        self.commit_errors = Counter(
            "driftline_commit_errors_total",
            "Offset commits that failed (retried with the next batch; nothing is lost).",
            registry=r,
        )
        self.source_connected = Gauge(
            "driftline_source_connected",
            "1 while the record source (Kafka) is reachable, 0 during an outage.", registry=r,
        )
        self.consumer_lag = Gauge(
            "driftline_consumer_lag_records",
            "Records between the consumer's position and the partition's end.",
            ["topic", "partition"], registry=r,
        )
        self.rebalances = Counter(
            "driftline_rebalances_total",
            "Partition revocations handled (complete windows flushed and committed first).",
            registry=r,
        )
        self.embedding_duration = Histogram(
            "driftline_embedding_duration_seconds",
            "Time to embed one window's inputs with the deployed model.", ["model"],
            buckets=_BUCKETS, registry=r,
        )
        self.embedded_records = Counter(
            "driftline_embedded_records_total", "Inputs embedded with the deployed model.",
            ["model"], registry=r,
        )
        self.labels = Counter(
            "driftline_labels_total",
            "Delayed-label records by join outcome (joined, late, orphan, invalid, replayed).",
            ["outcome"], registry=r,
        )
        self.labels_waiting = Gauge(
            "driftline_labels_waiting",
            "Labels waiting for their prediction to arrive (bounded).", registry=r,
        )
        self.retrain_requests = Counter(
            "driftline_retrain_requests_total",
            "Retraining requests by model, action and outcome (queued, pending_approval, "
            "collected, dispatched, succeeded, failed, rejected, cancelled).",
            ["model", "action", "outcome"], registry=r,
        )
        self.retrain_in_flight = Gauge(
            "driftline_retrain_in_flight",
            "Requests of the model waiting for approval, queued, dispatched or running.",
            ["model"], registry=r,
        )
        self.retrain_pending_approval = Gauge(
            "driftline_retrain_pending_approval",
            "Requests of the model waiting for an operator's approval.", ["model"], registry=r,
        )
        self.retrain_dispatch_errors = Counter(
            "driftline_retrain_dispatch_errors_total",
            "Failed attempts to hand a request to its backend (retried with back-off).",
            ["model", "backend"], registry=r,
        )
        self.retrain_decision_delay = Histogram(
            "driftline_retrain_decision_delay_seconds",
            "Event time from an incident's first drifted window to its request.", ["model"],
            buckets=(60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86_400, 3 * 86_400, 7 * 86_400),
            registry=r,
        )
        self.retrain_dispatch_delay = Histogram(
            "driftline_retrain_dispatch_delay_seconds",
            "Wall-clock time from a request being queued to its backend accepting it.",
            ["model"], buckets=_BUCKETS, registry=r,
        )
        self.model_version = Gauge(
            "driftline_model_version_info",
            "1 for the registry version whose reference the model is evaluated against "
            "(the champion), per model.", ["model", "version"], registry=r,
        )
        self.model_switches = Counter(
            "driftline_model_switches_total",
            "Changes of a model's serving version the daemon applied (event: promote, "
            "rollback, baseline: the deployed model registered).", ["model", "event"], registry=r,
        )
        self.sink_errors = Counter(
            "driftline_sink_errors_total", "Sink flushes that failed (offsets not committed).",
            ["sink"], registry=r,
        )
        self.alert_links = Gauge(
            "driftline_alert_links_info",
            "Constant 1 per model, labelled with the dashboard and runbook URLs its alerts "
            "link to (settings alerts.dashboard_url, alerts.runbook_url).",
            ["model", "dashboard_url", "runbook_url"], registry=r,
        )

    @contextmanager
    def consumed_per_batch(self) -> Iterator[CounterType[str]]:
        """Counts a batch's records per model, added to ``records_consumed`` once at the end.

        One ``inc()`` per record took 13% of ingest (a lock and a label lookup each)."""
        counts: CounterType[str] = CounterType()
        try:
            yield counts
        finally:
            for model, n in counts.items():
                self.records_consumed.labels(model=model).inc(n)

    def prime(self, models: Iterable[tuple[str, Iterable[str]]],
              sinks: Iterable[str] = (),
              retrain: Iterable[tuple[str, str, Iterable[str]]] = ()) -> None:
        """Create every labelled series up front so dashboards show zeros, not gaps.

        ``retrain``: (model, backend kind, actions) of the models with a retraining policy."""
        for model, backend, actions in retrain:
            for action in actions:
                for outcome in RETRAIN_OUTCOMES:
                    self.retrain_requests.labels(model=model, action=action, outcome=outcome)
            self.retrain_in_flight.labels(model=model).set(0)
            self.retrain_pending_approval.labels(model=model).set(0)
            self.retrain_dispatch_errors.labels(model=model, backend=backend)
            self.retrain_decision_delay.labels(model=model)
            self.retrain_dispatch_delay.labels(model=model)
            for event in SWITCH_EVENTS:
                self.model_switches.labels(model=model, event=event)
        for sink in sinks:
            self.sink_errors.labels(sink=sink)
        for reason in REJECT_REASONS:
            self.records_rejected.labels(reason=reason)
        for outcome in LABEL_OUTCOMES:
            self.labels.labels(outcome=outcome)
        for stage in STAGES:
            self.stage_duration.labels(stage=stage)
        for model, detectors in models:
            self.records_consumed.labels(model=model)
            self.embedded_records.labels(model=model)
            self.embedding_duration.labels(model=model)
            self.windows_evaluated.labels(model=model)
            self.window_errors.labels(model=model)
            for detector in detectors:
                self.drift_windows.labels(model=model, detector=detector)


class LatestWindows(Collector):
    """The per-window gauges, built at scrape time from the latest report of each model.

    Holds the latest successful report per (model, stream) and yields the gauges only for
    reports whose partitions intersect ``owned()`` (None: every report). After a rebalance
    moves a model's partitions to another process, its series vanish from this process's
    ``/metrics`` (and come back if the partitions return), so an alert never fires from a
    daemon that no longer reads the model.

    Per-feature series are bounded: none for :data:`NO_FEATURE_SERIES`, and at most
    ``max_feature_series`` per (model, detector), the first ones in the detector's feature
    order (a stable choice: the same features are exported every window).
    """

    def __init__(self, owned: Owned | None = None, *,
                 max_feature_series: int = MAX_FEATURE_SERIES) -> None:
        if max_feature_series < 0:
            raise ValueError(f"max_feature_series must be >= 0, got {max_feature_series}")
        self._owned: Owned = owned or (lambda: None)
        self.max_feature_series = max_feature_series
        self._lock = threading.Lock()  # update() runs in the pipeline, collect() per scrape
        self._seq = 0
        self._latest: dict[tuple[str, str], tuple[int, WindowReport]] = {}

    def update(self, report: WindowReport) -> None:
        """Keep ``report`` as its (model, stream)'s latest; failed windows change nothing."""
        if report.error is not None:
            return
        with self._lock:
            self._seq += 1
            self._latest[(report.model, report.stream)] = (self._seq, report)

    def owned_reports(self) -> list[tuple[int, WindowReport]]:
        """(write sequence, report) of the latest reports of the models owned now."""
        owned = self._owned()
        # A copy, taken in one C call: the pipeline may change its set meanwhile.
        mine = None if owned is None else frozenset(owned)
        with self._lock:
            latest = list(self._latest.values())
        return [(seq, r) for seq, r in latest if mine is None or not mine.isdisjoint(r.offsets)]

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        md, mdf = ["model", "detector"], ["model", "detector", "feature"]
        return {
            "records": GaugeMetricFamily(
                "driftline_window_records", "Records in the model's last evaluated window.",
                labels=["model"]),
            "end": GaugeMetricFamily(
                "driftline_window_end_timestamp_seconds",
                "Event-time end of the model's last evaluated window (Unix seconds).",
                labels=["model"]),
            "detected": GaugeMetricFamily(
                "driftline_drift_detected",
                "1 if the detector flagged drift in the model's last window (after correction).",
                labels=md),
            "statistic": GaugeMetricFamily(
                "driftline_drift_statistic",
                "The detector's overall statistic for the last window.", labels=md),
            "p_value": GaugeMetricFamily(
                "driftline_drift_p_value",
                "The detector's smallest corrected p-value for the last window.", labels=md),
            "model_detected": GaugeMetricFamily(
                "driftline_model_drift_detected",
                "1 if the model verdict alarms on the model's last window of this stream: "
                "family-wise over all its detectors and features, after the k-of-n rule of "
                "models[].false_alarms. The alert fires on this.",
                labels=["model", "stream"]),
            "model_p_value": GaugeMetricFamily(
                "driftline_model_drift_p_value",
                "Smallest adjusted p-value across the model's detectors in its last window "
                "(NaN: no detector could test the window).", labels=["model", "stream"]),
            "model_interval": GaugeMetricFamily(
                "driftline_model_false_alarm_interval_windows",
                "Expected windows between false alarms of the model verdict (no drift).",
                labels=["model", "stream"]),
            "feature_statistic": GaugeMetricFamily(
                "driftline_feature_drift_statistic",
                "Per-feature test statistic for the last window.", labels=mdf),
            "feature_p_value": GaugeMetricFamily(
                "driftline_feature_drift_p_value",
                "Per-feature raw p-value for the last window.", labels=mdf),
            "feature_adjusted_p_value": GaugeMetricFamily(
                "driftline_feature_drift_adjusted_p_value",
                "Per-feature p-value after the detector's multiple-testing correction, "
                "for the last window.", labels=mdf),
            "feature_detected": GaugeMetricFamily(
                "driftline_feature_drift_detected",
                "1 if the feature drifted in the model's last window (under the detector's "
                "alpha and correction, or its distance threshold).", labels=mdf),
            "window_index": GaugeMetricFamily(
                "driftline_window_index", "Index of the model's last evaluated window.",
                labels=["model"]),
        }

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """The names, for the registry's duplicate check (no samples)."""
        return list(self._families().values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        f = self._families()
        last: dict[str, tuple[int, WindowReport]] = {}  # per model: its latest stream's
        for seq, report in sorted(self.owned_reports(), key=lambda x: x[0]):
            model = report.model
            last[model] = (seq, report)
            for r in report.results:
                if r.detector == MODEL:
                    ms = [model, report.stream]
                    f["model_detected"].add_metric(ms, 1.0 if r.drifted else 0.0)
                    f["model_p_value"].add_metric(ms, _nan_if_none(r.p_value))
                    for entry in r.features:
                        if entry.feature == "debounce":
                            f["model_interval"].add_metric(ms, entry.statistic)
                md = [model, r.detector]
                f["detected"].add_metric(md, 1.0 if r.drifted else 0.0)
                f["statistic"].add_metric(md, r.statistic)
                f["p_value"].add_metric(md, _nan_if_none(r.p_value))
                if r.detector in NO_FEATURE_SERIES:
                    continue
                for feat in r.features[:self.max_feature_series]:
                    f["feature_statistic"].add_metric([*md, feat.feature], feat.statistic)
                    f["feature_p_value"].add_metric([*md, feat.feature],
                                                    _nan_if_none(feat.p_value))
                    f["feature_adjusted_p_value"].add_metric(
                        [*md, feat.feature], _nan_if_none(feat.adjusted_p_value))
                    f["feature_detected"].add_metric([*md, feat.feature],
                                                     1.0 if feat.drifted else 0.0)
        for model, (_seq, report) in last.items():
            f["records"].add_metric([model], float(report.n_records))
            f["end"].add_metric([model], report.window_end)
            f["window_index"].add_metric([model], float(report.window_index))
        yield from f.values()


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value
