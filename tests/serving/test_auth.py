"""Opt-in bearer tokens and TLS: a request without the token, or with a wrong one, gets 401 / UNAUTHENTICATED and never
reaches the model; tritonclient (HTTP and gRPC), KServe's client and curl pass with the token over TLS; a rotated
certificate is served to new connections without a restart."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from modeldeploy.cluster.local import default_cache_root
from modeldeploy.cluster.waiting import wait_until

from .conftest import ServerProcess, start_server

TOKEN = "s3cret-token-for-tests"
KSERVE = "kserve==0.21.0"  # KServe's Python SDK, in a virtualenv of its own (kserve_client.py says why)
BODY = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8, 8, 1], "data": [0.0] * 64}]}
).encode()


def make_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own root) and its key."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            f"/CN={name}",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class Secured:
    server: ServerProcess
    ca: Path
    cert: Path
    key: Path
    tmp: Path

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.server.http_port}"


@pytest.fixture
def secured(models: dict[str, Path], tmp_path: Path) -> Iterator[Secured]:
    first_cert, first_key = make_pair(tmp_path / "pairs", "first")
    mounted = tmp_path / "tls"
    mounted.mkdir()
    cert, key = mounted / "tls.crt", mounted / "tls.key"
    cert.write_bytes(first_cert.read_bytes())
    key.write_bytes(first_key.read_bytes())
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one token per line\n{TOKEN}\nanother-token\n")
    server = start_server(
        models["digits"],
        env={
            "MODELDEPLOY_AUTH_TOKEN_FILE": str(tokens),
            "MODELDEPLOY_TLS_CERT_FILE": str(cert),
            "MODELDEPLOY_TLS_KEY_FILE": str(key),
        },
    )
    yield Secured(server, first_cert, cert, key, tmp_path)
    server.stop()


def runs(secured: Secured) -> float:
    text = httpx.get(f"{secured.https}/metrics", verify=str(secured.ca)).text
    match = re.search(r'^modeldeploy_batch_size_count\{model="digits"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_rest_needs_the_token_and_a_refused_request_never_reaches_the_model(secured: Secured) -> None:
    url = f"{secured.https}/v2/models/digits/infer"
    verify = str(secured.ca)
    before = runs(secured)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}):
        response = httpx.post(url, content=BODY, headers=headers, verify=verify)
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "bearer token" in response.json()["error"]
    assert runs(secured) == before, "a refused request ran the model"
    assert httpx.get(f"{secured.https}/v2/models/digits", verify=verify).status_code == 401
    # Health and metrics stay open for the kubelet and Prometheus (the default).
    assert httpx.get(f"{secured.https}/v2/health/ready", verify=verify).status_code == 200
    ok = httpx.post(url, content=BODY, headers={"Authorization": f"Bearer {TOKEN}"}, verify=verify)
    assert ok.status_code == 200, ok.text
    assert runs(secured) == before + 1
    # Plain HTTP on the TLS port is not served.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{secured.server.http_port}/v2/health/live", timeout=5)


def test_curl_and_tritonclient_pass_with_token_and_tls(secured: Secured) -> None:
    curl = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            "--cacert",
            str(secured.ca),
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "--data-binary",
            "@-",
            f"{secured.https}/v2/models/digits/infer",
        ],
        input=BODY,
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert curl.returncode == 0, curl.stdout + curl.stderr
    assert json.loads(curl.stdout)["outputs"][0]["shape"] == [1, 10]

    x = np.zeros((2, 8, 8, 1), np.float32)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    http_client = triton_http.InferenceServerClient(
        f"127.0.0.1:{secured.server.http_port}",
        ssl=True,
        ssl_context_factory=lambda: ssl.create_default_context(cafile=str(secured.ca)),
    )
    tensor = triton_http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    assert http_client.infer("digits", [tensor], headers=headers).as_numpy("probabilities").shape == (2, 10)
    with pytest.raises(InferenceServerException, match="bearer token"):
        http_client.infer("digits", [tensor])
    http_client.close()

    grpc_client = triton_grpc.InferenceServerClient(
        secured.server.grpc_target, ssl=True, root_certificates=str(secured.ca)
    )
    gtensor = triton_grpc.InferInput("input", list(x.shape), "FP32")
    gtensor.set_data_from_numpy(x)
    # A dict of its own: tritonclient's HTTP client added its Inference-Header-Content-Length to `headers`.
    metadata = {"authorization": f"Bearer {TOKEN}"}
    assert grpc_client.infer("digits", [gtensor], headers=metadata).as_numpy("probabilities").shape == (2, 10)
    with pytest.raises(InferenceServerException) as refused:
        grpc_client.infer("digits", [gtensor], headers={"authorization": "Bearer wrong"})
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    assert grpc_client.is_server_live()  # health RPCs stay open like the REST probes
    grpc_client.close()


def test_a_rotated_certificate_is_served_without_a_restart(secured: Secured) -> None:
    new_cert, new_key = make_pair(secured.tmp / "pairs", "second")
    pid = secured.server.process.pid
    # As the kubelet updates a mounted Secret: the new files replace the old ones.
    secured.key.write_bytes(new_key.read_bytes())
    secured.cert.write_bytes(new_cert.read_bytes())

    def rest_serves_new() -> bool:
        try:
            return httpx.get(f"{secured.https}/v2/health/live", verify=str(new_cert), timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def grpc_serves_new() -> bool:
        credentials = grpc.ssl_channel_credentials(new_cert.read_bytes())
        with grpc.secure_channel(secured.server.grpc_target, credentials) as channel:
            try:
                return bool(
                    pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5).live
                )
            except grpc.RpcError:
                return False

    wait_until(rest_serves_new, timeout=30, what="REST serving the rotated certificate")
    wait_until(grpc_serves_new, timeout=30, what="gRPC serving the rotated certificate")
    assert secured.server.process.pid == pid and secured.server.process.poll() is None
    with pytest.raises(httpx.HTTPError):  # the old certificate is not served any more
        httpx.get(f"{secured.https}/v2/health/live", verify=str(secured.ca), timeout=5)


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """The Python of a virtualenv with KServe's SDK, made once per machine in the project's cache."""
    venv = default_cache_root() / "venvs" / KSERVE.replace("==", "-")
    python, done = venv / "bin" / "python", venv / ".installed"
    if not done.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", KSERVE], capture_output=True, text=True, check=False
        )
        assert pip.returncode == 0, f"pip install {KSERVE} failed: {pip.stderr[-2000:]}"
        done.write_text(KSERVE)
    return python


def test_kserve_client_passes_with_token_and_tls(secured: Secured, kserve_python: Path) -> None:
    script = Path(__file__).with_name("kserve_client.py")
    https, grpc_target = secured.https, secured.server.grpc_target
    run = subprocess.run(
        [str(kserve_python), str(script), https, grpc_target, str(secured.ca), TOKEN, "digits"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {
        "rest binary=False": [2, 10],
        "rest binary=True": [2, 10],
        "rest without token": 401,
        "grpc": [2, 10],
        "grpc wrong token": "UNAUTHENTICATED",
    }
