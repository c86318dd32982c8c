"""The TensorFlow Lite artifact (spec.compression.formats lists tflite): the source model converted by TensorFlow's
own converter in four variants, each measured with the LiteRT interpreter on the held-out data of the ONNX
candidates, judged by the same maxAccuracyDrop, the smallest kept as model.tflite.

A failure here is the TFLite format's failure only: the ONNX model, which the cluster serves, still ships, and the
card and the report say why there is no model.tflite. TensorFlow is imported by the caller's converter factory.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy import contracts
from modeldeploy_training.compression import accuracy, card_entry

log = logging.getLogger(__name__)

# A fresh tf.lite.TFLiteConverter for the source model (a converter is configured per variant and used once).
ConverterFactory = Callable[[], Any]

# Which variants each spec.compression.quantization may choose from, as for the ONNX candidates.
FAMILIES: dict[str, tuple[str, ...]] = {
    "none": ("float32",),
    "fp16": ("float16",),
    "dynamic": ("dynamic-int8",),
    "static": ("full-int8",),
    "auto": contracts.TFLITE_CANDIDATE_NAMES,
}
QUANTIZATION = {
    "float32": "float32 weights and compute",
    "float16": "float16 weights, float32 compute and input",
    "dynamic-int8": "int8 weights (dynamic range), float32 input and activations",
    "full-int8": "int8 weights and activations, int8 input and output (calibrated on training samples)",
}
EVAL_BATCH = 256
# How TensorFlow's converter names an op that has no TFLite kernel (without Flex, which this module never enables).
_MISSING_OP = re.compile(r"'(tf\.\w+)' op is neither a custom op nor a flex op")
# Accuracy differences below this are float noise in the division, not a lost sample.
_EPSILON = 1e-9


class TfliteFailed(Exception):
    """The TFLite format could not be made; `reason` is one of contracts.FAILURE_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(kw_only=True)
class Candidate:
    """One TFLite variant, as the model card records it; what is not measured is None."""

    name: str
    size_bytes: int
    accuracy: float | None = None
    accuracy_drop: float | None = None
    conversion_seconds: float | None = None
    accepted: bool = False
    rejected_because: str | None = None

    def card(self) -> dict[str, Any]:
        """The model card's entry (docs/contracts/model-artifact.md): the same fields, named in camelCase."""
        return card_entry(self)


def convert(factory: ConverterFactory, name: str, calibration: npt.NDArray[np.float32]) -> bytes:
    """The model as TFLite variant `name`; TensorFlow's converter raises on what it cannot convert."""
    import tensorflow as tf  # noqa: PLC0415  (only a run that asks for tflite pays for it here)

    converter = factory()
    # Built-in ops only: TF ops (Flex) would need the full TensorFlow runtime on the device.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if name != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if name == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif name == "full-int8":

        def representative() -> Iterator[list[npt.NDArray[np.float32]]]:
            for i in range(len(calibration)):
                yield [calibration[i : i + 1]]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif name not in contracts.TFLITE_CANDIDATE_NAMES:
        raise ValueError(f"unknown TFLite variant {name!r}; known: {', '.join(contracts.TFLITE_CANDIDATE_NAMES)}")
    # Keras' export prints where it saved its temporary SavedModel; the job's stdout is for its own lines.
    with contextlib.redirect_stdout(io.StringIO()):
        return bytes(converter.convert())


def converter_message(err: Exception) -> str:
    """One short line for a converter error: the ops TFLite lacks when that is the cause (the MLIR text around them
    is hundreds of characters of call sites), else the error's start."""
    missing = sorted(set(_MISSING_OP.findall(str(err))))
    if missing:
        return f"TensorFlow ops outside TFLite's built-in set: {', '.join(missing)}"
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def interpreter(model: bytes) -> Any:
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    return Interpreter(model_content=model, num_threads=1)


