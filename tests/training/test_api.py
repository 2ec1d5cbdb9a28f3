"""The public surface: ``training.__all__`` is exact and every module's names are exported."""

from __future__ import annotations

import importlib
import pkgutil

import training


def test_all_names_exist_and_are_sorted() -> None:
    assert all(hasattr(training, name) for name in training.__all__)
    assert list(training.__all__) == sorted(training.__all__, key=lambda n: (not n.isupper(),
                                                                            n))


def test_module_exports_reach_the_package() -> None:
    missing = []
    for info in pkgutil.iter_modules(training.__path__):
        if info.name in ("models", "strategies"):  # reference nets and strategy internals
            continue
        module = importlib.import_module(f"training.{info.name}")
        for name in getattr(module, "__all__", ()):
            if name not in training.__all__ and name not in ("KINDS", "STATUSES", "torch_device",
                                                             "atomic_write_json"):
                missing.append(f"training.{info.name}.{name}")
    assert not missing, missing
