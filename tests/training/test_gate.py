"""The paired gate: exact McNemar / sign test, verdict rules, false-promotion rate."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import stats
from training_test_nets import concept, mlp4, quick

from training import GateConfig, LabelledRows, fit, gate, mcnemar_exact, predict, sign_test
from training.data import DataSplit


def test_mcnemar_is_the_exact_binomial_tail() -> None:
    assert mcnemar_exact(3, 15) == pytest.approx(stats.binomtest(15, 18, 0.5,
                                                                 "greater").pvalue)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 0) == 1.0


def test_verdict_needs_significance_gain_and_reference() -> None:
    y = np.zeros(200, dtype=int)
    champ = np.zeros(200, dtype=int)
    champ[:40] = 1  # 40 wrong
    chal = np.zeros(200, dtype=int)
    chal[:5] = 1  # 5 wrong, all among the champion's errors
    r = gate(y, champ, chal)
    assert r.promote and r.b == 0 and r.c == 35 and r.p_value < 1e-9
    assert r.gain == pytest.approx(0.175)
    assert not gate(y, champ, chal, config=GateConfig(min_gain=0.2)).promote
    # forgetting: 10% worse on the reference holdout
    ref_y = np.ones(100, dtype=int)
    r = gate(y, champ, chal, reference_y=ref_y, reference_champion=np.ones(100, dtype=int),
             reference_challenger=np.r_[np.zeros(10, dtype=int), np.ones(90, dtype=int)])
    assert not r.promote and "reference holdout drop 0.1000" in r.reason
    assert r.reference_drop == pytest.approx(0.1)
    # logits are accepted (argmax)
    logits = np.eye(2)[chal]
    assert gate(y, np.eye(2)[champ], logits).c == 35


def test_regression_uses_a_sign_test_on_absolute_errors() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    champ = y + rng.normal(scale=1.0, size=300)
    chal = y + rng.normal(scale=0.3, size=300)
    r = gate(y, champ, chal, task="regression")
    assert r.promote and r.metric == "mae" and r.test == "sign_test_one_sided"
    b, c, p = sign_test(np.abs(champ - y), np.abs(chal - y))
    assert (b, c, p) == (r.b, r.c, r.p_value)
    assert not gate(y, chal, champ, task="regression").promote


def test_simulated_equal_models_are_promoted_at_most_alpha() -> None:
    # paired predictions of two equally good, correlated models (same data, other seed)
    rng = np.random.default_rng(1)
    promoted, trials = 0, 2000
    for _ in range(trials):
        y = rng.integers(0, 2, 400)
        shared = rng.random(400) < 0.8  # rows both get right
        a = np.where(shared | (rng.random(400) < 0.5), y, 1 - y)
        b = np.where(shared | (rng.random(400) < 0.5), y, 1 - y)
        promoted += gate(y, a, b, config=GateConfig(alpha=0.05)).promote
    assert promoted / trials <= 0.05


def test_genuine_retrain_with_another_seed_is_promoted_at_most_alpha() -> None:
    """Real retrains, reduced to 12 pairs here (each trial trains two MLPs; the 200-trial
    figure comes from ``benchmarks/bench_retrain.py --calibration 200``). Champion and
    challenger are the same recipe on the same data with different seeds, trained to
    convergence: seed-to-seed differences are then too small to pass the gate."""
    t0 = time.perf_counter()
    promoted, trials = 0, 12
    data = concept(1700, flipped=False, seed=11)
    noisy = np.where(np.random.default_rng(3).random(1700) < 0.2, 1 - data.y, data.y)
    split = DataSplit(train=LabelledRows(data.x[:1000], noisy[:1000]),
                      validation=LabelledRows(data.x[1000:1300], noisy[1000:1300]),
                      holdout=LabelledRows(data.x[1300:], noisy[1300:]), reference_holdout=None)
    cfg = quick(epochs=6, lr_grid=(1e-2,), batch_size=128, patience=6)
    for trial in range(trials):
        champion = fit(mlp4(), split, cfg.replace(seed=2 * trial)).model
        challenger = fit(mlp4(), split, cfg.replace(seed=2 * trial + 1)).model
        verdict = gate(split.holdout.y, predict(champion, split.holdout.x),
                       predict(challenger, split.holdout.x))
        promoted += verdict.promote
    assert promoted / trials <= 0.05
    assert time.perf_counter() - t0 < 30
