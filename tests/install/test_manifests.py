"""What ops people check in an operator's install manifests, checked on the kustomize builds."""

from __future__ import annotations

import tomllib
from typing import Any

from .conftest import REPO, build, find

RBAC_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


def _operator_rules() -> list[dict[str, Any]]:
    return list(find(build(), "ClusterRole", "modeldeploy-operator")["rules"])


def test_the_base_holds_the_operator_and_no_crd() -> None:
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in build())
    assert kinds == [
        "ClusterRole/modeldeploy-edit",
        "ClusterRole/modeldeploy-operator",
        "ClusterRole/modeldeploy-view",
        "ClusterRoleBinding/modeldeploy-operator",
        "Deployment/modeldeploy-operator",
        "Namespace/modeldeploy-system",
        "PodDisruptionBudget/modeldeploy-operator",
        "Role/modeldeploy-operator-leader-election",
        "RoleBinding/modeldeploy-operator-leader-election",
        "ServiceAccount/modeldeploy-operator",
    ]
    for obj in build():
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "modeldeploy" and "app.kubernetes.io/name" in labels, obj


def test_the_operator_role_is_least_privilege() -> None:
    rules = _operator_rules()
    granted = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
        assert set(rule["verbs"]) <= RBAC_VERBS
    assert not any(resource in {"secrets", "configmaps"} for _, resource in granted)
    assert granted[("modeldeploy.dev", "modeldeployments")] == {"list", "watch"}  # never its spec
    assert granted[("modeldeploy.dev", "modeldeployments/status")] == {"patch"}
    assert granted[("", "pods")] == {"list", "watch"}
    assert "delete" not in granted[("apps", "deployments")] and "delete" not in granted[("", "services")]
    # Before its first write to a child the operator reads who controls an object of that name (never adopts).
    children = [("batch", "jobs"), ("", "persistentvolumeclaims"), ("apps", "deployments"), ("", "services")]
    assert all("get" in granted[child] for child in [*children, ("autoscaling", "horizontalpodautoscalers")])


def test_leases_are_limited_to_the_operators_namespace_and_name() -> None:
    role = find(build(), "Role", "modeldeploy-operator-leader-election")
    assert role["metadata"]["namespace"] == "modeldeploy-system"
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["modeldeploy-operator"],
            "verbs": ["get", "update"],
        }
    ]
    assert not any(r for r in _operator_rules() if "leases" in r["resources"])


def test_the_deployment_runs_two_restricted_replicas_with_a_liveness_probe() -> None:
    deployment = find(build(), "Deployment", "modeldeploy-operator")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    assert security["readOnlyRootFilesystem"] is True
    assert "--liveness" in container["args"] and "http://0.0.0.0:8080/healthz" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    namespace = find(build(), "Namespace", "modeldeploy-system")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_kind_overlay_never_pulls_the_operator_image() -> None:
    deployment = find(build("manifests/overlays/kind"), "Deployment", "modeldeploy-operator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["imagePullPolicy"] == "Never"
    assert container["image"] == "modeldeploy/operator:0.1.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODELDEPLOY_OPERATOR_IMAGE_PULL_POLICY"] == "IfNotPresent"
    # The local builds (make kind-load) for the children too, not the release's images.
    assert env["MODELDEPLOY_OPERATOR_TRAINING_IMAGE"] == "modeldeploy/training:0.1.0"
    assert env["MODELDEPLOY_OPERATOR_SERVING_IMAGE"] == "modeldeploy/serving:0.1.0"
    assert "POD_NAMESPACE" in env and len(env) == len(container["env"])  # replaced, not added twice


def test_the_base_pulls_the_released_images_of_this_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    deployment = find(build(), "Deployment", "modeldeploy-operator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == f"ghcr.io/modeldeploy/modeldeploy-operator:{version}"
    assert env["MODELDEPLOY_OPERATOR_TRAINING_IMAGE"] == f"ghcr.io/modeldeploy/modeldeploy-training:{version}"
    assert env["MODELDEPLOY_OPERATOR_SERVING_IMAGE"] == f"ghcr.io/modeldeploy/modeldeploy-serving:{version}"
