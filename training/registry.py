"""A directory registry of model versions with atomically replaced aliases.

Layout (one folder per model)::

    <root>/<model>/
      aliases.json            {"champion": "v0003", "previous": "v0002", "stack": ["v0001"]}
      events.jsonl            one line per registration, promotion, rejection, rollback
      versions/v0003/
        weights.pt | model.pt the weights (state dict, or TorchScript)
        run.json              model spec, data selection, hyperparameters, seeds, library
                              versions, parent, request id, created time
        metrics.json          status, gate verdict and counts, training summary

A version is written in a hidden temporary folder and renamed into place, so a job killed
mid-write leaves no half version; ``aliases.json`` is replaced with ``os.replace``, so a
reader sees the old aliases or the new ones, never a mix. A challenger that fails the gate
is kept with status ``rejected`` and is never aliased.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torch import nn

from training.errors import RegistryError
from training.modelio import ModelSpec, load_weights, save_weights

__all__ = ["BACKENDS", "STATUSES", "Aliases", "Registry", "VersionInfo", "atomic_write_json"]

STATUSES = ("baseline", "candidate", "promoted", "rejected")
_VERSION = re.compile(r"^v(\d{4,})$")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


def atomic_write_json(path: Path, value: Any) -> None:
    """Write JSON to a temporary file beside ``path``, fsync it, ``os.replace`` it in."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(value, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: unreadable: {exc}") from None


@dataclass(frozen=True)
class Aliases:
    """Which version serves (``champion``), the one before it, and older champions."""

    champion: str | None = None
    previous: str | None = None
    stack: tuple[str, ...] = ()


@dataclass(frozen=True)
class VersionInfo:
    """What an SQL table of versions needs: id, parent, status, created time, metrics."""

    model: str
    version: str
    parent: str | None
    status: str
    created: str
    path: Path
    spec: ModelSpec
    metrics: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def weights(self) -> Path:
        return self.path / self.spec.filename


BACKENDS = ("directory", "mlflow")
_BACKEND_FILE = "registry.json"


