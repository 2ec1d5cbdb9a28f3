"""Issue 10 on real Kafka + PostgreSQL: one retraining request per incident, kills included.

A model's predictions and its delayed labels (300 records behind) go through the real broker
to the real daemon; accuracy drops from 90% to 60% at record 3,500 of 6,000. The daemon is
SIGKILLed 5 times at seeded random moments around the decision and the dispatch, then run to
the end. Required, per backend (a webhook on loopback that checks the HMAC signature, and a
Kafka topic of CloudEvents): no request before the drift; exactly one request row after it,
naming the incident's first label window and its labelled count; the backend got one run
(one idempotency key). Run with `-s` for the figures.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from services.webhook import Receiver

from integration.daemon_proc import DaemonProc, make_streams
from monitor.kafka_io import produce
from monitor.retrain.store import RetrainStore

pytestmark = pytest.mark.integration

N = 6_000
DRIFT_AT = 3_500
LAG = 300
LABEL_WINDOW = 250
SECRET = b"integration-secret"


def label_reference(path: Path) -> Path:
    rng = np.random.default_rng(1)
    rows = ["label,prediction"]
    for _ in range(2000):
        p = int(rng.random() < 0.5)
        rows.append(f"{p if rng.random() < 0.9 else 1 - p},{p}")
    path.write_text("\n".join(rows) + "\n")
    return path


def workload(stream: Any) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    rng = np.random.default_rng(0)
    records = list(stream.records(N))
    preds, labels = [], []
    for i, r in enumerate(records):
        preds.append((stream.model.encode(), json.dumps(r).encode()))
        right = rng.random() < (0.9 if i < DRIFT_AT else 0.6)
        labels.append((stream.model.encode(), json.dumps({
            "request_id": r["request_id"], "timestamp": r["timestamp"] + 3.0,
            "label": r["prediction"] if right else 1 - r["prediction"]}).encode()))
    return preds, labels


def label_windows(d: DaemonProc) -> int:
    from sqlalchemy import func, select

    from monitor.storage import WindowRow

    with d.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(WindowRow)
                                .where(WindowRow.stream == "labels")).scalar_one())


# The suite's time budget allows three runs: Kafka's own dedupe after a crash, a command
# (at-least-once by nature: deduplicated by the lease and the stored state), and the webhook
# with two daemons handing the partitions to each other at every kill.
@pytest.mark.parametrize(("backend", "members"), [("kafka", 1), ("command", 1),
                                                  ("webhook", 2)])
def test_one_request_per_incident_through_kills(
        kafka_broker, kafka_topic, fresh_db, tmp_path: Path,
        backend: str, members: int) -> None:  # type: ignore[no-untyped-def]
    """With ``members`` = 2, two daemons share the consumer group and the database: each kill
    hands the partitions to the other (the second daemon decides after a rebalance)."""
    (stream,) = make_streams(1, partitions=1)
    topic, labels_topic, events_topic = kafka_topic(1), kafka_topic(1), kafka_topic(1)
    bootstrap = kafka_broker.bootstrap
    receiver = Receiver(SECRET)
    secret = tmp_path / "hook.secret"
    secret.write_bytes(SECRET)
    runs_file = tmp_path / "runs.txt"
    script = tmp_path / "submit.py"
    script.write_text(f"import os; open({str(runs_file)!r}, 'a').write("
                      "os.environ['DRIFTLINE_REQUEST_ID'] + '\\n')\n")
    action: dict[str, Any] = {
        "webhook": {"kind": "webhook", "url": receiver.url, "secret_file": str(secret),
                    "backoff_seconds": 0.2},
        "kafka": {"kind": "kafka", "topic": events_topic},
        "command": {"kind": "command", "command": [sys.executable, str(script)]},
    }[backend]
    extra = {"alpha": 0.001,
             "labels": {"reference": {"path": str(label_reference(tmp_path / "lab.csv"))},
                        "window_size": LABEL_WINDOW, "horizon_seconds": 1e6},
             "retrain": {"action": action, "min_labelled": 500, "cooldown_windows": 4}}
    db = fresh_db("rt")
    procs = [DaemonProc(tmp_path / f"d{k}", bootstrap=bootstrap, topic=topic, db_url=db,
                        streams=[stream], window=1000, model_extra=extra,
                        kafka_extra={"labels_topic": labels_topic}, group=f"{topic}-g")
             for k in range(members)]
    d = procs[0]
    preds, labels = workload(stream)
    rng = random.Random(77)
    kills = []
    t0 = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            for p in procs:
                stack.enter_context(p)
                p.start()
            # predictions first, labels LAG records behind, chunk by chunk while it consumes;
            # kills after chunks 2-5, two of them around the decision (label window ~15)
            kill_after = [2, 3, 4, 4, 5]
            for c, start in enumerate(range(0, N, 1000)):
                produce(bootstrap, topic, iter(preds[start:start + 1000]))
                lo = max(0, start - LAG)
                produce(bootstrap, labels_topic, iter(labels[lo:start + 1000 - LAG]))
                for _ in range(kill_after.count(c)):
                    target = (start + 1000 - LAG) // LABEL_WINDOW - 1
                    d.wait_for(lambda t=target: label_windows(d) >= t, 120,
                               f"{target} label windows stored", interval=0.05)
                    time.sleep(rng.uniform(0, 0.5))
                    kills.append(label_windows(d))
                    victim = procs[len(kills) % members]  # alternate between the members
                    victim.kill()
                    victim.start()
            produce(bootstrap, labels_topic, iter(labels[N - LAG:]))
            store = RetrainStore(d.store.engine)
            d.wait_for(lambda: any(r.state == "dispatched" for r in store.requests()), 180,
                       "the request to be dispatched")
            d.wait_for(lambda: len({(r["window_index"]) for r in d.store.results()
                                    if r["detector"] == "ks"}) >= N // 1000, 120,
                       "every feature window")
            time.sleep(2.0)  # a second dispatch would come within the dispatcher's rounds
            for p in procs:
                assert p.terminate() == 0, p.log_tail()
            requests = store.requests()
            labels_rows = d.store.results(stream="labels")
    finally:
        receiver.close()
    perf = {r["window_index"]: r["drifted"] for r in labels_rows
            if r["detector"] == "performance"}
    drift_window = DRIFT_AT // LABEL_WINDOW
    assert not any(f for i, f in perf.items() if i < drift_window), perf
    assert len(requests) == 1, requests
    (r,) = requests
    if backend == "webhook":
        runs = [x["key"] for x in receiver.deliveries]
    elif backend == "command":
        runs = runs_file.read_text().split()
    else:
        from kafka import KafkaConsumer
        from kafka.structs import TopicPartition

        c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                          consumer_timeout_ms=3000)
        tp = TopicPartition(events_topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        runs = [dict(m.headers)["ce_id"].decode() for m in c]
        c.close()
    print(f"\n[retrain/{backend}, {members} daemon(s)] {N:,} predictions + labels, drift at "
          f"record {DRIFT_AT:,} "
          f"(label window {drift_window}); request {r.id} for incident from label window "
          f"{r.first_window}, decided at window {r.decided_window} after {r.labelled} "
          f"labelled records, state {r.state}; kills at stored label windows {kills}; "
          f"backend deliveries {len(runs)} ({len(set(runs))} distinct); "
          f"wall {time.monotonic() - t0:.0f}s")
    assert r.action == "retrain" and r.state == "dispatched"
    assert r.first_stream == "labels" and r.first_window >= drift_window
    assert r.labelled >= 500
    assert set(runs) == {r.id}
    assert len(runs) == 1
    assert receiver.bad_signatures == 0
