"""`modeldeploy pull` from a local artifact root, and its pure parts for the cluster route (no TensorFlow)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from modeldeploy import contracts
from modeldeploy.tools import localrun, pull

from .conftest import modeldeploy

TFLITE_BYTES = b"TFL3" + bytes(range(256)) * 10


def write_version(
    root: Path,
    version: str,
    *,
    created: str,
    tflite: bytes | None = TFLITE_BYTES,
    section: dict[str, Any] | None = None,
) -> Path:
    """A version as the trainer writes it: the files, then the card with their sizes and digests."""
    vdir = root / "digits" / version
    vdir.mkdir(parents=True)
    (vdir / contracts.MODEL_FILE).write_bytes(b"onnx" * 100)
    files = {contracts.MODEL_FILE: {"sizeBytes": 400, "sha256": hashlib.sha256(b"onnx" * 100).hexdigest()}}
    card: dict[str, Any] = {"schema": contracts.MODEL_CARD_SCHEMA, "name": "digits", "version": version}
    card["createdAt"] = created
    if tflite is not None:
        (vdir / contracts.TFLITE_FILE).write_bytes(tflite)
        digest = hashlib.sha256(tflite).hexdigest()
        files[contracts.TFLITE_FILE] = {"sizeBytes": len(tflite), "sha256": digest}
        card["tflite"] = {"chosen": "full-int8", "accuracy": 0.94, "sha256": digest, "sizeBytes": len(tflite)}
    if section is not None:
        card["tflite"] = section
    card["files"] = files
    (vdir / contracts.MODEL_CARD_FILE).write_text(json.dumps(card))
    return vdir


def test_pull_copies_the_newest_version_s_tflite_verified(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_version(root, "vold00000000", created="2026-01-01T00:00:00Z", tflite=b"old")
    write_version(root, "vnew00000000", created="2026-02-01T00:00:00Z")
    result = modeldeploy("pull", "digits", "--format", "tflite", "--from", str(root), "-o", str(tmp_path / "d.tflite"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "d.tflite").read_bytes() == TFLITE_BYTES
    assert "model.tflite of digits/vnew00000000" in result.stdout and "verified" in result.stdout
    older = modeldeploy("pull", "digits", "--version", "vold00000000", "--from", str(root), "-o", str(tmp_path / "o"))
    assert older.returncode == 0 and (tmp_path / "o").read_bytes() == b"old"


def test_a_changed_file_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    vdir = write_version(tmp_path, "v000000000001", created="2026-01-01T00:00:00Z")
    (vdir / contracts.TFLITE_FILE).write_bytes(TFLITE_BYTES[:-1] + b"!")
    with pytest.raises(pull.PullError, match=r"has sha256 .*, the card's files says .*nothing was copied"):
        pull.pull_local(tmp_path, "digits", version=None, fmt="tflite", output=tmp_path / "out.tflite")
    assert not (tmp_path / "out.tflite").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_a_version_without_tflite_says_how_to_get_one(tmp_path: Path) -> None:
    write_version(tmp_path, "v000000000001", created="2026-01-01T00:00:00Z", tflite=None)
    with pytest.raises(pull.PullError, match=r"add tflite to spec.compression.formats"):
        pull.pull_local(tmp_path, "digits", version=None, fmt="tflite", output=tmp_path / "x")
    # Its ONNX model is there to pull.
    line = pull.pull_local(tmp_path, "digits", version=None, fmt="onnx", output=tmp_path / "m.onnx")
    assert "model.onnx" in line and (tmp_path / "m.onnx").read_bytes() == b"onnx" * 100


def test_a_version_whose_tflite_failed_gives_the_trainer_s_reason(tmp_path: Path) -> None:
    failure = {"failureReason": "InvalidModel", "message": "refused: tf.MatrixDeterminant"}
    write_version(tmp_path, "v000000000001", created="2026-01-01T00:00:00Z", tflite=None, section=failure)
    with pytest.raises(pull.PullError, match=r"has no model.tflite: InvalidModel: refused: tf.MatrixDeterminant"):
        pull.pull_local(tmp_path, "digits", version=None, fmt="tflite", output=tmp_path / "x")


def test_unknown_model_or_version_is_a_clear_error(tmp_path: Path) -> None:
    write_version(tmp_path, "v000000000001", created="2026-01-01T00:00:00Z")
    missing = modeldeploy("pull", "other", "--from", str(tmp_path))
    assert missing.returncode == 1 and "no model 'other'" in missing.stderr
    with pytest.raises(pull.PullError, match=r"no version v999 .*complete: v000000000001"):
        pull.pull_local(tmp_path, "digits", version="v999", fmt="tflite", output=tmp_path / "x")


def test_a_path_outside_the_root_is_never_read(tmp_path: Path) -> None:
    with pytest.raises(pull.PullError, match=r"not a path inside the artifact root"):
        pull.LocalStore(tmp_path).read("../etc/passwd", 100)


def test_the_cluster_route_picks_the_served_version_and_a_ready_pod() -> None:
    md = {
        "metadata": {"name": "digits"},
        "status": {
            "modelVersion": "v2",
            "versions": [
                {"version": "v2", "path": "digits/v2", "tflite": {"sha256": "ab"}},
                {"version": "v1", "path": "digits/v1"},
            ],
        },
    }
    assert pull.version_from_status(md, None)[0] == "digits/v2"
    assert pull.version_from_status(md, "v1")[0] == "digits/v1"
    with pytest.raises(pull.PullError, match=r"no version v9 in its status \(kept: v2, v1\)"):
        pull.version_from_status(md, "v9")
    with pytest.raises(pull.PullError, match=r"no trained version yet"):
        pull.version_from_status({"metadata": {"name": "d"}, "status": {}}, None)
    ready = {"type": "Ready", "status": "True"}
    pods = {
        "items": [
            {"metadata": {"name": "a"}, "status": {"phase": "Pending", "conditions": []}},
            {
                "metadata": {"name": "b", "deletionTimestamp": "x"},
                "status": {"phase": "Running", "conditions": [ready]},
            },
            {"metadata": {"name": "c"}, "status": {"phase": "Running", "conditions": [ready]}},
        ]
    }
    assert pull.ready_serving_pod(pods) == "c"
    with pytest.raises(pull.PullError, match=r"no ready serving pod"):
        pull.ready_serving_pod({"items": pods["items"][:2]})


def test_run_lists_the_tflite_candidates_beside_the_onnx_ones(tmp_path: Path) -> None:
    card = {
        "compression": {
            "chosen": "fp16",
            "candidates": [
                {"name": "fp32", "sizeBytes": 49870, "accuracy": 0.95, "latencyRatio": 1.0, "accepted": True},
                {"name": "fp16", "sizeBytes": 27375, "accuracy": 0.95, "latencyRatio": 1.03, "accepted": True},
            ],
        },
        "tflite": {
            "chosen": "full-int8",
            "candidates": [
                {"name": "float32", "sizeBytes": 50344, "accuracy": 0.95, "accepted": True},
                {"name": "full-int8", "sizeBytes": 16192, "accuracy": 0.9444, "accepted": True},
                {"name": "float16", "sizeBytes": 0, "accuracy": None, "accepted": False, "rejectedBecause": "no"},
            ],
        },
    }
    lines = localrun.candidate_lines(card)
    assert lines[0].split() == ["format", "candidate", "bytes", "accuracy", "latency", "x", "fp32", "verdict"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["onnx", "fp32", "49870"],
        ["*", "onnx", "fp16"],
        ["tflite", "float32", "50344"],
        ["*", "tflite", "full-int8"],
        ["tflite", "float16", "0"],
    ]
    assert lines[4].split()[3:6] == ["16192", "0.9444", "-"]
    assert lines[5].endswith("rejected: no")
    assert localrun.candidate_lines({}) == []
    failed = localrun.tflite_summary({"failureReason": "InvalidModel", "message": "why"}, tmp_path)
    assert failed == "no model.tflite (InvalidModel): why"


def test_the_pod_route_reads_through_kubectl_exec_bounded_by_the_card(tmp_path: Path) -> None:
    # A stand-in for kubectl that runs the exec'd command here, on a copy of the volume: it checks the argv the pod
    # route builds and the bound on what is read, not a cluster (kwok's pods cannot exec; the real node can).
    volume = tmp_path / "volume"
    write_version(volume, "v000000000001", created="2026-01-01T00:00:00Z")
    log = tmp_path / "argv"
    fake = tmp_path / "kubectl"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        '[ "$1 $2 $3 $4 $5 $6 $7" = "exec -n ml digits-abc -c serving --" ] || exit 3\n'
        'shift 7; [ "$1 $2" = "head -c" ] || exit 4\n'
        f'exec head -c "$3" "{volume}${{4#/models}}"\n'
    )
    fake.chmod(0o755)
    store = pull.PodStore((str(fake),), "ml", "digits-abc", "serving")
    line = pull.pull(store, "digits/v000000000001", "tflite", tmp_path / "o.tflite", expected_sha256=None)
    assert (tmp_path / "o.tflite").read_bytes() == TFLITE_BYTES and "pod ml/digits-abc:/models" in line
    assert f"head -c {len(TFLITE_BYTES) + 1} /models/digits/v000000000001/model.tflite" in log.read_text()
    # A file larger than its card says is refused without reading past the bound.
    (volume / "digits" / "v000000000001" / contracts.TFLITE_FILE).write_bytes(TFLITE_BYTES + b"more")
    with pytest.raises(pull.PullError, match=r"larger than the \d+ bytes its card gives"):
        pull.pull(store, "digits/v000000000001", "tflite", tmp_path / "p.tflite")
    # The status' digest is checked too.
    (volume / "digits" / "v000000000001" / contracts.TFLITE_FILE).write_bytes(TFLITE_BYTES)
    with pytest.raises(pull.PullError, match=r"the ModelDeployment's status says 00"):
        pull.pull(store, "digits/v000000000001", "tflite", tmp_path / "q.tflite", expected_sha256="00" * 32)
    failing = pull.PodStore(("false",), "ml", "digits-abc", "serving")
    with pytest.raises(pull.PullError, match="failed"):
        failing.read("digits/v1/model.json", 10)
