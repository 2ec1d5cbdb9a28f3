"""The pieces an evaluator is made of: one calling convention for every kind of test.

An evaluator (:class:`monitor.evaluate.ModelEvaluator`, :class:`monitor.labels.LabelEvaluator`)
holds a list of :class:`Component` objects and, per closed window, runs every one and
assembles their results into a :class:`~monitor.report.WindowReport`. A component wraps
one or a few library detectors and knows how to read what they test from a window's
records (feature columns, a standardised feature matrix, predictions, joined labels,
per-record errors, embedded inputs): what it reads is the registry's ``input`` of its
kind (:data:`detectors.registry.SPECS`), and :func:`feature_components` picks the
component class from that table, never from a detector's name.

Components whose detectors carry state from window to window (the streaming detectors)
return it from :meth:`Component.state` and take it back in :meth:`Component.load_state`;
the others inherit the no-op versions of :class:`BaseComponent`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from detectors import DriftResult, FeatureResult
from detectors.bbse import BBSE
from detectors.label import LabelDriftDetector, PerformanceDriftDetector
from detectors.registry import MATRIX, PER_FEATURE, SPECS, choose
from detectors.streaming import ADWIN, DDM, PageHinkley
from monitor.schema import FeatureKind
from monitor.settings import (
    CountWindow,
    DetectorSettings,
    ModelSettings,
    StreamingDetectorSettings,
)
from monitor.windows import ClosedWindow

__all__ = [
    "BaseComponent",
    "Component",
    "FeatureSummaries",
    "FeatureTest",
    "LabelDriftTest",
    "LabelShiftTest",
    "MatrixTest",
    "PerformanceTest",
    "PredictionTest",
    "StreamingTest",
    "default_detectors",
    "feature_components",
    "insufficient_result",
    "label_components",
]

log = logging.getLogger("driftline.components")


@runtime_checkable
class Component(Protocol):
    """One or a few detectors over one view of a window."""

    @property
    def names(self) -> list[str]:
        """The detector names its results carry, in the order :meth:`test` returns them."""
        ...

    def test(self, window: ClosedWindow) -> list[DriftResult]:
        """One result per name of :attr:`names`."""
        ...

    def insufficient(self, n_current: int) -> list[DriftResult]:
        """The results of a window too small to test (``insufficient_data``), per name."""
        ...

    def state(self) -> dict[str, str]:
        """Detector name -> JSON state to store with the window (empty: stateless)."""
        ...

    def load_state(self, saved: Mapping[str, str]) -> None:
        """Resume from :meth:`state` as stored (missing names: the initial state)."""
        ...


def insufficient_result(name: str, features: Sequence[str], n_reference: Sequence[int],
                        n_current: int, threshold: float, correction: str = "none"
                        ) -> DriftResult:
    """What a detector reports for a window it did not test: nothing drifted, no p-value."""
    per_feature = tuple(FeatureResult(f, math.nan, None, None, False, int(n), n_current)
                        for f, n in zip(features, n_reference, strict=True))
    return DriftResult(detector=name, statistic=math.nan, p_value=None, threshold=threshold,
                       drifted=False, n_reference=max(n_reference, default=0),
                       n_current=n_current, correction=correction, features=per_feature,
                       insufficient_data=True)


class BaseComponent:
    """Defaults: stateless; the insufficient-data results from ``_untested``."""

    # name -> (features, reference sizes, threshold, correction) of its untested result
    _untested: dict[str, tuple[tuple[str, ...], tuple[int, ...], float, str]]

    @property
    def names(self) -> list[str]:
        return list(self._untested)

    def test(self, window: ClosedWindow) -> list[DriftResult]:
        raise NotImplementedError

    def insufficient(self, n_current: int) -> list[DriftResult]:
        return [insufficient_result(name, features, sizes, n_current, threshold, correction)
                for name, (features, sizes, threshold, correction) in self._untested.items()]

    def state(self) -> dict[str, str]:
        return {}

    def load_state(self, saved: Mapping[str, str]) -> None:
        """Nothing to resume: the window is compared with the reference alone."""


def _threshold(det: Any) -> tuple[float, str]:
    """A detector's threshold (``alpha`` for tests) and multiple-testing correction."""
    if hasattr(det, "threshold"):  # a distance (its alpha is its calibration's level)
        return float(det.threshold), "none"
    return float(det.alpha), str(getattr(det, "correction", "none"))


