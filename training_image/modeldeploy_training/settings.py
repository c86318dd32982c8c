"""The trainer's settings: what the operator's Job gives it through the environment (docs/contracts/training-job.md),
read by the rules every program shares (modeldeploy.envsettings); command-line options win."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from modeldeploy.envsettings import EnvSettings, load_settings

ENV_PREFIX = "MODELDEPLOY_"


class Settings(EnvSettings):
    """Field `x` is read from `MODELDEPLOY_X` (upper case)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)

    spec: str | None = None
    """The JSON of the whole ModelDeployment (`MODELDEPLOY_SPEC`), as the API server stored it; `--spec FILE` wins."""

    termination_log: str | None = None
    """Where the JSON report goes (`MODELDEPLOY_TERMINATION_LOG`); unset: `/dev/termination-log` when it is
    writable, else only the printed last line; `--termination-log` wins."""


def settings_from_env() -> Settings:
    """The trainer's settings from the environment; a bad value is a SettingsError naming its variable."""
    return load_settings(Settings)
