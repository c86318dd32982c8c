"""The operator on the real local control plane (kwok plays the pods): one test per behaviour of the issue."""

from __future__ import annotations

import datetime
import json
import signal
import time
from collections.abc import Callable
from typing import Any

from conftest import Models, OperatorProcess

from modeldeploy.cluster.waiting import wait_until

DIGITS: dict[str, Any] = {"training": {"dataset": {"builtin": "digits"}, "epochs": 2}, "serving": {"replicas": 2}}
FAIL_REPORT = json.dumps({"ok": False, "reason": "InvalidData", "message": "dataset: column 'label' not found"})


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def _training_jobs(models: Models, name: str) -> list[dict[str, Any]]:
    return models.items("jobs", f"modeldeploy.dev/model={name},app.kubernetes.io/component=training")


def test_apply_trains_then_serves_and_reports_ready(
    operator: OperatorProcess, models: Models, kubectl: Any, namespace: str
) -> None:
    models.apply("digits", DIGITS)
    kubectl("wait", "--for=condition=Ready", "md/digits", "-n", namespace, "--timeout=90s", timeout=100)
    status = models.wait_phase("digits", "Ready")
    (job,) = _training_jobs(models, "digits")
    short = job["metadata"]["labels"]["modeldeploy.dev/spec-hash"]
    assert job["metadata"]["name"] == f"digits-train-{short}"
    assert status["modelVersion"] == f"v{short}"
    assert status["readyReplicas"] == 2 and status["replicas"] == 2
    assert status["compression"]["accuracy"] == 0.953
    assert status["selector"] == "app.kubernetes.io/component=serving,modeldeploy.dev/model=digits"
    assert status["endpoint"] == f"http://digits.{namespace}.svc:8080"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert {k: conditions[k]["status"] for k in conditions} == {
        "Trained": "True",
        "Compressed": "True",
        "Available": "True",
        "Progressing": "False",
        "Degraded": "False",
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
    }
    assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"] for c in conditions.values())
    deployment = models.get("deployment", "digits")
    assert _env(deployment)["MODELDEPLOY_MODEL_DIR"] == f"/models/digits/v{short}"
    assert models.get("service", "digits") is not None
    assert models.get("pvc", "digits-models") is not None
    events = [e for e in models.items("events") if e["involvedObject"]["name"] == "digits"]
    # One event per phase change; the conditions that changed with it are in its note.
    assert {"Training", "Deploying", "Ready"} <= {e["reason"] for e in events}
    assert any(e["reason"] == "Deploying" and "Trained=True" in e["message"] for e in events)
    printed = kubectl("get", "md", "digits", "-n", namespace).stdout
    assert "Ready" in printed and "2/2" in printed and f"v{short}" in printed


def test_scale_and_drift_are_corrected_within_seconds(
    operator: OperatorProcess, models: Models, kubectl: Any, namespace: str
) -> None:
    models.apply("digits", DIGITS)
    models.wait_phase("digits", "Ready")
    kubectl("scale", "md/digits", "--replicas=5", "-n", namespace)
    status = models.wait_phase("digits", "Ready", timeout=30)
    assert status["readyReplicas"] == 5
    kubectl("scale", "deployment/digits", "--replicas=1", "-n", namespace)
    wait_until(
        lambda: (models.get("deployment", "digits") or {}).get("spec", {}).get("replicas") == 5,
        timeout=15,
        what="the Deployment's replicas put back to 5",
    )
    kubectl("delete", "deployment/digits", "service/digits", "-n", namespace, "--wait=false")
    wait_until(
        lambda: (
            models.get("service", "digits") is not None
            and models.status("digits").get("readyReplicas") == 5
            and models.status("digits").get("phase") == "Ready"
        ),
        timeout=30,
        what="the deleted Deployment and Service recreated and Ready",
        describe=lambda: models.status("digits"),
    )


