"""The operator's configuration, read from the environment once at startup (nothing is read at import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields


class SettingsError(ValueError):
    """An environment variable holds a value the operator cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    """Every field is read from `MODELDEPLOY_OPERATOR_<FIELD NAME IN UPPER CASE>` when that variable is set."""

    training_image: str = "modeldeploy/training:0.1.0"
    """Image of the training Job's `train` container (runs `modeldeploy train --output /models`)."""

    serving_image: str = "modeldeploy/serving:0.1.0"
    """Image of the inference Deployment when the ModelDeployment's spec.serving.image is empty."""

    cleanup_image: str = "busybox:1.36"
    """Image of the small Job that removes the artifacts of versions beyond spec.retainVersions from the volume."""

    image_pull_policy: str = "IfNotPresent"
    """imagePullPolicy of every container the operator creates."""

    field_manager: str = "modeldeploy-operator"
    """Field manager of every write (server-side apply of children, status patches)."""

    workers: int = 8
    """Threads that talk to the API server; reconciles of different ModelDeployments run on them in parallel."""

    api_qps_burst: int = 16
    """Connections kept open to the API server (urllib3 pool size); at least `workers`."""

    min_reconcile_interval_seconds: float = 0.5
    """A ModelDeployment is reconciled at most this often; the watch events in between are taken in one go (a
    rollout's Deployment, ReplicaSet and pod events would otherwise each cost a status write). 0 turns it off."""

    resync_seconds: float = 300.0
    """A ModelDeployment is reconciled at least this often even when no watch event arrives (a safety net)."""

    retry_seconds: float = 5.0
    """Delay before retrying a reconcile that failed on a transient API error."""

    lease_name: str = "modeldeploy-operator"
    """Name of the coordination.k8s.io Lease that elects the one active operator process."""

    lease_namespace: str = ""
    """Namespace of the Lease; empty means the first watched namespace, or `default` when cluster-wide."""

    lease_duration_seconds: int = 15
    """A leader that has not renewed for this long is presumed dead; another process takes over."""

    run_as_user: int = 65532
    """UID the operator's pods run as (the images' non-root user)."""


def _convert(raw: str, kind: type, name: str) -> object:
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError as err:
        raise SettingsError(f"{name}={raw!r} is not a {kind.__name__}; set a number or unset it") from err
    return raw


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings with every `MODELDEPLOY_OPERATOR_*` variable of the environment applied over the defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    types = {"str": str, "int": int, "float": float}
    for field in fields(Settings):
        name = f"MODELDEPLOY_OPERATOR_{field.name.upper()}"
        if name in env:
            kind = types[field.type] if isinstance(field.type, str) else field.type
            values[field.name] = _convert(env[name], kind, name)
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.workers < 1:
        raise SettingsError("MODELDEPLOY_OPERATOR_WORKERS must be at least 1")
    if settings.lease_duration_seconds < 3:
        raise SettingsError("MODELDEPLOY_OPERATOR_LEASE_DURATION_SECONDS must be at least 3")
    return settings
