"""Schema migrations (monitor.storage.migrate) on SQLite: adopting a database made by
release 0.1.0, upgrading an empty one, models == migrations, `driftline db`, errors.

The ``check_*`` functions take database URLs and hold the backend-independent assertions;
tests/integration/test_migrations_postgres.py runs the same functions against PostgreSQL.
The 0.1.0 databases are made from the DDL that release's ``create_all`` emitted, frozen in
tests/daemon/fixtures/schema-0.1.0-<dialect>.sql.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, inspect, select, text

from detectors import DriftResult, FeatureResult
from monitor.cli import main
from monitor.errors import ConfigError, SinkError
from monitor.report import WindowReport
from monitor.storage import (
    VERSION_TABLE,
    Base,
    SqlStore,
    StorageReader,
    StoredFeature,
    head_revision,
)
from monitor.storage.migrate import LEGACY_TABLES, current_revision, upgrade

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXAMPLE = ROOT / "examples" / "driftline.yml"
T0 = 1_763_856_000.0
HEAD = "0004_model_versions"  # the newest revision: model versions and champion switches


# --- a database made by release 0.1.0 ---------------------------------------------------------


def legacy_ddl(dialect: str) -> list[str]:
    """CREATE statements of release 0.1.0 for ``dialect`` (sqlite | postgresql)."""
    sql = (FIXTURES / f"schema-0.1.0-{dialect}.sql").read_text()
    body = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def make_legacy_database(url: str) -> None:
    """The five tables exactly as 0.1.0 made them, with a few rows, and no version table.

    Rows are inserted through the reflected tables, i.e. the frozen schema, never the models.
    """
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for stmt in legacy_ddl(conn.dialect.name):
                conn.exec_driver_sql(stmt)
            legacy = MetaData()
            legacy.reflect(conn)
            assert set(legacy.tables) == LEGACY_TABLES
            t = legacy.tables
            conn.execute(t["driftline_windows"].insert(), [{
                "model": "credit-risk", "stream": "features", "window_index": i,
                "window_start": T0 + 100 * i, "window_end": T0 + 100 * i + 99, "n_records": 100,
                "offsets": {"logs/0": [100 * i, 100 * i + 99]},
                "evaluated_at": datetime.fromtimestamp(T0 + 1000 + i, UTC)} for i in (0, 1)])
            conn.execute(t["driftline_results"].insert(), [{
                "model": "credit-risk", "stream": "features", "window_index": i,
                "detector": det, "statistic": 0.1 * (i + 1), "p_value": None if i else 0.5,
                "threshold": 0.05, "drifted": bool(i), "insufficient_data": False,
                "correction": "bonferroni", "n_reference": 5000, "n_current": 100,
                "features": [{"feature": "income", "statistic": 0.1, "p_value": 0.5,
                              "adjusted_p_value": 1.0, "drifted": False, "n_current": 100}],
            } for i in (0, 1) for det in ("chi2", "ks")])
            conn.execute(t["driftline_offsets"].insert(), [
                {"model": "credit-risk", "stream": "features", "topic": "logs", "partition": 0,
                 "max_offset": 199},
                {"model": "credit-risk", "stream": "features", "topic": "logs", "partition": 1,
                 "max_offset": 3_000_000_000}])
            conn.execute(t["driftline_predictions"].insert(), [
                {"model": "credit-risk", "request_id": "r1", "prediction": {"p": 0.9},
                 "timestamp": T0 + 5}])
            conn.execute(t["driftline_detector_state"].insert(), [
                {"model": "credit-risk", "stream": "labels", "detector": "ddm",
                 "window_index": 1, "state": '{"n": Infinity}'}])
    finally:
        engine.dispose()


# --- helpers -------------------------------------------------------------------------------------


@contextmanager
def store_at(url: str) -> Iterator[SqlStore]:
    store = SqlStore(url)
    try:
        yield store
    finally:
        store.close()


def version_rows(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())
    finally:
        engine.dispose()


def schema_diff(url: str) -> list[Any]:
    """Alembic autogenerate's differences between the models and the database at ``url``."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE,
                                                         "compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def error_report(index: int, *, model: str = "credit-risk") -> WindowReport:
    lo = 100 * index
    return WindowReport(model=model, window_index=index, window_start=T0 + lo,
                        window_end=T0 + lo + 99, n_records=100, results=(),
                        offsets={("logs", 0): (lo, lo + 99)}, evaluated_at=T0 + 2000,
                        error="ValueError: reference has no column 'income'")


