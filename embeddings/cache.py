"""Reference embeddings computed once and kept on disk (``.npy`` + JSON metadata).

The key is a hash of the embedder's fingerprint (weights' bytes, layers, preprocessing,
reduction, ...) and of the reference payloads themselves, so any change to either lands on
a new entry and the old one is simply never read again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from embeddings.base import Embedder
from embeddings.fingerprint import sha256_json, sha256_payloads
from embeddings.progress import Progress

__all__ = ["ReferenceCache"]

_FORMAT = 1
log = logging.getLogger(__name__)


class ReferenceCache:
    """A folder of cached reference embeddings.

    Parameters
    ----------
    directory : path
        Created if missing. Entries are ``<key>.npy`` and ``<key>.json``, written atomically
        (temporary file, then rename; the metadata last, so an entry with metadata is whole).
    chunk_size : int, default 1024
        Payloads embedded per call while computing, the unit of progress.
    progress : bool, default True
        Report progress of computations on ``stream`` (see :class:`~embeddings.progress.Progress`:
        a bar on a terminal, a line at most every 30 s otherwise).
    stream : file, optional
        Where progress goes; default ``sys.stderr``.

    Attributes
    ----------
    hits, misses : int
        Entries read back, and entries computed, by this instance.

    Examples
    --------
    >>> cache = ReferenceCache("/var/cache/driftline")  # doctest: +SKIP
    >>> reference = cache.get_or_compute(embedder, reference_texts)  # doctest: +SKIP
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        chunk_size: int = 1024,
        progress: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        self.directory = Path(directory)
        self.chunk_size = chunk_size
        self.progress = progress
        self.stream = stream
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"ReferenceCache({str(self.directory)!r})"

    def key(
        self, embedder: Embedder, payloads: Sequence[Any], *, data_sha256: str | None = None
    ) -> str:
        """The entry's key: hash of the embedder's fingerprint and the payloads' hash."""
        data = data_sha256 if data_sha256 is not None else sha256_payloads(payloads)
        return sha256_json({"format": _FORMAT, "embedder": embedder.fingerprint, "data": data})

    def paths(self, key: str) -> tuple[Path, Path]:
        """``(array file, metadata file)`` of an entry."""
        return self.directory / f"{key}.npy", self.directory / f"{key}.json"

    def get_or_compute(
        self, embedder: Embedder, payloads: Sequence[Any], *, data_sha256: str | None = None
    ) -> np.ndarray:
        """The reference embeddings: read back when cached, else computed and stored.

        Parameters
        ----------
        data_sha256 : str, optional
            A hash of the reference data the caller already has (e.g. of the file); by
            default the payloads are hashed.
        """
        data = data_sha256 if data_sha256 is not None else sha256_payloads(payloads)
        key = self.key(embedder, payloads, data_sha256=data)
        cached = self.load(key)
        if cached is not None and cached.shape[0] == len(payloads):
            self.hits += 1
            return cached
        self.misses += 1
        array = self._compute(embedder, payloads)
        self._store(key, array, embedder, data)
        return array

    def load(self, key: str) -> np.ndarray | None:
        """The entry's array, or None when it is missing or does not check out."""
        array_path, meta_path = self.paths(key)
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            array = np.load(array_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning("reference cache entry %s unreadable, recomputing: %s", key, exc)
            return None
        if (
            meta.get("format") != _FORMAT
            or meta.get("key") != key
            or list(array.shape) != meta.get("shape")
            or array.dtype != np.float32
            or _array_sha256(array) != meta.get("array_sha256")
        ):
            log.warning("reference cache entry %s does not match its metadata, recomputing", key)
            return None
        return array

    def _compute(self, embedder: Embedder, payloads: Sequence[Any]) -> np.ndarray:
        n = len(payloads)
        parts = []
        with Progress(
            n, "embedding reference", stream=self.stream, enabled=self.progress
        ) as progress:
            for start in range(0, n, self.chunk_size):
                chunk = payloads[start : start + self.chunk_size]
                part = np.asarray(embedder.embed(chunk), dtype=np.float32)
                if part.ndim != 2 or part.shape[0] != len(chunk):
                    raise ValueError(
                        f"embedder returned shape {part.shape} for {len(chunk)} payloads"
                    )
                parts.append(part)
                progress.update(len(chunk))
        return np.ascontiguousarray(np.concatenate(parts))

    def _store(self, key: str, array: np.ndarray, embedder: Embedder, data: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        array_path, meta_path = self.paths(key)
        describe = getattr(embedder, "describe", None)
        meta = {
            "format": _FORMAT,
            "key": key,
            "fingerprint": embedder.fingerprint,
            "embedder": describe() if callable(describe) else None,
            "data_sha256": data,
            "shape": list(array.shape),
            "dtype": "float32",
            "array_sha256": _array_sha256(array),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        _atomic_write(array_path, lambda handle: np.save(handle, array, allow_pickle=False))
        text = json.dumps(meta, indent=2, sort_keys=True, default=str)
        _atomic_write(meta_path, lambda handle: handle.write(text.encode()))


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
