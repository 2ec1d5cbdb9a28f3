"""The per-window drift gauges: only owned models, bounded per-feature series."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from detectors import DriftResult, FeatureResult
from monitor.app import build_daemon
from monitor.deadletter import MemoryDeadLetter
from monitor.metrics import Metrics
from monitor.report import WindowReport
from monitor.sinks import PrometheusSink
from monitor.sources import MemorySource
from monitor.synthetic import SyntheticStream

from .helpers import synthetic_settings

WINDOW_GAUGES = {
    "driftline_window_records": ("Records in the model's last evaluated window.", ["model"]),
    "driftline_window_end_timestamp_seconds": (
        "Event-time end of the model's last evaluated window (Unix seconds).", ["model"]),
    "driftline_drift_detected": (
        "1 if the detector flagged drift in the model's last window (after correction).",
        ["model", "detector"]),
    "driftline_drift_statistic": ("The detector's overall statistic for the last window.",
                                  ["model", "detector"]),
    "driftline_drift_p_value": ("The detector's smallest corrected p-value for the last window.",
                                ["model", "detector"]),
    "driftline_feature_drift_statistic": ("Per-feature test statistic for the last window.",
                                          ["model", "detector", "feature"]),
    "driftline_feature_drift_p_value": ("Per-feature raw p-value for the last window.",
                                        ["model", "detector", "feature"]),
}


def result(detector: str, features: Sequence[str], *, drifted: bool = False,
           p: float | None = 0.5, stat: float = 0.1) -> DriftResult:
    feats = tuple(FeatureResult(f, stat + i / 1000, None if p is None else p / (i + 1), p,
                                drifted, 100, 50) for i, f in enumerate(features))
    return DriftResult(detector, stat, p, 0.05, drifted, 100, 50, "bonferroni", feats)


def report(model: str, results: Sequence[DriftResult], partition: int = 0, *,
           stream: str = "features", index: int = 0, n: int = 50, end: float = 1000.0,
           error: str | None = None) -> WindowReport:
    return WindowReport(model=model, window_index=index, window_start=end - 10, window_end=end,
                        n_records=n, results=() if error else tuple(results),
                        offsets={("t", partition): (index * n, index * n + n - 1)},
                        evaluated_at=0.0, stream=stream, error=error)


class Owned:
    """What Pipeline.assignment looks like to the sink: changed between scrapes."""

    def __init__(self, value: set[tuple[str, int]] | None = None) -> None:
        self.value = value

    def __call__(self) -> set[tuple[str, int]] | None:
        return self.value


def make(owned: Owned | None = None, **kw: int) -> tuple[Metrics, PrometheusSink]:
    metrics = Metrics(CollectorRegistry())
    return metrics, PrometheusSink(metrics, owned, **kw)


def scrape(metrics: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """/metrics as the HTTP handler renders it: sample name -> {sorted labels: value}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    text = generate_latest(metrics.registry).decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def drifted_models(metrics: Metrics) -> set[str]:
    return {dict(k)["model"] for k in scrape(metrics).get("driftline_drift_detected", {})}


def test_gauges_appear_after_a_report_with_the_names_help_types_and_labels() -> None:
    metrics, sink = make()
    assert not set(scrape(metrics)) & set(WINDOW_GAUGES)  # nothing before the first window
    sink.write(report("fraud", [result("ks", ["amount", "age"], drifted=True, p=0.001,
                                       stat=0.4),
                                result("psi", ["amount"], p=None, stat=0.05)], n=500,
                      end=1234.0))
    got = scrape(metrics)
    m = {"model": "fraud"}
    assert got["driftline_window_records"] == {(("model", "fraud"),): 500.0}
    assert got["driftline_window_end_timestamp_seconds"] == {(("model", "fraud"),): 1234.0}
    key = tuple(sorted({**m, "detector": "ks"}.items()))
    assert got["driftline_drift_detected"][key] == 1.0
    assert got["driftline_drift_statistic"][key] == 0.4
    assert got["driftline_drift_p_value"][key] == 0.001
    psi = tuple(sorted({**m, "detector": "psi"}.items()))
    assert got["driftline_drift_detected"][psi] == 0.0
    assert math.isnan(got["driftline_drift_p_value"][psi])  # a distance: no p-value
    feats = {dict(k)["feature"]: v for k, v in got["driftline_feature_drift_statistic"].items()
             if dict(k)["detector"] == "ks"}
    assert feats == {"amount": 0.4, "age": pytest.approx(0.401)}
    assert got["driftline_windows_evaluated_total"] == {(("model", "fraud"),): 1.0}
    assert got["driftline_drift_windows_total"][key] == 1.0
    families = {f.name: f for f in text_string_to_metric_families(
        generate_latest(metrics.registry).decode())}
    for name, (help_text, labels) in WINDOW_GAUGES.items():
        fam = families[name]
        assert (fam.type, fam.documentation) == ("gauge", help_text), name
        assert all(sorted(s.labels) == sorted(labels) for s in fam.samples), name


