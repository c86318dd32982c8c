"""The REST endpoints as a client sees them: Open Inference Protocol V2, TF-Serving :predict, errors, metrics."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from modeldeploy_serving.dataplane import DataPlane
from modeldeploy_serving.rest import RestApp
from modeldeploy_serving.settings import Settings
from starlette.types import Message, Receive

from .conftest import ServerProcess, start_server
from .onnx_models import DIGIT_LABELS, digits_cnn


def reference(model_dir: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


def digits_input(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 8, 8, 1), dtype=np.float32)


def infer_body(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
        **extra,
    }


def test_health_and_server_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "modeldeploy"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_comes_from_the_graph_and_card(client: httpx.Client) -> None:
    for path in ("/v2/models/digits", "/v2/models/digits/versions/v0123456789ab"):
        meta = client.get(path).json()
        assert meta["name"] == "digits"
        assert meta["versions"] == ["v0123456789ab"]
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8, 8, 1]}]
        assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get("/v2/models/digits/ready").status_code == 200


def test_infer_json_matches_onnxruntime_and_echoes_the_id(client: httpx.Client, models: dict[str, Path]) -> None:
    x = digits_input(3)
    response = client.post("/v2/models/digits/versions/v0123456789ab/infer", json=infer_body(x, id="req-7"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-7"
    assert body["model_name"] == "digits"
    (out,) = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("probabilities", "FP32", [3, 10])
    np.testing.assert_allclose(np.array(out["data"]).reshape(3, 10), reference(models["digits"], x), rtol=1e-5)


def test_nested_data_is_accepted_like_flat_data(client: httpx.Client) -> None:
    x = digits_input(2)
    flat = client.post("/v2/models/digits/infer", json=infer_body(x)).json()
    nested_body = infer_body(x)
    nested_body["inputs"][0]["data"] = x.tolist()
    nested = client.post("/v2/models/digits/infer", json=nested_body).json()
    assert nested["outputs"][0]["data"] == flat["outputs"][0]["data"]


def test_binary_tensor_extension_in_and_out(client: httpx.Client, models: dict[str, Path]) -> None:
    x = digits_input(2)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [2, 8, 8, 1],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = client.post(
        "/v2/models/digits/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    json_length = int(response.headers["Inference-Header-Content-Length"])
    meta = json.loads(response.content[:json_length])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 2 * 10 * 4
    result = np.frombuffer(response.content[json_length:], dtype=np.float32).reshape(2, 10)
    np.testing.assert_allclose(result, reference(models["digits"], x), rtol=1e-5)


def test_classification_extension_uses_the_card_labels(client: httpx.Client, models: dict[str, Path]) -> None:
    x = digits_input(2)
    body = infer_body(x, outputs=[{"name": "probabilities", "parameters": {"classification": 2}}])
    out = client.post("/v2/models/digits/infer", json=body).json()["outputs"][0]
    assert (out["datatype"], out["shape"]) == ("BYTES", [2, 2])
    expected = reference(models["digits"], x)
    best = expected.argmax(axis=1)
    for row in range(2):
        score, index, label = out["data"][row * 2].split(":")
        assert int(index) == best[row]
        assert label == DIGIT_LABELS[best[row]]
        assert float(score) == pytest.approx(expected[row, best[row]], rel=1e-4)


def test_tf_serving_predict(client: httpx.Client, models: dict[str, Path]) -> None:
    x = digits_input(2)
    response = client.post("/v1/models/digits:predict", json={"instances": x.tolist()})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json()["predictions"]), reference(models["digits"], x), rtol=1e-5)


def test_several_inputs_and_requested_outputs(models: dict[str, Path]) -> None:
    server = start_server(models["two"], "--grpc-port", "0")
    try:
        body = {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
                {"name": "k", "datatype": "INT64", "shape": [2, 1], "data": [10, 20]},
            ],
            "outputs": [{"name": "s"}],
        }
        response = httpx.post(f"{server.url}/v2/models/two/infer", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"] == [{"name": "s", "datatype": "INT64", "shape": [2, 1], "data": [11, 21]}]
        body["inputs"][1]["data"] = [10.5, 20]  # a float where INT64 is declared is the client's mistake
        bad = httpx.post(f"{server.url}/v2/models/two/infer", json=body)
        assert bad.status_code == 400
        assert "INT64 must be integers" in bad.json()["error"]
    finally:
        assert server.stop() == 0


def test_a_directory_with_only_model_onnx_serves(models: dict[str, Path]) -> None:
    server = start_server(models["bare"], "--grpc-port", "0")
    try:
        meta = httpx.get(f"{server.url}/v2/models/bare-model").json()
        assert meta["versions"] == ["1"]
        assert meta["inputs"][0]["shape"] == [-1, 8, 8, 1]
        x = digits_input(1)
        response = httpx.post(f"{server.url}/v2/models/bare-model/versions/1/infer", json=infer_body(x))
        assert response.status_code == 200, response.text
    finally:
        server.stop()


def test_a_model_without_dynamic_batch_serves_unbatched(models: dict[str, Path]) -> None:
    server = start_server(models["fixed"], "--grpc-port", "0", "--model-name", "fixed")
    try:
        assert "dynamic batching off" in server.log
        x = digits_input(1)
        ok = httpx.post(f"{server.url}/v2/models/fixed/infer", json=infer_body(x))
        assert ok.status_code == 200
        np.testing.assert_allclose(
            np.array(ok.json()["outputs"][0]["data"]).reshape(1, 10), reference(models["fixed"], x), rtol=1e-5
        )
        assert httpx.post(f"{server.url}/v2/models/fixed/infer", json=infer_body(digits_input(2))).status_code == 400
    finally:
        server.stop()


GOOD = infer_body(np.zeros((1, 8, 8, 1), np.float32))


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(GOOD))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("url", "content", "status", "says"),
    [
        ("/v2/models/digits/infer", b"{not json", 400, "not valid JSON"),
        ("/v2/models/digits/infer", b"[1, 2]", 400, "must be a JSON object"),
        ("/v2/models/digits/infer", _with(("inputs", 0, "name"), "pixels"), 400, "unknown input 'pixels'"),
        ("/v2/models/digits/infer", _with(("inputs", 0, "shape"), [1, 8, 8]), 400, "the model needs [-1, 8, 8, 1]"),
        ("/v2/models/digits/infer", _with(("inputs", 0, "shape"), [2, 8, 8, 1]), 400, "needs 128 elements"),
        ("/v2/models/digits/infer", _with(("inputs", 0, "datatype"), "FP64"), 400, "the model needs FP32"),
        ("/v2/models/digits/infer", _with(("inputs", 0, "datatype"), "FLOAT"), 400, "the model needs FP32"),
        ("/v2/models/digits/infer", _with(("inputs", 0, "data"), ["a"] * 64), 400, "must be numbers"),
        ("/v2/models/digits/infer", _with(("inputs", 0, "shape"), [-1, 8, 8, 1]), 400, "non-negative"),
        ("/v2/models/digits/infer", _with(("outputs",), [{"name": "logits"}]), 400, "unknown output 'logits'"),
        ("/v2/models/digits/infer", _with(("inputs",), []), 400, "non-empty list"),
        ("/v2/models/nope/infer", GOOD, 404, "unknown model 'nope'"),
        ("/v2/models/digits/versions/v9/infer", GOOD, 404, "unknown version 'v9'"),
        ("/v1/models/digits:predict", {"instances": [[1, 2], [3]]}, 400, "the model needs [-1, 8, 8, 1]"),
        ("/v1/models/digits:predict", {"rows": []}, 400, "needs 'instances'"),
    ],
)
def test_client_mistakes_get_4xx_naming_the_problem(
    client: httpx.Client, url: str, content: Any, status: int, says: str
) -> None:
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    response = client.post(url, content=data, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert says in response.json()["error"]
    assert client.get("/v2/health/ready").status_code == 200


def test_oversized_bodies_get_413(client: httpx.Client) -> None:
    big = b"x" * (16 * 1024 * 1024 + 1)
    response = client.post("/v2/models/digits/infer", content=big)
    assert response.status_code == 413
    assert "over the limit" in response.json()["error"]

    def chunks() -> Any:  # no Content-Length: the limit applies while streaming
        for _ in range(17):
            yield b"y" * (1024 * 1024)

    assert client.post("/v2/models/digits/infer", content=chunks()).status_code == 413


def test_unknown_endpoints_answer_json(client: httpx.Client) -> None:
    response = client.get("/v2/nothing/here")
    assert response.status_code == 404
    assert "no endpoint" in response.json()["error"]
    assert client.get("/v2/models/nope").status_code == 404


def test_metrics_count_requests_by_code(server: ServerProcess, client: httpx.Client) -> None:
    client.post("/v2/models/digits/infer", json=infer_body(digits_input(1)))
    client.post("/v2/models/digits/infer", content=b"{")
    text = client.get("/metrics").text
    for name in (
        'modeldeploy_requests_total{code="200",model="digits",protocol="rest"}',
        'modeldeploy_requests_total{code="400",model="digits",protocol="rest"}',
        "modeldeploy_request_duration_seconds_bucket",
        "modeldeploy_queue_duration_seconds_bucket",
        "modeldeploy_batch_size_bucket",
        'modeldeploy_requests_in_flight{model="digits"}',
        'modeldeploy_model_load_seconds{model="digits"}',
    ):
        assert name in text, name


@pytest.mark.parametrize(
    ("setup", "says"),
    [
        ("missing-dir", "does not exist"),
        ("no-model", "model.onnx is missing"),
        ("corrupt-model", "onnxruntime cannot load"),
        ("corrupt-card", "not readable JSON"),
        ("model-replaced", "but its card records"),
        ("model-truncated", "bytes but its card records"),
        ("card-without-files", "records no size and sha256"),
    ],
)
def test_an_unservable_artifact_exits_non_zero_saying_why(
    tmp_path: Path, models: dict[str, Path], setup: str, says: str
) -> None:
    target = tmp_path / "v1"
    if setup != "missing-dir":
        target.mkdir()
    if setup == "corrupt-model":
        (target / "model.onnx").write_bytes(b"\x08\x07garbage")
    if setup == "corrupt-card":
        (target / "model.onnx").write_bytes((models["digits"] / "model.onnx").read_bytes())
        (target / "model.json").write_text("{")
    if setup in ("model-replaced", "model-truncated", "card-without-files"):
        card = json.loads((models["digits"] / "model.json").read_text())
        model = (models["digits"] / "model.onnx").read_bytes()
        if setup == "model-replaced":  # another model of the same size: only the digest tells
            digits_cnn(target / "model.onnx", seed=1)
            assert (target / "model.onnx").stat().st_size == len(model)
        else:
            (target / "model.onnx").write_bytes(model[:-10] if setup == "model-truncated" else model)
        if setup == "card-without-files":
            del card["files"]
        (target / "model.json").write_text(json.dumps(card))
    server = start_server(target, wait=False)
    assert server.process.wait(timeout=30) == 1
    assert server.wait_for_line(says), server.log
    assert "cannot serve" in server.log


def test_each_server_answers_with_the_version_its_deployment_gave_it(models: dict[str, Path]) -> None:
    """A canary beside a stable version: the same model directory layout, two Deployments, two versions in the
    environment (builders.build_deployment sets MODELDEPLOY_MODEL_VERSION); a client counts the split by it."""
    x = digits_input(1)
    for version in ("vstable000000", "vcanary00000"):
        server = start_server(models["digits"], env={"MODELDEPLOY_MODEL_VERSION": version})
        try:
            body = httpx.post(f"{server.url}/v2/models/digits/infer", json=infer_body(x)).json()
            assert body["model_version"] == version
            assert httpx.get(f"{server.url}/v2/models/digits").json()["versions"] == [version]
        finally:
            server.stop()


def test_slow_bodies_get_408_from_one_watchdog_and_other_cancellations_pass(models: dict[str, Path]) -> None:
    """In-process: a body that stops arriving is answered 408 within the body timeout plus the watchdog's period;
    a request task cancelled by someone else while its body is read (a server shutting down) stays cancelled; the
    watchdog forgets every body it watched."""
    plane = DataPlane(Settings(model_dir=models["digits"], body_timeout_seconds=0.2))
    plane.load()
    app = RestApp(plane)
    body = json.dumps(infer_body(digits_input(1))).encode()

    async def call(receive: Receive) -> tuple[int, bytes]:
        answer: dict[str, Any] = {}

        async def send(message: Message) -> None:
            answer["status" if message["type"] == "http.response.start" else "body"] = message.get(
                "status", message.get("body")
            )

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v2/models/digits/infer",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-length", str(len(body)).encode())],
        }
        await app(scope, receive, send)
        return answer["status"], answer["body"]

    async def run() -> None:
        stopped = asyncio.Event()  # never set: a sender that sent its headers and then nothing

        async def stalled() -> Message:
            await stopped.wait()
            return {}

        async def whole() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        began = time.perf_counter()
        status, answer = await call(stalled)
        assert status == 408 and b"did not arrive within 0.2 s" in answer
        assert time.perf_counter() - began < 1.0
        task = asyncio.create_task(call(stalled))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await call(whole))[0] == 200
        assert not app.watchdog._deadlines

    try:
        asyncio.run(run())
    finally:
        plane.stop(5)
