"""Everything that touches TensorFlow: the built-in recipes, training, loading a user's Keras or SavedModel model,
and the conversion to ONNX. Imported only when a run needs it (`import tensorflow` costs seconds and 700 MB)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf
import tf2onnx

from modeldeploy_training import onnxutil
from modeldeploy_training.data import Split
from modeldeploy_training.errors import InvalidModel, InvalidSpec

log = logging.getLogger(__name__)

Predict = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


@dataclass
class SourceModel:
    """A model before conversion: its ONNX (fp32) form, how to run it for parity, and how to keep a copy."""

    onnx_model: Any
    predict: Predict | None  # None when the source is ONNX itself (parity is then exact by construction)
    save_source: Callable[[Path], None]
    # A fresh tf.lite.TFLiteConverter for the same model (spec.compression.formats with tflite).
    tflite_converter: Callable[[], Any] | None = None


def prepare_inputs(recipe: str, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The recipe's view of the features: cnn wants (N, H, W, C) images, mlp takes any shape."""
    if recipe == "cnn":
        if x.ndim == 3:
            return x[..., None]
        if x.ndim != 4:
            raise InvalidSpec(
                f"recipe cnn needs images (N, height, width[, channels]); the data has shape {x.shape}: use recipe mlp"
            )
        if min(x.shape[1:3]) < 3:
            raise InvalidSpec(f"recipe cnn needs images of at least 3x3 pixels, got {x.shape[1]}x{x.shape[2]}")
    return x


def build_model(recipe: str, x_train: npt.NDArray[np.float32], num_classes: int, learning_rate: float) -> Any:
    """The classic Keras CNN (Conv2D -> Flatten -> Dense softmax) or a small MLP with normalisation in the graph."""
    if recipe == "cnn":
        layers: list[Any] = [keras.Input(x_train.shape[1:]), keras.layers.Conv2D(32, 3, activation="relu")]
        # Larger images would make the Dense layer huge after Flatten; pooling keeps it small.
        size = min(x_train.shape[1:3]) - 2
        while size >= 16:
            layers.append(keras.layers.MaxPooling2D(2))
            size //= 2
        layers += [keras.layers.Flatten(), keras.layers.Dense(num_classes, activation="softmax")]
    elif recipe == "mlp":
        # Tabular features come in any scale; standardising inside the model means clients send raw values. The
        # statistics are baked in as constants (Rescaling): a Normalization layer's variables would become extra
        # graph inputs in the ONNX export.
        flat = x_train.reshape(len(x_train), -1).astype(np.float64)
        std = np.maximum(flat.std(axis=0), 1e-6)
        layers = [
            keras.Input(x_train.shape[1:]),
            keras.layers.Flatten(),
            keras.layers.Rescaling(
                scale=(1.0 / std).astype(np.float32), offset=(-flat.mean(axis=0) / std).astype(np.float32)
            ),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(num_classes, activation="softmax"),
        ]
    else:
        raise InvalidSpec(f"recipe {recipe!r} is not built in; use cnn, mlp or custom (with spec.training.image)")
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


