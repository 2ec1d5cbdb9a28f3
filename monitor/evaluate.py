"""Turns a closed window into a :class:`WindowReport` by running the model's components.

An evaluator is a list of :mod:`monitor.components` (built once per model: reference
state is precomputed in the detectors' constructors) and one loop: run every component
on the window, assemble the report. :class:`ModelEvaluator` evaluates a model's windows of
inference records, :class:`monitor.labels.LabelEvaluator` its windows of joined labels.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from detectors import DriftResult, FeatureResult
from detectors.alarms import MODEL, Debounce, debounce, model_verdict
from monitor.components import (
    Component,
    FeatureSummaries,
    FeatureTest,
    MatrixTest,
    default_detectors,
    feature_components,
)
from monitor.report import WindowReport
from monitor.settings import FalseAlarmSettings, ModelSettings, TimeWindow
from monitor.windows import ClosedWindow

__all__ = ["ComponentEvaluator", "ModelEvaluator", "VerdictPolicy", "WindowReport",
           "default_detectors"]

log = logging.getLogger("driftline.evaluate")

#: Windows per day assumed for ``false_alarms.every_days`` until two count windows have
#: closed (one a minute: a high rate, so a long rule, i.e. few alarms, until measured).
ASSUMED_WINDOWS_PER_DAY = 1440.0
_RATE_WINDOWS = 50  # window ends kept to measure the window rate


class VerdictPolicy:
    """The model verdict row of each report, debounced (see :mod:`detectors.alarms`).

    Each window's raw verdict (:func:`~detectors.alarms.model_verdict` at the rule's
    level) is kept; the row's ``drifted`` is the k-of-n rule over the last ``n`` raw
    verdicts. Its ``features`` are the detectors' contributions plus one entry
    ``debounce``: ``statistic`` the expected windows between false alarms,
    ``drifted`` this window's raw verdict, ``n_reference``/``n_current`` the rule's
    ``k``/``n``. The recent raw verdicts and window ends travel with each report as the
    ``model`` detector's state, stored in the window's transaction, so a restarted or
    rebalanced daemon resumes the rule where the stored windows left it.
    """

    def __init__(self, model: str, alpha: float, method: str = "holm",
                 false_alarms: FalseAlarmSettings | None = None,
                 window_seconds: float | None = None) -> None:
        self.model, self.alpha, self.method = model, alpha, method
        self.false_alarms = false_alarms
        self.window_seconds = window_seconds
        self._ends: collections.deque[float] = collections.deque(maxlen=_RATE_WINDOWS)
        self._verdicts: collections.deque[bool] = collections.deque(maxlen=10)
        self._rule: Debounce | None = None

    def windows_per_day(self) -> float:
        if self.window_seconds is not None:
            return 86_400.0 / self.window_seconds
        if len(self._ends) >= 2 and self._ends[-1] > self._ends[0]:
            return 86_400.0 * (len(self._ends) - 1) / (self._ends[-1] - self._ends[0])
        return ASSUMED_WINDOWS_PER_DAY

    def rule(self) -> Debounce:
        """The k-of-n rule now (with ``every_days`` it follows the window rate)."""
        fa = self.false_alarms
        if fa is None:
            every = None
        elif fa.every_windows is not None:
            every = fa.every_windows
        else:
            every = max(float(fa.every_days or 0) * self.windows_per_day(), 1.0 + 1e-9)
        rule = debounce(self.alpha, every, fa.max_n if fa is not None else 1)
        if rule != self._rule:
            log.info("model %s: alarm after %d of %d drifted windows at level %.3g: one "
                     "false alarm every %.4g windows expected", self.model, rule.k, rule.n,
                     rule.level, rule.windows)
            self._rule = rule
        return rule

    def state(self) -> str:
        return json.dumps({"verdicts": list(self._verdicts), "ends": list(self._ends)})

    def load_state(self, saved: str | None) -> None:
        """Resume from :meth:`state` (``None``: no stored window, start afresh)."""
        self._verdicts.clear()
        self._ends.clear()
        if saved is None:
            return
        doc = json.loads(saved)
        self._verdicts.extend(bool(v) for v in doc.get("verdicts", ()))
        self._ends.extend(float(e) for e in doc.get("ends", ()))

    def apply(self, results: list[DriftResult], window_end: float) -> DriftResult:
        self._ends.append(window_end)
        rule = self.rule()
        raw = model_verdict(results, rule.level, self.method)
        self._verdicts.append(raw.drifted)
        entry = FeatureResult("debounce", rule.windows, None, None, raw.drifted, rule.k,
                              rule.n)
        return dataclasses.replace(raw, drifted=rule.fires(self._verdicts),
                                   features=(*raw.features, entry))


class ComponentEvaluator:
    """Runs every component on a window and assembles the :class:`WindowReport`.

    A window with fewer than ``min_records`` records is not tested: every component
    reports ``insufficient_data`` for each of its names.
    """

    model: str
    stream = "features"
    min_records = 1
    stateful = False  # True: the components' state travels with each report
    verdict: VerdictPolicy | None = None  # None: no model verdict row
    model_version: str | None = None  # stamped on reports (monitor.champion sets it)

    @property
    def components(self) -> list[Component]:
        raise NotImplementedError

    @property
    def detector_names(self) -> list[str]:
        names = [name for c in self.components for name in c.names]
        return [*names, MODEL] if self.verdict is not None else names

    def state(self) -> dict[str, str]:
        """Detector name -> JSON state of the stateful components and of the verdict's
        k-of-n history (stored per window)."""
        out = {k: v for c in self.components for k, v in c.state().items()}
        if self.verdict is not None:
            out[MODEL] = self.verdict.state()
        return out

    def load_state(self, saved: Mapping[str, str]) -> None:
        for c in self.components:
            c.load_state(saved)
        if self.verdict is not None:
            self.verdict.load_state(saved.get(MODEL))

    def evaluate(self, window: ClosedWindow) -> WindowReport:
        n = window.n
        results: list[DriftResult] = []
        for c in self.components:
            results.extend(c.test(window) if n >= self.min_records else c.insufficient(n))
        if self.verdict is not None:
            results.append(self.verdict.apply(results, window.end))
        return WindowReport(
            model=self.model, window_index=window.index, window_start=window.start,
            window_end=window.end, n_records=n, results=tuple(results),
            offsets=window.offsets, evaluated_at=time.time(), stream=self.stream,
            state=self.state() if self.stateful or self.verdict is not None else None,
            model_version=self.model_version)


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
        self.verdict = verdict_policy(model, model.window.seconds
                                      if isinstance(model.window, TimeWindow) else None)
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
        if summaries is None or window.n < self.min_records:
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


def verdict_policy(model: ModelSettings, window_seconds: float | None) -> VerdictPolicy:
    """The model's verdict settings as a :class:`VerdictPolicy` (one per stream)."""
    return VerdictPolicy(model.name, model.alpha, model.verdict.method, model.false_alarms,
                         window_seconds)
