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
``epsilon``) and ``alpha``: a feature drifts when its distance exceeds both ``threshold``
and its null quantile at the window's size, resampled from the reference (family-wise
over the features at ``alpha``; see :class:`~detectors._base.PerFeatureDistance`); they
report that resampling p-value.

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
categorical ones. A distance's chance value grows as the window shrinks (Wasserstein
averages about 0.13 at 200 values), so a distance also has to exceed its null quantile
at the window's size: false alarms stay at ``alpha`` at every window size.
10 000 is also where KS stops using its exact null distribution. Evidently, which uses
the same pairs, switches at 1 000 values; this rule keeps the corrected p-value tests
ten times longer. Binary categorical features use ``chi2`` too: for two categories it
is the two-proportion z-test squared (same p-value). The rule looks at the reference
only, which is known before the first window and normally at least as large as a window.

Every kind, as plain data
-------------------------
``SPECS`` describes *every* detector kind the daemon stores results under, once: the
per-feature kinds above (``KINDS`` is their subset of ``SPECS``), the multivariate
``mmd``, ``mmd_agg`` and ``c2st``, the prediction and label tests, the streaming detectors and the
embedding tests. Each :class:`DetectorInfo` says what the detector reads from a window
(``input``: one of :data:`INPUTS`), where it is configured (``section``), which settings
keys it accepts (``keys``: every key but ``features`` is passed to the constructor under
its own name) and on which backends and devices it runs (``backends``). Configuration
layers build their validation from it (see :func:`unknown_key`, :func:`backend_problem`);
this package never sees a settings object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._binning import CATEGORICAL, FEATURE_TYPES, NUMERIC
from .base import Detector
from .bbse import BBSE
from .c2st import ClassifierTwoSampleDetector
from .chisquare import ChiSquareDetector
from .cvm import AndersonDarlingDetector, CramerVonMisesDetector
from .divergence import JSDetector, KLDetector
from .ks import KSDetector
from .label import LabelDriftDetector, PerformanceDriftDetector, PredictionDriftDetector
from .mmd import MMDDetector
from .mmd_agg import MMDAggDetector
from .psi import PSIDetector
from .streaming import ADWIN, DDM, PageHinkley
from .wasserstein import WassersteinDetector

__all__ = [
    "CONFIGURABLE",
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
    "DetectorInfo",
    "backend_problem",
    "build",
    "choose",
    "unknown_key",
]

#: References with more values than this get a distance detector from :func:`choose`.
LARGE_REFERENCE = 10_000


#: What a detector reads from a window (``DetectorInfo.input``).
PER_FEATURE = "per-feature"  # one 1-D column per feature, numeric and/or categorical
MATRIX = "matrix"  # the numeric features side by side: one test over all of them
PREDICTIONS = "predictions"  # the model's predictions (classes or values)
LABELS = "labels"  # joined (label, prediction) pairs
ERRORS = "errors"  # the per-record errors of joined pairs, one at a time (streaming)
EMBEDDINGS = "embeddings"  # the deployed model's hidden-layer vectors or softmax outputs
INPUTS = (PER_FEATURE, MATRIX, PREDICTIONS, LABELS, ERRORS, EMBEDDINGS)

#: Devices a torch backend accepts (``cuda:N``: any CUDA device index).
DEVICES = ("cpu", "cuda", "cuda:N", "auto")
_NUMPY_ONLY: tuple[tuple[str, tuple[str, ...]], ...] = (("numpy", ("cpu",)),)
_NUMPY_OR_TORCH: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("numpy", ("cpu",)),
    ("torch", DEVICES),
)


