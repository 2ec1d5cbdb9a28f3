"""The native (msgspec) decoder agrees with the Python decoder on every record of the corpora.

The Python decoder (``Decoder(native=False)``) is the oracle: on each record of the decoder's
fuzz corpus, the pipeline fuzz test's hostile records and the documented bad records, the
native decoder must give the same verdict, the same record (compared by ``repr``, so ``1`` and
``1.0`` or ``0.0`` and ``-0.0`` differ) or the same reject reason and detail.
"""

from __future__ import annotations

import json
import random
import struct
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from monitor.errors import RecordError
from monitor.fastdecode import FastDecoder
from monitor.schema import Decoder, InferenceRecord, ModelSchema, TimeBounds
from monitor.synthetic import SyntheticStream

from .test_pipeline_fuzz import B, hostile
from .test_schema import rec
from .test_schema_fuzz import BIG_INT, FUZZ, VALID, encode, encodings, json_values, record_shaped

# Half the fuzz tests' examples: those tests already drive the native path for crashes.
EQUAL = settings(FUZZ, max_examples=150)
NOW = 1795428000.0  # 2026-11-23T10:00:00Z, VALID's timestamp
FEATURES: dict[str, Any] = {"x": "numeric", "c": "categorical"}
MODELS = {
    "m": ModelSchema(FEATURES),
    "text": ModelSchema(FEATURES, needs_input=True, input_kind="text"),
    "arr": ModelSchema(FEATURES, needs_input=True, input_kind="array", input_size=2,
                       input_dtype="int8"),
    "reg": ModelSchema(FEATURES, numeric_prediction=True),
    B.model: ModelSchema(B.features()),  # type: ignore[arg-type]
}
BOUNDS = TimeBounds(max_future_seconds=3600, max_past_seconds=86400, clock=lambda: NOW)
PAIRS = [(Decoder(MODELS, max_bytes=mb, time_bounds=tb),
          Decoder(MODELS, max_bytes=mb, time_bounds=tb, native=False))
         for mb, tb in ((1 << 20, None), (300, BOUNDS))]


def outcome(decoder: Decoder, value: bytes | None, broker_ts: float | None) -> tuple[str, ...]:
    try:
        return ("ok", repr(unpacked(decoder.decode(value, broker_ts))))
    except RecordError as err:
        return ("rejected", err.reason, err.detail)


def unpacked(record: InferenceRecord) -> InferenceRecord:
    """The record without its packed row (only the native decoder packs), once the row is
    checked to hold exactly its features."""
    if record.row is not None:
        assert unpack(record) == record.features
    return msgspec.structs.replace(record, row=None, row_format=None)


def unpack(record: InferenceRecord) -> dict[str, Any]:
    """The features a packed row holds: its doubles and its categories' table entries."""
    fmt = record.row_format
    assert fmt is not None and record.row is not None
    n, m = len(fmt.numeric), len(fmt.categorical)
    values = struct.unpack(f"<{n}d{m}i", record.row)
    return {**dict(zip(fmt.numeric, values[:n], strict=True)),
            **{name: fmt.ids.names[i] for name, i in zip(fmt.categorical, values[n:],
                                                         strict=True)}}


def same(value: bytes | None, broker_ts: float | None = None) -> None:
    for native, python in PAIRS:
        assert outcome(native, value, broker_ts) == outcome(python, value, broker_ts), value


@st.composite
def any_model_records(draw: st.DrawFn) -> dict[str, Any]:
    doc = draw(record_shaped())
    if draw(st.booleans()):  # the record-shaped corpus is model "m": visit the others too
        doc["model"] = draw(st.sampled_from(list(MODELS)))
        if doc["model"] == "arr" and draw(st.booleans()):
            doc["input"] = {"array": draw(st.lists(st.integers(-200, 200) | st.floats(),
                                                   max_size=3))}
    return doc


