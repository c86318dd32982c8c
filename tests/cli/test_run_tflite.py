"""`modeldeploy run` of the TFLite sample lists the TFLite variants beside the ONNX candidates, and `modeldeploy pull`
then copies its model.tflite out (real training, real serving on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from modeldeploy import contracts

from .conftest import REPO, free_port, modeldeploy

pytestmark = [pytest.mark.training, pytest.mark.slow]

SAMPLE = REPO / "samples" / "digits-tflite.yaml"


def test_run_shows_tflite_candidates_and_pull_copies_the_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    args = ["run", str(SAMPLE), "--port", str(free_port()), "--epochs", "2", "--output", str(models)]
    result = modeldeploy(*args, "--exit-after-predict", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {tuple(m.groups()) for m in re.finditer(r"^\s+\*?\s*(onnx|tflite)\s+(\S+)\s+\d+", result.stdout, re.M)}
    assert {("tflite", name) for name in contracts.TFLITE_CANDIDATE_NAMES} <= rows
    assert ("onnx", "fp32") in rows
    assert "compression auto within 0.01 accuracy; also tflite)" in result.stdout
    assert re.search(r"\] tflite: \S+ is the smallest TFLite variant within maxAccuracyDrop 0.01", result.stdout)
    assert "prediction for sample" in result.stdout  # the ONNX model is served as before

    out = tmp_path / "edge.tflite"
    pulled = modeldeploy("pull", "digits-edge", "--from", str(models), "-o", str(out))
    assert pulled.returncode == 0, pulled.stderr
    (version,) = [p for p in (models / "digits-edge").iterdir() if contracts.is_complete_version(p)]
    card = json.loads((version / contracts.MODEL_CARD_FILE).read_text())
    assert hashlib.sha256(out.read_bytes()).hexdigest() == card["tflite"]["sha256"]
    assert f"sha256 {card['tflite']['sha256']}" in pulled.stdout
