"""The TFLite artifact's report reaches the status on the real local control plane (kwok plays the training pod with
the report a training container with formats [onnx, tflite] writes): the API server keeps the fields, and a TFLite
failure still deploys the ONNX model."""

from __future__ import annotations

import json
from typing import Any

from conftest import Models, OperatorProcess

from modeldeploy.cluster.waiting import wait_until

TFLITE = {"quantization": "dynamic-int8", "accuracy": 0.947, "sizeBytes": 16048, "sha256": "c1" * 32}
REFUSED = {"failureReason": "InvalidModel", "message": "no model.tflite (model.onnx is made as usual): tf.Foo"}


def spec(version: str, tflite: dict[str, Any]) -> dict[str, Any]:
    report = {
        "ok": True,
        "version": version,
        "path": f"edge/{version}",
        "reused": False,
        "accuracy": 0.95,
        "sourceAccuracy": 0.95,
        "quantization": "dynamic-matmul",
        "sizeBytes": 17476,
        "fp32SizeBytes": 50067,
        "tflite": tflite,
    }
    return {
        "training": {
            "dataset": {"builtin": "digits"},
            "epochs": 2 if tflite is TFLITE else 3,
            "podAnnotations": {"modeldeploy.dev/fake-termination-message": json.dumps(report)},
        },
        "compression": {"formats": ["onnx", "tflite"]},
        "serving": {"replicas": 1},
    }


def test_the_tflite_artifact_and_a_tflite_failure_are_kept_in_the_status(
    operator: OperatorProcess, models: Models
) -> None:
    models.apply("edge", spec("v00000000ed9e", TFLITE))
    status = models.wait_phase("edge", "Ready")
    assert status["compression"]["tflite"] == TFLITE
    assert status["versions"][0]["tflite"] == TFLITE
    assert status["compression"]["quantization"] == "dynamic-matmul"

    # A new training whose TFLite conversion failed: the ONNX model rolls out all the same, the status says why.
    models.apply("edge", spec("v00000000bad1", REFUSED))
    status = wait_until(
        lambda: (s := models.status("edge")).get("modelVersion") == "v00000000bad1" and s.get("phase") == "Ready" and s,
        timeout=90,
        what="edge serving the version whose TFLite conversion failed",
        describe=lambda: models.status("edge"),
    )
    assert status["compression"]["tflite"] == REFUSED
    assert [v.get("tflite") for v in status["versions"][:2]] == [REFUSED, TFLITE]
