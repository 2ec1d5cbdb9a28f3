"""Explicit compute-device selection for the torch-backed detectors.

torch is optional: it is imported here, lazily, only when a torch backend is asked for,
so ``import detectors`` works without it. A device that cannot be had is an error,
never a silent fallback to another device.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import TYPE_CHECKING

from .errors import DetectorError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import torch

__all__ = ["DEVICES", "DeviceUnavailableError", "require_torch", "resolve_device"]

#: The forms ``device`` may take (``"cuda:N"`` with ``N`` a device index >= 0).
DEVICES: tuple[str, ...] = ("cpu", "cuda", "cuda:N", "auto")

#: How to get torch; the ImportError of a missing torch ends with this.
TORCH_HINT = "pip install 'driftline[embeddings]'"

_DEVICE = re.compile(r"(cpu|auto|cuda)(?::(\d+))?\Z")


class DeviceUnavailableError(DetectorError, RuntimeError):
    """The requested compute device does not exist on this machine.

    Raised when ``"cuda"`` or ``"cuda:N"`` is asked for and torch sees no CUDA device
    (or fewer than ``N + 1``). The detectors never fall back to the CPU on their own:
    ask for ``"auto"`` to get CUDA when there is one and the CPU otherwise.
    """


def require_torch(what: str = "the torch backend") -> ModuleType:
    """Import and return :mod:`torch`.

    Parameters
    ----------
    what : str
        What needs torch, for the error message.

    Raises
    ------
    ImportError
        torch is not installed; the message says how to install it.
    """
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"{what} requires torch: {TORCH_HINT}") from exc
    return torch


def check_device(device: str) -> str:
    """Validate the spelling of ``device`` without importing torch; return it.

    Raises
    ------
    TypeError
        ``device`` is not a str.
    ValueError
        ``device`` is not ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    """
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, one of {DEVICES}, got {type(device).__name__}")
    match = _DEVICE.match(device)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return device


def resolve_device(device: str) -> torch.device:
    """Turn a device name into a :class:`torch.device` that exists here.

    Parameters
    ----------
    device : {"cpu", "cuda", "cuda:N", "auto"}
        ``"cpu"``; ``"cuda"`` (the current CUDA device); ``"cuda:N"`` (CUDA device
        ``N``); ``"auto"``: the current CUDA device when torch sees one, else the CPU.

    Returns
    -------
    torch.device
        ``device("cpu")`` or ``device("cuda", index)``, always with an explicit index
        for CUDA.

    Raises
    ------
    DeviceUnavailableError
        CUDA was asked for explicitly and is not available (or device ``N`` does not
        exist). There is no fallback to the CPU.
    TypeError, ValueError
        ``device`` is not a str, or not one of the forms above.
    ImportError
        torch is not installed.
    """
    check_device(device)
    torch = require_torch(f"device {device!r}")
    if device == "cpu":
        return torch.device("cpu")
    available = bool(torch.cuda.is_available())
    if device == "auto":
        if not available:
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device())
    if not available:
        raise DeviceUnavailableError(
            f"device {device!r} was requested but torch sees no CUDA device "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "use device='cpu', or 'auto' to take CUDA only when present"
        )
    index = torch.cuda.current_device() if device == "cuda" else int(device.split(":")[1])
    count = int(torch.cuda.device_count())
    if index >= count:
        raise DeviceUnavailableError(
            f"device {device!r} was requested but only {count} CUDA device(s) exist"
        )
    return torch.device("cuda", index)


def resolve_dtype(dtype: str | None, on_cuda: bool) -> str:
    """Validate a compute ``dtype`` name; ``None`` means float32 on CUDA, float64 elsewhere.

    Raises
    ------
    ValueError
        ``dtype`` is not ``None``, ``"float32"`` or ``"float64"``.
    """
    if dtype is None:
        return "float32" if on_cuda else "float64"
    if not isinstance(dtype, str) or dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be None, 'float32' or 'float64', got {dtype!r}")
    return dtype
