"""Versions in a real S3 server (versitygw): the commit protocol, the verified fetch, and every way it can fail."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from modeldeploy import objectstore

from .conftest import make_version

pytestmark = pytest.mark.usefixtures("s3_env")
ROOT = objectstore.parse_uri("s3://models/team-a")


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _get(key: str) -> bytes:
    import obstore  # noqa: PLC0415

    return bytes(obstore.get(objectstore.open_store(ROOT), key).bytes())


def _put(key: str, data: bytes) -> None:
    import obstore  # noqa: PLC0415

    obstore.put(objectstore.open_store(ROOT), key, data)


def test_a_committed_version_is_fetched_byte_for_byte_without_its_source(tmp_path: Path) -> None:
    local = make_version(tmp_path / "out", "digits", "v000000000001", source_bytes=4096)
    objectstore.put_version(local, ROOT, "digits", "v000000000001")

    final, card = objectstore.fetch_version(ROOT, "digits", "v000000000001", tmp_path / "pod", max_bytes=2**30)

    assert final == tmp_path / "pod" / "digits" / "v000000000001"
    fetched = _files(final)
    assert set(fetched) == {"model.onnx", "model.json"}  # source/ stays in the bucket: serving does not need it
    assert fetched["model.onnx"] == (local / "model.onnx").read_bytes()
    assert json.loads(fetched["model.json"]) == card == json.loads((local / "model.json").read_text())
    assert [p.name for p in (tmp_path / "pod" / "digits").iterdir()] == ["v000000000001"]  # no .tmp- left
    assert objectstore.is_committed(ROOT, "digits", "v000000000001") == card


_UPLOADER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from modeldeploy import objectstore
    def progress(name):
        print(name, flush=True)
        if name == sys.argv[3]:
            time.sleep(600)  # the parent kills us here, between two objects of the upload
    objectstore.put_version(Path(sys.argv[1]), objectstore.parse_uri("s3://models/team-a"), "digits", sys.argv[2],
                            on_put=progress)
    print("done", flush=True)
    """
)


def _start_upload(version_dir: Path, version: str, stop_after: str = "") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _UPLOADER, str(version_dir), version, stop_after],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_trainer_killed_mid_upload_leaves_no_servable_version_and_a_rerun_commits_it(tmp_path: Path) -> None:
    version = "v000000000002"
    local = make_version(tmp_path / "out", "digits", version, source_bytes=1024)
    upload = _start_upload(local, version, stop_after="model.onnx")
    assert upload.stdout is not None
    assert upload.stdout.readline().strip() == "model.onnx"  # model.onnx is in the bucket, the rest is not
    upload.send_signal(signal.SIGKILL)
    upload.wait(timeout=10)

    assert _get(ROOT.join("digits", version, "model.onnx").key) == (local / "model.onnx").read_bytes()
    assert objectstore.read_card(ROOT, "digits", version) is None
    assert objectstore.is_committed(ROOT, "digits", version) is None
    with pytest.raises(objectstore.StorageError) as refused:
        objectstore.fetch_version(ROOT, "digits", version, tmp_path / "pod", max_bytes=2**30)
    assert refused.value.reason == objectstore.INCOMPLETE
    assert "never committed" in refused.value.message
    assert not (tmp_path / "pod").exists()  # refused before anything was written

    objectstore.put_version(local, ROOT, "digits", version)  # the Job's retry
    final, _ = objectstore.fetch_version(ROOT, "digits", version, tmp_path / "pod", max_bytes=2**30)
    assert (final / "model.onnx").read_bytes() == (local / "model.onnx").read_bytes()


def test_kills_at_random_points_of_an_upload_never_leave_a_half_version(tmp_path: Path) -> None:
    local = make_version(tmp_path / "out", "digits", "v0000000000aa", source_bytes=8 * 1024 * 1024)
    started = time.monotonic()
    full = _start_upload(local, "v0000000000aa")
    assert full.wait(timeout=120) == 0
    duration = time.monotonic() - started
    rng = random.Random(14)
    outcomes = []
    for attempt in range(5):
        version = f"v0000000001{attempt:02d}"
        local = make_version(tmp_path / f"out{attempt}", "digits", version, source_bytes=8 * 1024 * 1024)
        upload = _start_upload(local, version)
        time.sleep(rng.uniform(0, duration))  # a kill at a random point: the point is the test's input, not a wait
        upload.send_signal(signal.SIGKILL)
        upload.wait(timeout=10)
        try:
            final, card = objectstore.fetch_version(
                ROOT, "digits", version, tmp_path / "pod", max_bytes=2**30, include_source=True
            )
        except objectstore.StorageError as err:
            assert err.reason == objectstore.INCOMPLETE, err.message
            outcomes.append("refused")
        else:  # the kill came after the card: then every byte is there and checked
            assert _files(final) == {k: v for k, v in _files(local).items()}
            assert card["version"] == version
            outcomes.append("complete")
    assert len(outcomes) == 5