@dataclass(frozen=True, slots=True)
class DetectorInfo:
    """What the library knows about one detector kind.

    Attributes
    ----------
    cls : type
        The detector class; ``cls(reference, **params)`` builds one.
    feature_types : frozenset of str
        ``"numeric"`` and/or ``"categorical"``: the features (or values) it can test.
    has_p_value : bool
        ``True`` for hypothesis tests (p-values, ``alpha``), ``False`` for distances
        compared with a ``threshold`` and for streaming detectors.
    input : str
        What it reads from a window, one of :data:`INPUTS`.
    section : str
        Where the daemon's settings configure it: ``"detectors"`` (a model's
        ``detectors[]`` list, which accepts exactly ``keys``), ``"prediction_drift"``,
        ``"labels"``, ``"labels.streaming"`` or ``"embedding"``.
    keys : tuple of str
        The settings keys it accepts besides ``kind`` (``section="detectors"`` only).
        Every key but ``features`` is a constructor parameter of the same name; a key
        left unset is not passed (the constructor's default applies).
    backends : tuple of (backend, devices) pairs
        The array backends it runs on and, per backend, the devices (:data:`DEVICES`).
    alpha_range : (low, high) or None
        Where its p-values can fall below ``alpha``: ``alpha`` must lie in
        ``(low, high]`` (Anderson-Darling's p-values are clipped to [0.001, 0.25]).
    """

    cls: type[Any]
    feature_types: frozenset[str]
    has_p_value: bool
    input: str = PER_FEATURE
    section: str = "detectors"
    keys: tuple[str, ...] = ()
    backends: tuple[tuple[str, tuple[str, ...]], ...] = _NUMPY_ONLY
    alpha_range: tuple[float, float] | None = None

    def devices(self, backend: str) -> tuple[str, ...]:
        """The devices ``backend`` runs on (empty: an unsupported backend)."""
        return dict(self.backends).get(backend, ())


_BOTH = frozenset(FEATURE_TYPES)
_NUMERIC = frozenset({NUMERIC})
_CATEGORICAL = frozenset({CATEGORICAL})
_NONE: frozenset[str] = frozenset()
_TEST_KEYS = ("features", "alpha", "correction")
_DISTANCE_KEYS = ("features", "threshold", "alpha")

#: Kind -> :class:`DetectorInfo`, for every kind the daemon stores results under.
SPECS: dict[str, DetectorInfo] = {
    # per-feature tests and distances
    "ks": DetectorInfo(KSDetector, _NUMERIC, True, keys=_TEST_KEYS),
    "chi2": DetectorInfo(ChiSquareDetector, _CATEGORICAL, True,
                         keys=(*_TEST_KEYS, "min_expected")),
    "cvm": DetectorInfo(CramerVonMisesDetector, _NUMERIC, True, keys=_TEST_KEYS),
    "anderson": DetectorInfo(AndersonDarlingDetector, _NUMERIC, True, keys=_TEST_KEYS,
                             alpha_range=(0.001, 0.25)),
    "psi": DetectorInfo(PSIDetector, _BOTH, False, keys=_DISTANCE_KEYS),
    "kl": DetectorInfo(KLDetector, _BOTH, False, keys=_DISTANCE_KEYS),
    "js": DetectorInfo(JSDetector, _BOTH, False, keys=_DISTANCE_KEYS),
    "wasserstein": DetectorInfo(WassersteinDetector, _NUMERIC, False, keys=_DISTANCE_KEYS),
    # multivariate: one test over the (standardised) numeric features
    "mmd": DetectorInfo(MMDDetector, _NUMERIC, True, input=MATRIX,
                        keys=("features", "alpha", "n_permutations", "backend", "device",
                              "max_n"),
                        backends=_NUMPY_OR_TORCH),
    "mmd_agg": DetectorInfo(MMDAggDetector, _NUMERIC, True, input=MATRIX,
                            keys=("features", "alpha", "n_permutations", "backend", "device",
                                  "max_n"),
                            backends=_NUMPY_OR_TORCH),
    "c2st": DetectorInfo(ClassifierTwoSampleDetector, _NUMERIC, True, input=MATRIX,
                         keys=("features", "alpha", "max_n")),
    # the model's outputs
    "prediction_chi2": DetectorInfo(PredictionDriftDetector, _CATEGORICAL, True,
                                    input=PREDICTIONS, section="prediction_drift"),
    "prediction_ks": DetectorInfo(KSDetector, _NUMERIC, True, input=PREDICTIONS,
                                  section="prediction_drift"),
    "label_shift": DetectorInfo(BBSE, _CATEGORICAL, True, input=PREDICTIONS,
                                section="prediction_drift"),
    # delayed labels
    "performance": DetectorInfo(PerformanceDriftDetector, _BOTH, True, input=LABELS,
                                section="labels"),
    "label_chi2": DetectorInfo(LabelDriftDetector, _CATEGORICAL, True, input=LABELS,
                               section="labels"),
    "ddm": DetectorInfo(DDM, _NONE, False, input=ERRORS, section="labels.streaming"),
    "adwin": DetectorInfo(ADWIN, _NONE, False, input=ERRORS, section="labels.streaming"),
    "page_hinkley": DetectorInfo(PageHinkley, _NONE, False, input=ERRORS,
                                 section="labels.streaming"),
    # the deployed model's own feature space
    "embedding_mmd": DetectorInfo(MMDDetector, _NUMERIC, True, input=EMBEDDINGS,
                                  section="embedding", backends=_NUMPY_OR_TORCH),
    "embedding_ks": DetectorInfo(KSDetector, _NUMERIC, True, input=EMBEDDINGS,
                                 section="embedding"),
    "bbsd": DetectorInfo(KSDetector, _NUMERIC, True, input=EMBEDDINGS, section="embedding"),
}

