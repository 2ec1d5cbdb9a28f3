"""Members of one group share one-partition topics: a model per topic, a topic per member.

The range assignor (both clients' old default) gives partition 0 of every topic to the
same member, so `--workers N` over N one-partition topics ran every model in one worker
while the others idled (found by benchmarks/bench_ingest_kafka.py: 2 workers read no faster
than 1). Both clients now prefer round-robin.
"""

from __future__ import annotations

import time
import uuid

import pytest

from monitor.kafka_io import make_source
from monitor.settings import KafkaSettings

pytestmark = pytest.mark.integration


def test_members_of_a_group_split_one_partition_topics(kafka_broker, kafka_topic,  # type: ignore[no-untyped-def]
                                                        kafka_client: str) -> None:
    topics = [kafka_topic(partitions=1) for _ in range(4)]
    settings = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap, topics=tuple(topics),
                             group_id=f"rr-{uuid.uuid4().hex[:8]}", client=kafka_client,
                             consumer={"session_timeout_ms": 6000,
                                       "heartbeat_interval_ms": 1000})
    members = [make_source(settings) for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while True:
            for m in members:
                m.poll(0.2)
            owned = [m.assignment() for m in members]
            if sum(map(len, owned)) == 4 and all(owned):
                break
            assert time.monotonic() < deadline, f"assignments never settled: {owned}"
    finally:
        for m in members:
            m.close()
    assert sorted(len(o) for o in owned) == [2, 2]
    assert {t for o in owned for t, _ in o} == set(topics)
