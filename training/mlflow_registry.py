"""Mirror of the directory registry in an MLflow model registry (``driftline[mlflow]``).

The directory stays the source of truth (the daemon stats its ``aliases.json``; a job killed
mid-write leaves it consistent). After every change the model is synchronised, idempotently:
each local version is an MLflow model version of the registered model of the same name
(source: the version's folder, tags ``driftline.version``, ``driftline.status``,
``driftline.parent`` and the gate's verdict), and the aliases ``champion`` / ``previous``
point at the versions the directory names (removed when it names none). A sync that failed
(the tracking server down) is completed by the next change or :meth:`MlflowMirror.sync`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.errors import RegistryError

__all__ = ["MlflowMirror"]

_ALIASES = ("champion", "previous")
_TAG = "driftline.version"


class MlflowMirror:
    """Registers driftline versions and moves aliases on an MLflow tracking store."""

    def __init__(self, tracking_uri: str | None = None,
                 registry_uri: str | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ImportError("the mlflow registry backend needs mlflow: pip install "
                              "'driftline[mlflow]'") from exc
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri,
                                   registry_uri=registry_uri or tracking_uri)

    def sync(self, model: str, versions: Sequence[Any], aliases: Any) -> dict[str, str]:
        """Make MLflow hold every version in ``versions`` (``VersionInfo``) and the aliases;
        returns driftline version -> MLflow version number."""
        try:
            return self._sync(model, versions, aliases)
        except RegistryError:
            raise
        except Exception as exc:  # MlflowException, connection errors: one clear error
            raise RegistryError(f"mlflow registry at {self.tracking_uri or '(default)'}: "
                                f"cannot mirror model {model!r}: {exc}") from exc

    def _sync(self, model: str, versions: Sequence[Any], aliases: Any) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            registered = self.client.get_registered_model(model).aliases or {}
        except MlflowException:
            self.client.create_registered_model(
                model, description="driftline retraining registry (mirrored from "
                "the directory registry)")
            registered = {}
        found = {mv.tags[_TAG]: mv for mv in self.client.search_model_versions(
            f"name='{model}'") if _TAG in (mv.tags or {})}
        known = {v: str(mv.version) for v, mv in found.items()}
        for info in versions:
            tags = _tags(info)
            number = known.get(info.version)
            if number is None:
                mv = self.client.create_model_version(
                    model, source=info.path.resolve().as_uri(), tags=tags,
                    description=f"driftline {info.version} ({info.spec.kind})")
                known[info.version] = number = str(mv.version)
            else:
                current = found[info.version].tags or {}
                for key, value in tags.items():
                    if current.get(key) != value:
                        self.client.set_model_version_tag(model, number, key, value)
        for alias in _ALIASES:
            target = getattr(aliases, alias)
            number = known.get(target) if target else None
            if target and number is None:
                raise RegistryError(f"alias {alias} names {target}, which is not a complete "
                                    "version of the directory registry")
            if number is None:
                if alias in registered:
                    self.client.delete_registered_model_alias(model, alias)
            elif str(registered.get(alias)) != number:
                self.client.set_registered_model_alias(model, alias, number)
        return known

    def numbers(self, model: str) -> dict[str, str]:
        """driftline version -> MLflow version number, from the ``driftline.version`` tag."""
        found = self.client.search_model_versions(f"name='{model}'")
        return {mv.tags[_TAG]: str(mv.version) for mv in found if _TAG in (mv.tags or {})}

    def alias(self, model: str, alias: str) -> str | None:
        """The driftline version an MLflow alias points at (None when unset)."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(model, alias)
        except MlflowException:
            return None
        return (mv.tags or {}).get(_TAG)


def _tags(info: Any) -> dict[str, str]:
    tags = {_TAG: info.version, "driftline.status": info.status,
            "driftline.parent": info.parent or "", "driftline.kind": info.spec.kind}
    gate = info.metrics.get("gate") if isinstance(info.metrics, dict) else None
    if isinstance(gate, dict):
        for key in ("promote", "p_value", "gain", "champion_metric", "challenger_metric",
                    "reference_drop"):
            if gate.get(key) is not None:
                tags[f"driftline.gate.{key}"] = str(gate[key])
    request = info.run.get("request_id") if isinstance(info.run, dict) else None
    if request:
        tags["driftline.request_id"] = str(request)
    return tags
