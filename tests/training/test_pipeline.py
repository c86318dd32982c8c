"""Real training on digits, export, every compression variant, parity, the auto choice and reruns."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modeldeploy_training import compression, job
from sklearn.datasets import load_digits

from modeldeploy import contracts

from .conftest import Run, assert_failed, complete_versions, digits_spec, run_train

pytestmark = pytest.mark.training

CARD_FIELDS = {
    "schema", "name", "version", "createdAt", "specHash", "dataFingerprint", "task", "inputs", "outputs", "labels",
    "preprocessing", "metrics", "compression", "files", "libraries", "training",
}  # fmt: skip


def digits_xy() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    return (bunch.images.reshape(-1, 8, 8, 1) / 16).astype(np.float32), bunch.target


def test_digits_cnn_makes_a_served_onnx_model_with_named_dynamic_batch(digits_auto: Run) -> None:
    report = digits_auto.report
    assert digits_auto.code == 0 and report["ok"] is True and report["reused"] is False
    assert report["path"] == f"digits/{report['version']}"
    model = onnx.load(digits_auto.version_dir / contracts.MODEL_FILE)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["probabilities"]
    for value in (model.graph.input[0], model.graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert 15 <= max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) <= 18
    # The served model classifies digits it never saw in training as well as the report says, at any batch size.
    x, y = digits_xy()
    session = ort.InferenceSession(str(digits_auto.version_dir / contracts.MODEL_FILE))
    for batch in (1, 7, 200):
        probabilities = session.run(None, {"input": x[:batch]})[0]
        assert probabilities.shape == (batch, 10)
    accuracy = float(np.mean(session.run(None, {"input": x})[0].argmax(1) == y))
    assert accuracy > 0.85
    assert report["accuracy"] > 0.85


def test_model_card_has_every_contract_field(digits_auto: Run) -> None:
    card = digits_auto.card()
    assert set(card) >= CARD_FIELDS
    assert card["schema"] == contracts.MODEL_CARD_SCHEMA
    assert card["version"] == digits_auto.report["version"] and card["name"] == "digits"
    assert card["dataFingerprint"] == "builtin:digits"
    assert card["version"] == contracts.model_version(card["specHash"], "builtin:digits")
    assert card["labels"] == [str(i) for i in range(10)]
    assert card["preprocessing"] == {"scale": 0.0625}
    assert card["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8, 8, 1]}]
    assert card["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert set(card["metrics"]) >= {"accuracy", "sourceAccuracy", "parityMaxAbsDiff", "evaluatedOn"}
    assert card["metrics"]["parityMaxAbsDiff"] < job.PARITY_MAX_ABS_DIFF
    assert set(card["libraries"]) == {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy"}
    assert card["training"]["epochs"] == 3 and len(card["training"]["history"]) == 3
    assert (digits_auto.version_dir / "source" / "model.keras").is_file()
    for rel, entry in card["files"].items():
        data = (digits_auto.version_dir / rel).read_bytes()
        assert entry == {"sizeBytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert "model.onnx" in card["files"]


def test_auto_measures_every_candidate_and_serves_the_smallest_acceptable(digits_auto: Run) -> None:
    comp = digits_auto.card()["compression"]
    candidates = {c["name"]: c for c in comp["candidates"]}
    assert tuple(candidates) == contracts.CANDIDATE_NAMES
    for c in candidates.values():
        assert c["latencyP50UsBatch1"] > 0 and c["latencyP50UsBatch32"] > 0
        assert c["accepted"] == (c["rejectedBecause"] is None)
    chosen = candidates[comp["chosen"]]
    assert chosen["accepted"]
    assert chosen["accuracyDrop"] <= comp["maxAccuracyDrop"]
    assert chosen["latencyRatio"] <= comp["maxLatencyRatio"]
    assert chosen["sizeBytes"] == min(c["sizeBytes"] for c in candidates.values() if c["accepted"])
    assert digits_auto.card()["files"]["model.onnx"]["sizeBytes"] == chosen["sizeBytes"]
    assert digits_auto.report["quantization"] == comp["chosen"]


def test_rerun_of_the_same_spec_reuses_the_version_without_training(digits_auto: Run, tmp_path: Path) -> None:
    before = (digits_auto.version_dir / contracts.MODEL_CARD_FILE).read_bytes()
    again = run_train(tmp_path, digits_spec(), output=digits_auto.output)
    assert again.code == 0 and again.report["reused"] is True
    assert again.report["version"] == digits_auto.report["version"]
    assert again.report["accuracy"] == digits_auto.report["accuracy"]
    assert (digits_auto.version_dir / contracts.MODEL_CARD_FILE).read_bytes() == before
    assert again.report["durationSeconds"] < 2.0


def test_a_changed_spec_makes_a_new_version(digits_auto: Run, tmp_path: Path) -> None:
    other = run_train(tmp_path, digits_spec(epochs=2, compression={"quantization": "none"}), output=digits_auto.output)
    assert other.code == 0 and other.report["version"] != digits_auto.report["version"]
    assert len(complete_versions(digits_auto.output / "digits")) == 2


@pytest.mark.parametrize("requested", ["none", "dynamic", "static", "fp16"])
def test_explicit_quantization_serves_a_variant_of_that_family(requested: str, tmp_path: Path) -> None:
    run = run_train(tmp_path, digits_spec(epochs=2, compression={"quantization": requested, "maxAccuracyDrop": 0.05}))
    assert run.code == 0, run.report
    card = run.card()
    assert card["compression"]["chosen"] in compression.FAMILIES[requested]
    # Clients always send float32 (fp16 keeps float32 inputs and outputs).
    session = ort.InferenceSession(str(run.version_dir / contracts.MODEL_FILE))
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_outputs()[0].type == "tensor(float)"
    x, _ = digits_xy()
    assert session.run(None, {"input": x[:4]})[0].shape == (4, 10)


def test_static_quantization_beyond_the_accuracy_budget_fails(tmp_path: Path) -> None:
    # One pixel far out of range in every image: per-tensor int8 activations then have no resolution left for the
    # real pixels, so the static variant is badly wrong while fp32 is fine; a budget it cannot meet.
    x, y = digits_xy()
    x = x.copy()
    x[:, 0, 0, 0] = 1000.0
    np.savez(tmp_path / "outlier.npz", x=x, y=y)
    spec = {
        "training": {"recipe": "cnn", "epochs": 2, "dataset": {"claimName": "c", "path": "outlier.npz"}},
        "compression": {"quantization": "static", "maxAccuracyDrop": 0.01},
    }
    run = run_train(tmp_path, spec, data_root=tmp_path)
    assert_failed(run, "AccuracyBudgetExceeded", "static-qdq", "maxAccuracyDrop 0.01")


def test_parity_beyond_tolerance_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Real conversions agree to ~1e-6; a zero tolerance makes that honest difference a parity failure.
    monkeypatch.setattr(job, "PARITY_MAX_ABS_DIFF", 0.0)
    run = run_train(tmp_path, digits_spec(epochs=1, compression={"quantization": "none"}))
    assert_failed(run, "ParityFailed", "differs from the source model")