@EQUAL
@given(any_model_records(), encodings, st.sampled_from([None, NOW, NOW - 90000.0]))
@example({**VALID, "features": {"x": BIG_INT, "c": "a"}}, "utf-8", None)
@example({**VALID, "prediction": BIG_INT}, "utf-8", None)
@example({**VALID, "prediction": 2 ** 1023}, "utf-8", None)  # fits a double: slow path accepts
@example({**VALID, "features": {"x": -0, "c": 10 ** 80}}, "utf-8", None)
@example({**VALID, "features": {"x": 1, "c": 7, "c2": True}}, "utf-8", None)
@example({**VALID, "features": {"x": 1, "c": False}}, "utf-8", None)
@example({**VALID, "model": "arr", "input": {"array": [1, 2.5]}}, "utf-8", None)
@example({**VALID, "model": "arr", "input": {"array": [1, 300]}}, "utf-8", None)
@example({**VALID, "model": "arr", "input": {"array": [1, -2]}}, "utf-8", None)
@example({**VALID, "model": "text", "input": {"array": [1.0]}}, "utf-8", None)
@example({**VALID, "model": "reg", "prediction": "yes"}, "utf-8", None)
@example({**VALID, "model": "reg", "prediction": 0.5}, "utf-8", None)
@example({**VALID, "timestamp": NOW + 7200}, "utf-8", None)  # future
@example({**VALID, "timestamp": "2026-11-23T10:00:00.1234567+00:00"}, "utf-8", None)
@example({**VALID, "model_version": None, "probabilities": None}, "utf-8", None)
@example({**VALID, "model_version": 7, "request_id": 12}, "utf-8", None)
@example({**VALID, "model_version": ""}, "utf-8", None)
@example({**VALID, "embedding": []}, "utf-8", None)
def test_native_decoder_agrees_on_record_shaped_documents(doc: dict[str, Any], encoding: str,
                                                          broker_ts: float | None) -> None:
    same(encode(doc, encoding), broker_ts)


@EQUAL
@given(json_values, encodings)
def test_native_decoder_agrees_on_arbitrary_json(value: Any, encoding: str) -> None:
    same(encode(value, encoding))


@EQUAL
@given(any_model_records(), st.data())
def test_native_decoder_agrees_on_truncated_and_corrupted_records(
        doc: dict[str, Any], data: st.DataObject) -> None:
    raw = encode(doc)
    same(raw[:data.draw(st.integers(0, len(raw)))])
    pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
    same(raw[:pos] + data.draw(st.binary(min_size=1, max_size=4)) + raw[pos + 1:])


def test_native_decoder_agrees_on_the_pipeline_fuzz_hostile_records() -> None:
    rng = random.Random(5)
    for i, base in enumerate(B.records(400)):
        same(hostile(rng, base, i))
        same(json.dumps(base).encode())


TEXTUAL = [
    None, b"", b" ", b"{}", b"[]", b"null", b"\xef\xbb\xbf" + rec(), rec() + b" \n\t",
    rec() + b"x", b'{"model": "m", "model": "text"' + rec()[1:],
    rec()[:-1] + b', "model": "text"}', rec()[:-1] + b', "\\u006dodel": "nope"}',
    rec().replace(b'"a"', b'"a\x01b"'), rec().replace(b'"a"', b'"a\nb"'),
    rec().replace(b'"a"', b'"\\ud800"'), rec().replace(b'"a"', b'"\xed\xa0\x80"'),
    rec().replace(b'"a"', b'"\xc0\xaf"'), rec().replace(b"1.5", b"1.5e999"),
    rec().replace(b"1.5", b"NaN"), rec().replace(b"1.5", b"-0"), rec().replace(b"1.5", b"01"),
    rec().replace(b"1.5", b"1."), rec().replace(b"1.5", b".5"), rec().replace(b"1.5", b"+1"),
    rec().replace(b"1.5", b"1.5, "), rec()[:-1] + b',}', rec().replace(b"1.5", b"0x10"),
    rec(extra=[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]), rec(extra="[" * 20),
    rec(features={"x": 1.0, "c": "a", "deep": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}),
    rec(timestamp="2026-11-23t10:00:00z"), rec(timestamp="2026-11-23T10:00:00+01:00"),
    rec(timestamp="2026-11-23T23:59:60Z"), rec(timestamp=1.5e300),
    # integers beyond Python's int parsing limit (4300 digits)
    rec().replace(b'"prediction": 1', b'"prediction": ' + b"9" * 5000),
    rec().replace(b'"a"', b"9" * 5000), rec().replace(b'"r1"', b"9" * 5000),
]


@pytest.mark.parametrize("value", TEXTUAL)
def test_native_decoder_agrees_on_textual_edge_cases(value: bytes | None) -> None:
    same(value)


def test_native_path_accepts_the_common_case() -> None:
    """The fast path must carry ordinary traffic, not hand everything to Python."""
    stream = SyntheticStream(n_numeric=8, n_categorical=3, seed=3)
    schema = {stream.model: ModelSchema(stream.features())}  # type: ignore[arg-type]
    fast = FastDecoder(schema, 1 << 20, TimeBounds(max_future_seconds=None),
                       Decoder(schema)._check_input)
    python = Decoder(schema, native=False)
    values = list(stream.encoded(200))
    for v in values:
        record = fast.decode(v, None)
        assert record is not None and record.row is not None
        assert repr(unpacked(record)) == repr(python.decode(v))
    assert fast.decode(values[0].replace(b'"timestamp"', b'"time"'), None) is None
