"""Progress of long embedding runs: a tqdm bar on a terminal, throttled lines in logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Progress"]


class Progress:
    """Reports ``done / total`` while a long run goes on.

    On a terminal it is a tqdm bar when tqdm is installed (sentence-transformers and
    transformers bring it). Otherwise (a log file, a container's stderr) it writes one line
    at most every ``interval_s`` seconds, and a closing line only if it wrote any: a run
    shorter than the interval prints nothing.

    Parameters
    ----------
    total : int
        Items to process.
    description : str
        Leads every line.
    stream : file, default sys.stderr
    enabled : bool, default True
    interval_s : float, optional
        Seconds between lines; default 0.5 on a terminal, 30 otherwise.
    clock : callable, default time.monotonic
        Injected in tests.
    """

    def __init__(
        self,
        total: int,
        description: str,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.description = description
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled
        self._clock = clock
        self._start = self._last = clock()
        self._lines = 0
        self._bar: Any = None
        tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._interval = interval_s if interval_s is not None else (0.5 if tty else 30.0)
        if enabled and tty:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(
                    total=total,
                    desc=description,
                    file=self._stream,
                    mininterval=self._interval,
                    unit="item",
                    leave=False,
                )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int) -> None:
        """``n`` more items are done."""
        self.done += n
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._write(now)

    def close(self) -> None:
        """Close the bar, or write the closing line if any line was written."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._enabled and self._lines:
            self._write(self._clock())
            self._lines = 0

    def _write(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        percent = 100.0 * self.done / self.total if self.total else 100.0
        self._stream.write(
            f"{self.description}: {self.done}/{self.total} ({percent:.0f}%), "
            f"{self.done / elapsed:.1f}/s, {elapsed:.0f} s\n"
        )
        self._stream.flush()
        self._lines += 1
