from __future__ import annotations

import numpy as np
import pytest

from monitor.errors import RecordError
from monitor.schema import InferenceRecord
from monitor.windows import CountWindows, TimeWindows, feature_columns


def rec(ts: float) -> InferenceRecord:
    return InferenceRecord("m", "1", "r", ts, {"x": 1.0}, 1)


def test_count_windows_close_every_n_and_track_offsets() -> None:
    w = CountWindows("m", 3, next_index=5)
    closed = []
    for off in range(7):
        closed += w.add(rec(float(off)), ("t", off % 2), off)
    assert [c.index for c in closed] == [5, 6]
    assert closed[0].offsets == {("t", 0): (0, 2), ("t", 1): (1, 1)}
    assert (closed[0].start, closed[0].end) == (0.0, 2.0)
    [open_w] = list(w.open_windows())
    assert open_w.offsets == {("t", 0): (6, 6)}


def test_time_windows_close_on_watermark_and_reject_late() -> None:
    w = TimeWindows("m", 10.0, allowed_lateness=5.0)
    assert w.add(rec(1.0), ("t", 0), 0) == []
    assert w.add(rec(12.0), ("t", 0), 1) == []  # watermark 7: window [0,10) still open
    assert w.add(rec(9.0), ("t", 0), 2) == []   # within lateness: accepted
    closed = w.add(rec(15.0), ("t", 0), 3)      # watermark 10 closes [0, 10)
    assert [(c.index, c.start, c.end, len(c.records)) for c in closed] == [(0, 0.0, 10.0, 2)]
    with pytest.raises(RecordError) as info:
        w.add(rec(3.0), ("t", 0), 4)
    assert info.value.reason == "late"


def test_time_windows_resume_after_restart() -> None:
    w = TimeWindows("m", 10.0, last_closed_index=4)
    with pytest.raises(RecordError):
        w.add(rec(45.0), ("t", 0), 0)
    assert w.add(rec(55.0), ("t", 0), 1) == []


def test_feature_columns_match_per_record_columns() -> None:
    records = [InferenceRecord("m", "1", str(i), float(i),
                               {"x": i / 3, "c": f"k{i % 3}", "y": -float(i), "d": "z"}, 1)
               for i in range(7)]
    for names in (("x", "c", "y", "d"), ("x",), ("c",), ("d", "y")):
        numeric = {n: n in ("x", "y") for n in names}
        got = feature_columns(records, names, numeric)
        assert list(got) == list(names)
        for n in names:
            want = np.asarray([r.features[n] for r in records],
                              dtype=np.float64 if numeric[n] else object)
            assert got[n].dtype == want.dtype and got[n].flags.c_contiguous
            assert np.array_equal(got[n], want)
    empty = feature_columns([], ("x", "c"), {"x": True, "c": False})
    assert empty["x"].shape == (0,) and empty["c"].dtype == object
