"""Bounded work: over the queue's bounds the server sheds at once (503 + Retry-After, gRPC RESOURCE_EXHAUSTED) and
counts it; a request that waited past its deadline is answered without running; the announced-request count
comes back to zero whatever the requests did."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from modeldeploy_serving.dataplane import DataPlane
from modeldeploy_serving.errors import ServingError
from modeldeploy_serving.rest_codec import decode_infer_request
from modeldeploy_serving.settings import Settings
from tritonclient.utils import InferenceServerException

from modeldeploy.cluster.waiting import wait_until

from .conftest import ServerProcess, start_server

ROWS = 256  # of the slow model (40 layers 512x512): a few hundred ms of onnxruntime per request


def slow_body(rows: int = ROWS, parameters: dict[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
    x = np.ones((rows, 512), np.float32)
    size = {"binary_data_size": x.nbytes}
    header = json.dumps(
        {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 512], "parameters": size}],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
            "parameters": parameters or {},
        }
    ).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def metric(server: ServerProcess, pattern: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(pattern + r" (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def is_complete(answer: bytes) -> bool:
    """An HTTP/1.1 answer's head and as much body as its Content-Length says."""
    head, separator, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    return bool(separator) and (length is None or len(body) >= int(length.group(1)))


def queued_rows_running(server: ServerProcess) -> bool:
    """A batch is running: the batch-size histogram counted it."""
    return metric(server, r'^modeldeploy_batch_size_count\{model="slow"\}') >= 1


@pytest.fixture
def slow_server(models: dict[str, Path]) -> ServerProcess:
    return start_server(
        models["slow"], "--max-batch-size", str(ROWS), "--max-queue-rows", str(ROWS), "--max-queue-requests", "4"
    )


def test_over_the_queue_bound_requests_are_shed_at_once_with_retry_after(slow_server: ServerProcess) -> None:
    body, headers = slow_body()

    def call(_: int) -> httpx.Response:
        return httpx.post(f"{slow_server.url}/v2/models/slow/infer", content=body, headers=headers, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, range(8)))
    statuses = sorted(r.status_code for r in responses)
    shed = [r for r in responses if r.status_code == 503]
    assert set(statuses) == {200, 503}, statuses  # some ran, the rest were refused: no other outcome
    for response in shed:
        assert response.headers["Retry-After"] == "1"
        assert "queue is full" in response.json()["error"]
    assert metric(slow_server, r'^modeldeploy_requests_shed_total\{model="slow",reason="queue_full"\}') == len(shed)
    # Shedding is not failing: the server still serves.
    assert call(0).status_code == 200


def test_over_the_queue_bound_grpc_gets_resource_exhausted(slow_server: ServerProcess) -> None:
    x = np.ones((ROWS, 512), np.float32)

    def call(_: int) -> str:
        client = triton_grpc.InferenceServerClient(slow_server.grpc_target)
        tensor = triton_grpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        try:
            client.infer("slow", [tensor])
        except InferenceServerException as err:
            return str(err.status())
        finally:
            client.close()
        return "OK"

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(call, range(8)))
    assert "OK" in codes
    assert "StatusCode.RESOURCE_EXHAUSTED" in codes, codes
    assert set(codes) <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, codes


def test_a_request_past_its_timeout_parameter_is_answered_503_without_running(models: dict[str, Path]) -> None:
    slow_server = start_server(
        models["slow"],
        "--max-batch-size",
        str(ROWS),
        "--max-queue-rows",
        str(16 * ROWS),
        "--max-queue-wait-ms",
        "600000",
        "--max-queue-batches",
        "1000",
    )
    body, headers = slow_body(8 * ROWS)  # eight batches, a second or more of onnxruntime
    url = f"{slow_server.url}/v2/models/slow/infer"
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(httpx.post, url, content=body, headers=headers, timeout=120)
        wait_until(lambda: queued_rows_running(slow_server), timeout=30, what="the first batch running", interval=0.01)
        # 1 ms may be spent in the queue: the batches before it take far longer.
        late_body, late_headers = slow_body(1, {"timeout": 1000})
        late = httpx.post(url, content=late_body, headers=late_headers, timeout=120)
        assert busy.result().status_code == 200
    assert late.status_code == 503, late.text
    assert "past its deadline" in late.json()["error"]
    assert late.headers["Retry-After"] == "1"
    assert metric(slow_server, r'^modeldeploy_requests_shed_total\{model="slow",reason="deadline"\}') == 1
    assert metric(slow_server, r'^modeldeploy_batch_size_count\{model="slow"\}') == 8, "the late request ran"


def test_announced_requests_are_counted_back_after_bad_and_shed_requests(models: dict[str, Path]) -> None:
    """The count of requests on their way (that a forming batch waits for) went negative after rejected
    requests: the adapter and the data plane both took the announcement back. Each path now ends it once."""
    plane = DataPlane(Settings(model_dir=models["digits"]))
    plane.load()
    good = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8, 8, 1], "data": [0.0] * 64}]}
    ).encode()
    two = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 8, 8, 1], "data": [0.0] * 128}]})
    requests = [
        decode_infer_request(good, None),
        decode_infer_request(two.replace('"input"', '"nope"').encode(), None),  # unknown input: refused in infer
        decode_infer_request(two.encode(), None),
    ]

    async def run() -> list[str]:
        outcomes = []
        for request in requests * 3:
            expected = plane.expect()
            try:
                await plane.infer("digits", None, request, expected=expected)
                outcomes.append("200")
            except ServingError as err:
                outcomes.append(str(err.status))
        return outcomes

    try:
        outcomes = asyncio.run(run())
        assert outcomes.count("200") == 6 and outcomes.count("400") == 3, outcomes
        runner = plane._runner
        assert runner is not None
        assert runner.expected == 0
    finally:
        plane.stop(5)


def test_a_saturated_server_sheds_before_it_reads_the_body(slow_server: ServerProcess) -> None:
    """With the queue full, a request is refused from its headers: its body is never read or decoded (that CPU
    belongs to the model). A request that sends its headers and no body still gets 503 at once, not 408 later."""
    body, headers = slow_body(4 * ROWS)  # four batches: one runs, three wait, the queue's rows are over its bound
    url = f"{slow_server.url}/v2/models/slow/infer"
    host, port = slow_server.url.removeprefix("http://").split(":")
    head = (
        f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()

    def headers_only_answer() -> bytes:
        """The whole answer (its head and body may come in separate reads) to a request that sent no body."""
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(head)
            answer = b""
            while not is_complete(answer) and (chunk := sock.recv(4096)):
                answer += chunk
            return answer

    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(httpx.post, url, content=body, headers=headers, timeout=120)
        wait_until(lambda: queued_rows_running(slow_server), timeout=30, what="the first batch running", interval=0.01)
        answer = headers_only_answer()
        assert busy.result().status_code == 200
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"queue is full" in answer and b"retry-after: 1" in answer.lower()
