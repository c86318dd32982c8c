"""The REST adapter: Open Inference Protocol V2 (JSON and the binary tensor extension), TF-Serving :predict, /metrics.

Endpoints are short: read the body within the size limit, decode to the typed request, call the data plane, encode.
Every error leaves as {"error": "..."} with the status its type carries.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from modeldeploy_serving.admission import Admit, admit_any
from modeldeploy_serving.auth import TokenFile
from modeldeploy_serving.codecs import decode_json_data, decode_raw, encode_json_data, encode_raw
from modeldeploy_serving.dataplane import DataPlane
from modeldeploy_serving.errors import (
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    UnsupportedMediaType,
)
from modeldeploy_serving.types import InferInput, InferRequest, InferResponse, RequestedOutput

log = logging.getLogger(__name__)

HEADER_LENGTH: Final = "inference-header-content-length"
_JSON: Final = "application/json"
_ORJSON_OPTIONS: Final = orjson.OPT_SERIALIZE_NUMPY
# The V2 infer endpoint, matched before Starlette's router (see build_app); names as Starlette's {name} matches them.
_INFER_PATH: Final = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_JSON_HEADERS: Final = ((b"content-type", b"application/json"),)
_BINARY_HEADERS: Final = ((b"content-type", b"application/octet-stream"),)
# A body this large takes about a millisecond or more to decode (JSON): it is decoded off the event loop.
_DECODE_OFF_LOOP_BYTES: Final = 256 * 1024


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, option=_ORJSON_OPTIONS), status_code=status, media_type=_JSON, headers=headers)


def error_response(err: ServingError) -> Response:
    headers = {"Retry-After": str(err.retry_after)} if isinstance(err, Overloaded) else None
    return json_response({"error": err.message}, status=err.status, headers=headers)


# --- pure codec: the V2 JSON request/response with the binary extension -----------------------------------------


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
        _check_values(document.count(b",") + 1, max_values)


def _check_values(values: int, max_values: int) -> None:
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
    header = orjson.dumps(document, option=_ORJSON_OPTIONS)
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
    return orjson.dumps({"predictions": predictions}, option=_ORJSON_OPTIONS)


def _rows(array: Any) -> list[Any]:
    if array.dtype.kind in "OSU":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array.tolist()]
    return list(np.ascontiguousarray(array.astype(np.float32) if array.dtype == np.float16 else array))


# --- the ASGI application ---------------------------------------------------------------------------------------


def build_app(plane: DataPlane, tokens: TokenFile | None = None) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI application serving `plane` over HTTP: Starlette, with POST .../infer answered before its router.
    With `tokens`, every path but the settings' open paths needs `Authorization: Bearer <token>`."""
    limit = plane.settings.max_request_bytes
    open_paths = frozenset(p.strip() for p in plane.settings.auth_open_paths.split(",") if p.strip())

    async def read_body(request: Request) -> bytes:
        """The body, refusing (413) as soon as it is known to be over the limit, before buffering it whole."""
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise InvalidInput(f"Content-Length {declared!r} is not a number")
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes")
            return await request.body()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    budget = plane.budget
    body_timeout = plane.settings.body_timeout_seconds
    # Bodies larger than this are decoded on a worker thread: the event loop keeps answering health probes and
    # reading other requests meanwhile. One thread, so that decoding never holds more than one large body's objects.
    decode_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modeldeploy-decode")

    async def read_raw_body(
        receive: Receive, declared: str | None, held: list[int], max_values: int | None
    ) -> bytes | None:
        """read_body on the ASGI messages themselves; None when the client went away before sending it all. The
        bytes are taken from the server's budget (all at once when Content-Length says how many); `held` says how
        many this request holds, for the caller to give back. A JSON body is refused as soon as it holds more
        values than `max_values`, before the rest of it is read."""
        commas = 0
        if declared is not None:
            if not declared.isdigit():
                raise InvalidInput(f"Content-Length {declared!r} is not a number")
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes")
            budget.take(int(declared))
            held[0] = int(declared)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
                if size > held[0]:
                    budget.take(size - held[0])
                    held[0] = size
                if max_values is not None:
                    commas += chunk.count(b",")
                    _check_values(commas + 1, max_values)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def infer_asgi(scope: Scope, receive: Receive, send: Send, name: str, version: str | None) -> None:
        """POST .../infer as a bare ASGI handler: this endpoint carries the load, and Starlette's Request, Response,
        middleware and routing cost as much CPU as decoding a small model's request; with the server on one core
        that CPU is taken from inference. Same answers, statuses and errors as the other endpoints."""
        encoding = declared = header_value = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = value.decode("latin-1")
            elif key == b"inference-header-content-length":
                header_value = value.decode("latin-1")
            elif key == b"content-encoding":
                encoding = value.decode("latin-1")
        expected = plane.expect()
        held = [0]
        status = 200
        headers: tuple[tuple[bytes, bytes], ...] = _JSON_HEADERS
        try:
            with plane.request_scope("rest") as metric:
                try:
                    if encoding is not None and encoding.lower() != "identity":
                        raise UnsupportedMediaType(
                            f"Content-Encoding {encoding.lower()!r} is not supported; send the body uncompressed"
                        )
                    admission = plane.admission(name, version)  # 404 / 503 before the body is read
                    max_values = admission.max_json_values if header_value is None else None
                    try:
                        async with asyncio.timeout(body_timeout):  # no task per request, unlike wait_for
                            raw = await read_raw_body(receive, declared, held, max_values)
                    except TimeoutError:
                        raise RequestTimeout(
                            f"the request body did not arrive within {body_timeout:g} s; send it at once"
                        ) from None
                    if raw is None:
                        metric.code = "499"  # the client closed the connection; nobody reads an answer
                        return
                    if header_value is not None and not header_value.isdigit():
                        raise InvalidInput(f"Inference-Header-Content-Length {header_value!r} is not a number")
                    length = None if header_value is None else int(header_value)
                    if len(raw) > _DECODE_OFF_LOOP_BYTES:
                        loop = asyncio.get_running_loop()
                        decoded = await loop.run_in_executor(
                            decode_pool,
                            decode_infer_request,
                            raw,
                            length,
                            admission.tensor,
                            admission.max_json_values,
                        )
                    else:
                        decoded = decode_infer_request(raw, length, admission.tensor, admission.max_json_values)
                    del raw
                    handed, expected = expected, False
                    response = await plane.infer(name, version, decoded, expected=handed)
                    del decoded
                    body, json_length = encode_infer_response(response)
                    if json_length is not None:
                        headers = (*_BINARY_HEADERS, (b"inference-header-content-length", str(json_length).encode()))
                except ServingError as err:
                    metric.failed(err)
                    status, body = err.status, orjson.dumps({"error": err.message})
                    if isinstance(err, Overloaded):
                        headers = (*_JSON_HEADERS, (b"retry-after", str(err.retry_after).encode()))
                except Exception as exc:  # the same 500 as the other endpoints get from internal_error
                    metric.code = "500"
                    log.exception("unexpected error in POST %s", scope["path"], exc_info=exc)
                    status = 500
                    body = orjson.dumps({"error": f"internal error: {type(exc).__name__}: {exc}"})
        finally:
            if expected:
                plane.unexpect()
            budget.give(held[0])
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    class InferRoute:
        """The same handler behind Starlette's router (an ASGI app, not a function, so that Starlette passes the
        scope through): it answers other methods with 405 and requests that the fast match in `app` leaves to it."""

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            params = scope["path_params"]
            await infer_asgi(scope, receive, send, params["name"], params.get("version"))

    infer_route = InferRoute()

    async def predict(request: Request) -> Response:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        with plane.request_scope("rest") as scope:
            try:
                try:
                    async with asyncio.timeout(body_timeout):
                        body = await read_body(request)
                except TimeoutError:
                    raise RequestTimeout(
                        f"the request body did not arrive within {body_timeout:g} s; send it at once"
                    ) from None
                admission = plane.admission(name, version)
                info = plane.info
                specs = [(t.name, t.datatype) for t in info.inputs] if info is not None else []
                decoded = decode_predict_request(body, specs, admission.tensor, admission.max_json_values)
                response = await plane.infer(name, version, decoded)
            except ServingError as err:
                scope.failed(err)
                return error_response(err)
            return Response(encode_predict_response(response), media_type=_JSON)

    async def live(request: Request) -> Response:
        is_live = plane.live()
        return json_response({"live": is_live}, status=200 if is_live else 503)

    async def ready(request: Request) -> Response:
        is_ready = plane.ready()
        return json_response({"ready": is_ready}, status=200 if is_ready else 503)

    async def server_metadata(request: Request) -> Response:
        return json_response(plane.server_metadata())

    async def model_metadata(request: Request) -> Response:
        return json_response(plane.model_metadata(request.path_params["name"], request.path_params.get("version")))

    async def model_ready(request: Request) -> Response:
        is_ready = plane.model_ready(request.path_params["name"], request.path_params.get("version"))
        return json_response({"name": request.path_params["name"], "ready": is_ready}, status=200 if is_ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(plane.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def serving_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServingError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"no endpoint {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        return json_response({"error": message}, status=exc.status_code)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return json_response({"error": f"internal error: {type(exc).__name__}: {exc}"}, status=500)

    def route(path: str, endpoint: Callable[[Request], Awaitable[Response]], method: str = "GET") -> Route:
        return Route(path, endpoint, methods=[method])

    routes = [
        route("/v2/health/live", live),
        route("/v2/health/ready", ready),
        route("/v2", server_metadata),
        route("/v2/models/{name}", model_metadata),
        route("/v2/models/{name}/versions/{version}", model_metadata),
        route("/v2/models/{name}/ready", model_ready),
        route("/v2/models/{name}/versions/{version}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer_route, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer_route, methods=["POST"]),
        route("/v1/models/{name}:predict", predict, "POST"),
        route("/v1/models/{name}/versions/{version}:predict", predict, "POST"),
        route("/metrics", metrics),
    ]
    starlette = Starlette(
        routes=routes,
        exception_handlers={ServingError: serving_error, HTTPException: http_error, Exception: internal_error},
    )

    async def unauthorized(send: Send) -> None:
        body = orjson.dumps({"error": "missing or wrong bearer token: send the header Authorization: Bearer <token>"})
        headers = [*_JSON_HEADERS, (b"www-authenticate", b'Bearer realm="modeldeploy"')]
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if tokens is not None and scope["type"] == "http" and scope["path"] not in open_paths:
            authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            if not tokens.accepts(authorization):
                await unauthorized(send)  # before the body is read or anything else runs
                return
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            match = _INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                await infer_asgi(scope, receive, send, match[1], match[2])
                return
        await starlette(scope, receive, send)

    return app
