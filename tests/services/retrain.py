"""A SQLite store holding one retraining request (backend and dispatcher tests)."""

from __future__ import annotations

from pathlib import Path

from monitor.retrain.policy import Decision, Window
from monitor.retrain.store import DecisionBuffer, RetrainStore
from monitor.storage import SqlStore


def store_with_request(tmp: Path, state: str = "queued") -> tuple[SqlStore, RetrainStore]:
    store = SqlStore(f"sqlite:///{tmp / 'r.db'}")
    store.migrate()
    buffer = DecisionBuffer()
    store.join_transaction(buffer)
    w = Window("labels", 5, 500.0, 599.0, 100, frozenset({"concept"}))
    buffer.decisions.append(("m", Decision("concept", "retrain", "labels", 4, 400.0, state,
                                           500, w, "test")))
    store.flush()
    return store, RetrainStore(store.engine)