def ok_report(index: int, *, model: str = "credit-risk") -> WindowReport:
    feats = (FeatureResult("income", 0.05, 0.2, 0.4, False, 5000, 100),)
    res = DriftResult("ks", 0.05, 0.4, 0.05, False, 5000, 100, "bonferroni", feats)
    return dataclasses.replace(error_report(index, model=model), results=(res,), error=None)


# --- checks shared with the PostgreSQL tests ------------------------------------------------


def check_legacy_database_is_adopted(url: str) -> None:
    make_legacy_database(url)
    with store_at(url) as store:
        assert store.migrate() == head_revision() == HEAD
        assert version_rows(url) == [HEAD]
        assert schema_diff(url) == []
        # Every 0.1.0 row is still there and readable, through the new reader ...
        reader = store.reader
        assert reader.models() == ["credit-risk"]
        assert reader.models("labels") == []
        wins = reader.windows("credit-risk")
        assert [(w.window_index, w.n_records, w.error) for w in wins] == \
            [(0, 100, None), (1, 100, None)]
        assert wins[1].offsets == {("logs", 0): (100, 199)}
        assert wins[1].evaluated_at == datetime.fromtimestamp(T0 + 1001, UTC)
        wr = reader.window_results("credit-risk", first=1)
        assert len(wr) == 1 and wr[0].window.window_index == 1
        assert [(r.detector, r.drifted, r.p_value) for r in wr[0].results] == \
            [("chi2", True, None), ("ks", True, None)]
        assert wr[0].results[0].features == (
            StoredFeature("income", 0.1, 0.5, 1.0, False, 100),)
        # ... and through the writer's restart state and legacy reader.
        assert store.stored_offsets() == {("credit-risk", "logs", 0): 199,
                                          ("credit-risk", "logs", 1): 3_000_000_000}
        assert store.last_window_index() == {"credit-risk": 1}
        assert store.detector_states() == {("labels", "credit-risk"): {"ddm": '{"n": Infinity}'}}
        assert store.lookup_predictions(["r1", "r2"]) == {
            "r1": [("credit-risk", {"p": 0.9}, T0 + 5)]}
        assert len(store.results("credit-risk")) == 4
        # The new column and table work on the adopted database.
        store.write(error_report(2))
        store.write_dead_letter_marks({("logs", 0): 41})
        store.flush()
        assert reader.windows("credit-risk", first=2)[0].error \
            == "ValueError: reference has no column 'income'"
        assert reader.window_results("credit-risk", first=2)[0].results == ()
        assert store.dead_letter_marks() == {("logs", 0): 41}
    with store_at(url) as store:  # a second start: nothing to do, nothing changes
        assert store.migrate() == HEAD
        assert version_rows(url) == [HEAD]
        assert len(store.reader.windows(None)) == 3
        assert store.dead_letter_marks() == {("logs", 0): 41}


def check_failed_migration_changes_nothing(url: str) -> None:
    # A 0.1.0 database whose upgrade fails half-way (a table in the way of 0002's) is left
    # exactly as it was: stamp and upgrade are one transaction (SQLite: BEGIN IMMEDIATE).
    make_legacy_database(url)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE driftline_deadletter_marks (x INTEGER)"))
        with store_at(url) as store, pytest.raises(SinkError, match="cannot create tables"):
            store.migrate()
        insp = inspect(engine)
        assert VERSION_TABLE not in insp.get_table_names()  # not even the stamp was kept
        assert "error" not in {c["name"] for c in insp.get_columns("driftline_windows")}
    finally:
        engine.dispose()


def check_empty_database_reaches_head(url: str) -> None:
    with store_at(url) as store:
        assert store.reader.engine is store.engine
        assert store.migrate() == HEAD
        assert store.migrate() == HEAD
        store.create_schema()  # the old name still works
    assert version_rows(url) == [HEAD]
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert tables == LEGACY_TABLES | {"driftline_deadletter_marks", VERSION_TABLE,
                                      "driftline_retrain_requests", "driftline_retrain_events",
                                      "driftline_training_capture", "driftline_model_versions",
                                      "driftline_champion_switches"}


def check_models_match_migrations(url: str) -> None:
    # Alembic alone (no repair of missing tables), then autogenerate's diff: empty.
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            assert upgrade(conn) == (None, HEAD)
        with engine.connect() as conn:
            assert current_revision(conn) == HEAD
    finally:
        engine.dispose()
    assert schema_diff(url) == []


def check_revision_0001_is_release_0_1_0(url_migrated: str, url_legacy: str) -> None:
    engine = create_engine(url_migrated)
    try:
        with engine.begin() as conn:
            upgrade(conn, "0001")
    finally:
        engine.dispose()
    make_legacy_database(url_legacy)
    legacy_engine = create_engine(url_legacy)
    engine = create_engine(url_migrated)
    try:
        frozen = MetaData()
        with legacy_engine.connect() as conn:
            frozen.reflect(conn)
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE,
                                                         "compare_type": True})
            assert compare_metadata(ctx, frozen) == []
    finally:
        engine.dispose()
        legacy_engine.dispose()


