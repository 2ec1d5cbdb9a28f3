"""The record-source seam, and the in-process source the demo and unit tests use."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from monitor.windows import TopicPartition


class Message(msgspec.Struct, frozen=True, gc=False):
    """One raw record with its coordinates; ``value`` is undecoded bytes.

    A msgspec struct, not a frozen dataclass: one is built per record, in C, and it is not
    tracked by the garbage collector (it holds no reference cycles)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: float | None = None  # the broker's timestamp (Unix seconds), if it has one

    @property
    def coordinates(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


RebalanceHook = Callable[[list[TopicPartition]], None]


class Source(Protocol):
    def poll(self, timeout_s: float) -> list[Message]:
        """Up to one batch of messages; empty when nothing arrived within ``timeout_s``."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit the next offset to read per partition (everything below it is done)."""
        ...

    @property
    def exhausted(self) -> bool:
        """True for a finite source with nothing left (never for Kafka)."""
        ...

    @property
    def connected(self) -> bool:
        """False while the source cannot reach its broker."""
        ...

    def lag(self) -> dict[TopicPartition, int]:
        """Records not yet read, per assigned partition (what is known without a request)."""
        ...

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` again from ``offset`` (used after dropping open windows)."""
        ...

    def pause(self) -> None:
        """Stop returning records from every assigned partition (membership is kept)."""
        ...

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        ...

    def on_rebalance(self, revoked: RebalanceHook, assigned: RebalanceHook) -> None:
        """Register callbacks run, inside :meth:`poll`, when partitions move."""
        ...

    def close(self) -> None: ...



@dataclass
class MemorySource:
    """A finite, in-process source over byte strings, on one topic and partition.

    It keeps what was committed so tests can check commit-after-flush.
    """

    values: Iterable[bytes | None]
    topic: str = "memory"
    partition: int = 0
    batch_size: int = 1000
    first_offset: int = 0  # offset of the first value (a replay from a committed offset)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    _it: Iterator[bytes | None] | None = None
    _offset: int = 0
    _done: bool = False
    _paused: bool = False

    def poll(self, timeout_s: float) -> list[Message]:
        if self._paused:
            return []
        if self._it is None:
            self._it = iter(self.values)
            self._offset = self.first_offset
        batch: list[Message] = []
        for value in self._it:
            batch.append(Message(self.topic, self.partition, self._offset, value))
            self._offset += 1
            if len(batch) >= self.batch_size:
                return batch
        self._done = True
        return batch

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.committed.update(offsets)

    @property
    def exhausted(self) -> bool:
        return self._done

    @property
    def connected(self) -> bool:
        return True

    def lag(self) -> dict[TopicPartition, int]:
        return {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        raise NotImplementedError("MemorySource is read once, in order")

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def on_rebalance(self, revoked: RebalanceHook, assigned: RebalanceHook) -> None:
        pass  # one partition, never moved

    def close(self) -> None:
        self._done = True
