"""One alarm per model and window, and how often it may go off by chance.

:func:`model_verdict` combines the results of all of a model's detectors on one window
into one result, with family-wise error control across detectors (and, through each
detector's own correction, across features). :func:`debounce` turns a tolerated false-
alarm frequency into a k-of-n rule over consecutive verdicts; :func:`expected_windows`
gives the expected number of windows between false alarms of such a rule.

Pure functions on :class:`~detectors.results.DriftResult` objects: the daemon, the
retraining policy and notebooks call the same code.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ._common import check_int, check_unit_interval
from .results import DriftResult, FeatureResult

__all__ = [
    "MODEL",
    "SAME_TEST",
    "VERDICT_METHODS",
    "Debounce",
    "debounce",
    "expected_windows",
    "holm",
    "model_verdict",
]

#: Detector name of the model verdict's result row.
MODEL = "model"
#: Accepted ``method`` values of :func:`model_verdict`.
VERDICT_METHODS: tuple[str, ...] = ("holm", "bonferroni")
#: Detector -> the detector whose statistic it repeats. The label-shift omnibus test
#: (BBSE) tests the predicted-class frequencies against the reference's, as
#: ``prediction_chi2`` does: when both run, only ``prediction_chi2`` is counted.
SAME_TEST: Mapping[str, str] = {"label_shift": "prediction_chi2"}


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as the input)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def model_verdict(results: Sequence[DriftResult], alpha: float, method: str = "holm",
                  same_test: Mapping[str, str] = SAME_TEST) -> DriftResult:
    """The model's verdict on one window, from its detectors' results.

    The family is every result with a p-value (``DriftResult.p_value``: the smallest
    p-value after the detector's own correction across its features, which is a valid
    p-value for "no feature drifted"; distances report their resampling one). Left out
    of the family, and listed with ``adjusted_p_value=None``: results without a p-value
    (the streaming detectors, whose alarms are sequential and separately tuned),
    windows a detector could not test (``insufficient_data``), and a detector that
    repeats another's statistic (:data:`SAME_TEST`) when both ran. The family's
    p-values are adjusted with Holm's step-down method (``"holm"``) or Bonferroni; both
    control the family-wise error rate at ``alpha`` under any dependence between the
    detectors, and give the same verdict (the smallest adjusted p-value is the smallest
    p-value times the family size); Holm flags more of the individual detectors.

    Returns
    -------
    DriftResult
        ``detector="model"``, ``statistic`` and ``p_value`` the smallest adjusted
        p-value (``nan``/``None`` when no detector tested the window, which is then
        ``insufficient_data``), ``threshold=alpha``, ``drifted`` the verdict,
        ``correction=method`` and one :class:`FeatureResult` per detector (its name as
        ``feature``, its own p-value as ``statistic`` and ``p_value``, its adjusted
        p-value, whether it is rejected in the family).
    """
    check_unit_interval("alpha", alpha)
    if method not in VERDICT_METHODS:
        raise ValueError(f"method must be one of {VERDICT_METHODS}, got {method!r}")
    ran = {r.detector for r in results if r.p_value is not None and not r.insufficient_data}
    members = [i for i, r in enumerate(results)
               if r.p_value is not None and not r.insufficient_data
               and same_test.get(r.detector) not in ran]
    raw = [float(results[i].p_value) for i in members]  # type: ignore[arg-type]
    if method == "holm":
        adjusted = holm(raw)
    else:
        adjusted = np.minimum(np.asarray(raw) * len(raw), 1.0)
    by_index = dict(zip(members, adjusted.tolist(), strict=True))
    features = tuple(
        FeatureResult(
            feature=r.detector,
            statistic=math.nan if r.p_value is None else float(r.p_value),
            p_value=r.p_value,
            adjusted_p_value=by_index.get(i),
            drifted=i in by_index and by_index[i] < alpha,
            n_reference=r.n_reference,
            n_current=r.n_current,
        )
        for i, r in enumerate(results)
    )
    smallest = float(adjusted.min()) if members else None
    return DriftResult(
        detector=MODEL,
        statistic=math.nan if smallest is None else smallest,
        p_value=smallest,
        threshold=alpha,
        drifted=smallest is not None and smallest < alpha,
        n_reference=max((r.n_reference for r in results), default=0),
        n_current=max((r.n_current for r in results), default=0),
        correction=method,
        features=features,
        insufficient_data=not members,
    )


@dataclass(frozen=True, slots=True)
class Debounce:
    """Alarm when at least ``k`` of the last ``n`` window verdicts are drifted.

    ``level`` is the per-window level of the verdict (the model's ``alpha``) and
    ``windows`` the expected number of windows between false alarms (starts of an
    alarm) under no drift with independent windows: :func:`expected_windows`.
    """

    k: int
    n: int
    level: float
    windows: float

    def fires(self, verdicts: Sequence[bool]) -> bool:
        """Whether the rule holds after ``verdicts`` (oldest first; only the last ``n``
        count, and fewer than ``n`` so far count as not drifted)."""
        return sum(bool(v) for v in list(verdicts)[-self.n:]) >= self.k


def expected_windows(level: float, k: int, n: int) -> float:
    """Expected windows between false alarms of the k-of-n rule.

    Each window's verdict is drifted with probability ``level``, independently. An alarm
    *starts* at a window where at least ``k`` of the last ``n`` verdicts are drifted and
    that did not hold one window earlier (a continuing alarm is one alarm, as a firing
    Prometheus alert is). The start rate is :math:`P(A_t \\wedge \\neg A_{t-1})`,
    summed exactly over the :math:`2^{n+1}` verdict sequences; the mean time between
    starts is its reciprocal.
    """
    check_unit_interval("level", level)
    check_int("n", n, 1)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n], got k={k}, n={n}")
    rate = 0.0
    for seq in itertools.product((0, 1), repeat=n + 1):
        if sum(seq[1:]) >= k and sum(seq[:-1]) < k:
            ones = sum(seq)
            rate += level**ones * (1 - level) ** (n + 1 - ones)
    return math.inf if rate == 0.0 else 1.0 / rate


def debounce(level: float, every_windows: float | None, max_n: int = 6) -> Debounce:
    """The k-of-n rule that makes false alarms at most once per ``every_windows``.

    With ``every_windows`` ``None`` (no tolerance stated) every drifted window alarms
    (``k = n = 1``). Otherwise the shortest rule wins (least delay once drift starts):
    the smallest ``n``, then the smallest ``k``, with
    ``expected_windows(level, k, n) >= every_windows``. When even ``k = n = max_n`` is
    not enough at ``level``, the rule is ``k = n = max_n`` at the lower per-window level
    that reaches ``every_windows`` (found by bisection): the verdict is then computed at
    that level.

    Parameters
    ----------
    level : float
        The verdict's per-window level (the model's ``alpha``), in (0, 1).
    every_windows : float or None
        Tolerated false alarms: at most one per this many windows on average (> 1).
    max_n : int, default 6
        Longest rule (windows of delay) considered.
    """
    check_unit_interval("level", level)
    check_int("max_n", max_n, 1)
    if every_windows is None:
        return Debounce(1, 1, level, expected_windows(level, 1, 1))
    if not every_windows > 1:
        raise ValueError(f"every_windows must be > 1, got {every_windows!r}")
    for n in range(1, max_n + 1):
        for k in range(1, n + 1):
            windows = expected_windows(level, k, n)
            if windows >= every_windows:
                return Debounce(k, n, level, windows)
    low, high = 1e-12, level
    for _ in range(200):
        mid = math.sqrt(low * high)
        if expected_windows(mid, max_n, max_n) >= every_windows:
            low = mid
        else:
            high = mid
    return Debounce(max_n, max_n, low, expected_windows(low, max_n, max_n))
