"""Errors raised by the daemon.

::

    MonitorError
    ├── ConfigError      invalid settings: names the key (and file) at fault
    ├── ReferenceDataError  reference file unreadable or inconsistent: names file, row, column
    ├── RecordError      a record failed decoding: carries the reject reason and detail
    ├── SourceError      the source (Kafka) failed in a way the loop cannot retry
    └── SinkError        a sink could not flush: offsets must not be committed
"""

from __future__ import annotations


class MonitorError(Exception):
    """Root of the daemon's errors."""


class ConfigError(MonitorError):
    """Settings are invalid; the daemon refuses to start."""


class ReferenceDataError(MonitorError):
    """A model's reference data cannot be used."""


class RecordError(MonitorError):
    """A record was rejected; ``reason`` is one of :data:`monitor.metrics.REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SourceError(MonitorError):
    """The record source failed."""


class SinkError(MonitorError):
    """A sink failed to write or flush; the pipeline retries and commits nothing meanwhile."""
