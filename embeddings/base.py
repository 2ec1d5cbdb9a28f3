"""The seam between the daemon and whatever turns payloads into vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from embeddings.errors import EmbeddingError

__all__ = ["Embedder", "EmbeddingError"]


@runtime_checkable
class Embedder(Protocol):
    """Turns a batch of raw payloads into an ``(n, d)`` float32 array."""

    @property
    def fingerprint(self) -> str:
        """Identifies model, version, layer, preprocessing and reduction (cache key)."""
        ...

    def embed(self, payloads: Sequence[Any]) -> np.ndarray:
        """Embed ``payloads``; raises :class:`EmbeddingError` for payloads it cannot handle."""
        ...
