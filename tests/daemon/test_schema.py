from __future__ import annotations

import json

import pytest

from monitor.errors import RecordError
from monitor.schema import Decoder, ModelSchema

SCHEMA = {"m": ModelSchema({"x": "numeric", "c": "categorical"})}


def rec(**over: object) -> bytes:
    doc: dict[str, object] = {"model": "m", "model_version": "2", "request_id": "r1",
                              "timestamp": "2026-11-23T10:00:00Z",
                              "features": {"x": 1.5, "c": "a"}, "prediction": 1}
    doc.update(over)
    return json.dumps(doc).encode()


def reason(value: bytes | None, max_bytes: int = 1 << 20) -> str:
    with pytest.raises(RecordError) as info:
        Decoder(SCHEMA, max_bytes).decode(value)
    return info.value.reason


def test_valid_record_decodes() -> None:
    r = Decoder(SCHEMA).decode(rec(probabilities=[0.2, 0.8], embedding=[1, 2],
                                   input={"text": "hello"}))
    assert r.model == "m" and r.model_version == "2" and r.request_id == "r1"
    assert r.timestamp == 1795428000.0
    assert r.features == {"x": 1.5, "c": "a"}
    assert r.probabilities == (0.2, 0.8) and r.embedding == (1.0, 2.0)
    assert r.raw_input == "hello"


def test_numeric_timestamp_and_categorical_ints_and_bools() -> None:
    d = Decoder(SCHEMA)
    r = d.decode(rec(timestamp=12.5, features={"x": 3, "c": 7}))
    assert r.timestamp == 12.5 and r.features == {"x": 3.0, "c": "7"}
    assert d.decode(rec(features={"x": 1, "c": True})).features["c"] == "true"


@pytest.mark.parametrize(("value", "expected"), [
    (b"{not json", "malformed_json"),
    (b'{"model": "m"', "malformed_json"),
    (b"\xff\xfe\x00garbage", "invalid_encoding"),
    (b"[1, 2]", "schema"),
    (None, "schema"),
    (b'{"model": "m", "features": {"x": NaN, "c": "a"}}', "non_finite"),
    (b'{"model": "m", "features": {"x": Infinity, "c": "a"}}', "non_finite"),
    (rec(features={"x": 1e999, "c": "a"}), "non_finite"),
    (rec(model="other"), "unknown_model"),
    (rec(model=5.5), "schema"),
    (rec(features={"x": "1.5", "c": "a"}), "schema"),
    (rec(features={"x": True, "c": "a"}), "schema"),
    (rec(features={"c": "a"}), "schema"),
    (rec(features={"x": 1, "c": [1]}), "schema"),
    (rec(features=[1, 2]), "schema"),
    (rec(timestamp="yesterday"), "schema"),
    (rec(timestamp="2026-11-23T10:00:00"), "schema"),
    (rec(timestamp=None), "schema"),
    (rec(prediction=None), "schema"),
    (rec(probabilities=[0.5, "x"]), "schema"),
    (rec(probabilities=[]), "schema"),
    (rec(request_id=""), "schema"),
    (rec(input={"image": 1}), "schema"),
    (b"[" * 100_000 + b"]" * 100_000, "schema"),  # too deep to parse is too deep
])
def test_bad_records_rejected_with_reason(value: bytes | None, expected: str) -> None:
    assert reason(value) == expected


def test_deep_but_parseable_nesting_rejected() -> None:
    nested: object = 1
    for _ in range(40):
        nested = {"a": nested}
    assert reason(rec(extra=nested)) == "schema"


def test_oversize_checked_before_parsing() -> None:
    assert reason(rec(pad="x" * 2000), max_bytes=1000) == "oversize"


def test_error_detail_names_the_field() -> None:
    with pytest.raises(RecordError, match="feature 'x'"):
        Decoder(SCHEMA).decode(rec(features={"x": "bad", "c": "a"}))


def test_label_record() -> None:
    d = Decoder(SCHEMA)
    lab = d.decode_label(b'{"request_id": "r1", "label": 0, "timestamp": 5}')
    assert (lab.request_id, lab.label, lab.timestamp) == ("r1", 0, 5.0)
    with pytest.raises(RecordError, match="label"):
        d.decode_label(b'{"request_id": "r1", "timestamp": 5}')
