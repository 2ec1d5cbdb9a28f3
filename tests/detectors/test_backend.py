"""detectors.backend: explicit device selection, no silent fallback, torch stays optional."""

from __future__ import annotations

import importlib.abc
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from detectors import DetectorError
from detectors import backend as backend_module
from detectors.backend import DeviceUnavailableError, require_torch, resolve_device

ROOT = Path(__file__).resolve().parents[2]
HINT = "pip install 'driftline[embeddings]'"


def without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int = 2, current: int = 1) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)


def test_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_is_cpu_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    without_cuda(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_and_cuda_pick_the_current_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_an_error_not_a_fallback(
    monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    without_cuda(monkeypatch)
    with pytest.raises(DeviceUnavailableError, match=f"'{device}'") as info:
        resolve_device(device)
    assert isinstance(info.value, DetectorError)


def test_missing_cuda_index_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, count=2)
    with pytest.raises(DeviceUnavailableError, match=r"'cuda:2'.*2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("device", ["gpu", "CPU", "cuda:", "cuda:-1", "cuda:x", "cpu:0", "", "mps"])
def test_unknown_device_names_are_rejected(device: str) -> None:
    with pytest.raises(ValueError, match="device"):
        resolve_device(device)


@pytest.mark.parametrize("device", [None, 0, torch.device("cpu")])
def test_device_must_be_a_string(device: object) -> None:
    with pytest.raises(TypeError, match="device"):
        resolve_device(device)  # type: ignore[arg-type]


class BlockTorch(importlib.abc.MetaPathFinder):
    """Makes `import torch` fail as if torch were not installed."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


def test_missing_torch_raises_import_error_with_the_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from detectors.ks_torch import TorchKSDetector, ks_statistics_torch
    from detectors.mmd import MMDDetector

    # (not sys.modules["torch"] = None: scipy's array-API helpers look torch up there)
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(sys, "meta_path", [BlockTorch(), *sys.meta_path])
    calls = [
        lambda: require_torch(),
        lambda: resolve_device("cpu"),
        lambda: MMDDetector(np.zeros((5, 2)), backend="torch"),
        lambda: TorchKSDetector({"x": np.arange(5.0)}),
        lambda: ks_statistics_torch(None, None),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(ImportError) as info:
            call()
        assert str(info.value).endswith(HINT)
    # the numpy backend needs no torch
    assert MMDDetector(np.eye(5), n_permutations=5, alpha=0.2).test(np.eye(5)).p_value is not None
    assert backend_module.TORCH_HINT == HINT


def test_detectors_import_without_torch() -> None:
    code = textwrap.dedent(
        """
        import importlib.abc, sys

        class BlockTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError(f"No module named {name!r}")

        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        import detectors
        from detectors import backend, c2st, ks_torch, mmd
        x = np.random.default_rng(0).normal(size=(20, 3))
        mmd.MMDDetector(x, n_permutations=9).test(x + 1)
        c2st.ClassifierTwoSampleDetector(x).test(x + 1)
        assert "torch" not in sys.modules
        try:
            mmd.MMDDetector(x, backend="torch")
        except ImportError as exc:
            assert str(exc).endswith("pip install 'driftline[embeddings]'"), exc
        else:
            raise SystemExit("backend='torch' without torch did not raise ImportError")
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "auto"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_cuda(device: str) -> None:
    resolved = resolve_device(device)
    assert resolved.type == "cuda" and resolved.index is not None
    assert torch.ones(1, device=resolved).item() == 1.0
