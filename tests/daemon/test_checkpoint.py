"""Checkpoint bookkeeping done once per batch equals the per-record version."""

from __future__ import annotations

import numpy as np

from monitor.checkpoint import Checkpoint


def test_read_batch_equals_reading_each_record() -> None:
    rng = np.random.default_rng(11)
    per_record, per_batch = Checkpoint(), Checkpoint()
    for step in range(200):
        if step % 50 == 49:  # a rebalance in between
            per_record.forget_session()
            per_batch.forget_session()
        n = int(rng.integers(0, 30))
        # mostly rising offsets over a few partitions, with rewinds and repeats
        tps = [("t", int(p)) for p in rng.integers(0, 1 + step % 4, size=n)]
        offsets = [int(o) for o in rng.integers(0, 10 + step, size=n)]
        for tp, o in zip(tps, offsets, strict=True):
            per_record.read(tp, o)
        per_batch.read_batch(tps, offsets)
        for tp in {("t", p) for p in range(4)}:
            assert per_batch.reading(tp) == per_record.reading(tp)
        held = [(tp, o) for tp, o in zip(tps[:3], offsets[:3], strict=True)]
        assert per_batch.committable(held) == per_record.committable(held)
        assert per_batch.to_commit(per_batch.committable(held)) == \
            per_record.to_commit(per_record.committable(held))
