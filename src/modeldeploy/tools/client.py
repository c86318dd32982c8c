"""A small Open Inference Protocol (V2 REST) client, and the input readers of `modeldeploy predict`.

Standard library and numpy only, so that it works wherever the `modeldeploy` package is installed; Pillow is needed
for image files only and is imported then.
"""

from __future__ import annotations

import contextlib
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

DEFAULT_URL: Final = "http://127.0.0.1:8080"
IMAGE_SUFFIXES: Final = frozenset({".png", ".jpg", ".jpeg"})
ARRAY_SUFFIXES: Final = frozenset({".npy", ".npz", ".json"})
NUMPY_TYPES: Final[dict[str, type[np.generic]]] = {
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
}


class PredictError(Exception):
    """A prediction could not be made; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    """-1 for a dynamic dimension, batch first."""


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class ClassScore:
    """One class of one row, as the server's classification extension reports it."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Endpoint:
    base: str
    model: str

    @property
    def model_path(self) -> str:
        return f"{self.base}/v2/models/{urllib.parse.quote(self.model, safe='')}"


def parse_endpoint(url: str, model: str | None) -> Endpoint:
    """`http://host:port` with a model name, or `http://host:port/v2/models/NAME` (the name is then taken from it)."""
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme not in {"http", "https"} or not parsed.netloc:
        raise PredictError(f"{url!r} is not an http(s) URL; give one like {DEFAULT_URL}")
    parts = [p for p in parsed.path.split("/") if p]
    from_path = parts[2] if len(parts) >= 3 and parts[:2] == ["v2", "models"] else None
    name = model or from_path
    if not name:
        raise PredictError(
            "which model? give --model NAME (the ModelDeployment's name) "
            f"or a URL like {url.rstrip('/')}/v2/models/NAME"
        )
    return Endpoint(f"{parsed.scheme}://{parsed.netloc}", name)


def http_json(method: str, url: str, body: Any = None, timeout: float = 30.0) -> dict[str, Any]:
    """One JSON request; an HTTP error becomes a PredictError carrying the server's own message."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")
        with contextlib.suppress(json.JSONDecodeError, AttributeError):  # not our server's JSON: show it as it is
            detail = str(json.loads(detail).get("error", detail))
        raise PredictError(f"{method} {url}: HTTP {err.code}: {detail.strip()[:500]}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise PredictError(
            f"{method} {url}: cannot connect ({reason}); is the server running, and is a port-forward open to it?"
        ) from err
    try:
        parsed = json.loads(payload or b"{}")
    except json.JSONDecodeError as err:
        raise PredictError(f"{method} {url}: the answer is not JSON; is it an Open Inference Protocol server?") from err
    return parsed if isinstance(parsed, dict) else {}


def is_ready(endpoint: Endpoint, timeout: float = 2.0) -> bool:
    """True once the server answers 200 on the model's readiness endpoint."""
    try:
        http_json("GET", f"{endpoint.model_path}/ready", timeout=timeout)
    except PredictError:
        return False
    return True


def _tensors(raw: Any) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"])) for t in (raw or []))


def model_metadata(endpoint: Endpoint) -> ModelMetadata:
    raw = http_json("GET", endpoint.model_path)
    versions = raw.get("versions") or ["1"]
    meta = ModelMetadata(
        str(raw.get("name", endpoint.model)),
        str(versions[0]),
        _tensors(raw.get("inputs")),
        _tensors(raw.get("outputs")),
    )
    if len(meta.inputs) != 1 or not meta.outputs:
        raise PredictError(
            f"model {meta.name} has {len(meta.inputs)} inputs and {len(meta.outputs)} outputs; this command sends one "
            "input and reads one output: send the request yourself (docs/serving-image.md shows how)"
        )
    return meta


