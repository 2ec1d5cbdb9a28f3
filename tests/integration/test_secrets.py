"""Secrets never reach the logs: a PostgreSQL password in the storage URL (from the
environment) and a Kafka SASL password (from a file), against real services.

A second, SASL-enabled broker (``scripts/kafka.sh start --sasl-port``, opt-in) checks that the
password read from ``sasl_plain_password_file`` really logs the daemon in; the daemon runs at
DEBUG, processes records and dead letters, and is stopped with SIGTERM; neither secret may
appear in anything it printed. ``driftline check-config`` and the errors of bad settings
files must not print them either.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition
from psycopg import sql
from services import register_cleanup
from services.kafka import KafkaBroker
from services.ports import free_port

from monitor.cli import main
from monitor.kafka_io import produce
from monitor.storage import SqlStore
from monitor.synthetic import SyntheticStream

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KAFKA_USER = "driftline"
KAFKA_SECRET = f"kafkaS3cret{uuid.uuid4().hex}"
PG_SECRET = f"pgS3cret{uuid.uuid4().hex}"
STREAM = SyntheticStream(model="secret-model", seed=3)
WINDOW = 200
BAD = [b"{not json", b"\xff\xfe", b'{"model": "nobody"}']


def assert_no_secret(text: str, where: str, secrets: dict[str, str] | None = None) -> None:
    """Neither secret, nor any 12 characters of its random part (a secret cut short, as
    PyYAML's error snippets do, is still a leak)."""
    for name, secret in (secrets or {"Kafka password": KAFKA_SECRET,
                                     "PostgreSQL password": PG_SECRET}).items():
        random_part = secret[-32:]
        for needle in [secret] + [random_part[i:i + 12] for i in range(len(random_part) - 11)]:
            at = text.find(needle)
            assert at < 0, f"{name} printed in {where}: ...{text[max(0, at - 200):at + 80]}..."


class SaslKafkaBroker(KafkaBroker):
    """The test broker plus a SASL_PLAINTEXT (PLAIN) listener on ``sasl_port``."""

    def __init__(self, workdir: Path, users: str) -> None:
        super().__init__(workdir)
        self.sasl_port = free_port()
        self.users = users

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def start(self, timeout: float = 120.0) -> None:
        register_cleanup(self, self.stop)
        self._script("start", "--port", str(self.port), "--controller-port",
                     str(self.controller_port), "--sasl-port", str(self.sasl_port),
                     timeout=timeout + 600,
                     env={"KAFKA_START_TIMEOUT": str(int(timeout)),
                          "KAFKA_SASL_USERS": self.users})
        self.running = True
        with self.admin() as admin:
            admin.list_topics()


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslKafkaBroker]:
    broker = SaslKafkaBroker(tmp_path_factory.mktemp("kafka-sasl"),
                             f"{KAFKA_USER}:{KAFKA_SECRET}")
    try:
        broker.start()
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"could not start the SASL Kafka broker: {exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def app_database(postgres_server) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """A role with a password and a database it owns: (URL with the password, superuser
    URL). The harness's trust auth accepts any password; what matters is the URL."""
    suffix = uuid.uuid4().hex[:8]
    role, db = f"app_{suffix}", f"secrets_{suffix}"
    with postgres_server.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(PG_SECRET)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(db), sql.Identifier(role)))
    try:
        yield (f"postgresql+psycopg://{role}:{PG_SECRET}@127.0.0.1:{postgres_server.port}/{db}",
               postgres_server.database_url(db))
    finally:
        if postgres_server.running:
            postgres_server.drop_database(db)
            with postgres_server.connect() as conn:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def password_file(tmp_path: Path, secret: str = KAFKA_SECRET) -> Path:
    path = tmp_path / "kafka-password"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def settings_doc(tmp_path: Path, *, bootstrap: str, topic: str, dead_letter_topic: str,
                 security: dict[str, Any], client: str = "kafka-python") -> dict[str, Any]:
    ref = STREAM.write_reference_csv(tmp_path / "reference.csv", 2_000)
    return {
        "source": {"kafka": {"bootstrap_servers": bootstrap, "topics": [topic],
                             "group_id": f"g-{topic}", "dead_letter_topic": dead_letter_topic,
                             "poll_timeout_ms": 200, "security": security,
                             "client": client}},
        "metrics": {"address": "127.0.0.1", "port": free_port()},
        # overridden from the environment (DRIFTLINE__STORAGE__URL), as in production
        "storage": {"url": "sqlite:///not-used.db"},
        "models": [STREAM.settings_doc(ref, WINDOW)],
    }