def test_autoscaling_hpa_owns_the_replicas(
    operator: OperatorProcess, models: Models, kubectl: Any, namespace: str
) -> None:
    spec = {**DIGITS, "serving": {"autoscaling": {"minReplicas": 1, "maxReplicas": 4}}}
    models.apply("digits", spec)
    models.wait_phase("digits", "Ready")
    hpa = models.get("hpa", "digits")
    assert hpa["spec"]["maxReplicas"] == 4 and hpa["spec"]["scaleTargetRef"]["name"] == "digits"
    # What the HPA does: scale the Deployment. The operator follows instead of putting the count back.
    kubectl("scale", "deployment/digits", "--replicas=3", "-n", namespace)
    wait_until(
        lambda: models.status("digits").get("readyReplicas") == 3 and models.status("digits").get("phase") == "Ready",
        timeout=30,
        what="3 ready replicas kept",
        describe=lambda: models.status("digits"),
    )
    assert models.get("deployment", "digits")["spec"]["replicas"] == 3


def test_serving_change_rolls_without_retraining(operator: OperatorProcess, models: Models) -> None:
    models.apply("digits", DIGITS)
    models.wait_phase("digits", "Ready")
    models.apply("digits", {**DIGITS, "serving": {"replicas": 2, "batching": {"maxBatchSize": 8}}})
    models.wait_phase("digits", "Ready")
    assert _env(models.get("deployment", "digits"))["MODELDEPLOY_MAX_BATCH_SIZE"] == "8"
    assert len(_training_jobs(models, "digits")) == 1


def test_training_change_trains_a_new_version_and_rolls_with_zero_unavailable(
    operator: OperatorProcess, models: Models
) -> None:
    models.apply("digits", {**DIGITS, "retainVersions": 1})
    first = models.wait_phase("digits", "Ready")["modelVersion"]
    models.apply("digits", {**DIGITS, "retainVersions": 1, "training": {**DIGITS["training"], "epochs": 7}})
    lowest = [2]

    def rolled() -> bool:
        deployment = models.get("deployment", "digits") or {}
        lowest[0] = min(lowest[0], int(deployment.get("status", {}).get("availableReplicas") or 0))
        status = models.status("digits")
        return status.get("phase") == "Ready" and status.get("modelVersion") != first

    wait_until(rolled, timeout=90, what="the new version Ready", describe=lambda: models.status("digits"))
    assert lowest[0] >= 2, "a replica became unavailable during the rollout"
    status = models.status("digits")
    assert [v["version"] for v in status["versions"]] == [status["modelVersion"]]
    wait_until(lambda: len(_training_jobs(models, "digits")) == 1, timeout=30, what="the old training Job removed")
    wait_until(
        lambda: models.items("jobs", "app.kubernetes.io/component=cleanup"),
        timeout=30,
        what="a cleanup Job for the old artifact",
    )


def test_failed_training_sets_failed_without_retry_and_a_new_generation_retries(
    operator: OperatorProcess, models: Models
) -> None:
    failing = {
        **DIGITS,
        "training": {
            **DIGITS["training"],
            "podAnnotations": {
                "modeldeploy.dev/fake-result": "fail",
                "modeldeploy.dev/fake-termination-message": FAIL_REPORT,
            },
        },
    }
    models.apply("digits", failing)
    models.wait_phase("digits", "Failed")
    trained = models.condition("digits", "Trained")
    assert trained["status"] == "False" and trained["reason"] == "InvalidData"
    assert "column 'label' not found" in trained["message"]
    assert models.condition("digits", "Ready")["status"] == "False"
    # kstatus reads this as Failed (a GitOps pipeline stops waiting): Stalled=True at the current generation.
    stalled = models.condition("digits", "Stalled")
    assert stalled["status"] == "True" and "column 'label' not found" in stalled["message"]
    assert models.condition("digits", "Reconciling")["status"] == "False"
    (job,) = _training_jobs(models, "digits")
    assert len(models.items("pods", f"job-name={job['metadata']['name']}")) == 1  # exit 1 fails the Job: no retries
    models.apply("digits", DIGITS)  # same training spec, new generation: tried again
    models.wait_phase("digits", "Ready")


def test_crash_looping_pods_are_degraded_not_ready(operator: OperatorProcess, models: Models) -> None:
    models.apply(
        "digits", {**DIGITS, "serving": {"replicas": 1, "podAnnotations": {"modeldeploy.dev/fake-result": "crashloop"}}}
    )
    models.wait_phase("digits", "Degraded")
    assert models.condition("digits", "Ready")["status"] == "False"
    assert "CrashLoopBackOff" in models.condition("digits", "Degraded")["message"]


