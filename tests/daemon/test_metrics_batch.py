"""Records are counted once per batch: the counter moves when the batch ends, by its size."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from monitor.metrics import Metrics


def consumed(m: Metrics, model: str) -> float | None:
    return m.registry.get_sample_value("driftline_records_consumed_total", {"model": model})


def test_batch_counts_land_at_the_end_of_the_batch() -> None:
    m = Metrics(CollectorRegistry())
    with m.consumed_per_batch() as counts:
        for model in ["a", "b", "a", "a"]:
            counts[model] += 1
        assert consumed(m, "a") is None  # nothing exported mid-batch
    assert (consumed(m, "a"), consumed(m, "b")) == (3.0, 1.0)
    with m.consumed_per_batch() as counts:
        counts["a"] += 2
    assert consumed(m, "a") == 5.0


def test_batch_counts_survive_an_error_mid_batch() -> None:
    m = Metrics(CollectorRegistry())
    with pytest.raises(RuntimeError), m.consumed_per_batch() as counts:
        counts["a"] += 1
        raise RuntimeError("a bug after one record")
    assert consumed(m, "a") == 1.0
