"""Drift statistics: arrays in, typed results out.

No I/O, configuration or daemon concerns live here; :mod:`monitor` builds on this
package, never the other way round.
"""

from __future__ import annotations

from .base import Detector
from .chisquare import ChiSquareDetector
from .correction import CORRECTIONS, adjust_p_values
from .errors import DetectorError, InsufficientDataError
from .ks import KSDetector
from .results import DriftResult, FeatureResult

__all__ = [
    "CORRECTIONS",
    "ChiSquareDetector",
    "Detector",
    "DetectorError",
    "DriftResult",
    "FeatureResult",
    "InsufficientDataError",
    "KSDetector",
    "adjust_p_values",
]
