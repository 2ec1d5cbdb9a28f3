"""A SQLite store holding one retraining request (backend and dispatcher tests)."""

from __future__ import annotations

from pathlib import Path

from monitor.retrain.policy import Decision, Window
from monitor.retrain.store import DecisionBuffer, RetrainStore
from monitor.storage import SqlStore


def store_with_request(tmp: Path, state: str = "queued",
                       first_window: int = 4) -> tuple[SqlStore, RetrainStore]:
    """One request of model "m"; its id follows from ``first_window`` (vary it where the
    backend outlives the test, as a shared Ray head does)."""
    store = SqlStore(f"sqlite:///{tmp / 'r.db'}")
    store.migrate()
    buffer = DecisionBuffer()
    store.join_transaction(buffer)
    w = Window("labels", 5, 500.0, 599.0, 100, frozenset({"concept"}))
    buffer.decisions.append(("m", Decision("concept", "retrain", "labels", first_window, 400.0,
                                           state, 500, w, "test")))
    store.flush()
    return store, RetrainStore(store.engine)
