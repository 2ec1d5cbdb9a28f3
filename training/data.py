"""Time-ordered train / validation / holdout splits with replay of reference data."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.config import SplitConfig
from training.errors import InsufficientDataError

__all__ = ["DataSplit", "LabelledRows", "content_hash", "split_by_time"]


@dataclass(frozen=True)
class LabelledRows:
    """Model inputs ``x`` (n, ...), labels ``y`` (n,) and event times (n,), any order."""

    x: np.ndarray
    y: np.ndarray
    times: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.x)
        if len(self.y) != n or (self.times is not None and len(self.times) != n):
            raise ValueError(f"x, y and times must have the same length, got {len(self.x)}, "
                             f"{len(self.y)}, {None if self.times is None else len(self.times)}")

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class DataSplit:
    """What a run trains, validates and is gated on, and where each part came from.

    ``train``/``validation`` include replayed reference rows; ``holdout`` is the newest
    recent rows only; ``reference_holdout`` is reference data never replayed.
    ``selection`` is plain JSON for ``run.json``: content hash, row ranges, times, counts.
    """

    train: LabelledRows
    validation: LabelledRows
    holdout: LabelledRows
    reference_holdout: LabelledRows | None
    selection: dict[str, Any] = field(default_factory=dict)


def content_hash(*arrays: np.ndarray | None) -> str:
    """SHA-256 over the arrays' dtypes, shapes and bytes (None hashes as a marker)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"<none>")
            continue
        a = np.ascontiguousarray(a)
        if a.dtype == object:
            h.update(repr(a.tolist()).encode())
        else:
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _time_text(t: Any) -> Any:
    if isinstance(t, np.generic):
        t = t.item()
    return t if isinstance(t, (int, float)) else str(t)


def _rows(rows: LabelledRows, idx: np.ndarray) -> LabelledRows:
    return LabelledRows(rows.x[idx], rows.y[idx], None if rows.times is None else rows.times[idx])


def _concat(a: LabelledRows, b: LabelledRows | None) -> LabelledRows:
    if b is None or len(b) == 0:
        return LabelledRows(a.x, a.y)
    return LabelledRows(np.concatenate([a.x, b.x.astype(a.x.dtype, copy=False)]),
                        np.concatenate([a.y, b.y.astype(a.y.dtype, copy=False)]))


def split_by_time(
    recent: LabelledRows,
    reference: LabelledRows | None = None,
    config: SplitConfig | None = None,
    *,
    seed: int = 0,
) -> DataSplit:
    """Split ``recent`` by event time; mix a replay share of ``reference`` into train/val.

    The newest ``holdout_share`` of the recent rows is the holdout (the gate's only data),
    the ``validation_share`` before it validation, the rest train. Rows with a non-finite
    label are dropped first. Raises :class:`InsufficientDataError` when fewer than
    ``min_rows`` labelled rows remain or the holdout would have fewer than ``min_holdout``.
    """
    cfg = config or SplitConfig()
    if recent.times is None:
        raise ValueError("recent rows need event times to be split by time")
    y = np.asarray(recent.y)
    keep = np.isfinite(y.astype(np.float64)) if y.dtype.kind in "fiub" else np.ones(len(y), bool)
    n = int(keep.sum())
    if n < cfg.min_rows:
        raise InsufficientDataError(
            f"{n} labelled rows, at least min_rows={cfg.min_rows} are needed to train and gate "
            "a challenger; nothing was trained")
    order = np.flatnonzero(keep)[np.argsort(recent.times[keep], kind="stable")]
    n_hold = round(n * cfg.holdout_share)
    n_val = round(n * cfg.validation_share)
    n_train = n - n_hold - n_val
    if n_hold < cfg.min_holdout or n_val < 1 or n_train < 1:
        raise InsufficientDataError(
            f"{n} labelled rows give train/validation/holdout {n_train}/{n_val}/{n_hold}; the "
            f"holdout needs >= {cfg.min_holdout} and each part >= 1; nothing was trained")
    parts = {"train": order[:n_train], "validation": order[n_train:n_train + n_val],
             "holdout": order[n_train + n_val:]}
    rng = np.random.default_rng(seed)
    replay: dict[str, LabelledRows | None] = {"train": None, "validation": None}
    reference_holdout = None
    selection: dict[str, Any] = {
        "recent_sha256": content_hash(recent.x, recent.y, recent.times),
        "recent_rows": len(recent), "labelled_rows": n,
        "replay_share": cfg.replay_share, "seed": seed,
    }
    for name, idx in parts.items():
        t = recent.times[idx]
        # positions in the time-ordered sequence: parts are contiguous [start, stop)
        start = {"train": 0, "validation": n_train, "holdout": n_train + n_val}[name]
        selection[name] = {"rows": [start, start + len(idx)], "n_recent": len(idx),
                           "time_first": _time_text(t[0]), "time_last": _time_text(t[-1])}
    if reference is not None and len(reference) > 0:
        perm = rng.permutation(len(reference))
        n_ref_hold = round(len(reference) * cfg.reference_holdout_share)
        reference_holdout = _rows(reference, perm[:n_ref_hold]) if n_ref_hold else None
        pool = perm[n_ref_hold:]
        # replay rows are replay_share of each mixed set: r / (r + n) = share; a small
        # reference is shared out in proportion rather than spent on train alone
        want = {k: len(parts[k]) * cfg.replay_share / (1 - cfg.replay_share)
                for k in ("train", "validation")}
        scale = min(1.0, len(pool) / max(sum(want.values()), 1e-9))
        used = 0
        for name in ("train", "validation"):
            take = pool[used:used + int(want[name] * scale)]
            used += len(take)
            replay[name] = _rows(reference, take)
            selection[name]["n_replay"] = len(take)
        selection["reference_sha256"] = content_hash(reference.x, reference.y)
        selection["reference_rows"] = len(reference)
        selection["reference_holdout_rows"] = n_ref_hold
    else:
        for name in ("train", "validation"):
            selection[name]["n_replay"] = 0
    return DataSplit(
        train=_concat(_rows(recent, parts["train"]), replay["train"]),
        validation=_concat(_rows(recent, parts["validation"]), replay["validation"]),
        holdout=_rows(recent, parts["holdout"]),
        reference_holdout=reference_holdout,
        selection=selection,
    )
