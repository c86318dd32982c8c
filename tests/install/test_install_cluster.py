"""The install manifests against a real API server: server-side dry-runs, and the operator running with exactly the
permissions of its ServiceAccount (a token of it, bound to the ClusterRole of manifests/) taking a sample to Ready."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy.cluster.waiting import wait_crd_established, wait_until

from .conftest import CRDS, REPO, build
from .test_argocd_health import argocd_health

SYSTEM_NS = "modeldeploy-system"
SA = "modeldeploy-operator"
RBAC_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def _as_yaml(objects: Any) -> str:
    return yaml.safe_dump_all(list(objects))


@pytest.fixture(scope="module")
def installed(kubectl: Any) -> None:
    """The CRD and the RBAC part of manifests/ applied for real (the Deployment is not: this test runs the operator)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    # check=False: before the CRD has conditions, kubectl's jsonpath filter fails outright ("not array"): not yet.
    wait_crd_established(lambda *a: str(kubectl(*a, check=False).stdout))
    rbac = [o for o in build() if o["kind"] in RBAC_KINDS]
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=_as_yaml(rbac))


@pytest.mark.parametrize("path", ["manifests", "manifests/overlays/kind"])
def test_the_kustomize_builds_pass_a_server_side_dry_run(installed: None, kubectl: Any, path: str) -> None:
    result = kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=_as_yaml(build(path)))
    assert "deployment.apps/modeldeploy-operator serverside-applied (server dry run)" in result.stdout
    crds = kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "-f", str(CRDS))
    assert "modeldeployments.modeldeploy.dev serverside-applied (server dry run)" in crds.stdout


def test_every_sample_passes_the_api_servers_validation(installed: None, kubectl: Any, namespace: str) -> None:
    # The server also runs the CRD's CEL rules, which the offline schema check cannot.
    for sample in sorted((REPO / "samples").glob("*.yaml")):
        result = kubectl("apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", str(sample), check=False)
        assert result.returncode == 0, f"{sample.name}: {result.stderr}"


@pytest.fixture(scope="module")
def token_kubeconfig(installed: None, kubectl: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount and nothing else."""
    token = kubectl("create", "token", SA, "-n", SYSTEM_NS, "--duration=1h").stdout.strip()
    current = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = current["clusters"][0]["cluster"]
    if "certificate-authority-data" not in cluster and "certificate-authority" in cluster:
        ca = Path(cluster.pop("certificate-authority")).read_bytes()
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": SA, "context": {"cluster": "cluster", "user": SA}}],
        "current-context": SA,
    }
    path = tmp_path_factory.mktemp("sa") / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def can_i(cluster: Any, kubeconfig: Path, *args: str) -> bool:
    result = subprocess.run(
        [cluster.kubectl_path, "--kubeconfig", str(kubeconfig), "auth", "can-i", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout.strip() in {"yes", "no"}, result.stderr
    return result.stdout.strip() == "yes"


@pytest.fixture
def operator_as_service_account(
    cluster: Any, token_kubeconfig: Path, namespace: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    # One namespace, not the whole cluster as in the Deployment: other tests run their own operators beside this
    # one. The Lease goes where the Deployment puts it (POD_NAMESPACE).
    env = {
        **cluster.env,
        "KUBECONFIG": str(token_kubeconfig),
        "POD_NAMESPACE": SYSTEM_NS,
        "MODELDEPLOY_OPERATOR_LEASE_DURATION_SECONDS": "6",
    }
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modeldeploy.cli", "operator", "--namespace", namespace],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_until(
            lambda: "leading as" in log.read_text() or proc.poll() is not None,
            timeout=60,
            what="the operator (as its ServiceAccount) to take the Lease",
            describe=log.read_text,
        )
        assert proc.poll() is None, log.read_text()
        yield proc, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_operator_with_only_its_role_takes_a_sample_to_ready(
    operator_as_service_account: tuple[subprocess.Popen[bytes], Path], kubectl: Any, namespace: str
) -> None:
    proc, log = operator_as_service_account
    kubectl("apply", "-n", namespace, "-f", str(REPO / "samples" / "digits-cnn.yaml"))
    result = kubectl(
        "wait", "--for=condition=Ready", "md/digits", "-n", namespace, "--timeout=120s", check=False, timeout=130
    )
    assert result.returncode == 0, f"{result.stderr}\noperator log:\n{log.read_text()[-4000:]}"
    md = json.loads(kubectl("get", "md/digits", "-n", namespace, "-o", "json").stdout)
    assert md["status"]["phase"] == "Ready" and md["status"]["readyReplicas"] == 2
    assert argocd_health(md)["status"] == "Healthy"
    # Watching one namespace (not the whole cluster as the Deployment does) makes kopf list namespaces, which the
    # role rightly does not allow; kopf then uses the namespace it was given. Any other denial is a missing rule.
    namespace_listing = ("/api/v1/namespaces ->", "list namespaces", "watch for namespaces")
    denied = [
        line
        for line in log.read_text().splitlines()
        if ("403" in line or "forbidden" in line.lower()) and not any(n in line for n in namespace_listing)
    ]
    assert not denied, "\n".join(denied)
    assert proc.poll() is None


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (("list", "modeldeployments.modeldeploy.dev", "--all-namespaces"), True),
        (("patch", "modeldeployments.modeldeploy.dev", "--subresource=status", "-n", "team-a"), True),
        (("create", "jobs.batch", "-n", "team-a"), True),
        (("patch", "deployments.apps", "-n", "team-a"), True),
        (("get", "pods", "--subresource=proxy", "-n", "team-a"), True),  # a canary's /metrics
        (("create", "pods", "--subresource=proxy", "-n", "team-a"), False),
        (("update", "leases.coordination.k8s.io/modeldeploy-operator", "-n", SYSTEM_NS), True),
        # no Secrets, anywhere
        (("get", "secrets", "-n", "team-a"), False),
        (("list", "secrets", "--all-namespaces"), False),
        (("get", "secrets", "-n", SYSTEM_NS), False),
        # never a ModelDeployment's spec, nor its deletion
        (("patch", "modeldeployments.modeldeploy.dev", "-n", "team-a"), False),
        (("delete", "modeldeployments.modeldeploy.dev", "-n", "team-a"), False),
        # nothing it does not make
        (("delete", "deployments.apps", "-n", "kube-system"), False),
        (("update", "configmaps", "-n", "team-a"), False),
        (("create", "pods", "-n", "team-a"), False),
        (("delete", "pods", "-n", "team-a"), False),
        (("create", "rolebindings.rbac.authorization.k8s.io", "-n", "team-a"), False),
        (("patch", "nodes", "--all-namespaces"), False),
        # other Leases, and Leases elsewhere
        (("update", "leases.coordination.k8s.io/kube-scheduler", "-n", "kube-system"), False),
        (("update", "leases.coordination.k8s.io/other", "-n", SYSTEM_NS), False),
        (("create", "leases.coordination.k8s.io", "-n", "team-a"), False),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else str(v),
)
def test_what_the_service_account_may_do(
    cluster: Any, token_kubeconfig: Path, args: tuple[str, ...], allowed: bool
) -> None:
    assert can_i(cluster, token_kubeconfig, *args) is allowed
