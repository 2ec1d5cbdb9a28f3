"""monitor.reference.load_reference: CSV, JSONL and Parquet, and errors that name the culprit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monitor.errors import ReferenceDataError
from monitor.reference import load_reference

FEATURES = {"income": "numeric", "age": "numeric", "country": "categorical",
            "vip": "categorical"}
ROWS = [
    {"income": 52.5, "age": 31.0, "country": "DE", "vip": "yes"},
    {"income": 48.25, "age": 45.0, "country": "FR", "vip": "no"},
    {"income": 61.0, "age": 27.0, "country": "DE", "vip": "no"},
    {"income": -3.5, "age": 58.0, "country": "NL", "vip": "yes"},
]
EXPECTED = {
    "income": np.array([52.5, 48.25, 61.0, -3.5]),
    "age": np.array([31.0, 45.0, 27.0, 58.0]),
    "country": np.array(["DE", "FR", "DE", "NL"], dtype=object),
    "vip": np.array(["yes", "no", "no", "yes"], dtype=object),
}


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None,
              sep: str = ",") -> Path:
    columns = columns or list(rows[0])
    lines = [sep.join(columns)] + [sep.join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def assert_expected(got: dict[str, np.ndarray]) -> None:
    assert list(got) == list(FEATURES)
    for name, want in EXPECTED.items():
        assert got[name].dtype == want.dtype, name
        np.testing.assert_array_equal(got[name], want)


def as_record(i: int, row: dict) -> dict:
    return {"model": "credit-risk", "model_version": "1", "request_id": f"r-{i}",
            "timestamp": 1_763_856_000 + i, "features": row, "prediction": 1,
            "probabilities": [0.2, 0.8]}


# --- the formats agree ---------------------------------------------------------------------


def test_csv(tmp_path: Path) -> None:
    assert_expected(load_reference(write_csv(tmp_path / "ref.csv", ROWS), FEATURES))


def test_csv_extra_columns_and_column_order_do_not_matter(tmp_path: Path) -> None:
    rows = [{"note": "x", **r} for r in ROWS]
    path = write_csv(tmp_path / "ref.csv", rows, ["vip", "note", "age", "country", "income"])
    assert_expected(load_reference(path, FEATURES))


def test_tsv_uses_tabs(tmp_path: Path) -> None:
    assert_expected(load_reference(write_csv(tmp_path / "ref.tsv", ROWS, sep="\t"), FEATURES))


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    # Spreadsheet exports start with a UTF-8 BOM; it must not become part of 'income'.
    path = write_csv(tmp_path / "ref.csv", ROWS)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert_expected(load_reference(path, FEATURES))


def test_jsonl_flat_objects(tmp_path: Path) -> None:
    assert_expected(load_reference(write_jsonl(tmp_path / "ref.jsonl", ROWS), FEATURES))


def test_jsonl_whole_inference_records_use_their_features(tmp_path: Path) -> None:
    path = tmp_path / "captured.jsonl"
    write_jsonl(path, [as_record(i, r) for i, r in enumerate(ROWS)])
    # blank lines are allowed between records
    path.write_text(path.read_text().replace("\n", "\n\n", 1), encoding="utf-8")
    assert_expected(load_reference(path, FEATURES))


def test_parquet(tmp_path: Path) -> None:
    assert_expected(load_reference(write_parquet(tmp_path / "ref.parquet", ROWS), FEATURES))


def test_explicit_format_overrides_the_suffix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ref.data", ROWS)
    assert_expected(load_reference(path, FEATURES, "jsonl"))
    assert_expected(load_reference(write_parquet(tmp_path / "p.bin", ROWS), FEATURES, "parquet"))


def test_only_the_requested_features_are_returned(tmp_path: Path) -> None:
    got = load_reference(write_csv(tmp_path / "ref.csv", ROWS), {"age": "numeric"})
    assert list(got) == ["age"]
    np.testing.assert_array_equal(got["age"], EXPECTED["age"])


def test_json_booleans_and_numbers_as_categories_match_the_decoder(tmp_path: Path) -> None:
    # The decoder spells JSON true as "true" (not Python's "True") and 3 as "3".
    path = write_jsonl(tmp_path / "ref.jsonl", [{"flag": True, "n": 3}, {"flag": False, "n": 4}])
    got = load_reference(path, {"flag": "categorical", "n": "categorical"})
    assert got["flag"].tolist() == ["true", "false"]
    assert got["n"].tolist() == ["3", "4"]


# --- errors name file, row and column -------------------------------------------------------


def test_categorical_objects_lists_and_fractions_are_rejected(tmp_path: Path) -> None:
    # The decoder rejects these in live records, so as reference values they could never
    # match a window's: an error, not a category that silently never occurs.
    for i, bad in enumerate([{"a": 1}, [1, 2], 2.5]):
        path = write_jsonl(tmp_path / f"ref{i}.jsonl", [{"c": "x"}, {"c": bad}])
        _raises(path, r"row 2", r"column 'c' is categorical", type(bad).__name__,
                features={"c": "categorical"})
    # an integral float (Parquet's integer column with gaps) is the integer's category
    path = write_jsonl(tmp_path / "ints.jsonl", [{"c": 3.0}, {"c": 4}])
    assert load_reference(path, {"c": "categorical"})["c"].tolist() == ["3", "4"]



def _raises(path: Path, *patterns: str, features: dict | None = None,
            fmt: str = "auto") -> str:
    with pytest.raises(ReferenceDataError) as info:
        load_reference(path, features or FEATURES, fmt)
    msg = str(info.value)
    assert str(path) in msg, msg
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in {msg!r}"
    return msg


def test_missing_column_in_header(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "ref.csv", ROWS, ["income", "age", "vip"])
    _raises(path, r"row 2\b", "missing column 'country'")


def test_empty_cell_is_a_missing_value(tmp_path: Path) -> None:
    rows = [dict(r) for r in ROWS]
    rows[2]["age"] = ""
    _raises(write_csv(tmp_path / "ref.csv", rows), r"row 4\b", "'age'")  # line 4 of the file


def test_missing_key_in_jsonl_and_parquet(tmp_path: Path) -> None:
    docs = [dict(r) for r in ROWS]
    del docs[1]["vip"]
    _raises(write_jsonl(tmp_path / "ref.jsonl", docs), r"row 2\b", "missing column 'vip'")
    rows = [dict(r) for r in ROWS]
    rows[3]["income"] = None  # a null in Parquet
    _raises(write_parquet(tmp_path / "ref.parquet", rows), r"row 4\b", "'income'")


def test_non_numeric_value_in_numeric_column(tmp_path: Path) -> None:
    rows = [dict(r) for r in ROWS]
    rows[1]["income"] = "high"
    _raises(write_csv(tmp_path / "ref.csv", rows), r"row 3\b", "column 'income' is numeric",
            "'high'")
    _raises(write_jsonl(tmp_path / "ref.jsonl", [as_record(i, r) for i, r in enumerate(rows)]),
            r"row 2\b", "column 'income'", "'high'")


def test_json_boolean_is_not_a_number(tmp_path: Path) -> None:
    rows = [dict(r) for r in ROWS]
    rows[0]["age"] = True
    _raises(write_jsonl(tmp_path / "ref.jsonl", rows), r"row 1\b", "column 'age'",
            "finite number")


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "NaN", "Infinity"])
def test_non_finite_csv_values(tmp_path: Path, bad: str) -> None:
    rows = [dict(r) for r in ROWS]
    rows[3]["age"] = bad
    _raises(write_csv(tmp_path / "ref.csv", rows), r"row 5\b", "column 'age'",
            "must be a finite number")


def test_non_finite_jsonl_and_parquet_values(tmp_path: Path) -> None:
    path = tmp_path / "ref.jsonl"
    path.write_text('{"x": 1.0}\n{"x": NaN}\n{"x": 2.0}\n', encoding="utf-8")
    _raises(path, r"row 2\b", "column 'x'", "finite", features={"x": "numeric"})
    ppath = write_parquet(tmp_path / "ref.parquet", [{"x": 1.0}, {"x": 2.0}, {"x": float("inf")}])
    _raises(ppath, r"row 3\b", "column 'x'", "finite", features={"x": "numeric"})


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_rows(tmp_path: Path, n: int) -> None:
    _raises(write_csv(tmp_path / "ref.csv", ROWS[:n], list(FEATURES)),
            f"at least 2 rows, found {n}")
    _raises(write_jsonl(tmp_path / "ref.jsonl", ROWS[:n]), f"at least 2 rows, found {n}")


def test_missing_file(tmp_path: Path) -> None:
    _raises(tmp_path / "nope.csv", "not found")
    _raises(tmp_path, "not found")  # a folder is not a reference file


def test_unknown_suffix_with_auto_format(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "ref.xlsx", ROWS)
    _raises(path, "'.xlsx'", "reference.format")


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "ref.jsonl"
    path.write_text('{"x": 1}\n{"x": 2}\n{"x": \n{"x": 3}\n', encoding="utf-8")
    msg = _raises(path, "not JSON", features={"x": "numeric"})
    assert f"{path}:3:" in msg


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "ref.jsonl"
    path.write_text('{"x": 1}\n[1, 2]\n', encoding="utf-8")
    msg = _raises(path, "must be a JSON object", features={"x": "numeric"})
    assert f"{path}:2:" in msg


def test_file_that_is_not_parquet(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "ref.parquet", ROWS)
    _raises(path, "Parquet")


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "ref.csv"
    path.write_bytes(b"income\n1\n\xff\xfe\n")
    _raises(path, "cannot read", features={"income": "numeric"})
