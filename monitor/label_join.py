"""Delayed labels: join them to stored predictions.

Predictions of models with ``labels`` configured are written to the predictions table
with the next flush (before their offsets are committed), so a join never depends on
process memory: a label that arrives a day later, after restarts, still finds its
prediction. Labels are matched by request id, in one lookup per batch:

* matched within ``horizon_seconds`` of the prediction: ``joined``, into the model's label
  windows (count windows of joined records, tested by :class:`monitor.labels.LabelEvaluator`);
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

from monitor.schema import LabelRecord, Scalar
from monitor.settings import LabelSettings
from monitor.windows import TopicPartition

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

    def lookup_predictions(self, request_ids: list[str]
                           ) -> dict[str, list[tuple[str, Any, float]]]: ...

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
        found.update({rid: [self._unflushed[rid]] for rid in self._waiting
                      if rid in self._unflushed})
        joined: list[tuple[Joined, TopicPartition, int]] = []
        for rid in list(self._waiting):
            if not found.get(rid):
                continue
            label, tp, offset = self._waiting.pop(rid)
            for model, prediction, ts in found[rid]:  # every model that scored the request
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
