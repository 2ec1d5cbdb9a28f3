"""Every detector kind by name, how to build one, and which to use by default.

``KINDS`` maps a kind (the ``name`` of its detector class) to a :class:`DetectorInfo`:

============  ===============================  =======================  =========
kind          detector                         feature types            p-value
============  ===============================  =======================  =========
ks            Kolmogorov-Smirnov               numeric                  yes
chi2          chi-square (homogeneity)         categorical              yes
cvm           Cramér-von Mises                 numeric                  yes
anderson      Anderson-Darling (k-sample)      numeric                  yes
psi           Population Stability Index       numeric, categorical     no
kl            Kullback-Leibler divergence      numeric, categorical     no
js            Jensen-Shannon distance          numeric, categorical     no
wasserstein   Wasserstein-1 / reference std    numeric                  no
============  ===============================  =======================  =========

p-value detectors take ``alpha``, ``correction`` and ``min_samples``, and correct their
features' p-values for multiple testing; distance detectors take ``threshold`` (and
``min_samples``; the binned ones ``bins``, ``feature_type`` and, PSI and KL,
``epsilon``) and report ``p_value=None``.

Automatic choice
----------------
:func:`choose` picks a kind from the feature type and the size of the reference:

* **numeric**: ``ks`` when the reference has at most 10 000 values, ``wasserstein``
  above;
* **categorical**: ``chi2`` when the reference has at most 10 000 values, ``js`` above.

Why: p-value tests are preferred because their false-alarm rate is controlled (at
``alpha``, across features by the multiple-testing correction) whatever the sample
size and the distribution, so one ``alpha`` means the same thing for every feature.
But their power grows without bound with the sample size: on large samples they flag
differences too small to matter (with 10 000 values against 10 000, KS already flags a
shift of about 0.05 standard deviations about half the time at ``alpha=0.05``). Above
that size a distance with a threshold of practical size is the better alarm:
Wasserstein in reference standard deviations (threshold 0.1, a tenth of a standard
deviation) for numeric features and the Jensen-Shannon distance (threshold 0.1) for
categorical ones, whose chance values at those sizes are far below their thresholds.
10 000 is also where KS stops using its exact null distribution. Evidently, which uses
the same pairs, switches at 1 000 values; this rule keeps the corrected p-value tests
ten times longer. Binary categorical features use ``chi2`` too: for two categories it
is the two-proportion z-test squared (same p-value). The rule looks at the reference
only, which is known before the first window and normally at least as large as a window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._binning import CATEGORICAL, FEATURE_TYPES, NUMERIC
from .base import Detector
from .chisquare import ChiSquareDetector
from .cvm import AndersonDarlingDetector, CramerVonMisesDetector
from .divergence import JSDetector, KLDetector
from .ks import KSDetector
from .psi import PSIDetector
from .wasserstein import WassersteinDetector

__all__ = ["KINDS", "LARGE_REFERENCE", "DetectorInfo", "build", "choose"]

#: References with more values than this get a distance detector from :func:`choose`.
LARGE_REFERENCE = 10_000


@dataclass(frozen=True, slots=True)
class DetectorInfo:
    """What the library knows about one detector kind.

    Attributes
    ----------
    cls : type
        The detector class; ``cls(reference, **params)`` builds one.
    feature_types : frozenset of str
        ``"numeric"`` and/or ``"categorical"``: the features it can test.
    has_p_value : bool
        ``True`` for hypothesis tests (p-values, ``alpha``, multiple-testing
        correction), ``False`` for distances compared with a ``threshold``.
    """

    cls: type[Any]
    feature_types: frozenset[str]
    has_p_value: bool


_BOTH = frozenset(FEATURE_TYPES)
_NUMERIC = frozenset({NUMERIC})
_CATEGORICAL = frozenset({CATEGORICAL})

#: Kind -> :class:`DetectorInfo`, for every detector of the library.
KINDS: dict[str, DetectorInfo] = {
    cls.name: DetectorInfo(cls, types, has_p_value)
    for cls, types, has_p_value in (
        (KSDetector, _NUMERIC, True),
        (ChiSquareDetector, _CATEGORICAL, True),
        (CramerVonMisesDetector, _NUMERIC, True),
        (AndersonDarlingDetector, _NUMERIC, True),
        (PSIDetector, _BOTH, False),
        (KLDetector, _BOTH, False),
        (JSDetector, _BOTH, False),
        (WassersteinDetector, _NUMERIC, False),
    )
}


def build(kind: str, reference: Mapping[str, np.ndarray], **params: object) -> Detector:
    """Build the detector ``kind`` on ``reference``.

    Parameters
    ----------
    kind : str
        A key of :data:`KINDS`.
    reference : Mapping[str, numpy.ndarray]
        Feature name -> 1-D array, as the detector's constructor takes it.
    **params
        Keyword arguments of the detector's constructor. ``feature_type``
        (``"numeric"`` or ``"categorical"``) is accepted by every kind: it is checked
        against the kind's feature types and passed on only to detectors that take both.

    Returns
    -------
    Detector

    Raises
    ------
    ValueError
        ``kind`` is unknown (the message lists the valid kinds), or ``feature_type`` is
        not one the kind supports; anything the constructor raises.
    TypeError
        An unknown keyword argument (from the constructor).
    """
    info = KINDS.get(kind) if isinstance(kind, str) else None
    if info is None:
        raise ValueError(f"unknown detector kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if "feature_type" in params and len(info.feature_types) == 1:
        feature_type = params.pop("feature_type")
        if feature_type is not None and feature_type not in info.feature_types:
            (supported,) = info.feature_types
            raise ValueError(
                f"feature_type must be {supported!r} for detector kind {kind!r}, "
                f"got {feature_type!r}"
            )
    return info.cls(reference, **params)


def choose(feature_type: str, n_reference: int) -> str:
    """The default detector kind for a feature (rule in the module docstring).

    Parameters
    ----------
    feature_type : {"numeric", "categorical"}
    n_reference : int
        Number of reference values of the feature (>= 0).

    Returns
    -------
    str
        A key of :data:`KINDS` whose detector supports ``feature_type``.

    Raises
    ------
    ValueError
        Unknown ``feature_type`` or negative ``n_reference``.
    TypeError
        ``n_reference`` is not an int.
    """
    if not isinstance(feature_type, str) or feature_type not in FEATURE_TYPES:
        raise ValueError(f"feature_type must be one of {FEATURE_TYPES}, got {feature_type!r}")
    if isinstance(n_reference, bool) or not isinstance(n_reference, (int, np.integer)):
        raise TypeError(f"n_reference must be an int >= 0, got {type(n_reference).__name__}")
    if n_reference < 0:
        raise ValueError(f"n_reference must be >= 0, got {n_reference!r}")
    large = n_reference > LARGE_REFERENCE
    if feature_type == NUMERIC:
        return "wasserstein" if large else "ks"
    return "js" if large else "chi2"