def test_one_changed_byte_in_the_bucket_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    version = "v000000000003"
    local = make_version(tmp_path / "out", "digits", version)
    objectstore.put_version(local, ROOT, "digits", version)
    key = ROOT.join("digits", version, "model.onnx").key
    data = bytearray(_get(key))
    data[len(data) // 2] ^= 0x01
    _put(key, bytes(data))  # through the S3 API, as anyone with write access to the bucket could

    with pytest.raises(objectstore.StorageError) as refused:
        objectstore.fetch_version(ROOT, "digits", version, tmp_path / "pod", max_bytes=2**30)

    assert refused.value.reason == objectstore.CHECKSUM_MISMATCH
    assert "model.onnx does not match its model card" in refused.value.message
    assert list((tmp_path / "pod" / "digits").iterdir()) == []


def test_a_version_larger_than_allowed_is_refused_before_any_download(tmp_path: Path) -> None:
    version = "v000000000004"
    objectstore.put_version(make_version(tmp_path / "out", "digits", version), ROOT, "digits", version)
    with pytest.raises(objectstore.StorageError) as refused:
        objectstore.fetch_version(ROOT, "digits", version, tmp_path / "pod", max_bytes=1000)
    assert refused.value.reason == objectstore.TOO_LARGE
    assert "raise spec.storage.size" in refused.value.message
    assert not (tmp_path / "pod").exists() or list((tmp_path / "pod").rglob("*.onnx")) == []


def test_a_card_naming_a_file_outside_the_version_is_refused(tmp_path: Path) -> None:
    version = "v000000000005"
    local = make_version(tmp_path / "out", "digits", version)
    objectstore.put_version(local, ROOT, "digits", version)
    card = json.loads((local / "model.json").read_text())
    card["files"]["../../escape.onnx"] = card["files"]["model.onnx"]
    _put(ROOT.join("digits", version, "model.json").key, json.dumps(card).encode())
    with pytest.raises(objectstore.StorageError, match="leaves the version directory"):
        objectstore.fetch_version(ROOT, "digits", version, tmp_path / "pod", max_bytes=2**30)
    assert not (tmp_path / "escape.onnx").exists()


def test_wrong_credentials_are_access_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(objectstore.StorageError) as refused:
        objectstore.fetch_version(ROOT, "digits", "v000000000001", tmp_path / "pod", max_bytes=2**30)
    assert refused.value.reason == objectstore.ACCESS_DENIED
    assert "spec.storage.secretRef" in refused.value.message


def test_a_store_that_does_not_answer_is_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A port held bound but never listening refuses every connection, and no other process can take it meanwhile.
    # One with 403 in its number: a full CI run once drew such a port, and the error text (which names the URL) was
    # read as an HTTP 403, access denied.
    with socket.socket() as held:
        for port in range(40300, 40400):
            try:
                held.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
        else:
            pytest.skip("no free port between 40300 and 40399")
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        with pytest.raises(objectstore.StorageError) as refused:
            objectstore.read_card(ROOT, "digits", "v000000000001")
    assert refused.value.reason == objectstore.UNREACHABLE, refused.value.message


def test_modeldeploy_fetch_says_why_in_its_termination_message(tmp_path: Path, s3_env: dict[str, str]) -> None:
    log = tmp_path / "termination-log"
    log.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "modeldeploy.cli", "fetch", "--uri", "s3://models/team-a", "--model", "digits",
         "--version", "v0000000000ff", "--dest", str(tmp_path / "pod"), "--termination-log", str(log)],
        capture_output=True, text=True, env=s3_env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert log.read_text().startswith(
        "cannot fetch the model: VersionIncomplete: s3://models/team-a/digits/v0000000000ff"
    )
    assert "VersionIncomplete" in result.stderr


def test_modeldeploy_fetch_copies_a_committed_version(tmp_path: Path, s3_env: dict[str, str]) -> None:
    version = "v000000000006"
    local = make_version(tmp_path / "out", "digits", version)
    objectstore.put_version(local, ROOT, "digits", version)
    result = subprocess.run(
        [sys.executable, "-m", "modeldeploy.cli", "fetch", "--uri", "s3://models/team-a", "--model", "digits",
         "--version", version, "--dest", str(tmp_path / "pod"), "--termination-log", str(tmp_path / "none")],
        capture_output=True, text=True, env=s3_env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "sha256 verified" in result.stdout
    assert (tmp_path / "pod" / "digits" / version / "model.onnx").read_bytes() == (local / "model.onnx").read_bytes()
