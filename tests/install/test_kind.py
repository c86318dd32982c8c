"""The kind quickstart's make targets, as far as they can be checked without Docker and kind (a dry run)."""

from __future__ import annotations

import subprocess

import yaml

from .conftest import REPO


def test_kind_demo_builds_loads_deploys_waits_and_predicts_in_that_order() -> None:
    result = subprocess.run(
        ["make", "-n", "kind-demo"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    steps = [
        "kind create cluster --name modeldeploy --config kind-config.yaml",
        "images/build.sh training serving operator",
        # Into the nodes that take workloads only: the 2 GB training image in every node fills a disk.
        "kind get nodes --name modeldeploy | grep -v -- '-control-plane'",
        "kind load docker-image --name modeldeploy ${nodes:+--nodes $nodes} modeldeploy/$image:0.1.0",
        "apply --server-side -f crds/",
        "apply --server-side -k manifests/overlays/kind",
        "rollout status deployment/modeldeploy-operator",
        "wait --for=condition=Ready md/digits",
        "port-forward svc/digits 18080:8080",
        "modeldeploy predict --url http://127.0.0.1:18080 --model digits",
    ]
    positions = [result.stdout.find(step) for step in steps]
    assert all(p >= 0 for p in positions), dict(zip(steps, positions, strict=True))
    assert positions == sorted(positions)


def test_kind_config_has_a_worker_for_the_workloads() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker"]
