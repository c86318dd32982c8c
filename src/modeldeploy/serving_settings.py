"""The ModelDeployment's spec -> the serving container's settings: the one mapping, used by the operator's inference
Deployment and by `modeldeploy run` (docs/contracts/serving.md lists the settings; modeldeploy_serving reads them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from modeldeploy.spec import Serving

ENV_PREFIX: Final = "MODELDEPLOY_"
"""The serving program's prefix: its setting `x` is the variable `MODELDEPLOY_X`."""


def env_name(setting: str) -> str:
    """The variable of a serving setting, e.g. `MODELDEPLOY_HTTP_PORT` for `http_port`."""
    return f"{ENV_PREFIX}{setting.upper()}"


def from_spec(serving: Serving) -> dict[str, int | bool]:
    """The settings that `spec.serving` decides, by the serving settings' field names, in the order the Deployment
    lists them (a new order would roll every serving pod on an operator upgrade)."""
    return {
        "http_port": serving.port,
        "grpc_port": serving.grpc_port,
        "intra_op_threads": serving.threads,
        "batching": serving.batching.enabled,
        "max_batch_size": serving.batching.max_batch_size,
        "max_queue_delay_us": serving.batching.max_queue_delay_microseconds,
    }


def environment(settings: Mapping[str, object]) -> dict[str, str]:
    """Serving settings as a container's environment: `MODELDEPLOY_<SETTING>`, booleans as `true`/`false`."""
    return {env_name(name): _text(value) for name, value in settings.items()}


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
