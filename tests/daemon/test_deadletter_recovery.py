"""What a restart reads back from the dead-letter topic (``recovery_plan``).

The case that once duplicated dead letters on the real broker: the topic did not exist at
the group's first start, the first run dead-lettered records and was killed before their
marks were stored; the restart took everything on the new topic for another run's."""

from __future__ import annotations

from monitor.deadletter import ALL_PARTITIONS, recovery_plan


def test_a_topic_missing_at_first_start_is_ours_from_its_first_offset() -> None:
    start, baselines = recovery_plan({}, {})
    assert (start, baselines) == ({}, {ALL_PARTITIONS: -1})
    # the first run wrote 40 dead letters and died before storing a mark: all read back
    start, baselines = recovery_plan({0: 40}, baselines)
    assert (start, baselines) == ({0: 0}, {})


def test_a_topic_that_existed_at_first_start_keeps_what_was_there() -> None:
    start, baselines = recovery_plan({0: 12, 1: 0}, {})
    assert start == {}
    assert baselines == {0: 11, 1: -1}  # written before this group: not its dead letters
    start, _ = recovery_plan({0: 30, 1: 5}, {0: 11, 1: -1})
    assert start == {0: 12, 1: 0}


def test_stored_marks_bound_what_is_read_back() -> None:
    covered = {ALL_PARTITIONS: -1, 0: 57}
    start, baselines = recovery_plan({0: 58, 1: 9}, covered)
    assert start == {1: 0}  # partition 0 fully covered; 1 only by the topic-wide mark
    assert baselines == {}
    assert recovery_plan({}, covered) == ({}, {})  # nothing to store twice
