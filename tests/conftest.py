"""Fixtures for every test: a session-wide Kubernetes control plane, a namespace per test, kubectl and a client.

The control plane is started on first use (unit tests never pay for it) and stopped at the end of the run, also
when tests fail. MODELDEPLOY_KUBECONFIG points the same tests at an existing cluster (kind, say) instead.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from localclusters import TEST_CLUSTER_PREFIX, ClusterHandle, Kubectl, kubectl_of, local_cluster

from modeldeploy.cluster.local import LocalCluster, clean_orphans, find_binaries
from modeldeploy.cluster.waiting import wait_until


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise KeyboardInterrupt  # so that a TERM to pytest still runs the fixtures' teardown (the cluster goes down)


def pytest_configure(config: pytest.Config) -> None:
    del config
    signal.signal(signal.SIGTERM, _raise_interrupt)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterHandle]:
    existing = os.environ.get("MODELDEPLOY_KUBECONFIG")
    if existing:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.exit("MODELDEPLOY_KUBECONFIG is set but kubectl is not on PATH", returncode=2)
        env = {**os.environ, "KUBECONFIG": existing}
        yield ClusterHandle("existing", Path(existing), kubectl, env, local=False)
        return
    clean_orphans(TEST_CLUSTER_PREFIX)
    with local_cluster(LocalCluster(f"{TEST_CLUSTER_PREFIX}{os.getpid()}"), find_binaries()) as handle:
        yield handle


@pytest.fixture(scope="session")
def kubectl(cluster: ClusterHandle) -> Kubectl:
    return kubectl_of(cluster)


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kubectl: Kubectl) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    # Pods are refused until the namespace's default ServiceAccount exists (the controller-manager makes it).
    wait_until(
        lambda: kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
        timeout=30,
        what=f"the default ServiceAccount in namespace {name}",
    )
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def api(cluster: ClusterHandle) -> Iterator[Any]:
    from kubernetes import client, config  # noqa: PLC0415 (only integration tests need it)

    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api_client
    assert isinstance(api_client, client.ApiClient)
    api_client.close()
