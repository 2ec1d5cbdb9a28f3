"""The package's public surface, its error tree, and its optional-dependency behaviour."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import embeddings
from embeddings import errors

ROOT = Path(__file__).resolve().parents[2]


def test_all_is_exact_and_sorted_like_ruff_wants() -> None:
    public = {
        name
        for name, value in vars(embeddings).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert set(embeddings.__all__) == public
    for name in embeddings.__all__:
        assert getattr(embeddings, name) is not None


def test_error_tree_is_shallow_with_one_root() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    for cls in classes:
        assert issubclass(cls, embeddings.EmbeddingError)
        if cls is not embeddings.EmbeddingError:
            assert cls.__mro__[1] is embeddings.EmbeddingError, cls
        assert cls.__name__ in errors.__doc__
    assert issubclass(embeddings.PayloadError, ValueError)
    from embeddings.base import EmbeddingError  # the seam's old import path still works

    assert EmbeddingError is embeddings.EmbeddingError


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, embeddings; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_missing_torch_raises_import_error_with_the_install_hint(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(ImportError, match=r"pip install 'driftline\[embeddings\]'"):
        embeddings.resolve_device("cpu")
    with pytest.raises(ImportError, match=r"pip install 'driftline\[embeddings\]'"):
        embeddings.load_torchscript(__file__)
    monkeypatch.setitem(sys.modules, "transformers", None)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ImportError, match="'transformers', which is not installed"):
        embeddings.load_transformers(tmp_path)


def test_the_library_imports_neither_monitor_nor_detectors() -> None:
    for path in (ROOT / "embeddings").rglob("*.py"):
        text = path.read_text()
        for package in ("monitor", "detectors"):
            assert f"import {package}" not in text and f"from {package}" not in text, path


def test_embedder_protocol_is_satisfied() -> None:
    from embeddings import RandomProjection, ReducedEmbedder, TorchEmbedder

    assert {"fingerprint", "embed"} <= set(dir(TorchEmbedder))
    reduced = ReducedEmbedder(
        embedder=type("E", (), {"fingerprint": "x", "embed": lambda self, p: p})(),
        reducer=RandomProjection(2, seed=0),
    )
    assert isinstance(reduced, embeddings.Embedder)
