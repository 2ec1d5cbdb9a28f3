"""monitor.storage.SqlStore on SQLite: idempotent upserts, replay marks, NULL for NaN, errors.

The ``check_*`` functions take a database URL and hold the backend-independent assertions;
tests/integration/test_storage_postgres.py runs the same functions against PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from detectors import DriftResult, FeatureResult
from detectors.streaming import DDM
from monitor.errors import SinkError
from monitor.report import WindowReport
from monitor.storage import OffsetRow, ResultRow, SqlStore, WindowRow

NAN = float("nan")


# --- builders --------------------------------------------------------------------------------


def ks_result(p: float | None = 0.2, stat: float = 0.05, *, drifted: bool = False,
              n_current: int = 100) -> DriftResult:
    feats = (
        FeatureResult("income", stat, p, None if p is None else min(1.0, 2 * p), drifted,
                      5000, n_current),
        FeatureResult("age", stat / 2, 0.9 if p is not None else None,
                      1.0 if p is not None else None, False, 5000, n_current),
    )
    return DriftResult("ks", stat, None if p is None else min(1.0, 2 * p), 0.05, drifted,
                       5000, n_current, "bonferroni", feats)


def chi2_result(p: float | None = 0.6, stat: float = 3.5, *, drifted: bool = False,
                n_current: int = 100) -> DriftResult:
    feats = (FeatureResult("country", stat, p, p, drifted, 5000, n_current),)
    return DriftResult("chi2", stat, p, 0.05, drifted, 5000, n_current, "bonferroni", feats)


def report(index: int = 0, *, model: str = "credit-risk",
           offsets: Mapping[tuple[str, int], tuple[int, int]] | None = None,
           results: tuple[DriftResult, ...] | None = None, n_records: int = 100,
           evaluated_at: float = 1_763_856_000.0) -> WindowReport:
    lo = index * n_records
    return WindowReport(
        model=model, window_index=index, window_start=1_763_856_000.0 + lo,
        window_end=1_763_856_000.0 + lo + n_records - 1, n_records=n_records,
        results=results if results is not None else (ks_result(), chi2_result()),
        offsets=offsets if offsets is not None else {("logs", 0): (lo, lo + n_records - 1)},
        evaluated_at=evaluated_at)


@contextmanager
def opened(url: str) -> Iterator[SqlStore]:
    store = SqlStore(url)
    try:
        store.create_schema()
        yield store
    finally:
        store.close()


def save(store: SqlStore, *reports: WindowReport) -> None:
    for r in reports:
        store.write(r)
    store.flush()


def counts(store: SqlStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {cls.__tablename__: conn.execute(select(func.count()).select_from(cls)).scalar_one()
                for cls in (WindowRow, ResultRow, OffsetRow)}


def raw_results(store: SqlStore) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(ResultRow.__table__).order_by(
            ResultRow.model, ResultRow.window_index, ResultRow.detector))
        return [dict(r._mapping) for r in rows]


# --- checks shared with the PostgreSQL tests -------------------------------------------------


def check_rewrite_is_idempotent(url: str) -> None:
    with opened(url) as store:
        first = report(0, results=(ks_result(0.3, 0.04), chi2_result(0.7, 2.0)),
                       evaluated_at=1_763_856_100.0)
        save(store, first)
        save(store, first)  # a replay after a crash: same window, flushed again
        # ... and twice within one flush
        store.write(first)
        store.write(first)
        store.flush()
        assert counts(store) == {"driftline_windows": 1, "driftline_results": 2,
                                 "driftline_offsets": 1}

        # A re-evaluation of the same window replaces the values; still one row each.
        latest = report(0, results=(ks_result(1e-9, 0.4, drifted=True, n_current=120),
                                    chi2_result(1e-4, 40.0, drifted=True, n_current=120)),
                        n_records=120, offsets={("logs", 0): (0, 119)},
                        evaluated_at=1_763_856_200.0)
        save(store, latest)
        assert counts(store) == {"driftline_windows": 1, "driftline_results": 2,
                                 "driftline_offsets": 1}
        rows = store.results()
        assert [(r["window_index"], r["detector"]) for r in rows] == [(0, "chi2"), (0, "ks")]
        by_det = {r["detector"]: r for r in rows}
        assert by_det["ks"]["drifted"] is True and by_det["chi2"]["drifted"] is True
        assert by_det["ks"]["statistic"] == pytest.approx(0.4)
        assert by_det["ks"]["p_value"] == pytest.approx(2e-9)
        assert by_det["chi2"]["p_value"] == pytest.approx(1e-4)
        assert by_det["ks"]["n_current"] == 120
        assert by_det["ks"]["n_records"] == 120
        assert by_det["ks"]["window_end"] == pytest.approx(1_763_856_000.0 + 119)
        assert by_det["ks"]["offsets"] == {"logs/0": [0, 119]}
        assert [f["feature"] for f in by_det["ks"]["features"]] == ["income", "age"]
        assert by_det["ks"]["features"][0]["drifted"] is True
        with store.engine.connect() as conn:
            evaluated = conn.execute(select(WindowRow.evaluated_at)).scalar_one()
        if evaluated.tzinfo is None:  # SQLite keeps the UTC wall time without its offset
            evaluated = evaluated.replace(tzinfo=UTC)
        assert evaluated == datetime.fromtimestamp(1_763_856_200.0, UTC)


def check_offsets_keep_the_max(url: str) -> None:
    with opened(url) as store:
        assert store.stored_offsets() == {}
        w0 = report(0, offsets={("logs", 0): (0, 60), ("logs", 1): (0, 39)})
        w1 = report(1, offsets={("logs", 0): (61, 130), ("logs", 1): (40, 69)})
        other = report(0, model="fraud", offsets={("logs", 0): (7, 9)})
        save(store, w0, w1, other)
        want = {("credit-risk", "logs", 0): 130, ("credit-risk", "logs", 1): 69,
                ("fraud", "logs", 0): 9}
        assert store.stored_offsets() == want
        save(store, w0)  # an older window re-written (replay): the mark must not move back
        assert store.stored_offsets() == want
        save(store, w1, w0)  # both orders in one transaction
        assert store.stored_offsets() == want
        # Kafka offsets are 64-bit: a long-lived partition passes 2**31.
        big = 3_000_000_000
        save(store, report(2, offsets={("logs", 1): (big, big + 99)}))
        assert store.stored_offsets()[("credit-risk", "logs", 1)] == big + 99
        assert store.results(model="credit-risk")[-1]["offsets"] == {"logs/1": [big, big + 99]}
        assert counts(store)["driftline_offsets"] == 3


def check_last_window_index(url: str) -> None:
    with opened(url) as store:
        assert store.last_window_index() == {}
        save(store, report(0), report(1), report(2), report(0, model="fraud"))
        assert store.last_window_index() == {"credit-risk": 2, "fraud": 0}
        save(store, report(0))  # re-writing an old window does not lower it
        assert store.last_window_index() == {"credit-risk": 2, "fraud": 0}
        save(store, report(5, model="fraud"))
        assert store.last_window_index() == {"credit-risk": 2, "fraud": 5}
        # Time windows are indexed by epoch / seconds: sub-second windows pass 2**31 today.
        time_index = math.floor(1_763_856_000.0 / 0.25)
        save(store, report(time_index, model="fast"))
        assert store.last_window_index()["fast"] == time_index


def check_state_survives_reopening(url: str) -> None:
    with opened(url) as store:
        save(store, report(0), report(1))
    with opened(url) as store:  # a restarted daemon: create_schema() on existing tables
        assert store.last_window_index() == {"credit-risk": 1}
        assert store.stored_offsets() == {("credit-risk", "logs", 0): 199}
        assert counts(store)["driftline_results"] == 4


def check_nan_is_stored_as_null(url: str) -> None:
    with opened(url) as store:
        insufficient = DriftResult(
            "ks", NAN, None, 0.05, False, 5000, 1, "bonferroni",
            (FeatureResult("income", NAN, None, None, False, 5000, 1),), insufficient_data=True)
        infinite = chi2_result(p=NAN, stat=math.inf)
        save(store, report(0, results=(insufficient, infinite), n_records=1))
        rows = {r["detector"]: r for r in raw_results(store)}
        assert rows["ks"]["statistic"] is None and rows["ks"]["p_value"] is None
        assert rows["ks"]["insufficient_data"] is True
        assert rows["chi2"]["statistic"] is None and rows["chi2"]["p_value"] is None
        assert rows["ks"]["features"] == [{
            "feature": "income", "statistic": None, "p_value": None, "adjusted_p_value": None,
            "drifted": False, "n_current": 1}]
        assert rows["chi2"]["features"][0]["statistic"] is None
        assert rows["chi2"]["features"][0]["p_value"] is None
        with store.engine.connect() as conn:
            nulls = conn.execute(text(
                "SELECT count(*) FROM driftline_results "
                "WHERE statistic IS NULL AND p_value IS NULL")).scalar_one()
        assert nulls == 2
        # and a finite value is stored as it is
        save(store, report(1))
        assert {r["detector"]: r["p_value"] for r in store.results()
                if r["window_index"] == 1} == {"ks": pytest.approx(0.4), "chi2": 0.6}


def check_failed_flush_writes_nothing(url: str) -> None:
    with opened(url) as store:
        save(store, report(0))
        with store.engine.begin() as conn:
            conn.execute(text("DROP TABLE driftline_results"))
        store.write(report(1, offsets={("logs", 0): (100, 199)}))
        with pytest.raises(SinkError, match="SQL write failed"):
            store.flush()
        # One transaction: the window row and the offset mark of window 1 were rolled back.
        assert store.last_window_index() == {"credit-risk": 0}
        assert store.stored_offsets() == {("credit-risk", "logs", 0): 99}
        store.flush()  # the failed batch is dropped; the pipeline writes it again to retry
        store.create_schema()
        save(store, report(1, offsets={("logs", 0): (100, 199)}))
        assert store.last_window_index() == {"credit-risk": 1}
        assert store.stored_offsets() == {("credit-risk", "logs", 0): 199}


def check_detector_state_is_stored_with_its_window(url: str) -> None:
    ddm = DDM()
    for x in [0, 1, 0, 0]:
        ddm.update(x)
    fresh = json.dumps(DDM().get_state())  # holds Infinity: no JSON column would take it
    assert "Infinity" in fresh
    with opened(url) as store:
        save(store, dataclasses.replace(report(0), stream="labels",
                                        state={"ddm": fresh, "adwin": "{}"}))
        save(store, dataclasses.replace(report(1), stream="labels",
                                        state={"ddm": json.dumps(ddm.get_state())}))
    with opened(url) as store:  # the last stored window's state, per detector
        states = store.detector_states()
    assert set(states) == {("labels", "credit-risk")}
    assert states[("labels", "credit-risk")]["adwin"] == "{}"
    restored = DDM()
    restored.set_state(json.loads(states[("labels", "credit-risk")]["ddm"]))
    assert restored.get_state() == ddm.get_state()
    with opened(url) as store:  # and it goes with its window: a failed flush keeps neither
        with store.engine.begin() as conn:
            conn.execute(text("DROP TABLE driftline_windows"))
        store.write(dataclasses.replace(report(2), stream="labels", state={"ddm": fresh}))
        with pytest.raises(SinkError):
            store.flush()
        assert json.loads(store.detector_states()[("labels", "credit-risk")]["ddm"]) \
            == ddm.get_state()


# --- SQLite ----------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


def test_rewrite_is_idempotent(sqlite_url: str) -> None:
    check_rewrite_is_idempotent(sqlite_url)


def test_offsets_keep_the_max_and_never_move_back(sqlite_url: str) -> None:
    check_offsets_keep_the_max(sqlite_url)


def test_last_window_index(sqlite_url: str) -> None:
    check_last_window_index(sqlite_url)


def test_state_survives_reopening(sqlite_url: str) -> None:
    check_state_survives_reopening(sqlite_url)


def test_nan_and_inf_are_stored_as_null(sqlite_url: str) -> None:
    check_nan_is_stored_as_null(sqlite_url)


def test_failed_flush_raises_sink_error_and_writes_nothing(sqlite_url: str) -> None:
    check_failed_flush_writes_nothing(sqlite_url)


def test_detector_state_is_stored_with_its_window(sqlite_url: str) -> None:
    check_detector_state_is_stored_with_its_window(sqlite_url)


def test_flush_without_pending_reports_touches_nothing(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        store.flush()  # nothing buffered: no connection, so no file is created
        assert not (tmp_path / "x.db").exists()
    finally:
        store.close()


def test_unreachable_database_raises_sink_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}"
    store = SqlStore(url)
    try:
        with pytest.raises(SinkError, match="cannot create tables"):
            store.create_schema()
        store.write(report(0))
        with pytest.raises(SinkError, match="SQL write failed: OperationalError"):
            store.flush()
    finally:
        store.close()
    store = SqlStore("sqlite:////nonexistent-dir/x.db")
    try:
        store.write(report(0))
        with pytest.raises(SinkError):
            store.flush()
    finally:
        store.close()
