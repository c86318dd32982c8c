"""The gRPC adapter: `inference.GRPCInferenceService` (Open Inference Protocol V2) over the same data plane as REST."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import grpc
import numpy as np

from modeldeploy_serving import grpc_service_pb2 as pb
from modeldeploy_serving import grpc_service_pb2_grpc as pb_grpc
from modeldeploy_serving.admission import Admit, admit_any
from modeldeploy_serving.auth import TokenFile, grpc_auth_interceptor
from modeldeploy_serving.codecs import decode_raw, element_count, encode_raw, numpy_dtype
from modeldeploy_serving.dataplane import DataPlane
from modeldeploy_serving.errors import InvalidInput, Overloaded, ServingError
from modeldeploy_serving.types import Array, InferInput, InferRequest, InferResponse, RequestedOutput

log = logging.getLogger(__name__)

# Our errors carry HTTP statuses; these are the gRPC codes the protocol pairs with them.
_STATUS_TO_CODE: Final = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}

_DECODE_OFF_LOOP_BYTES: Final = 256 * 1024

# Which typed-contents field carries each datatype (FP16 has none: raw bytes only).
_CONTENTS_FIELD: Final = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _parameter(value: Any) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def _typed_contents(name: str, datatype: str, shape: tuple[int, ...], contents: Any) -> Array:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        numpy_dtype(datatype)  # an unknown datatype says so
        raise InvalidInput(f"input {name!r}: {datatype} can only be sent in raw_input_contents")
    values = getattr(contents, field)
    expected = element_count(shape)
    if len(values) != expected:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {expected} elements, {field} has {len(values)}")
    dtype = numpy_dtype(datatype)
    if datatype == "BYTES":
        array = np.empty(expected, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    wide = np.array(values)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidInput(f"input {name!r}: values out of range for {datatype} ({info.min}..{info.max})")
    return wide.astype(dtype).reshape(shape)


def decode_grpc_request(request: Any, admit: Admit = admit_any) -> InferRequest:
    """A ModelInferRequest as the typed request; raw_input_contents, when used, must cover every input in order.
    Each input is admitted (name, datatype, shape) before its contents are converted."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    inputs: list[InferInput] = []
    for i, tensor in enumerate(request.inputs):
        shape = admit(tensor.name, tensor.datatype, list(tensor.shape[:33]))  # more than 32 dims: refused
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {tensor.name!r}: contents and raw_input_contents are both set")
            data = decode_raw(tensor.name, tensor.datatype, shape, raw[i])
        else:
            data = _typed_contents(tensor.name, tensor.datatype, shape, tensor.contents)
        inputs.append(InferInput(tensor.name, tensor.datatype, shape, data))
    outputs: list[RequestedOutput] | None = None
    if request.outputs:
        outputs = []
        for wanted in request.outputs:
            classification = (
                _parameter(wanted.parameters["classification"]) if "classification" in wanted.parameters else 0
            )
            if isinstance(classification, bool) or not isinstance(classification, int):
                raise InvalidInput(f"output {wanted.name!r}: classification must be an int64 parameter")
            outputs.append(RequestedOutput(wanted.name, True, classification))
    parameters = {key: _parameter(value) for key, value in request.parameters.items()}
    return InferRequest(inputs, outputs, request.id or None, parameters, True)


def encode_grpc_response(response: InferResponse) -> Any:
    """The typed response as a ModelInferResponse with every output in raw_output_contents."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    for out in response.outputs:
        message.outputs.add(name=out.name, datatype=out.datatype, shape=list(out.shape))
        message.raw_output_contents.append(encode_raw(out.data))
    return message


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Each RPC delegates to the data plane; errors become the status code their HTTP status pairs with."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        # As on REST: large messages are converted off the event loop, one at a time.
        self._decode_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modeldeploy-grpc-decode")

    @staticmethod
    def _fail(context: Any, err: ServingError) -> None:
        if isinstance(err, Overloaded):
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
        else:
            code = _STATUS_TO_CODE.get(err.status, grpc.StatusCode.INTERNAL)
        context.set_code(code)
        context.set_details(err.message)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self._plane.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self._plane.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            return pb.ModelReadyResponse(ready=self._plane.model_ready(request.name, request.version or None))
        except ServingError as err:
            self._fail(context, err)
            return pb.ModelReadyResponse(ready=False)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**self._plane.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            meta = self._plane.model_metadata(request.name, request.version or None)
        except ServingError as err:
            self._fail(context, err)
            return pb.ModelMetadataResponse()
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        plane = self._plane
        expected = plane.expect()
        held = 0
        try:
            with plane.request_scope("grpc") as scope:
                try:
                    admit = plane.admission(request.model_name, request.model_version or None).tensor
                    size = request.ByteSize()
                    plane.budget.take(size)
                    held = size
                    if size > _DECODE_OFF_LOOP_BYTES:
                        loop = asyncio.get_running_loop()
                        decoded = await loop.run_in_executor(self._decode_pool, decode_grpc_request, request, admit)
                    else:
                        decoded = decode_grpc_request(request, admit)
                    handed, expected = expected, False
                    response = await plane.infer(
                        request.model_name, request.model_version or None, decoded, expected=handed
                    )
                except ServingError as err:
                    scope.failed(err)
                    self._fail(context, err)
                    return pb.ModelInferResponse()
                return encode_grpc_response(response)
        finally:
            if expected:
                plane.unexpect()
            plane.budget.give(held)


def build_grpc_server(plane: DataPlane, tokens: TokenFile | None = None) -> Any:
    """A grpc.aio server with the servicer on it (ports are added by the caller); with `tokens`, RPCs need a bearer
    token in their `authorization` metadata, except the health RPCs when REST's health paths are open."""
    limit = plane.settings.max_request_bytes
    interceptors = []
    if tokens is not None:
        open_paths = {p.strip() for p in plane.settings.auth_open_paths.split(",")}
        open_methods = frozenset(
            method
            for method, path in (("ServerLive", "/v2/health/live"), ("ServerReady", "/v2/health/ready"))
            if path in open_paths
        )
        interceptors.append(grpc_auth_interceptor(tokens, open_methods))
    server = grpc.aio.server(
        interceptors=interceptors,
        # Over this many RPCs at once, gRPC answers RESOURCE_EXHAUSTED itself.
        maximum_concurrent_rpcs=plane.settings.max_concurrent_requests,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), server)
    return server
