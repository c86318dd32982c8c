"""Small helpers on ONNX graphs and onnxruntime sessions shared by export, compression and the model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

BATCH_DIM = "batch"

# ONNX TensorProto element types -> the Open Inference Protocol's datatype names.
_OIP_DATATYPES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
    16: "BF16",
}


def name_batch_dimension(model: Any) -> None:
    """Rename the symbolic first dimension of every graph input and output (tf2onnx calls it `unk__N`) to `batch`,
    in place, and everywhere else in the graph where the same symbol appears, so the shapes stay consistent."""
    renames: dict[str, str] = {}
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            if dims[0].dim_param:
                renames[dims[0].dim_param] = BATCH_DIM
            dims[0].dim_param = BATCH_DIM
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def tensor_descriptions(model: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The card's `inputs` and `outputs`: name, OIP datatype and shape (-1 for a dynamic dimension)."""

    def describe(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        return {"name": value.name, "datatype": _OIP_DATATYPES.get(tensor.elem_type, "BYTES"), "shape": shape}

    initializers = {i.name for i in model.graph.initializer}
    inputs = [describe(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [describe(v) for v in model.graph.output]


def opset_of(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def session(path: Path | bytes, threads: int = 1) -> Any:
    """An onnxruntime session with a fixed thread count: the default is noisy on a shared 2-core machine."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    source = str(path) if isinstance(path, Path) else path
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def input_batch(sess: Any) -> int | None:
    """The fixed batch size of a session's input, None when the batch dimension is dynamic."""
    first = sess.get_inputs()[0].shape[0] if sess.get_inputs()[0].shape else None
    return first if isinstance(first, int) and first > 0 else None


_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def run_batched(sess: Any, x: npt.NDArray[Any], batch: int = 256) -> npt.NDArray[Any]:
    """The first output for all rows of x, fed in chunks (of the model's fixed batch size when it has one)."""
    inp = sess.get_inputs()[0]
    dtype = _NP_TYPES.get(inp.type, np.float32)
    fixed = input_batch(sess)
    step = fixed or batch
    outputs = []
    for start in range(0, len(x), step):
        chunk = x[start : start + step].astype(dtype)
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
        outputs.append(np.asarray(sess.run(None, {inp.name: chunk})[0])[:n])
    return np.concatenate(outputs).astype(np.float32)
