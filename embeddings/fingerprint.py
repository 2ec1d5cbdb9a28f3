"""Content hashes for cache keys: weight files (streamed), payloads, settings."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["sha256_files", "sha256_json", "sha256_payloads"]

_CHUNK = 1 << 20
# Hashing a 90 MB model takes a fraction of a second, but embedders are built per model and
# per layer: remember each file's digest while its size, mtime and inode stay the same.
_memo: dict[tuple[str, int, int, int], str] = {}
_memo_lock = threading.Lock()


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _memo_lock:
        _memo[key] = value
    return value


def sha256_files(paths: Iterable[str | os.PathLike[str]]) -> str:
    """SHA-256 over the bytes of ``paths`` (streamed), their base names and sizes.

    The paths are hashed in sorted order of their base names, so the result does not depend
    on where the model folder lives, only on what is in it.
    """
    files = sorted((Path(p) for p in paths), key=lambda p: (p.name, str(p)))
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{path.stat().st_size}\0{_file_digest(path)}\n".encode())
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value`` (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_payloads(payloads: Sequence[Any] | np.ndarray) -> str:
    """SHA-256 of a sequence of payloads (strings, arrays, JSON-like objects), order included."""
    digest = hashlib.sha256()
    if isinstance(payloads, np.ndarray):
        _update_array(digest, payloads)
        return digest.hexdigest()
    digest.update(f"n={len(payloads)}\n".encode())
    for payload in payloads:
        if isinstance(payload, str):
            data = payload.encode("utf-8", "surrogatepass")
            digest.update(b"s%d\0" % len(data))
            digest.update(data)
        elif isinstance(payload, np.ndarray):
            _update_array(digest, payload)
        else:
            text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_jsonable)
            data = text.encode()
            digest.update(b"j%d\0" % len(data))
            digest.update(data)
    return digest.hexdigest()


def _update_array(digest: Any, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    digest.update(f"a{array.dtype.str}{array.shape}\0".encode())
    digest.update(array.tobytes())


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"dtype": value.dtype.str, "shape": list(value.shape), "data": value.tolist()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")
