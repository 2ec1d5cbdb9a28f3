"""Dimension reduction of embeddings: PCA (fitted on held-out data), random projection, none.

A two-sample test on PCA components is only calibrated when the PCA was fitted on data the
test never sees. Fitted on the reference sample itself, the leading components follow that
sample's own noise: the reference has more variance along them than any fresh sample from
the same distribution, and the test flags drift that is not there. So the fitting API takes
the fit part explicitly, and :func:`split_reference` makes one::

    fit_part, reference = split_reference(reference_embeddings, fit_fraction=0.3, seed=0)
    pca = PCAReducer.fit(fit_part, n_components=10)
    detector_reference = pca.transform(reference)   # fit_part is never tested against
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from embeddings.base import Embedder
from embeddings.fingerprint import sha256_json

__all__ = [
    "NoReduction",
    "PCAReducer",
    "RandomProjection",
    "ReducedEmbedder",
    "Reducer",
    "split_reference",
]


class Reducer(Protocol):
    """Maps ``(n, d)`` embeddings to ``(n, k)``."""

    @property
    def settings(self) -> dict[str, Any]:
        """What determines the mapping (part of the fingerprint)."""
        ...

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``(n, k)`` float32."""
        ...


def split_reference(
    x: np.ndarray, fit_fraction: float = 0.5, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split reference embeddings at random into a fit part and a test part (copies).

    Parameters
    ----------
    x : numpy.ndarray
        ``(n, d)`` reference embeddings.
    fit_fraction : float, default 0.5
        Share of rows (rounded, at least one on each side) for fitting the reduction.
    seed : int
        Seed of the permutation, so the split is reproducible.

    Returns
    -------
    fit_part, test_part : numpy.ndarray
        Disjoint rows; fit the reducer on ``fit_part``, give ``test_part`` to the detector.
    """
    array = _matrix(x, "x")
    if (
        isinstance(fit_fraction, bool)
        or not isinstance(fit_fraction, (int, float))
        or not (0.0 < fit_fraction < 1.0)
    ):
        raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction!r}")
    n = array.shape[0]
    if n < 2:
        raise ValueError(f"x needs at least 2 rows to split, got {n}")
    n_fit = min(max(round(n * fit_fraction), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return array[np.sort(order[:n_fit])].copy(), array[np.sort(order[n_fit:])].copy()


class PCAReducer:
    """Principal component analysis by singular value decomposition (numpy).

    Build with :meth:`fit` on held-out data (see :func:`split_reference`).

    Attributes
    ----------
    n_components : int
        :math:`k`.
    mean : numpy.ndarray
        ``(d,)`` mean of the fit data.
    components : numpy.ndarray
        ``(k, d)`` orthonormal principal axes, by decreasing variance.
    explained_variance : numpy.ndarray
        ``(k,)`` variance of the fit data along each axis.

    Notes
    -----
    With :math:`X_c = X - \\bar x = U S V^T`, the axes are the first :math:`k` rows of
    :math:`V^T`, each signed so that its largest-magnitude coordinate is positive (the
    same data always gives the same axes), and ``transform`` is
    :math:`(x - \\bar x) V_k`.
    """

    def __init__(
        self, mean: np.ndarray, components: np.ndarray, explained_variance: np.ndarray
    ) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)
        self.explained_variance = np.asarray(explained_variance, dtype=np.float64)
        self.n_components = int(self.components.shape[0])
        for array in (self.mean, self.components, self.explained_variance):
            array.setflags(write=False)
        self._settings = {
            "kind": "pca",
            "n_components": self.n_components,
            "fit_sha256": sha256_json(
                {"mean": self.mean.tobytes().hex(), "components": self.components.tobytes().hex()}
            ),
        }

    @classmethod
    def fit(cls, fit_part: np.ndarray, n_components: int) -> PCAReducer:
        """Fit on ``fit_part`` (``(n, d)``; never the sample a detector will test)."""
        x = _matrix(fit_part, "fit_part").astype(np.float64)
        n, d = x.shape
        if (
            isinstance(n_components, bool)
            or not isinstance(n_components, int)
            or not (1 <= n_components <= min(n, d))
        ):
            raise ValueError(
                f"n_components must be an int in [1, min(n, d)] = [1, {min(n, d)}] "
                f"for fit_part of shape {x.shape}, got {n_components!r}"
            )
        if n < 2:
            raise ValueError("fit_part needs at least 2 rows")
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        components = vt[:n_components]
        signs = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
        components = components * signs[:, None]
        return cls(mean, components, s[:n_components] ** 2 / (n - 1))

    def __repr__(self) -> str:
        return f"PCAReducer(n_components={self.n_components}, input_dim={self.mean.shape[0]})"

    @property
    def settings(self) -> dict[str, Any]:
        """Kind, ``k`` and a hash of the fitted axes."""
        return dict(self._settings)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Project ``(n, d)`` onto the axes: ``(n, k)`` float32."""
        array = _matrix(x, "x")
        if array.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"x has {array.shape[1]} columns; this PCA was fitted on {self.mean.shape[0]}"
            )
        return ((array - self.mean) @ self.components.T).astype(np.float32)


