"""The operator image on the host network reaches the local control plane through a mounted kubeconfig and
reconciles the digits sample to Ready (kwok plays the training and serving pods)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modeldeploy.cluster.waiting import wait_crd_established, wait_until

from .conftest import REPO, Containers, docker

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(2400)]


def _logs(name: str) -> str:
    result = docker("logs", "--tail", "60", name, check=False)
    return (result.stdout + result.stderr)[-4000:]


@pytest.fixture
def crds(kubectl: Any) -> None:
    kubectl("apply", "-f", str(REPO / "crds"))
    wait_crd_established(lambda *a: str(kubectl(*a).stdout))


@pytest.fixture
def self_contained_kubeconfig(cluster: Any, kubectl: Any, tmp_path: Path) -> Path:
    """The cluster's kubeconfig with its certificates inlined (the original names files on this host)."""
    path = tmp_path / "kubeconfig"
    path.write_text(kubectl("config", "view", "--raw", "--flatten", "--minify").stdout)
    path.chmod(0o644)  # the image's user (65532) reads it through the bind mount
    return path


@pytest.fixture
def operator_container(
    operator_image: str, self_contained_kubeconfig: Path, namespace: str, crds: None
) -> Iterator[str]:
    probe = docker("run", "--rm", "--entrypoint", "modeldeploy", operator_image, "operator", "--help", check=False)
    if probe.returncode != 0:
        pytest.skip(f"`modeldeploy operator` is not ready in the operator image: {probe.stderr.strip()[-500:]}")
    running = Containers()
    try:
        name, _ = running.run(
            "operator",
            operator_image,
            "--user", "65532:65532", "--read-only", "--tmpfs", "/tmp", "--network", "host",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--volume", f"{self_contained_kubeconfig}:/etc/modeldeploy/kubeconfig:ro",
            "--env", "KUBECONFIG=/etc/modeldeploy/kubeconfig",
            "--env", f"POD_NAMESPACE={namespace}",
            detach=True,
            # Only the test's namespace: other tests run their own operators on the same control plane.
            arguments=["--namespace", namespace],
        )  # fmt: skip
        yield name
    finally:
        running.remove_all()


def test_reconciles_the_digits_sample_to_ready(operator_container: str, kubectl: Any, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(REPO / "samples" / "digits-cnn.yaml"))

    def status() -> dict[str, Any]:
        result = kubectl("get", "md", "digits", "-n", namespace, "-o", "json", check=False)
        return dict(json.loads(result.stdout).get("status") or {}) if result.returncode == 0 else {}

    def ready() -> dict[str, Any] | None:
        state = docker("inspect", "--format", "{{.State.Running}}", operator_container).stdout.strip()
        if state != "true":
            raise AssertionError(f"the operator container stopped:\n{_logs(operator_container)}")
        current = status()
        return current if current.get("phase") == "Ready" else None

    final = wait_until(
        ready,
        timeout=120,
        what="the digits sample Ready, reconciled by the operator container",
        describe=lambda: {"status": status(), "operator log": _logs(operator_container)},
    )
    assert final["modelVersion"].startswith("v")
    assert final["readyReplicas"] == 2
    jobs = kubectl("get", "jobs", "-n", namespace, "-l", "modeldeploy.dev/model=digits", "-o", "name").stdout.split()
    assert len(jobs) == 1 and jobs[0].startswith("job.batch/digits-train-")
