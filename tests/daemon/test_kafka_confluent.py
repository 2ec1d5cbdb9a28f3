"""The confluent-kafka client's settings translation and selection (no broker needed).

Its delivery behaviour is tested on a real broker: tests/integration (the ``kafka_client``
fixture runs the delivery suite once per client)."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.errors import SinkError, SourceError
from monitor.kafka_confluent import ConfluentDeadLetter, ConfluentSource, translate
from monitor.kafka_io import make_dead_letter, make_source
from monitor.settings import KafkaSettings


def test_kafka_python_names_become_librdkafka_properties() -> None:
    got = translate({
        "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u", "sasl_plain_password": "p", "ssl_cafile": "/ca.pem",
        "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem", "ssl_password": "kp",
        "ssl_check_hostname": False, "session_timeout_ms": 6000,
        "fetch_max_wait_ms": 100, "max_poll_records": 10,  # no librdkafka meaning: dropped
        "queued.max.messages.kbytes": 1024,  # a librdkafka name passes through
    }, "source.kafka.security")
    assert got == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "u",
        "sasl.password": "p", "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/c.pem", "ssl.key.location": "/k.pem",
        "ssl.key.password": "kp", "ssl.endpoint.identification.algorithm": "none",
        "session.timeout.ms": 6000, "fetch.wait.max.ms": 100,
        "queued.max.messages.kbytes": 1024}
    assert translate({"ssl_check_hostname": True}, "x") == {
        "ssl.endpoint.identification.algorithm": "https"}


def test_an_unknown_option_fails_naming_the_setting() -> None:
    settings = KafkaSettings(client="confluent-kafka", bootstrap_servers="127.0.0.1:1",
                             consumer={"no_such_option": 1})
    with pytest.raises(SourceError, match=r"source\.kafka\.consumer\): .*no\.such\.option"):
        ConfluentSource(settings)
    with pytest.raises(SinkError, match=r"source\.kafka\.producer\): .*no\.such\.option"):
        ConfluentDeadLetter(KafkaSettings(bootstrap_servers="127.0.0.1:1",
                                          producer={"no_such_option": 1}))
    with pytest.raises(SourceError, match=r"source\.kafka\.security\.sasl_oauth"):
        ConfluentDeadLetter(KafkaSettings(
            client="confluent-kafka", bootstrap_servers="127.0.0.1:1",
            security={"sasl_oauth_token_provider": "x"}))


def test_the_setting_picks_the_client(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    settings = KafkaSettings(client="confluent-kafka", bootstrap_servers="127.0.0.1:1",
                             security={"security_protocol": "SASL_PLAINTEXT",
                                       "sasl_mechanism": "PLAIN",
                                       "sasl_plain_username": "u",
                                       "sasl_plain_password_file": str(secret)})
    source = make_source(settings)
    dead_letter = make_dead_letter(settings)
    try:
        assert isinstance(source, ConfluentSource)
        assert isinstance(dead_letter, ConfluentDeadLetter)
        assert source.poll(0) == []
        assert source.assignment() == set()
    finally:
        source.close()
        dead_letter.close()
    assert KafkaSettings().client == "confluent-kafka"  # the default (README "Kafka clients")


def test_a_commit_the_broker_does_not_answer_fails_in_bounded_time(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """librdkafka's synchronous commit waits for a gone broker's return; the source gives
    up after COMMIT_TIMEOUT_MS, starts no commit while that one waits, and commits again
    once it ended."""
    import threading
    import time

    import monitor.kafka_confluent as kc

    monkeypatch.setattr(kc, "COMMIT_TIMEOUT_MS", 200)
    source = ConfluentSource(KafkaSettings(client="confluent-kafka",
                                           bootstrap_servers="127.0.0.1:1"))
    release = threading.Event()
    committed: list[list] = []

    class Stuck:
        def commit(self, offsets, asynchronous):  # type: ignore[no-untyped-def]
            assert asynchronous is False
            release.wait(10)
            committed.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

        def close(self) -> None:
            pass

    real = source._consumer
    source._consumer = Stuck()  # type: ignore[assignment]
    try:
        t0 = time.monotonic()
        with pytest.raises(SourceError, match=r"no answer from the broker within 0\.2 s"):
            source.commit({("t", 0): 5})
        assert time.monotonic() - t0 < 2
        with pytest.raises(SourceError, match="previous commit is still waiting"):
            source.commit({("t", 0): 7})
        release.set()
        deadline = time.monotonic() + 5
        while source._commit_pending is not None and not source._commit_pending.done():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        source.commit({("t", 0): 9})
        assert committed == [[("t", 0, 5)], [("t", 0, 9)]]  # in order, the refused one never
    finally:
        source.close()
        real.close()
