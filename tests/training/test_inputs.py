"""The user's own data (.npz, CSV, image folders), imported models, the custom-image handoff, and bad input."""

from __future__ import annotations

import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from modeldeploy_training import artifact
from PIL import Image
from sklearn.datasets import load_digits

from modeldeploy import contracts

from .conftest import Run, assert_failed, complete_versions, digits_spec, run_train

pytestmark = pytest.mark.training

QUICK = {"quantization": "none"}


def claim_spec(path: str, recipe: str = "mlp", **dataset: str) -> dict[str, object]:
    return {
        "training": {"recipe": recipe, "epochs": 3, "dataset": {"claimName": "data", "path": path, **dataset}},
        "compression": QUICK,
    }


def test_npz_dataset_trains_an_mlp(tmp_path: Path) -> None:
    bunch = load_digits()
    np.savez(tmp_path / "digits.npz", x=bunch.data.astype(np.float32), y=bunch.target)
    run = run_train(tmp_path, claim_spec("digits.npz"), data_root=tmp_path)
    assert run.code == 0, run.report
    card = run.card()
    assert card["inputs"][0]["shape"] == [-1, 64]
    assert card["dataFingerprint"] != "builtin:digits" and len(card["dataFingerprint"]) == 64
    assert run.report["accuracy"] > 0.8


def test_csv_dataset_with_string_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lines = ["size,weight,kind"]
    for _ in range(200):
        kind = rng.choice(["cat", "dog"])
        base = 100.0 if kind == "dog" else 10.0  # unscaled features: the MLP normalises them itself
        lines.append(f"{base + rng.normal(0, 5):.2f},{base * 3 + rng.normal(0, 9):.2f},{kind}")
    (tmp_path / "pets.csv").write_text("\n".join(lines) + "\n")
    run = run_train(tmp_path, claim_spec("pets.csv", labelColumn="kind"), name="pets", data_root=tmp_path)
    assert run.code == 0, run.report
    assert run.card()["labels"] == ["cat", "dog"]
    assert run.report["accuracy"] > 0.95
    session = ort.InferenceSession(str(run.version_dir / contracts.MODEL_FILE))
    dog = session.run(None, {"input": np.array([[101.0, 298.0]], dtype=np.float32)})[0]
    assert dog.argmax() == 1


def test_image_folder_trains_a_cnn(tmp_path: Path) -> None:
    bunch = load_digits()
    root = tmp_path / "images"
    for i, (image, label) in enumerate(zip(bunch.images[:300], bunch.target[:300], strict=True)):
        folder = root / f"digit-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 15).astype(np.uint8), mode="L").save(folder / f"{i}.png")
    run = run_train(tmp_path, claim_spec("images", recipe="cnn"), data_root=tmp_path)
    assert run.code == 0, run.report
    card = run.card()
    assert card["labels"] == [f"digit-{d}" for d in range(10)]
    assert card["inputs"][0]["shape"] == [-1, 8, 8, 1]
    assert card["preprocessing"] == {"scale": 1 / 255}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_train(tmp_path_factory.mktemp("source"), digits_spec(epochs=2, compression=QUICK))


def write_eval(path: Path) -> None:
    bunch = load_digits()
    np.savez(path, x=(bunch.images[-200:].reshape(-1, 8, 8, 1) / 16).astype(np.float32), y=bunch.target[-200:])


