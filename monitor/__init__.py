"""driftline's daemon: settings, sources, decoding, windows, pipeline, sinks, storage, CLI."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
