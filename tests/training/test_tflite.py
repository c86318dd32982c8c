"""spec.compression.formats with tflite: the TensorFlow Lite artifact beside model.onnx, measured with the LiteRT
interpreter and gated like the ONNX candidates; a model the converter refuses still ships its ONNX model."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from modeldeploy_training import data, tflite

from modeldeploy import contracts
from modeldeploy.cli import main

from .conftest import Run, digits_spec, run_train

pytestmark = pytest.mark.training

TFLITE_SPEC = {"formats": ["onnx", "tflite"]}


@pytest.fixture(scope="module")
def digits_tflite(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_train(tmp_path_factory.mktemp("digits-tflite"), digits_spec(compression=TFLITE_SPEC))


def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    """The held-out part of digits exactly as the trainer split it (seed 42, 0.2: the CRD's defaults)."""
    parts = data.split(data.load_digits(), 0.2, 42)
    return parts.x_test, parts.y_test


def test_digits_with_tflite_ships_a_model_tflite_within_the_accuracy_budget(digits_tflite: Run) -> None:
    run = digits_tflite
    assert run.code == 0 and run.report["ok"] is True, run.report
    card = run.card()
    section = card["tflite"]
    path = run.version_dir / contracts.TFLITE_FILE
    model = path.read_bytes()
    # The interpreter, on the held-out digits, agrees with what the card claims and stays within the budget.
    x, y = held_out_digits()
    measured = float(np.mean(tflite.predict(model, x.astype(np.float32)).argmax(1) == y))
    assert measured == pytest.approx(section["accuracy"], abs=1e-6)
    assert card["metrics"]["sourceAccuracy"] - measured <= card["compression"]["maxAccuracyDrop"] + 1e-9
    assert measured > 0.85
    # Recorded like every file of the version, and in the report that the operator copies into the status.
    digest = hashlib.sha256(model).hexdigest()
    assert card["files"][contracts.TFLITE_FILE] == {"sizeBytes": len(model), "sha256": digest}
    assert section["sha256"] == digest and section["sizeBytes"] == len(model)
    assert run.report["tflite"] == {
        "quantization": section["chosen"],
        "accuracy": section["accuracy"],
        "sizeBytes": len(model),
        "sha256": digest,
    }
    # The ONNX model is made and served as before.
    session = ort.InferenceSession(str(run.version_dir / contracts.MODEL_FILE))
    assert session.run(None, {"input": x[:3].astype(np.float32)})[0].shape == (3, 10)


def test_every_tflite_variant_is_measured_and_the_smallest_acceptable_is_kept(digits_tflite: Run) -> None:
    section = digits_tflite.card()["tflite"]
    candidates = {c["name"]: c for c in section["candidates"]}
    assert tuple(candidates) == contracts.TFLITE_CANDIDATE_NAMES
    for c in candidates.values():
        assert c["sizeBytes"] > 0 and c["accuracy"] is not None
        assert c["accepted"] == (c["rejectedBecause"] is None)
    # Quantized weights are smaller than float32 ones (the int8 variants about a third).
    assert candidates["float16"]["sizeBytes"] < candidates["float32"]["sizeBytes"]
    assert candidates["dynamic-int8"]["sizeBytes"] < candidates["float32"]["sizeBytes"] / 2
    assert candidates["full-int8"]["sizeBytes"] < candidates["float32"]["sizeBytes"] / 2
    chosen = candidates[section["chosen"]]
    assert chosen["sizeBytes"] == min(c["sizeBytes"] for c in candidates.values() if c["accepted"])
    assert section["quantization"] == tflite.QUANTIZATION[section["chosen"]]


def test_full_integer_variant_takes_int8_with_the_scale_the_card_gives(tmp_path: Path) -> None:
    # quantization static asks for the calibrated variant: int8 in and out, as a microcontroller runs it.
    run = run_train(tmp_path, digits_spec(epochs=2, compression={**TFLITE_SPEC, "quantization": "static"}))
    assert run.code == 0, run.report
    section = run.card()["tflite"]
    assert section["chosen"] == "full-int8"
    (inp,) = section["inputs"]
    assert inp["dtype"] == "int8" and inp["shape"] == [-1, 8, 8, 1]
    # A device quantizes its 0..1 pixels with the card's numbers, then reads the int8 scores back.
    x, y = held_out_digits()
    scale, zero = inp["quantization"]["scale"], inp["quantization"]["zeroPoint"]
    feed = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
    interp = tflite.interpreter((run.version_dir / contracts.TFLITE_FILE).read_bytes())
    detail = interp.get_input_details()[0]
    interp.resize_tensor_input(detail["index"], list(feed.shape))
    interp.allocate_tensors()
    interp.set_tensor(detail["index"], feed)
    interp.invoke()
    scores = interp.get_tensor(interp.get_output_details()[0]["index"])
    assert scores.dtype == np.int8
    assert float(np.mean(scores.argmax(1) == y)) == pytest.approx(section["accuracy"], abs=1e-6)


def save_determinant_model(path: Path) -> None:
    """A SavedModel built on tf.linalg.det: tf2onnx converts it (ONNX has Det), TFLite's built-in ops lack it."""
    import tensorflow as tf  # noqa: PLC0415

    class Determinant(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.offset = tf.Variable(np.eye(2, dtype=np.float32))

        @tf.function(input_signature=[tf.TensorSpec((None, 2, 2), tf.float32)])  # type: ignore[untyped-decorator]
        def __call__(self, x: Any) -> dict[str, Any]:
            d = tf.linalg.det(x + self.offset)
            return {"scores": tf.nn.softmax(tf.stack([d, -d], axis=1))}

    module = Determinant()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})


