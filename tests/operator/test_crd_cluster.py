"""The API server itself rejects a bad ModelDeployment, with a message that names the field to fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "samples").glob("*.yaml"))
GOOD: dict[str, Any] = {"training": {"dataset": {"builtin": "digits"}}}


def _with(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = copy.deepcopy(base if base is not None else GOOD)
    node = spec
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return spec


IMPORT = {"importModel": {"claimName": "uploads", "path": "m.keras"}}

# (id, spec, text the API server's message must contain)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("neither-training-nor-import", {"serving": {"replicas": 1}}, "set exactly one of spec.training"),
    ("both-training-and-import", {**GOOD, **IMPORT}, "set exactly one of spec.training"),
    ("unknown-recipe", _with("training.recipe", "transformer"), "spec.training.recipe"),
    (
        "custom-without-image",
        {"training": {"recipe": "custom"}},
        "spec.training.recipe 'custom' needs spec.training.image",
    ),
    ("image-with-builtin-recipe", _with("training.image", "me/t:1"), "spec.training.image runs your own trainer"),
    ("no-dataset-for-builtin-recipe", {"training": {"recipe": "cnn"}}, "spec.training.dataset is required"),
    (
        "dataset-builtin-and-path",
        _with("training.dataset", {"builtin": "digits", "path": "x.csv", "claimName": "c"}),
        "set exactly one of builtin or path",
    ),
    ("dataset-path-without-claim", _with("training.dataset", {"path": "x.csv"}), "set spec.training.dataset.claimName"),
    (
        "dataset-absolute-path",
        _with("training.dataset", {"path": "/x.csv", "claimName": "c"}),
        "spec.training.dataset.path",
    ),
    ("zero-epochs", _with("training.epochs", 0), "spec.training.epochs"),
    ("zero-batch-size", _with("training.batchSize", 0), "spec.training.batchSize"),
    ("negative-seed", _with("training.seed", -1), "spec.training.seed"),
    ("backoff-limit-too-high", _with("training.backoffLimit", 50), "spec.training.backoffLimit"),
    ("short-deadline", _with("training.activeDeadlineSeconds", 5), "spec.training.activeDeadlineSeconds"),
    (
        "limit-below-request",
        _with("training.resources", {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}),
        "resources.limits value must be at least",
    ),
    (
        "toleration-exists-with-value",
        _with("training.tolerations", [{"key": "k", "operator": "Exists", "value": "v"}]),
        "operator Exists must not set value",
    ),
    ("import-without-path", {"importModel": {"claimName": "uploads"}}, "spec.importModel.path"),
    (
        "import-format-unknown",
        {"importModel": {**IMPORT["importModel"], "format": "pickle"}},
        "spec.importModel.format",
    ),
    (
        "static-import-without-eval-data",
        {**IMPORT, "compression": {"quantization": "static"}},
        "set spec.importModel.evalDataset",
    ),
    ("unknown-quantization", _with("compression.quantization", "int4"), "spec.compression.quantization"),
    ("accuracy-drop-above-one", _with("compression.maxAccuracyDrop", 2), "spec.compression.maxAccuracyDrop"),
    ("opset-too-new", _with("compression.opset", 21), "spec.compression.opset"),
    ("formats-without-onnx", _with("compression.formats", ["tflite"]), "spec.compression.formats must include onnx"),
    ("unknown-format", _with("compression.formats", ["onnx", "coreml"]), "spec.compression.formats"),
    ("duplicate-format", _with("compression.formats", ["onnx", "onnx"]), "spec.compression.formats"),
    ("old-format-field-tflite", _with("compression.format", "tflite"), "spec.compression.format"),
    ("negative-replicas", _with("serving.replicas", -1), "spec.serving.replicas"),
    ("privileged-port", _with("serving.port", 80), "spec.serving.port"),
    ("drain-above-five-minutes", _with("serving.drainSeconds", 301), "spec.serving.drainSeconds"),
    (
        "same-http-and-grpc-port",
        _with("serving", {"port": 9000, "grpcPort": 9000}),
        "spec.serving.grpcPort must differ",
    ),
    (
        "autoscaling-max-below-min",
        _with("serving.autoscaling", {"minReplicas": 5, "maxReplicas": 2}),
        "maxReplicas must be >= minReplicas",
    ),
    (
        "autoscaling-without-max",
        _with("serving.autoscaling", {"minReplicas": 2}),
        "spec.serving.autoscaling.maxReplicas",
    ),
    (
        "rollout-that-cannot-progress",
        _with("serving.strategy", {"maxSurge": 0, "maxUnavailable": 0}),
        "maxSurge and maxUnavailable cannot both be 0",
    ),
    ("batch-size-zero", _with("serving.batching", {"maxBatchSize": 0}), "spec.serving.batching.maxBatchSize"),
    (
        "storage-class-with-existing-claim",
        _with("storage", {"existingClaim": "c", "storageClassName": "fast"}),
        "spec.storage.storageClassName applies to a new claim only",
    ),
    ("storage-size-not-a-quantity", _with("storage.size", "lots"), "spec.storage.size"),
    ("retain-zero-versions", _with("retainVersions", 0), "spec.retainVersions"),
    ("unknown-field", _with("training.learning_rate", 0.1), "learning_rate"),
]


def _manifest(name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}
    )


@pytest.mark.parametrize(("spec", "expected"), [(s, e) for _, s, e in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_spec_is_rejected_naming_the_field(
    kubectl: Any, namespace: str, crd: None, spec: dict[str, Any], expected: str
) -> None:
    result = kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        "-",
        input=_manifest("bad", spec),
        check=False,
    )
    assert result.returncode != 0, f"accepted: {spec}"
    assert expected in result.stderr, result.stderr


def test_name_too_long_for_child_names_is_rejected(kubectl: Any, namespace: str, crd: None) -> None:
    result = kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=_manifest("m" * 41, GOOD), check=False
    )
    assert result.returncode != 0
    assert "metadata.name" in result.stderr


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_samples_are_accepted_and_defaulted(kubectl: Any, namespace: str, crd: None, sample: Path) -> None:
    result = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(sample), "-o", "yaml")
    stored = yaml.safe_load(result.stdout)
    assert stored["spec"]["serving"]["port"] == 8080
    assert stored["spec"]["compression"]["format"] == "onnx"
    assert "onnx" in stored["spec"]["compression"]["formats"]
    assert stored["spec"]["retainVersions"] >= 1


def test_storage_cannot_change_after_creation(kubectl: Any, namespace: str, crd: None) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=_manifest("keep", GOOD))
    result = kubectl(
        "apply", "-n", namespace, "-f", "-", input=_manifest("keep", _with("storage.size", "5Gi")), check=False
    )
    assert result.returncode != 0
    assert "spec.storage is immutable" in result.stderr
