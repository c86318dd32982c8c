"""The training image run as its Job's pod runs it (non-root, read-only root filesystem, no network): it trains the
digits sample into the mounted artifact volume, and on bad data it fails with the contract's termination message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modeldeploy import contracts

from .conftest import Containers, TrainedArtifact, run_training, termination_log, world_writable_dir

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(2400)]


def test_trains_the_digits_sample_into_the_mounted_volume(trained_digits: TrainedArtifact) -> None:
    assert trained_digits.exit_code == 0, (
        f"training container exited {trained_digits.exit_code}:\n{trained_digits.output[-3000:]}"
    )
    report = trained_digits.report
    assert report["ok"] is True
    assert report["path"] == f"digits/{report['version']}"
    assert report["accuracy"] >= 0.8
    version_dir = trained_digits.version_dir
    assert (version_dir / "model.onnx").stat().st_size == report["sizeBytes"]
    card = contracts.read_model_card(version_dir)
    assert card is not None
    assert card["name"] == "digits" and card["version"] == report["version"]
    assert card["compression"]["requested"] == "dynamic"
    # The report is also the last line the container printed (what `kubectl logs` shows).
    assert json.loads(trained_digits.stdout.strip().splitlines()[-1]) == report


def test_bad_data_exits_non_zero_with_a_clear_termination_message(
    training_image: str, containers: Containers, tmp_path: Path
) -> None:
    data = world_writable_dir(tmp_path / "data")
    (data / "train.csv").write_text("a,b,c\n1,2,3\n4,5,6\n")
    models = world_writable_dir(tmp_path / "models")
    log = termination_log(tmp_path / "termination-log")
    spec = {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "tabular"},
        "spec": {"training": {"recipe": "mlp", "dataset": {"claimName": "data", "path": "train.csv"}, "epochs": 1}},
    }
    result, report = run_training(containers, training_image, models, log, json.dumps(spec), data=data)
    assert result.returncode == 1, f"expected exit 1, got {result.returncode}:\n{result.stderr[-3000:]}"
    assert report["ok"] is False
    assert report["reason"] == "InvalidData"
    assert "column 'label' not found (columns: a, b, c)" in report["message"]
    assert len(log.read_bytes()) <= contracts.TERMINATION_MESSAGE_LIMIT
    # No version is left complete: readers see nothing under the model's directory but hidden leftovers.
    model_dir = models / "tabular"
    assert not model_dir.exists() or all(p.name.startswith(".") for p in model_dir.iterdir())