def test_deletion_garbage_collects_every_child_without_a_finalizer(
    operator: OperatorProcess, models: Models, kubectl: Any, namespace: str
) -> None:
    models.apply("digits", DIGITS)
    models.wait_phase("digits", "Ready")
    assert not models.get("md", "digits")["metadata"].get("finalizers")
    kubectl("delete", "md/digits", "-n", namespace, "--timeout=30s", timeout=40)
    wait_until(
        lambda: (
            not any(
                models.items(kind, "modeldeploy.dev/model=digits")
                for kind in ("deployments", "services", "jobs", "pvc")
            )
        ),
        timeout=60,
        what="every child of digits removed",
    )


def test_restart_during_training_and_when_ready_converges_without_duplicates(
    start_operator: Callable[..., OperatorProcess], models: Models, kubectl: Any, namespace: str
) -> None:
    first = start_operator("first")
    hold = {**DIGITS, "training": {**DIGITS["training"], "podAnnotations": {"modeldeploy.dev/fake-result": "hold"}}}
    models.apply("digits", hold)
    wait_until(lambda: _training_jobs(models, "digits"), timeout=60, what="the training Job")
    first.stop(signal.SIGKILL)
    pod = models.items("pods", "app.kubernetes.io/component=training")[0]["metadata"]["name"]
    kubectl("annotate", "pod", pod, "-n", namespace, "modeldeploy.dev/fake-result=succeed", "--overwrite")
    second = start_operator("second")
    status = models.wait_phase("digits", "Ready")
    assert len(_training_jobs(models, "digits")) == 1
    assert len(models.items("deployments", "modeldeploy.dev/model=digits")) == 1
    before = {c["type"]: c["lastTransitionTime"] for c in status["conditions"]}
    second.stop(signal.SIGKILL)
    third = start_operator("third")
    wait_until(third.is_leading, timeout=30, what="the third operator leading", describe=third.log)
    status = models.wait_phase("digits", "Ready")
    assert {c["type"]: c["lastTransitionTime"] for c in status["conditions"]} == before


def test_two_operators_never_both_act_and_the_standby_answers_its_probes(
    start_operator: Callable[..., OperatorProcess], models: Models, kubectl: Any, namespace: str
) -> None:
    leader = start_operator("a")
    wait_until(leader.is_leading, timeout=30, what="a leading", describe=leader.log)
    standby = start_operator("b")
    wait_until(lambda: "standby" in standby.log(), timeout=30, what="b waiting as standby", describe=standby.log)
    # The standby is alive and ready (it reaches the Lease) although kopf has not started in it.
    assert standby.probe("/healthz") == (200, {"role": "standby"})
    assert standby.probe("/readyz") == (200, {"role": "standby", "ready": True})
    assert leader.probe("/healthz") == (200, {"role": "leader"})
    models.apply("digits", DIGITS)
    models.wait_phase("digits", "Ready")
    assert "digits" in leader.log()
    assert not standby.is_leading() and "digits" not in standby.log()
    assert standby.probe("/healthz") == (200, {"role": "standby"})
    assert leader.stop(signal.SIGTERM) == 0
    wait_until(standby.is_leading, timeout=20, what="b taking over", describe=standby.log)
    assert standby.probe("/healthz") == (200, {"role": "leader"})
    kubectl("scale", "md/digits", "--replicas=3", "-n", namespace)
    assert models.wait_phase("digits", "Ready", timeout=30)["readyReplicas"] == 3
    assert "digits" in standby.log()


def test_a_standby_stops_cleanly_without_ever_leading(start_operator: Callable[..., OperatorProcess]) -> None:
    leader = start_operator("a")
    wait_until(leader.is_leading, timeout=30, what="a leading", describe=leader.log)
    standby = start_operator("b")
    wait_until(lambda: "standby" in standby.log(), timeout=30, what="b waiting as standby", describe=standby.log)
    assert standby.stop(signal.SIGTERM, timeout=10) == 0
    assert leader.probe("/healthz") == (200, {"role": "leader"})


