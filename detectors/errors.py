"""Exceptions raised by :mod:`detectors`.

Everything the package raises on purpose derives from :class:`DetectorError`, except
plain misuse (wrong types, bad parameter values, NaN in the data), which raises the
built-in :class:`ValueError` / :class:`TypeError` / :class:`KeyError` with a message
naming the offending parameter or feature.
"""

from __future__ import annotations

__all__ = ["DetectorError", "InsufficientDataError"]


class DetectorError(Exception):
    """Root of the errors raised by :mod:`detectors`."""


class InsufficientDataError(DetectorError, ValueError):
    """A *reference* column holds fewer values than the detector's ``min_samples``.

    Raised by detector constructors only. A *current* window that is too small is not
    an error: ``test`` returns a result with ``insufficient_data=True`` instead, because
    an empty window is a normal event for a daemon. Also a :class:`ValueError`, so code
    that treats every bad constructor argument alike keeps working.
    """
