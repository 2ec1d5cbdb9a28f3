"""The native fast path of the inference-record decoder: msgspec structs compiled per model.

Each configured model becomes a msgspec struct tagged by its ``model`` value, with its
features typed (numeric ``float``, categorical ``str | int | bool``), so parsing, type checks,
range checks and the finite-number checks run in C in one call per record. The fast path only
ever *accepts*: a record it cannot vouch for (msgspec rejects it, it nests too many
containers, an integer too big for a double, a failed range or time check) returns ``None``,
and :class:`monitor.schema.Decoder` then runs the Python decoder, which stays the single
authority on the rejection reason and detail. The fast path therefore has to agree with the
Python decoder only on what it accepts, which ``tests/daemon/test_fastdecode.py`` checks over
the fuzz corpora.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

import msgspec
from msgspec.structs import astuple

from monitor.schema import MAX_DEPTH, InferenceRecord, ModelSchema, TimeBounds, _timestamp

# A JSON integer with a magnitude beyond this may not fit a double (the Python decoder then
# rejects it as non_finite); such records take the slow path.
_INT_LIMIT = 1 << 1023

InputCheck = Callable[[str, ModelSchema, "str | tuple[float, ...]"], None]


class _Compiled:
    """One model's record struct and what turning it into an InferenceRecord needs."""

    __slots__ = ("categorical", "name", "names", "schema", "struct")

    def __init__(self, index: int, name: str, schema: ModelSchema) -> None:
        self.name = name
        self.schema = schema
        self.names = tuple(schema.features)
        self.categorical = tuple(i for i, kind in enumerate(schema.features.values())
                                 if kind != "numeric")
        # Feature names are arbitrary strings: the struct fields are f0, f1, ... renamed.
        fields = [(f"f{i}", float if kind == "numeric" else str | int | bool)
                  for i, kind in enumerate(schema.features.values())]
        features = msgspec.defstruct(
            f"Features{index}", fields,  # type: ignore[arg-type]
            rename={f"f{i}": n for i, n in enumerate(self.names)})
        self.struct = msgspec.defstruct(
            f"Record{index}",
            [("features", features),
             ("prediction", int | float | str | bool),
             ("timestamp", str | float),
             ("request_id", str | int),
             ("model_version", str | int | None, None),
             ("probabilities", tuple[float, ...] | None, None),
             ("embedding", tuple[float, ...] | None, None),
             ("input", dict[str, str | tuple[float, ...]] | None, None)],
            tag_field="model", tag=name)


class FastDecoder:
    """Decodes the common case of inference records natively; ``None`` means "ask Python"."""

    def __init__(self, models: Mapping[str, ModelSchema], max_bytes: int,
                 time_bounds: TimeBounds, check_input: InputCheck) -> None:
        self._max_bytes = max_bytes
        self._time = time_bounds
        self._check_input = check_input
        self._compiled = {}
        for i, (name, schema) in enumerate(models.items()):
            compiled = _Compiled(i, name, schema)
            self._compiled[compiled.struct] = compiled
        self._decoder: msgspec.json.Decoder[Any] | None = None
        if self._compiled:
            structs = tuple(self._compiled)
            self._decoder = msgspec.json.Decoder(Union[structs])  # noqa: UP007 - a tuple

    def decode(self, value: bytes | None, broker_timestamp: float | None
               ) -> InferenceRecord | None:
        if (value is None or self._decoder is None or len(value) > self._max_bytes
                # more containers than MAX_DEPTH could nest too deep: let Python walk them
                or value.count(b"{") + value.count(b"[") > MAX_DEPTH):
            return None
        try:
            if not value.isascii():
                value.decode("utf-8")  # msgspec does not check the UTF-8 of skipped keys
            raw = self._decoder.decode(value)
            return self._record(raw, self._compiled[type(raw)], broker_timestamp)
        except Exception:  # any doubt goes to the authoritative decoder
            return None

    def _record(self, raw: Any, c: _Compiled, broker_timestamp: float | None
                ) -> InferenceRecord | None:
        schema = c.schema
        values: tuple[Any, ...] | list[Any] = astuple(raw.features)
        if c.categorical:
            mixed = list(values)
            for i in c.categorical:
                v = mixed[i]
                if type(v) is not str:  # JSON's spelling of booleans, as the Python path
                    mixed[i] = ("true" if v else "false") if type(v) is bool else str(v)
            values = mixed
        prediction = raw.prediction
        if type(prediction) is int and not -_INT_LIMIT < prediction < _INT_LIMIT:
            return None
        if schema.numeric_prediction and type(prediction) not in (int, float):
            return None
        raw_input: str | tuple[float, ...] | None = None
        if raw.input is not None:
            d = raw.input
            text = d.get("text")
            if len(d) != 1:
                return None
            if type(text) is str:
                raw_input = text
            else:
                array = d.get("array")
                if type(array) is not tuple or not array:
                    return None
                raw_input = array
            if schema.input_kind is not None:
                self._check_input(c.name, schema, raw_input)  # raises: Python decides why
        elif schema.needs_input:
            return None
        ts = raw.timestamp
        timestamp = _timestamp(ts) if type(ts) is str else ts
        self._time.check(timestamp, broker_timestamp)
        version = raw.model_version
        request_id = raw.request_id
        if "" in (version, request_id) or () in (raw.probabilities, raw.embedding):
            return None  # empty where the schema forbids it
        return InferenceRecord(
            model=c.name,
            model_version="" if version is None else str(version),
            request_id=str(request_id),
            timestamp=timestamp,
            features=dict(zip(c.names, values, strict=True)),
            prediction=prediction,
            probabilities=raw.probabilities,
            raw_input=raw_input,
            embedding=raw.embedding,
        )
