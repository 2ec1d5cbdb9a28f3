"""A window's records as columns: float64 arrays per numeric feature, integer codes per
categorical one, filled once per batch.

A window does not keep its record objects: at a million records and 50 features those
cost ~1.5 KB each and a Python step per (record, feature) to turn into the arrays the
detectors test. :class:`ColumnBuffer` holds the records of the current batch only; at the
end of the batch (:meth:`ColumnBuffer.seal`) their features are written into preallocated
arrays with one C-level pass per kind (numeric, categorical), and the records are dropped. What
else a window's evaluation reads per record (the predictions, and the raw inputs when an
embedding is configured) is kept as plain lists.

Categorical values become integer codes: each window starts from the reference's
categories (codes ``0 .. k-1``) and gives a category not seen before the next code.

Records from the native decoder (:mod:`monitor.fastdecode`) also carry their features
packed (``record.row``: the numeric values as doubles and each category as the id in a
per-model :class:`RowFormat` table, one ``struct.pack`` per record at decode time).
A batch whose records all carry the same format is sealed from those bytes: one
``np.frombuffer`` and one gather of the ids into the window's codes, no Python step per
value. Any other batch (records built by hand, by the Python decoder, or straddling a new
format) takes the dict path; both give the same columns and codes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from struct import Struct
from typing import Any

import numpy as np

#: Initial capacity of a time window's buffers (count windows allocate their size).
INITIAL_CAPACITY = 1024

_features = attrgetter("features")
_prediction = attrgetter("prediction")
_raw_input = attrgetter("raw_input")
_row = attrgetter("row")
_row_format = attrgetter("row_format")

#: A row format's category table is replaced by a fresh one past these bounds, so a
#: high-cardinality (or hostile) categorical feature cannot grow it without end.
MAX_TABLE_CATEGORIES = 1 << 18
MAX_TABLE_CHARS = 16 << 20


class CategoryCodes(dict[str, int]):
    """Category -> code; a category not seen before gets the next code.

    ``names[code]`` is the category. One table serves all of a window's categorical
    features (a code names a string, whichever feature it came from), so a batch is
    encoded in one pass; each window starts from a copy of the reference's table and
    frees what it added when it is dropped, so a high-cardinality feature cannot grow
    the table without bound.
    """

    __slots__ = ("names",)

    def __init__(self, seed: Iterable[str] = ()) -> None:
        super().__init__()
        self.names: list[str] = []
        for category in seed:
            self[category]  # assigns the code

    def __missing__(self, category: str) -> int:
        code = len(self.names)
        self.names.append(category)
        self[category] = code
        return code

    def fork(self) -> CategoryCodes:
        """A copy that grows on its own."""
        out = CategoryCodes()
        out.update(self)
        out.names = list(self.names)
        return out


class TableFull(Exception):
    """A row format's category table reached its bounds."""


class _BoundedCodes(CategoryCodes):
    """A row format's table: refuses to grow past its bounds (raises TableFull), and looks
    a category the decoder left as a JSON integer or boolean up by its text."""

    __slots__ = ("chars", "converted")

    def __init__(self) -> None:
        super().__init__()
        self.chars = 0
        self.converted = False  # a lookup since the last reset was not a string

    def __missing__(self, category: Any) -> int:
        if type(category) is not str:
            # not stored under the number: 1 == True == 1.0 would share one entry
            self.converted = True
            return self[category_text(category)]
        if (len(self.names) >= MAX_TABLE_CATEGORIES
                or self.chars + len(category) > MAX_TABLE_CHARS):
            raise TableFull
        self.chars += len(category)
        return super().__missing__(category)


def category_text(value: Any) -> str:
    """A JSON categorical value as the decoders store it: booleans spelled as in JSON."""
    return ("true" if value else "false") if type(value) is bool else str(value)


