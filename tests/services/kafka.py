"""Single-node KRaft Kafka broker for tests, run through scripts/kafka.sh."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

from . import register_cleanup, unregister_cleanup
from .ports import free_port

KAFKA_SH = Path(__file__).resolve().parents[2] / "scripts" / "kafka.sh"


class KafkaBroker:
    """A broker+controller in `workdir`; ports stay the same across stop/start/restart."""

    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir)
        self.port = free_port()
        self.controller_port = free_port()
        self.running = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "kafka.log"

    def _script(self, *args: str, timeout: float, env: dict[str, str] | None = None) -> None:
        try:
            proc = subprocess.run(
                [str(KAFKA_SH), *args, "--dir", str(self.dir)],
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, **(env or {})},
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"kafka.sh {args[0]} took over {timeout:.0f}s") from None
        if proc.returncode != 0:
            # kafka.sh's messages name what is missing (java, mvn) and the install script.
            raise RuntimeError(
                f"kafka.sh {args[0]} failed (exit {proc.returncode}):\n{proc.stderr.strip()}"
            )

    def start(self, timeout: float = 120.0) -> None:
        """Start (formatting storage on first start) and wait until it serves requests."""
        register_cleanup(self, self.stop)  # before starting: a half-started broker is killed too
        ports = ["--port", str(self.port), "--controller-port", str(self.controller_port)]
        # The extra 600s covers kafka.sh resolving the jars from Maven Central on first use.
        env = {"KAFKA_START_TIMEOUT": str(int(timeout))}
        self._script("start", *ports, timeout=timeout + 600, env=env)
        self.running = True
        with self.admin() as admin:  # one real request: the broker answers Kafka protocol
            admin.list_topics()

    def stop(self) -> None:
        self._script("stop", timeout=120)
        self.running = False
        unregister_cleanup(self)

    def restart(self) -> None:
        """Stop and start again on the same ports; topics and messages are kept."""
        self.stop()
        self.start()

    @contextmanager
    def admin(self) -> Iterator[KafkaAdminClient]:
        client = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
        try:
            yield client
        finally:
            client.close()

    def create_topic(self, name: str, partitions: int = 1, timeout: float = 30.0) -> None:
        """Create `name` and wait until every partition has a leader."""
        with self.admin() as admin:
            try:
                admin.create_topics([NewTopic(name, partitions, 1)])
            except TopicAlreadyExistsError:
                pass
            deadline = time.monotonic() + timeout
            while not self._has_leaders(admin, name, partitions):
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"topic {name!r}: partitions without a leader after {timeout}s"
                    )
                time.sleep(0.1)

    @staticmethod
    def _has_leaders(admin: KafkaAdminClient, name: str, partitions: int) -> bool:
        try:
            (topic,) = admin.describe_topics([name])
        except (KafkaError, ValueError):
            return False
        parts = topic.get("partitions") or []
        return (
            topic.get("error_code") == 0
            and len(parts) == partitions
            and all(p.get("error_code") == 0 and p.get("leader_id", -1) >= 0 for p in parts)
        )

    def delete_topic(self, name: str, timeout: float = 30.0) -> None:
        """Delete `name` and wait until it is gone from the metadata."""
        with self.admin() as admin:
            try:
                admin.delete_topics([name])
            except UnknownTopicOrPartitionError:
                return
            deadline = time.monotonic() + timeout
            while name in admin.list_topics():
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"topic {name!r} still listed {timeout}s after deletion")
                time.sleep(0.1)
