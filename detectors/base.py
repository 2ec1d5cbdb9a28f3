"""The interface every detector implements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from .results import DriftResult

__all__ = ["Detector"]


@runtime_checkable
class Detector(Protocol):
    """A drift test fitted on a reference sample and run on current windows.

    Implementations validate and precompute their reference state in ``__init__``;
    ``test`` maps feature name -> 1-D array of the current window's values (extra keys
    are ignored) and returns a :class:`~detectors.results.DriftResult`.
    """

    name: str

    def test(self, current: Mapping[str, np.ndarray]) -> DriftResult:
        """Test ``current`` against the reference."""
        ...
