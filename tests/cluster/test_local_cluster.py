"""Bringing a local cluster up and down: side by side with another, after a crash, and the errors users see."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from importlib import resources
from pathlib import Path

import pytest
from localclusters import ClusterHandle

from modeldeploy.cluster import local
from modeldeploy.cluster.local import ClusterError, ClusterState, LocalCluster, find_binaries, process_start_time


def alive(state: ClusterState) -> list[str]:
    return [c for c, info in state.processes.items() if process_start_time(info["pid"]) == info["start_time"]]


def answering(ports: list[int]) -> list[int]:
    busy = []
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


def test_second_cluster_beside_the_first_and_down_after_a_crash(cluster: ClusterHandle, tmp_path: Path) -> None:
    other = LocalCluster(f"side-{os.getpid()}", state_root=tmp_path, nodes=1)
    kubeconfig = other.up(bin_dir=find_binaries(build=False))
    try:
        assert kubeconfig != cluster.kubeconfig
        assert "kwok-node-0" in other.kubectl("get", "nodes", "-o", "name")
        state = ClusterState.load(other.directory)
        assert state is not None and sorted(alive(state)) == sorted(local.COMPONENTS)
        # One component crashes; down must still stop the rest and free every port.
        os.kill(state.processes["kube-scheduler"]["pid"], signal.SIGKILL)
    finally:
        stopped = other.down()
    assert "kube-apiserver" in stopped
    assert alive(state) == []
    assert answering(list(state.ports.values())) == []
    assert not other.directory.exists()
    # The first cluster never noticed.
    out = subprocess.run(
        [cluster.kubectl_path, "get", "nodes"], env=cluster.env, capture_output=True, text=True, check=True
    )
    assert "kwok-node-0" in out.stdout


def test_component_that_dies_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    real = find_binaries(build=False)
    fake_bins = tmp_path / "bin"
    fake_bins.mkdir()
    for name in local.BINARIES:
        (fake_bins / name).symlink_to(real / name)
    (fake_bins / "kube-apiserver").unlink()
    (fake_bins / "kube-apiserver").write_text("#!/bin/sh\necho 'E1129 flag --no-such-flag: unknown' >&2\nexit 1\n")
    (fake_bins / "kube-apiserver").chmod(0o755)
    broken = LocalCluster("broken", state_root=tmp_path / "state", nodes=1)
    with pytest.raises(ClusterError) as caught:
        broken.up(bin_dir=fake_bins)
    assert "kube-apiserver exited during start-up" in str(caught.value)
    assert "--no-such-flag: unknown" in str(caught.value)
    assert not broken.directory.exists()  # etcd, started before it, was stopped and the state removed


def test_taken_port_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        others = local.free_ports(6)
        monkeypatch.setattr(local, "free_ports", lambda n: [taken, *others[1:n]])
        cluster = LocalCluster("taken", state_root=tmp_path, nodes=1)
        with pytest.raises(ClusterError, match=f"port {taken} on 127.0.0.1 \\(etcd\\) is taken"):
            cluster.up(bin_dir=find_binaries(build=False))
    assert not cluster.directory.exists()


def test_build_without_go_says_so(tmp_path: Path) -> None:
    script = resources.files("modeldeploy.cluster").joinpath("build-binaries.sh")
    with resources.as_file(script) as path:
        result = subprocess.run(
            ["/bin/bash", str(path)],
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MODELDEPLOY_CACHE": str(tmp_path / "cache")},
            capture_output=True,
            text=True,
            check=False,
        )
    assert result.returncode == 1
    assert "Go is not installed" in result.stderr
    assert "Traceback" not in result.stderr
