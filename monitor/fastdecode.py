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

An accepted record also carries its features packed in one ``struct.pack`` (``row``: numeric
values as doubles, categories as ids in the model's :class:`~monitor.columns.RowFormat`
table), which lets a window write a batch of records into its columns without a Python step
per value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any, Union

import msgspec
from msgspec.structs import astuple

from monitor.columns import RowFormat, TableFull, category_text
from monitor.schema import MAX_DEPTH, InferenceRecord, ModelSchema, TimeBounds, _timestamp

# A JSON integer with a magnitude beyond this may not fit a double (the Python decoder then
# rejects it as non_finite); such records take the slow path.
_INT_LIMIT = 1 << 1023

InputCheck = Callable[[str, ModelSchema, "str | tuple[float, ...]"], None]


class _Compiled:
    """One model's record struct and what turning it into an InferenceRecord needs."""

    __slots__ = ("categorical", "name", "names", "row_format", "schema", "struct",
                 "to_schema_order")

    def __init__(self, index: int, name: str, schema: ModelSchema, pack_rows: bool) -> None:
        self.name = name
        self.schema = schema
        self.names = tuple(schema.features)
        kinds = tuple(schema.features.values())
        # The struct's fields go numeric first, then categorical: astuple() then gives the
        # values in the packed row's order, each kind a slice.
        order = sorted(range(len(kinds)), key=lambda i: kinds[i] != "numeric")
        n_numeric = sum(k == "numeric" for k in kinds)
        self.categorical = range(n_numeric, len(kinds))  # positions in that order
        # that order -> the schema's (the features dict's), where the kinds interleave
        self.to_schema_order: Any = None
        if order != sorted(order):
            self.to_schema_order = itemgetter(*(order.index(i) for i in range(len(order))))
        self.row_format: RowFormat | None = None
        if pack_rows and self.names:
            self.row_format = RowFormat([self.names[i] for i in order[:n_numeric]],
                                        [self.names[i] for i in order[n_numeric:]])
        # Feature names are arbitrary strings: the struct fields are f0, f1, ... renamed.
        fields = [(f"f{i}", float if kinds[i] == "numeric" else str | int | bool)
                  for i in order]
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
                 time_bounds: TimeBounds, check_input: InputCheck, *,
                 pack_rows: bool = True) -> None:
        """``pack_rows=False``: plain feature dicts (the benchmark's "before")."""
        self._max_bytes = max_bytes
        self._time = time_bounds
        self._check_input = check_input
        self._compiled = {}
        for i, (name, schema) in enumerate(models.items()):
            compiled = _Compiled(i, name, schema, pack_rows)
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
        values: tuple[Any, ...] = astuple(raw.features)
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
        # packed last: a rejected record must not add its categories to the table
        row, row_format, strings = _packed(c, values)
        return InferenceRecord(
            model=c.name,
            model_version="" if version is None else str(version),
            request_id=str(request_id),
            timestamp=timestamp,
            features=dict(zip(c.names, strings if c.to_schema_order is None
                              else c.to_schema_order(strings), strict=True)),
            prediction=prediction,
            probabilities=raw.probabilities,
            raw_input=raw_input,
            embedding=raw.embedding,
            row=row,
            row_format=row_format,
        )


def _strings(c: _Compiled, values: tuple[Any, ...]) -> tuple[Any, ...] | list[Any]:
    """``values`` with each category as a string (JSON's spelling of booleans, as the
    Python path), in the struct's order."""
    if not c.categorical:
        return values
    mixed = list(values)
    for i in c.categorical:
        v = mixed[i]
        if type(v) is not str:
            mixed[i] = category_text(v)
    return mixed


def _packed(c: _Compiled, values: tuple[Any, ...]
            ) -> tuple[bytes | None, RowFormat | None, Sequence[Any]]:
    """The record's packed row and its format (None, None if it is not packed), and its
    values with each category as a string."""
    row_format = c.row_format
    if row_format is None:
        return None, None, _strings(c, values)
    try:
        row, strings = row_format.pack(values)
    except TableFull:  # the table stops here; records from now on use a fresh one
        c.row_format = row_format = row_format.fresh()
        try:
            row, strings = row_format.pack(values)
        except TableFull:  # one record's categories exceed an empty table
            return None, None, _strings(c, values)
    return row, row_format, strings
