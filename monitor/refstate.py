"""Saves each model's prepared reference state, so a restart does not rebuild it from raw data.

The state is the model's evaluator: its detectors with their precomputed reference
(sorted columns, category counts, bin edges, kernel sums). It is keyed by a fingerprint of
the reference file's bytes, the model's settings, the driftline version and the source of
the code that defines the state: change any of them and the state is rebuilt. Files are
pickles written atomically with mode 0600 into a directory only this user can write
(mode 0700), and only files whose embedded fingerprint
matches are loaded. Pickle runs code on load, so the directory must not be writable by
anyone else; driftline refuses one that is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from monitor import __version__
from monitor.settings import ModelSettings

log = logging.getLogger("driftline.refstate")
T = TypeVar("T")


def _code_hash() -> str:
    """Hash of the code whose objects the state holds: any change there invalidates it."""
    import detectors
    import monitor.components
    import monitor.evaluate

    h = hashlib.sha256()
    for path in sorted(Path(detectors.__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    for module in (monitor.evaluate, monitor.components):
        h.update(Path(module.__file__ or "").read_bytes())
    return h.hexdigest()


_CODE_HASH: str | None = None


def fingerprint(model: ModelSettings) -> str:
    global _CODE_HASH
    if _CODE_HASH is None:
        _CODE_HASH = _code_hash()
    h = hashlib.sha256()
    h.update(__version__.encode())
    h.update(_CODE_HASH.encode())
    h.update(model.model_dump_json(exclude={"labels"}).encode())
    files = [model.reference.path]
    if model.labels and model.prediction_drift and model.prediction_drift.label_shift:
        files.append(model.labels.reference.path)  # BBSE's confusion matrix comes from it
        h.update(model.labels.reference.model_dump_json().encode())
    for path in files:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _private_dir(path: Path) -> bool:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def load_or_build(model: ModelSettings, build: Callable[[], T], cache_dir: Path | None) -> T:
    """The cached state for ``model`` if its fingerprint matches, else ``build()`` (saved)."""
    if cache_dir is None or not model.reference.path.is_file():
        return build()  # a missing reference: let build() report it
    try:
        if not _private_dir(cache_dir):
            log.warning("reference cache %s is writable by others: not used", cache_dir)
            return build()
        fp = fingerprint(model)
    except OSError as exc:
        log.warning("reference cache %s not usable (%s): building in memory", cache_dir, exc)
        return build()
    path = cache_dir / f"{model.name}-{fp[:24]}.pickle"
    if path.is_file():
        try:
            with path.open("rb") as fh:
                stored_fp, state = pickle.load(fh)  # noqa: S301 - private dir, see docstring
            if stored_fp == fp:
                log.info("model %s: reference state loaded from %s", model.name, path)
                return state  # type: ignore[no-any-return]
        except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError,
                ImportError) as exc:
            log.warning("ignoring unreadable reference cache %s: %s", path, exc)
    state = build()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump((fp, state), fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)  # atomic: a crash never leaves half a file under the name
    except (OSError, TypeError, AttributeError, pickle.PicklingError) as exc:
        # Saving is an optimisation: a state that cannot be written is used all the same.
        log.warning("could not save reference state to %s: %s", cache_dir, exc)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return state
