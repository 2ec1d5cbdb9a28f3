"""Fixtures shared by the integration tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

#: The daemon's Kafka clients (setting source.kafka.client); the delivery tests run with each.
KAFKA_CLIENTS = ("kafka-python", "confluent-kafka")


@pytest.fixture(params=KAFKA_CLIENTS)
def kafka_client(request: pytest.FixtureRequest) -> str:
    """The Kafka client a test's daemons use: the test runs once per client."""
    return str(request.param)


@pytest.fixture
def fresh_db(postgres_server) -> Iterator[Callable[[str], str]]:  # type: ignore[no-untyped-def]
    """Factory: `fresh_db(prefix)` creates an empty database and returns its URL."""
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        made.append(name)
        return postgres_server.create_database(name)

    yield make
    if postgres_server.running:
        for name in made:
            postgres_server.drop_database(name)
