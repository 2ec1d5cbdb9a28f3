"""Multiple-testing correction of per-feature p-values."""

from __future__ import annotations

import numpy as np

__all__ = ["CORRECTIONS", "adjust_p_values"]

#: Accepted values of ``method`` (and of the detectors' ``correction`` argument).
CORRECTIONS: tuple[str, ...] = ("bonferroni", "benjamini-hochberg", "none")


def adjust_p_values(p_values: np.ndarray, method: str) -> np.ndarray:
    """Adjust a family of p-values for multiple testing.

    Parameters
    ----------
    p_values : array_like, 1-D
        Raw p-values in ``[0, 1]``, one per hypothesis.
    method : {"bonferroni", "benjamini-hochberg", "none"}
        Correction to apply.

    Returns
    -------
    numpy.ndarray
        Adjusted p-values (a new float64 array, same order as the input).

    Raises
    ------
    ValueError
        If ``method`` is unknown or ``p_values`` is not 1-D with values in ``[0, 1]``.

    Notes
    -----
    With ``m`` hypotheses and raw p-values :math:`p_i`:

    * Bonferroni controls the family-wise error rate:
      :math:`\\tilde p_i = \\min(1, m p_i)`.
    * Benjamini-Hochberg controls the false discovery rate (for independent or
      positively dependent tests). With :math:`p_{(1)} \\le \\dots \\le p_{(m)}`,
      :math:`\\tilde p_{(i)} = \\min_{j \\ge i} \\min(1, m p_{(j)} / j)`; this equals
      ``scipy.stats.false_discovery_control(p, method="bh")``.
    * ``"none"`` returns a copy of the input.

    Rejecting :math:`\\tilde p_i < \\alpha` then gives the corresponding guarantee at
    level :math:`\\alpha`.
    """
    if not isinstance(method, str) or method not in CORRECTIONS:
        raise ValueError(f"method must be one of {CORRECTIONS}, got {method!r}")
    p = np.array(p_values, dtype=np.float64)  # a copy: the caller's array is never touched
    if p.ndim != 1:
        raise ValueError(f"p_values must be 1-D, got shape {p.shape}")
    if not np.all((p >= 0.0) & (p <= 1.0)):  # also rejects NaN
        raise ValueError("p_values must lie in [0, 1] (no NaN)")
    m = p.size
    if method == "none" or m == 0:
        return p
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    # Benjamini-Hochberg, step-up. Same operations, in the same order, as scipy's
    # false_discovery_control, so the two agree bit for bit.
    order = np.argsort(p, kind="stable")
    ranked = p[order] * (m / np.arange(1, m + 1, dtype=np.float64))
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.empty_like(ranked)
    adjusted[order] = ranked
    return np.clip(adjusted, 0.0, 1.0)
