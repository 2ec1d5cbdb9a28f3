"""The sink seam, and the Prometheus sink that exports each window report as metrics."""

from __future__ import annotations

from typing import Protocol

from monitor.metrics import MAX_FEATURE_SERIES, LatestWindows, Metrics, Owned
from monitor.report import WindowReport


class Sink(Protocol):
    name: str

    def write(self, report: WindowReport) -> None: ...

    def flush(self) -> None:
        """Make every written report durable; raising means the pipeline must not commit."""
        ...

    def close(self) -> None: ...


class PrometheusSink:
    """Counts each report, and keeps the latest per model for the per-window gauges.

    The gauges (``driftline_drift_*``, ``driftline_feature_drift_*``, ``driftline_window_*``)
    come from a :class:`~monitor.metrics.LatestWindows` collector registered on the metrics'
    registry: only models read from the partitions ``owned()`` returns are exported (None:
    all of them), and per-feature series are capped at ``max_feature_series`` per detector.
    A report whose evaluation failed counts in ``driftline_window_errors_total`` and leaves
    the gauges as they were.
    """

    name = "prometheus"

    def __init__(self, metrics: Metrics, owned: Owned | None = None, *,
                 max_feature_series: int = MAX_FEATURE_SERIES) -> None:
        self.m = metrics
        self.latest = LatestWindows(owned, max_feature_series=max_feature_series)
        metrics.registry.register(self.latest)

    def write(self, report: WindowReport) -> None:
        m, model = self.m, report.model
        if report.error is not None:
            m.window_errors.labels(model=model).inc()
            return
        m.windows_evaluated.labels(model=model).inc()
        for r in report.results:
            if r.drifted:
                m.drift_windows.labels(model=model, detector=r.detector).inc()
        self.latest.update(report)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
