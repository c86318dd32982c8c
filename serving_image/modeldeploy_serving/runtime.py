"""The model runtime: an onnxruntime session loaded from a model directory, its metadata, warm-up and predict()."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modeldeploy.contracts import MODEL_CARD_FILE, MODEL_FILE, ContractError, read_model_card
from modeldeploy_serving.codecs import DATATYPE_TO_NUMPY, ONNX_TO_DATATYPE
from modeldeploy_serving.errors import InferenceFailed, ModelLoadError
from modeldeploy_serving.types import Array, TensorMetadata

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True)
class ModelInfo:
    """What the server says about the model it serves."""

    name: str
    version: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]
    labels: tuple[str, ...] | None
    has_dynamic_batch: bool
    """Every input and output has a dynamic first dimension, so requests can be stacked along it."""


class OnnxModel:
    """One onnxruntime session. predict() is thread-safe (onnxruntime's run is) and runs every output."""

    def __init__(self, session: Any, info: ModelInfo) -> None:
        self._session = session
        self.info = info
        self._output_names = [t.name for t in info.outputs]

    @classmethod
    def load(cls, model_dir: Path, *, name: str | None, version: str | None, intra_op_threads: int) -> OnnxModel:
        """Open `model_dir` (a version directory, or any directory holding model.onnx); ModelLoadError says why not."""
        import onnxruntime as ort  # noqa: PLC0415 - heavy: imported when a model is loaded, never at import

        model_path = model_dir / MODEL_FILE
        if not model_dir.is_dir():
            raise ModelLoadError(f"model directory {model_dir} does not exist or is not a directory")
        if not model_path.is_file():
            raise ModelLoadError(f"{model_path} is missing: a model directory must hold {MODEL_FILE}")
        try:
            card = read_model_card(model_dir)
        except ContractError as err:
            raise ModelLoadError(str(err)) from err
        # The bytes onnxruntime loads are the bytes whose digest was checked: no window for the file to change.
        model_bytes = _read_verified(model_path, card)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Threads that spin after a run burn the core that the event loop needs to parse the next requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Memory patterns are planned per input shape: with dynamic batching every batch size would keep a plan and
        # a block of its own (about 20 MB more resident for a 0.1 GFLOP CNN at batch 32) for no measurable speed-up.
        # The arena stays on: without it every run maps and faults its buffers afresh (about 1.5x slower).
        options.enable_mem_pattern = False
        try:
            session = ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
        except _ort_errors() as err:
            raise ModelLoadError(f"onnxruntime cannot load {model_path}: {err}") from err
        del model_bytes
        inputs = tuple(_metadata(arg, "input") for arg in session.get_inputs())
        outputs = tuple(_metadata(arg, "output") for arg in session.get_outputs())
        if card is not None:
            _check_card(model_dir / MODEL_CARD_FILE, card, inputs, outputs)
        labels = _labels(card)
        info = ModelInfo(
            name=name or (str(card["name"]) if card and card.get("name") else model_dir.resolve().name),
            version=version or (str(card["version"]) if card and card.get("version") else "1"),
            inputs=inputs,
            outputs=outputs,
            labels=labels,
            has_dynamic_batch=all(t.shape and t.shape[0] == -1 for t in inputs + outputs),
        )
        return cls(session, info)

    def predict(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """Run the model on inputs that the data plane validated; every output comes back."""
        try:
            results = self._session.run(self._output_names, feeds)
        except _ort_errors() as err:
            raise InferenceFailed(f"onnxruntime failed: {err}") from err
        return dict(zip(self._output_names, results, strict=True))

    def example_feeds(self, batch: int) -> dict[str, Array]:
        """Zeros of every input's shape with dynamic dimensions set to `batch` (first) or 1 (others): for warm-up."""
        feeds: dict[str, Array] = {}
        for spec in self.info.inputs:
            shape = tuple((batch if i == 0 else 1) if dim == -1 else dim for i, dim in enumerate(spec.shape))
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(shape, "", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=DATATYPE_TO_NUMPY[spec.datatype])
        return feeds

    def warm_up(self, batch_sizes: tuple[int, ...]) -> float:
        """Run once per batch size so that the first client does not pay for allocations; returns seconds taken."""
        started = time.perf_counter()
        for batch in batch_sizes:
            try:
                self.predict(self.example_feeds(batch))
            except InferenceFailed as err:
                raise ModelLoadError(f"warm-up with batch size {batch} failed: {err.message}") from err
        return time.perf_counter() - started


def _read_verified(model_path: Path, card: dict[str, Any] | None) -> bytes:
    """model.onnx's bytes, checked against the size and sha256 the card records for it (a card always records
    them, docs/contracts/model-artifact.md); without a card, as they are. A mismatch means the file is not the
    model that was trained (a partial copy, a corrupted volume, a file swapped in): refuse to serve it."""
    card_path = model_path.parent / MODEL_CARD_FILE
    if card is None:
        return model_path.read_bytes()
    files = card.get("files")
    recorded = files.get(MODEL_FILE) if isinstance(files, dict) else None
    if (
        not isinstance(recorded, dict)
        or not isinstance(recorded.get("sha256"), str)
        or not isinstance(recorded.get("sizeBytes"), int)
    ):
        raise ModelLoadError(
            f"{card_path} records no size and sha256 for {MODEL_FILE} (files.{MODEL_FILE}.sizeBytes and .sha256): "
            f"the card cannot vouch for the model; fix the card, or remove it to serve {MODEL_FILE} unchecked"
        )
    size = model_path.stat().st_size
    if size != recorded["sizeBytes"]:
        raise ModelLoadError(
            f"{model_path} has {size} bytes but its card records {recorded['sizeBytes']}: the file is not the model "
            "that was trained (incomplete copy or replaced); restore it or retrain"
        )
    data = model_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != recorded["sha256"].lower():
        raise ModelLoadError(
            f"{model_path} has sha256 {digest} but its card records {recorded['sha256']}: the file is not the model "
            "that was trained (corrupted or replaced); restore it or retrain"
        )
    return data


def _ort_errors() -> tuple[type[Exception], ...]:
    """What onnxruntime raises: its own types (InvalidProtobuf, Fail, InvalidArgument, ...) derive from Exception
    only, and its Python layer raises RuntimeError, ValueError, TypeError and OSError."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state  # noqa: PLC0415 - loaded with onnxruntime

    own = [
        value
        for value in vars(state).values()
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == state.__name__
    ]
    return (*own, RuntimeError, ValueError, TypeError, OSError)


def _metadata(arg: Any, what: str) -> TensorMetadata:
    datatype = ONNX_TO_DATATYPE.get(str(arg.type))
    if datatype is None:
        raise ModelLoadError(f"{what} {arg.name!r} has type {arg.type}, which the Open Inference Protocol cannot carry")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in (arg.shape or []))
    return TensorMetadata(name=str(arg.name), datatype=datatype, shape=shape)


def _check_card(
    path: Path, card: dict[str, Any], inputs: tuple[TensorMetadata, ...], outputs: tuple[TensorMetadata, ...]
) -> None:
    """A card that names other tensors than the graph has describes another model: refuse it rather than guess."""
    for field, tensors in (("inputs", inputs), ("outputs", outputs)):
        listed = card.get(field)
        if listed is None:
            continue
        if not isinstance(listed, list) or not all(isinstance(t, dict) for t in listed):
            raise ModelLoadError(f"{path}: {field} must be a list of {{name, datatype, shape}} objects")
        names = sorted(str(t.get("name")) for t in listed)
        actual = sorted(t.name for t in tensors)
        if names != actual:
            raise ModelLoadError(f"{path}: {field} {names} do not match the ONNX graph's {actual}")


def _labels(card: dict[str, Any] | None) -> tuple[str, ...] | None:
    if not card or not isinstance(card.get("labels"), list):
        return None
    return tuple(str(label) for label in card["labels"])
