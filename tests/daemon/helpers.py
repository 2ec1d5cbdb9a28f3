"""Shared builders for the daemon's unit tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monitor.settings import Settings, parse_settings
from monitor.synthetic import SyntheticStream


def synthetic_settings(tmp_path: Path, stream: SyntheticStream, *, window: int = 1000,
                       db: Path | None = None, **model_over: Any) -> Settings:
    ref = stream.write_reference_csv(tmp_path / "reference.csv", 4000)
    model = stream.settings_doc(ref, window)
    model.update(model_over)
    return parse_settings({
        "storage": {"url": f"sqlite:///{db or tmp_path / 'results.db'}"},
        "metrics": {"address": "127.0.0.1", "port": 0},
        "models": [model],
    }, env={})
