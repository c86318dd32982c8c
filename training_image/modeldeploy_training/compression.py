"""Compression candidates (onnxruntime quantization, fp16), their measurement, and the choice among them.

The choice is a pure function of the measured candidates (`choose`), so the policy is unit-tested without models.
Latency is measured, never assumed: on small CPUs some int8 variants are several times slower than fp32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnxconverter_common import float16
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

from modeldeploy import contracts
from modeldeploy_training import onnxutil
from modeldeploy_training.errors import AccuracyBudgetExceeded, InvalidSpec

log = logging.getLogger(__name__)

# Which candidates each requested quantization may choose from (fp32 is always measured: it is the baseline).
FAMILIES: dict[str, tuple[str, ...]] = {
    "none": ("fp32",),
    "dynamic": ("dynamic-uint8", "dynamic-int8", "dynamic-matmul"),
    "static": ("static-qdq",),
    "fp16": ("fp16",),
    "auto": contracts.CANDIDATE_NAMES,
}
CALIBRATION_SAMPLES = 256
LATENCY_ROUNDS = 7
LATENCY_RUNS_BATCH1 = 30
LATENCY_RUNS_BATCH32 = 10
LATENCY_TIME_BUDGET_S = 20.0
# Accuracy differences below this are float noise in the division, not a lost sample.
_EPSILON = 1e-9


@dataclass(kw_only=True)
class Candidate:
    """One compressed variant, as the model card records it; what is not measured (yet) is None."""

    name: str
    size_bytes: int
    accuracy: float | None = None
    accuracy_drop: float | None = None
    latency_p50_us_batch1: float | None = None
    latency_p50_us_batch32: float | None = None
    latency_ratio: float | None = None
    accepted: bool = False
    rejected_because: str | None = None

    def card(self) -> dict[str, Any]:
        """The model card's entry (docs/contracts/model-artifact.md): the same fields, named in camelCase."""
        return card_entry(self)


def card_entry(candidate: Any) -> dict[str, Any]:
    """A candidate dataclass as the model card names its fields: `size_bytes` -> `sizeBytes`, in field order."""
    return {_camel(name): value for name, value in asdict(candidate).items()}


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def candidate_names(requested: str) -> tuple[str, ...]:
    if requested not in FAMILIES:
        raise InvalidSpec(f"spec.compression.quantization {requested!r} is unknown; use {', '.join(FAMILIES)}")
    family = FAMILIES[requested]
    return family if "fp32" in family else ("fp32", *family)


