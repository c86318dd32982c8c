"""Pin and canary on the real local control plane (kwok plays the pods): spec.serving.modelVersion and .canary."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import Models, OperatorProcess

from modeldeploy.cluster.waiting import wait_until

DIGITS: dict[str, Any] = {"training": {"dataset": {"builtin": "digits"}, "epochs": 2}, "serving": {"replicas": 2}}


def _with(serving: dict[str, Any], epochs: int = 2, **extra: Any) -> dict[str, Any]:
    return {"training": {**DIGITS["training"], "epochs": epochs}, "serving": serving, **extra}


def _training_jobs(models: Models) -> list[dict[str, Any]]:
    return models.items("jobs", "modeldeploy.dev/model=digits,app.kubernetes.io/component=training")


def _version(deployment: dict[str, Any] | None) -> str:
    return str(((deployment or {}).get("metadata") or {}).get("labels", {}).get("modeldeploy.dev/model-version"))


def _stopped(models: Models) -> bool:
    """The canary Deployment is scaled to zero and its pods are gone (it is kept for the next canary)."""
    canary = models.get("deployment", "digits-canary") or {}
    gone = not models.items("pods", "modeldeploy.dev/model=digits,modeldeploy.dev/track=canary")
    return canary.get("spec", {}).get("replicas") == 0 and gone


def _two_versions(models: Models, serving: dict[str, Any]) -> tuple[str, str]:
    """Train the first version, then a second one (a training change): (older, newer)."""
    models.apply("digits", _with(serving))
    first = str(models.wait_phase("digits", "Ready")["modelVersion"])
    models.apply("digits", _with(serving, epochs=7))
    wait_until(
        lambda: len(models.status("digits").get("versions") or []) == 2,
        timeout=90,
        what="the second version trained",
        describe=lambda: models.status("digits"),
    )
    second = str(models.status("digits")["versions"][0]["version"])
    assert second != first
    return first, second


def test_a_pin_rolls_back_without_training_a_missing_version_is_a_condition_and_unpin_returns(
    operator: OperatorProcess, models: Models
) -> None:
    older, newer = _two_versions(models, {"replicas": 2})
    models.wait_phase("digits", "Ready")
    assert models.status("digits")["modelVersion"] == newer
    jobs = len(_training_jobs(models))
    lowest = [2]

    def pinned() -> bool:
        deployment = models.get("deployment", "digits") or {}
        lowest[0] = min(lowest[0], int(deployment.get("status", {}).get("availableReplicas") or 0))
        status = models.status("digits")
        return status.get("phase") == "Ready" and status.get("modelVersion") == older and status.get("pinned") is True

    models.apply("digits", _with({"replicas": 2, "modelVersion": older}, epochs=7))
    wait_until(pinned, timeout=90, what="the pinned version Ready", describe=lambda: models.status("digits"))
    assert lowest[0] >= 2, "a replica became unavailable while rolling to the pinned version"
    assert _version(models.get("deployment", "digits")) == older
    assert len(_training_jobs(models)) == jobs  # nothing trained
    assert "pinned" in models.condition("digits", "Ready")["message"]

    models.apply("digits", _with({"replicas": 2, "modelVersion": "v000000000000"}, epochs=7))
    models.wait_phase("digits", "Degraded")
    degraded = models.condition("digits", "Degraded")
    assert degraded["reason"] == "VersionNotRetained" and "v000000000000" in degraded["message"]
    assert older in degraded["message"] and newer in degraded["message"]
    assert _version(models.get("deployment", "digits")) == older  # what served keeps serving

    models.apply("digits", _with({"replicas": 2}, epochs=7))
    status = models.wait_phase("digits", "Ready")
    assert status["modelVersion"] == newer and "pinned" not in status
    assert _version(models.get("deployment", "digits")) == newer


def test_a_canary_runs_beside_the_stable_version_at_its_replica_share_and_the_spec_promotes_it(
    operator: OperatorProcess, models: Models, kubectl: Any, namespace: str
) -> None:
    serving = {"replicas": 4, "canary": {"trafficPercent": 25}}
    older, newer = _two_versions(models, serving)

    def split() -> bool:
        main, canary = models.get("deployment", "digits"), models.get("deployment", "digits-canary")
        return bool(
            main
            and canary
            and _version(main) == older
            and _version(canary) == newer
            and main["spec"]["replicas"] == 3
            and canary["spec"]["replicas"] == 1
            and (canary.get("status") or {}).get("readyReplicas") == 1
        )

    wait_until(split, timeout=60, what="3 stable and 1 canary replicas", describe=lambda: models.status("digits"))
    canary = wait_until(
        lambda: (
            (models.status("digits").get("canary") or {}) if models.status("digits").get("readyReplicas") == 4 else None
        ),
        timeout=30,
        what="the canary's status",
    )
    assert canary["version"] == newer and canary["state"] == "Progressing" and canary["share"] == "25%"
    status = models.status("digits")
    assert status["modelVersion"] == older and status["phase"] == "Deploying"
    assert models.condition("digits", "Progressing")["reason"] == "CanaryInProgress"
    assert models.condition("digits", "Reconciling")["status"] == "True"
    # The one Service selects the pods of both Deployments.
    service = models.get("service", "digits")
    selector = ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items())
    versions = sorted(p["metadata"]["labels"]["modeldeploy.dev/model-version"] for p in models.items("pods", selector))
    assert versions == sorted([older] * 3 + [newer])
    # kubectl get md shows the stable and canary versions and the share.
    table = kubectl("get", "md", "digits", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert "CANARY" in header and "SHARE" in header
    assert older in row and newer in row and "25%" in row

    models.apply("digits", _with({"replicas": 4, "canary": {"trafficPercent": 100}}, epochs=7))
    status = models.wait_phase("digits", "Ready")
    assert status["modelVersion"] == newer and status["canary"]["state"] == "Promoted"
    wait_until(lambda: _stopped(models), timeout=30, what="the canary scaled to zero")
    main = models.get("deployment", "digits")
    assert _version(main) == newer and main["spec"]["replicas"] == 4


def test_a_canary_whose_pods_crash_is_rolled_back_and_the_stable_version_serves_throughout(
    operator: OperatorProcess, models: Models
) -> None:
    # Only a canary's pods crash-loop with this annotation (the local cluster's kwok stages).
    serving = {
        "replicas": 2,
        "canary": {"trafficPercent": 50},
        "podAnnotations": {"modeldeploy.dev/fake-result": "canary-crashloop"},
    }
    models.apply("digits", _with(serving))
    older = str(models.wait_phase("digits", "Ready")["modelVersion"])
    lowest = [2]

    def rolled_back() -> dict[str, Any] | None:
        main = models.get("deployment", "digits") or {}
        if _version(main) == older:
            lowest[0] = min(lowest[0], int(main.get("status", {}).get("availableReplicas") or 0))
        canary = models.status("digits").get("canary") or {}
        return canary if canary.get("state") == "RolledBack" else None

    models.apply("digits", _with(serving, epochs=7))
    canary = wait_until(
        rolled_back, timeout=90, what="the canary rolled back", describe=lambda: models.status("digits")
    )
    assert canary["reason"] == "CanaryPodsFailing" and "CrashLoopBackOff" in canary["message"]
    status = models.wait_phase("digits", "Degraded")
    assert status["modelVersion"] == older
    stalled = models.condition("digits", "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "CanaryRolledBack"
    wait_until(lambda: _stopped(models), timeout=30, what="the canary scaled to zero")
    main = wait_until(
        lambda: d if (d := models.get("deployment", "digits")) and d["status"].get("readyReplicas") == 2 else None,
        timeout=30,
        what="the stable Deployment back at 2 ready replicas",
    )
    assert _version(main) == older
    assert lowest[0] >= 1, "the stable version stopped serving during the canary"


def test_a_canary_that_stays_ready_is_promoted_after_promote_after_seconds(
    operator: OperatorProcess, models: Models
) -> None:
    serving = {"replicas": 2, "canary": {"trafficPercent": 50, "promoteAfterSeconds": 10}}
    older, newer = _two_versions(models, serving)
    wait_until(
        lambda: (models.status("digits").get("canary") or {}).get("state") == "Progressing",
        timeout=60,
        what="the canary running",
        describe=lambda: models.status("digits"),
    )
    status = models.wait_phase("digits", "Ready", timeout=90)
    assert status["modelVersion"] == newer and older != newer
    assert status["canary"]["state"] == "Promoted" and status["canary"]["reason"] == "PromotedAfterAnalysis"
    wait_until(lambda: _stopped(models), timeout=30, what="the canary scaled to zero")


def test_a_canary_whose_error_rate_cannot_be_read_is_not_promoted_blindly(
    operator: OperatorProcess, models: Models
) -> None:
    # kwok's pods answer nothing: the operator's read of their /metrics through pods/proxy fails, so with
    # maxErrorRate the error rate is unknown and the canary is rolled back when its window ends, saying why.
    serving = {"replicas": 2, "canary": {"trafficPercent": 50, "promoteAfterSeconds": 10, "maxErrorRate": 0.05}}
    older, newer = _two_versions(models, serving)
    canary = wait_until(
        lambda: c if (c := models.status("digits").get("canary") or {}).get("state") == "RolledBack" else None,
        timeout=90,
        what="the canary rolled back",
        describe=lambda: models.status("digits"),
    )
    assert canary["version"] == newer and canary["reason"] == "CanaryMetricsUnavailable"
    assert "pods/proxy" in canary["message"]
    assert models.wait_phase("digits", "Degraded")["modelVersion"] == older
    assert "metrics unread" in operator.log()


GATEWAY_API = "sigs.k8s.io/gateway-api@v1.3.0"


@pytest.fixture
def gateway_api(kubectl: Any) -> None:
    """The Gateway API's standard CRDs (HTTPRoute, Gateway), from its Go module (the Go module proxy serves it)."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        pytest.skip("Go is not installed (the local control plane needs it too)")
    found = subprocess.run(
        [go, "mod", "download", "-json", GATEWAY_API], capture_output=True, text=True, check=True, timeout=300
    )
    crds = Path(json.loads(found.stdout)["Dir"]) / "config" / "crd" / "standard"
    for kind in ("httproutes", "gateways"):
        kubectl("apply", "--server-side", "-f", str(crds / f"gateway.networking.k8s.io_{kind}.yaml"))
    jsonpath = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
    for kind in ("httproutes", "gateways"):
        name = f"{kind}.gateway.networking.k8s.io"
        wait_until(
            lambda n=name: kubectl("get", "crd", n, "-o", jsonpath, check=False).stdout.strip() == "True",
            timeout=60,
            what=f"CRD {name} established",
        )


