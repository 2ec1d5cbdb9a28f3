"""Turns a closed window into a :class:`WindowReport` by running the model's components.

An evaluator is a list of :mod:`monitor.components` (built once per model: reference
state is precomputed in the detectors' constructors) and one loop: run every component
on the window, assemble the report. :class:`ModelEvaluator` evaluates a model's windows of
inference records, :class:`monitor.labels.LabelEvaluator` its windows of joined labels.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from detectors import DriftResult
from monitor.components import (
    Component,
    FeatureSummaries,
    FeatureTest,
    MatrixTest,
    default_detectors,
    feature_components,
)
from monitor.report import WindowReport
from monitor.settings import ModelSettings, TimeWindow
from monitor.windows import ClosedWindow

__all__ = ["ComponentEvaluator", "ModelEvaluator", "WindowReport", "default_detectors"]


class ComponentEvaluator:
    """Runs every component on a window and assembles the :class:`WindowReport`.

    A window with fewer than ``min_records`` records is not tested: every component
    reports ``insufficient_data`` for each of its names.
    """

    model: str
    stream = "features"
    min_records = 1
    stateful = False  # True: the components' state travels with each report

    @property
    def components(self) -> list[Component]:
        raise NotImplementedError

    @property
    def detector_names(self) -> list[str]:
        return [name for c in self.components for name in c.names]

    def state(self) -> dict[str, str]:
        """Detector name -> JSON state of the stateful components (stored per window)."""
        return {k: v for c in self.components for k, v in c.state().items()}

    def load_state(self, saved: Mapping[str, str]) -> None:
        for c in self.components:
            c.load_state(saved)

    def evaluate(self, window: ClosedWindow) -> WindowReport:
        n = len(window.records)
        results: list[DriftResult] = []
        for c in self.components:
            results.extend(c.test(window) if n >= self.min_records else c.insufficient(n))
        return WindowReport(
            model=self.model, window_index=window.index, window_start=window.start,
            window_end=window.end, n_records=n, results=tuple(results),
            offsets=window.offsets, evaluated_at=time.time(), stream=self.stream,
            state=self.state() if self.stateful else None)


class ModelEvaluator(ComponentEvaluator):
    """One model's feature, prediction and embedding components."""

    def __init__(self, model: ModelSettings, reference: Mapping[str, np.ndarray],
                 labelled: Mapping[str, np.ndarray] | None = None) -> None:
        """``labelled``: 'label' and 'prediction' columns for label-shift estimation
        (default: those of ``reference``)."""
        self.model = model.name
        self.n_reference = len(next(iter(reference.values()), ()))
        self.min_records = (model.window.min_records if isinstance(model.window, TimeWindow)
                            else 1)
        self._components = feature_components(model, reference, labelled)
        self.summaries = FeatureSummaries({f.name: f.type for f in model.features}, reference)
        # monitor.embedding_drift.EmbeddingDrift, a component too; attached by the factory
        # (after the reference state is loaded: its model is not part of that state).
        self.embedding: Any = None

    @property
    def components(self) -> list[Component]:
        out: list[Component] = list(self._components)
        if self.embedding is not None:
            out.append(self.embedding)
        return out

    def evaluate(self, window: ClosedWindow) -> WindowReport:
        report = super().evaluate(window)
        summaries = getattr(self, "summaries", None)
        if summaries is None or len(window.records) < self.min_records:
            return report
        return dataclasses.replace(report, summaries=summaries.summarize(window))

    @property
    def detectors(self) -> list[tuple[Any, tuple[str, ...]]]:
        """(library detector, feature names) of the ``detectors[]`` components."""
        return [(c.detector, c.features) for c in self._components
                if isinstance(c, (FeatureTest, MatrixTest))]

    def __getstate__(self) -> dict[str, Any]:
        # The saved reference state never includes the model (it has its own cache).
        return {**self.__dict__, "embedding": None}
