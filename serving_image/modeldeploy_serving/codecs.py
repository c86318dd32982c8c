"""Pure conversions between the protocol's tensors (JSON lists, raw bytes) and numpy arrays; no I/O, no model."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from modeldeploy_serving.errors import InvalidInput
from modeldeploy_serving.types import Array

# The protocol's datatype names and the numpy dtypes that hold them (BYTES as an object array of bytes).
DATATYPE_TO_NUMPY: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

# onnxruntime's type strings -> the protocol's datatypes.
ONNX_TO_DATATYPE: Final[dict[str, str]] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# numpy's dtype kinds a JSON list may decode to for each family of datatypes (ints are valid for floats, not back).
_ALLOWED_KINDS: Final[dict[str, str]] = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}
_MAX_RANK: Final = 32
_LENGTH: Final = struct.Struct("<I")


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    try:
        return DATATYPE_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInput(f"unknown datatype {datatype!r}; one of {', '.join(DATATYPE_TO_NUMPY)}") from None


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A request's shape as a tuple of non-negative ints, or InvalidInput saying what is wrong with it."""
    if not isinstance(shape, (list, tuple)) or len(shape) > _MAX_RANK:
        raise InvalidInput(f"input {name!r}: shape must be a list of at most {_MAX_RANK} non-negative integers")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise InvalidInput(f"input {name!r}: shape {list(shape)} must hold non-negative integers only")
    return tuple(shape)


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def decode_json_data(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> Array:
    """The `data` of a JSON input (flat or nested, row-major) as an array of `datatype` and `shape`."""
    dtype = numpy_dtype(datatype)
    expected = element_count(shape)
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten(name, data, expected)
        values = np.empty(len(flat), dtype=object)
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise InvalidInput(f"input {name!r}: BYTES data must be strings, got {type(item).__name__}")
            values[i] = item.encode("utf-8")
        return values.reshape(shape)
    _check_layout(name, data, shape, expected)
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as err:
        raise InvalidInput(f"input {name!r}: data is not a rectangular list of numbers ({err})") from None
    if raw.size != expected:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {expected} elements, data has {raw.size}")
    if raw.size and raw.dtype.kind not in _ALLOWED_KINDS[dtype.kind]:
        what = "numbers" if raw.dtype.kind in "OUS" else f"{raw.dtype.kind!r}-kind values"
        raise InvalidInput(f"input {name!r}: data for {datatype} must be {_describe(dtype)}, got {what}")
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise InvalidInput(f"input {name!r}: values out of range for {datatype} ({info.min}..{info.max})")
    return raw.astype(dtype, copy=False).reshape(shape)


def _check_layout(name: str, data: list[Any], shape: tuple[int, ...], expected: int) -> None:
    """Before numpy converts the data: a flat list must have the shape's element count, a nested one the shape's
    lengths along its first elements (numpy refuses ragged rest), so that a list of 10^6 values for a 64-value
    input is refused without being converted."""
    if not data or not isinstance(data[0], list):
        if len(data) != expected:
            raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {expected} elements, data has {len(data)}")
        return
    item: Any = data
    for dim in shape:
        if not isinstance(item, list) or len(item) != dim:
            break
        item = item[0] if item else None
    else:
        if not isinstance(item, list):
            return
    raise InvalidInput(
        f"input {name!r}: data must be a flat list of {expected} values or lists nested as the shape {list(shape)}"
    )


def _describe(dtype: np.dtype[Any]) -> str:
    return {"b": "true/false", "u": "integers", "i": "integers", "f": "numbers"}[dtype.kind]


def _flatten(name: str, data: list[Any], limit: int) -> list[Any]:
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > _MAX_RANK:
                    raise InvalidInput(f"input {name!r}: data is nested deeper than {_MAX_RANK} levels")
                stack.append(iter(item))
                break
            flat.append(item)
            if len(flat) > limit:
                raise InvalidInput(f"input {name!r}: data has more elements than its shape's {limit}")
        else:
            stack.pop()
    if len(flat) != limit:
        raise InvalidInput(f"input {name!r}: shape needs {limit} elements, data has {len(flat)}")
    return flat


def decode_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview) -> Array:
    """A tensor sent as raw bytes (the binary extension, gRPC raw_input_contents): little-endian, row-major."""
    dtype = numpy_dtype(datatype)
    expected = element_count(shape)
    if datatype == "BYTES":
        return decode_bytes_elements(name, raw, expected).reshape(shape)
    size = expected * dtype.itemsize
    if len(raw) != size:
        raise InvalidInput(
            f"input {name!r}: {datatype} shape {list(shape)} needs {size} bytes of binary data, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)


def decode_bytes_elements(name: str, raw: bytes | memoryview, expected: int) -> Array:
    """BYTES elements each as a 4-byte little-endian length and that many bytes."""
    view = memoryview(raw)
    if expected * _LENGTH.size > len(view):  # before the array of `expected` objects exists
        raise InvalidInput(
            f"input {name!r}: {expected} BYTES elements need at least {expected * _LENGTH.size} bytes of binary data "
            f"(a 4-byte length each), got {len(view)}"
        )
    values = np.empty(expected, dtype=object)
    offset = 0
    for i in range(expected):
        if offset + 4 > len(view):
            raise InvalidInput(f"input {name!r}: binary BYTES data ends after {i} of {expected} elements")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"input {name!r}: binary BYTES element {i} claims {length} bytes past the end")
        values[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(f"input {name!r}: {len(view) - offset} bytes left over after {expected} BYTES elements")
    return values


def encode_raw(array: Array) -> bytes:
    """An output tensor as raw bytes, the inverse of decode_raw."""
    if array.dtype.kind in "OSU":
        parts: list[bytes] = []
        for item in array.ravel():
            value = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(_LENGTH.pack(len(value)))
            parts.append(value)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def encode_json_data(array: Array) -> Any:
    """An output tensor's `data` for JSON: flat, row-major. Numeric arrays go to orjson as they are (it writes them
    natively and fast); BYTES become UTF-8 strings."""
    if array.dtype.kind in "OSU":
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in array.ravel()]
    if array.dtype == np.float16:
        return array.astype(np.float32).ravel()
    return np.ascontiguousarray(array).ravel()


def classify(scores: Array, k: int, labels: Sequence[str] | None) -> Array:
    """The classification extension: per row the top-k classes as "score:index[:label]" strings, best first."""
    if scores.ndim == 0:
        raise InvalidInput("classification needs an output with a class dimension")
    rows = scores.reshape(scores.shape[0], -1) if scores.ndim > 1 else scores.reshape(1, -1)
    k = min(k, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    result = np.empty((rows.shape[0], k), dtype=object)
    for r in range(rows.shape[0]):
        for c, index in enumerate(order[r]):
            text = f"{float(rows[r, index]):g}:{int(index)}"
            if labels is not None and int(index) < len(labels):
                text += f":{labels[int(index)]}"
            result[r, c] = text.encode("utf-8")
    return result if scores.ndim > 1 else result.reshape(k)
