"""The inference-log and delayed-label record schemas, and their validating decoder.

Records travel as UTF-8 JSON objects. An inference record::

    {"model": "fraud", "model_version": "3", "request_id": "r-17",
     "timestamp": "2026-11-23T10:00:00Z",            # RFC 3339 string or Unix seconds
     "features": {"amount": 12.5, "country": "DE"},  # every configured feature
     "prediction": 1,                                 # class (int/str/bool) or value (float)
     "probabilities": [0.1, 0.9],                     # optional
     "input": {"text": "..."},                        # optional: {"text": str} or {"array": [...]}
     "embedding": [0.12, -0.5]}                       # optional, precomputed

A delayed-label record (its own topic)::

    {"request_id": "r-17", "label": 0, "timestamp": 1763892000.0}

Decoding rejects with a :class:`~monitor.errors.RecordError` whose ``reason`` is a fixed
label (see :data:`monitor.metrics.REJECT_REASONS`) and whose ``detail`` names the field.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import numpy as np

from monitor.errors import RecordError

if TYPE_CHECKING:
    from monitor.columns import RowFormat
    from monitor.fastdecode import FastDecoder

FeatureKind = Literal["numeric", "categorical"]
Scalar = float | int | str | bool

#: Maximum JSON nesting accepted; deeper documents are hostile, not inference logs.
MAX_DEPTH = 16


class InferenceRecord(msgspec.Struct, frozen=True, gc=False):
    # A msgspec struct, not a frozen dataclass: built in C (about 10x faster), and
    # untracked by the garbage collector (it holds no cycles), which a full window of
    # records would otherwise keep busy.
    model: str
    model_version: str
    request_id: str
    timestamp: float  # Unix seconds, event time
    features: Mapping[str, float | str]  # numeric -> float, categorical -> str
    prediction: Scalar
    probabilities: tuple[float, ...] | None = None
    raw_input: str | tuple[float, ...] | None = None
    embedding: tuple[float, ...] | None = None
    # The native decoder's features packed in its model's row format (numeric doubles,
    # category ids; see monitor.columns.RowFormat), so a window writes a batch of them
    # into its columns without a Python step per value. None from the Python decoder.
    row: bytes | None = None
    row_format: RowFormat | None = None


@dataclass(frozen=True, slots=True)
class LabelRecord:
    request_id: str
    label: Scalar
    timestamp: float
    model: str | None = None  # restricts the label to this model's prediction


def _reject_constant(name: str) -> float:
    # json accepts the non-standard NaN/Infinity literals by default; they are not JSON.
    raise RecordError("non_finite", f"non-finite literal {name} in JSON")


def _too_deep(value: Any, limit: int) -> bool:
    """True if a parsed JSON value nests containers deeper than ``limit``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:  # only containers are pushed, so a flat record costs a few checks
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in (item.values() if isinstance(item, dict) else item):
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def parse_json_object(value: bytes | None, max_bytes: int) -> dict[str, Any]:
    """Bytes -> JSON object, rejecting oversize, bad encodings, bad JSON and deep nesting."""
    if value is None:
        raise RecordError("schema", "empty message (null value)")
    if len(value) > max_bytes:
        raise RecordError("oversize", f"{len(value)} bytes exceeds the limit of {max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError("invalid_encoding", f"not UTF-8 at byte {exc.start}") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except RecordError:
        raise
    except RecursionError:
        # Far deeper than MAX_DEPTH: the same verdict as a shallower over-deep document,
        # whatever the caller's stack depth left for the parser.
        raise RecordError("schema", f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise RecordError("malformed_json", str(exc)) from None
    if not isinstance(doc, dict):
        raise RecordError("schema", f"top level must be a JSON object, got {type(doc).__name__}")
    if _too_deep(doc, MAX_DEPTH):
        raise RecordError("schema", f"JSON nested deeper than {MAX_DEPTH} levels")
    return doc


def _string(doc: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    v = doc.get(name)
    if v is None:
        if required:
            raise RecordError("schema", f"missing field '{name}'")
        return None
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise RecordError("schema", f"field '{name}' must be a string, got {type(v).__name__}")
    s = str(v)
    if not s:
        raise RecordError("schema", f"field '{name}' must not be empty")
    return s


def _finite(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise RecordError("schema", f"{where} must be a number, got {type(v).__name__}")
    try:
        f = float(v)
    except OverflowError:  # a JSON integer too large for a double
        raise RecordError("non_finite", f"{where} is too large") from None
    if not math.isfinite(f):
        raise RecordError("non_finite", f"{where} is not finite")
    return f


def _timestamp(v: Any) -> float:
    if v is None:
        raise RecordError("schema", "missing field 'timestamp'")
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise RecordError("schema", f"field 'timestamp' is not RFC 3339: {v[:40]!r}") from None
        if dt.tzinfo is None:
            raise RecordError("schema", "field 'timestamp' needs a UTC offset (e.g. 'Z')")
        return dt.timestamp()
    return _finite(v, "field 'timestamp'")


def _scalar(v: Any, where: str) -> Scalar:
    if isinstance(v, int) and not isinstance(v, bool):
        _finite(v, where)  # a class id must still be a number every consumer can hold
        return v
    if isinstance(v, bool | str):
        return v
    if isinstance(v, float):
        return _finite(v, where)
    raise RecordError("schema", f"{where} must be a string, number or boolean")


def _vector(v: Any, where: str) -> tuple[float, ...]:
    if not isinstance(v, list) or not v:
        raise RecordError("schema", f"{where} must be a non-empty array of numbers")
    return tuple(_finite(x, f"{where}[{i}]") for i, x in enumerate(v))


@dataclass(frozen=True, slots=True)
class ModelSchema:
    """What the decoder needs to know of a configured model."""

    features: Mapping[str, FeatureKind]
    needs_input: bool = False  # the model's inputs are embedded: "input" is required
    # Embedded models: what "input" must hold, so a bad payload is rejected at decode time
    # rather than failing its whole window later ("text", or an "array" of input_size
    # values that fit input_dtype).
    input_kind: Literal["text", "array"] | None = None
    input_size: int | None = None
    input_dtype: str = "float32"
    numeric_prediction: bool = False  # a regressor whose predictions are tested for drift


def _array_bound(dtype: str) -> tuple[float, float, bool]:
    """(lowest, highest, integral) values an array model's input dtype holds."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        fi = np.finfo(dt)
        return float(fi.min), float(fi.max), False
    ii = np.iinfo(dt)
    return float(ii.min), float(ii.max), True


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """How far event time may lie from now (future) or the broker's timestamp (past)."""

    max_future_seconds: float | None = 3600.0
    max_past_seconds: float | None = None
    clock: Callable[[], float] = time.time

    def check(self, ts: float, broker_ts: float | None) -> None:
        if self.max_future_seconds is not None:
            limit = self.clock() + self.max_future_seconds
            if ts > limit:
                raise RecordError("future_timestamp", f"field 'timestamp' {ts:.0f} is more than "
                                  f"{self.max_future_seconds:g} s ahead of now "
                                  "(limits.max_future_seconds)")
        if self.max_past_seconds is not None:
            ref = broker_ts if broker_ts is not None else self.clock()
            if ts < ref - self.max_past_seconds:
                raise RecordError("past_timestamp", f"field 'timestamp' {ts:.0f} is more than "
                                  f"{self.max_past_seconds:g} s before "
                                  f"{'its broker timestamp' if broker_ts is not None else 'now'}"
                                  " (limits.max_past_seconds)")


class Decoder:
    """Validates raw bytes into records for the configured models."""

    def __init__(self, models: Mapping[str, ModelSchema], max_bytes: int = 1 << 20,
                 time_bounds: TimeBounds | None = None, *, native: bool = True,
                 pack_rows: bool = True) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self._models = dict(models)
        self._max_bytes = max_bytes
        # Without bounds (library use, unit tests) event time is only checked to be finite.
        self._time = time_bounds or TimeBounds(max_future_seconds=None)
        self._array_bounds = {name: _array_bound(m.input_dtype)
                              for name, m in self._models.items() if m.input_kind == "array"}
        # The msgspec fast path accepts the common case; anything else comes here (native=False:
        # the Python decoder alone, the oracle in tests and benchmarks).
        self._fast: FastDecoder | None = None
        if native:
            from monitor.fastdecode import FastDecoder  # it builds on this module's types
            # pack_rows=False: records without packed rows (the benchmark's "before")
            self._fast = FastDecoder(self._models, max_bytes, self._time, self._check_input,
                                     pack_rows=pack_rows)

    def decode(self, value: bytes | None, broker_timestamp: float | None = None
               ) -> InferenceRecord:
        if self._fast is not None:
            record = self._fast.decode(value, broker_timestamp)
            if record is not None:
                return record
        return self.decode_python(value, broker_timestamp)

    def decode_python(self, value: bytes | None, broker_timestamp: float | None = None
                      ) -> InferenceRecord:
        """The Python decoder: the authority on every rejection reason and detail."""
        doc = parse_json_object(value, self._max_bytes)
        model = _string(doc, "model")
        assert model is not None
        schema = self._models.get(model)
        if schema is None:
            # Keep the detail short: the name is attacker-controlled and goes into headers.
            raise RecordError("unknown_model", f"model {model[:64]!r} is not configured")
        raw_features = doc.get("features")
        if not isinstance(raw_features, dict):
            raise RecordError("schema", "field 'features' must be an object")
        features: dict[str, float | str] = {}
        for name, kind in schema.features.items():
            if name not in raw_features or raw_features[name] is None:
                raise RecordError("schema", f"missing feature '{name}'")
            v = raw_features[name]
            if kind == "numeric":
                features[name] = _finite(v, f"feature '{name}'")
            elif isinstance(v, str | int | bool):
                # JSON true and the string "True" must not collide: keep JSON's spelling.
                features[name] = json.dumps(v) if isinstance(v, bool) else str(v)
            else:
                raise RecordError(
                    "schema", f"feature '{name}' is categorical and must be a string, integer "
                    f"or boolean, got {type(v).__name__}")
        if "prediction" not in doc or doc["prediction"] is None:
            raise RecordError("schema", "missing field 'prediction'")
        if schema.numeric_prediction:
            _finite(doc["prediction"], "field 'prediction'")
        probabilities = doc.get("probabilities")
        embedding = doc.get("embedding")
        if schema.needs_input and doc.get("input") is None:
            raise RecordError("schema", f"missing field 'input' (model '{model}' embeds its "
                              "inputs)")
        raw_input = _raw_input(doc.get("input"))
        if raw_input is not None and schema.input_kind is not None:
            self._check_input(model, schema, raw_input)
        timestamp = _timestamp(doc.get("timestamp"))
        self._time.check(timestamp, broker_timestamp)
        return InferenceRecord(
            model=model,
            model_version=_string(doc, "model_version", required=False) or "",
            request_id=_string(doc, "request_id") or "",
            timestamp=timestamp,
            features=features,
            prediction=_scalar(doc["prediction"], "field 'prediction'"),
            probabilities=None if probabilities is None
            else _vector(probabilities, "field 'probabilities'"),
            raw_input=raw_input,
            embedding=None if embedding is None else _vector(embedding, "field 'embedding'"),
        )

    def _check_input(self, model: str, schema: ModelSchema,
                     raw: str | tuple[float, ...]) -> None:
        """The payload fits the model that embeds it (else its whole window would fail)."""
        if schema.input_kind == "text":
            if not isinstance(raw, str):
                raise RecordError("schema", f"field 'input' must be {{\"text\": str}} for "
                                  f"model '{model}' (a text model), got an array")
            return
        if isinstance(raw, str):
            raise RecordError("schema", f"field 'input' must be {{\"array\": [numbers]}} for "
                              f"model '{model}' (an array model), got text")
        if schema.input_size is not None and len(raw) != schema.input_size:
            raise RecordError("schema", f"field 'input.array' has {len(raw)} values, model "
                              f"'{model}' takes {schema.input_size}")
        lo, hi, integral = self._array_bounds[model]
        for i, x in enumerate(raw):
            if not lo <= x <= hi:
                raise RecordError("non_finite", f"field 'input.array[{i}]' = {x:g} does not "
                                  f"fit the model's input type {schema.input_dtype}")
            if integral and not x.is_integer():
                raise RecordError("schema", f"field 'input.array[{i}]' = {x:g} is not an "
                                  f"integer (the model's input type is {schema.input_dtype})")

    def decode_label(self, value: bytes | None, broker_timestamp: float | None = None
                     ) -> LabelRecord:
        doc = parse_json_object(value, self._max_bytes)
        if "label" not in doc or doc["label"] is None:
            raise RecordError("schema", "missing field 'label'")
        model = _string(doc, "model", required=False)
        if model is not None and model not in self._models:
            raise RecordError("unknown_model", f"model {model[:64]!r} is not configured")
        timestamp = _timestamp(doc.get("timestamp"))
        self._time.check(timestamp, broker_timestamp)
        return LabelRecord(
            request_id=_string(doc, "request_id") or "",
            label=_scalar(doc["label"], "field 'label'"),
            timestamp=timestamp,
            model=model,
        )


def _raw_input(v: Any) -> str | tuple[float, ...] | None:
    if v is None:
        return None
    if isinstance(v, dict) and len(v) == 1:
        if isinstance(v.get("text"), str):
            return str(v["text"])
        if "array" in v:
            return _vector(v["array"], "field 'input.array'")
    raise RecordError("schema", "field 'input' must be {\"text\": str} or {\"array\": [numbers]}")
