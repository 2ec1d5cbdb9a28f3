"""Where rejected records go: never dropped, always with the reason and their coordinates."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from monitor.errors import RecordError
from monitor.sources import Message

#: Header names on dead-lettered Kafka messages.
HEADER_REASON = "driftline.reason"
HEADER_DETAIL = "driftline.detail"
HEADER_TOPIC = "driftline.source.topic"
HEADER_PARTITION = "driftline.source.partition"
HEADER_OFFSET = "driftline.source.offset"


def dead_letter_headers(msg: Message, error: RecordError) -> list[tuple[str, bytes]]:
    return [
        (HEADER_REASON, error.reason.encode()),
        (HEADER_DETAIL, error.detail[:1000].encode("utf-8", "replace")),
        (HEADER_TOPIC, msg.topic.encode()),
        (HEADER_PARTITION, str(msg.partition).encode()),
        (HEADER_OFFSET, str(msg.offset).encode()),
    ]


class DeadLetter(Protocol):
    def send(self, msg: Message, error: RecordError) -> None: ...

    def flush(self) -> None:
        """Block until everything sent is durable; raising means "do not commit"."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class RecoverableDeadLetter(DeadLetter, Protocol):
    """A dead-letter topic the pipeline can read back after a crash.

    The marks of what was dead-lettered are stored with the results, after the dead letters
    are flushed; a crash between the two would dead-letter those records again. So the
    stored marks also record, per partition of the dead-letter topic, the highest offset
    they cover (``positions``), and a restart reads the topic from there (``recover``)
    for the source coordinates its headers name.
    """

    topic: str

    def positions(self) -> dict[int, int]:
        """Dead-letter partition -> highest offset acknowledged so far by this process."""
        ...

    def recover(self, covered: Mapping[int, int]) -> tuple[dict[tuple[str, int], int],
                                                           dict[int, int]]:
        """Read every dead-letter partition after ``covered``; returns the source marks
        found there, and the end offsets (minus one) of partitions with no position yet.
        Raises SinkError when the topic cannot be read."""
        ...


#: The mark partition meaning "every dead-letter partition not marked on its own": stored
#: as -1 when the topic did not exist at the first start, so everything on it is ours.
ALL_PARTITIONS = -1


def recovery_plan(ends: Mapping[int, int], covered: Mapping[int, int]
                  ) -> tuple[dict[int, int], dict[int, int]]:
    """What a restart must read back from the dead-letter topic, and what to mark as seen.

    ``ends``: partition -> end offset (next offset to be written) of the dead-letter topic,
    empty when the topic does not exist yet. ``covered``: partition -> highest offset the
    stored marks cover (``ALL_PARTITIONS`` for partitions without their own mark).
    Returns (partition -> first offset to read, partition -> baseline mark to store). A
    partition never marked holds what other runs wrote before this group first started:
    its baseline is its end. When the topic does not exist yet, the baseline is
    ``{ALL_PARTITIONS: -1}``: whatever appears on it later was written by this group, so a
    crash between the first dead-letter flush and the first stored marks reads it back
    rather than sending it twice."""
    if not ends:
        return {}, ({} if ALL_PARTITIONS in covered else {ALL_PARTITIONS: -1})
    start: dict[int, int] = {}
    baselines: dict[int, int] = {}
    for p, end in ends.items():
        mark = covered.get(p, covered.get(ALL_PARTITIONS))
        if mark is None:
            baselines[p] = end - 1
        elif mark + 1 < end:
            start[p] = mark + 1
    return start, baselines


@dataclass
class MemoryDeadLetter:
    """Keeps rejected records in a list (unit tests)."""

    records: list[tuple[Message, RecordError]] = field(default_factory=list)

    def send(self, msg: Message, error: RecordError) -> None:
        self.records.append((msg, error))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlDeadLetter:
    """Appends rejected records to a JSONL file (the demo, and runs without Kafka)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] = path.open("a", encoding="utf-8")
        self.count = 0

    def send(self, msg: Message, error: RecordError) -> None:
        value = b"" if msg.value is None else msg.value
        self._fh.write(json.dumps({
            "reason": error.reason, "detail": error.detail, "topic": msg.topic,
            "partition": msg.partition, "offset": msg.offset,
            "value_base64": base64.b64encode(value).decode(),
        }) + "\n")
        self.count += 1

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
