"""Fixtures of the real-node tests: a local cluster with a real node (once per run), the CRD, an operator per test.

The cluster is `modeldeploy cluster up --real-node` under the name rn-<pid>; MODELDEPLOY_REALNODE_CLUSTER=<name>
reuses one that is already up with a real node (its images already imported). Tests skip, saying why, when the
machine cannot run the node (no root, no cgroups, containerd missing) or the project's images are not built.
The operator's image settings (MODELDEPLOY_OPERATOR_TRAINING_IMAGE, ..._SERVING_IMAGE) choose what is imported.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rn_support import Models, Operator, RealCluster

from modeldeploy.cluster import realnode
from modeldeploy.cluster.local import (
    ClusterError,
    ClusterState,
    LocalCluster,
    clean_orphans,
    default_state_root,
    find_binaries,
)
from modeldeploy.cluster.portforward import PortForward
from modeldeploy.cluster.waiting import wait_crd_established, wait_until

REPO = Path(__file__).resolve().parents[2]


def images() -> list[str]:
    return [
        os.environ.get("MODELDEPLOY_OPERATOR_TRAINING_IMAGE", realnode.PROJECT_IMAGES[0]),
        os.environ.get("MODELDEPLOY_OPERATOR_SERVING_IMAGE", realnode.PROJECT_IMAGES[1]),
    ]


def _why_not(bin_dir: Path | None) -> str | None:
    problems = realnode.missing_prerequisites(bin_dir)
    if shutil.which("docker") is None:
        problems.append("docker is not installed (the project's images come from it)")
    else:
        for image in images():
            if subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode:
                problems.append(f"image {image} is not built (make images)")
    return "; ".join(problems) or None


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[RealCluster]:
    reuse = os.environ.get("MODELDEPLOY_REALNODE_CLUSTER")
    if reuse:
        state = ClusterState.load(default_state_root() / reuse)
        if state is None or not state.real_node:
            pytest.exit(f"MODELDEPLOY_REALNODE_CLUSTER={reuse} is not a local cluster with a real node", returncode=2)
        local = LocalCluster(reuse, real_node=True)
        bin_dir = Path(state.bin_dir)
    else:
        try:
            bin_dir = find_binaries(real_node=True)
        except ClusterError as err:
            pytest.skip(f"the real node cannot start: {err}")
        reason = _why_not(bin_dir)
        if reason:
            pytest.skip(f"the real node cannot start: {reason}")
        clean_orphans("rn-")  # a killed earlier run's node would hold the bridge
        # With the S3 server (versitygw, on the node's bridge too): the object-storage tests' bucket.
        local = LocalCluster(f"rn-{os.getpid()}", real_node=True, object_store=True)
    try:
        if not reuse:
            try:
                with pytest.MonkeyPatch.context() as patch:
                    # kube-proxy logs each rule sync and its endpoints from level 2: a load test's failure quotes
                    # those lines (ComponentLogs), and CI keeps nothing but the failure message.
                    if not os.environ.get("MODELDEPLOY_REALNODE_VERBOSITY"):
                        patch.setenv("MODELDEPLOY_REALNODE_VERBOSITY", "2")
                    local.up(bin_dir=bin_dir, owner_pid=os.getpid())
            except ClusterError as err:
                if "another cluster's real node" in str(err):
                    pytest.skip(str(err))
                raise
            local.load_images([i for i in images() if i not in realnode.PROJECT_IMAGES])
        env = {
            **os.environ,
            "KUBECONFIG": str(local.kubeconfig),
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        }
        handle = RealCluster(local.name, local.kubeconfig, str(bin_dir / "kubectl"), env)
        handle.kubectl("apply", "-f", str(REPO / "crds"))
        wait_crd_established(lambda *a: handle.kubectl(*a).stdout)
        yield handle
    finally:
        if not reuse:
            local.down()


@pytest.fixture
def rn_namespace(request: pytest.FixtureRequest, real_cluster: RealCluster) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"rn-{base}-{uuid.uuid4().hex[:6]}"
    real_cluster.create_namespace(name)
    yield name
    real_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def models(real_cluster: RealCluster, rn_namespace: str, tmp_path: Path) -> Iterator[Models]:
    operator = Operator(real_cluster.env, rn_namespace, tmp_path / "operator.log")
    try:
        wait_until(
            lambda: "leading as" in operator.log(), timeout=30, what="the operator leading", describe=operator.log
        )
        yield Models(real_cluster, rn_namespace, operator)
    finally:
        operator.stop()


@pytest.fixture
def port_forward(real_cluster: RealCluster) -> Iterator[Callable[[str, str, int], PortForward]]:
    opened: list[PortForward] = []

    def open_(namespace: str, target: str, port: int) -> PortForward:
        forward = PortForward(real_cluster.kubectl_path, target, port, namespace=namespace, env=real_cluster.env)
        opened.append(forward)
        return forward

    yield open_
    for forward in opened:
        forward.close()