def test_a_model_tflite_refuses_ships_onnx_and_says_why_for_tflite(tmp_path: Path) -> None:
    save_determinant_model(tmp_path / "det")
    spec = {
        "importModel": {"claimName": "c", "path": "det", "format": "savedmodel"},
        "compression": {**TFLITE_SPEC, "quantization": "none"},
    }
    run = run_train(tmp_path, spec, name="det", data_root=tmp_path)
    assert run.code == 0 and run.report["ok"] is True, run.report
    assert (run.version_dir / contracts.MODEL_FILE).is_file()
    assert not (run.version_dir / contracts.TFLITE_FILE).exists()
    failure = run.report["tflite"]
    assert failure["failureReason"] == "InvalidModel"
    assert "tf.MatrixDeterminant" in failure["message"]
    assert "remove tflite from spec.compression.formats" in failure["message"]
    section = run.card()["tflite"]
    assert section["failureReason"] == "InvalidModel" and "file" not in section
    assert contracts.TFLITE_FILE not in run.card()["files"]
    assert [c["rejectedBecause"] for c in section["candidates"]] == [
        "not built: TensorFlow ops outside TFLite's built-in set: tf.MatrixDeterminant"
    ]


def test_an_onnx_import_cannot_have_tflite_and_still_ships(digits_tflite: Run, tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes((digits_tflite.version_dir / contracts.MODEL_FILE).read_bytes())
    spec = {"importModel": {"claimName": "c", "path": "m.onnx"}, "compression": {**TFLITE_SPEC, "quantization": "none"}}
    run = run_train(tmp_path, spec, name="imported", data_root=tmp_path)
    assert run.code == 0, run.report
    assert run.report["tflite"]["failureReason"] == "InvalidModel"
    assert "imported as ONNX" in run.report["tflite"]["message"]
    assert not (run.version_dir / contracts.TFLITE_FILE).exists()


def test_a_rerun_reuses_the_version_with_its_tflite_report(digits_tflite: Run, tmp_path: Path) -> None:
    again = run_train(tmp_path, digits_spec(compression=TFLITE_SPEC), output=digits_tflite.output)
    assert again.report["reused"] is True
    assert again.report["tflite"] == digits_tflite.report["tflite"]


def test_formats_without_onnx_is_an_invalid_spec(tmp_path: Path) -> None:
    run = run_train(tmp_path, digits_spec(compression={"formats": ["tflite"]}))
    assert run.code == 1 and run.report["reason"] == "InvalidSpec"
    assert "spec.compression.formats" in run.report["message"]


def test_pull_copies_the_trained_tflite_out_and_it_classifies(digits_tflite: Run, tmp_path: Path) -> None:
    out = tmp_path / "device" / "digits.tflite"
    assert main(["pull", "digits", "--format", "tflite", "--from", str(digits_tflite.output), "-o", str(out)]) == 0
    assert out.read_bytes() == (digits_tflite.version_dir / contracts.TFLITE_FILE).read_bytes()
    x, y = held_out_digits()
    accuracy = float(np.mean(tflite.predict(out.read_bytes(), x).argmax(1) == y))
    assert accuracy == pytest.approx(digits_tflite.card()["tflite"]["accuracy"], abs=1e-6)
