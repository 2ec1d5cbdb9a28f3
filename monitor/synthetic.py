"""A synthetic stream of a small credit-risk model's inference logs, with optional drift.

Used by ``driftline demo`` (in-process), ``driftline produce --synthetic`` (into Kafka),
the benchmarks and the tests. Deterministic under its seed. From record ``drift_at`` on, the
numeric features named in ``drifted_numeric`` shift by ``magnitude`` standard deviations and
the first categorical feature's mix tilts towards its last category.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_NUMERIC = ["income", "age", "loan_amount", "tenure_months", "credit_score", "debt_ratio"]
_CATEGORICAL = {"country": ["DE", "FR", "NL", "ES", "IT"],
                "channel": ["web", "mobile", "branch", "partner"]}
_LEVELS = [f"level_{i}" for i in range(10)]


@dataclass(frozen=True)
class SyntheticStream:
    model: str = "credit-risk"
    version: str = "1"
    n_numeric: int = 5
    n_categorical: int = 2
    seed: int = 0
    drift_at: int | None = None
    magnitude: float = 0.5
    drifted_numeric: int = 2  # how many numeric features shift
    start_ts: float = 1_763_856_000.0  # 2025-11-23T00:00:00Z
    seconds_per_record: float = 0.01

    @property
    def numeric(self) -> list[str]:
        return [(_NUMERIC[i] if i < len(_NUMERIC) else f"num_{i}") for i in range(self.n_numeric)]

    @property
    def categorical(self) -> dict[str, list[str]]:
        names = list(_CATEGORICAL)
        return {(names[i] if i < len(names) else f"cat_{i}"):
                (_CATEGORICAL[names[i]] if i < len(names) else _LEVELS)
                for i in range(self.n_categorical)}

    def features(self) -> dict[str, str]:
        """Feature name -> kind, as the settings file lists them."""
        return {**{n: "numeric" for n in self.numeric},
                **{n: "categorical" for n in self.categorical}}

    def _block(self, rng: np.random.Generator, start: int, n: int,
               drift: bool) -> dict[str, np.ndarray]:
        idx = np.arange(start, start + n)
        shifted = (idx >= self.drift_at) if (drift and self.drift_at is not None) \
            else np.zeros(n, dtype=bool)
        cols: dict[str, np.ndarray] = {}
        for j, name in enumerate(self.numeric):
            x = rng.normal(0.0, 1.0, n)
            if j < self.drifted_numeric:
                x = x + self.magnitude * shifted
            cols[name] = np.round(50.0 + 10.0 * x, 4)  # 4 decimals: realistic, few ties
        for j, (name, levels) in enumerate(self.categorical.items()):
            k = len(levels)
            base = np.full(k, 1.0 / k)
            tilted = base.copy()
            tilted[-1] += self.magnitude * 0.5
            tilted /= tilted.sum()
            u = rng.random(n)
            normal = np.searchsorted(np.cumsum(base), u, side="right").clip(0, k - 1)
            drifted = np.searchsorted(np.cumsum(tilted), u, side="right").clip(0, k - 1)
            pick = np.where(shifted & (j == 0), drifted, normal)
            cols[name] = np.asarray(levels, dtype=object)[pick]
        return cols

    def records(self, n: int, *, chunk: int = 10_000) -> Iterator[dict[str, Any]]:
        """``n`` inference records as JSON-ready dicts, drift injected from ``drift_at``."""
        rng = np.random.default_rng(self.seed)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            cols = self._block(rng, start, m, drift=True)
            z = sum((cols[c] - 50.0) / 10.0 for c in self.numeric[:2]) if self.numeric \
                else np.zeros(m)
            p1 = 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=float)))
            for i in range(m):
                k = start + i
                p = float(round(p1[i], 6))
                yield {
                    "model": self.model, "model_version": self.version,
                    "request_id": f"{self.model}-{self.seed}-{k}",
                    "timestamp": self.start_ts + k * self.seconds_per_record,
                    "features": {c: (float(v[i]) if c in self.numeric else str(v[i]))
                                 for c, v in cols.items()},
                    "prediction": int(p >= 0.5),
                    "probabilities": [round(1.0 - p, 6), p],
                }

    def encoded(self, n: int) -> Iterator[bytes]:
        for r in self.records(n):
            yield json.dumps(r, separators=(",", ":")).encode()

    def reference_columns(self, n: int) -> dict[str, np.ndarray]:
        """``n`` undrifted rows from an independent generator (a different seed stream)."""
        rng = np.random.default_rng([self.seed, 1])
        return self._block(rng, 0, n, drift=False)

    def write_reference_csv(self, path: Path, n: int) -> Path:
        cols = self.reference_columns(n)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(list(cols))
            for row in zip(*cols.values(), strict=True):
                w.writerow(row)
        return path

    def settings_doc(self, reference: Path, window_size: int) -> dict[str, Any]:
        """The ``models[]`` entry for this stream (used by the demo and tests)."""
        return {"name": self.model, "version": self.version,
                "reference": {"path": str(reference)},
                "features": [{"name": n, "type": t} for n, t in self.features().items()],
                "window": {"kind": "count", "size": window_size}}