class RowFormat:
    """How one model's decoded records pack their features: the numeric values as
    little-endian doubles, then each category's id in :attr:`ids` as an int32.

    One format serves a decoder's model until its table fills (the decoder then starts a
    new one); a window maps the table's ids to its own codes once per id, not per value.
    """

    __slots__ = ("_struct", "categorical", "dtype", "ids", "numeric")

    def __init__(self, numeric: Sequence[str], categorical: Sequence[str]) -> None:
        """The features of each kind, in the order of the schema (and ColumnLayout.of)."""
        self.numeric, self.categorical = tuple(numeric), tuple(categorical)
        self.ids = _BoundedCodes()
        n, m = len(self.numeric), len(self.categorical)
        self._struct = Struct(f"<{n}d{m}i")
        fields = [("x", "<f8", (n,))] if n else []
        fields += [("c", "<i4", (m,))] if m else []
        self.dtype = np.dtype(fields)
        assert self.dtype.itemsize == self._struct.size  # packed, no padding

    def __repr__(self) -> str:  # records show it: no address, so their reprs compare
        return f"RowFormat({len(self.numeric)} numeric, {len(self.categorical)} categorical)"

    def fresh(self) -> RowFormat:
        """The same layout with an empty category table."""
        return RowFormat(self.numeric, self.categorical)

    def pack(self, values: tuple[Any, ...]) -> tuple[bytes, tuple[Any, ...] | list[Any]]:
        """One record's row from its values, numeric ones first then categories (as the
        decoder orders them); and ``values`` with every category as a string (the decoder
        leaves JSON integers and booleans as they are). Raises TableFull."""
        n = len(self.numeric)
        ids = self.ids
        ids.converted = False
        codes = tuple(map(ids.__getitem__, values[n:]))  # one C-level pass
        if ids.converted:  # rare: a category given as a JSON number or boolean
            values = (*values[:n], *map(ids.names.__getitem__, codes))
        return self._struct.pack(*values[:n], *codes), values


