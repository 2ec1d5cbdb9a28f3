"""adjust_p_values against scipy and against the definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from detectors import adjust_p_values


def p_value_sets() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sets = [rng.uniform(size=m) for m in (1, 2, 3, 10, 100, 1000)]
    sets.append(np.concatenate([rng.uniform(0, 1e-4, 20), rng.uniform(size=80)]))  # some signal
    sets.append(np.array([0.01, 0.01, 0.02, 0.02, 0.02, 0.5, 1.0, 0.0]))  # ties, both ends
    sets.append(np.round(rng.uniform(size=50), 2))
    return sets


@pytest.mark.parametrize("p", p_value_sets())
def test_benjamini_hochberg_equals_scipy(p: np.ndarray) -> None:
    got = adjust_p_values(p, "benjamini-hochberg")
    np.testing.assert_allclose(
        got, stats.false_discovery_control(p, method="bh"), rtol=1e-15, atol=0
    )


@pytest.mark.parametrize("p", p_value_sets())
def test_bonferroni_and_none(p: np.ndarray) -> None:
    np.testing.assert_array_equal(adjust_p_values(p, "bonferroni"), np.minimum(1.0, p * p.size))
    np.testing.assert_array_equal(adjust_p_values(p, "none"), p)


@pytest.mark.parametrize("p", p_value_sets())
def test_ordering_of_corrections(p: np.ndarray) -> None:
    bh, bonf = adjust_p_values(p, "benjamini-hochberg"), adjust_p_values(p, "bonferroni")
    assert np.all(p <= bh) and np.all(bh <= bonf)


def test_empty_input() -> None:
    for method in ("bonferroni", "benjamini-hochberg", "none"):
        assert adjust_p_values(np.array([]), method).shape == (0,)


def test_input_not_mutated_and_copy_returned() -> None:
    p = np.array([0.3, 0.01, 0.2])
    before = p.copy()
    out = adjust_p_values(p, "none")
    out[0] = 0.9
    adjust_p_values(p, "benjamini-hochberg")
    np.testing.assert_array_equal(p, before)


@pytest.mark.parametrize("method", ["holm", "BH", "", None, "Bonferroni"])
def test_unknown_method(method: object) -> None:
    with pytest.raises(ValueError, match="method"):
        adjust_p_values(np.array([0.1]), method)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [[0.1, np.nan], [1.5], [-0.1], [[0.1, 0.2]]])
def test_bad_p_values(bad: list) -> None:
    with pytest.raises(ValueError, match="p_values"):
        adjust_p_values(np.array(bad), "bonferroni")
