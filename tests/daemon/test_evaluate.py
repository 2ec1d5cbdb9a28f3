"""Every detector kind is configurable per model; the default choice follows the registry."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.registry import KINDS
from monitor.errors import ConfigError
from monitor.evaluate import ModelEvaluator
from monitor.schema import InferenceRecord
from monitor.settings import parse_settings
from monitor.windows import CountWindows


def model_doc(**over: object) -> dict:
    doc = {"name": "m", "reference": {"path": "unused.csv"},
           "features": [{"name": "x", "type": "numeric"}, {"name": "c", "type": "categorical"}],
           "window": {"kind": "count", "size": 500},
           "alpha": 0.001}  # the quiet window must not false-alarm by chance
    doc.update(over)
    return doc


def evaluator(n_ref: int = 5000, **over: object) -> ModelEvaluator:
    rng = np.random.default_rng(0)
    settings = parse_settings({"models": [model_doc(**over)]}, env={})
    reference = {"x": rng.normal(size=n_ref),
                 "c": np.asarray(rng.choice(["a", "b", "c"], n_ref), dtype=object)}
    return ModelEvaluator(settings.models[0], reference)


def window(shift: float, n: int = 2000, seed: int = 1):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    w = CountWindows("m", n)
    closed = []
    xs, cs = rng.normal(shift, 1, n), rng.choice(["a", "b", "c"] if not shift else ["c"], n)
    for i in range(n):
        closed += w.add(InferenceRecord("m", "", str(i), float(i), {"x": float(xs[i]),
                                                                  "c": str(cs[i])}, 0), ("t", 0), i)
    return closed[0]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_runs_from_settings_and_sees_a_shift(kind: str) -> None:
    # Anderson-Darling's p-values are floored at 0.001: it needs a larger alpha
    ev = evaluator(detectors=[{"kind": kind, **({"alpha": 0.01} if kind == "anderson" else {})}])
    assert ev.detector_names == [kind, "model"]  # + the model verdict
    quiet, shifted = ev.evaluate(window(0.0)), ev.evaluate(window(1.5))
    assert quiet.results[0].detector == kind
    assert not quiet.results[0].drifted
    assert shifted.results[0].drifted
    tested = {f.feature for f in shifted.results[0].features}
    assert tested == {n for n, t in (("x", "numeric"), ("c", "categorical"))
                      if t in KINDS[kind].feature_types}


def test_default_choice_depends_on_reference_size() -> None:
    assert sorted(evaluator(n_ref=2000).detector_names) == ["chi2", "ks", "model"]
    assert sorted(evaluator(n_ref=20_000).detector_names) == ["js", "model", "wasserstein"]


def test_threshold_reaches_distance_detectors() -> None:
    ev = evaluator(detectors=[{"kind": "psi", "threshold": 0.05}])
    assert ev.evaluate(window(0.0)).results[0].threshold == 0.05


@pytest.mark.parametrize(("det", "message"), [
    ({"kind": "ks", "threshold": 0.1}, "set alpha, not threshold"),
    ({"kind": "psi", "correction": "none"}, "set threshold .*not correction"),
    ({"kind": "wasserstein", "features": ["c"]}, "'c' is categorical"),
    ({"kind": "energy"}, r"detectors\[0\]\.kind"),
    ({"kind": "anderson"}, r"alpha must be in \(0.001, 0.25\], got 0.001"),
])
def test_bad_detector_settings_name_the_problem(det: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings({"models": [model_doc(detectors=[det])]}, env={})


@pytest.mark.parametrize("det", [
    {"kind": "mmd", "n_permutations": 200, "max_n": 400, "alpha": 0.01},
    {"kind": "mmd", "n_permutations": 200, "max_n": 400, "alpha": 0.01, "backend": "torch"},
    {"kind": "c2st", "max_n": 1000},
])
def test_multivariate_detectors_run_from_settings(det: dict) -> None:
    ev = evaluator(detectors=[det])
    assert ev.detector_names == [det["kind"], "model"]  # + the model verdict
    quiet, shifted = ev.evaluate(window(0.0)), ev.evaluate(window(1.5))
    assert not quiet.results[0].drifted and shifted.results[0].drifted
    assert quiet.results[0].p_value is not None


def test_multivariate_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="set alpha, not threshold"):
        parse_settings({"models": [model_doc(detectors=[{"kind": "mmd", "threshold": 1}])]},
                       env={})
    with pytest.raises(ConfigError, match="'c' is categorical"):
        parse_settings({"models": [model_doc(detectors=[{"kind": "c2st", "features": ["c"]}])]},
                       env={})
    with pytest.raises(ConfigError, match=r"smallest p-value is 1/201, not below alpha=0.001"):
        parse_settings({"models": [model_doc(detectors=[{"kind": "mmd",
                                                         "n_permutations": 200}])]}, env={})
    with pytest.raises(ConfigError, match=r"detectors\[0\]\.device"):
        parse_settings({"models": [model_doc(detectors=[{"kind": "mmd", "device": "gpu"}])]},
                       env={})


def test_min_expected_reaches_chi2() -> None:
    pooled = evaluator(detectors=[{"kind": "chi2"}]).detectors[0][0]
    raw = evaluator(detectors=[{"kind": "chi2", "min_expected": 0}]).detectors[0][0]
    assert (pooled.min_expected, raw.min_expected) == (5.0, 0.0)
    # a rare category unseen in the reference: its own column only without pooling
    cs = np.random.default_rng(3).choice(["a", "b", "c"], 600).astype(object)
    cs[0] = "zzz"
    pooled_p = pooled.test({"c": cs}).features[0].p_value
    raw_p = raw.test({"c": cs}).features[0].p_value
    assert pooled_p is not None and raw_p is not None and raw_p < pooled_p
