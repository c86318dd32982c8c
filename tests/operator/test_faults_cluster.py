"""The operator in a shared, faulty cluster (local control plane, kwok plays the pods): objects it did not make,
leadership lost while frozen."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import LEASE_TIMING, Models, OperatorProcess

from modeldeploy.cluster.local import LocalCluster
from modeldeploy.cluster.waiting import wait_until

DIGITS: dict[str, Any] = {"training": {"dataset": {"builtin": "digits"}, "epochs": 2}, "serving": {"replicas": 1}}
LEASE_SECONDS = float(LEASE_TIMING["MODELDEPLOY_OPERATOR_LEASE_DURATION_SECONDS"])


def _theirs(kind: str, name: str, namespace: str) -> dict[str, Any]:
    """A team's own Service or Deployment that happens to have a ModelDeployment's name."""
    meta = {"name": name, "namespace": namespace, "labels": {"app": "web"}}
    if kind == "Service":
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": 8000}]},
        }
    template = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:1"}]}}
    spec = {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": template}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}


def _blocked(models: Models, name: str) -> dict[str, Any] | None:
    md = models.get("modeldeployment", name) or {}
    status = md.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
    current = status.get("observedGeneration") == md.get("metadata", {}).get("generation")
    return status if current and ready.get("reason") == "ChildConflict" else None


def test_a_service_and_a_deployment_someone_else_made_are_never_modified_or_adopted(
    operator: OperatorProcess, models: Models, kubectl: Any, namespace: str
) -> None:
    before = {}
    for kind, name in (("Service", "web"), ("Deployment", "api")):
        kubectl("create", "-f", "-", input=json.dumps(_theirs(kind, name, namespace)))
        before[kind] = models.get(kind.lower(), name)
    models.apply("web", DIGITS)
    models.apply("api", DIGITS)
    for name, kind in (("web", "Service"), ("api", "Deployment")):
        status = wait_until(
            lambda name=name: _blocked(models, name),  # type: ignore[misc]
            timeout=90,
            what=f"{name} blocked by ChildConflict",
            describe=lambda name=name: models.status(name),  # type: ignore[misc]
        )
        conditions = {c["type"]: c for c in status["conditions"]}
        assert f"{kind} {name} already exists" in conditions["Ready"]["message"]
        assert "neither modifies nor adopts" in conditions["Ready"]["message"]
        assert conditions["Stalled"]["status"] == "True" and status["phase"] == "Failed"
        now = models.get(kind.lower(), name)
        # Untouched: the same spec and metadata (a Deployment's status moves on by itself), no owner reference.
        assert now["spec"] == before[kind]["spec"] and not now["metadata"].get("ownerReferences")
        assert now["metadata"].get("generation") == before[kind]["metadata"].get("generation")
        assert now["metadata"]["labels"] == before[kind]["metadata"]["labels"]
        assert not now["metadata"].get("annotations", {}).get("modeldeploy.dev/config-hash")
        events = [
            e
            for e in models.items("events")
            if e["involvedObject"]["name"] == name and e["involvedObject"]["kind"] == "ModelDeployment"
        ]
        conflicts = [e for e in events if e["reason"] == "ChildConflict"]
        assert len(conflicts) == 1, [(e["reason"], e["message"]) for e in events]
    # What is not in conflict is still made: web's Deployment, api's Service.
    assert models.get("deployment", "web")["metadata"]["ownerReferences"][0]["name"] == "web"
    assert models.get("service", "api")["metadata"]["ownerReferences"][0]["name"] == "api"
    # The user resolves the conflict: the operator makes its own Service and the model becomes Ready.
    kubectl("delete", "service", "web", "-n", namespace)
    status = models.wait_phase("web", "Ready", timeout=60)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Stalled"] == "False"
    assert models.get("service", "web")["spec"]["selector"] == {
        "modeldeploy.dev/model": "web",
        "app.kubernetes.io/component": "serving",
    }


def _log_time(log: str, pattern: str) -> datetime.datetime:
    """The wall-clock time of the first log line matching `pattern` (the operator logs asctime, local time)."""
    for line in log.splitlines():
        if re.search(pattern, line):
            return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    raise AssertionError(f"no log line matches {pattern!r}:\n{log}")


def test_a_lease_with_an_old_renew_time_that_just_changed_is_not_taken(
    start_operator: Callable[..., OperatorProcess], kubectl: Any, namespace: str
) -> None:
    def stamp(seconds_ago: float) -> str:
        moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "modeldeploy-operator", "namespace": namespace},
        # The holder's renewTime reads 20 s old (its clock is behind ours): by the local wall clock it expired long
        # ago, but it keeps renewing; only a record that stops changing for the lease duration is free.
        "spec": {"holderIdentity": "other", "renewTime": stamp(20), "leaseDurationSeconds": int(LEASE_SECONDS)},
    }
    kubectl("create", "-f", "-", input=json.dumps(lease))
    operator = start_operator()
    wait_until(lambda: "standby" in operator.log(), timeout=30, what="the operator waiting", describe=operator.log)
    kubectl(
        "patch", "lease", "modeldeploy-operator", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"renewTime": stamp(20)}}),
    )  # fmt: skip
    renewed = datetime.datetime.now()
    wait_until(operator.is_leading, timeout=60, what="the operator taking the abandoned Lease", describe=operator.log)
    waited = (_log_time(operator.log(), "leading as") - renewed).total_seconds()
    assert waited >= LEASE_SECONDS - 0.1, f"took the Lease {waited:.1f}s after its last renewal"


def test_a_frozen_leader_resumed_after_the_standby_took_over_writes_nothing(
    start_operator: Callable[..., OperatorProcess], models: Models, kubectl: Any, namespace: str
) -> None:
    first = start_operator("first")
    wait_until(first.is_leading, timeout=30, what="first leading", describe=first.log)
    second = start_operator("second")
    wait_until(lambda: "standby" in second.log(), timeout=30, what="second waiting", describe=second.log)
    models.apply("digits", DIGITS)
    models.wait_phase("digits", "Ready")
    assert first.proc is not None and second.proc is not None
    first.proc.send_signal(signal.SIGSTOP)
    frozen_at = len(first.log())
    try:
        wait_until(second.is_leading, timeout=60, what="second taking over", describe=second.log)
        # Nobody acts now; the frozen leader's watch will see this change as soon as it runs again.
        second.stop(signal.SIGKILL)
        kubectl("scale", "md/digits", "--replicas=3", "-n", namespace)
        deployment = models.get("deployment", "digits")
        md = models.get("modeldeployment", "digits")
    finally:
        first.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: first.proc.poll() is not None, timeout=30, what="the resumed leader to exit", describe=first.log)
    assert first.proc.returncode == 1
    after = first.log()[frozen_at:]
    assert "lost the Lease" in after
    assert not re.search(r": (applied|created|deleted) |: status phase=", after), after
    # The API server's side: neither the Deployment nor the ModelDeployment's status changed after the resume.
    assert (
        models.get("deployment", "digits")["metadata"]["resourceVersion"] == deployment["metadata"]["resourceVersion"]
    )
    now = models.get("modeldeployment", "digits")
    assert now["status"] == md["status"] and now["metadata"]["resourceVersion"] == md["metadata"]["resourceVersion"]
    lease = json.loads(kubectl("get", "lease", "modeldeploy-operator", "-n", namespace, "-o", "json").stdout)
    assert lease["spec"]["holderIdentity"] != "" and lease["spec"]["holderIdentity"] in second.log()


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


def _ports(container: dict[str, Any]) -> list[tuple[str, int]]:
    return [(p["name"], p["containerPort"]) for p in container.get("ports") or []]


# The idle interval of the drift test: short in `make test`; MODELDEPLOY_TEST_IDLE_SECONDS=300 for the five-minute
# watch the issue asks for (150 resyncs that compare every child).
IDLE_SECONDS = float(os.environ.get("MODELDEPLOY_TEST_IDLE_SECONDS") or 10)


def test_every_hand_edit_of_an_owned_field_is_repaired_and_an_idle_model_costs_no_write(
    start_operator: Callable[..., OperatorProcess], models: Models, kubectl: Any, namespace: str
) -> None:
    # A resync every 2 s: the idle check below then covers several full compares of every child.
    operator = start_operator(MODELDEPLOY_OPERATOR_RESYNC_SECONDS="2")
    wait_until(operator.is_leading, timeout=30, what="the operator leading", describe=operator.log)
    models.apply("digits", DIGITS)
    models.wait_phase("digits", "Ready")
    want = models.get("deployment", "digits")
    want_service = models.get("service", "digits")
    ns = ["-n", namespace]
    edits: list[tuple[str, list[str], Callable[[], bool]]] = [
        (
            "image",
            ["set", "image", "deployment/digits", "serving=evil:1"],
            lambda: _container(models.get("deployment", "digits"))["image"] == _container(want)["image"],
        ),
        (
            "env",
            ["set", "env", "deployment/digits", "MODELDEPLOY_MAX_BATCH_SIZE=999"],
            lambda: _container(models.get("deployment", "digits"))["env"] == _container(want)["env"],
        ),
        (
            "resources",
            ["set", "resources", "deployment/digits", "-c", "serving", "--limits=memory=3Gi"],
            lambda: _container(models.get("deployment", "digits"))["resources"] == _container(want)["resources"],
        ),
        (
            "probe",
            [
                "patch", "deployment", "digits", "--type=json", "-p",
                '[{"op": "replace", "path": "/spec/template/spec/containers/0/readinessProbe/periodSeconds", '
                '"value": 30}]',
            ],
            lambda: (
                _container(models.get("deployment", "digits"))["readinessProbe"]
                == _container(want)["readinessProbe"]
            ),
        ),
        (
            # The port's number is part of its list key: repaired by replacing that container's ports first.
            "container port",
            [
                "patch", "deployment", "digits", "--type=json", "-p",
                '[{"op": "replace", "path": "/spec/template/spec/containers/0/ports/0/containerPort", "value": 9999}]',
            ],
            lambda: _ports(_container(models.get("deployment", "digits"))) == _ports(_container(want)),
        ),
        (
            "service selector",
            ["patch", "service", "digits", "--type=merge", "-p", '{"spec": {"selector": {"app": "evil"}}}'],
            lambda: models.get("service", "digits")["spec"]["selector"] == want_service["spec"]["selector"],
        ),
        (
            "service port",
            [
                "patch", "service", "digits", "--type=json", "-p",
                '[{"op": "replace", "path": "/spec/ports/0/port", "value": 9999}]',
            ],
            lambda: [(p["name"], p["port"]) for p in models.get("service", "digits")["spec"]["ports"]]
            == [(p["name"], p["port"]) for p in want_service["spec"]["ports"]],
        ),
    ]  # fmt: skip
    seconds = {}
    for what, command, repaired in edits:
        kubectl(*command, *ns)
        started = time.monotonic()
        wait_until(repaired, timeout=30, interval=0.1, what=f"the {what} edit repaired", describe=operator.log)
        seconds[what] = round(time.monotonic() - started, 2)
    print("seconds to repair:", seconds)
    models.wait_phase("digits", "Ready", timeout=60)
    # Idle: several resyncs compare every child; nothing may be written (no fight with defaults or other tools).
    kubectl("annotate", "deployment", "digits", "example.com/owner=team-a", *ns)  # another tool's annotation
    models.wait_phase("digits", "Ready", timeout=30)
    log_at = len(operator.log())
    before = {kind: models.get(kind, "digits")["metadata"]["resourceVersion"] for kind in ("md", "service")}
    deployment_generation = models.get("deployment", "digits")["metadata"]["generation"]
    time.sleep(IDLE_SECONDS)  # the measured interval itself: a resync every 2 s
    after = {kind: models.get(kind, "digits")["metadata"]["resourceVersion"] for kind in ("md", "service")}
    assert after == before
    assert models.get("deployment", "digits")["metadata"]["generation"] == deployment_generation
    assert models.get("deployment", "digits")["metadata"]["annotations"]["example.com/owner"] == "team-a"
    idle_log = operator.log()[log_at:]
    writes = re.findall(r"(applied|patched|created|deleted) |status phase=|drift in", idle_log)
    print(f"idle {IDLE_SECONDS:g} s (resync every 2 s): {len(writes)} writes")
    assert not writes, idle_log


def test_a_child_deleted_while_the_watches_were_cut_is_made_again(
    cluster: Any, start_operator: Callable[..., OperatorProcess], models: Models, kubectl: Any, namespace: str
) -> None:
    """kopf drops an index entry only on a DELETED event. A watch that cannot resume (410 Gone) makes it list
    again, and an object deleted in the gap gets no event: the resync's audit must find it gone."""
    if not cluster.local:
        pytest.skip("needs the local control plane (its kube-apiserver is restarted)")
    # A lease long enough to stay leader while frozen through an API server restart; a resync every 2 s.
    operator = start_operator(
        MODELDEPLOY_OPERATOR_RESYNC_SECONDS="2",
        MODELDEPLOY_OPERATOR_LEASE_DURATION_SECONDS="120",
        MODELDEPLOY_OPERATOR_RENEW_DEADLINE_SECONDS="100",
        MODELDEPLOY_OPERATOR_RETRY_PERIOD_SECONDS="2",
        MODELDEPLOY_OPERATOR_API_TIMEOUT_SECONDS="5",
    )
    wait_until(operator.is_leading, timeout=30, what="the operator leading", describe=operator.log)
    models.apply("digits", DIGITS)
    models.wait_phase("digits", "Ready")
    kinds = ("deployment", "service", "networkpolicy")
    uids = {kind: models.get(kind, "digits")["metadata"]["uid"] for kind in kinds}
    assert operator.proc is not None
    local = LocalCluster(cluster.name)
    operator.proc.send_signal(signal.SIGSTOP)
    try:
        # The operator's watches end with the API server that served them, before anything is deleted (else the
        # DELETED events would wait in its sockets); resumed, they find history gone (410) and list again.
        started = time.monotonic()
        local.restart_apiserver()
        print(f"kube-apiserver restarted in {time.monotonic() - started:.1f} s")
        kubectl("delete", ",".join(kinds), "digits", "-n", namespace)
        local.compact_etcd()
    finally:
        operator.proc.send_signal(signal.SIGCONT)
    resumed = time.monotonic()

    def made_again() -> dict[str, str] | None:
        now = {kind: ((models.get(kind, "digits") or {}).get("metadata") or {}).get("uid") for kind in kinds}
        return now if all(now[k] not in (None, uids[k]) for k in kinds) else None

    wait_until(made_again, timeout=60, what="the deleted children made again", describe=operator.log)
    print(f"children made again {time.monotonic() - resumed:.1f} s after the operator resumed")
    models.wait_phase("digits", "Ready", timeout=60)
    log = operator.log()
    for kind in ("Deployment", "Service", "NetworkPolicy"):
        assert f"{kind} digits (uid" in log and "its watch missed the deletion" in log, log