def classify(endpoint: Endpoint, meta: ModelMetadata, batch: npt.NDArray[Any], top: int = 1) -> list[list[ClassScore]]:
    """Send `batch` as the model's input; per row the `top` classes, best first (the classification extension)."""
    spec = meta.inputs[0]
    output = meta.outputs[0].name
    body = {
        "inputs": [
            {"name": spec.name, "datatype": spec.datatype, "shape": list(batch.shape), "data": batch.ravel().tolist()}
        ],
        "outputs": [{"name": output, "parameters": {"classification": top}}],
    }
    answer = http_json("POST", f"{endpoint.model_path}/infer", body)
    outputs = {o.get("name"): o for o in answer.get("outputs") or []}
    if output not in outputs:
        raise PredictError(f"the server's answer has no output {output!r}: {json.dumps(answer)[:300]}")
    texts = [str(v) for v in outputs[output]["data"]]
    per_row = max(1, len(texts) // max(1, batch.shape[0]))
    rows: list[list[ClassScore]] = []
    for start in range(0, len(texts), per_row):
        row = []
        for text in texts[start : start + per_row]:
            score, index, *label = text.split(":", 2)
            row.append(ClassScore(int(index), label[0] if label else index, float(score)))
        rows.append(row)
    return rows


# -- inputs --


def fit_input(array: npt.NDArray[Any], spec: TensorSpec, source: str) -> npt.NDArray[Any]:
    """Add the batch dimension when a single sample was given, or reshape flat rows; cast to the model's type."""
    if spec.datatype not in NUMPY_TYPES:
        raise PredictError(f"the model's input {spec.name} is {spec.datatype}; this command sends numeric tensors only")
    wanted = spec.shape
    row = wanted[1:]
    if array.ndim == len(wanted) - 1 and _matches(array.shape, row):
        array = array[np.newaxis, ...]
    elif array.ndim != len(wanted) or not _matches(array.shape[1:], row):
        per_row = math.prod(row) if row and all(d > 0 for d in row) else 0
        if per_row and array.size % per_row == 0 and array.size:
            array = array.reshape((-1, *row))
        else:
            raise PredictError(
                f"{source}: an array of shape {list(array.shape)} does not fit the model's input {spec.name} of shape "
                f"{list(wanted)} (-1: any); give one sample of shape {list(row)} or a batch of them"
            )
    return np.ascontiguousarray(array.astype(NUMPY_TYPES[spec.datatype], copy=False))


def _matches(shape: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    return len(shape) == len(wanted) and all(w in (-1, s) for s, w in zip(shape, wanted, strict=True))


def load_array(path: Path, spec: TensorSpec) -> npt.NDArray[Any]:
    """An .npy, an .npz (array `x`, or its only array) or a .json (a nested list, or an object with `x`/`data`)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                key = "x" if "x" in names else (names[0] if len(names) == 1 else None)
                if key is None:
                    raise PredictError(f"{path} holds arrays {names}; name the input array `x`")
                array = archive[key]
        else:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(raw, dict):
                raw = raw.get("x", raw.get("data"))
            if raw is None:
                raise PredictError(f"{path}: give a JSON list (one sample or a batch), or an object with `x`")
            array = np.asarray(raw, dtype=np.float64)
    except (OSError, ValueError) as err:
        raise PredictError(f"cannot read {path}: {err}") from err
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise PredictError(f"{path}: the array holds {array.dtype} values; give numbers")
    return fit_input(array, spec, str(path))


def image_layout(spec: TensorSpec) -> tuple[int, int, int, str]:
    """(height, width, channels, layout) of an image input: NHWC, NCHW or NHW with 1 or 3 channels."""
    dims = spec.shape[1:]
    if len(dims) == 3 and dims[2] in (1, 3) and dims[0] > 0 and dims[1] > 0:
        return dims[0], dims[1], dims[2], "NHWC"
    if len(dims) == 3 and dims[0] in (1, 3) and dims[1] > 0 and dims[2] > 0:
        return dims[1], dims[2], dims[0], "NCHW"
    if len(dims) == 2 and all(d > 0 for d in dims):
        return dims[0], dims[1], 1, "NHW"
    raise PredictError(
        f"the model's input {spec.name} of shape {list(spec.shape)} is not an image of fixed size; "
        "send an array file (.npy, .npz, .json) instead"
    )


def load_image(
    path: Path, spec: TensorSpec, preprocessing: dict[str, Any] | None, invert: bool | None = None
) -> npt.NDArray[Any]:
    """A PNG or JPEG resized to the model's input and brought to the value range the model was trained on.

    The card's `preprocessing.scale` says that the model saw raw values times `scale`, the raw values ranging over
    0 .. 1/scale (0..16 for digits, 0..255 for image folders), so the model's range is 0..1 either way; without a
    card the built-in recipes' 0..1 is assumed too. `invert` turns dark-on-light into light-on-dark (what digits
    were trained on); None decides by the mean brightness.
    """
    try:
        from PIL import Image, UnidentifiedImageError  # noqa: PLC0415  (only for image files)
    except ImportError as err:
        raise PredictError("reading images needs Pillow: pip install pillow (or send an .npy/.json array)") from err
    unknown = sorted(set(preprocessing or {}) - {"scale"})
    if unknown:
        raise PredictError(
            f"the model card asks for preprocessing {unknown} that this command does not apply; "
            "preprocess the image yourself and send an .npy array"
        )
    height, width, channels, layout = image_layout(spec)
    try:
        with Image.open(path) as img:
            # BOX averages whole source pixels: downscaling to 8x8 then resembles how the digits were made.
            resized = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BOX)
            pixels = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    except (OSError, UnidentifiedImageError) as err:
        raise PredictError(f"cannot read the image {path}: {err}") from err
    if invert is None:
        invert = float(pixels.mean()) > 0.5
    if invert:
        pixels = 1.0 - pixels
    # Raw values span 0 .. 1/scale and the image's 0..255 maps onto that span, so raw * scale is pixels / 255.
    values = pixels
    if pixels.ndim == 2:
        values = values[:, :, np.newaxis]
    if layout == "NCHW":
        values = np.transpose(values, (2, 0, 1))
    elif layout == "NHW":
        values = values[:, :, 0]
    return fit_input(values, spec, str(path))


def load_input(
    path: Path, spec: TensorSpec, preprocessing: dict[str, Any] | None = None, invert: bool | None = None
) -> npt.NDArray[Any]:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise PredictError(f"{path} does not exist or is not a file")
    if suffix in IMAGE_SUFFIXES:
        return load_image(path, spec, preprocessing, invert)
    if suffix in ARRAY_SUFFIXES:
        return load_array(path, spec)
    raise PredictError(f"{path}: give a .png, .jpg or .jpeg image, or an .npy, .npz or .json array")


def format_row(row: list[ClassScore]) -> str:
    best, *others = row
    text = f"{best.label} (probability {best.probability:.3f})"
    if others:
        text += "; then " + ", ".join(f"{c.label} ({c.probability:.3f})" for c in others)
    return text
