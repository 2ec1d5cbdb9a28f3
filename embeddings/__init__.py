"""Payloads to vectors: model loading, layer hooks, GPU micro-batching (see the embeddings issue).

This package holds no window, detector or metrics knowledge; it returns (n, d) float32 arrays.
Only the seam is defined so far.
"""

from __future__ import annotations

from embeddings.base import Embedder, EmbeddingError

__all__ = ["Embedder", "EmbeddingError"]
