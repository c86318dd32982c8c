"""The spec -> serving settings mapping (modeldeploy.serving_settings) names only real settings of the server, and
what the operator's Deployment passes reads back, in the server, as the spec said."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from md_factories import make_md, model
from modeldeploy_operator import builders
from modeldeploy_operator.settings import Settings
from modeldeploy_serving.settings import Settings as ServingSettings

from modeldeploy import serving_settings
from modeldeploy.spec import parse_spec

SERVING = {
    "port": 9000,
    "grpcPort": 9001,
    "threads": 3,
    "batching": {"enabled": False, "maxBatchSize": 8, "maxQueueDelayMicroseconds": 500},
    "auth": {"secretName": "tokens"},
    "tls": {"secretName": "cert"},
}


def test_every_setting_the_spec_decides_is_a_field_of_the_servers_settings() -> None:
    given, default = (parse_spec({"spec": {"serving": serving}}).serving for serving in (SERVING, {}))
    names = set(serving_settings.from_spec(given)) | set(serving_settings.from_spec(default))
    assert names <= set(ServingSettings.model_fields)
    assert {serving_settings.env_name(name) for name in names} == {ServingSettings.env_name(name) for name in names}


def test_the_deployments_environment_is_the_servers_settings_as_the_spec_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    md = make_md({**make_md()["spec"], "serving": SERVING})
    deployment = builders.build_deployment(model(md), {"version": "vabc", "path": "digits/vabc"}, Settings())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    fields = {ServingSettings.env_name(name) for name in ServingSettings.model_fields}
    assert set(env) <= fields, set(env) - fields
    for name in [name for name in os.environ if name.upper().startswith("MODELDEPLOY_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if not name.endswith("_FILE"):  # the Secrets' files exist only in the pod
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("MODELDEPLOY_MODEL_DIR", str(tmp_path))  # the volume's path exists only in the pod
    read = ServingSettings.load()
    assert (read.http_port, read.grpc_port, read.intra_op_threads) == (9000, 9001, 3)
    assert (read.batching, read.max_batch_size, read.max_queue_delay_us) == (False, 8, 500)
    assert (read.model_name, read.model_version, read.shutdown_grace_seconds) == ("digits", "vabc", 20)
    assert read.auth_open_paths == "/v2/health/live,/v2/health/ready,/metrics"