def test_a_model_whose_partitions_moved_away_disappears_and_comes_back() -> None:
    owned = Owned({("t", 0), ("t", 1)})
    metrics, sink = make(owned)
    sink.write(report("fraud", [result("ks", ["amount"], drifted=True)], partition=0))
    sink.write(report("churn", [result("ks", ["amount"], drifted=True)], partition=1))
    assert drifted_models(metrics) == {"fraud", "churn"}
    owned.value = {("t", 1)}  # a rebalance gave partition 0 to another daemon
    got = scrape(metrics)
    assert drifted_models(metrics) == {"churn"}
    for name in WINDOW_GAUGES:  # every per-window gauge of fraud is gone, none of churn's
        assert {dict(k)["model"] for k in got.get(name, {})} <= {"churn"}, name
    assert got["driftline_window_records"] == {(("model", "churn"),): 50.0}
    # counters stay: they are this process's history, summed across daemons by queries
    assert got["driftline_windows_evaluated_total"][(("model", "fraud"),)] == 1.0
    owned.value = set()  # between an eager revocation and the next assignment
    assert drifted_models(metrics) == set()
    owned.value = {("t", 0), ("t", 2)}  # partition 0 came back
    assert drifted_models(metrics) == {"fraud"}
    owned.value = None  # a source without a consumer group owns everything
    assert drifted_models(metrics) == {"fraud", "churn"}


def test_a_model_read_from_several_partitions_is_owned_while_one_of_them_is() -> None:
    owned = Owned({("t", 1)})
    metrics, sink = make(owned)
    r = report("fraud", [result("ks", ["amount"])])
    sink.write(dataclasses.replace(r, offsets={("t", 0): (0, 9), ("t", 1): (0, 9)}))
    assert drifted_models(metrics) == {"fraud"}
    owned.value = {("t", 2)}
    assert drifted_models(metrics) == set()


def test_the_latest_report_decides_ownership_and_values() -> None:
    owned = Owned({("t", 1)})
    metrics, sink = make(owned)
    sink.write(report("fraud", [result("ks", ["amount"], drifted=True)], partition=0))
    assert drifted_models(metrics) == set()
    sink.write(report("fraud", [result("ks", ["amount"], drifted=False)], partition=1,
                      index=1))
    got = scrape(metrics)["driftline_drift_detected"]
    assert got == {(("detector", "ks"), ("model", "fraud")): 0.0}


def test_embedding_ks_exports_no_per_dimension_series() -> None:
    metrics, sink = make()
    dims = [f"dim_{i}" for i in range(384)]  # reduction: none
    sink.write(report("text", [result("embedding_mmd", ["embedding"]),
                               result("embedding_ks", dims, drifted=True),
                               result("bbsd", ["class_0", "class_1", "class_2"])]))
    got = scrape(metrics)
    per_feature = {(dict(k)["detector"], dict(k)["feature"])
                   for name in ("driftline_feature_drift_statistic",
                                "driftline_feature_drift_p_value") for k in got[name]}
    assert {d for d, _ in per_feature} == {"embedding_mmd", "bbsd"}
    assert {f for d, f in per_feature if d == "bbsd"} == {"class_0", "class_1", "class_2"}
    # the detector itself is still exported
    assert got["driftline_drift_detected"][(("detector", "embedding_ks"), ("model", "text"))] \
        == 1.0
    assert not any(k.startswith("dim_") for v in got.values() for labels in v
                   for _, k in labels)


