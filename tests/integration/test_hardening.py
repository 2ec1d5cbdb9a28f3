"""Issue 9 on the real path (Kafka and PostgreSQL): dead letters once, outages while rebalancing.

* Dead letters: hostile records interleaved with three models' streams on a 3-partition
  topic; the daemon is SIGKILLed 4 times and SIGTERMed 3 times at seeded random points while it
  consumes. Every hostile record must reach the dead-letter topic exactly once (before the fix
  restarts re-sent the ones after the oldest open window: 891 duplicates after 4 kills).
* Outage: PostgreSQL is stopped while two daemons share a group; one leaves, so the other's
  partitions move and it must reload stored state (before the fix it exited 2 with "cannot
  read stored offsets"), and a third starts during the outage (before the fix it exited 2
  with "cannot create tables"). Both must stay up, report the reason on /readyz, and resume
  within seconds of the database's return, with every window stored once.

Run with `-s` to see the figures.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from integration.daemon_proc import (
    DaemonProc,
    comparable,
    end_offsets,
    full_windows,
    make_streams,
    produce_streams,
)
from monitor.kafka_io import produce

pytestmark = pytest.mark.integration

PARTITIONS = 3
WINDOW = 1_000
SEED = 909


def poison_values(streams: list, n: int, rng: random.Random) -> list[tuple[bytes, bytes]]:
    """``n`` hostile records keyed by a model (so spread over its partition): malformed JSON,
    an unknown model, an overflowing number, a far-future time, a huge integer prediction."""
    out = []
    for i in range(n):
        s = rng.choice(streams)
        rec = next(iter(s.records(1)))
        kind = i % 5
        if kind == 0:
            value = b'{"POISON": ' + str(i).encode()
        elif kind == 1:
            value = json.dumps({**rec, "model": f"POISON-{i}"}).encode()
        elif kind == 2:
            features = {**rec["features"], "income": "__INF__"}
            value = json.dumps({**rec, "request_id": f"POISON-{i}", "features": features}) \
                .encode().replace(b'"__INF__"', b"1e999")
        elif kind == 3:
            value = json.dumps({**rec, "request_id": f"POISON-{i}",
                                "timestamp": "9999-12-31T23:59:59Z"}).encode()
        else:
            value = (json.dumps({**rec, "request_id": f"POISON-{i}"})[:-1]
                     + f', "prediction": {10 ** 400}}}').encode()
        out.append((s.model.encode(), value))
    return out


def read_all(bootstrap: str, topic: str, partitions: int) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=3_000)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return list(consumer)
    finally:
        consumer.close()


def test_dead_letters_reach_the_topic_once_through_kills_and_restarts(
        kafka_broker, kafka_topic, fresh_db, kafka_client: str,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    rng = random.Random(SEED)
    streams = make_streams(3, partitions=PARTITIONS)
    # 8,000 per model (was 20,000), kills at 1,000-4,000 records (was 8,000): kills land soon
    # after a process's first dead-letter flush, where duplicates were seen (2026-12-07, both
    # clients: marks recovered from the topic are never stored; see the helper3/confluent report)
    counts = {s.model: 8_000 for s in streams}
    topic = kafka_topic(PARTITIONS)
    bootstrap = kafka_broker.bootstrap
    n_poison = 0
    chunks = 10
    for c in range(chunks):  # poison spread through the stream
        step = counts[streams[0].model] // chunks
        produce_streams(bootstrap, topic, streams, counts, start=c * step, stop=(c + 1) * step)
        poison = poison_values(streams, 150, rng)
        n_poison += produce(bootstrap, topic, iter(poison))
    source = read_all(bootstrap, topic, PARTITIONS)
    poisoned = {(r.partition, r.offset) for r in source if b"POISON" in r.value}
    assert len(poisoned) == n_poison == 1_500

    d = DaemonProc(tmp_path / "dl", bootstrap=bootstrap, topic=topic,
                   db_url=fresh_db("deadletters"), streams=streams, window=WINDOW,
                   client=kafka_client)
    stops: list[tuple[str, int]] = []
    with d:
        for i in range(7):  # 4 kills, then 3 graceful stops, at random progress
            d.start()
            threshold = rng.randint(1_000, 4_000)
            # or the stream is done: a fast client can read all of it before the last stops
            d.wait_for(lambda t=threshold: (d.metric("driftline_records_consumed_total") or 0)
                       >= t or d.stored_windows() >= full_windows(counts, WINDOW), 90,
                       f"{threshold} records consumed, or every window stored", interval=0.05)
            time.sleep(rng.uniform(0.0, 0.3))
            if i < 4:
                d.kill()
                stops.append(("SIGKILL", d.stored_windows()))
            else:
                assert d.terminate() == 0, d.log_tail()
                stops.append(("SIGTERM", d.stored_windows()))
        d.start()
        d.wait_for_windows(full_windows(counts, WINDOW), 240)
        dlq = f"{d.group}-dead-letter"
        d.wait_for(lambda: sum(end_offsets(bootstrap, dlq, 1).values()) >= n_poison, 60,
                   "every hostile record on the dead-letter topic")
        time.sleep(2.0)  # a duplicate would arrive with the same batches
        assert d.terminate() == 0, d.log_tail()
        rows = d.results()
    dead = read_all(bootstrap, dlq, 1)
    coords = Counter()
    reasons = Counter()
    for r in dead:
        h = dict(r.headers)
        coords[(int(h["driftline.source.partition"]), int(h["driftline.source.offset"]))] += 1
        reasons[h["driftline.reason"].decode()] += 1
    dupes = {k: n for k, n in coords.items() if n > 1}
    print(f"\n[dead letters] {sum(counts.values()):,} valid + {n_poison:,} hostile records; "
          f"stops (kind, windows stored): {stops}; dead letters {len(dead):,}, "
          f"duplicated {len(dupes)}; reasons {dict(sorted(reasons.items()))}")
    assert not dupes, f"dead-lettered more than once: {sorted(dupes.items())[:10]}"
    assert set(coords) == poisoned
    assert reasons == {"malformed_json": 300, "unknown_model": 300, "non_finite": 600,
                       "future_timestamp": 300}
    comparable(rows)  # no window stored twice
    assert len({(r["model"], r["window_index"]) for r in rows}) == full_windows(counts, WINDOW)


def test_database_outage_during_start_up_and_rebalance_stops_no_daemon(
        kafka_broker, postgres_server, kafka_topic, fresh_db, kafka_client: str,
        tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    streams = make_streams(4, partitions=PARTITIONS)
    counts = {s.model: 6_000 for s in streams}
    topic = kafka_topic(PARTITIONS)
    bootstrap = kafka_broker.bootstrap
    db = fresh_db("rebalance_outage")
    produce_streams(bootstrap, topic, streams, counts, stop=3_000)
    common = dict(bootstrap=bootstrap, topic=topic, db_url=db, streams=streams, window=WINDOW,
                  client=kafka_client)
    a = DaemonProc(tmp_path / "a", group="outage-group", **common)
    b = DaemonProc(tmp_path / "b", group="outage-group", **common)
    c = DaemonProc(tmp_path / "c", group="outage-group", **common)
    with a, b, c:
        a.start()
        b.start()
        b.wait_for(lambda: "partitions assigned" in b.log_text(), 60, "b to join the group")
        # a's side of that rebalance, and its stored-state reload, done before the outage
        a.wait_for(lambda: a.log_text().count("partitions assigned") >= 2, 60,
                   "a's rebalance after b joined")
        a.wait_for_windows(full_windows(counts, WINDOW) // 2, 120)
        for d in (a, b):
            d.wait_for(lambda d=d: d.http_status("/readyz") == 200, 30, "ready")
        time.sleep(3.0)  # the state reload after that rebalance runs at the next poll
        try:
            postgres_server.stop()
            t_down = time.monotonic()
            # b leaves: a's partitions move and it must reload stored state from storage
            before = a.log_text().count("partitions assigned")
            assert b.terminate() == 0, b.log_tail()
            # a's rebalance completes in the outage: while its state reload waits for
            # storage it keeps polling with its partitions paused, so an assignment that
            # kafka-python delivers in a later poll than the revoke still arrives
            a.wait_for(lambda: a.log_text().count("partitions assigned") > before, 60,
                       "a's rebalance after b left, during the outage")
            a.wait_for(lambda: a.http_status("/readyz") == 503, 30, "a's /readyz to say 503")
            # c starts during the outage: it must wait for the database, not exit
            c.start()
            c.wait_for(lambda: c.http_status("/readyz") == 503, 30, "c's /readyz to say 503")
            _status, body = c.http_get("/readyz")
            assert json.loads(body)["storage_ok"] is False
            assert "sql" in json.loads(body)["storage_error"]
            while time.monotonic() - t_down < 12:
                assert a.alive, a.log_tail()
                assert c.alive, c.log_tail()
                time.sleep(0.5)
        finally:
            if not postgres_server.running:
                postgres_server.start()
        t_up = time.monotonic()
        for d in (a, c):
            d.wait_for(lambda d=d: d.http_status("/readyz") == 200, 30, "/readyz 200 again")
        resumed = time.monotonic() - t_up
        a.wait_for(lambda: a.log_text().count("partitions assigned") > before, 60,
                   "a's rebalance after b left")
        produce_streams(bootstrap, topic, streams, counts, start=3_000)
        a.wait_for_windows(full_windows(counts, WINDOW), 120)
        assert a.terminate() == 0, a.log_tail()
        assert c.terminate() == 0, c.log_tail()
        rows = a.results()
        assert a.starts == b.starts == c.starts == 1
    print(f"\n[rebalance outage] PostgreSQL down {t_up - t_down:.1f}s while b left (a "
          f"rebalanced) and c started; both ready {resumed:.1f}s after it was back")
    assert resumed < 10
    comparable(rows)  # every window once
    assert len({(r["model"], r["window_index"]) for r in rows}) == full_windows(counts, WINDOW)
