"""The three programs read their environment by one set of rules (modeldeploy.envsettings): the same booleans, an
empty value is unset, a bad value is an error that names its variable, a docstring on every field, and the
serving container's settings exactly as docs/contracts/serving.md lists them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from modeldeploy_operator.settings import Settings as OperatorSettings
from modeldeploy_operator.settings import settings_from_env as operator_settings
from modeldeploy_serving.settings import Settings as ServingSettings
from modeldeploy_training.settings import Settings as TrainingSettings
from modeldeploy_training.settings import settings_from_env as training_settings

from modeldeploy import contracts
from modeldeploy.envsettings import EnvSettings, SettingsError

REPO = Path(__file__).resolve().parents[2]
PROGRAMS: list[type[EnvSettings]] = [OperatorSettings, ServingSettings, TrainingSettings]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No MODELDEPLOY_* variable of the test's own environment; the server's model directory set."""
    for name in [name for name in os.environ if name.upper().startswith("MODELDEPLOY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MODELDEPLOY_MODEL_DIR", str(tmp_path))
    return monkeypatch


def serving() -> ServingSettings:
    return ServingSettings.load()


@pytest.mark.parametrize("settings", PROGRAMS, ids=lambda cls: cls.__module__.split(".")[0])
def test_every_field_has_a_docstring(settings: type[EnvSettings]) -> None:
    undocumented = [name for name, info in settings.model_fields.items() if not (info.description or "").strip()]
    assert not undocumented


@pytest.mark.parametrize("value", ["1", "true", "True", "YES", "on"])
def test_true_is_spelled_as_in_every_program(env: pytest.MonkeyPatch, value: str) -> None:
    env.setenv("MODELDEPLOY_ALLOW_NON_FINITE", value)
    assert serving().allow_non_finite is True


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "no", "off"])
def test_false_is_spelled_as_in_every_program(env: pytest.MonkeyPatch, value: str) -> None:
    env.setenv("MODELDEPLOY_BATCHING", value)
    assert serving().batching is False


def test_a_word_that_is_no_boolean_is_an_error_naming_the_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("MODELDEPLOY_BATCHING", "sometimes")
    with pytest.raises(SettingsError, match=r"MODELDEPLOY_BATCHING='sometimes' is not valid: .*boolean"):
        serving()


def test_an_empty_value_is_unset_in_every_program(env: pytest.MonkeyPatch) -> None:
    env.setenv("MODELDEPLOY_OPERATOR_WORKERS", "")
    env.setenv("MODELDEPLOY_OPERATOR_SERVING_IMAGE", "")
    env.setenv("MODELDEPLOY_HTTP_PORT", "")
    env.setenv("MODELDEPLOY_BATCHING", "")
    env.setenv("MODELDEPLOY_SPEC", "")
    operator = operator_settings()
    assert (operator.workers, operator.serving_image) == (8, "modeldeploy/serving:0.1.0")
    assert (serving().http_port, serving().batching) == (8080, True)
    assert training_settings().spec is None


@pytest.mark.parametrize(
    ("variable", "value", "what"),
    [
        ("MODELDEPLOY_OPERATOR_WORKERS", "many", "valid integer"),
        ("MODELDEPLOY_OPERATOR_WORKERS", "0", "greater than or equal to 1"),
        ("MODELDEPLOY_OPERATOR_RESYNC_SECONDS", "5m", "valid number"),
        ("MODELDEPLOY_HTTP_PORT", "http", "valid integer"),
        ("MODELDEPLOY_GRPC_PORT", "70000", "less than or equal to 65535"),
        ("MODELDEPLOY_MAX_BATCH_SIZE", "0", "greater than or equal to 1"),
        ("MODELDEPLOY_BODY_TIMEOUT_SECONDS", "0", "greater than 0"),
        ("MODELDEPLOY_SHUTDOWN_GRACE_SECONDS", "-1", "greater than or equal to 0"),
    ],
)
def test_a_bad_value_is_an_error_naming_the_variable_and_the_value(
    env: pytest.MonkeyPatch, variable: str, value: str, what: str
) -> None:
    env.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        operator_settings() if "OPERATOR" in variable else serving()
    assert f"{variable}={value!r} is not valid" in str(caught.value)
    assert what in str(caught.value)


