"""Delayed labels: join them to stored predictions.

Predictions of models with ``labels`` configured are written to the predictions table
with the next flush (before their offsets are committed), so a join never depends on
process memory: a label that arrives a day later, after restarts, still finds its
prediction. Labels are matched by request id (to every model that scored the request, or
the one the label's optional ``model`` field names), in one lookup per batch:

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from monitor.errors import RecordError
from monitor.schema import LabelRecord, Scalar
from monitor.settings import LabelSettings
from monitor.sources import Message
from monitor.windows import TopicPartition

log = logging.getLogger("driftline.labels")


@dataclass(frozen=True, slots=True)
class Joined:
    model: str
    request_id: str
    y_true: float | str
    y_pred: float | str
    timestamp: float  # the label's event time
    # For models with a training capture: the record as predicted (else None).
    features: Mapping[str, Any] | None = None
    raw_input: Any = None
    predicted_at: float | None = None  # the prediction's event time


class PredictionStore(Protocol):
    def write_predictions(self, rows: Sequence[tuple[Any, ...]]) -> None: ...

    def prediction_details(self, keys: Sequence[tuple[str, str]]
                           ) -> dict[tuple[str, str], tuple[Any, Any]]: ...

    def flush_predictions(self) -> None: ...

    def lookup_predictions(self, request_ids: list[str]
                           ) -> dict[str, list[tuple[str, Any, float]]]: ...

    def prune_predictions(self, before: float) -> int: ...


def as_target(value: Scalar, task: str) -> float | str:
    """A prediction or label as the detectors compare it (class string or float)."""
    if task == "regression":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"regression targets must be numbers, got {value!r}")
        try:
            out = float(value)
        except OverflowError:  # an integer beyond any float
            raise ValueError("regression target is too large for a number") from None
        if not math.isfinite(out):
            raise ValueError(f"regression target {out} is not finite")
        return out
    return json.dumps(value) if isinstance(value, bool) else str(value)


WaitKey = tuple[str, str | None]  # (request id, the label's model restriction)


class LabelJoin:
    """Joins label records to stored predictions; see the module docstring.

    A label is the ground truth of a request, not of one model: it joins to the prediction
    of every model (with labels configured) that scored the request, or only to the model
    its optional ``model`` field names. It resolves once any such prediction is stored or
    in the same batch; a model whose prediction arrives after its label was joined does not
    get that label.
    """

    def __init__(self, store: PredictionStore, settings: Mapping[str, LabelSettings],
                 clock: Callable[[], float] = time.time,
                 capture: frozenset[str] = frozenset()) -> None:
        """``capture``: models whose predictions keep their features and input, so joined
        records can be captured for retraining."""
        self.store = store
        self.settings = dict(settings)
        self.horizon = max((s.horizon_seconds for s in settings.values()), default=0.0)
        self.max_waiting = sum(s.max_waiting for s in settings.values())
        self.capture = capture
        # (model, rid) -> (prediction, time, features, input)
        self._unflushed: dict[tuple[str, str], tuple[Any, float, Any, Any]] = {}
        self._waiting: OrderedDict[WaitKey, tuple[LabelRecord, Message]] = OrderedDict()
        self._watermark = -math.inf
        self.outcomes: Counter[str] = Counter()
        self._last_prune = 0.0
        self._clock = clock

    def add_prediction(self, model: str, request_id: str, prediction: Scalar,
                       timestamp: float, features: Mapping[str, Any] | None = None,
                       raw_input: Any = None) -> None:
        keep = model in self.capture
        self._unflushed[(model, request_id)] = (
            prediction, timestamp, dict(features) if keep and features is not None else None,
            raw_input if keep else None)
        self._watermark = max(self._watermark, timestamp)

    def add_label(self, label: LabelRecord, msg: Message) -> None:
        self._waiting[(label.request_id, label.model)] = (label, msg)
        self._watermark = max(self._watermark, label.timestamp)

    def _candidates(self) -> dict[str, dict[str, tuple[Any, float, Any, Any]]]:
        """request id -> model -> (prediction, time, features, input), for every waiting
        label's request."""
        rids = {rid for rid, _model in self._waiting}
        found: dict[str, dict[str, tuple[Any, float, Any, Any]]] = {}
        for rid, rows in self.store.lookup_predictions(sorted(rids)).items():
            for model, prediction, ts in rows:
                found.setdefault(rid, {})[model] = (prediction, ts, None, None)
        stored = [(m, rid) for rid, models in found.items() for m in models
                  if m in self.capture]
        if stored:
            for key, (features, raw) in self.store.prediction_details(stored).items():
                p, ts, _f, _r = found[key[1]][key[0]]
                found[key[1]][key[0]] = (p, ts, features, raw)
        for (model, rid), value in self._unflushed.items():
            if rid in rids:
                found.setdefault(rid, {})[model] = value
        return found

    def resolve(self) -> tuple[list[tuple[Joined, Message]], list[tuple[Message, RecordError]]]:
        """Match waiting labels: the joined pairs, and labels no model can use (rejects)."""
        if not self._waiting:
            return [], []
        found = self._candidates()
        joined: list[tuple[Joined, Message]] = []
        rejected: list[tuple[Message, RecordError]] = []
        for key in list(self._waiting):
            rid, only = key
            predictions = {m: v for m, v in found.get(rid, {}).items()
                           if m in self.settings and (only is None or m == only)}
            if not predictions:
                continue
            label, msg = self._waiting.pop(key)
            problems = []
            for model in sorted(predictions):
                prediction, ts, features, raw = predictions[model]
                cfg = self.settings[model]
                if label.timestamp - ts > cfg.horizon_seconds:
                    self.outcomes["late"] += 1
                    continue
                try:
                    pair = Joined(model, rid, as_target(label.label, cfg.task),
                                  as_target(prediction, cfg.task), label.timestamp,
                                  features, raw, ts)
                except ValueError as exc:
                    self.outcomes["invalid"] += 1
                    problems.append(f"model '{model}': {exc}")
                    continue
                joined.append((pair, msg))
            if problems:
                rejected.append((msg, RecordError("schema", "label not usable for "
                                                  + "; ".join(problems))))
        self._expire()
        return joined, rejected

    def _expire(self) -> None:
        # Labels wait for their prediction at most the horizon (in event time) and only
        # up to max_waiting of them: then they are orphans, counted, not kept.
        cutoff = self._watermark - self.horizon
        while self._waiting:
            key, (label, _msg) = next(iter(self._waiting.items()))
            if label.timestamp >= cutoff and len(self._waiting) <= self.max_waiting:
                break
            del self._waiting[key]
            self.outcomes["orphan"] += 1

    def flush(self) -> None:
        """Store this batch's predictions; raises SinkError (the pipeline retries)."""
        if self._unflushed:
            self.store.write_predictions(
                [(m, rid, p, ts, f, raw) if m in self.capture else (m, rid, p, ts)
                 for (m, rid), (p, ts, f, raw) in self._unflushed.items()])
            self.store.flush_predictions()
            self._unflushed.clear()
        now = time.monotonic()
        if math.isfinite(self._watermark) and now - self._last_prune > 60:
            # Event time is bounded at decode time; the wall clock bounds the prune too, so
            # no record, however dated, can make it delete predictions still in use.
            before = min(self._watermark, self._clock()) - 2 * self.horizon
            self.store.prune_predictions(before)
            self._last_prune = now

    def held_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the earliest waiting label: commits must stay below it."""
        out: dict[TopicPartition, int] = {}
        for _label, msg in self._waiting.values():
            tp = (msg.topic, msg.partition)
            out[tp] = min(out.get(tp, msg.offset), msg.offset)
        return out

    @property
    def waiting(self) -> int:
        return len(self._waiting)
