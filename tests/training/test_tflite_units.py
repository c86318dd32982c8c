"""Pure parts of the TFLite format without TensorFlow: the choice, int8 feeding, error lines, and what the spec's
formats do to the version."""

from __future__ import annotations

import numpy as np
import pytest
from modeldeploy_training import tflite
from modeldeploy_training.tflite import Candidate, TfliteFailed

from modeldeploy import contracts

pytestmark = pytest.mark.training


def candidates(*drops: float | None) -> list[Candidate]:
    sizes = (50_000, 27_000, 16_000, 16_200)
    return [
        Candidate(
            name=name,
            size_bytes=size,
            accuracy=None if drop is None else 0.95 - drop,
            accuracy_drop=drop,
            conversion_seconds=1.0,
        )
        for name, size, drop in zip(contracts.TFLITE_CANDIDATE_NAMES, sizes, drops, strict=True)
    ]


def test_auto_keeps_the_smallest_variant_within_the_budget() -> None:
    chosen, reason = tflite.choose(candidates(0.0, 0.0, 0.02, 0.005), "auto", 0.01)
    assert chosen.name == "full-int8"
    assert "smallest TFLite variant within maxAccuracyDrop 0.01" in reason


def test_a_variant_beyond_the_budget_is_rejected_and_says_why() -> None:
    pool = candidates(0.0, 0.0, 0.02, None)
    chosen, _ = tflite.choose(pool, "auto", 0.01)
    assert chosen.name == "float16"
    by_name = {c.name: c for c in pool}
    assert by_name["dynamic-int8"].rejected_because == "loses 0.0200 accuracy, more than maxAccuracyDrop 0.01"
    assert by_name["full-int8"].rejected_because == "not measured"


def test_an_explicit_family_without_a_variant_in_budget_fails_the_format_only() -> None:
    with pytest.raises(TfliteFailed) as failed:
        tflite.choose(candidates(0.0, 0.0, 0.0, 0.3), "static", 0.01)
    assert failed.value.reason == "AccuracyBudgetExceeded"
    assert "full-int8: loses 0.3000 accuracy" in str(failed.value)


def test_int8_inputs_are_quantized_and_clipped_and_outputs_dequantized() -> None:
    detail = {"dtype": np.int8, "quantization": (1 / 255, -128)}
    x = np.array([0.0, 0.2, 1.0, 3.0], dtype=np.float32)
    q = tflite.quantize(x, detail)
    assert q.dtype == np.int8 and q.tolist() == [-128, -77, 127, 127]
    assert np.allclose(tflite.dequantize(q, detail), [0.0, 51 / 255, 1.0, 1.0])
    floats = {"dtype": np.float32, "quantization": (0.0, 0)}
    assert tflite.quantize(x, floats) is not x and tflite.dequantize(x, floats).tolist() == x.tolist()


def test_a_converter_error_becomes_one_line_naming_the_missing_ops() -> None:
    mlir = (
        "Could not translate MLIR to FlatBuffer.<unknown>:0: error: loc(callsite(fused[...])): "
        "'tf.MatrixDeterminant' op is neither a custom op nor a flex op\n<unknown>:0: note: see current operation\n"
        "'tf.Bincount' op is neither a custom op nor a flex op 'tf.MatrixDeterminant' op is neither a custom op nor "
        "a flex op"
    )
    assert (
        tflite.converter_message(RuntimeError(mlir))
        == "TensorFlow ops outside TFLite's built-in set: tf.Bincount, tf.MatrixDeterminant"
    )
    assert tflite.converter_message(ValueError("x\n" * 400)) == ("ValueError: " + "x " * 400)[:300]


def test_default_formats_keep_the_version_of_a_spec_written_before_formats() -> None:
    before = {"training": {"epochs": 3}, "compression": {"format": "onnx", "quantization": "auto"}}
    now = {"training": {"epochs": 3}, "compression": {**before["compression"], "formats": ["onnx"]}}
    with_tflite = {"training": {"epochs": 3}, "compression": {**before["compression"], "formats": ["onnx", "tflite"]}}
    assert contracts.spec_hash(now) == contracts.spec_hash(before)
    assert contracts.spec_hash(with_tflite) != contracts.spec_hash(before)


@pytest.mark.parametrize("formats", [[], ["tflite"], ["onnx", "coreml"], "onnx"])
def test_formats_must_be_a_list_that_includes_onnx(formats: object) -> None:
    with pytest.raises(contracts.ContractError, match="use \\[onnx\\] or \\[onnx, tflite\\]"):
        contracts.requested_formats({"compression": {"formats": formats}})
    assert contracts.requested_formats({"compression": {"formats": ["tflite", "onnx"]}}) == ("onnx", "tflite")
    assert contracts.requested_formats({}) == ("onnx",)