class _EpochLog(keras.callbacks.Callback):  # type: ignore[misc]  # Keras has no type hints
    """Progress in the logs, one line per epoch (the pod's log is where an operator looks)."""

    def __init__(self, epochs: int, steps: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.steps = steps
        self.history: list[dict[str, float]] = []
        self._start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        values = {k: round(float(v), 5) for k, v in (logs or {}).items()}
        self.history.append({"epoch": epoch + 1, **values})
        log.info(
            "epoch %d/%d (%d steps): loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f (%.1f s)",
            epoch + 1,
            self.epochs,
            self.steps,
            values.get("loss", float("nan")),
            values.get("accuracy", float("nan")),
            values.get("val_loss", float("nan")),
            values.get("val_accuracy", float("nan")),
            time.monotonic() - self._start,
        )


def train(model: Any, split: Split, epochs: int, batch_size: int, seed: int) -> list[dict[str, float]]:
    """Fit the model; returns the per-epoch history for the model card."""
    steps = -(-len(split.x_train) // batch_size)
    callback = _EpochLog(epochs, steps)
    log.info("training %d samples, %d epochs of %d steps, batch %d", len(split.x_train), epochs, steps, batch_size)
    model.fit(
        split.x_train,
        split.y_train,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=(split.x_test, split.y_test),
        shuffle=True,
        verbose=0,
        callbacks=[callback],
    )
    return callback.history


def set_seed(seed: int) -> None:
    """Same spec, same data, same weights: seeded and with deterministic kernels."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def keras_predict(model: Any) -> Predict:
    def predict(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.asarray(model.predict(x, batch_size=256, verbose=0), dtype=np.float32)

    return predict


def keras_to_onnx(model: Any, opset: int) -> Any:
    """A single-input Keras model as ONNX with the input named `input`, the output `probabilities` (a single 2-D
    output) or `output_<i>`, and the batch dimension named `batch`.

    tf2onnx's from_keras fails on Keras 3 models, so the model is wrapped in a tf.function with a named signature.
    """
    if len(model.inputs) != 1:
        raise InvalidModel(
            f"the model has {len(model.inputs)} inputs; only single-input Keras models are converted: "
            "export it to ONNX yourself and import the .onnx"
        )
    shape = tuple(model.inputs[0].shape[1:])
    spec = tf.TensorSpec((None, *shape), tf.float32, name="input")
    outputs = list(model.outputs)
    names = ["probabilities"] if len(outputs) == 1 and len(outputs[0].shape) == 2 else _output_names(len(outputs))

    @tf.function(input_signature=[spec])  # type: ignore[untyped-decorator]
    def serve(x: Any) -> dict[str, Any]:
        result = model(x, training=False)
        values = result if isinstance(result, list | tuple) else [result]
        return dict(zip(names, values, strict=True))

    return _convert(serve, opset)


def _output_names(n: int) -> list[str]:
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def _convert(function: Any, opset: int) -> Any:
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=opset)
    except Exception as err:  # tf2onnx raises bare Exceptions and ValueErrors for unsupported ops
        raise InvalidModel(f"the model cannot be converted to ONNX (opset {opset}): {err}") from err
    onnxutil.name_batch_dimension(proto)
    return proto


def load_keras(path: Path, opset: int) -> SourceModel:
    """A .keras or .h5 file: loaded without its optimizer (inference only)."""
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises ValueError, OSError, KeyError... for a bad file
        raise InvalidModel(f"{path} is not a loadable Keras model ({type(err).__name__}: {err})") from err
    target = "model.h5" if path.suffix.lower() in {".h5", ".hdf5"} else "model.keras"
    return SourceModel(
        onnx_model=keras_to_onnx(model, opset),
        predict=keras_predict(model),
        save_source=lambda dest: _copy(shutil.copyfile, path, dest / target),
        tflite_converter=keras_tflite_converter(model),
    )


def load_saved_model(path: Path, opset: int) -> SourceModel:
    """A TensorFlow SavedModel directory, through its serving_default signature."""
    try:
        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]
    except KeyError:
        raise InvalidModel(f"{path} has no serving_default signature; save it with one") from None
    except Exception as err:  # TensorFlow raises OSError, ValueError, its own errors for a bad directory
        raise InvalidModel(f"{path} is not a loadable SavedModel ({type(err).__name__}: {err})") from err
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise InvalidModel(f"{path}: the signature has {len(inputs)} inputs; only single-input models are converted")
    ((input_key, input_spec),) = inputs.items()
    output_keys = sorted(signature.structured_outputs)
    single_2d = len(output_keys) == 1 and len(signature.structured_outputs[output_keys[0]].shape) == 2
    names = ["probabilities"] if single_2d else _output_names(len(output_keys))
    spec = tf.TensorSpec((None, *input_spec.shape[1:]), input_spec.dtype, name="input")

    @tf.function(input_signature=[spec])  # type: ignore[untyped-decorator]
    def serve(x: Any) -> dict[str, Any]:
        result = signature(**{input_key: x})
        return {name: result[key] for name, key in zip(names, output_keys, strict=True)}

    def predict(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        parts = [serve(tf.constant(x[i : i + 256], dtype=input_spec.dtype))[names[0]] for i in range(0, len(x), 256)]
        return np.concatenate([np.asarray(p) for p in parts]).astype(np.float32)

    return SourceModel(
        onnx_model=_convert(serve, opset),
        predict=predict,
        save_source=lambda dest: _copy(shutil.copytree, path, dest / "saved_model"),
        tflite_converter=lambda: tf.lite.TFLiteConverter.from_saved_model(
            str(path), signature_keys=["serving_default"]
        ),
    )


def keras_tflite_converter(model: Any) -> Callable[[], Any]:
    """TensorFlow's converter on the Keras model itself (from a tf.function, it keeps the weights as variables that
    its calibration cannot read)."""
    return lambda: tf.lite.TFLiteConverter.from_keras_model(model)


def _copy(copier: Callable[[Path, Path], Any], src: Path, dest: Path) -> None:
    copier(src, dest)


def save_keras(model: Any) -> Callable[[Path], None]:
    return lambda dest: model.save(dest / "model.keras")