def check_error_windows_and_dead_letter_marks(url: str) -> None:
    with store_at(url) as store:
        store.migrate()
        store.write_dead_letter_marks({("logs", 0): 10, ("logs", 1): 5})
        store.write_dead_letter_marks({("logs", 0): 7})  # a lower one does not win
        store.flush()  # no report buffered: the marks are written anyway
        assert store.dead_letter_marks() == {("logs", 0): 10, ("logs", 1): 5}
        store.write_dead_letter_marks({("logs", 0): 3, ("logs", 1): 9, ("other", 0): 2})
        store.flush()
        assert store.dead_letter_marks() == {("logs", 0): 10, ("logs", 1): 9, ("other", 0): 2}

        # An error window replaced by a later successful evaluation of it, and the reverse.
        store.write(error_report(0))
        store.write(ok_report(1))
        store.flush()
        got = store.reader.window_results("credit-risk")
        assert [(w.window.error is None, len(w.results)) for w in got] == [(False, 0), (True, 1)]
        store.write(ok_report(0))
        store.flush()
        assert store.reader.windows("credit-risk", last=0)[0].error is None
        assert [r["window_index"] for r in store.results("credit-risk")] == [0, 1]

        # Marks go in the reports' transaction: a failed flush stores neither, and keeps the
        # marks buffered until a flush succeeds (the reports are re-written by the pipeline).
        with store.engine.begin() as conn:
            conn.execute(text("DROP TABLE driftline_results"))
        store.write(ok_report(2))
        store.write_dead_letter_marks({("logs", 0): 50})
        with pytest.raises(SinkError, match="SQL write failed"):
            store.flush()
        assert store.dead_letter_marks()[("logs", 0)] == 10
        assert store.last_window_index() == {"credit-risk": 1}
        store.migrate()  # at head already: recreates the table dropped by hand
        store.write(ok_report(2))  # the pipeline re-writes the reports; the marks are kept
        store.flush()
        assert store.dead_letter_marks()[("logs", 0)] == 50
        assert store.last_window_index() == {"credit-risk": 2}

        # Marks alone that fail stay buffered across failed flushes until one succeeds.
        with store.engine.begin() as conn:
            conn.execute(text("DROP TABLE driftline_deadletter_marks"))
        store.write_dead_letter_marks({("logs", 0): 60})
        for _ in range(2):
            with pytest.raises(SinkError, match="SQL write failed"):
                store.flush()
        store.migrate()
        assert store.dead_letter_marks() == {}
        store.flush()
        assert store.dead_letter_marks() == {("logs", 0): 60}
        store.flush()  # nothing left buffered


def check_predictions_of_several_models(url: str) -> None:
    with store_at(url) as store:
        store.migrate()
        store.write_predictions([("fraud", "r1", 1, T0), ("credit-risk", "r1", 0.2, T0 + 1),
                                 ("credit-risk", "r2", "yes", T0 + 2)])
        store.flush_predictions()
        assert store.lookup_predictions(["r1", "r2", "r3", "r1"]) == {
            "r1": [("credit-risk", 0.2, T0 + 1), ("fraud", 1, T0)],
            "r2": [("credit-risk", "yes", T0 + 2)]}
        assert store.lookup_predictions([]) == {}


def check_reader_ranges(url: str) -> None:
    with store_at(url) as store:
        store.migrate()
        for i in range(5):
            store.write(ok_report(i))
        store.write(ok_report(0, model="fraud"))
        store.write(dataclasses.replace(ok_report(0), stream="labels"))
        store.flush()
    with StorageReader(url) as reader:
        assert reader.models() == ["credit-risk", "fraud"]
        assert reader.models("labels") == ["credit-risk"]
        assert [w.window_index for w in reader.windows("credit-risk", first=1, last=3)] == \
            [1, 2, 3]
        assert [w.window_index for w in reader.windows("credit-risk", "labels")] == [0]
        assert [(r.model, r.window_index) for r in reader.results(None, last=0)] == \
            [("credit-risk", 0), ("fraud", 0)]
        res = reader.results("credit-risk", first=4)[0]
        assert (res.detector, res.p_value, res.threshold, res.correction, res.n_reference) == \
            ("ks", 0.4, 0.05, "bonferroni", 5000)
        with pytest.raises(dataclasses.FrozenInstanceError):
            res.drifted = True  # type: ignore[misc]


