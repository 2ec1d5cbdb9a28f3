"""Validation and result assembly shared by the detectors (private)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from .correction import CORRECTIONS, adjust_p_values
from .errors import InsufficientDataError
from .results import DriftResult, FeatureResult

# dtype kinds accepted per kind of column: bool, signed, unsigned, float / + str, bytes, object.
NUMERIC_KINDS = "biuf"
CATEGORICAL_KINDS = "biuUSO"


def check_options(alpha: float, correction: str, min_samples: int) -> tuple[float, str, int]:
    """Validate the keyword arguments every detector shares."""
    if not isinstance(correction, str) or correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    return check_unit_interval("alpha", alpha), correction, check_min_samples(min_samples)


def _is_real(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(
        value, (int, float, np.floating, np.integer))


def check_unit_interval(name: str, value: float) -> float:
    """Validate a float parameter ``name`` in (0, 1): a significance level, a confidence."""
    if not _is_real(value):
        raise TypeError(f"{name} must be a float in (0, 1), got {type(value).__name__}")
    if not 0.0 < float(value) < 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: float) -> float:
    """Validate a float parameter ``name``: finite and >= 0."""
    if not _is_real(value):
        raise TypeError(f"{name} must be a float >= 0, got {type(value).__name__}")
    if not 0.0 <= float(value) < math.inf:  # also rejects NaN
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return float(value)


def check_int(name: str, value: int, lowest: int) -> int:
    """Validate an int parameter ``name`` >= ``lowest``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {lowest}, got {type(value).__name__}")
    if value < lowest:
        raise ValueError(f"{name} must be >= {lowest}, got {value!r}")
    return int(value)


def one_d(name: str, values: object, kinds: str, why: str = "") -> np.ndarray:
    """``values`` as a 1-D array whose dtype kind is in ``kinds`` (not copied).

    ``why`` is appended to the dtype error (e.g. " (floats are not classes)").
    """
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"{name} must be a 1-D array, got {type(values).__name__}")
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.dtype.kind not in kinds:
        raise TypeError(f"{name} has unsupported dtype {array.dtype}{why}")
    return array


def column(feature: str, values: object, kinds: str, what: str) -> np.ndarray:
    """Return ``values`` as a 1-D array whose dtype kind is in ``kinds``.

    Does not copy; callers that keep or reorder the array must copy it themselves.
    """
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{what} feature {feature!r} must be 1-D, got shape {array.shape}")
    if array.dtype.kind not in kinds:
        raise TypeError(f"{what} feature {feature!r} has unsupported dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{what} feature {feature!r} contains NaN or infinite values")
    return array


def reference_columns(
    reference: Mapping[str, np.ndarray], kinds: str, min_samples: int
) -> dict[str, np.ndarray]:
    """Validate the reference mapping; return its columns in order (not copied)."""
    if not isinstance(reference, Mapping):
        raise TypeError(
            f"reference must be a mapping of feature -> array, got {type(reference).__name__}"
        )
    if not reference:
        raise ValueError("reference must contain at least one feature")
    columns = {}
    for feature, values in reference.items():
        if not isinstance(feature, str):
            raise TypeError(f"reference feature names must be str, got {feature!r}")
        array = column(feature, values, kinds, "reference")
        if array.size < min_samples:
            raise InsufficientDataError(
                f"reference feature {feature!r} has {array.size} values; "
                f"min_samples is {min_samples}"
            )
        columns[feature] = array
    return columns


def current_columns(
    current: Mapping[str, np.ndarray], features: Sequence[str], kinds: str
) -> dict[str, np.ndarray]:
    """Validate the current window; return the reference features' columns (not copied)."""
    return typed_current_columns(current, dict.fromkeys(features, kinds))


