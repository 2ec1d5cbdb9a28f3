"""Population Stability Index drift detector for numeric and categorical features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ._binning import BinnedDetector, check_epsilon, smoothed

__all__ = ["PSIDetector"]


class PSIDetector(BinnedDetector):
    """Per-feature Population Stability Index against a fixed reference.

    A distance, not a test: there are no p-values and no multiple-testing correction;
    a feature drifts when its PSI exceeds ``threshold``.

    Parameters
    ----------
    reference : Mapping[str, numpy.ndarray]
        Feature name -> 1-D array. Numeric features: bool, int or float (NaN and inf
        rejected). Categorical features: bool, int, str, bytes, or object arrays of
        hashable values. Bins are computed once, here; the caller's arrays are not
        modified.
    threshold : float, default 0.2
        A feature drifts when its PSI is strictly greater than this (finite, >= 0).
    bins : int, default 10
        Number of reference-quantile bins of a numeric feature (>= 2; ties can merge
        some). Ignored for categorical features.
    epsilon : float, default 1e-4
        Proportion given to an empty bin (in (0, 1)), see Notes.
    feature_type : {"numeric", "categorical"} or None, default None
        Type of every feature. ``None`` infers it per column from the reference's dtype:
        int and float columns are numeric; bool, str, bytes and object columns are
        categorical. Pass ``"categorical"`` for integer-coded categories.
    min_samples : int, default 1
        Fewest values a column may hold. A reference column with fewer raises
        :class:`~detectors.errors.InsufficientDataError`; a current window with fewer
        (in any feature) yields a result with ``insufficient_data=True``.

    Attributes
    ----------
    features : tuple of str
        The reference's features, in order.
    feature_types : Mapping[str, str]
        Feature -> ``"numeric"`` or ``"categorical"``.

    Notes
    -----
    Both samples are counted into the same bins (:mod:`detectors._binning`): for a
    numeric feature ``bins`` reference-quantile bins (deciles by default), open at both
    ends; for a categorical one a bin per reference category plus a bin per category
    first seen in the window. With reference proportions :math:`r_i` and current
    proportions :math:`c_i`,

    .. math:: \\mathrm{PSI} = \\sum_i (c_i - r_i) \\ln \\frac{c_i}{r_i}
              = \\mathrm{KL}(c \\| r) + \\mathrm{KL}(r \\| c),

    the symmetrised Kullback-Leibler divergence, in nats; it is 0 for identical binned
    distributions and every term is >= 0. An empty bin would make it infinite, so each
    proportion that is exactly 0 is replaced by :math:`\\varepsilon` and each side is
    then renormalised to sum to 1 (the zero-replacement Evidently uses, plus the
    renormalisation). A bin that is empty on one side only contributes about
    :math:`c \\ln(c / \\varepsilon)`: a category that appears in 1% of the window but
    never in the reference adds about 0.046 with the default :math:`\\varepsilon`.

    The conventional reading (credit-scoring practice) is PSI < 0.1: no significant
    change; 0.1 to 0.25: moderate change, investigate; > 0.25: significant change. The
    default threshold 0.2 is the other common single cut-off. Under no drift, PSI is
    about :math:`(1/n + 1/m)\\,\\chi^2_{k-1}` for ``k`` bins and sample sizes ``n`` and
    ``m``, so small windows give larger PSI by chance: with 10 bins expect about
    :math:`9 (1/n + 1/m)` (0.09 for 200 against 200).
    """

    name = "psi"

    def __init__(
        self,
        reference: Mapping[str, np.ndarray],
        *,
        threshold: float = 0.2,
        bins: int = 10,
        epsilon: float = 1e-4,
        feature_type: str | None = None,
        min_samples: int = 1,
        alpha: float = 0.05,
        n_resamples: int = 1000,
        seed: int = 0,
        window_sizes: Sequence[int] = (),
    ) -> None:
        self.epsilon = check_epsilon(epsilon)
        super().__init__(
            reference,
            threshold=threshold,
            bins=bins,
            feature_type=feature_type,
            min_samples=min_samples,
            alpha=alpha,
            n_resamples=n_resamples,
            seed=seed,
            window_sizes=window_sizes,
        )

    def _statistic(self, reference: np.ndarray, current: np.ndarray) -> float:
        r = smoothed(reference, self.epsilon)
        c = smoothed(current, self.epsilon)
        return float(np.sum((c - r) * np.log(c / r)))
