"""Per-model tumbling windows, count- or event-time-based, that remember their offsets.

With a :class:`~monitor.columns.ColumnLayout` (feature windows) a window keeps its records
as columns, written once per batch (:meth:`CountWindows.seal`); without one (label windows
of joined pairs) it keeps the record objects.

Each open window keeps, per (topic, partition), the smallest offset it holds: the pipeline
may commit a partition only below the earliest record still sitting in an open window, so
a restart replays exactly the records whose windows were not yet stored.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any, Protocol

import numpy as np

from monitor.columns import INITIAL_CAPACITY, ColumnBuffer, ColumnLayout, WindowColumns
from monitor.errors import RecordError

TopicPartition = tuple[str, int]


class Timestamped(Protocol):
    @property
    def timestamp(self) -> float: ...


@dataclass
class OpenWindow:
    index: int
    start: float
    end: float
    # Record objects are kept only without a column layout (label windows of joined pairs).
    records: list[Any] = field(default_factory=list)
    offsets: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    buffer: ColumnBuffer | None = None  # the columns, filled once per batch
    n: int = 0  # records added

    def add(self, record: Timestamped, tp: TopicPartition, offset: int) -> None:
        if self.buffer is not None:
            self.buffer.pending.append(record)  # columns written at the batch's end
        else:
            self.records.append(record)
        self.n += 1
        bounds = self.offsets.get(tp)
        # once per record: plain comparisons, and a new tuple only when a bound moves
        if bounds is None:
            self.offsets[tp] = (offset, offset)
        elif offset > bounds[1]:
            self.offsets[tp] = (bounds[0], offset)
        elif offset < bounds[0]:
            self.offsets[tp] = (offset, bounds[1])

    def seal(self) -> None:
        """End of a batch: the pending records go into the columns and are dropped."""
        if self.buffer is not None:
            self.buffer.seal()


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    model: str
    index: int
    start: float  # Unix seconds: the window's bounds (time) or its first record's (count)
    end: float
    records: tuple[Any, ...]  # Joined pairs of label windows; empty when ``columns`` is set
    offsets: dict[TopicPartition, tuple[int, int]]  # (min, max) offset per topic-partition
    columns: WindowColumns | None = None  # feature windows: their columns

    @property
    def n(self) -> int:
        """Number of records in the window."""
        return self.columns.n if self.columns is not None else len(self.records)

    def feature_columns(self, names: Sequence[str],
                        numeric: Mapping[str, bool]) -> dict[str, np.ndarray]:
        """One array per feature: float64 views of the columns (numeric), object arrays
        of the categories (categorical), as :func:`feature_columns` builds from records."""
        c = self.columns
        if c is None:
            return feature_columns(self.records, names, numeric)
        return {n: c.number(n) if numeric[n] else c.values(n) for n in names}

    def category_counts(self, name: str) -> dict[Any, int]:
        """Category -> count of a categorical feature (those that occur)."""
        if self.columns is None:
            return dict(Counter(r.features[name] for r in self.records))
        codes, names = self.columns.coded(name)
        counts = np.bincount(codes)
        return {names[c]: int(counts[c]) for c in np.flatnonzero(counts).tolist()}

    def predictions(self) -> list[Any]:
        if self.columns is None:
            return [r.prediction for r in self.records]
        return self.columns.predictions

    def raw_inputs(self) -> list[Any]:
        if self.columns is None:
            return [r.raw_input for r in self.records]
        if self.columns.inputs is None:  # a wiring error, not bad input
            raise ValueError(f"model '{self.model}', window {self.index}: raw inputs were "
                             "not kept (the window's layout has keep_inputs=False)")
        return self.columns.inputs


def feature_columns(records: Sequence[Any], names: Sequence[str],
                    numeric: Mapping[str, bool]) -> dict[str, np.ndarray]:
    """The records' features as one contiguous array per feature (float64, or object for
    categorical ones).

    Built with one C-level getter call per record and one numpy conversion per kind, rather
    than a Python step per (record, feature): at a million rows and 50 features that step
    cost more than the drift tests themselves.
    """
    out: dict[str, np.ndarray] = {}
    features = list(map(attrgetter("features"), records))
    for kind, dtype in ((True, np.float64), (False, object)):
        group = [n for n in names if numeric[n] is kind]
        if not group:
            continue
        rows = list(map(itemgetter(*group), features))
        # one name: itemgetter returns the value itself, not a 1-tuple
        table = np.array(rows, dtype=dtype).reshape(len(features), len(group))
        columns = np.ascontiguousarray(table.T)  # one copy; each row below is a view
        out.update(zip(group, columns, strict=True))
    return {n: out[n] for n in names}


def _close(model: str, w: OpenWindow) -> ClosedWindow:
    columns = w.buffer.close() if w.buffer is not None else None
    return ClosedWindow(model, w.index, w.start, w.end, tuple(w.records), dict(w.offsets),
                        columns)


class CountWindows:
    """Tumbling windows of ``size`` records; indices continue from ``next_index``."""

    def __init__(self, model: str, size: int, next_index: int = 0,
                 layout: ColumnLayout | None = None) -> None:
        if size < 2:
            raise ValueError(f"size must be at least 2, got {size}")
        self.model = model
        self.size = size
        self.layout = layout
        self._open = self._new(next_index)

    def _new(self, index: int) -> OpenWindow:
        buffer = None if self.layout is None else ColumnBuffer(self.layout, self.size)
        return OpenWindow(index, math.inf, -math.inf, buffer=buffer)

    @property
    def open_index(self) -> int:
        """The index of the window the next record goes into."""
        return self._open.index

    def add(self, record: Timestamped, tp: TopicPartition, offset: int) -> list[ClosedWindow]:
        w = self._open
        w.add(record, tp, offset)
        ts = record.timestamp
        if ts < w.start:
            w.start = ts
        if ts > w.end:
            w.end = ts
        if w.n < self.size:
            return []
        self._open = self._new(w.index + 1)
        return [_close(self.model, w)]

    def open_windows(self) -> Iterator[OpenWindow]:
        if self._open.n:
            yield self._open

    def seal(self) -> None:
        """End of a batch: see :meth:`OpenWindow.seal`."""
        self._open.seal()


class TimeWindows:
    """Event-time tumbling windows of ``seconds``, aligned to the Unix epoch.

    A window closes once a record arrives whose timestamp is past the window's end plus
    ``allowed_lateness``; a record for an already closed window is rejected as ``late``
    (it goes to the dead-letter topic rather than vanishing).
    """

    def __init__(self, model: str, seconds: float, allowed_lateness: float = 0.0,
                 last_closed_index: int | None = None,
                 layout: ColumnLayout | None = None) -> None:
        if seconds <= 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        self.model = model
        self.layout = layout
        self.seconds = seconds
        self.lateness = allowed_lateness
        self._open: dict[int, OpenWindow] = {}
        self._last_closed = -math.inf if last_closed_index is None else last_closed_index
        self._watermark = -math.inf

    def add(self, record: Timestamped, tp: TopicPartition, offset: int) -> list[ClosedWindow]:
        index = math.floor(record.timestamp / self.seconds)
        if index <= self._last_closed:
            raise RecordError(
                "late", f"timestamp {record.timestamp} falls in window {index} of model "
                f"'{self.model}', already closed")
        w = self._open.get(index)
        if w is None:
            buffer = (None if self.layout is None
                      else ColumnBuffer(self.layout, INITIAL_CAPACITY))
            w = self._open[index] = OpenWindow(index, index * self.seconds,
                                               (index + 1) * self.seconds, buffer=buffer)
        w.add(record, tp, offset)
        self._watermark = max(self._watermark, record.timestamp - self.lateness)
        due = sorted(i for i, ow in self._open.items() if ow.end <= self._watermark)
        closed = []
        for i in due:
            closed.append(_close(self.model, self._open.pop(i)))
            self._last_closed = max(self._last_closed, i)
        return closed

    def open_windows(self) -> Iterator[OpenWindow]:
        yield from self._open.values()

    def seal(self) -> None:
        """End of a batch: see :meth:`OpenWindow.seal`."""
        for w in self._open.values():
            w.seal()