def assemble(
    detector: str,
    features: Sequence[str],
    statistics: np.ndarray,
    p_values: np.ndarray,
    n_reference: Sequence[int],
    n_current: Sequence[int],
    alpha: float,
    correction: str,
) -> DriftResult:
    """Correct the p-values across features and build the result."""
    adjusted = adjust_p_values(p_values, correction)
    per_feature = tuple(
        FeatureResult(
            feature=name,
            statistic=float(stat),
            p_value=float(p),
            adjusted_p_value=float(adj),
            drifted=bool(adj < alpha),
            n_reference=int(n_ref),
            n_current=int(n_cur),
        )
        for name, stat, p, adj, n_ref, n_cur in zip(
            features, statistics, p_values, adjusted, n_reference, n_current, strict=True
        )
    )
    return DriftResult(
        detector=detector,
        statistic=float(np.max(statistics)),
        p_value=float(np.min(adjusted)),
        threshold=alpha,
        drifted=any(f.drifted for f in per_feature),
        n_reference=max(n_reference),
        n_current=max(n_current),
        correction=correction,
        features=per_feature,
    )


def can_reject(smallest_p_value: float, alpha: float) -> bool:
    """Whether a test can flag drift at ``alpha`` at all at this window size.

    The general ``insufficient_data`` rule: a test whose smallest attainable p-value at
    the window's size is not below ``alpha`` (a permutation or resampling test with too
    few draws for ``alpha``, too few distinct relabellings of tiny samples) answers "no
    drift" whatever the data; that is no answer, so the result is ``insufficient_data``
    (which also keeps it out of the model verdict's correction) rather than a
    "not drifted" that reads as evidence.
    """
    return smallest_p_value < alpha


def insufficient(
    detector: str,
    features: Sequence[str],
    n_reference: Sequence[int],
    n_current: Sequence[int],
    alpha: float,
    correction: str,
) -> DriftResult:
    """The result for a window that cannot be tested: nothing drifted, no p-values."""
    per_feature = tuple(
        FeatureResult(name, math.nan, None, None, False, int(n_ref), int(n_cur))
        for name, n_ref, n_cur in zip(features, n_reference, n_current, strict=True)
    )
    return DriftResult(
        detector=detector,
        statistic=math.nan,
        p_value=None,
        threshold=alpha,
        drifted=False,
        n_reference=max(n_reference),
        n_current=max(n_current),
        correction=correction,
        features=per_feature,
        insufficient_data=True,
    )


# --- Shared by the distance detectors and the sorted-sample tests (added with them) ---------

#: dtype kinds a column of either type may have (numeric or categorical).
ANY_KINDS = "biufUSO"


def check_threshold(threshold: float) -> float:
    """Validate a distance detector's ``threshold``: a finite float >= 0."""
    return check_nonnegative("threshold", threshold)


def check_min_samples(min_samples: int, lowest: int = 1) -> int:
    """Validate ``min_samples``: an int >= ``lowest``."""
    return check_int("min_samples", min_samples, lowest)


