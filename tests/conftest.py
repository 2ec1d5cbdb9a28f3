"""Shared fixtures: real Kafka, PostgreSQL, Prometheus and Alertmanager on loopback.

A missing service is a failure, never a skip: the fixture fails with what to install
(`sudo scripts/install-test-deps.sh`).
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

# tests/ is not a package: make tests/services importable as `services` whatever pytest's
# import mode.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

# `driftline run` starts one worker per core by default; the tests that start it (and kill -9
# it) mean one process unless they pass --workers, which overrides this.
os.environ.setdefault("DRIFTLINE__DAEMON__WORKERS", "1")

from services.alertmanager import DEFAULT_CONFIG, AlertmanagerServer  # noqa: E402
from services.kafka import KafkaBroker  # noqa: E402
from services.postgres import PostgresServer  # noqa: E402
from services.prometheus import PrometheusServer  # noqa: E402
from services.ray_head import RayHead  # noqa: E402


class _Startable(Protocol):
    def start(self) -> None: ...


S = TypeVar("S", bound=_Startable)


def _started(service: S, name: str) -> S:
    """Start `service`; on failure fail the test (not error out obscurely, never skip)."""
    try:
        service.start()
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"could not start {name}: {exc}", pytrace=False)
    return service


def _slug(request: pytest.FixtureRequest, limit: int = 40) -> str:
    """The test's name, reduced to characters valid in Kafka topic and database names."""
    return re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:limit]


# --- Kafka -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One single-node KRaft broker per session; `.restart()` keeps its port and data."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    try:
        yield _started(broker, "Kafka")
    finally:
        broker.stop()


@pytest.fixture
def kafka_topic(
    kafka_broker: KafkaBroker, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """Factory: `kafka_topic(partitions=1)` creates a uniquely named topic, deleted afterwards."""
    created: list[str] = []

    def make(partitions: int = 1) -> str:
        name = f"test-{_slug(request)}-{uuid.uuid4().hex[:8]}"
        kafka_broker.create_topic(name, partitions)
        created.append(name)
        return name

    yield make
    if kafka_broker.running:  # a failed outage test may leave it down; nothing to clean then
        for name in created:
            kafka_broker.delete_topic(name)


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One local Ray head per session (the retraining tests share it); yields its Jobs API
    address."""
    head = RayHead(tmp_path_factory.mktemp("ray"))
    try:
        yield _started(head, "a Ray head").address
    finally:
        head.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    try:
        server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    except RuntimeError as exc:
        pytest.fail(f"could not set up PostgreSQL: {exc}", pytrace=False)
    try:
        yield _started(server, "PostgreSQL")
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database for this test (dropped afterwards)."""
    name = f"t_{_slug(request)}_{uuid.uuid4().hex[:8]}"
    url = postgres_server.create_database(name)
    yield url
    if postgres_server.running:  # an outage test may have left the server stopped
        postgres_server.drop_database(name)


# --- Prometheus / Alertmanager ---------------------------------------------------------------


@pytest.fixture
def prometheus_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., PrometheusServer]]:
    """Factory: `prometheus_factory(targets, rule_files=(), alertmanager_url=None,
    scrape_interval="1s")` returns a started PrometheusServer, stopped at teardown."""
    servers: list[PrometheusServer] = []

    def make(
        targets: Sequence[str],
        rule_files: Sequence[str | Path] = (),
        alertmanager_url: str | None = None,
        scrape_interval: str = "1s",
    ) -> PrometheusServer:
        server = PrometheusServer(
            tmp_path_factory.mktemp("prometheus"),
            targets,
            scrape_interval=scrape_interval,
            rule_files=rule_files,
            alertmanager_url=alertmanager_url,
        )
        servers.append(server)
        return _started(server, "Prometheus")

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def alertmanager_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., AlertmanagerServer]]:
    """Factory: `alertmanager_factory(config_yaml=DEFAULT_CONFIG)` returns a started
    AlertmanagerServer (default config: one do-nothing receiver), stopped at teardown."""
    servers: list[AlertmanagerServer] = []

    def make(config_yaml: str = DEFAULT_CONFIG) -> AlertmanagerServer:
        server = AlertmanagerServer(tmp_path_factory.mktemp("alertmanager"), config_yaml)
        servers.append(server)
        return _started(server, "Alertmanager")

    yield make
    for server in servers:
        server.stop()
