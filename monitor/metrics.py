"""Every Prometheus metric driftline exports, in one place.

Naming follows Prometheus conventions: prefix ``driftline_``, base units (``_seconds``),
``_total`` on counters. Label values come only from configured models, detectors and
features, or from the fixed sets below, so cardinality stays bounded; an unknown model
name in a bad record is never used as a label value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitor import __version__

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
LABEL_OUTCOMES: tuple[str, ...] = ("joined", "late", "orphan", "invalid", "replayed")

#: Pipeline stages timed by ``driftline_stage_duration_seconds``.
STAGES: tuple[str, ...] = ("poll", "decode", "detect", "sink", "commit")

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
        self.window_records = Gauge(
            "driftline_window_records", "Records in the model's last evaluated window.",
            ["model"], registry=r,
        )
        self.window_end = Gauge(
            "driftline_window_end_timestamp_seconds",
            "Event-time end of the model's last evaluated window (Unix seconds).", ["model"],
            registry=r,
        )
        self.drift_detected = Gauge(
            "driftline_drift_detected",
            "1 if the detector flagged drift in the model's last window (after correction).",
            ["model", "detector"], registry=r,
        )
        self.drift_statistic = Gauge(
            "driftline_drift_statistic",
            "The detector's overall statistic for the last window.", ["model", "detector"],
            registry=r,
        )
        self.drift_p_value = Gauge(
            "driftline_drift_p_value",
            "The detector's smallest corrected p-value for the last window.",
            ["model", "detector"], registry=r,
        )
        self.feature_statistic = Gauge(
            "driftline_feature_drift_statistic",
            "Per-feature test statistic for the last window.", ["model", "detector", "feature"],
            registry=r,
        )
        self.feature_p_value = Gauge(
            "driftline_feature_drift_p_value",
            "Per-feature raw p-value for the last window.", ["model", "detector", "feature"],
            registry=r,
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
        self.sink_errors = Counter(
            "driftline_sink_errors_total", "Sink flushes that failed (offsets not committed).",
            ["sink"], registry=r,
        )

    def prime(self, models: Iterable[tuple[str, Iterable[str]]],
              sinks: Iterable[str] = ()) -> None:
        """Create every labelled series up front so dashboards show zeros, not gaps."""
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
