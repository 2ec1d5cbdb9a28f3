"""Exceptions raised by :mod:`training`.

Everything the package raises on purpose derives from :class:`TrainingError`::

    TrainingError
     ├── InsufficientDataError   too few labelled rows (or too few in a split): nothing trained
     ├── TrainingDivergedError   non-finite loss or exploding gradient norm; carries the step
     ├── TrainingDeviceError     CUDA asked for and not there (never a silent fallback)
     └── RegistryError           a registry folder, version or alias is missing or unreadable

Plain misuse (a bad parameter value or type) raises :class:`ValueError` / :class:`TypeError`
naming the parameter. A missing or corrupt weights file raises
:class:`embeddings.errors.ModelLoadError` (the loaders are shared with :mod:`embeddings`).
"""

from __future__ import annotations

__all__ = [
    "InsufficientDataError",
    "RegistryError",
    "TrainingDeviceError",
    "TrainingDivergedError",
    "TrainingError",
]


class TrainingError(Exception):
    """Root of the errors raised by :mod:`training`."""


class InsufficientDataError(TrainingError):
    """Not enough labelled rows to train and gate a challenger; nothing was trained."""


class TrainingDivergedError(TrainingError):
    """Training stopped: the loss was not finite or the gradient norm exploded.

    Attributes
    ----------
    step : int
        The optimiser step (1-based, counted over the run) at which it stopped.
    reason : str
        ``"non-finite loss"`` or ``"gradient norm ... above ..."``.
    """

    def __init__(self, message: str, *, step: int, reason: str) -> None:
        super().__init__(message)
        self.step = step
        self.reason = reason


class TrainingDeviceError(TrainingError):
    """The requested device is not available (e.g. ``"cuda"`` without CUDA)."""


class RegistryError(TrainingError):
    """A registry folder, version or alias is missing, unreadable or would be inconsistent."""