def test_a_deleted_artifact_claim_is_made_again_and_the_model_retrained_and_served(
    operator: OperatorProcess, models: Models, kubectl: Any, namespace: str
) -> None:
    models.apply("digits", DIGITS)
    models.wait_phase("digits", "Ready")
    claim_uid = models.get("pvc", "digits-models")["metadata"]["uid"]
    job = models.items("jobs", "app.kubernetes.io/component=training")[0]
    kubectl("delete", "pvc", "digits-models", "-n", namespace, "--wait=false")

    def served_again() -> dict[str, Any] | None:
        claim = models.get("pvc", "digits-models") or {}
        jobs = models.items("jobs", "app.kubernetes.io/component=training")
        status = models.status("digits")
        fresh = claim.get("metadata", {}).get("uid") not in (None, claim_uid) and jobs
        retrained = fresh and all(j["metadata"]["uid"] != job["metadata"]["uid"] for j in jobs)
        return status if retrained and status.get("phase") == "Ready" and status.get("versions") else None

    status = wait_until(served_again, timeout=120, what="a new claim, a retrain, Ready", describe=operator.log)
    assert status["modelVersion"] and models.get("deployment", "digits") is not None
    events = [e for e in models.items("events") if e["involvedObject"]["name"] == "digits"]
    lost = [e for e in events if e["reason"] == "ArtifactsLost"]
    assert len(lost) == 1 and "digits-models" in lost[0]["message"]


