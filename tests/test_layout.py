"""The import names resolve to this tree (PyPI has unrelated 'detectors'/'embeddings')."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["monitor", "detectors", "embeddings"])
def test_package_resolves_to_this_repository(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().parent == ROOT / name


def test_libraries_do_not_import_the_daemon() -> None:
    for pkg in ("detectors", "embeddings"):
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text()
            assert "import monitor" not in text and "from monitor" not in text, path
    for path in (ROOT / "detectors").rglob("*.py"):
        assert "embeddings" not in path.read_text().split('"""')[-1], path


def test_console_script_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'driftline = "monitor.cli:main"' in text
    assert 'name = "driftline"' in text
