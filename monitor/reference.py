"""Reads a model's reference data (CSV, JSONL or Parquet) into one array per feature.

JSONL lines may be flat feature objects or whole inference records (their ``features`` object
is used), so a captured slice of production traffic can serve as the reference directly.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import ReferenceDataError
from monitor.schema import FeatureKind


def _format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        return "csv"
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    raise ReferenceDataError(
        f"{path}: cannot tell the format from the suffix '{suffix}'; set reference.format")


def json_lines(path: Path, lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of each non-blank line; bad JSON names file and line."""
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except ValueError as exc:
            raise ReferenceDataError(f"{path}:{i}: not JSON: {exc}") from None


def _rows(path: Path, fmt: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    if fmt == "csv":
        # utf-8-sig: spreadsheet exports start with a BOM that would otherwise end up in the
        # first column's name.
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            for i, row in enumerate(reader, start=2):  # line 1 is the header
                yield i, row
    elif fmt == "jsonl":
        with path.open(encoding="utf-8") as fh:
            for i, doc in json_lines(path, fh):
                if not isinstance(doc, dict):
                    raise ReferenceDataError(f"{path}:{i}: each line must be a JSON object")
                feats = doc.get("features")
                yield i, feats if isinstance(feats, dict) else doc
    else:  # parquet
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ReferenceDataError(
                f"{path}: Parquet needs pyarrow: pip install 'driftline[parquet]'") from None
        try:
            table = pq.read_table(path)
        except pa.ArrowException as exc:  # ArrowInvalid is a ValueError, not an OSError
            raise ReferenceDataError(f"{path}: not a readable Parquet file: {exc}") from None
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row


def _category(v: Any, path: Path, row_no: int, name: str) -> str:
    """A categorical reference value spelled as the live decoder spells it (monitor/schema.py)."""
    if isinstance(v, bool):
        return json.dumps(v)  # JSON true, not Python's "True"
    if isinstance(v, str | int):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # Parquet stores integer columns with gaps as floats
    raise ReferenceDataError(
        f"{path}: row {row_no}: column '{name}' is categorical and must be a string, integer "
        f"or boolean, got {type(v).__name__} {v!r:.40}")


def load_reference(path: Path, features: Mapping[str, FeatureKind],
                   fmt: str = "auto") -> dict[str, np.ndarray]:
    """Load ``features`` from ``path``: float64 arrays for numeric, str arrays for categorical.

    Raises :class:`ReferenceDataError` naming the file, row and column of any bad value.
    """
    if not path.is_file():
        raise ReferenceDataError(f"{path}: reference file not found")
    fmt = _format(path, fmt)
    cols: dict[str, list[Any]] = {name: [] for name in features}
    try:
        for row_no, row in _rows(path, fmt):
            for name, kind in features.items():
                if name not in row or row[name] is None or row[name] == "":
                    raise ReferenceDataError(f"{path}: row {row_no}: missing column '{name}'")
                v = row[name]
                if kind == "numeric":
                    try:
                        f = float(v)
                    except (TypeError, ValueError):
                        raise ReferenceDataError(
                            f"{path}: row {row_no}: column '{name}' is numeric, got {v!r}"
                        ) from None
                    if not math.isfinite(f) or isinstance(v, bool):
                        raise ReferenceDataError(
                            f"{path}: row {row_no}: column '{name}' must be a finite number")
                    cols[name].append(f)
                else:
                    cols[name].append(_category(v, path, row_no, name))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReferenceDataError(f"{path}: cannot read: {exc}") from None
    n = len(next(iter(cols.values()))) if cols else 0
    if n < 2:
        raise ReferenceDataError(f"{path}: needs at least 2 rows, found {n}")
    return {
        name: np.asarray(values, dtype=np.float64 if features[name] == "numeric" else object)
        for name, values in cols.items()
    }