def sasl_security(path: Path) -> dict[str, Any]:
    return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
            "sasl_plain_username": KAFKA_USER, "sasl_plain_password_file": str(path)}


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str,
        env: dict[str, str] | None = None) -> tuple[int, str]:
    """``driftline ARGS`` in this process (no start-up cost): exit status and everything it
    printed; an uncaught exception counts as exit status 1 with its traceback printed, as
    the interpreter would."""
    with monkeypatch.context() as m:
        for key in [k for k in os.environ if k.startswith("DRIFTLINE__")]:
            m.delenv(key)
        for key, value in (env or {}).items():
            m.setenv(key, value)
        try:
            code, tb = main(list(args)), ""
        except Exception:  # what an uncaught error would print
            code, tb = 1, traceback.format_exc()
    printed = capsys.readouterr()
    return code, printed.out + printed.err + tb


def test_sasl_listener_needs_the_password(sasl_broker: SaslKafkaBroker) -> None:
    """The opt-in listener really authenticates: right password in, wrong one out."""
    def admin(password: str) -> KafkaAdminClient:
        return KafkaAdminClient(bootstrap_servers=sasl_broker.sasl_bootstrap,
                                security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                                sasl_plain_username=KAFKA_USER, sasl_plain_password=password,
                                request_timeout_ms=5_000, bootstrap_timeout_ms=5_000)

    client = admin(KAFKA_SECRET)
    try:
        client.list_topics()
    finally:
        client.close()
    with pytest.raises(KafkaError):
        client = admin("wrong-password")
        try:
            client.list_topics()
        finally:
            client.close()


def test_daemon_at_debug_logs_neither_secret(sasl_broker: SaslKafkaBroker,
                                             app_database: tuple[str, str], kafka_client: str,
                                             tmp_path: Path) -> None:
    url, _ = app_database
    suffix = uuid.uuid4().hex[:8]
    topic, dlq = f"secrets-{suffix}", f"secrets-dlq-{suffix}"
    sasl_broker.create_topic(topic, 1)
    sasl_broker.create_topic(dlq, 1)
    produce(sasl_broker.bootstrap, topic, ((b"k", v) for v in [*STREAM.encoded(2 * WINDOW),
                                                                *BAD]))
    config = tmp_path / "driftline.yml"
    config.write_text(yaml.safe_dump(settings_doc(
        tmp_path, bootstrap=sasl_broker.sasl_bootstrap, topic=topic, dead_letter_topic=dlq,
        security=sasl_security(password_file(tmp_path)), client=kafka_client)))
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", "--config", str(config),
             "--log-level", "DEBUG"], stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT), "DRIFTLINE__STORAGE__URL": url})
    store = SqlStore(url)  # as the application's role: it owns the tables
    try:
        store.create_schema()
        deadline = time.monotonic() + 90
        while len(store.results()) < 2 * 2 or _count(sasl_broker.bootstrap, dlq) < len(BAD):
            assert proc.poll() is None, f"daemon exited {proc.returncode}:\n{err.read_text()}"
            assert time.monotonic() < deadline, f"no results/dead letters:\n{err.read_text()}"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, err.read_text()[-3000:]
    finally:
        store.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = out.read_text(errors="replace") + err.read_text(errors="replace")
    # (--log-level DEBUG sets the root logger to DEBUG; driftline itself logs nothing at
    # DEBUG today, and kafka-python's logger is held at WARNING by the CLI)
    assert "partitions assigned" in log and "stopped cleanly" in log, log[-3000:]
    assert log.count("rejected record at") == len(BAD), log[-3000:]
    assert_no_secret(log, "the daemon's output")
    # the storage URL is logged nowhere else either: e.g. the PostgreSQL user name is fine
    print(f"\nsecrets: {kafka_client} daemon at DEBUG over SASL/PLAIN and PostgreSQL printed "
          f"{len(log)} characters ({log.count(chr(10))} lines), neither password among them")


def test_daemon_with_a_wrong_kafka_password_does_not_print_it(
        sasl_broker: SaslKafkaBroker, app_database: tuple[str, str], tmp_path: Path) -> None:
    url, _ = app_database
    wrong = f"wrongS3cret{uuid.uuid4().hex}"
    doc = settings_doc(tmp_path, bootstrap=sasl_broker.sasl_bootstrap,
                       topic=f"nothing-{uuid.uuid4().hex[:8]}", dead_letter_topic="nothing-dlq",
                       security=sasl_security(password_file(tmp_path, wrong)))
    doc["source"]["kafka"]["consumer"] = {"bootstrap_timeout_ms": 10_000}  # give up sooner
    config = tmp_path / "driftline.yml"
    config.write_text(yaml.safe_dump(doc))
    out = tmp_path / "output.log"
    with out.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", "--config", str(config),
             "--log-level", "DEBUG"], stdout=fh, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT), "DRIFTLINE__STORAGE__URL": url})
    try:  # kafka-python retries the bootstrap with back-off, then the daemon gives up
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = out.read_text(errors="replace")
    assert "Sending username and password" in log, log[-3000:]  # it did try to log in
    assert_no_secret(log, "the output of a daemon failing to authenticate",
                     {"wrong Kafka password": wrong, "PostgreSQL password": PG_SECRET})
    last = log.strip().splitlines()[-1] if log.strip() else ""
    print(f"\nsecrets: with a wrong Kafka password the daemon exited {proc.returncode}: "
          f"{last[:200]!r}")


