"""`modeldeploy run FILE` with spec.storage.uri: the local try-out commits to the bucket and serves what it fetched
back from there, verified, as a serving pod would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modeldeploy import objectstore
from modeldeploy.cluster.local import free_ports

pytestmark = [pytest.mark.training, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_run_commits_to_the_uri_and_serves_the_verified_copy(tmp_path: Path, s3_env: dict[str, str]) -> None:
    manifest = yaml.safe_load((REPO / "samples" / "digits-cnn.yaml").read_text())
    manifest["metadata"]["name"] = "digits-run"
    manifest["spec"]["storage"] = {"uri": "s3://models/run", "size": "64Mi"}
    spec_file = tmp_path / "digits-run.yaml"
    spec_file.write_text(yaml.safe_dump(manifest))
    command = [sys.executable, "-m", "modeldeploy.cli", "run", str(spec_file), "--epochs", "1", "--exit-after-predict",
               "--port", str(free_ports(1)[0]), "--output", str(tmp_path / "out")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=s3_env, timeout=400, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every file checked against its card" in result.stdout
    assert f"serving {tmp_path / 'out' / '.fetched' / 'digits-run'}" in result.stdout
    assert "prediction for sample" in result.stdout
    version = next(p.name for p in (tmp_path / "out" / "digits-run").iterdir() if not p.name.startswith("."))
    card = objectstore.is_committed(objectstore.parse_uri("s3://models/run"), "digits-run", version)
    assert card is not None and card["name"] == "digits-run"