def typed_current_columns(
    current: Mapping[str, np.ndarray], kinds: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """Like :func:`current_columns`, with the accepted dtype kinds given per feature."""
    if not isinstance(current, Mapping):
        raise TypeError(
            f"current must be a mapping of feature -> array, got {type(current).__name__}"
        )
    columns = {}
    for feature, feature_kinds in kinds.items():
        if feature not in current:
            raise KeyError(f"current window is missing feature {feature!r}")
        columns[feature] = column(feature, current[feature], feature_kinds, "current")
    return columns


def assemble_distances(
    detector: str,
    features: Sequence[str],
    statistics: np.ndarray,
    n_reference: Sequence[int],
    n_current: Sequence[int],
    threshold: float,
    calibration: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    alpha: float = 0.05,
) -> DriftResult:
    """Build the result of a distance detector from its calibration (raw p-values,
    max-T adjusted p-values, null quantiles): a feature drifts when its distance exceeds
    ``threshold`` and its null quantile (``adjusted_p_value < alpha``). ``None``: not
    calibrated, no p-values, ``drifted = statistic > threshold``."""
    if calibration is None:
        per = tuple(
            FeatureResult(name, float(stat), None, None, bool(stat > threshold), int(n_r),
                          int(n_c))
            for name, stat, n_r, n_c in zip(features, statistics, n_reference, n_current,
                                            strict=True))
        return DriftResult(detector, float(np.max(statistics)), None, threshold,
                           any(f.drifted for f in per), max(n_reference), max(n_current),
                           "none", per)
    raw, adjusted, quantiles = calibration
    per_feature = tuple(
        FeatureResult(
            feature=name,
            statistic=float(stat),
            p_value=float(p),
            adjusted_p_value=float(adj),
            drifted=bool(adj < alpha),  # adjusted is 1 at or below the threshold
            n_reference=int(n_ref),
            n_current=int(n_cur),
            null_quantile=float(q),
        )
        for name, stat, p, adj, q, n_ref, n_cur in zip(
            features, statistics, raw, adjusted, quantiles, n_reference, n_current,
            strict=True,
        )
    )
    return DriftResult(
        detector=detector,
        statistic=float(np.max(statistics)),
        p_value=float(np.min(adjusted)),
        threshold=threshold,
        drifted=any(f.drifted for f in per_feature),
        n_reference=max(n_reference),
        n_current=max(n_current),
        correction="max-t",
        features=per_feature,
        null_quantile=float(np.max(quantiles)),
    )


def merge_sorted(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge two sorted float arrays in linear time (plus ``len(second) log len(first)``).

    Returns
    -------
    merged : numpy.ndarray
        All values, sorted (equal values of ``second`` come before those of ``first``).
    from_second : numpy.ndarray of bool
        ``True`` where ``merged`` holds a value of ``second``. ``merged[~from_second]``
        is ``first`` and ``merged[from_second]`` is ``second``, both in order.
    """
    positions = np.searchsorted(first, second, side="left") + np.arange(second.size)
    from_second = np.zeros(first.size + second.size, dtype=bool)
    from_second[positions] = True
    merged = np.empty(first.size + second.size, dtype=np.float64)
    merged[positions] = second
    merged[~from_second] = first
    return merged, from_second


def tie_runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and (exclusive) end index of each run of equal values of a sorted array."""
    starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    ends = np.append(starts[1:], sorted_values.size)
    return starts, ends


def running_count(mask: np.ndarray) -> np.ndarray:
    """``np.cumsum(mask)`` of a bool array, several times faster (int32 when it fits)."""
    dtype = np.int32 if mask.size < 2**31 else np.int64
    return np.cumsum(mask.view(np.uint8), dtype=dtype)


def _category_kind(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "number"
    return type(value).__name__


def check_category_types(feature: str, reference: Mapping[Hashable, int],
                         current: Mapping[Hashable, int]) -> None:
    """Reject a window whose categories share no type with the reference's.

    Strings against integers (a reference read from CSV as text, a window of codes) would
    otherwise count every category as new: a certain, silent false alarm.
    """
    ref_kinds = {_category_kind(k) for k in reference}
    cur_kinds = {_category_kind(k) for k in current}
    plain = {"str", "bytes", "number", "bool"}
    # Both sides of one plain type each, and not the same one (mixed object columns, or
    # a window of new categories of another type, are left alone: they can be drift).
    if (len(ref_kinds) == 1 and len(cur_kinds) == 1 and ref_kinds <= plain
            and cur_kinds <= plain and ref_kinds != cur_kinds):
        raise TypeError(
            f"current feature {feature!r} holds {'/'.join(sorted(cur_kinds))} categories but "
            f"the reference holds {'/'.join(sorted(ref_kinds))} ones: no category could "
            "match (convert one side)")


def count_categories(feature: str, values: np.ndarray) -> dict[Hashable, int]:
    """Category -> count, keyed by plain Python values so str and object columns match."""
    if values.dtype.kind == "O":
        # Object columns need not be orderable (np.unique sorts), only hashable.
        try:
            return dict(Counter(values.tolist()))
        except TypeError as exc:
            raise TypeError(f"feature {feature!r} holds unhashable values: {exc}") from None
    categories, counts = np.unique(values, return_counts=True)
    return dict(zip(categories.tolist(), counts.tolist(), strict=True))
