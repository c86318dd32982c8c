"""`modeldeploy cluster up --object-store`: versitygw beside the control plane, gone with `cluster down`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeldeploy import objectstore
from modeldeploy.cluster.local import LocalCluster, find_binaries, port_is_taken
from modeldeploy.cluster.objectstore import client_env

from .conftest import make_version

pytestmark = pytest.mark.slow


def test_cluster_up_with_an_object_store_prints_what_to_use_and_down_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"test-store-{os.getpid()}"
    env = {**os.environ, "PATH": f"{find_binaries()}:{os.environ['PATH']}"}
    up = subprocess.run(
        [sys.executable, "-m", "modeldeploy.cli", "cluster", "up", "--object-store", "--nodes", "1", "--name", name],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    cluster = LocalCluster(name)
    try:
        assert up.returncode == 0, up.stderr
        info = cluster.object_store_info()
        assert f"object store: s3://models at http://127.0.0.1:{info['port']}" in up.stderr
        assert f"AWS_SECRET_ACCESS_KEY={info['secretKey']}" in up.stderr
        env_file = cluster.directory / "object-store.env"
        assert f"AWS_ACCESS_KEY_ID={info['accessKey']}\n" in env_file.read_text()
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        for key, value in client_env(info).items():
            monkeypatch.setenv(key, value)
        root = objectstore.parse_uri("s3://models/harness")
        objectstore.put_version(make_version(tmp_path, "m", "v000000000001"), root, "m", "v000000000001")
        assert (cluster.directory / "objects" / "models" / "harness" / "m" / "v000000000001" / "model.json").is_file()
        assert cluster.status()["components"]["objectstore"]["running"] is True
    finally:
        stopped = cluster.down()
    assert "objectstore" in stopped
    assert not port_is_taken(int(info["port"]))
    assert not cluster.directory.exists()  # the objects went with the state