def test_a_leader_whose_lease_is_taken_stops_acting(
    operator: OperatorProcess, models: Models, kubectl: Any, namespace: str
) -> None:

    def take_lease() -> bool:
        # As another elector would: read, then replace at that resourceVersion. The leader renews every few seconds,
        # so a renewal between the two makes the replace a Conflict; read again and retry, as client-go does.
        lease = json.loads(kubectl("get", "lease", "modeldeploy-operator", "-n", namespace, "-o", "json").stdout)
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease["spec"].update(holderIdentity="someone-else", renewTime=now, acquireTime=now, leaseDurationSeconds=300)
        replaced = kubectl("replace", "-f", "-", input=json.dumps(lease), check=False)
        if replaced.returncode != 0 and "Conflict" not in replaced.stderr and "modified" not in replaced.stderr:
            raise AssertionError(f"kubectl replace of the Lease failed: {replaced.stderr.strip()}")
        return replaced.returncode == 0

    wait_until(take_lease, timeout=30, what="the Lease taken by someone else", interval=0.2)
    assert operator.proc is not None
    wait_until(lambda: operator.proc.poll() is not None, timeout=15, what="the leader to stop", describe=operator.log)
    assert operator.proc.returncode == 1
    assert "lost the Lease" in operator.log() and "someone-else" in operator.log()
    # Nothing acts on a new ModelDeployment, and the intruder keeps its Lease (a lost leader does not release it).
    models.apply("digits", DIGITS)
    time.sleep(3)  # nothing to wait for: the point is that nothing happens
    assert not _training_jobs(models, "digits") and not models.status("digits")
    lease = json.loads(kubectl("get", "lease", "modeldeploy-operator", "-n", namespace, "-o", "json").stdout)
    assert lease["spec"]["holderIdentity"] == "someone-else"


def test_operator_writes_status_only_through_the_status_subresource(
    operator: OperatorProcess, models: Models, kubectl: Any, namespace: str
) -> None:
    models.apply("digits", DIGITS)
    models.wait_phase("digits", "Ready")
    shown = kubectl("get", "md", "digits", "-n", namespace, "-o", "json", "--show-managed-fields").stdout
    fields = json.loads(shown)["metadata"]["managedFields"]
    ours = [f for f in fields if f["manager"] == "modeldeploy-operator"]
    assert ours and all(f.get("subresource") == "status" for f in ours)


def test_auth_tls_and_network_policy_objects_appear_and_the_policy_goes_when_turned_off(
    operator: OperatorProcess, models: Models, kubectl: Any, namespace: str
) -> None:
    """What the operator makes of spec.serving.auth, .tls and .allowFrom on the real API server (kwok plays the
    pods, so the Secrets are named, not mounted; no CNI here enforces the policy: the object is what is tested)."""
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    serving = {
        "replicas": 1,
        "auth": {"secretName": "digits-tokens"},
        "tls": {"secretName": "digits-tls"},
        "allowFrom": [prometheus, {"podSelector": {}}],
    }
    models.apply("guarded", {**DIGITS, "serving": serving})
    models.wait_phase("guarded", "Ready")
    policy = wait_until(lambda: models.get("networkpolicy", "guarded"), timeout=30, what="the NetworkPolicy")
    assert policy["metadata"]["ownerReferences"][0]["name"] == "guarded"
    assert policy["spec"]["podSelector"]["matchLabels"]["modeldeploy.dev/model"] == "guarded"
    assert policy["spec"]["ingress"][0]["from"] == [prometheus, {"podSelector": {}}]
    pod_spec = models.get("deployment", "guarded")["spec"]["template"]["spec"]
    secrets = {v["secret"]["secretName"] for v in pod_spec["volumes"] if "secret" in v}
    assert secrets == {"digits-tokens", "digits-tls"}
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    kubectl(
        "patch", "md/guarded", "-n", namespace, "--type=merge", "-p", '{"spec":{"serving":{"networkPolicy":false}}}'
    )
    wait_until(lambda: models.get("networkpolicy", "guarded") is None, timeout=30, what="the NetworkPolicy deleted")