class RandomProjection:
    """Gaussian random projection to ``n_components`` (seeded; needs no fitting).

    Parameters
    ----------
    n_components : int
        :math:`k`.
    seed : int
        Seed of the projection matrix.

    Notes
    -----
    The matrix :math:`R \\in \\mathbb{R}^{d \\times k}` has independent
    :math:`\\mathcal N(0, 1/k)` entries, drawn from ``numpy.random.default_rng(seed)`` when a
    ``d`` is first seen, so distances are preserved in expectation
    (Johnson-Lindenstrauss) and the same seed and ``d`` always give the same matrix.
    """

    def __init__(self, n_components: int, *, seed: int) -> None:
        if (
            isinstance(n_components, bool)
            or not isinstance(n_components, int)
            or (n_components < 1)
        ):
            raise ValueError(f"n_components must be an int >= 1, got {n_components!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.n_components = n_components
        self.seed = seed
        self._matrices: dict[int, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"RandomProjection(n_components={self.n_components}, seed={self.seed})"

    @property
    def settings(self) -> dict[str, Any]:
        """Kind, ``k`` and seed."""
        return {"kind": "random_projection", "n_components": self.n_components, "seed": self.seed}

    def matrix(self, input_dim: int) -> np.ndarray:
        """The ``(d, k)`` projection matrix for ``d = input_dim``."""
        if input_dim not in self._matrices:
            rng = np.random.default_rng(self.seed)
            matrix = rng.normal(
                0.0, 1.0 / np.sqrt(self.n_components), size=(input_dim, self.n_components)
            )
            matrix.setflags(write=False)
            self._matrices[input_dim] = matrix
        return self._matrices[input_dim]

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``x @ R``: ``(n, k)`` float32."""
        array = _matrix(x, "x")
        return (array @ self.matrix(array.shape[1])).astype(np.float32)


class NoReduction:
    """The identity (float32)."""

    settings: dict[str, Any] = {"kind": "none"}  # noqa: RUF012 - read-only by convention

    def __repr__(self) -> str:
        return "NoReduction()"

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``x`` as float32."""
        return _matrix(x, "x").astype(np.float32, copy=False)


class ReducedEmbedder:
    """An :class:`~embeddings.base.Embedder` followed by a :class:`Reducer`.

    The fingerprint covers both, so a cache keyed by it is invalidated by a refitted PCA.
    """

    def __init__(self, embedder: Embedder, reducer: Reducer) -> None:
        self.embedder = embedder
        self.reducer = reducer

    def __repr__(self) -> str:
        return f"ReducedEmbedder({self.embedder!r}, {self.reducer!r})"

    @property
    def fingerprint(self) -> str:
        """Hash of the inner fingerprint and the reducer's settings."""
        return sha256_json(
            {"embedder": self.embedder.fingerprint, "reduction": self.reducer.settings}
        )

    def describe(self) -> dict[str, Any]:
        """The inner embedder's description (or fingerprint) and the reducer's settings."""
        describe = getattr(self.embedder, "describe", None)
        inner = describe() if callable(describe) else self.embedder.fingerprint
        return {"embedder": inner, "reduction": self.reducer.settings}

    def embed(self, payloads: Sequence[Any]) -> np.ndarray:
        """Embed, then reduce: ``(n, k)`` float32."""
        return self.reducer.transform(self.embedder.embed(payloads))


def _matrix(x: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(x)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array
