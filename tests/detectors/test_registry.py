"""registry: KINDS, build() and the automatic choice of a detector kind."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import detectors
from detectors import (
    KINDS,
    LARGE_REFERENCE,
    AndersonDarlingDetector,
    ChiSquareDetector,
    CramerVonMisesDetector,
    Detector,
    DetectorInfo,
    JSDetector,
    KLDetector,
    KSDetector,
    PSIDetector,
    WassersteinDetector,
    build,
    choose,
)

NUMERIC = {"x": np.linspace(0.0, 1.0, 50)}
CATEGORICAL = {"c": np.array(["a", "b", "c"] * 10)}


def test_kinds_table() -> None:
    expected = {
        "ks": (KSDetector, {"numeric"}, True),
        "chi2": (ChiSquareDetector, {"categorical"}, True),
        "cvm": (CramerVonMisesDetector, {"numeric"}, True),
        "anderson": (AndersonDarlingDetector, {"numeric"}, True),
        "psi": (PSIDetector, {"numeric", "categorical"}, False),
        "kl": (KLDetector, {"numeric", "categorical"}, False),
        "js": (JSDetector, {"numeric", "categorical"}, False),
        "wasserstein": (WassersteinDetector, {"numeric"}, False),
    }
    assert set(KINDS) == set(expected)
    for kind, info in KINDS.items():
        cls, types, has_p_value = expected[kind]
        assert isinstance(info, DetectorInfo) and info.cls is cls and info.cls.name == kind
        assert info.feature_types == frozenset(types) and isinstance(info.feature_types, frozenset)
        assert info.has_p_value is has_p_value
    with pytest.raises(dataclasses.FrozenInstanceError):
        KINDS["ks"].has_p_value = False  # type: ignore[misc]


def test_new_modules_are_exported() -> None:
    for module in ("cvm", "divergence", "psi", "registry", "wasserstein"):
        assert set(getattr(detectors, module).__all__) <= set(detectors.__all__), module


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_build_every_kind(kind: str) -> None:
    info = KINDS[kind]
    for feature_type in sorted(info.feature_types):
        data = NUMERIC if feature_type == "numeric" else CATEGORICAL
        detector = build(kind, data, feature_type=feature_type)
        assert isinstance(detector, info.cls) and isinstance(detector, Detector)
        assert detector.name == kind
        assert build(kind, data).test(data) == detector.test(data)
    for feature_type in {"numeric", "categorical"} - info.feature_types:
        with pytest.raises(ValueError, match="feature_type"):
            build(kind, NUMERIC, feature_type=feature_type)


def test_build_passes_parameters_and_rejects_unknown_ones() -> None:
    psi = build("psi", NUMERIC, threshold=0.3, bins=4)
    assert isinstance(psi, PSIDetector) and (psi.threshold, psi.bins) == (0.3, 4)
    ks = build("ks", NUMERIC, alpha=0.01)
    assert isinstance(ks, KSDetector) and ks.alpha == 0.01
    codes = build("psi", {"c": np.arange(30) % 3}, feature_type="categorical")
    assert isinstance(codes, PSIDetector) and codes.feature_types == {"c": "categorical"}
    with pytest.raises(TypeError, match="threshold"):
        build("ks", NUMERIC, threshold=0.1)
    with pytest.raises(TypeError, match="correction"):
        build("js", NUMERIC, correction="bonferroni")
    # distances take alpha: the level of their calibration to the window size
    assert build("js", NUMERIC, alpha=0.01).alpha == 0.01
    with pytest.raises(ValueError, match="alpha"):
        build("cvm", NUMERIC, alpha=2.0)


@pytest.mark.parametrize("kind", ["KS", "mmd", "", None, 3])
def test_build_unknown_kind_lists_the_valid_ones(kind: object) -> None:
    with pytest.raises(ValueError, match="unknown detector kind") as info:
        build(kind, NUMERIC)  # type: ignore[arg-type]
    for valid in KINDS:
        assert valid in str(info.value)


@pytest.mark.parametrize(
    ("feature_type", "n", "kind"),
    [
        ("numeric", 0, "ks"),
        ("numeric", 500, "ks"),
        ("numeric", LARGE_REFERENCE, "ks"),
        ("numeric", LARGE_REFERENCE + 1, "wasserstein"),
        ("numeric", 10**7, "wasserstein"),
        ("categorical", 2, "chi2"),
        ("categorical", LARGE_REFERENCE, "chi2"),
        ("categorical", LARGE_REFERENCE + 1, "js"),
        ("categorical", np.int64(10**6), "js"),
    ],
)
def test_choose(feature_type: str, n: int, kind: str) -> None:
    assert LARGE_REFERENCE == 10_000
    chosen = choose(feature_type, n)
    assert chosen == kind and feature_type in KINDS[chosen].feature_types


def test_choose_prefers_p_value_tests_up_to_the_cut() -> None:
    for feature_type in ("numeric", "categorical"):
        assert KINDS[choose(feature_type, LARGE_REFERENCE)].has_p_value
        assert not KINDS[choose(feature_type, LARGE_REFERENCE + 1)].has_p_value


def test_choose_bad_input() -> None:
    with pytest.raises(ValueError, match="feature_type"):
        choose("text", 10)
    with pytest.raises(ValueError, match="n_reference"):
        choose("numeric", -1)
    with pytest.raises(TypeError, match="n_reference"):
        choose("numeric", 10.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="n_reference"):
        choose("numeric", True)
