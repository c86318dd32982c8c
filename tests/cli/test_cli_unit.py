"""The CLI without a server: help, light imports, and the messages of mistakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modeldeploy.tools import client

from .conftest import modeldeploy

INPUT = client.TensorSpec("input", "FP32", (-1, 8, 8, 1))


def test_help_lists_every_command_with_examples() -> None:
    result = modeldeploy("--help")
    assert result.returncode == 0
    for command in ("operator", "cluster", "train", "serve", "run", "predict"):
        assert f"    {command} " in result.stdout
    assert "modeldeploy run samples/digits-cnn.yaml" in result.stdout
    for command in ("run", "predict"):
        sub = modeldeploy(command, "--help")
        assert sub.returncode == 0 and "examples:" in sub.stdout


def test_building_the_parser_imports_nothing_heavy() -> None:
    code = (
        "import sys, modeldeploy.cli as c; c.build_parser(); "
        "print(sorted(m for m in ('tensorflow', 'onnxruntime', 'kopf', 'numpy', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_run_refuses_a_file_that_is_not_a_model_deployment(tmp_path: Path) -> None:
    bad = tmp_path / "deployment.yaml"
    bad.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")
    result = modeldeploy("run", str(bad), "--exit-after-predict")
    assert result.returncode == 2
    assert "holds no ModelDeployment" in result.stdout
    missing = modeldeploy("run", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stdout


def test_endpoints_take_the_model_from_the_url_or_the_option() -> None:
    assert client.parse_endpoint("http://h:1/v2/models/digits", None) == client.Endpoint("http://h:1", "digits")
    assert client.parse_endpoint("localhost:8080", "m").model_path == "http://localhost:8080/v2/models/m"
    with pytest.raises(client.PredictError, match="--model NAME"):
        client.parse_endpoint("http://h:1", None)
    with pytest.raises(client.PredictError, match="not an http"):
        client.parse_endpoint("ftp://h/x", "m")


def test_arrays_get_a_batch_dimension_or_a_reshape_and_the_model_type() -> None:
    one = client.fit_input(np.ones((8, 8, 1)), INPUT, "x")
    assert one.shape == (1, 8, 8, 1) and one.dtype == np.float32
    flat = client.fit_input(np.ones(128), INPUT, "x")
    assert flat.shape == (2, 8, 8, 1)
    with pytest.raises(
        client.PredictError, match=r"shape \[3, 5\] does not fit .* give one sample of shape \[8, 8, 1\]"
    ):
        client.fit_input(np.ones((3, 5)), INPUT, "x")


def test_npz_and_json_inputs(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 8, 8, 1)), y=np.zeros(2))
    assert client.load_input(tmp_path / "a.npz", INPUT).shape == (2, 8, 8, 1)
    np.savez(tmp_path / "b.npz", p=np.zeros(64), q=np.zeros(64))
    with pytest.raises(client.PredictError, match="name the input array `x`"):
        client.load_input(tmp_path / "b.npz", INPUT)
    (tmp_path / "c.json").write_text('{"x": [' + ",".join(["0.5"] * 64) + "]}")
    assert client.load_input(tmp_path / "c.json", INPUT).shape == (1, 8, 8, 1)
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(client.PredictError, match=r"give a \.png"):
        client.load_input(tmp_path / "d.txt", INPUT)


def test_images_are_shrunk_inverted_and_laid_out_as_the_model_wants(tmp_path: Path) -> None:
    from PIL import Image  # noqa: PLC0415

    pixels = np.full((32, 32), 255, np.uint8)
    pixels[8:24, 8:24] = 0  # a dark square on white
    Image.fromarray(pixels, mode="L").save(tmp_path / "square.png")
    x = client.load_input(tmp_path / "square.png", INPUT, {"scale": 1 / 16})
    assert x.shape == (1, 8, 8, 1)
    assert x[0, 0, 0, 0] == 0.0 and x[0, 4, 4, 0] == 1.0  # inverted: light ink on a dark ground, 0..1
    nchw = client.load_input(tmp_path / "square.png", client.TensorSpec("i", "FP32", (-1, 3, 16, 16)), None, False)
    assert nchw.shape == (1, 3, 16, 16) and nchw[0, 0, 0, 0] == 1.0
    with pytest.raises(client.PredictError, match="not an image"):
        client.load_input(tmp_path / "square.png", client.TensorSpec("i", "FP32", (-1, 64)))
    with pytest.raises(client.PredictError, match="preprocessing"):
        client.load_input(tmp_path / "square.png", INPUT, {"mean": 0.5})
