"""Per-partition offset bookkeeping: what was read, stored, dead-lettered and committed.

Three marks make at-least-once input give exactly-once results and dead letters:

* **stored**, per (stream, model, topic, partition): the highest offset inside a stored
  window. A record at or below it is a replay after a crash and is skipped.
* **dead-lettered**, per (topic, partition): the highest offset already sent to the
  dead-letter topic. Stored with the window results, so a restarted daemon (or the next
  owner after a rebalance) does not dead-letter a record twice.
* **committed**, per (topic, partition): what the consumer group last committed. A commit
  never passes the earliest record still held by an open window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from monitor.report import WindowReport
from monitor.windows import TopicPartition

StoredKey = tuple[str, str, str, int]  # (stream, model, topic, partition)


class Checkpoint:
    def __init__(self) -> None:
        self._stored: dict[StoredKey, int] = {}
        self._dead_lettered: dict[TopicPartition, int] = {}
        self._dl_durable: dict[TopicPartition, int] = {}  # dead-letter marks in storage
        self._counted: dict[TopicPartition, int] = {}  # highest offset counted as consumed
        self._next: dict[TopicPartition, int] = {}  # next offset to read, this session
        self._first: dict[TopicPartition, int] = {}  # first offset read this session
        self._committed: dict[TopicPartition, int] = {}

    # -- restart state ----------------------------------------------------------------
    def restore(self, stored: Mapping[StoredKey, int],
                dead_letter_marks: Mapping[TopicPartition, int]) -> None:
        """Load the marks storage holds (on start and after every rebalance)."""
        self._stored = dict(stored)
        for tp, offset in dead_letter_marks.items():
            self._dead_lettered[tp] = max(self._dead_lettered.get(tp, -1), offset)
            self._dl_durable[tp] = max(self._dl_durable.get(tp, -1), offset)

    def mark_stored(self, report: WindowReport) -> None:
        """``report`` is durable: replays may skip its records now."""
        for (topic, partition), (_lo, hi) in report.offsets.items():
            key = (report.stream, report.model, topic, partition)
            self._stored[key] = max(self._stored.get(key, -1), hi)

    def is_stored(self, stream: str, model: str, tp: TopicPartition, offset: int) -> bool:
        return offset <= self._stored.get((stream, model, *tp), -1)

    # -- reading ----------------------------------------------------------------------
    def read(self, tp: TopicPartition, offset: int) -> None:
        self._first.setdefault(tp, offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def read_batch(self, tps: Sequence[TopicPartition], offsets: Sequence[int]) -> None:
        """:meth:`read` of every record of a batch (``tps[i]``, ``offsets[i]``), in order.

        Once per partition in the batch rather than once per record: its first offset
        and the highest one, found by C-level scans (a batch holds few partitions).
        """
        if not tps:
            return
        distinct = dict.fromkeys(tps)
        if len(distinct) == 1:
            groups: Iterable[tuple[TopicPartition, Sequence[int]]] = [(tps[0], offsets)]
        else:
            groups = [(tp, [o for t, o in zip(tps, offsets, strict=True) if t == tp])
                      for tp in distinct]
        for tp, offs in groups:
            self._first.setdefault(tp, offs[0])
            self._next[tp] = max(self._next.get(tp, 0), max(offs) + 1)

    def reading(self, tp: TopicPartition) -> bool:
        return tp in self._next

    def count_once(self, tp: TopicPartition, offset: int) -> bool:
        """True the first time ``offset`` is counted (records re-read after a rewind)."""
        if offset <= self._counted.get(tp, -1):
            return False
        self._counted[tp] = offset
        return True

    def dead_letter_once(self, tp: TopicPartition, offset: int) -> bool:
        """True if the record at ``offset`` has not been dead-lettered by anyone yet."""
        if offset <= self._dead_lettered.get(tp, -1):
            return False
        self._dead_lettered[tp] = offset
        return True

    def dead_letter_marks_to_store(self) -> dict[TopicPartition, int]:
        """Dead-letter marks above what storage holds (their records are flushed by now)."""
        return {tp: o for tp, o in self._dead_lettered.items()
                if o > self._dl_durable.get(tp, -1)}

    def position_marks_to_store(self, dl_topic: str, acked: Mapping[int, int]
                                ) -> dict[TopicPartition, int]:
        """(dead-letter topic, partition) -> highest acknowledged offset, where it moved."""
        return {(dl_topic, p): o for p, o in acked.items()
                if o > self._dl_durable.get((dl_topic, p), -1)}

    def dead_letter_marks_stored(self, marks: Mapping[TopicPartition, int]) -> None:
        for tp, o in marks.items():
            self._dl_durable[tp] = max(self._dl_durable.get(tp, -1), o)

    # -- committing -------------------------------------------------------------------
    def committable(self, held: Iterable[tuple[TopicPartition, int]]) -> dict[TopicPartition, int]:
        """Per partition: the earliest offset still ``held`` (open windows...), else the next."""
        out = dict(self._next)
        for tp, lo in held:
            out[tp] = min(out.get(tp, lo), lo)
        return out

    def to_commit(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The offsets that move a partition this process reads."""
        # Committing the first offset we read would only repeat what the group already has.
        return {tp: o for tp, o in offsets.items()
                if tp in self._next and self._committed.get(tp, self._first.get(tp)) != o}

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def forget_session(self) -> None:
        """Partitions moved: what this session read and committed no longer applies."""
        self._next.clear()
        self._first.clear()
        self._committed.clear()