def test_the_servers_combined_rules_name_both_variables(env: pytest.MonkeyPatch) -> None:
    env.setenv("MODELDEPLOY_MAX_DECODING_BYTES", "1000")
    with pytest.raises(SettingsError, match="MODELDEPLOY_MAX_DECODING_BYTES=1000 is below MODELDEPLOY_MAX_REQUEST"):
        serving()
    env.delenv("MODELDEPLOY_MODEL_DIR")
    with pytest.raises(SettingsError, match="no model directory: set MODELDEPLOY_MODEL_DIR or pass --model-dir"):
        serving()


def test_an_option_wins_over_the_environment(env: pytest.MonkeyPatch) -> None:
    env.setenv("MODELDEPLOY_HTTP_PORT", "9000")
    assert ServingSettings.load({"http_port": 9100, "grpc_port": None}).http_port == 9100
    assert ServingSettings.load({"grpc_port": None}).http_port == 9000


def test_the_operators_connection_pool_keeps_its_former_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("MODELDEPLOY_OPERATOR_API_QPS_BURST", "20")
    assert operator_settings().api_connections == 20
    env.setenv("MODELDEPLOY_OPERATOR_API_CONNECTIONS", "24")
    assert operator_settings().api_connections == 24
    env.delenv("MODELDEPLOY_OPERATOR_API_CONNECTIONS")
    env.setenv("MODELDEPLOY_OPERATOR_API_QPS_BURST", "x")
    with pytest.raises(SettingsError, match="MODELDEPLOY_OPERATOR_API_QPS_BURST='x'"):
        operator_settings()


def test_the_trainers_variables_are_the_training_jobs_contract(env: pytest.MonkeyPatch) -> None:
    assert TrainingSettings.env_name("spec") == contracts.SPEC_ENV
    assert TrainingSettings.env_name("termination_log") == contracts.TERMINATION_LOG_ENV
    env.setenv(contracts.SPEC_ENV, '{"kind": "ModelDeployment"}')
    env.setenv(contracts.TERMINATION_LOG_ENV, "/tmp/report")
    settings = training_settings()
    assert (settings.spec, settings.termination_log) == ('{"kind": "ModelDeployment"}', "/tmp/report")


def contract_rows() -> dict[str, str]:
    """variable -> default cell of the table in docs/contracts/serving.md (a row may name two variables)."""
    rows: dict[str, str] = {}
    for line in (REPO / "docs" / "contracts" / "serving.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`MODELDEPLOY_"):
            for variable in re.findall(r"`(MODELDEPLOY_\w+)`", cells[0]):
                rows[variable] = cells[1]
    return rows


def test_the_servers_settings_are_exactly_the_serving_contracts_table(env: pytest.MonkeyPatch) -> None:
    rows = contract_rows()
    assert sorted(rows) == sorted(ServingSettings.env_name(name) for name in ServingSettings.model_fields)
    for name, info in ServingSettings.model_fields.items():
        cell = rows[ServingSettings.env_name(name)]
        literal = re.fullmatch(r"`([^`]*)`", cell)
        if literal is None:  # "(required)", "(none: ...)", "the card's ...": no default value
            assert info.is_required() or info.default is None, name
        else:  # the documented default, read as the variable's value, is the field's default
            env.setenv(ServingSettings.env_name(name), literal[1])
            assert getattr(serving(), name) == info.default, name
            env.delenv(ServingSettings.env_name(name))


@pytest.mark.parametrize(
    ("command", "variable"),
    [(["operator", "--no-leader-election"], "MODELDEPLOY_OPERATOR_WORKERS"), (["serve"], "MODELDEPLOY_HTTP_PORT")],
)
def test_a_program_with_a_bad_value_stops_at_once_naming_it(
    env: pytest.MonkeyPatch, command: list[str], variable: str
) -> None:
    env.setenv(variable, "many")
    done = subprocess.run(
        [sys.executable, "-m", "modeldeploy.cli", *command], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert f"{variable}='many' is not valid" in done.stderr
    assert "Traceback" not in done.stderr
