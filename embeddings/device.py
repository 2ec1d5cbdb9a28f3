"""Explicit device and precision choice: asking for CUDA without one is an error."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from embeddings._deps import require_torch
from embeddings.errors import DeviceError

__all__ = ["BF16_CPU_FLAGS", "PRECISIONS", "autocast", "cpu_flags", "native_bf16_flags",
           "resolve_device", "resolve_precision"]

log = logging.getLogger("driftline.embeddings")

#: /proc/cpuinfo flags of x86 CPUs that compute bf16 natively (AMX tiles, AVX-512 BF16).
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})

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


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); empty where they cannot be read."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def native_bf16_flags(flags: Iterable[str] | None = None) -> frozenset[str]:
    """Which of :data:`BF16_CPU_FLAGS` the CPU has (``flags``: this machine's by default)."""
    return BF16_CPU_FLAGS & frozenset(cpu_flags() if flags is None else flags)


def resolve_precision(precision: str, device: Any,
                      cpu_flag_set: Iterable[str] | None = None) -> Any:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means plain fp32.

    ``"auto"``: bf16 on CUDA devices that support it, fp16 on older ones; on the CPU bf16
    where it has native bf16 (AMX or AVX-512 BF16: 2.2-3x faster than fp32 for MiniLM and
    ResNet-18, cosine >= 0.99998 to fp32), else fp32 (emulated bf16 is slower and changes the
    numbers). The CPU choice is logged. ``"fp32"`` disables autocast; ``"bf16"``/``"fp16"``
    force it on any device. ``cpu_flag_set`` overrides the detected CPU flags (tests).
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
    if device.type == "cpu":
        native = native_bf16_flags(cpu_flag_set)
        if native:
            log.info("precision auto on the CPU: bf16 (native bf16: %s)",
                     ", ".join(sorted(native)))
            return torch.bfloat16
        log.info("precision auto on the CPU: fp32 (no AMX or AVX-512 BF16 flags; "
                 "precision: bf16 forces it)")
        return None
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: Any, dtype: Any) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``'s type, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return require_torch().autocast(device_type=device.type, dtype=dtype)
