"""The training program with object storage: a model imported from a URI, the version committed to
spec.storage.uri, reused from there, and a missing or denied object named in the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from modeldeploy_training.errors import InvalidData, StorageUnavailable
from modeldeploy_training.job import Options, run_job
from serving.onnx_models import digits_cnn

from modeldeploy import objectstore
from modeldeploy.spec import normalize

pytestmark = pytest.mark.usefixtures("s3_env")
ROOT = objectstore.parse_uri("s3://models/trainer")


def _manifest(name: str, **spec: Any) -> dict[str, Any]:
    return normalize({"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
                      "spec": spec})  # fmt: skip


def _upload(path: Path, key: str) -> str:
    import obstore  # noqa: PLC0415

    obstore.put(objectstore.open_store(ROOT), ROOT.join(key).key, path)
    return str(ROOT.join(key))


def test_an_import_from_a_uri_is_committed_to_storage_uri_and_reused_from_there(tmp_path: Path) -> None:
    model_uri = _upload(digits_cnn(tmp_path / "upload" / "model.onnx"), "inputs/digits.onnx")
    manifest = _manifest(
        "imported",
        importModel={"uri": model_uri},
        compression={"quantization": "none"},
        storage={"uri": "s3://models/trainer/versions"},
    )
    report = run_job(manifest, Options(tmp_path / "scratch1", tmp_path / "no-claim", tmp_path / "user"))
    assert report["ok"] and report["reused"] is False
    version = report["version"]
    versions = objectstore.parse_uri("s3://models/trainer/versions")
    card = objectstore.is_committed(versions, "imported", version)
    assert card is not None and card["version"] == version
    final, fetched = objectstore.fetch_version(versions, "imported", version, tmp_path / "pod", max_bytes=2**30)
    assert fetched == card
    assert (final / "model.onnx").read_bytes() == (
        tmp_path / "scratch1" / "imported" / version / "model.onnx"
    ).read_bytes()

    # Another pod, an empty scratch volume: the committed version is found in the bucket, nothing is made again.
    again = run_job(manifest, Options(tmp_path / "scratch2", tmp_path / "no-claim", tmp_path / "user"))
    assert again["ok"] and again["reused"] is True and again["version"] == version
    assert not (tmp_path / "scratch2" / "imported").exists()


def test_a_missing_object_is_invalid_data_that_names_the_field(tmp_path: Path) -> None:
    manifest = _manifest("missing", importModel={"uri": "s3://models/trainer/inputs/nothing.onnx"})
    with pytest.raises(InvalidData, match=r"spec.importModel.uri s3://models/trainer/inputs/nothing.onnx: no such"):
        run_job(manifest, Options(tmp_path / "scratch", tmp_path / "no-claim", tmp_path / "user"))


def test_denied_storage_is_storage_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_uri = _upload(digits_cnn(tmp_path / "upload" / "model.onnx"), "inputs/denied.onnx")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    manifest = _manifest("denied", importModel={"uri": model_uri}, compression={"quantization": "none"})
    with pytest.raises(StorageUnavailable, match="AccessDenied"):
        run_job(manifest, Options(tmp_path / "scratch", tmp_path / "no-claim", tmp_path / "user"))


def test_a_dataset_larger_than_allowed_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modeldeploy_training import job  # noqa: PLC0415

    uri = _upload(digits_cnn(tmp_path / "upload" / "model.onnx"), "inputs/big.onnx")
    monkeypatch.setattr(job, "MAX_IMPORT_BYTES", 100)
    manifest = _manifest("big", importModel={"uri": uri})
    with pytest.raises(InvalidData, match="more than the 100 allowed"):
        run_job(manifest, Options(tmp_path / "scratch", tmp_path / "no-claim", tmp_path / "user"))
    assert "path" not in manifest["spec"]["importModel"]  # the caller's spec is left as it was