#: The kinds a model's ``detectors[]`` list accepts.
CONFIGURABLE: tuple[str, ...] = tuple(k for k, s in SPECS.items() if s.section == "detectors")

#: Kind -> :class:`DetectorInfo` of the per-feature kinds (those :func:`build` builds).
KINDS: dict[str, DetectorInfo] = {k: s for k, s in SPECS.items() if s.input == PER_FEATURE}


def unknown_key(kind: str, keys: Iterable[str]) -> str | None:
    """Why ``keys`` (settings keys given for a ``detectors[]`` entry of ``kind``) do not
    fit it, naming the first key it does not take and the keys it does; ``None`` if they
    fit (or ``kind`` is not configurable: that is the caller's error to report)."""
    info = SPECS.get(kind)
    if info is None or info.section != "detectors":
        return None
    accepted = {"kind", *info.keys}
    extra = sorted(k for k in keys if k not in accepted)
    if not extra:
        return None
    key = extra[0]
    message = f"{kind} does not take {key!r} (it takes: {', '.join(sorted(accepted))})"
    takers = [k for k in CONFIGURABLE if key in SPECS[k].keys]
    if key == "threshold" and "alpha" in info.keys:
        message += f"; '{kind}' is a test with a p-value: set alpha, not threshold"
    elif key == "correction" and "threshold" in info.keys:
        message += (f"; '{kind}' is a distance: set threshold (and alpha, the level of its "
                    "calibration), not correction")
    elif takers:
        message += f"; {key} applies to {', '.join(takers)} only"
    return message


def backend_problem(kind: str, backend: str, device: str) -> str | None:
    """Why ``kind`` cannot run on ``backend`` and ``device`` (``None``: it can).

    ``device`` ``"cuda:N"`` stands for any CUDA index.
    """
    info = SPECS[kind]
    devices = info.devices(backend)
    if not devices:
        supported = ", ".join(b for b, _ in info.backends)
        return f"{kind} runs on backend {supported}, not {backend!r}"
    generic = "cuda:N" if device.startswith("cuda:") else device
    if generic not in devices:
        hosts = [b for b, d in info.backends if generic in d]
        need = f"; it needs backend {' or '.join(repr(b) for b in hosts)}" if hosts else ""
        return (f"{kind} on backend {backend!r} runs on {', '.join(devices)} only, "
                f"not device {device!r}{need}")
    return None


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