def _condition_of(models: Models, name: str, kind: str, reason: str) -> dict[str, Any] | None:
    cond = models.condition(name, kind)
    return cond if cond.get("reason") == reason else None


def test_training_pod_problems_reach_the_status_with_the_kubelets_and_schedulers_words(
    operator: OperatorProcess, models: Models
) -> None:
    pull = {"podAnnotations": {"modeldeploy.dev/fake-result": "imagepull"}}
    models.apply("pull", {**DIGITS, "training": {**DIGITS["training"], **pull}})
    nowhere = {"nodeSelector": {"example.com/gpu": "h100"}}
    models.apply("nowhere", {**DIGITS, "training": {**DIGITS["training"], **nowhere}})

    def pod_waiting(component_of: str, reason: str) -> float | None:
        """When the kubelet (kwok) or the scheduler reported `reason` on the model's training pod (monotonic)."""
        for pod in models.items("pods", f"modeldeploy.dev/model={component_of}"):
            text = json.dumps(pod.get("status") or {})
            if reason in text:
                return time.monotonic()
        return None

    reported = wait_until(lambda: pod_waiting("pull", "ImagePullBackOff"), timeout=60, what="ImagePullBackOff")
    stalled = wait_until(
        lambda: _condition_of(models, "pull", "Stalled", "TrainingFailed"),
        timeout=30,
        interval=0.2,
        what="pull Stalled",
        describe=lambda: models.status("pull"),
    )
    print(f"ImagePullBackOff in the status {time.monotonic() - reported:.1f}s after the test saw it on the pod")
    assert "ImagePullBackOff" in stalled["message"] and "Back-off pulling image" in stalled["message"]
    assert models.condition("pull", "Trained")["reason"] == "ImagePullBackOff"
    assert models.status("pull")["phase"] == "Failed"
    reported = wait_until(lambda: pod_waiting("nowhere", "Unschedulable"), timeout=60, what="Unschedulable")
    reconciling = wait_until(
        lambda: _condition_of(models, "nowhere", "Reconciling", "Unschedulable"),
        timeout=30,
        interval=0.2,
        what="nowhere Reconciling",
        describe=lambda: models.status("nowhere"),
    )
    print(f"Unschedulable in the status {time.monotonic() - reported:.1f}s after the test saw it on the pod")
    assert "didn't match Pod's node affinity/selector" in reconciling["message"]
    assert models.condition("nowhere", "Stalled")["status"] == "False"