def check_cli_upgrades_and_reports_the_revision(url: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = settings_file(tmp_path, url)
    assert main(["db", "current", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("none (no driftline tables")
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert f"upgraded from revision none to {HEAD}" in capsys.readouterr().out
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert f"already at revision {HEAD}" in capsys.readouterr().out
    assert main(["db", "current", "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"{HEAD} (head)\n"


def settings_file(tmp_path: Path, url: str) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["storage"]["url"] = url
    path = tmp_path / "driftline.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


# --- SQLite --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_driftline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("DRIFTLINE__"):
            monkeypatch.delenv(var)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


def test_legacy_database_is_adopted(sqlite_url: str) -> None:
    check_legacy_database_is_adopted(sqlite_url)


def test_failed_migration_changes_nothing(sqlite_url: str) -> None:
    check_failed_migration_changes_nothing(sqlite_url)


def test_empty_database_reaches_head(sqlite_url: str) -> None:
    check_empty_database_reaches_head(sqlite_url)


def test_models_match_migrations(sqlite_url: str) -> None:
    check_models_match_migrations(sqlite_url)


def test_revision_0001_is_release_0_1_0(tmp_path: Path) -> None:
    check_revision_0001_is_release_0_1_0(f"sqlite:///{tmp_path / 'a.db'}",
                                         f"sqlite:///{tmp_path / 'b.db'}")


def test_error_windows_and_dead_letter_marks(sqlite_url: str) -> None:
    check_error_windows_and_dead_letter_marks(sqlite_url)


def test_predictions_of_several_models(sqlite_url: str) -> None:
    check_predictions_of_several_models(sqlite_url)


def test_reader_ranges(sqlite_url: str) -> None:
    check_reader_ranges(sqlite_url)


def test_cli_db_upgrade_and_current(sqlite_url: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    check_cli_upgrades_and_reports_the_revision(sqlite_url, tmp_path, capsys)


def test_cli_db_current_on_a_legacy_database(sqlite_url: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    make_legacy_database(sqlite_url)
    config = settings_file(tmp_path, sqlite_url)
    assert main(["db", "current", "--config", str(config)]) == 0
    assert "tables of driftline 0.1.0, not versioned yet" in capsys.readouterr().out
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert f"upgraded from revision none to {HEAD}" in capsys.readouterr().out


def test_unreachable_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}"
    with store_at(url) as store, pytest.raises(SinkError, match="cannot create tables"):
        store.migrate()
    config = settings_file(tmp_path, url)
    assert main(["db", "upgrade", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("driftline: error: cannot ")
    assert f"database at sqlite:///{tmp_path}" in err and "OperationalError" in err
    assert main(["db", "current", "--config", str(config)]) == 2
    assert "cannot read the schema revision" in capsys.readouterr().err


def test_database_of_a_newer_release_is_refused(sqlite_url: str) -> None:
    with store_at(sqlite_url) as store:
        store.migrate()
        with store.engine.begin() as conn:
            conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
        with pytest.raises(SinkError, match=r"0099.*newer driftline"):
            store.migrate()


def test_bad_url_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="not a usable SQLAlchemy URL"):
        SqlStore("nosuchdialect://u:s3cret@host/db")
    with pytest.raises(ConfigError, match=r"storage\.url"):
        StorageReader("nosuchdialect://u:s3cret@host/db")
    config = settings_file(tmp_path, "nosuchdialect://u:s3cret@host/db")
    assert main(["db", "upgrade", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "driftline: error: storage.url" in err and "s3cret" not in err


def test_reading_an_unmigrated_database_raises_sink_error(sqlite_url: str) -> None:
    make_legacy_database(sqlite_url)  # 0.1.0 has no driftline_windows.error column yet
    with StorageReader(sqlite_url) as reader, pytest.raises(SinkError, match="cannot read"):
        reader.windows("credit-risk")


def test_migration_files_are_package_data() -> None:
    text_ = (ROOT / "pyproject.toml").read_text()
    for pkg in ("monitor.storage", "monitor.storage.migrations",
                "monitor.storage.migrations.versions"):
        assert f'"{pkg}"' in text_
        assert (ROOT / pkg.replace(".", "/") / "__init__.py").is_file()
    assert '"alembic>=' in text_
    assert (ROOT / "monitor/storage/migrations/env.py").is_file()


def test_package_reexports_what_callers_import() -> None:
    import monitor.storage as storage

    for name in ("SqlStore", "WindowRow", "ResultRow", "OffsetRow", "PredictionRow",
                 "DetectorStateRow", "Base", "make_engine"):
        assert hasattr(storage, name), name
    assert select(storage.WindowRow.error) is not None
