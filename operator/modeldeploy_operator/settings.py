"""The operator's configuration, read from the environment once at startup (nothing is read at import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace


class SettingsError(ValueError):
    """An environment variable holds a value the operator cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    """Every field is read from `MODELDEPLOY_OPERATOR_<FIELD NAME IN UPPER CASE>` when that variable is set."""

    training_image: str = "modeldeploy/training:0.1.0"
    """Image of the training Job's `train` container (runs `modeldeploy train --output /models`)."""

    serving_image: str = "modeldeploy/serving:0.1.0"
    """Image of the inference Deployment when the ModelDeployment's spec.serving.image is empty."""

    cleanup_image: str = ""
    """Image of the small Job that removes the artifacts of versions beyond spec.retainVersions from the volume
    (it runs `rm -rf`); empty means the training image, which the nodes have already."""

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

    retry_seconds: float = 1.0
    """First delay before retrying a ModelDeployment whose reconcile failed or is blocked; doubled per failure of
    that object (with jitter: a random point in the upper half), up to `retry_max_seconds`."""

    retry_max_seconds: float = 300.0
    """The longest delay between retries of one ModelDeployment (a Retry-After of the API server may be longer)."""

    lease_name: str = "modeldeploy-operator"
    """Name of the coordination.k8s.io Lease that elects the one active operator process."""

    lease_namespace: str = ""
    """Namespace of the Lease; empty means the first watched namespace, or `default` when cluster-wide."""

    lease_duration_seconds: int = 15
    """A Lease whose record has not changed for this long (on the standby's own clock) may be taken over."""

    renew_deadline_seconds: float = 0.0
    """The leader stops writing (and exits) when it has not renewed the Lease for this long; less than the lease
    duration by at least `api_timeout_seconds`, so its last write lands before a standby can take over.
    0 means 2/3 of the lease duration (client-go's 10 s of 15)."""

    retry_period_seconds: float = 0.0
    """How often the leader renews the Lease and a standby tries to take it. 0 means 2/15 of the lease duration
    (client-go's 2 s of 15)."""

    api_timeout_seconds: float = 0.0
    """Timeout of every API request of the operator (its writes, the Lease): at most the lease duration minus the
    renew deadline. 0 means exactly that margin, at most 5 s."""

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
    settings = _derive_lease_timing(settings)
    check_lease_timing(settings)
    return settings


def _derive_lease_timing(settings: Settings) -> Settings:
    duration = float(settings.lease_duration_seconds)
    deadline = settings.renew_deadline_seconds or duration * 2 / 3
    return replace(
        settings,
        renew_deadline_seconds=deadline,
        retry_period_seconds=settings.retry_period_seconds or duration * 2 / 15,
        api_timeout_seconds=settings.api_timeout_seconds or min(5.0, duration - deadline),
    )


def check_lease_timing(settings: Settings) -> None:
    """client-go's rules: retry period < renew deadline < lease duration, and requests end before the lease does."""
    retry, deadline = settings.retry_period_seconds, settings.renew_deadline_seconds
    duration, timeout = settings.lease_duration_seconds, settings.api_timeout_seconds
    if not 0 < retry < deadline < duration:
        raise SettingsError(
            f"need RETRY_PERIOD_SECONDS ({retry:g}) < RENEW_DEADLINE_SECONDS ({deadline:g}) < "
            f"LEASE_DURATION_SECONDS ({duration}) (MODELDEPLOY_OPERATOR_ prefix); adjust them"
        )
    if not 0 < timeout <= duration - deadline:
        raise SettingsError(
            f"MODELDEPLOY_OPERATOR_API_TIMEOUT_SECONDS ({timeout:g}) must be positive and at most the lease duration "
            f"minus the renew deadline ({duration - deadline:g}): a write must land before another leader can start"
        )
