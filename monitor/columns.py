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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

#: Initial capacity of a time window's buffers (count windows allocate their size).
INITIAL_CAPACITY = 1024

_features = attrgetter("features")
_prediction = attrgetter("prediction")
_raw_input = attrgetter("raw_input")


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
        features = list(map(_features, records))
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
        self.predictions.extend(map(_prediction, records))
        if self.inputs is not None:
            self.inputs.extend(map(_raw_input, records))
        self._n = end

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
