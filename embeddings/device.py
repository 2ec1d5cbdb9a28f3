"""Explicit device and precision choice: asking for CUDA without one is an error."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from embeddings._deps import require_torch
from embeddings.errors import DeviceError

__all__ = ["PRECISIONS", "autocast", "resolve_device", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_CUDA = re.compile(r"cuda(?::(\d+))?")


def resolve_device(device: str = "auto") -> Any:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a :class:`torch.device`.

    ``"auto"`` picks CUDA device 0 when CUDA is available and the CPU otherwise; the
    choice is explicit in the result. ``"cuda"``/``"cuda:N"`` on a machine without CUDA,
    or with fewer devices, raises :class:`~embeddings.errors.DeviceError`: a monitor that
    silently fell back to the CPU would fall behind its stream without saying why.
    """
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, got {type(device).__name__}")
    torch = require_torch()
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(device)
    if match is None:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device={device!r} was requested but CUDA is not available "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
            "pass device='cpu' to run on the CPU, or 'auto' to use CUDA only when present"
        )
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device={device!r} was requested but only {count} CUDA device(s) exist")
    return torch.device("cuda", index)


def resolve_precision(precision: str, device: Any) -> Any:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means plain fp32.

    ``"auto"``: bf16 on CUDA devices that support it, fp16 on older ones, fp32 on the CPU
    (CPU autocast is rarely faster and changes the numbers). ``"fp32"`` disables autocast;
    ``"bf16"``/``"fp16"`` force it on any device.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    torch = require_torch()
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: Any, dtype: Any) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``'s type, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return require_torch().autocast(device_type=device.type, dtype=dtype)
