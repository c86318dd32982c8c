"""The REST bodies, pure: the Open Inference Protocol V2 JSON request/response (with the binary tensor extension)
and TF-Serving's `:predict`, to and from the typed requests of types.py. No I/O; the tensors' own data goes through
codecs.py."""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import orjson

from modeldeploy_serving.admission import Admit, admit_any
from modeldeploy_serving.codecs import decode_json_data, decode_raw, encode_json_data, encode_raw
from modeldeploy_serving.errors import InvalidInput
from modeldeploy_serving.types import InferInput, InferRequest, InferResponse, RequestedOutput

ORJSON_OPTIONS: Final = orjson.OPT_SERIALIZE_NUMPY


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def _parameters(value: Any, what: str) -> dict[str, Any]:
    return {} if value is None else _object(value, f"{what} 'parameters'")


def decode_infer_request(
    body: bytes, header_length: int | None, admit: Admit = admit_any, max_values: int | None = None
) -> InferRequest:
    """A V2 inference request from its body: JSON, or with the binary extension a JSON header then raw tensors.
    Each input is admitted (name, datatype, shape) before its data is decoded; a JSON part with more than
    `max_values` values is refused before it is parsed."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if not 0 < header_length <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length} does not fit a body of {len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    _check_value_count(header, max_values)
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as err:
        raise InvalidInput(f"the request body is not valid JSON: {err}") from None
    doc = _object(document, "the request body")
    params = _parameters(doc.get("parameters"), "the request")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    inputs: list[InferInput] = []
    offset = 0
    for i, item in enumerate(raw_inputs):
        tensor = _object(item, f"inputs[{i}]")
        name = tensor.get("name")
        datatype = tensor.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidInput(f"inputs[{i}] needs a string 'name' and a string 'datatype'")
        shape = admit(name, datatype, tensor.get("shape"))
        binary_size = _parameters(tensor.get("parameters"), f"input {name!r}").get("binary_data_size")
        if binary_size is not None:
            if isinstance(binary_size, bool) or not isinstance(binary_size, int) or binary_size < 0:
                raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative integer")
            if offset + binary_size > len(binary):
                raise InvalidInput(f"input {name!r}: binary_data_size {binary_size} runs past the end of the body")
            data = decode_raw(name, datatype, shape, binary[offset : offset + binary_size])
            offset += binary_size
        else:
            if "data" not in tensor:
                raise InvalidInput(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
            data = decode_json_data(name, datatype, shape, tensor["data"])
        inputs.append(InferInput(name, datatype, shape, data))
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data after the last input are not claimed")
    outputs: list[RequestedOutput] | None = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidInput("'outputs' must be a list of {name, parameters}")
        outputs = []
        for i, item in enumerate(raw_outputs):
            wanted = _object(item, f"outputs[{i}]")
            name = wanted.get("name")
            if not isinstance(name, str):
                raise InvalidInput(f"outputs[{i}] needs a string 'name'")
            oparams = _parameters(wanted.get("parameters"), f"output {name!r}")
            binary_flag = oparams.get("binary_data")
            if binary_flag is not None and not isinstance(binary_flag, bool):
                raise InvalidInput(f"output {name!r}: binary_data must be true or false")
            classification = oparams.get("classification", 0)
            if isinstance(classification, bool) or not isinstance(classification, int) or classification < 0:
                raise InvalidInput(f"output {name!r}: classification must be a non-negative integer")
            outputs.append(RequestedOutput(name, binary_flag, classification))
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidInput("parameter binary_data_output must be true or false")
    return InferRequest(inputs, outputs, request_id, params, binary_default)


def _check_value_count(document: bytes, max_values: int | None) -> None:
    """Every JSON value after the first follows a comma: counting commas (a C loop, about 1 ms per MiB) bounds the
    values, and so the memory that parsing would take, before the parser runs."""
    if max_values is not None:
        check_values(document.count(b",") + 1, max_values)


def check_values(values: int, max_values: int) -> None:
    """Refuse a JSON body of at least `values` values when the model takes at most `max_values` per request."""
    if values > max_values:
        raise InvalidInput(
            f"the JSON body holds at least {values} values; the model's inputs take at most {max_values} in one "
            "request (MODELDEPLOY_MAX_REQUEST_ROWS rows): send fewer rows per request"
        )


def encode_infer_response(response: InferResponse) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it (else None)."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in response.outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        if out.binary:
            blob = encode_raw(out.data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = encode_json_data(out.data)
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    header = orjson.dumps(document, option=ORJSON_OPTIONS)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def decode_predict_request(
    body: bytes, input_specs: list[tuple[str, str]], admit: Admit = admit_any, max_values: int | None = None
) -> InferRequest:
    """A TF-Serving `:predict` body ({"instances": [...]} row format or {"inputs": ...} columnar) as a V2 request."""
    _check_value_count(body, max_values)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise InvalidInput(f"the request body is not valid JSON: {err}") from None
    doc = _object(document, "the request body")
    names = [name for name, _ in input_specs]
    columns: dict[str, Any]
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidInput("'instances' must be a non-empty list")
        if all(isinstance(row, dict) for row in instances):
            columns = {name: [row.get(name) for row in instances] for name in names}
        elif len(names) == 1:
            columns = {names[0]: instances}
        else:
            raise InvalidInput(f"the model has inputs {names}: each instance must be an object naming them")
    elif "inputs" in doc:
        given = doc["inputs"]
        columns = dict(given) if isinstance(given, dict) else ({names[0]: given} if len(names) == 1 else {})
        if not columns:
            raise InvalidInput(f"'inputs' must be an object naming the model's inputs {names}")
    else:
        raise InvalidInput("a :predict body needs 'instances' (rows) or 'inputs' (columns)")
    inputs: list[InferInput] = []
    datatypes = dict(input_specs)
    for name, value in columns.items():
        datatype = datatypes.get(name)
        if datatype is None:
            raise InvalidInput(f"unknown input {name!r}; the model's inputs are {names}")
        shape = admit(name, datatype, _leading_shape(value))
        inputs.append(InferInput(name, datatype, shape, decode_json_data(name, datatype, shape, value)))
    return InferRequest(inputs)


def _leading_shape(value: Any) -> list[int]:
    """The shape of nested lists read along their first elements (decode_json_data checks the rest); not numpy's
    np.shape, which would convert the whole value before anything is admitted."""
    shape: list[int] = []
    while isinstance(value, list) and len(shape) <= 32:
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def encode_predict_response(response: InferResponse) -> bytes:
    """TF-Serving's answer: {"predictions": rows} for one output, rows of {output: value} for several."""
    if len(response.outputs) == 1:
        predictions: Any = _rows(response.outputs[0].data)
    else:
        per_output = {out.name: _rows(out.data) for out in response.outputs}
        count = len(next(iter(per_output.values())))
        predictions = [{name: rows[i] for name, rows in per_output.items()} for i in range(count)]
    return orjson.dumps({"predictions": predictions}, option=ORJSON_OPTIONS)


def _rows(array: Any) -> list[Any]:
    if array.dtype.kind in "OSU":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array.tolist()]
    return list(np.ascontiguousarray(array.astype(np.float32) if array.dtype == np.float16 else array))
