"""The sink seam, and the Prometheus sink that mirrors each window report into gauges."""

from __future__ import annotations

from typing import Protocol

from monitor.metrics import Metrics
from monitor.report import WindowReport


class Sink(Protocol):
    name: str

    def write(self, report: WindowReport) -> None: ...

    def flush(self) -> None:
        """Make every written report durable; raising means the pipeline must not commit."""
        ...

    def close(self) -> None: ...


class PrometheusSink:
    """Sets the drift gauges from the latest report of each model and detector."""

    name = "prometheus"

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def write(self, report: WindowReport) -> None:
        m, model = self.m, report.model
        m.windows_evaluated.labels(model=model).inc()
        m.window_records.labels(model=model).set(report.n_records)
        m.window_end.labels(model=model).set(report.window_end)
        for r in report.results:
            labels = {"model": model, "detector": r.detector}
            m.drift_detected.labels(**labels).set(1 if r.drifted else 0)
            m.drift_statistic.labels(**labels).set(r.statistic)
            m.drift_p_value.labels(**labels).set(float("nan") if r.p_value is None else r.p_value)
            if r.drifted:
                m.drift_windows.labels(**labels).inc()
            for f in r.features:
                m.feature_statistic.labels(feature=f.feature, **labels).set(f.statistic)
                m.feature_p_value.labels(feature=f.feature, **labels).set(
                    float("nan") if f.p_value is None else f.p_value)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
