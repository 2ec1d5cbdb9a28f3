"""The promotion gate: champion and challenger on the same holdout, a paired exact test.

Classification: exact one-sided McNemar test on the disagreements. Of the holdout rows
where exactly one model is right, ``b`` favour the champion and ``c`` the challenger;
under "no better" the challenger's share of the ``b + c`` discordant rows is Binomial(1/2),
so ``p = P(Binom(b + c, 1/2) >= c)``. Exact, so the false-promotion rate stays <= alpha
whatever the holdout size.

Regression: exact one-sided sign test on the paired absolute errors (ties dropped):
``p = P(Binom(m, 1/2) >= k)`` with ``k`` rows where the challenger's error is smaller.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from training.config import GateConfig

__all__ = ["GateResult", "gate", "mcnemar_exact", "sign_test"]


@dataclass(frozen=True)
class GateResult:
    """The verdict and everything it was decided on.

    ``champion_metric``/``challenger_metric``: holdout accuracy (or mean absolute error);
    ``gain``: challenger minus champion accuracy (regression: the champion's MAE reduced,
    as a share of it, so ``min_gain`` needs no units); ``b``/``c``: discordant rows
    favouring champion / challenger; ``reference_drop``: accuracy lost (regression: MAE
    added, as a share of the champion's) on the reference holdout, None without one.
    """

    promote: bool
    reason: str
    test: str
    n: int
    b: int
    c: int
    p_value: float
    alpha: float
    metric: str
    champion_metric: float
    challenger_metric: float
    gain: float
    min_gain: float
    reference_champion: float | None
    reference_challenger: float | None
    reference_drop: float | None
    max_reference_drop: float

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON, for ``metrics.json`` and the job result."""
        return asdict(self)


def mcnemar_exact(b: int, c: int) -> float:
    """One-sided exact McNemar p-value that the challenger (``c`` wins) is better."""
    if b < 0 or c < 0:
        raise ValueError(f"b and c must be >= 0, got {b}, {c}")
    n = b + c
    return 1.0 if n == 0 else float(stats.binom.sf(c - 1, n, 0.5))


def sign_test(champion_errors: np.ndarray, challenger_errors: np.ndarray) -> tuple[int, int,
                                                                                   float]:
    """(champion wins, challenger wins, one-sided exact p) on paired absolute errors."""
    d = np.abs(np.asarray(champion_errors)) - np.abs(np.asarray(challenger_errors))
    c, b = int((d > 0).sum()), int((d < 0).sum())
    return b, c, mcnemar_exact(b, c)


def _decide(cfg: GateConfig, p: float, gain: float, drop: float | None) -> tuple[bool, str]:
    failed = []
    if not p < cfg.alpha:
        failed.append(f"paired test p={p:.4g} >= alpha={cfg.alpha:g}")
    if gain < cfg.min_gain or gain <= 0:
        failed.append(f"gain {gain:+.4f} below min_gain {cfg.min_gain:g}"
                      if gain < cfg.min_gain else f"no gain ({gain:+.4f})")
    if drop is not None and drop > cfg.max_reference_drop:
        failed.append(f"reference holdout drop {drop:.4f} above max_reference_drop "
                      f"{cfg.max_reference_drop:g}")
    if failed:
        return False, "; ".join(failed)
    return True, f"significant (p={p:.4g}), gain {gain:+.4f}"


def gate(
    y: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    *,
    task: str = "classification",
    reference_y: np.ndarray | None = None,
    reference_champion: np.ndarray | None = None,
    reference_challenger: np.ndarray | None = None,
    config: GateConfig | None = None,
) -> GateResult:
    """Decide promotion from predictions on the holdout (and optionally a reference holdout).

    ``champion``/``challenger``: predicted labels (or logits, argmax taken) for
    classification, predicted values for regression; ``y`` the true labels or values.
    """
    cfg = config or GateConfig()
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    y = np.asarray(y)
    if len(y) == 0 or len(champion) != len(y) or len(challenger) != len(y):
        raise ValueError(f"y, champion and challenger must be equally long and non-empty, got "
                         f"{len(y)}, {len(champion)}, {len(challenger)}")

    def score(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
        pred = np.asarray(pred)
        if task == "classification":
            labels = pred.argmax(axis=1) if pred.ndim == 2 else pred
            return np.asarray(labels == truth)
        return np.abs(pred.reshape(len(truth)) - truth)

    s0, s1 = score(y, champion), score(y, challenger)
    if task == "classification":
        b, c = int((s0 & ~s1).sum()), int((~s0 & s1).sum())
        p = mcnemar_exact(b, c)
        m0, m1 = float(s0.mean()), float(s1.mean())
        gain, test, metric = m1 - m0, "mcnemar_exact_one_sided", "accuracy"
    else:
        b, c, p = sign_test(s0, s1)
        m0, m1 = float(s0.mean()), float(s1.mean())
        gain = (m0 - m1) / m0 if m0 > 0 else 0.0
        test, metric = "sign_test_one_sided", "mae"
    ref0 = ref1 = drop = None
    if reference_y is not None and reference_champion is not None \
            and reference_challenger is not None and len(reference_y):
        ref_y = np.asarray(reference_y)
        ref0 = float(score(ref_y, reference_champion).mean())
        ref1 = float(score(ref_y, reference_challenger).mean())
        if task == "classification":
            drop = ref0 - ref1
        else:
            drop = (ref1 - ref0) / ref0 if ref0 > 0 else 0.0
    promote, reason = _decide(cfg, p, gain, drop)
    return GateResult(promote=promote, reason=reason, test=test, n=len(y), b=b, c=c,
                      p_value=p, alpha=cfg.alpha, metric=metric, champion_metric=m0,
                      challenger_metric=m1, gain=gain, min_gain=cfg.min_gain,
                      reference_champion=ref0, reference_challenger=ref1,
                      reference_drop=drop, max_reference_drop=cfg.max_reference_drop)
