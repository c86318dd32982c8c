"""`modeldeploy run` and `modeldeploy predict` end to end: real training, real serving on 127.0.0.1, real requests."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from .conftest import EPOCHS, SAMPLE, Served, free_port, modeldeploy, version_dir

pytestmark = [pytest.mark.training, pytest.mark.slow]


def digit(index: int) -> tuple[np.ndarray, int]:
    bunch = load_digits()
    return np.asarray(bunch.images[index], dtype=np.float32), int(bunch.target[index])


def write_png(path: Path, pixels_0_to_16: np.ndarray) -> Path:
    """A digit as people draw it: dark ink on white, 64x64 (predict must invert and shrink it to 8x8)."""
    ink = np.round(pixels_0_to_16 / 16.0 * 255.0).astype(np.uint8)
    Image.fromarray(255 - ink, mode="L").resize((64, 64), Image.Resampling.NEAREST).save(path)
    return path


def test_run_trains_serves_and_prints_a_prediction(served: Served) -> None:
    text = served.text()
    assert re.search(r"trained and compressed in [0-9.]+s: version v[0-9a-f]{12}: ", text), text
    match = re.search(
        r"prediction for sample #1796 of builtin:digits \(its label: (\d)\): (\d) \(probability ([0-9.]+)\)", text
    )
    assert match, text
    assert 0.0 < float(match.group(3)) <= 1.0
    assert f"ready: {served.url}/v2/models/digits" in text
    card = json.loads((version_dir(served.output) / "model.json").read_text())
    assert card["training"]["epochs"] == int(EPOCHS)
    assert card["compression"]["requested"] == "dynamic"


def test_predict_an_image_and_an_array_give_the_class(served: Served, tmp_path: Path) -> None:
    pixels, label = digit(0)
    card = version_dir(served.output) / "model.json"
    png = write_png(tmp_path / "zero.png", pixels)
    from_image = modeldeploy("predict", "--url", served.url, "--model", "digits", "--card", str(card), str(png))
    assert from_image.returncode == 0, from_image.stderr
    assert re.fullmatch(rf"{label} \(probability [0-9.]+\)\n", from_image.stdout), from_image.stdout

    batch = np.stack([digit(i)[0] for i in range(4)])[..., None] / 16.0
    np.save(tmp_path / "batch.npy", batch.astype(np.float32))
    url = f"{served.url}/v2/models/digits"
    from_array = modeldeploy("predict", "--url", url, "--top", "2", "--json", str(tmp_path / "batch.npy"))
    assert from_array.returncode == 0, from_array.stderr
    rows = json.loads(from_array.stdout)["rows"]
    assert len(rows) == 4 and all(len(row) == 2 for row in rows)
    assert rows[0][0]["class"] == str(label)
    assert rows[0][0]["probability"] >= rows[0][1]["probability"]

    # The same zero as JSON, one flat sample without the batch dimension: it is reshaped to the model's input.
    (tmp_path / "zero.json").write_text(json.dumps((pixels / 16.0).ravel().tolist()))
    from_json = modeldeploy("predict", "--url", url, str(tmp_path / "zero.json"))
    assert from_json.returncode == 0, from_json.stderr
    assert from_json.stdout.split()[0] == str(label)


def test_predict_explains_what_to_fix(served: Served, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 5), np.float32))
    result = modeldeploy("predict", "--url", served.url, "--model", "digits", str(wrong))
    assert result.returncode == 1
    assert "does not fit the model's input input of shape [-1, 8, 8, 1]" in result.stderr

    unknown = modeldeploy("predict", "--url", served.url, "--model", "nope", str(wrong))
    assert unknown.returncode == 1 and "HTTP 404" in unknown.stderr

    no_model = modeldeploy("predict", "--url", served.url, str(wrong))
    assert no_model.returncode == 1 and "--model NAME" in no_model.stderr

    closed = modeldeploy("predict", "--url", f"http://127.0.0.1:{free_port()}", "--model", "digits", str(wrong))
    assert closed.returncode == 1 and "cannot connect" in closed.stderr and "port-forward" in closed.stderr


def test_run_again_reuses_the_artifact_and_exits_after_predicting(served: Served) -> None:
    port = free_port()
    args = ["run", str(SAMPLE), "--port", str(port), "--epochs", EPOCHS, "--output", str(served.output)]
    result = modeldeploy(*args, "--exit-after-predict", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(reused: same spec, same data)" in result.stdout
    assert "prediction for sample #1796" in result.stdout
    assert result.stdout.rstrip().endswith("stopped")


def test_ctrl_c_stops_the_server_cleanly(served: Served) -> None:
    port = free_port()
    args = ["run", str(SAMPLE), "--port", str(port), "--epochs", EPOCHS, "--output", str(served.output)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "modeldeploy.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    seen = ""
    for line in proc.stdout:  # ends when the process does; the fixture's timeout bounds a hang
        seen += line
        if "prediction for" in line:
            proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0, seen
    assert seen.rstrip().endswith("stopped")
    again = modeldeploy("predict", "--url", f"http://127.0.0.1:{port}", "--model", "digits", "x.npy")
    assert again.returncode == 1


def test_a_port_in_use_is_reported(served: Served) -> None:
    args = ["run", str(SAMPLE), "--port", str(served.port), "--epochs", EPOCHS, "--output", str(served.output)]
    result = modeldeploy(*args, "--exit-after-predict", timeout=180)
    assert result.returncode == 1
    assert f"cannot serve on 127.0.0.1:{served.port}: Address already in use; choose another port" in result.stdout
