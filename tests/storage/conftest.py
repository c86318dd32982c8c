"""A real S3 server (versitygw, built once from its Go module) for the object-storage tests, and versions for it."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serving.onnx_models import DIGIT_LABELS, digits_cnn, write_card

from modeldeploy.cluster import objectstore as store
from modeldeploy.cluster.local import free_ports


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("s3")
    try:
        binary = store.find_binary()
    except store.ObjectStoreBuildError as err:
        pytest.fail(str(err))
    with store.standalone(root / "objects", free_ports(1)[0], binary=binary) as info:
        yield info


@pytest.fixture
def s3_env(s3_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The standard AWS variables pointing at the test server, set for this test (and its subprocesses)."""
    env = store.client_env(s3_server)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    return {**os.environ, **env}


def make_version(root: Path, name: str, version: str, *, source_bytes: int = 0) -> Path:
    """A complete local version as the trainer leaves it: a real ONNX model, source/ and a card listing both."""
    version_dir = root / name / version
    digits_cnn(version_dir / "model.onnx")
    if source_bytes:
        (version_dir / "source").mkdir(parents=True, exist_ok=True)
        (version_dir / "source" / "model.keras").write_bytes(os.urandom(source_bytes))
    card = write_card(version_dir, name, labels=DIGIT_LABELS)
    card["files"] = {
        p.relative_to(version_dir).as_posix(): {
            "sizeBytes": p.stat().st_size,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        }
        for p in sorted(version_dir.rglob("*"))
        if p.is_file() and p.name != "model.json"
    }
    (version_dir / "model.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
    return version_dir
