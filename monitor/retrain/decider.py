"""Runs the retraining policy on every delivered window, inside the results' transaction.

The decider keeps, per model with ``retrain``, the :class:`~monitor.retrain.policy.ModelHistory`
the policy needs; it is rebuilt from storage on start and after every rebalance
(:meth:`RetrainDecider.restore`), so a replay makes the same decisions. Decisions and
capture rows go into a :class:`~monitor.retrain.store.DecisionBuffer` that the SQL store
writes in the same transaction as the window results (exactly once, with the natural key).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from monitor.metrics import Metrics
from monitor.report import WindowReport
from monitor.retrain.policy import IN_FLIGHT, ModelHistory, Rules, Window, apply, classify, decide
from monitor.retrain.store import DecisionBuffer, RetrainStore, request_id
from monitor.settings import RetrainSettings

log = logging.getLogger("driftline.retrain")


@dataclass(frozen=True)
class _Verdict:
    detector: str
    drifted: bool


def rules_of(s: RetrainSettings) -> Rules:
    a = s.actions
    return Rules({"concept": a.concept, "label_shift": a.label_shift, "covariate": a.covariate},
                 s.debounce.k, s.debounce.n, s.min_labelled, s.cooldown_windows, s.max_per_day,
                 s.approval)


class RetrainDecider:
    def __init__(self, settings: Mapping[str, RetrainSettings], store: RetrainStore,
                 buffer: DecisionBuffer, metrics: Metrics) -> None:
        self.rules = {m: rules_of(s) for m, s in settings.items()}
        self.store = store
        self.buffer = buffer
        self.metrics = metrics
        self.histories: dict[str, ModelHistory] = {}
        self._seen: dict[tuple[str, str], int] = {}  # (model, stream) -> last window decided
        # model -> stream -> first window of the version now serving (monitor.champion):
        # the policy does not see the windows of the version before
        self.fresh_from: dict[str, dict[str, int]] = {}

    def restore(self) -> None:
        """Rebuild every model's history from storage (raises SinkError; callers retry)."""
        self.histories, self._seen = {}, {}
        for model in self.rules:
            self._restore_model(model)

    def _restore_model(self, model: str, closed: str | None = None) -> None:
        rules = self.rules[model]
        stored, requests = self.store.history(model, rules.n)
        since = self.fresh_from.get(model, {})
        windows = []
        for stream, index, start, end, n, verdicts in stored:
            self._seen[(model, stream)] = max(self._seen.get((model, stream), -1), index)
            if index < since.get(stream, -1):
                continue
            kinds = classify(stream, [_Verdict(d, f) for d, f in verdicts])
            windows.append(Window(stream, index, start, end, n, kinds))
        if closed is not None:  # promoted, whether or not the dispatcher has seen it yet
            requests = [replace(r, state="promoted") if r.id == closed and r.state in IN_FLIGHT
                        else r for r in requests]
        self.histories[model] = ModelHistory.rebuild(rules.n, windows, requests)

    def start_fresh(self, model: str, first_windows: Mapping[str, int],
                    closed_request: str | None) -> None:
        """A new version serves from ``first_windows``: forget the drift before it (the
        incident ``closed_request`` it was trained for is over) and decide afresh."""
        if model not in self.rules:
            return
        self.fresh_from[model] = dict(first_windows)
        self._restore_model(model, closed_request)

    def on_reports(self, reports: Sequence[WindowReport]) -> bool:
        """Decide on the reports about to be stored; True if anything was buffered."""
        before = len(self.buffer.decisions)
        for r in sorted(reports, key=lambda r: (r.window_end, r.stream, r.window_index)):
            rules = self.rules.get(r.model)
            if rules is None or r.error is not None:
                continue
            key = (r.model, r.stream)
            if r.window_index <= self._seen.get(key, -1):
                continue  # a retried flush: decided already
            self._seen[key] = r.window_index
            h = self.histories.setdefault(r.model, ModelHistory(rules.n))
            w = Window(r.stream, r.window_index, r.window_start, r.window_end, r.n_records,
                       classify(r.stream, r.results))
            h.add(w)
            decisions = decide(rules, h, w)
            ids = [request_id(r.model, d.action, d.first_stream, d.first_window)
                   for d in decisions]
            apply(h, decisions, ids)
            for d, rid in zip(decisions, ids, strict=True):
                self.buffer.decisions.append((r.model, d))
                log.info("model %s: %s incident %s -> %s (%s)", r.model, d.kind, rid, d.state,
                         d.reason)
                if d.state in ("queued", "pending_approval", "collected"):
                    self.metrics.retrain_requests.labels(
                        model=r.model, action=d.action, outcome=d.state).inc()
                    self.metrics.retrain_decision_delay.labels(model=r.model).observe(
                        max(0.0, w.end - d.first_event_time))
        return len(self.buffer.decisions) > before or bool(self.buffer.capture)

    def capture(self, model: str, request: str, event_time: float, window_index: int,
                features: Mapping[str, Any] | None, prediction: Any, label: Any,
                raw_input: Any) -> None:
        if model not in self.rules or features is None:
            return
        self.buffer.capture.append({
            "model": model, "request_id": request, "event_time": event_time,
            "window_index": window_index, "features": dict(features),
            "prediction": prediction, "label": label, "raw_input": raw_input})