def build_candidate(name: str, fp32_path: Path, work_dir: Path, calibration: npt.NDArray[np.float32]) -> Path:
    """Write candidate `name` next to the fp32 model and return its path."""
    out = work_dir / f"{name}.onnx"
    if name == "fp32":
        return fp32_path
    if name == "dynamic-int8":
        quantize_dynamic(fp32_path, out, weight_type=QuantType.QInt8)
    elif name == "dynamic-uint8":
        quantize_dynamic(fp32_path, out, weight_type=QuantType.QUInt8)
    elif name == "dynamic-matmul":
        # Only the dense layers: Conv -> ConvInteger is what made dynamic int8 slow on this kind of CPU.
        quantize_dynamic(fp32_path, out, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    elif name == "static-qdq":
        quantize_static(
            fp32_path,
            out,
            _Calibration(fp32_path, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    elif name == "fp16":
        # keep_io_types: clients keep sending float32 (the contract), only weights and compute are halved.
        model = float16.convert_float_to_float16(onnx.load(fp32_path), keep_io_types=True)
        onnx.save_model(model, out)
    else:
        raise InvalidSpec(f"unknown compression candidate {name!r}; known: {', '.join(contracts.CANDIDATE_NAMES)}")
    return out


class _Calibration:
    """Training samples for static quantization's activation ranges, fed in batches of 32."""

    def __init__(self, model_path: Path, x: npt.NDArray[np.float32]) -> None:
        sess = onnxutil.session(model_path)
        self._name = sess.get_inputs()[0].name
        batch = onnxutil.input_batch(sess) or 32
        self._batches: Iterator[npt.NDArray[np.float32]] = iter(
            [x[i : i + batch] for i in range(0, len(x) - batch + 1, batch)] or [x[:batch]]
        )

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: batch}

    def rewind(self) -> None:  # the calibrator may call it; one pass is enough for MinMax
        return None


def accuracy(probabilities: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> float:
    return float(np.mean(np.argmax(probabilities.reshape(len(y), -1), axis=1) == y))


def measure_latency(paths: dict[str, Path], x: npt.NDArray[np.float32]) -> dict[str, tuple[float, float]]:
    """p50 latency in microseconds at batch 1 and batch 32 per model, one intra-op thread.

    The candidates are measured in interleaved rounds, so a neighbour's load on a shared machine hits all of them
    alike instead of whichever happened to run at that moment.
    """
    sessions = {name: onnxutil.session(path, threads=1) for name, path in paths.items()}
    feeds: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for name, sess in sessions.items():
        inp = sess.get_inputs()[0]
        fixed = onnxutil.input_batch(sess)
        one = _rows(x, fixed or 1).astype(np.float32)
        many = _rows(x, fixed or 32).astype(np.float32)
        feeds[name] = ({inp.name: one}, {inp.name: many})
        for _ in range(5):  # first runs allocate and pick kernels
            sess.run(None, feeds[name][0])
            sess.run(None, feeds[name][1])
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in sessions}
    start = time.monotonic()
    for round_ in range(LATENCY_ROUNDS):
        for name, sess in sessions.items():
            for feed, runs, out in (
                (feeds[name][0], LATENCY_RUNS_BATCH1, samples[name][0]),
                (feeds[name][1], LATENCY_RUNS_BATCH32, samples[name][1]),
            ):
                for _ in range(runs):
                    t0 = time.perf_counter_ns()
                    sess.run(None, feed)
                    out.append((time.perf_counter_ns() - t0) / 1000.0)
        if round_ >= 1 and time.monotonic() - start > LATENCY_TIME_BUDGET_S:
            break
    return {name: (float(np.median(b1)), float(np.median(b32))) for name, (b1, b32) in samples.items()}


def _rows(x: npt.NDArray[np.float32], n: int) -> npt.NDArray[np.float32]:
    reps = -(-n // len(x))
    return np.concatenate([x] * reps)[:n] if reps > 1 else x[:n]


def judge(candidates: list[Candidate], max_drop: float, max_ratio: float) -> None:
    """Mark each candidate accepted or say why not (accuracy budget first: it is the promise to the user)."""
    for c in candidates:
        if c.accuracy_drop is None or c.latency_ratio is None:
            c.accepted = False
            c.rejected_because = c.rejected_because or "not measured"
        elif c.accuracy_drop > max_drop + _EPSILON:
            c.accepted = False
            c.rejected_because = f"loses {c.accuracy_drop:.4f} accuracy, more than maxAccuracyDrop {max_drop}"
        elif c.latency_ratio > max_ratio:
            c.accepted = False
            c.rejected_because = (
                f"{c.latency_ratio:.2f}x fp32's batch-32 latency, more than maxLatencyRatio {max_ratio}"
            )
        else:
            c.accepted = True
            c.rejected_because = None


def choose(candidates: list[Candidate], requested: str, max_drop: float, max_ratio: float) -> tuple[Candidate, str]:
    """The served candidate and one sentence why.

    auto and none: the smallest accepted candidate (fp32 is the fallback). An explicit dynamic/static/fp16: the
    user asked for that family, so it is served even when slower than maxLatencyRatio (the fastest of those
    within the accuracy budget, and the reason says so); none within the accuracy budget fails the run.
    """
    judge(candidates, max_drop, max_ratio)
    family = FAMILIES[requested]
    pool = [c for c in candidates if c.name in family]
    accepted = sorted((c for c in pool if c.accepted), key=lambda c: (c.size_bytes, c.latency_p50_us_batch32 or 0.0))
    if accepted:
        best = accepted[0]
        if requested == "none":
            return best, "quantization none: the fp32 model is served as converted"
        return best, (
            f"{best.name} is the smallest {'candidate' if requested == 'auto' else requested + ' variant'} "
            f"within maxAccuracyDrop {max_drop} (lost {best.accuracy_drop:.4f}) and maxLatencyRatio {max_ratio} "
            f"({best.latency_ratio:.2f}x fp32)"
        )
    within_budget = [c for c in pool if c.accuracy_drop is not None and c.accuracy_drop <= max_drop + _EPSILON]
    if requested in {"dynamic", "static", "fp16"} and within_budget:
        best = min(within_budget, key=lambda c: c.latency_p50_us_batch32 or float("inf"))
        return best, (
            f"{best.name} was requested and keeps accuracy (lost {best.accuracy_drop:.4f}) but is "
            f"{best.latency_ratio:.2f}x fp32's latency, beyond maxLatencyRatio {max_ratio}; served because it was "
            "asked for"
        )
    details = "; ".join(f"{c.name}: {c.rejected_because}" for c in pool)
    raise AccuracyBudgetExceeded(
        f"quantization {requested}: no candidate keeps accuracy within maxAccuracyDrop {max_drop} ({details}); "
        "raise spec.compression.maxAccuracyDrop or use quantization none or auto"
    )
