"""After a rebalance, a daemon exports drift gauges only for the models it still reads.

Regression test on the real path (real broker, two real daemons in one consumer group, one
PostgreSQL database): before the fix, a daemon whose partitions moved to a new member kept
exporting its last ``driftline_drift_detected = 1`` for the models it no longer read, so the
drift alert kept firing from the wrong instance.
"""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import pytest

from integration.daemon_proc import DaemonProc, make_streams, partition_of, produce_streams

pytestmark = pytest.mark.integration

PARTITIONS = 2
WINDOW = 200
DRIFTED = "driftline_drift_detected"


def assigned(d: DaemonProc) -> list[int] | None:
    """Partitions of the daemon's last 'partitions assigned' log line (None before one)."""
    found = re.findall(r"partitions assigned: (\[.*\])", d.log_text())
    return None if not found else sorted(p for _t, p in ast.literal_eval(found[-1]))


def test_a_daemon_stops_exporting_the_drift_of_models_whose_partitions_moved_away(
        kafka_broker, kafka_topic, fresh_db, kafka_client: str,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    t0 = time.monotonic()
    streams = make_streams(2, partitions=PARTITIONS, drift_at=WINDOW, magnitude=1.0)
    models = [s.model for s in streams]
    assert sorted(partition_of(m, PARTITIONS) for m in models) == [0, 1]
    counts = {m: 3 * WINDOW for m in models}
    topic, db = kafka_topic(PARTITIONS), fresh_db("owned")
    common = dict(bootstrap=kafka_broker.bootstrap, topic=topic, db_url=db, streams=streams,
                  window=WINDOW, group=f"g-{topic}", client=kafka_client)
    with DaemonProc(tmp_path / "a", **common) as a, DaemonProc(tmp_path / "b", **common) as b:
        # 1. One daemon reads both models: two windows each, the second one drifted.
        produce_streams(kafka_broker.bootstrap, topic, streams, counts, 0, 2 * WINDOW)
        a.start()
        a.wait_for(lambda: all(a.metric(DRIFTED, model=m, detector="ks") == 1 for m in models),
                   40, "daemon a to export drift for both models")

        # 2. A second member joins: the group gives it one of the two partitions.
        b.start()
        a.wait_for(lambda: len(assigned(a) or []) == 1 and len(assigned(b) or []) == 1
                   and assigned(a) != assigned(b), 40, "one partition per daemon")
        [kept_p] = assigned(a) or []
        kept = next(m for m in models if partition_of(m, PARTITIONS) == kept_p)
        lost = next(m for m in models if m != kept)
        assert a.metric(DRIFTED, model=lost) is None, "a still exports a model it lost"
        assert a.metric(DRIFTED, model=kept, detector="ks") == 1
        assert a.metric("driftline_window_records", model=lost) is None
        assert a.metric("driftline_feature_drift_p_value", model=lost) is None
        # counters are this process's history: they stay (queries sum them over instances)
        assert a.metric("driftline_windows_evaluated_total", model=lost) == 2

        # 3. The next window of the moved model is evaluated and exported by its new owner.
        produce_streams(kafka_broker.bootstrap, topic, streams, counts, 2 * WINDOW)
        b.wait_for(lambda: b.metric(DRIFTED, model=lost, detector="ks") == 1, 40,
                   "daemon b to export the moved model's drift")
        a.wait_for(lambda: a.metric("driftline_windows_evaluated_total", model=kept) == 3, 40,
                   "daemon a to evaluate its own model's next window")
        assert b.metric("driftline_windows_evaluated_total", model=lost) == 1
        assert b.metric(DRIFTED, model=kept) is None  # never read here
        assert a.metric(DRIFTED, model=lost) is None
        assert a.metric(DRIFTED, model=kept, detector="ks") == 1
    print(f"\nownership: {lost} moved from a to b; test body {time.monotonic() - t0:.1f}s")
