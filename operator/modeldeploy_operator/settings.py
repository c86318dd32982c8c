"""The operator's configuration, read from the environment once at startup (nothing is read at import)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from modeldeploy.envsettings import EnvSettings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "check_lease_timing", "settings_from_env"]

ENV_PREFIX = "MODELDEPLOY_OPERATOR_"


class Settings(EnvSettings):
    """Every field is read from `MODELDEPLOY_OPERATOR_<FIELD NAME IN UPPER CASE>` (modeldeploy.envsettings's rules).

    Built directly (`Settings()`, as the unit tests do), it reads the environment too; `settings_from_env` also
    derives the lease timing and checks it.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)

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

    workers: Annotated[int, Field(ge=1)] = 8
    """Threads that talk to the API server; reconciles of different ModelDeployments run on them in parallel."""

    api_connections: Annotated[
        int, Field(ge=1, validation_alias=AliasChoices(f"{ENV_PREFIX}API_CONNECTIONS", f"{ENV_PREFIX}API_QPS_BURST"))
    ] = 16
    """Connections kept open to the API server (urllib3's pool size; at least `workers` + 2 are kept). Also read
    from `MODELDEPLOY_OPERATOR_API_QPS_BURST`, its name before it said what it is."""

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
    """Namespace of the Lease when `--lease-namespace` and POD_NAMESPACE are empty; empty means the first watched
    namespace, or `default` when cluster-wide."""

    lease_duration_seconds: Annotated[int, Field(ge=3)] = 15
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


def settings_from_env() -> Settings:
    """Settings with every `MODELDEPLOY_OPERATOR_*` variable of the environment applied over the defaults, the
    lease timing derived from the lease duration where it is 0, and checked."""
    settings = _derive_lease_timing(load_settings(Settings))
    check_lease_timing(settings)
    return settings


def _derive_lease_timing(settings: Settings) -> Settings:
    duration = float(settings.lease_duration_seconds)
    deadline = settings.renew_deadline_seconds or duration * 2 / 3
    return settings.model_copy(
        update={
            "renew_deadline_seconds": deadline,
            "retry_period_seconds": settings.retry_period_seconds or duration * 2 / 15,
            "api_timeout_seconds": settings.api_timeout_seconds or min(5.0, duration - deadline),
        }
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
