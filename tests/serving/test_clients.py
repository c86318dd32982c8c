"""Protocol conformance with the field's own clients: tritonclient over HTTP and gRPC against our server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from .conftest import ServerProcess
from .onnx_models import DIGIT_LABELS

CLIENTS = {"http": triton_http, "grpc": triton_grpc}


@pytest.fixture(params=["http", "grpc"])
def triton(request: pytest.FixtureRequest, server: ServerProcess) -> tuple[Any, Any]:
    module = CLIENTS[request.param]
    url = f"127.0.0.1:{server.http_port}" if request.param == "http" else server.grpc_target
    return module, module.InferenceServerClient(url)


def reference(models: dict[str, Path], x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(models["digits"] / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


def test_health_and_metadata(triton: tuple[Any, Any]) -> None:
    module, client = triton
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "v0123456789ab")
    meta = client.get_model_metadata("digits")
    if module is triton_grpc:
        inputs = [(t.name, t.datatype, list(t.shape)) for t in meta.inputs]
        name = meta.name
    else:
        inputs = [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]]
        name = meta["name"]
    assert name == "digits"
    assert inputs == [("input", "FP32", [-1, 8, 8, 1])]
    assert "binary_tensor_data" in str(client.get_server_metadata())


@pytest.mark.parametrize("binary", [True, False])
def test_infer_matches_onnxruntime(triton: tuple[Any, Any], models: dict[str, Path], binary: bool) -> None:
    module, client = triton
    x = np.random.default_rng(3).random((4, 8, 8, 1), dtype=np.float32)
    tensor = module.InferInput("input", list(x.shape), "FP32")
    if module is triton_http:
        tensor.set_data_from_numpy(x, binary_data=binary)
        wanted = module.InferRequestedOutput("probabilities", binary_data=binary)
    else:
        tensor.set_data_from_numpy(x)
        wanted = module.InferRequestedOutput("probabilities")
    result = client.infer("digits", [tensor], outputs=[wanted], request_id="abc-1")
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(models, x), rtol=1e-5)
    response = result.get_response()
    assert (response.id if module is triton_grpc else response["id"]) == "abc-1"


def test_classification_through_the_client(triton: tuple[Any, Any], models: dict[str, Path]) -> None:
    module, client = triton
    x = np.random.default_rng(4).random((2, 8, 8, 1), dtype=np.float32)
    tensor = module.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("digits", [tensor], outputs=[module.InferRequestedOutput("probabilities", class_count=3)])
    top = result.as_numpy("probabilities")
    assert top.shape == (2, 3)
    best = reference(models, x).argmax(axis=1)
    for row in range(2):
        _, index, label = top[row, 0].decode().split(":")
        assert int(index) == best[row]
        assert label == DIGIT_LABELS[best[row]]


def test_errors_reach_the_client_with_the_protocol_status(triton: tuple[Any, Any]) -> None:
    module, client = triton
    wrong = module.InferInput("input", [1, 8, 8, 2], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 8, 8, 2), np.float32))
    with pytest.raises(InferenceServerException) as bad_shape:
        client.infer("digits", [wrong])
    assert "the model needs [-1, 8, 8, 1]" in str(bad_shape.value)
    assert bad_shape.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    right = module.InferInput("input", [1, 8, 8, 1], "FP32")
    right.set_data_from_numpy(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("nope", [right])
    assert unknown.value.status() in ("404", "StatusCode.NOT_FOUND")
    assert client.is_server_ready()


def test_oversized_grpc_message_is_refused(server: ServerProcess) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    big = np.zeros((70_000, 8, 8, 1), np.float32)  # 17.9 MB, over the 16 MiB default
    tensor = triton_grpc.InferInput("input", list(big.shape), "FP32")
    tensor.set_data_from_numpy(big)
    with pytest.raises(InferenceServerException) as err:
        client.infer("digits", [tensor])
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_ready()
