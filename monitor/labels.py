"""Delayed labels: join them to stored predictions and test the joined stream.

Predictions of models with ``labels`` configured are written to the predictions table
with the next flush (before their offsets are committed), so a join never depends on
process memory: a label that arrives a day later, after restarts, still finds its
prediction. Labels are matched by request id, in one lookup per batch:

* matched within ``horizon_seconds`` of the prediction: ``joined``, into the model's label
  windows (count windows of joined records, tested by :class:`LabelEvaluator`);
* matched, but more than the horizon after the prediction: ``late``, counted, not used;
* not matched: the label waits (bounded by ``max_waiting`` and the horizon, in event time)
  for its prediction, which may still be on its way; then ``orphan``, counted.

Waiting labels hold back their partition's commit, so a restart re-reads them.
Stored predictions older than the horizon are pruned.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from detectors.label import LabelDriftDetector, PerformanceDriftDetector
from detectors.results import DriftResult, FeatureResult
from detectors.streaming import ADWIN, DDM, PageHinkley
from monitor.evaluate import WindowReport
from monitor.schema import LabelRecord, Scalar
from monitor.settings import LabelSettings, StreamingDetectorSettings
from monitor.windows import ClosedWindow, TopicPartition

log = logging.getLogger("driftline.labels")



@dataclass(frozen=True, slots=True)
class Joined:
    model: str
    request_id: str
    y_true: float | str
    y_pred: float | str
    timestamp: float  # the label's event time


class PredictionStore(Protocol):
    def write_predictions(self, rows: list[tuple[str, str, Any, float]]) -> None: ...

    def flush_predictions(self) -> None: ...

    def lookup_predictions(self, keys: list[str]) -> dict[str, tuple[str, Any, float]]: ...

    def prune_predictions(self, before: float) -> int: ...


def as_target(value: Scalar, task: str) -> float | str:
    """A prediction or label as the detectors compare it (class string or float)."""
    if task == "regression":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"regression targets must be numbers, got {value!r}")
        return float(value)
    return json.dumps(value) if isinstance(value, bool) else str(value)


class LabelJoin:
    """Joins label records to stored predictions; see the module docstring."""

    def __init__(self, store: PredictionStore, settings: Mapping[str, LabelSettings]) -> None:
        self.store = store
        self.settings = dict(settings)
        self.horizon = max((s.horizon_seconds for s in settings.values()), default=0.0)
        self.max_waiting = sum(s.max_waiting for s in settings.values())
        self._unflushed: dict[str, tuple[str, Any, float]] = {}
        self._waiting: OrderedDict[str, tuple[LabelRecord, TopicPartition, int]] = OrderedDict()
        self._watermark = -math.inf
        self.outcomes: Counter[str] = Counter()
        self._last_prune = 0.0

    def add_prediction(self, model: str, request_id: str, prediction: Scalar,
                       timestamp: float) -> None:
        self._unflushed[request_id] = (model, prediction, timestamp)
        self._watermark = max(self._watermark, timestamp)

    def add_label(self, label: LabelRecord, tp: TopicPartition, offset: int) -> None:
        self._waiting[label.request_id] = (label, tp, offset)
        self._watermark = max(self._watermark, label.timestamp)

    def resolve(self) -> list[tuple[Joined, TopicPartition, int]]:
        """Match waiting labels; returns the joined ones with their label's coordinates."""
        if not self._waiting:
            return []
        missing = [rid for rid in self._waiting if rid not in self._unflushed]
        found = dict(self.store.lookup_predictions(missing)) if missing else {}
        found.update({rid: self._unflushed[rid] for rid in self._waiting
                      if rid in self._unflushed})
        joined: list[tuple[Joined, TopicPartition, int]] = []
        for rid in list(self._waiting):
            if rid not in found:
                continue
            label, tp, offset = self._waiting.pop(rid)
            model, prediction, ts = found[rid]
            cfg = self.settings.get(model)
            if cfg is None:
                continue  # a model whose labels are no longer configured
            if label.timestamp - ts > cfg.horizon_seconds:
                self.outcomes["late"] += 1
                continue
            try:
                pair = Joined(model, rid, as_target(label.label, cfg.task),
                              as_target(prediction, cfg.task), label.timestamp)
            except ValueError as exc:
                self.outcomes["invalid"] += 1
                log.warning("label at %s/%d/%d not usable: %s", *tp, offset, exc)
                continue
            joined.append((pair, tp, offset))
        self._expire()
        return joined

    def _expire(self) -> None:
        # Labels wait for their prediction at most the horizon (in event time) and only
        # up to max_waiting of them: then they are orphans, counted, not kept.
        cutoff = self._watermark - self.horizon
        while self._waiting:
            rid, (label, _tp, _off) = next(iter(self._waiting.items()))
            if label.timestamp >= cutoff and len(self._waiting) <= self.max_waiting:
                break
            del self._waiting[rid]
            self.outcomes["orphan"] += 1

    def flush(self) -> None:
        """Store this batch's predictions; raises SinkError (the pipeline retries)."""
        if self._unflushed:
            self.store.write_predictions(
                [(m, rid, p, ts) for rid, (m, p, ts) in self._unflushed.items()])
            self.store.flush_predictions()
            self._unflushed.clear()
        now = time.monotonic()
        if math.isfinite(self._watermark) and now - self._last_prune > 60:
            self.store.prune_predictions(self._watermark - 2 * self.horizon)
            self._last_prune = now

    def held_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the earliest waiting label: commits must stay below it."""
        out: dict[TopicPartition, int] = {}
        for _label, tp, offset in self._waiting.values():
            out[tp] = min(out.get(tp, offset), offset)
        return out

    @property
    def waiting(self) -> int:
        return len(self._waiting)


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
