"""monitor.storage.SqlStore against a real PostgreSQL: the SQLite checks, plus what only a
strict server enforces (column widths, 64-bit offsets)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from monitor.errors import SinkError

pytestmark = pytest.mark.integration


def _storage_checks() -> Any:
    # The backend-independent checks live with the SQLite tests (tests/daemon is not a package).
    path = Path(__file__).resolve().parents[1] / "daemon" / "test_storage.py"
    spec = importlib.util.spec_from_file_location("driftline_storage_checks", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checks = _storage_checks()


@pytest.mark.parametrize("check", [
    checks.check_rewrite_is_idempotent,
    checks.check_offsets_keep_the_max,
    checks.check_last_window_index,
    checks.check_state_survives_reopening,
    checks.check_nan_is_stored_as_null,
    checks.check_failed_flush_writes_nothing,
    checks.check_detector_state_is_stored_with_its_window,
], ids=lambda f: f.__name__.removeprefix("check_"))
def test_postgres(postgres_url: str, check: Any) -> None:
    assert postgres_url.startswith("postgresql")
    check(postgres_url)


def test_value_the_server_rejects_rolls_back_the_whole_flush(postgres_url: str) -> None:
    with checks.opened(postgres_url) as store:
        checks.save(store, checks.report(0))
        store.write(checks.report(1))
        store.write(checks.report(0, model="m" * 300))  # model is VARCHAR(200)
        with pytest.raises(SinkError, match="SQL write failed"):
            store.flush()
        assert store.last_window_index() == {"credit-risk": 0}
        assert store.stored_offsets() == {("credit-risk", "logs", 0): 99}
        checks.save(store, checks.report(1))  # the connection is usable again afterwards
        assert store.last_window_index() == {"credit-risk": 1}


def test_unreachable_server_raises_sink_error(postgres_url: str) -> None:
    from services.ports import free_port

    dead = postgres_url.rsplit("@", 1)[0] + f"@127.0.0.1:{free_port()}/nowhere"
    store = checks.SqlStore(dead)
    try:
        with pytest.raises(SinkError, match="cannot create tables"):
            store.create_schema()
        store.write(checks.report(0))
        with pytest.raises(SinkError, match="OperationalError"):
            store.flush()
    finally:
        store.close()
