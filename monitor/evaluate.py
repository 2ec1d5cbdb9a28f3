"""Turns a closed window into a :class:`WindowReport` by running the model's detectors.

This is the only place the daemon touches ``detectors``: it builds each detector once per
model (reference state is precomputed in the detector's constructor) and feeds it columns.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detectors import Detector, DriftResult, KSDetector, PredictionDriftDetector
from detectors.bbse import BBSE
from detectors.c2st import ClassifierTwoSampleDetector
from detectors.mmd import MMDDetector
from detectors.registry import KINDS, build, choose
from monitor.report import WindowReport
from monitor.schema import FeatureKind
from monitor.settings import MULTIVARIATE, DetectorSettings, ModelSettings
from monitor.windows import ClosedWindow

__all__ = ["ModelEvaluator", "WindowReport", "default_detectors"]


def default_detectors(model: ModelSettings,
                      reference: Mapping[str, np.ndarray]) -> tuple[DetectorSettings, ...]:
    """One detector per kind that :func:`detectors.registry.choose` picks for a feature."""
    chosen: dict[str, list[str]] = {}
    for f in model.features:
        chosen.setdefault(choose(f.type, len(reference[f.name])), []).append(f.name)
    return tuple(DetectorSettings(kind=k, features=tuple(v))  # type: ignore[arg-type]
                 for k, v in chosen.items())


class ModelEvaluator:
    """Holds one model's detectors and evaluates its windows."""

    def __init__(self, model: ModelSettings, reference: Mapping[str, np.ndarray],
                 labelled: Mapping[str, np.ndarray] | None = None) -> None:
        """``labelled``: 'label' and 'prediction' columns for label-shift estimation
        (default: those of ``reference``)."""
        self.model = model.name
        self.n_reference = len(next(iter(reference.values()), ()))
        self.features: dict[str, FeatureKind] = {f.name: f.type for f in model.features}
        self.detectors: list[tuple[Any, tuple[str, ...]]] = []  # per-feature or multivariate
        self._scale: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.embedding: Any = None  # monitor.embedding_drift.EmbeddingDrift, attached later
        self.prediction_drift: Any = None
        if model.prediction_drift is not None:
            if "prediction" not in reference:
                raise ValueError(f"model '{model.name}': prediction_drift needs a 'prediction' "
                                 "column in the reference data")
            self._regression = model.prediction_drift.task == "regression"
            ref_pred = np.asarray(reference["prediction"],
                                  dtype=np.float64 if self._regression else object)
            self.prediction_drift = (
                KSDetector({"prediction": ref_pred}, alpha=model.alpha, correction="none")
                if self._regression else PredictionDriftDetector(ref_pred, alpha=model.alpha))
        self.label_shift: BBSE | None = None
        if model.prediction_drift is not None and model.prediction_drift.label_shift:
            source = reference if labelled is None else labelled
            if "label" not in source:
                raise ValueError(f"model '{model.name}': prediction_drift.label_shift needs a "
                                 "'label' column in the labelled reference data")
            self.label_shift = BBSE(np.asarray(source["label"], dtype=object),
                                    np.asarray(source["prediction"], dtype=object),
                                    alpha=model.alpha,
                                    confidence=model.prediction_drift.confidence)
        for spec in model.detectors or default_detectors(model, reference):
            if spec.kind in MULTIVARIATE:
                self.detectors.append(self._multivariate(spec, model, reference))
                continue
            info = KINDS[spec.kind]
            names = spec.features or tuple(
                n for n, k in self.features.items() if k in info.feature_types)
            params: dict[str, object] = (
                {"alpha": spec.alpha or model.alpha,
                 "correction": spec.correction or model.correction} if info.has_p_value
                else {} if spec.threshold is None else {"threshold": spec.threshold})
            if spec.min_expected is not None:
                params["min_expected"] = spec.min_expected
            det = build(spec.kind, {n: reference[n] for n in names}, **params)
            self.detectors.append((det, names))

    def _multivariate(self, spec: DetectorSettings, model: ModelSettings,
                      reference: Mapping[str, np.ndarray]) -> tuple[Detector, tuple[str, ...]]:
        names = spec.features or tuple(n for n, k in self.features.items() if k == "numeric")
        ref = np.column_stack([reference[n] for n in names])
        # Features on different scales would let the widest dominate the kernel or the
        # classifier: standardise every window with the reference's mean and spread.
        mean, std = ref.mean(axis=0), ref.std(axis=0)
        self._scale[spec.kind] = (mean, np.where(std > 0, std, 1.0))
        ref = (ref - mean) / self._scale[spec.kind][1]
        alpha = spec.alpha or model.alpha
        det: Any
        if spec.kind == "mmd":
            det = MMDDetector(ref, alpha=alpha, n_permutations=spec.n_permutations,
                              backend=spec.backend, device=spec.device, max_n=spec.max_n,
                              feature="features")
        else:
            det = ClassifierTwoSampleDetector(ref, alpha=alpha, max_n=spec.max_n,
                                              feature="features")
        return det, names

    def _matrix(self, kind: str, window: ClosedWindow, names: Sequence[str]) -> np.ndarray:
        x = np.asarray([[r.features[n] for n in names] for r in window.records],
                       dtype=np.float64).reshape(len(window.records), len(names))
        mean, std = self._scale[kind]
        return (x - mean) / std

    def _test_predictions(self, window: ClosedWindow) -> tuple[DriftResult, ...]:
        if self._regression:
            values = np.asarray([float(r.prediction) for r in window.records])
            return (dataclasses.replace(self.prediction_drift.test({"prediction": values}),
                                        detector="prediction_ks"),)
        classes = np.asarray([json.dumps(r.prediction) if isinstance(r.prediction, bool)
                              else str(r.prediction) for r in window.records], dtype=object)
        results: tuple[DriftResult, ...] = (self.prediction_drift.test(classes),)
        if self.label_shift is not None:
            results += (self.label_shift.test(classes),)
        return results

    @property
    def detector_names(self) -> list[str]:
        names = [d.name for d, _ in self.detectors]
        if self.prediction_drift is not None:
            names.append("prediction_ks" if self._regression else "prediction_chi2")
        if self.label_shift is not None:
            names.append(self.label_shift.name)
        return names + (self.embedding.detector_names if self.embedding is not None else [])

    def load_state(self, saved: Mapping[str, str]) -> None:
        """Nothing to resume: these detectors compare each window with the reference alone."""

    def __getstate__(self) -> dict[str, Any]:
        # The saved reference state never includes the model (it has its own cache).
        return {**self.__dict__, "embedding": None}

    def columns(self, window: ClosedWindow, names: Sequence[str]) -> dict[str, np.ndarray]:
        out = {}
        for n in names:
            values = [r.features[n] for r in window.records]
            out[n] = np.asarray(values, dtype=np.float64 if self.features[n] == "numeric"
                                else object)
        return out

    def evaluate(self, window: ClosedWindow) -> WindowReport:
        results = tuple(
            det.test(self._matrix(det.name, window, names) if det.name in MULTIVARIATE
                     else self.columns(window, names))
            for det, names in self.detectors)
        if self.prediction_drift is not None:
            results += self._test_predictions(window)
        if self.embedding is not None:
            results += tuple(self.embedding.test([r.raw_input for r in window.records]))
        return WindowReport(
            model=self.model, window_index=window.index, window_start=window.start,
            window_end=window.end, n_records=len(window.records), results=results,
            offsets=window.offsets, evaluated_at=time.time(),
        )