@dataclass(frozen=True)
class ColumnLayout:
    """What a model's windows store per record, and the reference's category codes."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    keep_inputs: bool = False  # raw inputs, for the embedding component
    codes: CategoryCodes = field(default_factory=CategoryCodes)

    @classmethod
    def of(cls, kinds: Mapping[str, str], keep_inputs: bool = False,
           categories: Mapping[str, Iterable[str]] | None = None) -> ColumnLayout:
        """The layout of features ``kinds`` (name -> "numeric" | "categorical"), codes
        seeded with ``categories`` (feature -> the reference's categories, in order)."""
        categorical = tuple(n for n, k in kinds.items() if k != "numeric")
        seed = categories or {}
        return cls(tuple(n for n, k in kinds.items() if k == "numeric"), categorical,
                   keep_inputs, CategoryCodes(c for n in categorical for c in seed.get(n, ())))


@dataclass(frozen=True)
class WindowColumns:
    """A closed window's columns: read-only views of its buffers, no copies."""

    layout: ColumnLayout
    numeric: np.ndarray  # float64, (len(layout.numeric), n), each row contiguous
    codes: np.ndarray  # int32, (len(layout.categorical), n), each row contiguous
    categories: list[str]  # code -> category
    predictions: list[Any]
    inputs: list[Any] | None

    @property
    def n(self) -> int:
        return int(self.numeric.shape[1])  # (0, n) when there are no numeric features

    def number(self, name: str) -> np.ndarray:
        return self.numeric[self.layout.numeric.index(name)]

    def coded(self, name: str) -> tuple[np.ndarray, list[str]]:
        """A categorical feature's codes and the categories they index."""
        return self.codes[self.layout.categorical.index(name)], self.categories

    def values(self, name: str) -> np.ndarray:
        """A categorical feature as an object array of its categories (one gather)."""
        codes, names = self.coded(name)
        return np.asarray(names, dtype=object)[codes]


class ColumnBuffer:
    """One open window's columns; records wait in a list until the batch is sealed."""

    def __init__(self, layout: ColumnLayout, capacity: int) -> None:
        self.layout = layout
        capacity = max(capacity, 1)
        # feature-major: each feature's values are contiguous (the detectors' columns)
        self._numeric = np.empty((len(layout.numeric), capacity), dtype=np.float64)
        self._codes = np.empty((len(layout.categorical), capacity), dtype=np.int32)
        self._num_get = _getter(layout.numeric)
        self._cat_get = _getter(layout.categorical)
        self.codes = layout.codes.fork()
        # packed rows: the format whose ids _remap maps to this window's codes (-1: not yet)
        self._format: RowFormat | None = None
        self._remap = np.empty(0, dtype=np.int32)
        self._mapped = 0  # ids [0, _mapped) have an entry in _remap
        self._n = 0  # sealed records
        self.pending: list[Any] = []
        self.predictions: list[Any] = []
        self.inputs: list[Any] | None = [] if layout.keep_inputs else None

    def seal(self) -> None:
        """Move the pending records into the columns (once per batch, and at close)."""
        records = self.pending
        k = len(records)
        if not k:
            return
        self.pending = []
        start, end = self._n, self._n + k
        self._reserve(end)
        row_format = self._packed_format(records)
        if row_format is not None:
            self._seal_packed(records, row_format, start, end)
        else:
            self._seal_dicts(list(map(_features, records)), start, end)
        self.predictions.extend(map(_prediction, records))
        if self.inputs is not None:
            self.inputs.extend(map(_raw_input, records))
        self._n = end

    def _packed_format(self, records: list[Any]) -> RowFormat | None:
        """The batch's one row format, if every record has one and it fits this layout."""
        formats = set(map(_row_format, records))
        if len(formats) != 1:
            return None
        [row_format] = formats
        if row_format is None or (row_format.numeric != self.layout.numeric
                or row_format.categorical != self.layout.categorical):
            return None
        return row_format  # type: ignore[no-any-return]

    def _seal_packed(self, records: list[Any], row_format: RowFormat, start: int,
                     end: int) -> None:
        rows = np.frombuffer(b"".join(map(_row, records)), dtype=row_format.dtype)
        if self.layout.numeric:
            self._numeric[:, start:end] = rows["x"].T
        if self.layout.categorical:
            self._codes[:, start:end] = self._window_codes(row_format, rows["c"]).T

    def _window_codes(self, row_format: RowFormat, ids: np.ndarray) -> np.ndarray:
        """A batch's table ids (records x features) as this window's codes."""
        if row_format is not self._format:
            self._format, self._remap, self._mapped = row_format, self._remap[:0], 0
        table = row_format.ids.names
        known = len(table)  # the decoder may add ids later; this batch's are below
        if known > self._mapped:
            if known > self._remap.size:
                grown = np.empty(max(known, 2 * self._remap.size), dtype=np.int32)
                grown[:self._mapped] = self._remap[:self._mapped]
                self._remap = grown
            # ids whose category the window already knows (the reference's, or seen in a
            # batch sealed from dicts) get its code now; others wait for their first value
            self._remap[self._mapped:known] = np.fromiter(
                map(self.codes.get, table[self._mapped:known], repeat(-1)), dtype=np.int32,
                count=known - self._mapped)
            self._mapped = known
        codes = self._remap[ids]
        new = codes < 0
        if new.any():
            # Categories new to the window take the next codes in the order the dict path
            # meets them: record by record, feature by feature (row-major, as ``ids``).
            unseen = ids[new]
            first = np.unique(unseen, return_index=True)[1]
            for i in np.sort(first):
                g = int(unseen[i])
                self._remap[g] = self.codes[table[g]]
            codes = self._remap[ids]
        return codes

    def _seal_dicts(self, features: list[Any], start: int, end: int) -> None:
        k = end - start
        # One C-level pass per kind: a tuple per record (itemgetter), flattened into the
        # array; no Python step per value.
        if self.layout.numeric:
            width = len(self.layout.numeric)
            self._numeric[:, start:end] = np.fromiter(
                _flat(map(self._num_get, features), width), dtype=np.float64,
                count=k * width).reshape(k, width).T
        if self.layout.categorical:
            width = len(self.layout.categorical)
            self._codes[:, start:end] = np.fromiter(
                map(self.codes.__getitem__, _flat(map(self._cat_get, features), width)),
                dtype=np.int32, count=k * width).reshape(k, width).T

    def _reserve(self, n: int) -> None:
        capacity = self._numeric.shape[1]
        if n <= capacity:
            return
        capacity = max(n, 2 * capacity)  # time windows: doubling, amortised one copy
        numeric = np.empty((self._numeric.shape[0], capacity), dtype=np.float64)
        numeric[:, :self._n] = self._numeric[:, :self._n]
        codes = np.empty((self._codes.shape[0], capacity), dtype=np.int32)
        codes[:, :self._n] = self._codes[:, :self._n]
        self._numeric, self._codes = numeric, codes

    def close(self) -> WindowColumns:
        """The columns: views of the buffers (a count window's are exactly full)."""
        self.seal()
        numeric, codes = self._numeric[:, :self._n], self._codes[:, :self._n]
        numeric.flags.writeable = False
        codes.flags.writeable = False
        return WindowColumns(self.layout, numeric, codes, self.codes.names,
                             self.predictions, self.inputs)


def _getter(names: Sequence[str]) -> Any:
    if not names:
        return None
    return itemgetter(*names)


def _flat(rows: Iterable[Any], width: int) -> Iterable[Any]:
    """The values of ``rows`` in order (an itemgetter of one name returns no tuple)."""
    return rows if width == 1 else chain.from_iterable(rows)
