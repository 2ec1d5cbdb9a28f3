"""Classifier two-sample test (C2ST): can a classifier tell the window from the reference?"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit
from scipy.stats import mannwhitneyu

from ._common import assemble, check_int, check_unit_interval, insufficient
from .errors import InsufficientDataError
from .mmd import check_feature, check_matrix, subsample
from .results import DriftResult

__all__ = ["ClassifierTwoSampleDetector", "LogisticFit", "fit_logistic"]


class ClassifierTwoSampleDetector:
    """Domain-classifier drift test: held-out AUC of reference vs window, Mann-Whitney p-value.

    A logistic regression is trained to tell current rows from reference rows on one
    part of each sample; on the held-out parts, the test asks whether current rows score
    higher than reference rows more often than chance.

    Parameters
    ----------
    reference : numpy.ndarray, shape (n, d)
        Numeric (bool, int or float; NaN and inf rejected), ``n >= min_samples``.
        Copied; the caller's array is not modified.
    alpha : float, default 0.05
        Significance level in (0, 1): the window drifts when ``p_value < alpha``.
    test_size : float, default 0.5
        Fraction of each side held out for scoring, in (0, 1); each side keeps at least
        one row for training and one for scoring.
    l2 : float, default 1.0
        Ridge penalty :math:`\\lambda \\ge 0` on the weights (not the intercept), on the
        standardized features. Keeps the fit finite when the sides are separable.
    max_iter : int, default 50
        Most Newton steps (>= 1).
    max_n : int or None, default None
        When set (>= 4), at most ``max_n`` rows of each side are used: a seeded random
        subsample of the reference (drawn once, here) and of each window. The reported
        ``n_reference`` / ``n_current`` are the sizes used.
    seed : int, default 0
        Seeds the reference's split (drawn once), each window's split (the same draw
        for every window) and the subsamples.
    min_samples : int, default 4
        Fewest rows a side may hold (>= 2). A reference with fewer raises
        :class:`~detectors.errors.InsufficientDataError`; a window with fewer yields a
        result with ``insufficient_data=True``.
    feature : str, default "embedding"
        Name of the result's single pseudo-feature.

    Notes
    -----
    **Classifier.** Features are standardized with the mean and standard deviation of
    the reference's *training* rows (a constant column keeps scale 1). With labels
    :math:`y = 1` for the window and :math:`0` for the reference, the classifier
    :math:`f(x) = w^\\top x + b` minimises the class-balanced, ridge-penalised logistic
    loss

    .. math:: L(w, b) = \\sum_i \\omega_i \\left[\\log(1 + e^{f(x_i)}) - y_i f(x_i)\\right]
              + \\frac{\\lambda}{2} \\lVert w \\rVert^2,\\qquad
              \\omega_i = \\frac{N_{\\mathrm{train}}}{2 N_{y_i}},

    a strictly convex problem solved by Newton's method (IRLS) with backtracking,
    in numpy (:func:`fit_logistic`).

    **Statistic and p-value.** On the held-out rows, with scores :math:`f`, the
    statistic is the AUC of telling window from reference,

    .. math:: \\mathrm{AUC} = \\frac{U}{n_1 n_2},\\qquad
              U = \\sum_{j \\in \\mathrm{cur}} \\sum_{i \\in \\mathrm{ref}}
              \\left(\\mathbb{1}[f_j > f_i] + \\tfrac12 \\mathbb{1}[f_j = f_i]\\right),

    with :math:`n_1, n_2` the held-out window and reference sizes, and the p-value is
    the one-sided Mann-Whitney test that current scores are stochastically larger,
    ``scipy.stats.mannwhitneyu(current_scores, reference_scores,
    alternative="greater")`` (exact null distribution for small samples without ties,
    normal approximation with tie and continuity correction otherwise).

    **Why that p-value is valid.** The classifier is a function of the training rows
    only. Under the null hypothesis all rows are independent draws from one
    distribution, so conditionally on the training rows -- i.e. on :math:`f` -- the
    held-out rows of both sides are still i.i.d. from that distribution, and so are
    their scores :math:`f(x)`: the held-out current and reference scores are two i.i.d.
    samples of one distribution, exactly the Mann-Whitney null. The test is therefore
    valid whatever the classifier, however well or badly it was fitted (non-convergence
    cannot break the level, only cost power); scoring the training rows instead would
    not be valid. Splitting costs power (only ``test_size`` of the rows are scored);
    it is the price of a p-value without permutations.

    If every held-out score is equal (e.g. constant data), ``AUC = 0.5`` and ``p = 1``.
    """

    name = "c2st"

    def __init__(
        self,
        reference: np.ndarray,
        *,
        alpha: float = 0.05,
        test_size: float = 0.5,
        l2: float = 1.0,
        max_iter: int = 50,
        max_n: int | None = None,
        seed: int = 0,
        min_samples: int = 4,
        feature: str = "embedding",
    ) -> None:
        self.alpha = check_unit_interval("alpha", alpha)
        if isinstance(test_size, bool) or not isinstance(
            test_size, (int, float, np.floating, np.integer)
        ):
            raise TypeError(f"test_size must be a float in (0, 1), got {type(test_size).__name__}")
        if not 0.0 < float(test_size) < 1.0:
            raise ValueError(f"test_size must be in (0, 1), got {test_size!r}")
        self.test_size = float(test_size)
        if isinstance(l2, bool) or not isinstance(l2, (int, float, np.floating, np.integer)):
            raise TypeError(f"l2 must be a float >= 0, got {type(l2).__name__}")
        if not 0.0 <= float(l2) < math.inf:
            raise ValueError(f"l2 must be finite and >= 0, got {l2!r}")
        self.l2 = float(l2)
        self.max_iter = check_int("max_iter", max_iter, 1)
        self.seed = check_int("seed", seed, 0)
        self.min_samples = check_int("min_samples", min_samples, 2)
        self.max_n = None if max_n is None else check_int("max_n", max_n, 4)
        self.feature = check_feature(feature)

        ref = check_matrix(reference, "reference")
        if ref.shape[0] < self.min_samples:
            raise InsufficientDataError(
                f"reference has {ref.shape[0]} rows; min_samples is {self.min_samples}"
            )
        ref = subsample(ref, self.max_n, (self.seed, 1))
        self.n_features = ref.shape[1]
        self._n = ref.shape[0]
        train, held = self._split(self._n, np.random.default_rng((self.seed, 0)))
        self._mean = ref[train].mean(axis=0)
        scale = ref[train].std(axis=0)
        self._scale = np.where(scale > 0.0, scale, 1.0)
        self._ref_train = self._standardize(ref[train])
        self._ref_held = self._standardize(ref[held])

    def __repr__(self) -> str:
        return (
            f"ClassifierTwoSampleDetector(n_reference={self._n}, n_features={self.n_features}, "
            f"alpha={self.alpha}, test_size={self.test_size}, l2={self.l2}, "
            f"max_n={self.max_n}, seed={self.seed})"
        )

    def test(self, current: np.ndarray) -> DriftResult:
        """Test the rows of ``current`` against the reference.

        Parameters
        ----------
        current : numpy.ndarray, shape (m, d)
            Numeric, same ``d`` as the reference, no NaN/inf. An empty window (also an
            empty 1-D array) or one with fewer than ``min_samples`` rows gives a result
            with ``insufficient_data=True``. Not modified.

        Returns
        -------
        DriftResult
            ``detector="c2st"``, one feature; ``statistic`` is the held-out AUC,
            ``p_value`` the one-sided Mann-Whitney p-value, ``correction="none"``.

        Raises
        ------
        ValueError, TypeError
            ``current`` is not a 2-D numeric array, has another number of columns than
            the reference, or holds NaN/inf.
        """
        cur = check_matrix(current, "current", self.n_features)
        if cur.shape[0] < self.min_samples:
            return insufficient(
                self.name, (self.feature,), [self._n], [cur.shape[0]], self.alpha, "none"
            )
        cur = subsample(cur, self.max_n, (self.seed, 2))
        auc, p_value = self._auc_p_value(cur)
        return assemble(
            self.name,
            (self.feature,),
            np.array([auc]),
            np.array([p_value]),
            [self._n],
            [cur.shape[0]],
            self.alpha,
            "none",
        )

    def held_out_scores(self, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Held-out scores ``(reference, current)`` of the classifier trained for ``current``.

        ``current`` must be valid and have at least ``min_samples`` rows.
        """
        cur = subsample(
            check_matrix(current, "current", self.n_features), self.max_n, (self.seed, 2)
        )
        if cur.shape[0] < self.min_samples:
            raise ValueError(f"current has {cur.shape[0]} rows; min_samples is {self.min_samples}")
        return self._scores(cur)

    def _split(self, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Sorted training and held-out row indices of a side of ``size`` rows."""
        n_held = min(max(round(size * self.test_size), 1), size - 1)
        order = rng.permutation(size)
        return np.sort(order[n_held:]), np.sort(order[:n_held])

    def _standardize(self, x: np.ndarray) -> np.ndarray:
        return (x - self._mean) / self._scale

    def _scores(self, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        train, held = self._split(cur.shape[0], np.random.default_rng(self.seed))
        cur_train, cur_held = self._standardize(cur[train]), self._standardize(cur[held])
        x = np.vstack([self._ref_train, cur_train])
        y = np.r_[np.zeros(self._ref_train.shape[0]), np.ones(cur_train.shape[0])]
        fit = fit_logistic(x, y, l2=self.l2, max_iter=self.max_iter, balanced=True)
        return fit.decision(self._ref_held), fit.decision(cur_held)

    def _auc_p_value(self, cur: np.ndarray) -> tuple[float, float]:
        ref_scores, cur_scores = self._scores(cur)
        if np.all(ref_scores == ref_scores[0]) and np.all(cur_scores == ref_scores[0]):
            return 0.5, 1.0
        result = mannwhitneyu(cur_scores, ref_scores, alternative="greater")
        auc = float(result.statistic) / (cur_scores.size * ref_scores.size)
        return auc, float(result.pvalue)


class LogisticFit:
    """A fitted linear classifier :math:`f(x) = w^\\top x + b` (see :func:`fit_logistic`).

    Attributes
    ----------
    weights : numpy.ndarray, shape (d,)
    intercept : float
    n_iter : int
        Newton steps taken.
    converged : bool
        Whether the Newton steps fell below the tolerance within ``max_iter`` steps.
    """

    __slots__ = ("converged", "intercept", "n_iter", "weights")

    def __init__(self, weights: np.ndarray, intercept: float, n_iter: int, converged: bool):
        self.weights = weights
        self.intercept = intercept
        self.n_iter = n_iter
        self.converged = converged

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Scores :math:`w^\\top x + b` (log-odds of the positive class) of the rows of ``x``."""
        return x @ self.weights + self.intercept


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    *,
    l2: float = 1.0,
    max_iter: int = 50,
    tol: float = 1e-9,
    balanced: bool = True,
) -> LogisticFit:
    """Ridge-penalised (class-balanced) logistic regression by Newton's method.

    Parameters
    ----------
    x : numpy.ndarray, shape (N, d)
        Features (already standardized; no intercept column).
    y : numpy.ndarray, shape (N,)
        Labels in {0, 1}, both present.
    l2 : float, default 1.0
        Ridge penalty :math:`\\lambda` on the weights, not on the intercept.
    max_iter : int, default 50
        Most Newton steps.
    tol : float, default 1e-9
        Stop after a Newton step whose largest component is at most
        ``tol * (1 + max|theta|)`` (convergence being quadratic, the parameters are
        then accurate to far better than ``tol``).
    balanced : bool, default True
        Weigh each class to half the total weight (see
        :class:`ClassifierTwoSampleDetector` Notes); otherwise every row weighs 1.

    Returns
    -------
    LogisticFit

    Notes
    -----
    Minimises :math:`L(\\theta) = \\sum_i \\omega_i [\\log(1 + e^{f_i}) - y_i f_i] +
    \\tfrac{\\lambda}{2}\\lVert w \\rVert^2` over :math:`\\theta = (w, b)`, with gradient
    :math:`\\tilde X^\\top \\omega (p - y) + \\lambda (w, 0)` and Hessian
    :math:`\\tilde X^\\top \\mathrm{diag}(\\omega p (1 - p)) \\tilde X + \\lambda\\,
    \\mathrm{diag}(1, \\dots, 1, 0)`, :math:`p = \\sigma(f)`, :math:`\\tilde X = [X, 1]`.
    Each step solves the Newton system (least squares if singular) and, away from the
    optimum, halves the step until the loss decreases enough (Armijo); near it (Newton
    decrement :math:`g^\\top H^{-1} g \\le 10^{-8} \\sum_i \\omega_i`, where loss changes
    are at rounding level) full steps are taken.
    """
    n_rows, d = x.shape
    design = np.hstack([x, np.ones((n_rows, 1))])
    positive = y == 1
    if balanced:
        weights = np.where(
            positive, n_rows / (2.0 * positive.sum()), n_rows / (2.0 * (~positive).sum())
        )
    else:
        weights = np.ones(n_rows)
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0

    def loss(theta: np.ndarray) -> float:
        f = design @ theta
        return float(weights @ (np.logaddexp(0.0, f) - y * f) + 0.5 * theta @ (penalty * theta))

    theta = np.zeros(d + 1)
    current = loss(theta)
    # Below this Newton decrement the loss changes by about its rounding error: the
    # quadratic model is then exact enough to take full steps without a line search.
    near = 1e-8 * float(weights.sum())
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        p = expit(design @ theta)
        gradient = design.T @ (weights * (p - y)) + penalty * theta
        curvature = weights * p * (1.0 - p)
        hessian = (design.T * curvature) @ design + np.diag(penalty)
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        decrement = float(gradient @ step)
        if not np.all(np.isfinite(step)):
            break
        if decrement <= near:
            theta = theta - step
            current = loss(theta)
        else:
            t = 1.0
            while True:  # Armijo backtracking
                candidate = theta - t * step
                value = loss(candidate)
                if value <= current - 1e-4 * t * decrement:
                    break
                t *= 0.5
                if t < 1e-10:
                    return LogisticFit(theta[:-1].copy(), float(theta[-1]), n_iter, False)
            theta, current = candidate, value
        if float(np.max(np.abs(step))) <= tol * (1.0 + float(np.max(np.abs(theta)))):
            converged = True
            break
    return LogisticFit(theta[:-1].copy(), float(theta[-1]), n_iter, converged)
