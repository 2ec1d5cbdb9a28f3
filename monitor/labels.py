"""Delayed labels: test the stream of joined (label, prediction) pairs.

The join itself is :mod:`monitor.label_join`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

import numpy as np

from detectors.label import LabelDriftDetector, PerformanceDriftDetector
from detectors.results import DriftResult, FeatureResult
from detectors.streaming import ADWIN, DDM, PageHinkley
from monitor.report import WindowReport
from monitor.settings import LabelSettings, StreamingDetectorSettings
from monitor.windows import ClosedWindow

log = logging.getLogger("driftline.labels")



_STREAMING = {"ddm": DDM, "adwin": ADWIN, "page_hinkley": PageHinkley}
StreamingDetector = DDM | ADWIN | PageHinkley


class LabelEvaluator:
    """Tests a model's windows of joined (label, prediction) pairs against its reference.

    Besides the window tests it feeds every joined record's error (1 wrong / 0 right for
    a classifier, the absolute residual for a regressor) to the configured streaming
    detectors. They start warmed up on the labelled reference (in a fixed shuffled
    order), so they compare production with it from the first window; their state after
    each window travels with the window's report into storage (see :meth:`state`) and
    is loaded back on restart (:meth:`load_state`), so a restart does not forget them.
    """

    def __init__(self, model: str, settings: LabelSettings, alpha: float,
                 reference: Mapping[str, np.ndarray]) -> None:
        self.model = model
        self.task = settings.task
        y_true = np.asarray(reference["label"], dtype=object if self.task ==
                            "classification" else np.float64)
        y_pred = np.asarray(reference["prediction"], dtype=y_true.dtype)
        self.performance = PerformanceDriftDetector(
            y_true, y_pred, task=settings.task, test=settings.test, alpha=alpha,
            min_samples=settings.min_samples)
        self.label_drift = (LabelDriftDetector(y_true, alpha=alpha)
                            if self.task == "classification" else None)
        self.n_reference = len(y_true)
        # Warm-up stream: the reference's errors in a fixed shuffled order, since a file
        # sorted by time or class would make its own order look like drift.
        errors = self._errors(y_true, y_pred)
        warm_up = errors[np.random.default_rng(0).permutation(len(errors))].tolist()
        self.streaming = [self._warmed(spec, warm_up) for spec in settings.streaming]
        self._warm_state = self.state()

    def _errors(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        if self.task == "classification":
            return (y_true != y_pred).astype(np.float64)
        return np.abs(y_true.astype(np.float64) - y_pred.astype(np.float64))

    @staticmethod
    def _warmed(spec: StreamingDetectorSettings, warm_up: list[float]) -> StreamingDetector:
        det: StreamingDetector = _STREAMING[spec.kind](**spec.params)
        for x in warm_up:
            det.update(x)
        return det

    @property
    def detector_names(self) -> list[str]:
        names = [self.performance.name]
        if self.label_drift is not None:
            names.append(self.label_drift.name)
        return names + [d.name for d in self.streaming]

    def state(self) -> dict[str, str]:
        """Detector name -> JSON of its streaming state (stored with each window)."""
        return {d.name: json.dumps(d.get_state()) for d in self.streaming}

    def load_state(self, saved: Mapping[str, str]) -> None:
        """Resume the streaming detectors from :meth:`state` (stored); missing: warm state.

        A state that does not fit (another driftline version's layout) is logged and the
        detector starts from its reference warm-up, as on a first start.
        """
        for det in self.streaming:
            raw = saved.get(det.name, self._warm_state[det.name])
            try:
                det.set_state(json.loads(raw))
            except ValueError as exc:
                log.warning("model %s: stored %s state not usable (%s); starting from the "
                            "reference", self.model, det.name, exc)
                det.set_state(json.loads(self._warm_state[det.name]))

    def _stream(self, det: StreamingDetector, errors: list[float], n: int) -> DriftResult:
        detections = sum(det.update(x) for x in errors)
        estimate = det.error_rate if isinstance(det, DDM) else det.estimation
        feature = "error" if self.task == "classification" else "abs_residual"
        threshold = (det.drift_threshold if isinstance(det, DDM)
                     else det.delta if isinstance(det, ADWIN) else det.threshold)
        drifted = detections > 0
        return DriftResult(
            detector=det.name, statistic=estimate, p_value=None, threshold=threshold,
            drifted=drifted, n_reference=self.n_reference, n_current=n, correction="none",
            features=(FeatureResult(feature, estimate, None, None, drifted, self.n_reference,
                                    n),))

    def evaluate(self, window: ClosedWindow) -> WindowReport:
        dtype = object if self.task == "classification" else np.float64
        y_true = np.asarray([r.y_true for r in window.records], dtype=dtype)
        y_pred = np.asarray([r.y_pred for r in window.records], dtype=dtype)
        results: list[DriftResult] = [self.performance.test(y_true, y_pred)]
        if self.label_drift is not None:
            results.append(self.label_drift.test(y_true))
        if self.streaming:
            errors = self._errors(y_true, y_pred).tolist()
            results.extend(self._stream(d, errors, len(errors)) for d in self.streaming)
        return WindowReport(
            model=self.model, window_index=window.index, window_start=window.start,
            window_end=window.end, n_records=len(window.records), results=tuple(results),
            offsets=window.offsets, evaluated_at=time.time(), stream="labels",
            state=self.state())
