"""The oldest Kubernetes the operator supports (`compatibility.MINIMUM`, 1.30) takes what the project writes.

A whole local control plane of that release (kube-apiserver, kube-controller-manager and kube-scheduler built from
its Go modules by `make oldest-binaries`; etcd, kwok and kubectl as usual, kwok playing the pods), the CRD and the
operator's install manifests applied server-side, the operator started against it, and a model that uses what sets
the minimum (the serving pods' preStop sleep, the CRD's CEL rules with `quantity()`, the Job's podFailurePolicy, an
HPA, a NetworkPolicy) taken to Ready. A field an older server did not know would be dropped without an error, so the
test reads each one back from the objects the operator applied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CRDS, Models, OperatorProcess
from localclusters import TEST_CLUSTER_PREFIX, ClusterHandle, Kubectl, kubectl_of, local_cluster
from modeldeploy_operator import compatibility

from modeldeploy.cluster.local import LocalCluster, find_binaries
from modeldeploy.cluster.waiting import wait_crd_established, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL: dict[str, Any] = {
    "training": {"dataset": {"builtin": "digits"}, "epochs": 2},
    "serving": {
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4, "targetCPUUtilizationPercentage": 70},
    },
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterHandle]:
    if os.environ.get("MODELDEPLOY_KUBECONFIG"):
        pytest.skip("starts a control plane of the oldest supported Kubernetes; MODELDEPLOY_KUBECONFIG names another")
    bin_dir = find_binaries(oldest=True)
    with local_cluster(LocalCluster(f"{TEST_CLUSTER_PREFIX}oldest-{os.getpid()}", nodes=2), bin_dir) as handle:
        yield handle


@pytest.fixture(scope="module")
def kubectl(cluster: ClusterHandle) -> Kubectl:
    return kubectl_of(cluster)


@pytest.fixture(scope="module")
def crd(kubectl: Kubectl) -> None:
    kubectl("apply", "--server-side", "--field-manager=install", "-f", str(CRDS))
    wait_crd_established(lambda *a: str(kubectl(*a, check=False).stdout))


def _server_minor(kubectl: Kubectl) -> tuple[int, int]:
    version = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]
    found = compatibility.parse_server_version(version)
    assert found is not None, version
    return found


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid and ref.get("controller") for ref in obj["metadata"].get("ownerReferences", []))


def test_the_oldest_release_runs_the_install_and_a_model_to_ready(
    start_operator: Callable[..., OperatorProcess], models: Models, kubectl: Kubectl
) -> None:
    assert _server_minor(kubectl) == compatibility.MINIMUM
    # The operator's own install (namespace, RBAC, its Deployment and budget), as Argo CD or Flux would apply it.
    kubectl("apply", "--server-side", "--field-manager=install", "-k", str(REPO / "manifests" / "base"))

    operator = start_operator()
    wait_until(operator.is_leading, timeout=30, what="the operator to lead", describe=operator.log)
    assert f"(1.{compatibility.MINIMUM[1]} or newer is needed)" in operator.log()
    assert f"the API server runs Kubernetes v1.{compatibility.MINIMUM[1]}." in operator.log()

    models.apply("digits", MODEL)
    models.wait_phase("digits", "Ready", timeout=120)
    # The HPA (autoscaling/v2, 1.30's controller-manager) raises the Deployment to its minimum.
    wait_until(
        lambda: models.status("digits").get("readyReplicas") == 2,
        timeout=60,
        what="2 ready replicas, the HPA's minimum",
        describe=lambda: models.status("digits"),
    )

    uid = models.get("modeldeployment", "digits")["metadata"]["uid"]
    jobs = [j for j in models.items("jobs") if _owned_by(j, uid)]
    assert len(jobs) == 1 and jobs[0]["spec"]["podFailurePolicy"]["rules"], jobs
    deployment = models.get("deployment", "digits")
    assert _owned_by(deployment, uid)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # Kept only by a server that knows the preStop sleep action (on by default from 1.30; 1.29 drops it silently).
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0, container.get("lifecycle")
    assert container["resources"]["limits"]["memory"] == "512Mi"
    for kind in ("service", "horizontalpodautoscaler", "networkpolicy", "pvc"):
        child = models.get(kind, "digits-models" if kind == "pvc" else "digits")
        assert child is not None and _owned_by(child, uid), f"{kind} digits: {child}"
    hpa = models.get("horizontalpodautoscaler", "digits")
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["maxReplicas"] == 4


def test_the_oldest_release_enforces_the_crds_cel_rules(crd: None, models: Models) -> None:
    """The `quantity()` rule (limits >= requests) compiles and refuses on 1.30 as on newer releases."""
    bad = json.loads(json.dumps(MODEL))
    bad["serving"]["resources"]["limits"]["memory"] = "128Mi"
    manifest = {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "too-small"},
        "spec": bad,
    }
    refused = models.kubectl(
        "apply", "--server-side", "-n", models.namespace, "-f", "-", input=json.dumps(manifest), check=False
    )
    assert refused.returncode != 0
    assert "every resources.limits value must be at least its resources.requests value" in refused.stderr
    assert models.get("modeldeployment", "too-small") is None
