"""The import names resolve to this tree (PyPI has unrelated 'detectors'/'embeddings')."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["monitor", "detectors", "embeddings"])
def test_package_resolves_to_this_repository(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().parent == ROOT / name


#: Library packages -> the top-level packages they must never import. The libraries are
#: usable without the daemon; ``detectors`` also works without the embedding stack (torch).
FORBIDDEN: dict[str, frozenset[str]] = {
    "detectors": frozenset({"monitor", "embeddings"}),
    "embeddings": frozenset({"monitor"}),
    "training": frozenset({"monitor"}),  # checked once the package exists
}


def module_name(path: Path, root: Path = ROOT) -> str:
    """Dotted name of the module at ``path`` (``pkg/__init__.py`` -> ``pkg``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports, anywhere in it (functions, classes, ``if`` and
    ``try`` blocks, ``TYPE_CHECKING``): ``import a.b``, ``from a.b import c`` (as ``a.b`` and
    ``a.b.c``), relative imports resolved against ``module``, and
    ``importlib.import_module`` / ``__import__`` calls with a literal name. Text in strings,
    docstrings and comments is not code and does not count."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if base:
                found.add(base)
            found.update(f"{base}.{a.name}" if base else a.name for a in node.names
                         if a.name != "*")
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in ("__import__", "import_module")))):
            found.add(node.args[0].value)
    return found


def violations(source: str, module: str, forbidden: frozenset[str],
               is_package: bool = False) -> list[str]:
    """The imports of ``source`` whose top-level package is in ``forbidden``."""
    return sorted(m for m in imported_modules(source, module, is_package)
                  if m.split(".")[0] in forbidden)


def test_libraries_do_not_import_the_daemon() -> None:
    checked, bad = 0, []
    for pkg, forbidden in FORBIDDEN.items():
        if not (ROOT / pkg).is_dir():
            assert pkg == "training", f"library package {pkg}/ is missing"
            continue
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found = violations(path.read_text(encoding="utf-8"), module_name(path), forbidden,
                               path.name == "__init__.py")
            bad += [f"{path.relative_to(ROOT)}: imports {m}" for m in found]
            checked += 1
    assert checked > 30  # the walk really read the packages
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source", [
    "import monitor",
    "import monitor.metrics as m",
    "import numpy, monitor.app",
    "from monitor import metrics",
    "from monitor.settings import Settings",
    "def f():\n    from monitor.app import build_daemon\n    return build_daemon",
    "class C:\n    def m(self):\n        import monitor\n",
    "try:\n    import embeddings\nexcept ImportError:\n    pass",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from embeddings import base",
    # beyond the top-level package (Python refuses it too): flagged, conservatively
    "from ...monitor import app",
    "import importlib\nimportlib.import_module('monitor.app')",
    "__import__('embeddings')",
])
def test_the_import_checker_finds_violations(source: str) -> None:
    # as if this were detectors/sub/mod.py (relative imports resolve against detectors.sub)
    found = violations(source, "detectors.sub.mod", FORBIDDEN["detectors"])
    assert found, f"missed a forbidden import in {source!r}"


@pytest.mark.parametrize("source", [
    '"""Use from monitor import metrics: the daemon builds on this package."""',
    "# import monitor\nx = 'import embeddings'",
    "import monitoring\nfrom embeddings_extra import x",
    "from . import embeddings",  # detectors.sub.embeddings: inside the library
    "from .monitor import helpers",
    "from .. import monitor",  # detectors.monitor, a module of the library itself
    "import numpy as np\nfrom detectors.results import DriftResult",
])
def test_the_import_checker_allows_what_is_not_an_import(source: str) -> None:
    assert violations(source, "detectors.sub.mod", FORBIDDEN["detectors"]) == []


def test_relative_imports_resolve_from_a_package_init() -> None:
    # in detectors/__init__.py, "." is detectors itself and ".." the top level
    assert imported_modules("from .ks import KSDetector", "detectors", is_package=True) >= {
        "detectors.ks"}
    assert violations("from . import embeddings", "detectors", FORBIDDEN["detectors"],
                      is_package=True) == []  # detectors.embeddings
    assert module_name(ROOT / "detectors" / "__init__.py") == "detectors"
    assert module_name(ROOT / "embeddings" / "cache.py") == "embeddings.cache"


def test_console_script_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'driftline = "monitor.cli:main"' in text
    assert 'name = "driftline"' in text