class Registry:
    """Model versions under ``root``, one folder per model name.

    ``backend="mlflow"`` mirrors every version and the ``champion`` / ``previous`` aliases
    into an MLflow model registry at ``tracking_uri`` (:mod:`training.mlflow_registry`);
    the choice is stored in ``<root>/registry.json``, so every later ``Registry(root)`` (the
    job, ``promote``, ``rollback``, the daemon) mirrors alike. ``backend="directory"``
    stops mirroring; None (the default) keeps what the folder says.
    """

    def __init__(self, root: str | os.PathLike[str], *, backend: str | None = None,
                 tracking_uri: str | None = None) -> None:
        self.root = Path(root)
        self._mirror: Any = None
        stored = self.root / _BACKEND_FILE
        if backend is None:
            config = _read_json(stored) if stored.is_file() else {}
            backend, tracking_uri = config.get("backend", "directory"), config.get(
                "tracking_uri")
        elif backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        elif backend == "mlflow" or stored.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(stored, {"backend": backend, "tracking_uri": tracking_uri})
        if backend not in BACKENDS:
            raise RegistryError(f"{stored}: unknown backend {backend!r} (one of {BACKENDS})")
        self.backend = backend
        self.tracking_uri = tracking_uri

    def mirror(self) -> Any:
        """The :class:`~training.mlflow_registry.MlflowMirror` (mlflow backend) or None;
        built on first use, so readers such as the daemon never import mlflow."""
        if self.backend == "mlflow" and self._mirror is None:
            from training.mlflow_registry import MlflowMirror

            self._mirror = MlflowMirror(self.tracking_uri)
        return self._mirror

    def sync(self, model: str) -> dict[str, str]:
        """Mirror ``model``'s versions and aliases into MLflow now (the mlflow backend;
        idempotent); returns driftline version -> MLflow version, {} without a mirror."""
        if self.mirror() is None:
            return {}
        return self._mirror.sync(model, self.versions(model),  # type: ignore[no-any-return]
                                 self.aliases(model))

    # --- reading ---------------------------------------------------------------------

    def _model_dir(self, model: str) -> Path:
        if not isinstance(model, str) or not _NAME.match(model):
            raise ValueError(f"model must match {_NAME.pattern}, got {model!r}")
        return self.root / model

    def aliases(self, model: str) -> Aliases:
        """The model's aliases (all None before the first registration)."""
        path = self._model_dir(model) / "aliases.json"
        if not path.exists():
            return Aliases()
        data = _read_json(path)
        return Aliases(data.get("champion"), data.get("previous"), tuple(data.get("stack", ())))

    def versions(self, model: str) -> list[VersionInfo]:
        """Every complete version, oldest first (temporary folders are ignored)."""
        folder = self._model_dir(model) / "versions"
        if not folder.is_dir():
            return []
        names = sorted((p.name for p in folder.iterdir() if _VERSION.match(p.name)),
                       key=lambda n: int(n[1:]))
        return [self.version(model, n) for n in names]

    def version(self, model: str, version: str) -> VersionInfo:
        """One version's record; :class:`RegistryError` if it does not exist."""
        if not isinstance(version, str) or not _VERSION.match(version):
            raise RegistryError(f"{version!r} is not a version id (v0001, v0002, ...)")
        path = self._model_dir(model) / "versions" / version
        if not path.is_dir():
            raise RegistryError(f"model {model!r} has no version {version!r} in {self.root}")
        run = _read_json(path / "run.json")
        metrics = _read_json(path / "metrics.json")
        return VersionInfo(model=model, version=version, parent=run.get("parent"),
                           status=str(metrics.get("status", "candidate")),
                           created=str(run.get("created", "")), path=path,
                           spec=ModelSpec(**run["model"]), metrics=metrics, run=run)

    def load(self, model: str, version: str | None = None) -> tuple[VersionInfo, nn.Module]:
        """A version's module (the champion by default); bad weights raise ModelLoadError."""
        version = version or self.aliases(model).champion
        if version is None:
            raise RegistryError(f"model {model!r} has no champion in {self.root}")
        info = self.version(model, version)
        return info, load_weights(info.spec, info.weights)

    # --- writing ---------------------------------------------------------------------

    def register(self, model: str, module: nn.Module, spec: ModelSpec, *,
                 parent: str | None, run: dict[str, Any], metrics: dict[str, Any],
                 status: str = "candidate") -> VersionInfo:
        """Store a new version (never aliased here); returns its record."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        folder = self._model_dir(model) / "versions"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
        try:
            created = datetime.now(UTC).isoformat(timespec="milliseconds")
            save_weights(module, spec, tmp)
            atomic_write_json(tmp / "run.json", {**run, "model": spec.as_dict(),
                                                 "parent": parent, "created": created})
            atomic_write_json(tmp / "metrics.json", {**metrics, "status": status})
            for _attempt in range(100):
                existing = [int(p.name[1:]) for p in folder.iterdir() if _VERSION.match(p.name)]
                version = f"v{max(existing, default=0) + 1:04d}"
                try:
                    # rename onto an existing (non-empty) folder fails: two jobs racing for
                    # the same number cannot overwrite each other
                    os.rename(tmp, folder / version)
                    break
                except OSError:
                    time.sleep(0.01)
            else:
                raise RegistryError(f"could not allocate a version id in {folder}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._event(model, {"event": "register", "version": version, "status": status,
                            "parent": parent})
        self.sync(model)
        return self.version(model, version)

    def set_status(self, model: str, version: str, status: str) -> None:
        """Rewrite a version's status (atomically) and log it."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        info = self.version(model, version)
        atomic_write_json(info.path / "metrics.json", {**info.metrics, "status": status})
        self._event(model, {"event": status, "version": version})
        self.sync(model)

    def promote(self, model: str, version: str, *, force: bool = False) -> Aliases:
        """Make ``version`` the champion; the old champion becomes ``previous``.

        A rejected version is refused unless ``force`` (a person overriding the gate).
        """
        info = self.version(model, version)
        if info.status == "rejected" and not force:
            raise RegistryError(f"{model} {version} failed the gate (rejected); "
                                "promote it with force=True to override")
        current = self.aliases(model)
        if current.champion == version:
            return current
        stack = (*current.stack, current.previous) if current.previous else current.stack
        new = Aliases(version, current.champion, stack)
        self._write_aliases(model, new)
        if info.status in ("candidate", "rejected"):
            self.set_status(model, version, "promoted")
        self._event(model, {"event": "promote", "version": version,
                            "previous": current.champion})
        return new

    def rollback(self, model: str) -> Aliases:
        """Make ``previous`` the champion again; the one before it becomes ``previous``."""
        current = self.aliases(model)
        if current.previous is None:
            raise RegistryError(f"model {model!r} has no previous version to roll back to")
        new = Aliases(current.previous, current.stack[-1] if current.stack else None,
                      current.stack[:-1])
        self._write_aliases(model, new)
        self._event(model, {"event": "rollback", "version": new.champion,
                            "from": current.champion})
        return new

    def _write_aliases(self, model: str, aliases: Aliases) -> None:
        atomic_write_json(self._model_dir(model) / "aliases.json",
                          {"champion": aliases.champion, "previous": aliases.previous,
                           "stack": list(aliases.stack)})
        self.sync(model)

    def events(self, model: str) -> list[dict[str, Any]]:
        """The model's event log (what a promotions table or annotation needs)."""
        path = self._model_dir(model) / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _event(self, model: str, event: dict[str, Any]) -> None:
        line = json.dumps({"time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                           **event}, default=str)
        with open(self._model_dir(model) / "events.jsonl", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
