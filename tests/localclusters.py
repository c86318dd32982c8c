"""A local control plane for tests: its handle, kubectl on it, and a context that brings it up and down.

The session's cluster (tests/conftest.py) and the tests that need one of their own (another Kubernetes release)
share these.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modeldeploy.cluster.local import LocalCluster

TEST_CLUSTER_PREFIX = "test-"


@dataclass(frozen=True)
class ClusterHandle:
    """What a test needs to reach the cluster: its kubeconfig and an environment for subprocesses."""

    name: str
    kubeconfig: Path
    kubectl_path: str
    env: dict[str, str]
    local: bool


class Kubectl(Protocol):
    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]: ...


@contextlib.contextmanager
def local_cluster(local: LocalCluster, bin_dir: Path) -> Iterator[ClusterHandle]:
    """`local` up on the binaries of `bin_dir` for the duration, and down after, also when a test fails."""
    try:
        kubeconfig = local.up(bin_dir=bin_dir, owner_pid=os.getpid())
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
        yield ClusterHandle(local.name, kubeconfig, str(bin_dir / "kubectl"), env, local=True)
    finally:
        local.down()


def kubectl_of(cluster: ClusterHandle) -> Kubectl:
    """kubectl on `cluster`: raises with kubectl's own words when it fails, unless `check=False`."""

    def run(
        *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [cluster.kubectl_path, *args],
            input=input,
            capture_output=True,
            text=True,
            env=cluster.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    return run
