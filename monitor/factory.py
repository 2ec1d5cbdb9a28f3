"""Builds every configured model's evaluators, windows and decoder schema from settings.

``driftline run`` and ``driftline check-config`` both call :func:`build_models`, so the check
builds exactly what the daemon would (references, labelled references, embedding models),
minus the connections.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectors.bbse import SingularConfusionMatrixError
from monitor.columns import ColumnLayout
from monitor.errors import ConfigError
from monitor.evaluate import ModelEvaluator, verdict_policy
from monitor.labels import LabelEvaluator
from monitor.metrics import Metrics
from monitor.pipeline import ModelState, StreamState, Windows
from monitor.reference import load_reference
from monitor.refstate import load_or_build
from monitor.schema import FeatureKind, ModelSchema
from monitor.settings import CountWindow, ModelSettings, Settings
from monitor.windows import CountWindows, TimeWindows

log = logging.getLogger("driftline.startup")


@dataclass
class BuiltModels:
    models: dict[str, ModelState]
    schemas: dict[str, ModelSchema]


def build_models(settings: Settings, metrics: Metrics) -> BuiltModels:
    """Every model's state and decoder schema; raises ConfigError/ReferenceDataError."""
    models: dict[str, ModelState] = {}
    schemas: dict[str, ModelSchema] = {}
    cache = settings.storage.reference_cache_dir
    cache_dir = Path(cache).expanduser() if cache else None
    for m in settings.models:
        models[m.name] = build_model(m, metrics, cache_dir)
        schemas[m.name] = model_schema(m)
    return BuiltModels(models, schemas)


def build_model(m: ModelSettings, metrics: Metrics, cache_dir: Path | None) -> ModelState:
    """One model's evaluators and windows (also how :mod:`monitor.champion` rebuilds them
    for a newly promoted version, from that version's settings)."""
    kinds = {f.name: f.type for f in m.features}
    columns: dict[str, FeatureKind] = dict(kinds)
    if m.prediction_drift is not None:  # the reference's predictions come along
        columns["prediction"] = ("numeric" if m.prediction_drift.task == "regression"
                                 else "categorical")
        if m.prediction_drift.label_shift and m.labels is None:
            columns["label"] = "categorical"  # BBSE's confusion matrix
    t0 = time.perf_counter()
    log.info("model %s: preparing the reference state (%s)", m.name, m.reference.path,
             extra={"event": "startup", "model": m.name, "step": "reference"})
    evaluator = load_or_build(
        m, lambda m=m, columns=columns: _evaluator(m, columns), cache_dir)  # type: ignore[misc]
    log.info("model %s: reference ready (%s rows, %d detectors) in %.1f s", m.name,
             getattr(evaluator, "n_reference", "?"), len(evaluator.detector_names),
             time.perf_counter() - t0,
             extra={"event": "startup", "model": m.name, "step": "reference_ready",
                    "seconds": round(time.perf_counter() - t0, 3)})
    if m.embedding is not None:
        t0 = time.perf_counter()
        log.info("model %s: loading the embedding model and reference embeddings (%s); "
                 "this can take minutes the first time", m.name, m.embedding.model.path,
                 extra={"event": "startup", "model": m.name, "step": "embeddings"})
        evaluator.embedding = _embedding(m, metrics, cache_dir)
        log.info("model %s: embeddings ready in %.1f s", m.name, time.perf_counter() - t0,
                 extra={"event": "startup", "model": m.name, "step": "embeddings_ready",
                        "seconds": round(time.perf_counter() - t0, 3)})
    new_windows = _windows_factory(m, _reference_categories(evaluator))
    return ModelState(StreamState(evaluator, new_windows(None), new_windows),
                      _label_stream(m) if m.labels is not None else None)


def model_schema(m: ModelSettings) -> ModelSchema:
    """What the decoder checks for ``m``'s records, including its embedding inputs."""
    kinds: dict[str, FeatureKind] = {f.name: f.type for f in m.features}
    numeric_prediction = (m.prediction_drift is not None
                          and m.prediction_drift.task == "regression")
    if m.embedding is None:
        return ModelSchema(kinds, numeric_prediction=numeric_prediction)
    em = m.embedding.model
    if em.kind in ("sentence-transformers", "transformers"):
        return ModelSchema(kinds, needs_input=True, numeric_prediction=numeric_prediction,
                           input_kind="text")
    return ModelSchema(kinds, needs_input=True, numeric_prediction=numeric_prediction,
                       input_kind="array", input_size=math.prod(em.shape or ()),
                       input_dtype=em.dtype)


def _evaluator(m: ModelSettings, columns: dict[str, FeatureKind]) -> ModelEvaluator:
    reference = load_reference(m.reference.path, columns, m.reference.format)
    labelled = None
    if m.prediction_drift is not None and m.prediction_drift.label_shift and m.labels:
        # Label shift is estimated from the labelled reference when there is one.
        labelled = load_reference(m.labels.reference.path,
                                  {"label": "categorical", "prediction": "categorical"},
                                  m.labels.reference.format)
    try:
        return ModelEvaluator(m, reference, labelled)
    except SingularConfusionMatrixError as exc:
        raise ConfigError(f"model '{m.name}', prediction_drift.label_shift: {exc}") from None


def _embedding(m: ModelSettings, metrics: Metrics, cache_dir: Path | None) -> Any:
    from embeddings.errors import EmbeddingError
    from monitor.embedding_drift import EmbeddingDrift

    assert m.embedding is not None

    def timed(n: int, seconds: float) -> None:  # the embeddings package has no metrics
        metrics.embedded_records.labels(model=m.name).inc(n)
        metrics.embedding_duration.labels(model=m.name).observe(seconds)

    try:
        return EmbeddingDrift(m.embedding, m.alpha, cache_dir, on_embedded=timed)
    except (EmbeddingError, OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"model '{m.name}', embedding: {exc}") from exc


def _label_stream(m: ModelSettings) -> StreamState:
    assert m.labels is not None
    kind: FeatureKind = "categorical" if m.labels.task == "classification" else "numeric"
    reference = load_reference(m.labels.reference.path, {"label": kind, "prediction": kind},
                               m.labels.reference.format)
    size = m.labels.window_size

    def make(last_stored: int | None) -> Windows:
        return CountWindows(m.name, size, next_index=0 if last_stored is None
                            else last_stored + 1)

    evaluator = LabelEvaluator(m.name, m.labels, m.alpha, reference)
    evaluator.verdict = verdict_policy(m, None)
    return StreamState(evaluator, make(None), make)


def _reference_categories(evaluator: Any) -> dict[str, list[str]]:
    """Feature -> the reference's categories, from the detectors that count them."""
    out: dict[str, list[str]] = {}
    for detector, features in getattr(evaluator, "detectors", ()):
        categories = getattr(detector, "categories", None)
        if callable(categories):
            for f in features:
                out.setdefault(f, [str(c) for c in categories(f)])
    return out


def _windows_factory(m: ModelSettings, categories: dict[str, list[str]]
                     ) -> Callable[[int | None], Windows]:
    window = m.window
    # one layout, hence one set of category codes, for all the model's windows
    layout = ColumnLayout.of({f.name: f.type for f in m.features},
                             keep_inputs=m.embedding is not None, categories=categories)

    def make(last_stored: int | None) -> Windows:
        if isinstance(window, CountWindow):
            return CountWindows(m.name, window.size,
                                next_index=0 if last_stored is None else last_stored + 1,
                                layout=layout)
        return TimeWindows(m.name, window.seconds, window.allowed_lateness_seconds,
                           last_closed_index=last_stored, layout=layout)

    return make
