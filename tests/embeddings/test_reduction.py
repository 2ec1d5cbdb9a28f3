"""Dimension reduction, and why PCA must be fitted on data the detector never tests."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy import stats
from threadpoolctl import threadpool_limits

from detectors import KSDetector
from embeddings import NoReduction, PCAReducer, RandomProjection, ReducedEmbedder, split_reference
from embeddings.fingerprint import sha256_json

ALPHA = 0.05
TRIALS = 200
# Rejection counts consistent (99%) with a true rate of ALPHA over TRIALS trials.
LOW, HIGH = stats.binom.interval(0.99, TRIALS, ALPHA)
DIM, K, N = 256, 10, 200


@functools.cache
def correlated_gaussian() -> np.ndarray:
    """``L`` with ``L @ L.T`` a covariance of eigenvalues 1/sqrt(i), in a random basis."""
    rng = np.random.default_rng(7)
    with threadpool_limits(limits=1):
        basis, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
    return basis * (1.0 / np.arange(1, DIM + 1) ** 0.5) ** 0.5


def ks_on_components(reference: np.ndarray, current: np.ndarray) -> bool:
    detector = KSDetector(
        {f"pc{i}": reference[:, i] for i in range(K)}, alpha=ALPHA, correction="bonferroni"
    )
    return detector.test({f"pc{i}": current[:, i] for i in range(K)}).drifted


def null_rejections(trials: int, *, split: bool) -> int:
    """Same-distribution trials flagged by KS+Bonferroni on PCA-10 of 256-D data."""
    factor = correlated_gaussian()
    count = 0
    # One BLAS thread: on a busy 2-core machine OpenBLAS' spinning threads cost 10x.
    with threadpool_limits(limits=1):
        for trial in range(trials):
            rng = np.random.default_rng(1000 + trial)
            current = rng.normal(size=(N, DIM)) @ factor.T
            if split:
                pool = rng.normal(size=(2 * N, DIM)) @ factor.T
                fit_part, reference = split_reference(pool, 0.5, seed=trial)
            else:
                reference = fit_part = rng.normal(size=(N, DIM)) @ factor.T
            pca = PCAReducer.fit(fit_part, K)
            count += ks_on_components(pca.transform(reference), pca.transform(current))
    return count


def test_false_positive_rate_is_alpha_with_pca_fitted_on_a_separate_split() -> None:
    rejections = null_rejections(TRIALS, split=True)
    assert LOW <= rejections <= HIGH, (rejections, LOW, HIGH)


def test_false_positive_rate_is_inflated_with_pca_fitted_on_the_reference_itself() -> None:
    # The contrast that makes the test above meaningful: the reference's own top components
    # carry its noise, so a fresh sample looks "shrunk" along them. Observed: ~50%.
    trials = 60
    rejections = null_rejections(trials, split=False)
    assert rejections > 0.3 * trials, rejections  # six times alpha, far outside the interval


def test_split_reference_is_a_seeded_disjoint_partition() -> None:
    x = np.arange(20.0).reshape(10, 2)
    fit_part, test_part = split_reference(x, 0.3, seed=1)
    assert fit_part.shape == (3, 2) and test_part.shape == (7, 2)
    rows = sorted(map(tuple, np.vstack([fit_part, test_part])))
    assert rows == sorted(map(tuple, x))
    again = split_reference(x, 0.3, seed=1)
    np.testing.assert_array_equal(again[0], fit_part)
    assert not np.array_equal(split_reference(x, 0.3, seed=2)[0], fit_part)
    fit_part[0, 0] = -1.0  # copies: the input is untouched
    assert x.min() == 0.0
    assert [len(p) for p in split_reference(x[:2], 0.01, seed=0)] == [1, 1]
    for fraction in (0.0, 1.0, 1.5, True):
        with pytest.raises(ValueError, match="fit_fraction"):
            split_reference(x, fraction, seed=0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        split_reference(x[:1], 0.5, seed=0)


def test_pca_matches_scikit_learn_up_to_sign() -> None:
    from sklearn.decomposition import PCA

    x = np.random.default_rng(0).normal(size=(80, 12)) @ np.random.default_rng(1).normal(
        size=(12, 12)
    )
    ours = PCAReducer.fit(x, 4)
    theirs = PCA(n_components=4, svd_solver="full").fit(x)
    signs = np.sign((ours.components * theirs.components_).sum(axis=1))
    np.testing.assert_allclose(ours.components, theirs.components_ * signs[:, None], atol=1e-8)
    np.testing.assert_allclose(ours.explained_variance, theirs.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(ours.transform(x), theirs.transform(x) * signs, rtol=1e-4, atol=1e-4)
    assert ours.transform(x).dtype == np.float32
    again = PCAReducer.fit(x.copy(), 4)
    assert again.settings == ours.settings  # deterministic signs -> same fingerprint
    assert PCAReducer.fit(x[1:], 4).settings != ours.settings


def test_pca_validation() -> None:
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match=r"n_components must be an int in \[1, min\(n, d\)\]"):
        PCAReducer.fit(x, 4)
    with pytest.raises(ValueError, match="must be 2-D"):
        PCAReducer.fit(np.zeros(5), 1)
    with pytest.raises(ValueError, match="NaN"):
        PCAReducer.fit(np.full((5, 3), np.nan), 1)
    with pytest.raises(ValueError, match="fitted on 3"):
        PCAReducer.fit(np.random.default_rng(0).normal(size=(5, 3)), 2).transform(np.zeros((2, 4)))


def test_random_projection_is_seeded_and_preserves_distances_roughly() -> None:
    x = np.random.default_rng(0).normal(size=(50, 300))
    a = RandomProjection(64, seed=3).transform(x)
    np.testing.assert_array_equal(a, RandomProjection(64, seed=3).transform(x))
    assert not np.array_equal(a, RandomProjection(64, seed=4).transform(x))
    assert a.shape == (50, 64) and a.dtype == np.float32
    ratio = np.linalg.norm(a[0] - a[1]) / np.linalg.norm(x[0] - x[1])
    assert 0.6 < ratio < 1.4
    assert RandomProjection(64, seed=3).settings == {
        "kind": "random_projection",
        "n_components": 64,
        "seed": 3,
    }
    with pytest.raises(ValueError, match="n_components"):
        RandomProjection(0, seed=0)


def test_no_reduction_and_reduced_embedder_fingerprint() -> None:
    class Fixed:
        fingerprint = "inner"

        def embed(self, payloads):
            return np.arange(len(payloads) * 4, dtype=np.float64).reshape(-1, 4)

    x = NoReduction().transform(np.ones((2, 3)))
    assert x.dtype == np.float32 and NoReduction().settings == {"kind": "none"}
    projection = RandomProjection(2, seed=0)
    reduced = ReducedEmbedder(Fixed(), projection)
    assert reduced.embed(["a", "b", "c"]).shape == (3, 2)
    assert reduced.fingerprint == sha256_json(
        {"embedder": "inner", "reduction": projection.settings}
    )
    assert reduced.fingerprint != ReducedEmbedder(Fixed(), RandomProjection(2, seed=1)).fingerprint
    assert reduced.describe() == {"embedder": "inner", "reduction": projection.settings}