def predict(model: bytes, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The first output for every row of x, as float32: int8 inputs are quantized and outputs dequantized with the
    scale and zero point the model declares, as a device would."""
    interp = interpreter(model)
    inp = interp.get_input_details()
    out = interp.get_output_details()
    if len(inp) != 1:
        raise TfliteFailed(
            "InvalidModel", f"the TFLite model has {len(inp)} inputs; only single-input models are measured"
        )
    parts: list[npt.NDArray[np.float32]] = []
    for start in range(0, len(x), EVAL_BATCH):
        batch = x[start : start + EVAL_BATCH]
        interp.resize_tensor_input(inp[0]["index"], [len(batch), *batch.shape[1:]])
        interp.allocate_tensors()
        interp.set_tensor(inp[0]["index"], quantize(batch, inp[0]))
        interp.invoke()
        parts.append(dequantize(interp.get_tensor(out[0]["index"]), out[0]))
    return np.concatenate(parts)


def quantize(x: npt.NDArray[np.float32], detail: dict[str, Any]) -> npt.NDArray[Any]:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = (float(v) for v in detail["quantization"])
    info = np.iinfo(dtype)
    quantized: npt.NDArray[Any] = np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return quantized


def dequantize(y: npt.NDArray[Any], detail: dict[str, Any]) -> npt.NDArray[np.float32]:
    if y.dtype.kind == "f":
        return y.astype(np.float32)
    scale, zero = (float(v) for v in detail["quantization"])
    real: npt.NDArray[np.float32] = ((y.astype(np.float32) - zero) * scale).astype(np.float32)
    return real


def tensor_descriptions(model: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The card's view of the TFLite model's tensors: what a device must feed (int8 with its scale and zero point
    for full-int8) and what it gets back."""
    interp = interpreter(model)

    def describe(detail: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": detail["name"],
            "dtype": np.dtype(detail["dtype"]).name,
            "shape": [int(d) for d in detail["shape_signature"]],
        }
        if np.dtype(detail["dtype"]).kind != "f":
            scale, zero = detail["quantization"]
            out["quantization"] = {"scale": float(scale), "zeroPoint": int(zero)}
        return out

    return [describe(d) for d in interp.get_input_details()], [describe(d) for d in interp.get_output_details()]


def judge(candidates: list[Candidate], max_drop: float) -> None:
    for c in candidates:
        if c.accuracy_drop is None:
            c.accepted = False
            c.rejected_because = c.rejected_because or "not measured"
        elif c.accuracy_drop > max_drop + _EPSILON:
            c.accepted = False
            c.rejected_because = f"loses {c.accuracy_drop:.4f} accuracy, more than maxAccuracyDrop {max_drop}"
        else:
            c.accepted = True
            c.rejected_because = None


def choose(candidates: list[Candidate], requested: str, max_drop: float) -> tuple[Candidate, str]:
    """The smallest variant of the requested family within maxAccuracyDrop, and one sentence why.

    Latency is not a criterion: the build machine's CPU says nothing about a phone's or a microcontroller's.
    """
    judge(candidates, max_drop)
    pool = [c for c in candidates if c.name in FAMILIES[requested]]
    accepted = sorted((c for c in pool if c.accepted), key=lambda c: c.size_bytes)
    if not accepted:
        details = "; ".join(f"{c.name}: {c.rejected_because}" for c in pool)
        raise TfliteFailed(
            "AccuracyBudgetExceeded",
            f"quantization {requested}: no TFLite variant keeps accuracy within maxAccuracyDrop {max_drop} "
            f"({details}); raise spec.compression.maxAccuracyDrop or use quantization auto",
        )
    best = accepted[0]
    return best, (
        f"{best.name} is the smallest TFLite {'variant' if requested == 'auto' else requested + ' variant'} "
        f"within maxAccuracyDrop {max_drop} (lost {best.accuracy_drop:.4f})"
    )


def make(
    factory: ConverterFactory | None,
    *,
    requested: str,
    max_drop: float,
    x_eval: npt.NDArray[np.float32],
    y_ref: npt.NDArray[np.int64],
    source_accuracy: float,
    calibration: npt.NDArray[np.float32],
    out_path: Path,
) -> dict[str, Any]:
    """Convert, measure, choose and write model.tflite; returns the card's `tflite` section, which holds
    `failureReason` and `message` instead of a file when the format failed (nothing is written then)."""
    started = time.monotonic()
    candidates: list[Candidate] = []
    try:
        if factory is None:
            raise TfliteFailed(
                "InvalidModel",
                "TensorFlow Lite converts TensorFlow models and this one was imported as ONNX, so only model.onnx is "
                "made: import the Keras or SavedModel model instead, or remove tflite from spec.compression.formats",
            )
        models: dict[str, bytes] = {}
        errors: dict[str, list[str]] = {}
        for name in FAMILIES[requested]:
            t0 = time.monotonic()
            try:
                model = convert(factory, name, calibration)
                seconds = round(time.monotonic() - t0, 3)
                acc = accuracy(predict(model, x_eval), y_ref)
            except TfliteFailed:
                raise
            except Exception as err:  # noqa: BLE001  (the converter raises ConverterError, RuntimeError, ValueError…)
                text = converter_message(err)
                log.warning("TFLite variant %s could not be built: %s", name, text)
                errors.setdefault(text, []).append(name)
                candidates.append(Candidate(name=name, size_bytes=0, rejected_because=f"not built: {text}"))
                continue
            models[name] = model
            candidates.append(
                Candidate(
                    name=name,
                    size_bytes=len(model),
                    accuracy=round(acc, 6),
                    accuracy_drop=round(source_accuracy - acc, 6),
                    conversion_seconds=seconds,
                )
            )
        if not models:
            refusals = "; ".join(f"{', '.join(names)}: {text}" for text, names in errors.items())
            raise TfliteFailed(
                "InvalidModel",
                f"no model.tflite (model.onnx is made as usual): TensorFlow Lite's converter refused the model "
                f"({refusals}); change those parts of the model, or remove tflite from spec.compression.formats",
            )
        chosen, reason = choose(candidates, requested, max_drop)
    except TfliteFailed as failure:
        judge(candidates, max_drop)
        log.warning("no model.tflite: %s", failure)
        return {
            "requested": requested,
            "failureReason": failure.reason,
            "message": str(failure),
            "candidates": [c.card() for c in candidates],
            "durationSeconds": round(time.monotonic() - started, 3),
        }
    for c in candidates:
        log.info(
            "TFLite %-12s %7d bytes accuracy %s %s",
            c.name,
            c.size_bytes,
            c.accuracy,
            "accepted" if c.accepted else f"rejected: {c.rejected_because}",
        )
    log.info("TFLite chosen: %s (%s)", chosen.name, reason)
    data = models[chosen.name]
    out_path.write_bytes(data)
    inputs, outputs = tensor_descriptions(data)
    return {
        "file": out_path.name,
        "requested": requested,
        "chosen": chosen.name,
        "quantization": QUANTIZATION[chosen.name],
        "reason": reason,
        "accuracy": chosen.accuracy,
        "accuracyDrop": chosen.accuracy_drop,
        "sizeBytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "inputs": inputs,
        "outputs": outputs,
        "candidates": [c.card() for c in candidates],
        "durationSeconds": round(time.monotonic() - started, 3),
    }