def _count(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return sum(consumer.end_offsets([TopicPartition(topic, 0)]).values())
    finally:
        consumer.close()


# --- check-config and the errors of bad settings ------------------------------------------


def test_check_config_prints_no_secret(app_database: tuple[str, str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = app_database
    doc = settings_doc(tmp_path, bootstrap="127.0.0.1:9", topic="t", dead_letter_topic="d",
                       security=sasl_security(password_file(tmp_path)))
    (tmp_path / "ok.yml").write_text(yaml.safe_dump(doc))
    code, printed = cli(monkeypatch, capsys, "check-config", str(tmp_path / "ok.yml"),
                        env={"DRIFTLINE__STORAGE__URL": url})
    assert code == 0, printed
    assert_no_secret(printed, "check-config's output")


def _bad(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = yaml.safe_load(yaml.safe_dump(doc))
    for path, value in changes.items():
        node = out
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return out


def test_bad_settings_errors_print_no_secret(app_database: tuple[str, str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = app_database
    secret_file = password_file(tmp_path)
    good = settings_doc(tmp_path, bootstrap="127.0.0.1:9", topic="t", dead_letter_topic="d",
                        security=sasl_security(secret_file))
    inline = {k: v for k, v in sasl_security(secret_file).items()
              if k != "sasl_plain_password_file"} | {"sasl_plain_password": KAFKA_SECRET}
    env_url = {"DRIFTLINE__STORAGE__URL": url}
    host = url.split("@", 1)[1]
    cases: dict[str, tuple[Any, dict[str, str]]] = {
        # the secrets in the file itself, next to a mistake elsewhere
        "unknown key": (_bad(good, storage__url=url, source__kafka__security=inline,
                             metrics__prot=1), {}),
        "wrong type": (_bad(good, storage__url=url, source__kafka__security=inline,
                            metrics__port="not a port"), {}),
        "out of range": (_bad(good, storage__url=url, source__kafka__security=inline,
                              limits={"max_record_bytes": -1}), {}),
        "secret as a wrong type": (_bad(good, source__kafka__security=inline,
                                        storage__url={"password": PG_SECRET}), {}),
        # secrets from the environment and from a file
        "both password and password file": (
            _bad(good, source__kafka__security={**sasl_security(secret_file),
                                                "sasl_plain_password": KAFKA_SECRET}), env_url),
        "unreadable password file": (
            _bad(good, source__kafka__security={**sasl_security(tmp_path / "missing")}),
            env_url),
        "unknown database dialect": (good, {"DRIFTLINE__STORAGE__URL":
                                            url.replace("postgresql+psycopg", "postgresq")}),
        "unparseable port in the URL": (good, {"DRIFTLINE__STORAGE__URL":
                                               url.replace(host, "127.0.0.1:port/db")}),
        "environment value not YAML": (
            _bad(good, source__kafka__security={
                k: v for k, v in inline.items() if k != "sasl_plain_password"}),
            {"DRIFTLINE__SOURCE__KAFKA__SECURITY__SASL_PLAIN_PASSWORD": f"@{KAFKA_SECRET}",
             **env_url}),
        "bad environment override": (good, {**env_url, "DRIFTLINE__MODELS__5__ALPHA": "0.1"}),
    }
    leaks, codes = [], {}
    for name, (doc, env) in cases.items():
        path = tmp_path / f"{name.replace(' ', '-')}.yml"
        path.write_text(yaml.safe_dump(doc))
        codes[name], printed = cli(monkeypatch, capsys, "check-config", str(path), env=env)
        try:
            assert_no_secret(printed, f"check-config ({name})")
        except AssertionError as exc:
            leaks.append(str(exc))
    # a YAML syntax error just after a secret (a password with ": " in it, unquoted)
    broken = tmp_path / "broken.yml"
    text = yaml.safe_dump(_bad(good, source__kafka__security=inline), width=1000)
    assert f"sasl_plain_password: {KAFKA_SECRET}\n" in text
    broken.write_text(text.replace(f"sasl_plain_password: {KAFKA_SECRET}\n",
                                   f"sasl_plain_password: {KAFKA_SECRET}: 2\n"))
    for args in (("check-config", str(broken)), ("run", "--config", str(broken))):
        codes[f"YAML syntax error ({args[0]})"], printed = cli(monkeypatch, capsys, *args)
        try:
            assert_no_secret(printed, f"{args[0]} (YAML syntax error)")
        except AssertionError as exc:
            leaks.append(str(exc))
    assert not leaks, "\n".join(leaks)
    assert set(codes.values()) == {2}, f"exit status per case (2 expected): {codes}"