def test_without_the_gateway_api_a_named_gateway_is_a_clear_condition(
    operator: OperatorProcess, models: Models, kubectl: Any
) -> None:
    if kubectl("get", "crd", "httproutes.gateway.networking.k8s.io", check=False).returncode == 0:
        pytest.skip("the Gateway API is installed in this session's cluster already")
    models.apply("digits", _with({"replicas": 2, "gateway": {"name": "public"}}))
    ready = wait_until(
        lambda: c if (c := models.condition("digits", "Ready")).get("reason") == "GatewayAPIMissing" else None,
        timeout=90,
        what="Ready=False GatewayAPIMissing",
        describe=lambda: models.status("digits"),
    )
    assert "remove spec.serving.gateway" in ready["message"]
    assert "route" not in models.status("digits")
    assert models.get("deployment", "digits") is not None  # the rest is made all the same


def test_with_a_gateway_the_http_route_weights_are_exact_and_follow_the_canary(
    operator: OperatorProcess, models: Models, gateway_api: None
) -> None:
    serving = {"replicas": 4, "canary": {"trafficPercent": 10}, "gateway": {"name": "public", "sectionName": "http"}}
    older, newer = _two_versions(models, serving)

    def weights() -> dict[str, int]:
        route = models.get("httproute.gateway.networking.k8s.io", "digits") or {}
        backends = ((route.get("spec") or {}).get("rules") or [{}])[0].get("backendRefs") or []
        return {b["name"]: b["weight"] for b in backends}

    wait_until(
        lambda: weights() == {"digits-stable": 90, "digits-canary": 10},
        timeout=60,
        what="the HTTPRoute at 90/10",
        describe=weights,
    )
    route = models.get("httproute.gateway.networking.k8s.io", "digits")
    assert (
        route["spec"]["parentRefs"][0]["name"] == "public" and route["spec"]["parentRefs"][0]["sectionName"] == "http"
    )
    assert route["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    # Each track's Service selects its own pods: 3 stable (older), 1 canary (newer), per the replica ratio.
    for track, version, count in (("stable", older, 3), ("canary", newer, 1)):
        selector = ",".join(f"{k}={v}" for k, v in models.get("service", f"digits-{track}")["spec"]["selector"].items())
        wait_until(
            lambda s=selector, v=version, n=count: sorted(
                p["metadata"]["labels"]["modeldeploy.dev/model-version"]
                for p in models.items("pods", s)
                if not p["metadata"].get("deletionTimestamp")
            ) == [v] * n,
            timeout=60,
            what=f"{count} {track} pods of {version}",
        )  # fmt: skip
    models.apply("digits", _with({**serving, "canary": {"trafficPercent": 100}}, epochs=7))
    models.wait_phase("digits", "Ready")
    wait_until(
        lambda: weights() == {"digits-stable": 100, "digits-canary": 0},
        timeout=60,
        what="the HTTPRoute at 100/0 after the promotion",
        describe=weights,
    )
