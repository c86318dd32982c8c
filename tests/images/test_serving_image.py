"""The serving image run as its Deployment runs it (non-root, read-only root filesystem, only /tmp writable), on the
host network bound to a loopback port: it serves the artifact the training image made (health, metadata, inference)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from modeldeploy import contracts

from .conftest import Containers, TrainedArtifact, docker, free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(2400)]

READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Served:
    url: str
    container: str
    card: dict[str, Any]
    artifact: TrainedArtifact


def container_state(name: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)
    return state


def wait_ready(url: str, container: str, timeout: float) -> float:
    """Poll /v2/health/ready until 200; fail at once with the container's log if it exits. Returns seconds waited."""
    start = time.monotonic()
    deadline = start + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        state = container_state(container)
        if not state["Running"]:
            logs = docker("logs", container, check=False)
            raise AssertionError(
                f"serving container exited {state['ExitCode']}:\n{(logs.stdout + logs.stderr)[-3000:]}"
            )
        try:
            response = httpx.get(f"{url}/v2/health/ready", timeout=2)
            if response.status_code == 200:
                return time.monotonic() - start
            last = f"HTTP {response.status_code}"
        except httpx.TransportError as err:
            last = repr(err)
        time.sleep(0.05)
    logs = docker("logs", container, check=False)
    raise AssertionError(
        f"serving container not ready within {timeout:g} s (last: {last}):\n{(logs.stdout + logs.stderr)[-3000:]}"
    )


@pytest.fixture(scope="module")
def served(serving_image: str, trained_digits: TrainedArtifact) -> Iterator[Served]:
    assert trained_digits.exit_code == 0, f"the training image failed:\n{trained_digits.output[-3000:]}"
    card = contracts.read_model_card(trained_digits.version_dir)
    assert card is not None
    http_port, grpc_port = free_port(), free_port()
    running = Containers()
    try:
        name, _ = running.run(
            "serve",
            serving_image,
            "--user", "65532:65532", "--read-only", "--tmpfs", "/tmp", "--network", "host",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--volume", f"{trained_digits.root}:/models:ro",
            "--env", f"MODELDEPLOY_MODEL_DIR=/models/{trained_digits.report['path']}",
            "--env", "MODELDEPLOY_HOST=127.0.0.1",
            "--env", f"MODELDEPLOY_HTTP_PORT={http_port}",
            "--env", f"MODELDEPLOY_GRPC_PORT={grpc_port}",
            detach=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{http_port}"
        wait_ready(url, name, READY_TIMEOUT)
        yield Served(url, name, card, trained_digits)
    finally:
        running.remove_all()


def test_health_endpoints_answer(served: Served) -> None:
    assert httpx.get(f"{served.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{served.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{served.url}/v2/models/digits/ready").status_code == 200


def test_metadata_describes_the_trained_model(served: Served) -> None:
    response = httpx.get(f"{served.url}/v2/models/digits")
    assert response.status_code == 200
    metadata = response.json()
    assert metadata["name"] == "digits"
    assert served.card["version"] in metadata.get("versions", [])
    assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [("input", "FP32")]
    assert [t["name"] for t in metadata["outputs"]] == ["probabilities"]


def _digits(count: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # noqa: PLC0415

    bunch: Any = load_digits()
    # The last samples: a slice a client would send, labels known.
    images = np.asarray(bunch.images[-count:], dtype=np.float32)
    return images, np.asarray(bunch.target[-count:])


def test_inference_returns_the_expected_classes(served: Served) -> None:
    import onnxruntime as ort  # noqa: PLC0415

    images, labels = _digits(64)
    scale = float(served.card.get("preprocessing", {}).get("scale", 1.0))
    shape = [len(images), *served.card["inputs"][0]["shape"][1:]]
    x = (images * scale).reshape(shape).astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": x.ravel().tolist()}]}
    response = httpx.post(f"{served.url}/v2/models/digits/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [len(images), 10]
    served_classes = np.asarray(output["data"], dtype=np.float32).reshape(len(images), 10).argmax(axis=1)
    # The same model file run here gives the classes the server must give.
    session = ort.InferenceSession(str(served.artifact.version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": x})[0].argmax(axis=1)
    assert served_classes.tolist() == expected.tolist()
    # And the model learned: most of these digits get their right label (the card's labels are in output order).
    names = served.card.get("labels") or [str(i) for i in range(10)]
    predicted = [names[i] for i in served_classes]
    right = sum(p == str(t) for p, t in zip(predicted, labels, strict=True))
    assert right / len(labels) >= 0.8, f"only {right} of {len(labels)} digits classified right: {predicted}"
