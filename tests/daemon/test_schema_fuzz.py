"""Property tests of the decoder: hostile input is rejected with a known reason, never crashes.

For arbitrary bytes, arbitrary JSON values (any encoding) and record-shaped documents whose
fields hold arbitrary values, ``Decoder.decode`` (and ``decode_label``) either returns a
record or raises :class:`RecordError` whose reason is one of ``REJECT_REASONS``. Any other
exception would escape the pipeline's one policy for bad records and stop the daemon.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.errors import RecordError
from monitor.metrics import REJECT_REASONS
from monitor.schema import MAX_DEPTH, Decoder, InferenceRecord, LabelRecord, ModelSchema

SCHEMA = {"m": ModelSchema({"x": "numeric", "c": "categorical"})}
DECODER = Decoder(SCHEMA)
SMALL = Decoder(SCHEMA, max_bytes=64)  # exercises `oversize` on ordinary input

FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

VALID: dict[str, Any] = {"model": "m", "model_version": "2", "request_id": "r1",
                         "timestamp": "2026-11-23T10:00:00Z",
                         "features": {"x": 1.5, "c": "a"}, "prediction": 1,
                         "probabilities": [0.2, 0.8], "input": {"text": "t"},
                         "embedding": [0.1, 0.2]}
BIG_INT = 10 ** 400  # a valid JSON number that no float can hold

# -- strategies --------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers()
           | st.integers(min_value=10 ** 300, max_value=10 ** 420).map(lambda n: n * (-1) ** n)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["m", "", "2026-11-23T10:00:00Z", "0001-01-01T00:00:00+23:59",
                              "9999-12-31T23:59:59-23:59", "2026-11-23", "NaN", "\ud800"]))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20)


@st.composite
def record_shaped(draw: st.DrawFn) -> dict[str, Any]:
    """A valid record with some fields replaced, removed or added with arbitrary values."""
    doc = json.loads(json.dumps(VALID))
    for name in draw(st.lists(st.sampled_from([*VALID, "extra"]), max_size=4, unique=True)):
        action = draw(st.sampled_from(["replace", "delete", "feature"]))
        if action == "delete":
            doc.pop(name, None)
        elif action == "feature":
            features = doc.get("features")
            features = dict(features) if isinstance(features, dict) else {}
            features[draw(st.sampled_from(["x", "c", "y"]))] = draw(json_values)
            doc["features"] = features
        else:
            doc[name] = draw(json_values)
    return doc


def encode(value: Any, encoding: str = "utf-8") -> bytes:
    # allow_nan: NaN/Infinity literals are what hostile producers send.
    return json.dumps(value, allow_nan=True, ensure_ascii=False).encode(encoding, "replace")


encodings = st.sampled_from(["utf-8", "utf-8", "utf-16", "utf-16-le", "utf-32", "latin-1",
                             "cp1252"])


# -- the property ------------------------------------------------------------------------

def check(value: bytes | None) -> None:
    for decoder in (DECODER, SMALL):
        try:
            record = decoder.decode(value)
        except RecordError as err:
            assert err.reason in REJECT_REASONS, err
            assert isinstance(err.detail, str) and err.detail
            continue
        assert isinstance(record, InferenceRecord)
        assert record.model == "m"
        assert isinstance(record.features["x"], float) and math.isfinite(record.features["x"])
        assert isinstance(record.features["c"], str)
        assert math.isfinite(record.timestamp)
        for vec in (record.probabilities, record.embedding):
            assert vec is None or all(math.isfinite(v) for v in vec)
    try:
        label = DECODER.decode_label(value)
    except RecordError as err:
        assert err.reason in REJECT_REASONS, err
    else:
        assert isinstance(label, LabelRecord) and math.isfinite(label.timestamp)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes(value: bytes) -> None:
    check(value)


@FUZZ
@given(json_values, encodings)
def test_arbitrary_json_values_in_any_encoding(value: Any, encoding: str) -> None:
    check(encode(value, encoding))


@FUZZ
@given(record_shaped(), encodings)
@example({**VALID, "features": {"x": BIG_INT, "c": "a"}}, "utf-8")
@example({**VALID, "timestamp": BIG_INT}, "utf-8")
@example({**VALID, "probabilities": [0.5, -BIG_INT]}, "utf-8")
@example({**VALID, "embedding": [BIG_INT]}, "utf-8")
@example({**VALID, "input": {"array": [BIG_INT]}}, "utf-8")
@example({**VALID, "prediction": BIG_INT}, "utf-8")  # an int class label: fine as it is
def test_record_shaped_documents_with_arbitrary_fields(doc: dict[str, Any],
                                                       encoding: str) -> None:
    check(encode(doc, encoding))


@FUZZ
@given(record_shaped(), st.data())
def test_truncated_and_corrupted_records(doc: dict[str, Any], data: st.DataObject) -> None:
    raw = encode(doc)
    cut = data.draw(st.integers(0, len(raw)))
    check(raw[:cut])
    pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
    check(raw[:pos] + data.draw(st.binary(min_size=1, max_size=4)) + raw[pos + 1:])


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1_000, 100_000])
@pytest.mark.parametrize("kind", ["list", "object", "in_record"])
def test_deep_nesting(depth: int, kind: str) -> None:
    if kind == "list":
        value = b"[" * depth + b"]" * depth
    elif kind == "object":
        value = b'{"a":' * depth + b"1" + b"}" * depth
    else:
        value = encode(VALID)[:-1] + b', "extra": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(RecordError) as info:
        DECODER.decode(value)
    assert info.value.reason in {"malformed_json", "schema"}
    check(value)
