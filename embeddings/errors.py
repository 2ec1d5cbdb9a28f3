"""Exceptions raised by :mod:`embeddings`.

Everything the package raises on purpose derives from :class:`EmbeddingError`::

    EmbeddingError
     ├── ModelLoadError            a model file or folder is missing or unreadable, a factory
     │                             string does not resolve, a state dict does not fit
     ├── LayerError                a requested layer does not exist (the message lists the
     │                             valid names) or cannot be captured
     ├── PayloadError (ValueError) a payload does not fit the preprocessing (names the payload's
     │                             index, expected and actual shape or type)
     ├── DeviceError               CUDA was asked for and is not there (never a silent fallback)
     └── EmbeddingOutOfMemoryError the device ran out of memory even at the smallest batch size

Plain misuse (a bad parameter value or type) raises the built-in :class:`ValueError` /
:class:`TypeError` naming the parameter. A missing PyTorch raises :class:`ImportError` with
the install hint ``pip install 'driftline[embeddings]'``.
"""

from __future__ import annotations

__all__ = [
    "DeviceError",
    "EmbeddingError",
    "EmbeddingOutOfMemoryError",
    "LayerError",
    "ModelLoadError",
    "PayloadError",
]


class EmbeddingError(Exception):
    """Root of the errors raised by :mod:`embeddings`."""


class ModelLoadError(EmbeddingError):
    """A model could not be loaded from local files; the message names the path or factory."""


class LayerError(EmbeddingError):
    """A requested layer does not exist in the model or cannot be captured from it."""


class PayloadError(EmbeddingError, ValueError):
    """A payload does not fit the configured preprocessing.

    Attributes
    ----------
    index : int or None
        Position of the offending payload in the batch, when one payload is at fault.
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class DeviceError(EmbeddingError):
    """The requested device is not available (e.g. ``"cuda"`` on a machine without CUDA)."""


class EmbeddingOutOfMemoryError(EmbeddingError):
    """The device ran out of memory at the smallest allowed batch size.

    Attributes
    ----------
    batch_size : int
        The batch size of the last failed attempt (the floor).
    """

    def __init__(self, message: str, *, batch_size: int) -> None:
        super().__init__(message)
        self.batch_size = batch_size
