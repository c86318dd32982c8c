"""Bad input never hurts the server: fuzzed bodies get 4xx (never 5xx), it keeps serving, its memory stays flat;
and SIGTERM lets the requests in flight finish before the process exits."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeldeploy.cluster.waiting import wait_until

from .conftest import ServerProcess, start_server

DATATYPES = ["FP32", "FP64", "FP16", "INT64", "INT32", "INT8", "UINT8", "BOOL", "BYTES", "float", ""]
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=30,
)
shapes = st.one_of(
    st.lists(st.integers(-2, 10), max_size=5),
    st.just([1, 8, 8, 1]),
    st.lists(st.integers(0, 2**40), min_size=1, max_size=4),
    json_values,
)
data = st.one_of(
    st.lists(st.floats(allow_nan=False, width=32), max_size=130),
    st.lists(st.lists(st.integers(-(2**65), 2**65), max_size=8), max_size=8),
    json_values,
)
tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "probabilities", ""]) | st.text(max_size=5),
        "datatype": st.sampled_from(DATATYPES),
        "shape": shapes,
    },
    optional={
        "data": data,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-5, 600) | json_scalars, "x": json_values}
        ),
    },
)
requested = st.fixed_dictionaries(
    {"name": st.sampled_from(["probabilities", "nope"]) | json_scalars},
    optional={
        "parameters": st.fixed_dictionaries(
            {}, optional={"classification": st.integers(-3, 20) | json_scalars, "binary_data": json_scalars}
        )
    },
)
bodies = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=3) | json_values},
    optional={
        "outputs": st.lists(requested, max_size=2) | json_values,
        "id": json_scalars,
        "parameters": st.dictionaries(st.text(max_size=6), json_values, max_size=3) | json_values,
    },
)


@pytest.fixture(scope="module")
def fuzz_server(models: dict[str, Path]) -> Iterator[ServerProcess]:
    proc = start_server(models["digits"], "--grpc-port", "0")
    yield proc
    proc.stop()


@pytest.fixture
def fuzz_client(fuzz_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.url, timeout=30) as http:
        yield http


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_fuzzed_json_bodies_never_get_5xx(fuzz_client: httpx.Client, body: dict[str, Any]) -> None:
    check(fuzz_client.post("/v2/models/digits/infer", content=json.dumps(body).encode()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=bodies,
    blob=st.binary(max_size=600),
    length=st.integers(-3, 2000) | st.text("0123456789ab-+ x", min_size=1, max_size=4).map(str.strip).filter(bool),
)
def test_fuzzed_binary_bodies_never_get_5xx(fuzz_client: httpx.Client, header: Any, blob: bytes, length: Any) -> None:
    head = json.dumps(header).encode()
    check(
        fuzz_client.post(
            "/v2/models/digits/infer",
            content=head + blob,
            headers={"Inference-Header-Content-Length": str(length if length != 0 else len(head))},
        )
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzzed_predict_bodies_never_get_5xx(fuzz_client: httpx.Client, body: bytes) -> None:
    check(fuzz_client.post("/v1/models/digits:predict", content=body))


def test_memory_stays_flat_under_bad_and_good_requests(fuzz_server: ServerProcess, fuzz_client: httpx.Client) -> None:
    x = np.zeros((2, 8, 8, 1), np.float32).ravel().tolist()
    mix = [
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 8, 8, 1], "data": x}]},
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 8, 8, 1], "data": x}]},
        {"inputs": [{"name": "input", "datatype": "INT8", "shape": [2, 8, 8, 1], "data": [300] * 128}]},
        {"inputs": [{"name": "wrong", "datatype": "FP32", "shape": [2, 8, 8, 1], "data": x}]},
        {"inputs": "nothing"},
    ]

    def round_of(count: int) -> None:
        for i in range(count):
            response = fuzz_client.post("/v2/models/digits/infer", json=mix[i % len(mix)])
            assert response.status_code in (200, 400)

    round_of(500)  # allocator pools and caches reach their working size
    before = fuzz_server.rss_bytes()
    round_of(2000)
    grown = fuzz_server.rss_bytes() - before
    assert grown < 4 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB over 2000 requests"
    assert fuzz_client.get("/v2/health/ready").status_code == 200


def in_flight(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(r'^modeldeploy_requests_in_flight\{model="slow"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_sigterm_finishes_requests_in_flight_then_exits(models: dict[str, Path]) -> None:
    server = start_server(
        models["slow"],
        "--shutdown-grace-seconds",
        "30",
        "--max-batch-size",
        "64",
        "--max-queue-rows",
        "4096",
        "--max-queue-wait-ms",
        "600000",
        "--max-queue-batches",
        "1000",
    )
    # 512 rows of 40 layers 512x512 (10 GFLOP) a request, binary tensors. Each body is sent but for its last KiB,
    # so all four requests are inside the server (counted in flight, their bodies still arriving) when the signal
    # comes, however busy the machine: a request that had been sent whole could be answered before the fourth began.
    x = np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32)
    header = json.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [512, 512], "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + x.tobytes()
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    connections = [http.client.HTTPConnection(host, int(port), timeout=60) for _ in range(4)]
    for connection in connections:
        connection.putrequest("POST", "/v2/models/slow/infer")
        connection.putheader("Content-Length", str(len(body)))
        connection.putheader("Inference-Header-Content-Length", str(len(header)))
        connection.endheaders()
        connection.send(body[:-1024])
    wait_until(lambda: in_flight(server) >= 4, timeout=30, what="four requests in flight", interval=0.01)
    server.process.terminate()
    assert server.wait_for_line("not ready any more")
    with contextlib.suppress(httpx.TransportError):  # a closed listener is not ready either
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
    for connection in connections:  # requests received before the signal are answered, bodies still arriving too
        connection.send(body[-1024:])
    responses = [connection.getresponse() for connection in connections]
    contents = [response.read() for response in responses]
    assert [r.status for r in responses] == [200] * 4, [c[:200] for c in contents]
    for response, content in zip(responses, contents, strict=True):
        length = int(response.headers["Inference-Header-Content-Length"])
        assert json.loads(content[:length])["outputs"][0]["shape"] == [512, 512]
        assert len(content) - length == 512 * 512 * 4
    for connection in connections:
        connection.close()
    assert server.process.wait(timeout=30) == 0
    assert server.wait_for_line("stopped")


def test_shutdown_is_bounded_by_the_grace_period(models: dict[str, Path]) -> None:
    server = start_server(models["slow"], "--shutdown-grace-seconds", "1", "--grpc-port", "0")
    x = np.zeros((3000, 512), np.float32)  # tens of seconds of work: longer than the grace period
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3000, 512], "data": x.ravel().tolist()}]}
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(lambda: httpx.post(f"{server.url}/v2/models/slow/infer", json=body, timeout=60))
        wait_until(lambda: in_flight(server) >= 1, timeout=30, what="the request in flight", interval=0.01)
        started = time.monotonic()
        server.process.terminate()
        server.process.wait(timeout=15)
        took = time.monotonic() - started
        with contextlib.suppress(httpx.TransportError):  # the request was cut off: that is the point
            future.result()
    assert took < 8, f"exit took {took:.1f} s with a 1 s grace period"
