"""Schema migrations against a real PostgreSQL: the SQLite checks (a 0.1.0 database adopted,
models == migrations, ...), plus replicas migrating at once and errors without passwords."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from monitor.cli import main
from monitor.errors import SinkError

HEAD = "0004_model_versions"  # the newest revision

pytestmark = pytest.mark.integration


def _migration_checks() -> Any:
    # The backend-independent checks live with the SQLite tests (tests/daemon is not a package).
    path = Path(__file__).resolve().parents[1] / "daemon" / "test_migrations.py"
    spec = importlib.util.spec_from_file_location("driftline_migration_checks", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checks = _migration_checks()


@pytest.mark.parametrize("check", [
    checks.check_legacy_database_is_adopted,
    checks.check_empty_database_reaches_head,
    checks.check_failed_migration_changes_nothing,
    checks.check_models_match_migrations,
    checks.check_error_windows_and_dead_letter_marks,
    checks.check_predictions_of_several_models,
    checks.check_reader_ranges,
], ids=lambda f: f.__name__.removeprefix("check_"))
def test_postgres(postgres_url: str, check: Any) -> None:
    assert postgres_url.startswith("postgresql")
    check(postgres_url)


def test_revision_0001_is_release_0_1_0(fresh_db: Callable[[str], str]) -> None:
    checks.check_revision_0001_is_release_0_1_0(fresh_db("mig_a"), fresh_db("mig_b"))


def test_cli_db_upgrade_and_current(postgres_url: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    checks.check_cli_upgrades_and_reports_the_revision(postgres_url, tmp_path, capsys)


@pytest.mark.parametrize("legacy", [False, True], ids=["empty", "release-0.1.0"])
def test_replicas_migrating_together_both_succeed(postgres_url: str, legacy: bool) -> None:
    if legacy:
        checks.make_legacy_database(postgres_url)
    n = 4
    barrier = threading.Barrier(n)
    outcomes: list[object] = [None] * n

    def start(i: int) -> None:
        store = checks.SqlStore(postgres_url)
        try:
            barrier.wait(timeout=30)
            outcomes[i] = store.migrate()
        except Exception as exc:
            outcomes[i] = exc
        finally:
            store.close()

    threads = [threading.Thread(target=start, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert outcomes == [HEAD] * n
    assert checks.version_rows(postgres_url) == [HEAD]
    assert checks.schema_diff(postgres_url) == []
    if legacy:
        with checks.store_at(postgres_url) as store:
            assert store.last_window_index() == {"credit-risk": 1}


def test_unreachable_server_errors_name_no_password(postgres_url: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from services.ports import free_port

    dead = (postgres_url.rsplit("@", 1)[0] + ":s3cret-pw"
            + f"@127.0.0.1:{free_port()}/nowhere")
    with checks.store_at(dead) as store, pytest.raises(SinkError) as info:
        store.migrate()
    message = str(info.value)
    assert "cannot create tables" in message and "OperationalError" in message
    assert "s3cret-pw" not in message and "127.0.0.1" in message
    config = checks.settings_file(tmp_path, dead)
    assert main(["db", "upgrade", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("driftline: error: ") and "s3cret-pw" not in err
    assert main(["db", "current", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("driftline: error: ") and "s3cret-pw" not in err
