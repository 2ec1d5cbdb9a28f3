"""Streaming concept-drift detectors over a per-record error (or loss) stream.

Where the window tests of :mod:`detectors` compare a batch with a reference, these
watch one number per labelled record, typically ``1`` for a misclassification and ``0``
otherwise (or a real-valued loss), and flag the record at which the stream's mean
changed. One verb, River-style: ``update(x)`` returns ``True`` when drift is detected
at this record. All are deterministic: the same stream gives the same detections.

* :class:`DDM` (Gama et al., 2004): error rate against its historical minimum, with a
  warning level; binary errors only.
* :class:`ADWIN` (Bifet and Gavaldà, 2007): adaptive window over an exponential
  histogram, cut where two sub-windows' means differ significantly; any bounded values.
* :class:`PageHinkley` (Page, 1954): cumulative deviation from the running mean.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ._common import check_int

__all__ = ["ADWIN", "DDM", "PageHinkley"]

_REAL = (int, float, np.integer, np.floating, np.bool_)


def _real(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    return float(value)


def _value(x: float) -> float:
    """One stream value as a finite float (bool counts as 0/1)."""
    if not isinstance(x, _REAL):
        raise TypeError(f"x must be a real number, got {type(x).__name__}")
    value = float(x)
    if not math.isfinite(value):
        raise ValueError(f"x must be finite, got {x!r}")
    if abs(value) > _MAX_VALUE:
        raise ValueError(f"x must be at most {_MAX_VALUE:g} in magnitude (sums and squares of "
                         f"the stream must stay finite), got {x!r}")
    return value


#: Largest stream value accepted: ADWIN sums squares of buckets of values.
_MAX_VALUE = 1e150


def _plain(value: Any) -> Any:
    """Statistics as JSON-ready values (lists copied, numpy scalars unwrapped)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class _StreamDetector:
    """Shared bookkeeping: ``n_seen``, ``drift_detected``, ``reset``."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self._n_seen = 0
        self._drift = False
        self._restart()

    def _restart(self) -> None:
        """Forget the statistics (after a detection, and on reset)."""
        raise NotImplementedError

    @property
    def n_seen(self) -> int:
        """Values passed to :meth:`update` since construction or :meth:`reset`."""
        return self._n_seen

    @property
    def drift_detected(self) -> bool:
        """Whether the last :meth:`update` detected drift."""
        return self._drift

    def reset(self) -> None:
        """Return to the freshly constructed state (parameters are kept)."""
        self._n_seen = 0
        self._drift = False
        self._restart()

    def get_state(self) -> dict[str, Any]:
        """The statistics seen so far (not the parameters), as JSON-ready plain values.

        With :meth:`set_state` this carries a detector across restarts: the daemon stores
        it with every window it evaluates.
        """
        state = {k: v for k, v in vars(self).items() if k.startswith("_")}
        return {"detector": self.name, "state": _plain(state)}

    def set_state(self, saved: dict[str, Any]) -> None:
        """Resume from :meth:`get_state`'s output (of a detector of the same kind).

        Raises
        ------
        ValueError
            ``saved`` is of another detector kind or another layout of statistics (a
            different driftline version); the detector is left unchanged then.
        """
        if not isinstance(saved, dict) or saved.get("detector") != self.name:
            raise ValueError(f"saved state is not a {self.name} detector's")
        state = saved.get("state")
        mine = {k: v for k, v in vars(self).items() if k.startswith("_")}
        if not isinstance(state, dict) or set(state) != set(mine):
            raise ValueError(f"saved {self.name} state has another layout: "
                             f"{sorted(state) if isinstance(state, dict) else state!r}")
        for key, value in state.items():
            if type(value) is not type(mine[key]) and not (
                    isinstance(value, int | float) and isinstance(mine[key], int | float)
                    and not isinstance(value, bool)):
                raise ValueError(f"saved {self.name} state: '{key}' has type "
                                 f"{type(value).__name__}, expected {type(mine[key]).__name__}")
        for key, value in state.items():
            setattr(self, key, type(mine[key])(value) if isinstance(mine[key], float) else value)


class DDM(_StreamDetector):
    """Drift Detection Method (Gama, Medas, Castillo and Rodrigues, 2004).

    Parameters
    ----------
    min_num_instances : int, default 30
        Records seen (since the start or the last detection) before the detector may
        flag anything; the error-rate estimate is too rough before.
    warning_threshold : float, default 2.0
        Warning level, in standard deviations above the best error rate seen.
    drift_threshold : float, default 3.0
        Drift level, in standard deviations; must exceed ``warning_threshold``.

    Notes
    -----
    Each record's error :math:`x_t \\in \\{0, 1\\}` is a Bernoulli trial. After
    :math:`i` records the error rate is :math:`p_i = \\frac1i \\sum_{t \\le i} x_t` with
    binomial standard deviation :math:`s_i = \\sqrt{p_i (1 - p_i) / i}`. Once
    :math:`i \\ge` ``min_num_instances`` the detector keeps the pair
    :math:`(p_{\\min}, s_{\\min})` at which :math:`p_i + s_i` was smallest (the model's
    best state so far) and reports

    * a *warning* while :math:`p_i + s_i > p_{\\min} + 2 s_{\\min}`,
    * *drift* when :math:`p_i + s_i > p_{\\min} + 3 s_{\\min}`,

    (levels ``warning_threshold`` and ``drift_threshold``), i.e. when the error rate has
    risen beyond the upper end of a ~95% / ~99.7% normal interval around its minimum.
    After a drift the statistics restart, so the detector learns the new concept's
    error rate and watches it in turn. Only increases of the error rate are detected.

    When the first ``min_num_instances`` records hold no error at all,
    :math:`p_{\\min} = s_{\\min} = 0` and the next error is flagged as drift: DDM
    assumes an error rate bounded away from 0. For a near-perfect model raise
    ``min_num_instances`` (or watch it with :class:`ADWIN`).
    """

    name = "ddm"

    def __init__(
        self,
        *,
        min_num_instances: int = 30,
        warning_threshold: float = 2.0,
        drift_threshold: float = 3.0,
    ) -> None:
        self.min_num_instances = check_int("min_num_instances", min_num_instances, 1)
        self.warning_threshold = _real("warning_threshold", warning_threshold)
        self.drift_threshold = _real("drift_threshold", drift_threshold)
        if not self.warning_threshold > 0.0:
            raise ValueError(f"warning_threshold must be > 0, got {warning_threshold!r}")
        if not (
            math.isfinite(self.drift_threshold) and self.drift_threshold > self.warning_threshold
        ):
            raise ValueError(
                f"drift_threshold must be finite and > warning_threshold "
                f"({self.warning_threshold}), got {drift_threshold!r}"
            )
        super().__init__()

    def __repr__(self) -> str:
        return (
            f"DDM(min_num_instances={self.min_num_instances}, "
            f"warning_threshold={self.warning_threshold}, drift_threshold={self.drift_threshold})"
        )

    def _restart(self) -> None:
        self._n = 0
        self._p = 0.0
        self._s = 0.0
        self._p_min = math.inf
        self._s_min = math.inf
        self._warning = False

    @property
    def warning_detected(self) -> bool:
        """Whether the last :meth:`update` left the error rate in the warning zone."""
        return self._warning

    @property
    def error_rate(self) -> float:
        """Error rate since the start or the last detection (``nan`` before any record)."""
        return self._p if self._n else math.nan

    def update(self, x: float) -> bool:
        """Add one record's error (``1``/``True``: wrong, ``0``/``False``: right).

        Returns
        -------
        bool
            ``True`` when drift is detected at this record.

        Raises
        ------
        ValueError, TypeError
            ``x`` is not 0 or 1.
        """
        value = _value(x)
        if value not in (0.0, 1.0):
            raise ValueError(f"x must be 0 or 1 (DDM watches binary errors), got {x!r}")
        self._n_seen += 1
        self._drift = self._warning = False
        self._n += 1
        self._p += (value - self._p) / self._n
        self._s = math.sqrt(self._p * (1.0 - self._p) / self._n)
        if self._n < self.min_num_instances:
            return False
        level = self._p + self._s
        if level <= self._p_min + self._s_min:
            self._p_min, self._s_min = self._p, self._s
        if level > self._p_min + self.drift_threshold * self._s_min:
            self._restart()
            self._drift = True
        elif level > self._p_min + self.warning_threshold * self._s_min:
            self._warning = True
        return self._drift


class ADWIN(_StreamDetector):
    """ADaptive WINdowing (Bifet and Gavaldà, 2007), the ADWIN2 variant.

    Parameters
    ----------
    delta : float, default 0.002
        Confidence parameter in (0, 1): smaller means fewer false alarms and later
        detections.
    clock : int, default 32
        Look for a cut every ``clock`` records (1: every record).
    max_buckets : int, default 5
        Buckets of each size kept before the two oldest merge (:math:`M` in the paper);
        more buckets mean finer cut points and more memory and time.
    min_window_length : int, default 5
        Smallest sub-window a cut may leave on either side.
    grace_period : int, default 10
        No cut is looked for while the window holds this many records or fewer.

    Notes
    -----
    ADWIN keeps the longest recent window :math:`W` in which no change is visible.
    For every split of :math:`W` into an older part :math:`W_0` (:math:`n_0` records,
    mean :math:`\\hat\\mu_0`) and a newer part :math:`W_1` (:math:`n_1`,
    :math:`\\hat\\mu_1`) it tests :math:`|\\hat\\mu_0 - \\hat\\mu_1| > \\varepsilon_{cut}`
    with (the paper's Bernstein-type bound, section 4)

    .. math:: \\varepsilon_{cut} = \\sqrt{\\frac{2}{m}\\, \\sigma_W^2
              \\ln\\frac{2}{\\delta'}} + \\frac{2}{3m} \\ln\\frac{2}{\\delta'},
              \\qquad m = \\frac{1}{1/n_0 + 1/n_1},\\quad
              \\delta' = \\frac{\\delta}{\\ln n},

    where :math:`\\sigma_W^2` is the variance of all :math:`n = |W|` records. While
    some split passes, the oldest bucket is dropped; a drop is a detection, and
    :attr:`estimation` is then the mean of the new concept.

    The window is stored as an exponential histogram (ADWIN2): buckets of
    :math:`2^\\ell` records, each with its sum and its sum of squared deviations, at
    most ``max_buckets`` per size; when a size gets one more, its two oldest merge
    into a bucket of the next size (variances combine by the parallel-variance
    formula). Memory is :math:`O(M \\log(n/M))` and cuts are only looked for at bucket
    boundaries, every ``clock`` records. The values should lie in a bounded range
    (0/1 errors, losses in [0, 1]) for the bound's guarantee.

    Compared with MOA and River, which shrink :math:`n_0` and :math:`n_1` by
    ``min_window_length - 1`` inside :math:`m`, this follows the paper's :math:`m`;
    detections agree except at the margin.
    """

    name = "adwin"

    def __init__(
        self,
        *,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        self.delta = _real("delta", delta)
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        self.clock = check_int("clock", clock, 1)
        self.max_buckets = check_int("max_buckets", max_buckets, 2)
        self.min_window_length = check_int("min_window_length", min_window_length, 1)
        self.grace_period = check_int("grace_period", grace_period, 1)
        self._n_detections = 0
        super().__init__()

    def __repr__(self) -> str:
        return (
            f"ADWIN(delta={self.delta}, clock={self.clock}, max_buckets={self.max_buckets}, "
            f"min_window_length={self.min_window_length}, grace_period={self.grace_period})"
        )

    def _restart(self) -> None:
        # _totals[l] / _variances[l]: the buckets of 2**l records, oldest first. Higher
        # levels hold older records, so the window's oldest bucket is _totals[-1][0].
        self._totals: list[list[float]] = [[]]
        self._variances: list[list[float]] = [[]]
        self._width = 0
        self._total = 0.0
        self._variance = 0.0  # sum of squared deviations from the window mean

    def reset(self) -> None:
        super().reset()
        self._n_detections = 0

    @property
    def width(self) -> int:
        """Records in the current window."""
        return self._width

    @property
    def estimation(self) -> float:
        """Mean of the current window (``nan`` when empty)."""
        return self._total / self._width if self._width else math.nan

    @property
    def variance(self) -> float:
        """Variance of the current window's values (``nan`` when empty)."""
        return self._variance / self._width if self._width else math.nan

    @property
    def n_detections(self) -> int:
        """Detections since construction or :meth:`reset`."""
        return self._n_detections

    def update(self, x: float) -> bool:
        """Add one value (a 0/1 error, a loss, ...) to the window.

        Returns
        -------
        bool
            ``True`` when the window was cut (drift detected) at this record.

        Raises
        ------
        ValueError, TypeError
            ``x`` is not a finite real number.
        """
        value = _value(x)
        self._n_seen += 1
        self._insert(value)
        self._drift = False
        if self._n_seen % self.clock == 0 and self._width > self.grace_period:
            while self._cut_found():
                self._drop_oldest()
                self._drift = True
            if self._drift:
                self._n_detections += 1
        return self._drift

    def _insert(self, value: float) -> None:
        if self._width:
            # Welford: the new value's deviation from the old mean, weighted n / (n + 1).
            mean = self._total / self._width
            self._variance += self._width * (value - mean) ** 2 / (self._width + 1)
        self._width += 1
        self._total += value
        self._totals[0].append(value)
        self._variances[0].append(0.0)
        level = 0
        while len(self._totals[level]) > self.max_buckets:
            size = 2.0**level
            t1, t2 = self._totals[level].pop(0), self._totals[level].pop(0)
            v1, v2 = self._variances[level].pop(0), self._variances[level].pop(0)
            # Two equal halves of size s: the between-halves term is s/2 (mean1 - mean2)^2.
            merged_variance = v1 + v2 + size * ((t1 - t2) / size) ** 2 / 2.0
            if level + 1 == len(self._totals):
                self._totals.append([])
                self._variances.append([])
            self._totals[level + 1].append(t1 + t2)
            self._variances[level + 1].append(merged_variance)
            level += 1

    def _drop_oldest(self) -> None:
        level = len(self._totals) - 1
        total = self._totals[level].pop(0)
        variance = self._variances[level].pop(0)
        if not self._totals[level] and level > 0:
            self._totals.pop()
            self._variances.pop()
        size = 2**level
        rest = self._width - size
        if rest == 0:
            self._width, self._total, self._variance = 0, 0.0, 0.0
            return
        rest_mean = (self._total - total) / rest
        # Inverse of the parallel-variance merge of (bucket, rest) into the window.
        between = size * rest / self._width * (total / size - rest_mean) ** 2
        self._variance = max(self._variance - variance - between, 0.0)
        self._width = rest
        self._total -= total

    def _cut_found(self) -> bool:
        """Whether some bucket boundary splits the window into significantly different means."""
        n = self._width
        if n < 2 * self.min_window_length:
            return False
        sigma2 = self._variance / n
        log_term = math.log(2.0 * math.log(n) / self.delta)
        n0, t0 = 0, 0.0
        for level in range(len(self._totals) - 1, -1, -1):  # oldest records first
            size = 2**level
            for bucket_total in self._totals[level]:
                n0 += size
                t0 += bucket_total
                n1 = n - n0
                if n1 < self.min_window_length:
                    return False  # every later split leaves W1 smaller still
                if n0 < self.min_window_length:
                    continue
                inv_m = 1.0 / n0 + 1.0 / n1
                epsilon = math.sqrt(2.0 * inv_m * sigma2 * log_term) + 2.0 / 3.0 * inv_m * log_term
                if abs(t0 / n0 - (self._total - t0) / n1) > epsilon:
                    return True
        return False


class PageHinkley(_StreamDetector):
    """Page-Hinkley test for a change in the mean of a stream (Page, 1954).

    Parameters
    ----------
    min_instances : int, default 30
        Records seen (since the start or the last detection) before a detection.
    delta : float, default 0.005
        Magnitude of change tolerated: deviations smaller than ``delta`` per record do
        not accumulate. Must be >= 0.
    threshold : float, default 50.0
        Detection threshold :math:`\\lambda` on the accumulated deviation (in the units
        of the values, summed over records). Must be > 0.
    alpha : float, default 0.9999
        Forgetting factor in (0, 1] applied to the cumulative sums (1: no forgetting).
    mode : {"up", "down", "both"}, default "both"
        Detect increases of the mean (``"up"``: the error rate got worse), decreases,
        or both.

    Notes
    -----
    With the running mean :math:`\\bar x_t` of the records since the last restart, the
    (faded) cumulative deviations

    .. math:: U_t = \\alpha U_{t-1} + (x_t - \\bar x_t - \\delta), \\qquad
              L_t = \\alpha L_{t-1} + (x_t - \\bar x_t + \\delta)

    drift down (:math:`U`) and up (:math:`L`) while the mean is stable. An increase of
    the mean is detected when :math:`U_t - \\min_{s \\le t} U_s > \\lambda`, a decrease
    when :math:`\\max_{s \\le t} L_s - L_t > \\lambda`. After a detection the
    statistics restart. The expected delay after a mean shift of size :math:`d` is
    roughly :math:`\\lambda / (d - \\delta)` records, so ``threshold`` must be chosen on
    the scale of the values (the default 50 suits counts of 0/1 errors over hundreds
    of records).
    """

    name = "page_hinkley"
    _MODES = ("up", "down", "both")

    def __init__(
        self,
        *,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: str = "both",
    ) -> None:
        self.min_instances = check_int("min_instances", min_instances, 1)
        self.delta = _real("delta", delta)
        if not (math.isfinite(self.delta) and self.delta >= 0.0):
            raise ValueError(f"delta must be finite and >= 0, got {delta!r}")
        self.threshold = _real("threshold", threshold)
        if not (math.isfinite(self.threshold) and self.threshold > 0.0):
            raise ValueError(f"threshold must be finite and > 0, got {threshold!r}")
        self.alpha = _real("alpha", alpha)
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if not isinstance(mode, str) or mode not in self._MODES:
            raise ValueError(f"mode must be one of {self._MODES}, got {mode!r}")
        self.mode = mode
        super().__init__()

    def __repr__(self) -> str:
        return (
            f"PageHinkley(min_instances={self.min_instances}, delta={self.delta}, "
            f"threshold={self.threshold}, alpha={self.alpha}, mode={self.mode!r})"
        )

    def _restart(self) -> None:
        self._n = 0
        self._mean = 0.0
        self._up = 0.0
        self._up_min = 0.0
        self._down = 0.0
        self._down_max = 0.0

    @property
    def estimation(self) -> float:
        """Mean since the start or the last detection (``nan`` before any record)."""
        return self._mean if self._n else math.nan

    def update(self, x: float) -> bool:
        """Add one value to the test.

        Returns
        -------
        bool
            ``True`` when a change of the mean (in ``mode``'s direction) is detected at
            this record.

        Raises
        ------
        ValueError, TypeError
            ``x`` is not a finite real number.
        """
        value = _value(x)
        self._n_seen += 1
        self._drift = False
        self._n += 1
        self._mean += (value - self._mean) / self._n
        deviation = value - self._mean
        self._up = self.alpha * self._up + deviation - self.delta
        self._up_min = min(self._up_min, self._up)
        self._down = self.alpha * self._down + deviation + self.delta
        self._down_max = max(self._down_max, self._down)
        if self._n < self.min_instances:
            return False
        up = self.mode != "down" and self._up - self._up_min > self.threshold
        down = self.mode != "up" and self._down_max - self._down > self.threshold
        if up or down:
            self._restart()
            self._drift = True
        return self._drift
