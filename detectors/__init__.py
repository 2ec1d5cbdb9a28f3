"""Drift statistics: arrays in, typed results out.

No I/O, configuration or daemon concerns live here; :mod:`monitor` builds on this
package, never the other way round.
"""

from __future__ import annotations

from .backend import DeviceUnavailableError, resolve_device
from .base import Detector
from .bbse import BBSE, LabelShiftEstimate, SingularConfusionMatrixError
from .c2st import ClassifierTwoSampleDetector
from .chisquare import ChiSquareDetector
from .correction import CORRECTIONS, adjust_p_values
from .cvm import AndersonDarlingDetector, CramerVonMisesDetector
from .divergence import JSDetector, KLDetector
from .errors import DetectorError, InsufficientDataError
from .ks import KSDetector
from .ks_torch import TorchKSDetector, ks_statistics_torch
from .label import LabelDriftDetector, PerformanceDriftDetector, PredictionDriftDetector
from .mmd import MMDDetector
from .mmd_agg import MMDAggDetector
from .psi import PSIDetector
from .registry import (
    CONFIGURABLE,
    DEVICES,
    EMBEDDINGS,
    ERRORS,
    INPUTS,
    KINDS,
    LABELS,
    LARGE_REFERENCE,
    MATRIX,
    PER_FEATURE,
    PREDICTIONS,
    SPECS,
    DetectorInfo,
    backend_problem,
    build,
    choose,
    unknown_key,
)
from .results import DriftResult, FeatureResult
from .streaming import ADWIN, DDM, PageHinkley
from .wasserstein import WassersteinDetector

__all__ = [
    "ADWIN",
    "BBSE",
    "CONFIGURABLE",
    "CORRECTIONS",
    "DDM",
    "DEVICES",
    "EMBEDDINGS",
    "ERRORS",
    "INPUTS",
    "KINDS",
    "LABELS",
    "LARGE_REFERENCE",
    "MATRIX",
    "PER_FEATURE",
    "PREDICTIONS",
    "SPECS",
    "AndersonDarlingDetector",
    "ChiSquareDetector",
    "ClassifierTwoSampleDetector",
    "CramerVonMisesDetector",
    "Detector",
    "DetectorError",
    "DetectorInfo",
    "DeviceUnavailableError",
    "DriftResult",
    "FeatureResult",
    "InsufficientDataError",
    "JSDetector",
    "KLDetector",
    "KSDetector",
    "LabelDriftDetector",
    "LabelShiftEstimate",
    "MMDAggDetector",
    "MMDDetector",
    "PSIDetector",
    "PageHinkley",
    "PerformanceDriftDetector",
    "PredictionDriftDetector",
    "SingularConfusionMatrixError",
    "TorchKSDetector",
    "WassersteinDetector",
    "adjust_p_values",
    "backend_problem",
    "build",
    "choose",
    "ks_statistics_torch",
    "resolve_device",
    "unknown_key",
]
