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
