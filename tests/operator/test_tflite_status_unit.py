"""The TFLite artifact in the status (spec.compression.formats with tflite): copied from the training report."""

from __future__ import annotations

from typing import Any

from md_factories import DIGITS_SPEC, job, make_md, report, training_pod
from modeldeploy_operator import decide
from modeldeploy_operator.observed import Observed
from modeldeploy_operator.settings import Settings

SPEC: dict[str, Any] = {**DIGITS_SPEC, "compression": {"formats": ["onnx", "tflite"]}}
NOW = "2025-01-01T00:00:00Z"


def status_after(extra: dict[str, Any]) -> dict[str, Any]:
    md = make_md(SPEC)
    observed = Observed(jobs=(job(md, "Succeeded"),), pods=(training_pod(md, "Succeeded", report(md, **extra)),))
    return decide.decide(md, observed, Settings(), NOW).status


def test_a_tflite_artifact_is_in_the_compression_status_and_the_version() -> None:
    tflite = {"quantization": "dynamic-int8", "accuracy": 0.94, "sizeBytes": 15968, "sha256": "ab" * 32}
    status = status_after({"tflite": tflite})
    assert status["compression"]["tflite"] == tflite
    assert status["versions"][0]["tflite"] == tflite
    assert status["compression"]["quantization"] == "dynamic-uint8"  # the served ONNX model, as before


def test_a_tflite_failure_is_reported_while_the_onnx_model_deploys() -> None:
    failure = {"failureReason": "InvalidModel", "message": "no model.tflite (model.onnx is made as usual): …"}
    status = status_after({"tflite": failure})
    assert status["compression"]["tflite"] == failure
    assert status["phase"] == "Deploying"
    compressed = {c["type"]: c for c in status["conditions"]}["Compressed"]
    assert compressed["status"] == "True"


def test_junk_in_the_report_s_tflite_is_not_copied() -> None:
    status = status_after({"tflite": {"sizeBytes": "big", "accuracy": "high", "sha256": 7, "extra": {"x": 1}}})
    assert "tflite" not in status["compression"]
    assert "tflite" not in status_after({"tflite": ["not", "an", "object"]})["versions"][0]
    assert "tflite" not in status_after({})["compression"]