@pytest.mark.parametrize("cap", [50, 3, 0])
def test_per_feature_series_are_capped_at_the_first_in_feature_order(cap: int) -> None:
    metrics, sink = make(max_feature_series=cap)
    names = [f"f{i:03d}" for i in range(120)]
    seen = []
    # The smallest p-values move from the first features to the last ones and back: a
    # "most drifted first" rule would swap series in and out; the feature order does not.
    for w, p_of in enumerate([lambda i: (i + 1) / 200, lambda i: 1 - (i + 1) / 200,
                              lambda i: 0.5]):
        feats = tuple(FeatureResult(n, 1 - p_of(i), p_of(i), p_of(i), False, 100, 50)
                      for i, n in enumerate(names))
        ks = DriftResult("ks", 1.0, 0.01, 0.05, False, 100, 50, "bonferroni", feats)
        sink.write(report("wide", [ks, result("chi2", ["country", "channel"])], index=w))
        got = scrape(metrics)
        for name in ("driftline_feature_drift_statistic", "driftline_feature_drift_p_value"):
            per_detector: dict[str, list[str]] = {"ks": [], "chi2": []}
            for k in got.get(name, {}):
                per_detector[dict(k)["detector"]].append(dict(k)["feature"])
            assert sorted(per_detector["ks"]) == names[:cap], (name, w)
            assert per_detector["chi2"] == ["country", "channel"][:cap], (name, w)
        seen.append(sorted(per_detector["ks"]))
    assert seen[0] == seen[1] == seen[2]  # stable: the same series every window


def test_negative_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="max_feature_series"):
        make(max_feature_series=-1)


def test_a_failed_window_counts_as_an_error_and_keeps_the_gauges() -> None:
    metrics, sink = make()
    sink.write(report("fraud", [result("ks", ["amount"], drifted=True, stat=0.4)], n=500,
                      end=1000.0))
    before = scrape(metrics)
    sink.write(report("fraud", [], index=1, n=7, end=2000.0, error="ValueError: boom"))
    after = scrape(metrics)
    assert after["driftline_window_errors_total"] == {(("model", "fraud"),): 1.0}
    for name in [*WINDOW_GAUGES, "driftline_windows_evaluated_total",
                 "driftline_drift_windows_total"]:
        assert after[name] == before[name], name
    assert after["driftline_window_records"] == {(("model", "fraud"),): 500.0}


def test_label_windows_share_the_model_and_the_latest_window_sets_its_size() -> None:
    metrics, sink = make()
    sink.write(report("fraud", [result("ks", ["amount"])], n=500, end=1000.0))
    sink.write(report("fraud", [result("performance", ["error"], drifted=True)], n=80,
                      end=900.0, stream="labels"))
    got = scrape(metrics)
    assert {dict(k)["detector"] for k in got["driftline_drift_detected"]} == {"ks",
                                                                                "performance"}
    assert got["driftline_window_records"] == {(("model", "fraud"),): 80.0}
    sink.write(report("fraud", [result("ks", ["amount"])], index=1, n=500, end=2000.0))
    assert scrape(metrics)["driftline_window_end_timestamp_seconds"] == {
        (("model", "fraud"),): 2000.0}


def test_the_daemon_exports_only_the_models_of_its_assignment(tmp_path: Path) -> None:
    """The wiring in build_daemon: the sink reads Pipeline.assignment at scrape time."""
    stream = SyntheticStream(seed=3, drift_at=1000, magnitude=1.0)
    settings = synthetic_settings(tmp_path, stream, alpha=0.001)
    metrics = Metrics(CollectorRegistry())
    daemon = build_daemon(settings, source=MemorySource(list(stream.encoded(2000))),
                          dead_letter=MemoryDeadLetter(), serve_metrics=False, metrics=metrics)
    try:
        daemon.pipeline.run(daemon.stop, until_exhausted=True)
        assert daemon.pipeline.assignment is None  # no consumer group: owns everything
        reg = metrics.registry
        labels = {"model": stream.model, "detector": "ks"}
        assert reg.get_sample_value("driftline_drift_detected", labels) == 1.0
        daemon.pipeline.assignment = {("other-topic", 0)}
        assert reg.get_sample_value("driftline_drift_detected", labels) is None
        assert drifted_models(metrics) == set()
        daemon.pipeline.assignment = {("memory", 0)}
        assert reg.get_sample_value("driftline_drift_detected", labels) == 1.0
    finally:
        daemon.close()
