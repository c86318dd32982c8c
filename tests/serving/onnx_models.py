"""Real ONNX models built with onnx's helper API (no TensorFlow), and model cards per docs/contracts/model-artifact.md.

The benchmark (bench/serving.py) loads this file too, so that tests and benchmark serve the same models.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modeldeploy.contracts import MODEL_CARD_SCHEMA

OPSET = 17
DIGIT_LABELS = [f"digit-{i}" for i in range(10)]


def _weights(rng: np.random.Generator, name: str, shape: tuple[int, ...], fan_in: int) -> onnx.TensorProto:
    values = rng.normal(0.0, (2.0 / fan_in) ** 0.5, size=shape).astype(np.float32)
    return numpy_helper.from_array(values, name)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="modeldeploy-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def digits_cnn(path: Path, seed: int = 0, batch: str | int = "batch") -> Path:
    """The digits-shaped CNN of the built-in recipe: input [batch, 8, 8, 1] (NHWC) -> Conv(32, 3x3) -> ReLU ->
    Flatten -> Dense(10) -> softmax, named `input` and `probabilities` like the recipes' models."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "dense_w", "dense_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 8, 8, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 10])],
        initializer=[
            _weights(rng, "conv_w", (32, 1, 3, 3), 9),
            numpy_helper.from_array(np.zeros(32, np.float32), "conv_b"),
            _weights(rng, "dense_w", (32 * 6 * 6, 10), 32 * 6 * 6),
            numpy_helper.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "dense_b"),
        ],
    )
    return _save(graph, path)


def heavy_cnn(path: Path, seed: int = 0) -> Path:
    """A CNN where inference dominates the cost of a request (about 0.1 GFLOP a sample): input [batch, 32, 32, 3]
    -> Conv 64 -> Conv 64 -> MaxPool -> Conv 128 -> global average -> Dense(10) -> softmax."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p2", "w3", "b3"], ["c3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "wd", "bd"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    zeros = lambda n, name: numpy_helper.from_array(np.zeros(n, np.float32), name)  # noqa: E731
    graph = helper.make_graph(
        nodes,
        "heavy_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 32, 32, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            _weights(rng, "w1", (64, 3, 3, 3), 27),
            zeros(64, "b1"),
            _weights(rng, "w2", (64, 64, 3, 3), 576),
            zeros(64, "b2"),
            _weights(rng, "w3", (128, 64, 3, 3), 576),
            zeros(128, "b3"),
            _weights(rng, "wd", (128, 10), 128),
            zeros(10, "bd"),
        ],
    )
    return _save(graph, path)


def slow_mlp(path: Path, layers: int = 40, width: int = 512, seed: int = 0) -> Path:
    """A deep MLP on [batch, width]: a large batch keeps onnxruntime busy for a second or so (for shutdown tests)."""
    rng = np.random.default_rng(seed)
    nodes = []
    initializers = []
    current = "input"
    for i in range(layers):
        initializers.append(_weights(rng, f"w{i}", (width, width), width))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]))
        current = f"t{i}"
    nodes.append(helper.make_node("Identity", [current], ["output"]))
    graph = helper.make_graph(
        nodes,
        "slow_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
        initializer=initializers,
    )
    return _save(graph, path)


def two_input_model(path: Path) -> Path:
    """Two inputs of different datatypes and two outputs: x FP32 [batch, 3] and k INT64 [batch, 1];
    y = x * 2 (FP32 [batch, 3]) and s = k + 1 (INT64 [batch, 1])."""
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["y"]),
        helper.make_node("Add", ["k", "one"], ["s"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("k", TensorProto.INT64, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("s", TensorProto.INT64, ["batch", 1]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(np.array(1, np.int64), "one"),
        ],
    )
    return _save(graph, path)


def strings_model(path: Path) -> Path:
    """A BYTES input: text STRING [batch] -> same (Identity), for the checks of BYTES requests."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch"])],
    )
    return _save(graph, path)


def write_card(version_dir: Path, name: str, *, labels: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A model card for the model.onnx in `version_dir`, with the fields the contract requires."""
    import onnxruntime as ort  # noqa: PLC0415 - only the card writer needs a session

    model_path = version_dir / "model.onnx"
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    types = {"tensor(float)": "FP32", "tensor(int64)": "INT64"}

    def tensors(args: Any) -> list[dict[str, Any]]:
        return [
            {"name": a.name, "datatype": types[a.type], "shape": [d if isinstance(d, int) else -1 for d in a.shape]}
            for a in args
        ]

    data = model_path.read_bytes()
    card: dict[str, Any] = {
        "schema": MODEL_CARD_SCHEMA,
        "name": name,
        "version": version_dir.name,
        "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "specHash": hashlib.sha256(name.encode()).hexdigest(),
        "dataFingerprint": None,
        "task": "classification" if labels else "other",
        "inputs": tensors(session.get_inputs()),
        "outputs": tensors(session.get_outputs()),
        "metrics": {"accuracy": 0.9, "sourceAccuracy": 0.9, "parityMaxAbsDiff": 0.0, "evaluatedOn": 100},
        "compression": {
            "requested": "none",
            "chosen": "fp32",
            "reason": "built by the tests",
            "maxAccuracyDrop": 0.01,
            "maxLatencyRatio": 1.5,
            "candidates": [],
        },
        "files": {"model.onnx": {"sizeBytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}},
        "libraries": {"onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__},
    }
    if labels is not None:
        card["labels"] = labels
    card.update(extra)
    (version_dir / "model.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
    return card
