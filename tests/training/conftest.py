"""Fixtures for the training program's tests: run `modeldeploy train` in-process (TensorFlow is imported once per
session) and read what it reported and wrote."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy import contracts
from modeldeploy.cli import main


@dataclass
class Run:
    code: int
    report: dict[str, Any]
    output: Path

    @property
    def version_dir(self) -> Path:
        return self.output / self.report["path"]

    def card(self) -> dict[str, Any]:
        card = contracts.read_model_card(self.version_dir)
        assert card is not None
        return card


Trainer = Callable[..., Run]


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def run_train(
    workdir: Path,
    spec: dict[str, Any],
    *,
    name: str = "digits",
    output: Path | None = None,
    data_root: Path | None = None,
    user_output: Path | None = None,
) -> Run:
    workdir.mkdir(parents=True, exist_ok=True)
    spec_file = workdir / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(manifest(name, spec)))
    output = output or workdir / "models"
    log = workdir / "termination-log"
    argv = ["train", "--spec", str(spec_file), "--output", str(output), "--termination-log", str(log)]
    if data_root is not None:
        argv += ["--data-root", str(data_root)]
    if user_output is not None:
        argv += ["--user-output", str(user_output)]
    code = main(argv)
    text = log.read_text()
    assert len(text.encode()) <= contracts.TERMINATION_MESSAGE_LIMIT
    return Run(code, json.loads(text), output)


def digits_spec(**training: Any) -> dict[str, Any]:
    compression = training.pop("compression", {})
    return {
        "training": {"recipe": "cnn", "dataset": {"builtin": "digits"}, "epochs": 3, **training},
        "compression": compression,
    }


@pytest.fixture(scope="session")
def digits_auto(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The digits CNN, auto compression: one real training shared by the tests that only read its artifact."""
    return run_train(tmp_path_factory.mktemp("digits-auto"), digits_spec())


def complete_versions(model_dir: Path) -> list[Path]:
    if not model_dir.exists():
        return []
    return [p for p in model_dir.iterdir() if contracts.is_complete_version(p)]


def assert_failed(run: Run, reason: str, *fragments: str) -> None:
    """A failure as the contract wants it: exit 1, the reason, one line naming the problem, nothing complete."""
    assert run.code == 1, run.report
    assert run.report["ok"] is False
    assert run.report["reason"] == reason, run.report
    assert "\n" not in run.report["message"]
    for fragment in fragments:
        assert fragment in run.report["message"], run.report["message"]
    for model_dir in run.output.glob("*"):
        assert complete_versions(model_dir) == []
        assert [p.name for p in model_dir.iterdir() if p.name.startswith(contracts.TMP_PREFIX)] == []
