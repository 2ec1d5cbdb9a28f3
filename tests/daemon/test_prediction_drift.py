"""Prediction drift: the window's predicted classes (or values) against the reference's."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitor.app import build_daemon
from monitor.deadletter import MemoryDeadLetter
from monitor.errors import ReferenceDataError
from monitor.metrics import Metrics
from monitor.settings import parse_settings
from monitor.sources import MemorySource

WINDOW = 1000


def reference(path: Path, task: str, with_prediction: bool = True) -> Path:
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["x", *(["prediction"] if with_prediction else [])])
        for _ in range(3000):
            pred = int(rng.random() < 0.3) if task == "classification" else rng.normal()
            w.writerow([rng.normal(), *([pred] if with_prediction else [])])
    return path


def records(task: str, shift_from: int, n: int) -> list[bytes]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        if task == "classification":
            pred: object = int(rng.random() < (0.3 if i < shift_from else 0.5))
        else:
            pred = float(rng.normal(0.0 if i < shift_from else 0.5))
        out.append(json.dumps({"model": "m", "request_id": str(i), "timestamp": i,
                               "features": {"x": float(rng.normal())},
                               "prediction": pred}).encode())
    return out


@pytest.mark.parametrize(("task", "detector"), [("classification", "prediction_chi2"),
                                                ("regression", "prediction_ks")])
def test_shifted_predictions_are_flagged(tmp_path: Path, task: str, detector: str) -> None:
    ref = reference(tmp_path / "ref.csv", task)
    settings = parse_settings({
        "storage": {"url": f"sqlite:///{tmp_path}/r.db", "reference_cache_dir": ""},
        "models": [{"name": "m", "reference": {"path": str(ref)},
                    "features": [{"name": "x", "type": "numeric"}],
                    "window": {"kind": "count", "size": WINDOW}, "alpha": 0.001,
                    "prediction_drift": {"task": task}}]}, env={})
    values = records(task, 2 * WINDOW, 4 * WINDOW)
    values.append(b'{"model": "m", "request_id": "z", "timestamp": 1, "features": {"x": 1},'
                  b' "prediction": "cat"}')
    dead = MemoryDeadLetter()
    daemon = build_daemon(settings, source=MemorySource(values), dead_letter=dead,
                          serve_metrics=False, metrics=Metrics(CollectorRegistry()))
    daemon.pipeline.run(threading.Event(), until_exhausted=True)
    rows = [r for r in daemon.store.results() if r["detector"] == detector]
    assert [r["window_index"] for r in rows] == [0, 1, 2, 3]
    assert [r["drifted"] for r in rows] == [False, False, True, True]
    # a regressor's prediction must be a number; a class may be anything
    assert [e.reason for _, e in dead.records] == (["schema"] if task == "regression" else [])


def test_prediction_drift_needs_the_column(tmp_path: Path) -> None:
    ref = reference(tmp_path / "ref.csv", "classification", with_prediction=False)
    settings = parse_settings({
        "storage": {"url": f"sqlite:///{tmp_path}/r.db", "reference_cache_dir": ""},
        "models": [{"name": "m", "reference": {"path": str(ref)},
                    "features": [{"name": "x", "type": "numeric"}],
                    "window": {"kind": "count", "size": WINDOW},
                    "prediction_drift": {}}]}, env={})
    with pytest.raises(ReferenceDataError, match="missing column 'prediction'"):
        build_daemon(settings, source=MemorySource([]), dead_letter=MemoryDeadLetter(),
                     serve_metrics=False, metrics=Metrics(CollectorRegistry()))


# A 3-class classifier: CONFUSION[j, i] = P(predicted i | true j).
CONFUSION = np.array([[0.80, 0.15, 0.05], [0.10, 0.75, 0.15], [0.05, 0.20, 0.75]])
CLASSES = np.array(["cat", "dog", "eel"], dtype=object)


def classify(rng: np.random.Generator, priors: list[float], n: int) -> tuple[np.ndarray, ...]:
    y = rng.choice(3, size=n, p=priors)
    pred = np.array([rng.choice(3, p=CONFUSION[j]) for j in y])
    return CLASSES[y], CLASSES[pred]


def labelled_reference(path: Path, with_features: bool = True) -> Path:
    y, pred = classify(np.random.default_rng(5), [0.5, 0.3, 0.2], 6000)
    rng = np.random.default_rng(6)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(["x"] if with_features else []), "label", "prediction"])
        for yi, pi in zip(y, pred, strict=True):
            w.writerow([*([rng.normal()] if with_features else []), yi, pi])
    return path


@pytest.mark.parametrize("from_labels", [False, True], ids=["model-reference", "labels-reference"])
def test_label_shift_weights_are_estimated_per_window(tmp_path: Path, from_labels: bool) -> None:
    model: dict = {"name": "m", "features": [{"name": "x", "type": "numeric"}],
                   "window": {"kind": "count", "size": WINDOW}, "alpha": 0.001,
                   "prediction_drift": {"label_shift": True}}
    if from_labels:  # BBSE's confusion matrix from the labelled reference of `labels`
        model["reference"] = {"path": str(reference(tmp_path / "ref.csv", "classification"))}
        model["labels"] = {"reference": {"path": str(labelled_reference(
            tmp_path / "labelled.csv", with_features=False))}}
    else:
        model["reference"] = {"path": str(labelled_reference(tmp_path / "ref.csv"))}
    settings = parse_settings({
        "source": {"kafka": {"labels_topic": "labels"}},
        "storage": {"url": f"sqlite:///{tmp_path}/r.db", "reference_cache_dir": ""},
        "models": [model]}, env={})
    rng = np.random.default_rng(7)
    values = []
    for i, priors in enumerate([[0.5, 0.3, 0.2]] * 2 + [[0.2, 0.3, 0.5]] * 2):
        _, pred = classify(rng, priors, WINDOW)
        values += [json.dumps({"model": "m", "request_id": f"{i}-{j}", "timestamp": j,
                               "features": {"x": float(rng.normal())},
                               "prediction": str(p)}).encode() for j, p in enumerate(pred)]
    metrics = Metrics(CollectorRegistry())
    daemon = build_daemon(settings, source=MemorySource(values), dead_letter=MemoryDeadLetter(),
                          serve_metrics=False, metrics=metrics)
    daemon.pipeline.run(threading.Event(), until_exhausted=True)
    rows = [r for r in daemon.store.results() if r["detector"] == "label_shift"]
    assert [r["drifted"] for r in rows] == [False, False, True, True]
    weights = {f["feature"]: f["statistic"] for f in rows[-1]["features"]}
    # true weights q / p = [0.4, 1.0, 2.5]
    assert weights == {"cat": pytest.approx(0.4, abs=0.15), "dog": pytest.approx(1.0, abs=0.25),
                       "eel": pytest.approx(2.5, abs=0.5)}
    assert [f["drifted"] for f in rows[-1]["features"]] == [True, False, True]
    # the weights are on /metrics, one series per class
    assert metrics.registry.get_sample_value(
        "driftline_feature_drift_statistic",
        {"model": "m", "detector": "label_shift", "feature": "eel"}) == weights["eel"]


def test_label_shift_needs_labels_in_the_reference(tmp_path: Path) -> None:
    ref = reference(tmp_path / "ref.csv", "classification")
    settings = parse_settings({
        "storage": {"url": f"sqlite:///{tmp_path}/r.db", "reference_cache_dir": ""},
        "models": [{"name": "m", "reference": {"path": str(ref)},
                    "features": [{"name": "x", "type": "numeric"}],
                    "window": {"kind": "count", "size": WINDOW},
                    "prediction_drift": {"label_shift": True}}]}, env={})
    with pytest.raises(ReferenceDataError, match=r"ref.csv: row 2: missing column 'label'"):
        build_daemon(settings, source=MemorySource([]), dead_letter=MemoryDeadLetter(),
                     serve_metrics=False, metrics=Metrics(CollectorRegistry()))