# --- the features' window: columns or a matrix --------------------------------------------------

class FeatureTest(BaseComponent):
    """A per-feature detector (registry input ``per-feature``) over the window's columns."""

    def __init__(self, kind: str, detector: Any, features: tuple[str, ...],
                 types: Mapping[str, FeatureKind], n_reference: Sequence[int]) -> None:
        self.detector = detector
        self.features = features
        self._numeric = {n: types[n] == "numeric" for n in features}
        self._untested = {kind: (features, tuple(n_reference), *_threshold(detector))}

    def columns(self, window: ClosedWindow) -> dict[str, np.ndarray]:
        return window.feature_columns(self.features, self._numeric)

    def test(self, window: ClosedWindow) -> list[DriftResult]:
        cols = window.columns
        if cols is not None and hasattr(self.detector, "test_codes"):
            # categorical: the window's integer codes, counted with one bincount each
            coded = {n: cols.coded(n) for n in self.features}
            return [self.detector.test_codes({n: c for n, (c, _) in coded.items()},
                                             {n: k for n, (_, k) in coded.items()})]
        return [self.detector.test(self.columns(window))]


class MatrixTest(BaseComponent):
    """A multivariate detector (registry input ``matrix``) over the standardised features.

    Features on different scales would let the widest dominate the kernel or the
    classifier: every window is standardised with the reference's mean and spread.
    """

    def __init__(self, kind: str, detector: Any, features: tuple[str, ...],
                 mean: np.ndarray, std: np.ndarray, n_reference: int) -> None:
        self.detector = detector
        self.features = features
        self.mean, self.std = mean, std
        self._untested = {kind: (("features",), (n_reference,), *_threshold(detector))}

    @staticmethod
    def scale(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std = reference.mean(axis=0), reference.std(axis=0)
        return mean, np.where(std > 0, std, 1.0)

    def matrix(self, window: ClosedWindow) -> np.ndarray:
        if window.columns is None:
            x = np.asarray([[r.features[n] for n in self.features] for r in window.records],
                           dtype=np.float64).reshape(window.n, len(self.features))
        else:
            numeric = dict.fromkeys(self.features, True)
            cols = window.feature_columns(self.features, numeric)
            x = np.column_stack([cols[n] for n in self.features]).reshape(
                window.n, len(self.features))
        return (x - self.mean) / self.std

    def test(self, window: ClosedWindow) -> list[DriftResult]:
        return [self.detector.test(self.matrix(window))]


def default_detectors(model: ModelSettings,
                      reference: Mapping[str, np.ndarray]) -> tuple[DetectorSettings, ...]:
    """One detector per kind that :func:`detectors.registry.choose` picks for a feature."""
    chosen: dict[str, list[str]] = {}
    for f in model.features:
        chosen.setdefault(choose(f.type, len(reference[f.name])), []).append(f.name)
    return tuple(DetectorSettings(kind=k, features=tuple(v)) for k, v in chosen.items())


def _params(spec: DetectorSettings, model: ModelSettings) -> dict[str, Any]:
    """The constructor parameters of ``spec``'s kind: its registry keys but ``features``,
    unset ones left out, ``alpha``/``correction`` defaulting to the model's."""
    params: dict[str, Any] = {}
    for key in SPECS[spec.kind].keys:
        if key == "features":
            continue
        value = getattr(spec, key)
        if value is None:
            value = getattr(model, key, None)
        if value is not None:
            params[key] = value
    return params


def _per_feature(spec: DetectorSettings, model: ModelSettings,
                 reference: Mapping[str, np.ndarray]) -> BaseComponent:
    info = SPECS[spec.kind]
    types = {f.name: f.type for f in model.features}
    names = spec.features or tuple(n for n, k in types.items() if k in info.feature_types)
    params = _params(spec, model)
    if not info.has_p_value and isinstance(model.window, CountWindow):
        params["window_sizes"] = (model.window.size,)  # the null, once, in the reference state
    det = info.cls({n: reference[n] for n in names}, **params)
    return FeatureTest(spec.kind, det, names, types, [len(reference[n]) for n in names])


def _matrix(spec: DetectorSettings, model: ModelSettings,
            reference: Mapping[str, np.ndarray]) -> BaseComponent:
    info = SPECS[spec.kind]
    names = spec.features or tuple(f.name for f in model.features
                                   if f.type in info.feature_types)
    ref = np.column_stack([reference[n] for n in names])
    mean, std = MatrixTest.scale(ref)
    det = info.cls((ref - mean) / std, feature="features", **_params(spec, model))
    return MatrixTest(spec.kind, det, names, mean, std, ref.shape[0])


#: Registry input -> how a ``detectors[]`` entry of that input becomes a component.
_BUILDERS: dict[str, Callable[[DetectorSettings, ModelSettings, Mapping[str, np.ndarray]],
                              BaseComponent]] = {PER_FEATURE: _per_feature, MATRIX: _matrix}


# --- the model's outputs -----------------------------------------------------------------------

def _classes(window: ClosedWindow) -> np.ndarray:
    return np.asarray([json.dumps(p) if isinstance(p, bool) else str(p)
                       for p in window.predictions()], dtype=object)


def _values(window: ClosedWindow) -> np.ndarray:
    return np.asarray([float(p) for p in window.predictions()])


class PredictionTest(BaseComponent):
    """Drift of the predictions: ``prediction_chi2`` over classes, ``prediction_ks`` over
    a regressor's values (the registry's feature type of the kind says which)."""

    def __init__(self, kind: str, reference: np.ndarray, alpha: float) -> None:
        info = SPECS[kind]
        self.kind = kind
        self.numeric = "numeric" in info.feature_types
        if self.numeric:
            self.detector = info.cls({"prediction": np.asarray(reference, dtype=np.float64)},
                                     alpha=alpha, correction="none")
        else:
            self.detector = info.cls(np.asarray(reference, dtype=object), alpha=alpha)
        self._untested = {kind: (("prediction",), (len(reference),), alpha, "none")}

    def test(self, window: ClosedWindow) -> list[DriftResult]:
        if self.numeric:
            result = self.detector.test({"prediction": _values(window)})
        else:
            result = self.detector.test(_classes(window))
        return [dataclasses.replace(result, detector=self.kind)]


class LabelShiftTest(BaseComponent):
    """Black Box Shift Estimation of the class weights from the predicted classes."""

    def __init__(self, detector: BBSE, alpha: float, n_reference: int) -> None:
        self.detector = detector
        self._untested = {detector.name: (("prediction",), (n_reference,), alpha, "none")}

    def test(self, window: ClosedWindow) -> list[DriftResult]:
        return [self.detector.test(_classes(window))]


def feature_components(model: ModelSettings, reference: Mapping[str, np.ndarray],
                       labelled: Mapping[str, np.ndarray] | None = None
                       ) -> list[BaseComponent]:
    """The components of ``model``'s feature windows, in report order: its detectors,
    then prediction drift and label shift (the embedding is attached by the factory)."""
    components = [_BUILDERS[SPECS[spec.kind].input](spec, model, reference)
                  for spec in model.detectors or default_detectors(model, reference)]
    pd = model.prediction_drift
    if pd is None:
        return components
    if "prediction" not in reference:
        raise ValueError(f"model '{model.name}': prediction_drift needs a 'prediction' "
                         "column in the reference data")
    kind = "prediction_ks" if pd.task == "regression" else "prediction_chi2"
    components.append(PredictionTest(kind, reference["prediction"], model.alpha))
    if pd.label_shift:
        source = reference if labelled is None else labelled
        if "label" not in source:
            raise ValueError(f"model '{model.name}': prediction_drift.label_shift needs a "
                             "'label' column in the labelled reference data")
        bbse = SPECS["label_shift"].cls(np.asarray(source["label"], dtype=object),
                                        np.asarray(source["prediction"], dtype=object),
                                        alpha=model.alpha, confidence=pd.confidence)
        components.append(LabelShiftTest(bbse, model.alpha, len(source["label"])))
    return components


# --- joined labels -------------------------------------------------------------------------------

def _pairs(window: ClosedWindow, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray([r.y_true for r in window.records], dtype=dtype),
            np.asarray([r.y_pred for r in window.records], dtype=dtype))


def errors(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-record errors: 1 wrong / 0 right (classification), the absolute residual."""
    if task == "classification":
        return (y_true != y_pred).astype(np.float64)
    return np.abs(y_true.astype(np.float64) - y_pred.astype(np.float64))


class PerformanceTest(BaseComponent):
    """The window's accuracy (error rate) or residuals against the labelled reference."""

    def __init__(self, detector: PerformanceDriftDetector, dtype: Any, alpha: float,
                 n_reference: int) -> None:
        self.detector, self.dtype = detector, dtype
        self._untested = {detector.name: (("performance",), (n_reference,), alpha, "none")}

    def test(self, window: ClosedWindow) -> list[DriftResult]:
        return [self.detector.test(*_pairs(window, self.dtype))]


class LabelDriftTest(BaseComponent):
    """The distribution of the true labels against the reference's (classification)."""

    def __init__(self, detector: LabelDriftDetector, alpha: float, n_reference: int) -> None:
        self.detector = detector
        self._untested = {detector.name: (("label",), (n_reference,), alpha, "none")}

    def test(self, window: ClosedWindow) -> list[DriftResult]:
        return [self.detector.test(_pairs(window, object)[0])]


StreamingDetector = DDM | ADWIN | PageHinkley


class StreamingTest(BaseComponent):
    """A streaming detector fed every joined record's error, in order.

    It starts warmed up on the labelled reference's errors; its state after each window
    travels with the window's report (:meth:`state`) and is loaded back on restart.
    """

    def __init__(self, model: str, detector: StreamingDetector, task: str, dtype: Any,
                 n_reference: int) -> None:
        self.model, self.detector, self.task, self.dtype = model, detector, task, dtype
        self.n_reference = n_reference
        self.feature = "error" if task == "classification" else "abs_residual"
        self._warm_state = json.dumps(detector.get_state())
        self._untested = {detector.name: ((self.feature,), (n_reference,), self._threshold(),
                                          "none")}

    def _threshold(self) -> float:
        det = self.detector
        return float(det.drift_threshold if isinstance(det, DDM)
                     else det.delta if isinstance(det, ADWIN) else det.threshold)

    def test(self, window: ClosedWindow) -> list[DriftResult]:
        det, n = self.detector, window.n
        detections = sum(det.update(x) for x in errors(self.task, *_pairs(window, self.dtype))
                         .tolist())
        estimate = det.error_rate if isinstance(det, DDM) else det.estimation
        drifted = detections > 0
        return [DriftResult(
            detector=det.name, statistic=estimate, p_value=None, threshold=self._threshold(),
            drifted=drifted, n_reference=self.n_reference, n_current=n, correction="none",
            features=(FeatureResult(self.feature, estimate, None, None, drifted,
                                    self.n_reference, n),))]

    def state(self) -> dict[str, str]:
        return {self.detector.name: json.dumps(self.detector.get_state())}

    def load_state(self, saved: Mapping[str, str]) -> None:
        """Resume from the stored state; missing: the warm state. A state that does not
        fit (another driftline version's layout) is logged and the detector starts from
        its reference warm-up, as on a first start."""
        det = self.detector
        try:
            det.set_state(json.loads(saved.get(det.name, self._warm_state)))
        except ValueError as exc:
            log.warning("model %s: stored %s state not usable (%s); starting from the "
                        "reference", self.model, det.name, exc)
            det.set_state(json.loads(self._warm_state))


def _warmed(spec: StreamingDetectorSettings, warm_up: list[float]) -> StreamingDetector:
    det: StreamingDetector = SPECS[spec.kind].cls(**spec.params)
    for x in warm_up:
        det.update(x)
    return det


def label_components(model: str, task: str, test: str | None, min_samples: int,
                     streaming: Sequence[StreamingDetectorSettings], alpha: float,
                     reference: Mapping[str, np.ndarray]) -> list[BaseComponent]:
    """The components of a model's label windows: performance, label drift
    (classification) and the streaming detectors."""
    dtype: Any = object if task == "classification" else np.float64
    y_true = np.asarray(reference["label"], dtype=dtype)
    y_pred = np.asarray(reference["prediction"], dtype=y_true.dtype)
    n = len(y_true)
    components: list[BaseComponent] = [PerformanceTest(
        SPECS["performance"].cls(y_true, y_pred, task=task, test=test, alpha=alpha,
                                 min_samples=min_samples), dtype, alpha, n)]
    if task == "classification":
        components.append(LabelDriftTest(SPECS["label_chi2"].cls(y_true, alpha=alpha), alpha, n))
    # Warm-up stream: the reference's errors in a fixed shuffled order, since a file
    # sorted by time or class would make its own order look like drift.
    errs = errors(task, y_true, y_pred)
    warm_up = errs[np.random.default_rng(0).permutation(len(errs))].tolist()
    components.extend(StreamingTest(model, _warmed(s, warm_up), task, dtype, n)
                      for s in streaming)
    return components


# --- what a report draws: a bounded per-window summary of each feature --------------------------

#: Equal-width bins over the reference's range (numeric features), plus one open bin on
#: each side for current values outside it.
SUMMARY_BINS = 20
#: Categories kept per categorical feature (the most frequent on either side); the rest
#: are counted together as "(other)".
SUMMARY_TOP_K = 20
_MAX_CATEGORY_CHARS = 64


def _sig(x: float) -> float:
    """Six significant digits: enough for a picture, and keeps the stored JSON small."""
    return float(f"{x:.6g}") if math.isfinite(x) else 0.0


def _category(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, bool) else str(v)
    return text[:_MAX_CATEGORY_CHARS]


class FeatureSummaries:
    """Per-window summaries of a model's features, for reports: bin counts (numeric) or
    top-k category counts (categorical) of the reference and of the window.

    The reference side is computed once here; a window's side costs one pass over its
    column. Each summary is bounded: at most ``SUMMARY_BINS + 2`` numeric bins, at most
    ``SUMMARY_TOP_K + 1`` categories of at most 64 characters.
    """

    def __init__(self, types: Mapping[str, FeatureKind],
                 reference: Mapping[str, np.ndarray]) -> None:
        self._numeric: dict[str, tuple[np.ndarray, list[int], float, float]] = {}
        self._categorical: dict[str, dict[str, int]] = {}
        for name, kind in types.items():
            if name not in reference:
                continue
            if kind == "numeric":
                ref = np.asarray(reference[name], dtype=np.float64)
                ref = ref[np.isfinite(ref)]
                if ref.size == 0:
                    continue
                lo, hi = float(ref.min()), float(ref.max())
                if hi <= lo:
                    lo, hi = lo - 0.5, hi + 0.5
                edges = np.linspace(lo, hi, SUMMARY_BINS + 1)
                counts, _ = np.histogram(ref, bins=edges)
                with np.errstate(over="ignore", invalid="ignore"):
                    stats = float(ref.mean()), float(ref.std())
                self._numeric[name] = (edges, [int(c) for c in counts], *stats)
            else:
                counts_ref: dict[str, int] = {}
                for v in reference[name].tolist():
                    key = _category(v)
                    counts_ref[key] = counts_ref.get(key, 0) + 1
                self._categorical[name] = counts_ref

    def summarize(self, window: ClosedWindow) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if not window.n:
            return out
        for name, (edges, ref_counts, ref_mean, ref_std) in self._numeric.items():
            cur = np.asarray(window.feature_columns((name,), {name: True})[name],
                             dtype=np.float64)
            cur = cur[np.isfinite(cur)]
            counts, _ = np.histogram(cur, bins=edges)
            with np.errstate(over="ignore", invalid="ignore"):  # hostile 1e308s: no picture
                mean = float(cur.mean()) if cur.size else math.nan
                std = float(cur.std()) if cur.size else math.nan
            out[name] = {
                "kind": "numeric", "edges": [_sig(e) for e in edges],
                "reference": ref_counts, "current": [int(c) for c in counts],
                "current_below": int((cur < edges[0]).sum()),
                "current_above": int((cur > edges[-1]).sum()),
                "reference_mean": _sig(ref_mean), "reference_std": _sig(ref_std),
                "current_mean": _sig(mean) if math.isfinite(mean) else None,
                "current_std": _sig(std) if math.isfinite(std) else None,
            }
        for name, ref in self._categorical.items():
            cur_counts: dict[str, int] = {}
            for value, count in window.category_counts(name).items():
                key = _category(value)
                cur_counts[key] = cur_counts.get(key, 0) + count
            n_ref, n_cur = max(sum(ref.values()), 1), max(sum(cur_counts.values()), 1)
            share = {k: max(ref.get(k, 0) / n_ref, cur_counts.get(k, 0) / n_cur)
                     for k in {*ref, *cur_counts}}
            top = sorted(share, key=lambda k: (-share[k], k))[:SUMMARY_TOP_K]
            kept = set(top)
            out[name] = {
                "kind": "categorical", "categories": top,
                "reference": [ref.get(k, 0) for k in top],
                "current": [cur_counts.get(k, 0) for k in top],
                "reference_other": sum(v for k, v in ref.items() if k not in kept),
                "current_other": sum(v for k, v in cur_counts.items() if k not in kept),
            }
        return out
