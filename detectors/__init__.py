"""Drift statistics: arrays in, typed results out.

No I/O, configuration or daemon concerns live here; :mod:`monitor` builds on this
package, never the other way round.
"""

from __future__ import annotations

from .base import Detector
from .bbse import BBSE, LabelShiftEstimate, SingularConfusionMatrixError
from .chisquare import ChiSquareDetector
from .correction import CORRECTIONS, adjust_p_values
from .cvm import AndersonDarlingDetector, CramerVonMisesDetector
from .divergence import JSDetector, KLDetector
from .errors import DetectorError, InsufficientDataError
from .ks import KSDetector
from .label import LabelDriftDetector, PerformanceDriftDetector, PredictionDriftDetector
from .psi import PSIDetector
from .registry import KINDS, LARGE_REFERENCE, DetectorInfo, build, choose
from .results import DriftResult, FeatureResult
from .streaming import ADWIN, DDM, PageHinkley
from .wasserstein import WassersteinDetector

__all__ = [
    "ADWIN",
    "BBSE",
    "CORRECTIONS",
    "DDM",
    "KINDS",
    "LARGE_REFERENCE",
    "AndersonDarlingDetector",
    "ChiSquareDetector",
    "CramerVonMisesDetector",
    "Detector",
    "DetectorError",
    "DetectorInfo",
    "DriftResult",
    "FeatureResult",
    "InsufficientDataError",
    "JSDetector",
    "KLDetector",
    "KSDetector",
    "LabelDriftDetector",
    "LabelShiftEstimate",
    "PSIDetector",
    "PageHinkley",
    "PerformanceDriftDetector",
    "PredictionDriftDetector",
    "SingularConfusionMatrixError",
    "WassersteinDetector",
    "adjust_p_values",
    "build",
    "choose",
]
