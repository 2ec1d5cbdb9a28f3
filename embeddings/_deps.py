"""Lazy imports of the optional dependencies, failing with the install hint (private)."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'driftline[embeddings]'"


def _require(name: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"{what} needs {name!r}, which is not installed: {INSTALL_HINT}") from exc


def require_torch() -> ModuleType:
    """Return :mod:`torch`, or raise ImportError with the install hint."""
    return _require("torch", "embedding with a model")


def require_transformers() -> ModuleType:
    """Return :mod:`transformers`, or raise ImportError with the install hint."""
    return _require("transformers", "loading a Hugging Face model or tokenizer")


def require_safetensors_torch() -> ModuleType:
    """Return :mod:`safetensors.torch`, or raise ImportError with the install hint."""
    return _require("safetensors.torch", "loading a .safetensors state dict")