@pytest.mark.parametrize("fmt", ["keras", "h5", "savedmodel", "onnx"])
def test_imported_model_gives_the_same_artifact_without_training(fmt: str, trained: Run, tmp_path: Path) -> None:
    import keras  # noqa: PLC0415  (TensorFlow only in the tests that use it)

    data = tmp_path / "claim"
    data.mkdir()
    model = keras.models.load_model(trained.version_dir / "source" / "model.keras")
    names = {"keras": "model.keras", "h5": "model.h5", "savedmodel": "exported", "onnx": "model.onnx"}
    if fmt == "savedmodel":
        model.export(data / "exported", verbose=False)
    elif fmt == "onnx":
        shutil.copyfile(trained.version_dir / contracts.MODEL_FILE, data / "model.onnx")
    else:
        model.save(data / names[fmt])
    write_eval(data / "eval.npz")
    spec = {"importModel": {"claimName": "c", "path": names[fmt], "evalDataset": "eval.npz"}, "compression": QUICK}
    run = run_train(tmp_path, spec, name="imported", data_root=data)
    assert run.code == 0, run.report
    card = run.card()
    assert "training" not in card and card["dataFingerprint"] is None
    assert card["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8, 8, 1]}]
    assert card["outputs"][0]["name"] == "probabilities"
    assert card["metrics"]["evaluatedOn"] == 200 and card["metrics"]["accuracy"] > 0.8
    source = {"keras": "model.keras", "h5": "model.h5", "savedmodel": "saved_model", "onnx": "model.onnx"}[fmt]
    assert (run.version_dir / "source" / source).exists()
    again = run_train(tmp_path, spec, name="imported", data_root=data)
    assert again.report["reused"] is True and again.report["version"] == run.report["version"]


def test_custom_image_output_is_imported_with_its_labels(trained: Run, tmp_path: Path) -> None:
    out = tmp_path / "workspace-output"
    out.mkdir()
    shutil.copyfile(trained.version_dir / contracts.MODEL_FILE, out / "model.onnx")
    (out / "labels.txt").write_text("".join(f"digit {i}\n" for i in range(10)))
    write_eval(out / "eval.npz")
    spec = {"training": {"recipe": "custom", "image": "example.com/trainer:1"}, "compression": QUICK}
    run = run_train(tmp_path, spec, name="custom", user_output=out)
    assert run.code == 0, run.report
    assert run.card()["labels"][3] == "digit 3"


def test_custom_image_that_left_no_model_fails(tmp_path: Path) -> None:
    spec = {"training": {"recipe": "custom", "image": "example.com/trainer:1"}}
    run = run_train(tmp_path, spec, name="custom", user_output=tmp_path)
    assert_failed(run, "InvalidModel", "exactly one of model.keras")


def test_unreadable_model_fails(tmp_path: Path) -> None:
    (tmp_path / "model.keras").write_bytes(b"this is not a zip file")
    spec = {"importModel": {"claimName": "c", "path": "model.keras"}}
    run = run_train(tmp_path, spec, name="broken", data_root=tmp_path)
    assert_failed(run, "InvalidModel", "model.keras is not a loadable Keras model")


def test_corrupt_npz_fails(tmp_path: Path) -> None:
    (tmp_path / "train.npz").write_bytes(b"PK\x03\x04 truncated")
    run = run_train(tmp_path, claim_spec("train.npz"), data_root=tmp_path)
    assert_failed(run, "InvalidData", "train.npz is not a readable .npz")


def test_mislabelled_npz_fails(tmp_path: Path) -> None:
    np.savez(tmp_path / "train.npz", x=np.zeros((50, 4), dtype=np.float32), y=np.arange(49) % 2)
    run = run_train(tmp_path, claim_spec("train.npz"), data_root=tmp_path)
    assert_failed(run, "InvalidData", "50 samples but 49 labels")


def test_csv_without_the_label_column_fails(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("a,b,c\n1,2,3\n")
    run = run_train(tmp_path, claim_spec("train.csv"), data_root=tmp_path)
    assert_failed(run, "InvalidData", "column 'label' not found (columns: a, b, c)")


def test_csv_with_a_missing_value_fails(tmp_path: Path) -> None:
    rows = [f"{i},{i % 2}" for i in range(30)]
    rows[7] = ",1"
    (tmp_path / "train.csv").write_text("x,label\n" + "\n".join(rows) + "\n")
    run = run_train(tmp_path, claim_spec("train.csv"), data_root=tmp_path)
    assert_failed(run, "InvalidData", "NaN or infinite", "sample 7")


def test_missing_dataset_fails(tmp_path: Path) -> None:
    run = run_train(tmp_path, claim_spec("nowhere.npz"), data_root=tmp_path)
    assert_failed(run, "InvalidData", "nowhere.npz not found")


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 96 KiB filesystem: too small for the trained model. Needs permission to mount (root here)."""
    mount = tmp_path / "full"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_full_volume_fails_with_storage_full(tiny_tmpfs: Path, tmp_path: Path) -> None:
    run = run_train(tmp_path, digits_spec(epochs=1, compression=QUICK), output=tiny_tmpfs)
    assert_failed(run, "StorageFull", "no space left")
    assert complete_versions(tiny_tmpfs / "digits") == []


def test_enospc_while_writing_the_card_maps_to_storage_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained: Run
) -> None:
    # The write layer's own mapping, independent of which file hits the limit first.
    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(artifact, "write_bytes", full)
    run = run_train(tmp_path, digits_spec(epochs=1, compression=QUICK), output=tmp_path / "models")
    assert_failed(run, "StorageFull", "no space left")
