"""The local control plane behaves like a cluster: controllers, scheduler, fake nodes, CRDs, kwok's stages."""

from __future__ import annotations

import json
import textwrap

import pytest
from localclusters import ClusterHandle, Kubectl

from modeldeploy.cluster.portforward import PortForward, PortForwardError
from modeldeploy.cluster.waiting import wait_until


def get_json(kubectl: Kubectl, namespace: str, *what: str) -> dict[str, object]:
    result = kubectl("get", *what, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def test_fake_nodes_are_ready_and_schedulable(kubectl: Kubectl) -> None:
    nodes = json.loads(kubectl("get", "nodes", "-l", "type=kwok", "-o", "json").stdout)["items"]
    assert len(nodes) >= 1
    for node in nodes:
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["metadata"]["name"]
        assert not node["spec"].get("unschedulable")


def test_deployment_of_three_gets_three_ready_pods(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "deployment", "web", "--image=registry.invalid/web:1", "--replicas=3", "-n", namespace)

    def ready() -> int:
        status = get_json(kubectl, namespace, "deployment", "web").get("status", {})
        return int(status.get("readyReplicas", 0)) == 3 and int(status.get("availableReplicas", 0)) == 3  # type: ignore[union-attr]

    wait_until(
        ready,
        timeout=60,
        what="3 ready replicas of deployment web",
        describe=lambda: get_json(kubectl, namespace, "deployment", "web").get("status"),
    )
    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "json").stdout)["items"]
    assert len(pods) == 3
    assert all(p["status"]["phase"] == "Running" for p in pods)
    assert all(p["spec"]["nodeName"].startswith("kwok-node-") for p in pods)


JOB = """
apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
  backoffLimit: 0
  template:
    metadata:
      annotations: {annotations}
    spec:
      restartPolicy: Never
      containers:
      - name: train
        image: registry.invalid/train:1
"""


def job_condition(kubectl: Kubectl, namespace: str, name: str) -> str | None:
    conditions = get_json(kubectl, namespace, "job", name).get("status", {}).get("conditions", [])  # type: ignore[union-attr]
    done = [c["type"] for c in conditions if c["status"] == "True" and c["type"] in ("Complete", "Failed")]
    return done[0] if done else None


def terminated(kubectl: Kubectl, namespace: str, job: str) -> dict[str, object]:
    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l", f"job-name={job}", "-o", "json").stdout)["items"]
    assert pods, f"no pod for job {job}"
    return pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]  # type: ignore[no-any-return]


def test_job_completes_with_a_default_report(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=JOB.format(name="ok", annotations="{}"))
    assert (
        wait_until(lambda: job_condition(kubectl, namespace, "ok"), timeout=60, what="job ok to finish") == "Complete"
    )
    state = terminated(kubectl, namespace, "ok")
    assert state["exitCode"] == 0
    assert json.loads(str(state["message"]))["ok"] is True


def test_marked_job_fails_with_its_message(kubectl: Kubectl, namespace: str) -> None:
    message = '{"ok":false,"reason":"InvalidData","message":"column label not found"}'
    annotations = json.dumps(
        {"modeldeploy.dev/fake-result": "fail", "modeldeploy.dev/fake-termination-message": message}
    )
    kubectl("apply", "-n", namespace, "-f", "-", input=JOB.format(name="bad", annotations=annotations))
    assert wait_until(lambda: job_condition(kubectl, namespace, "bad"), timeout=60, what="job bad to end") == "Failed"
    state = terminated(kubectl, namespace, "bad")
    assert state["exitCode"] == 1
    assert state["message"] == message


def test_held_job_runs_until_released(kubectl: Kubectl, namespace: str) -> None:
    annotations = json.dumps({"modeldeploy.dev/fake-result": "hold"})
    kubectl("apply", "-n", namespace, "-f", "-", input=JOB.format(name="held", annotations=annotations))
    wait_until(
        lambda: get_json(kubectl, namespace, "job", "held").get("status", {}).get("ready") == 1,  # type: ignore[union-attr]
        timeout=60,
        what="the held job's pod to run",
    )
    assert job_condition(kubectl, namespace, "held") is None
    kubectl(
        "annotate", "pods", "-n", namespace, "-l", "job-name=held", "modeldeploy.dev/fake-result=succeed", "--overwrite"
    )
    assert (
        wait_until(lambda: job_condition(kubectl, namespace, "held"), timeout=60, what="the released job") == "Complete"
    )


def test_crashlooping_pod_is_never_ready(kubectl: Kubectl, namespace: str) -> None:
    kubectl(
        "run",
        "crash",
        "--image=registry.invalid/crash:1",
        "-n",
        namespace,
        "--annotations=modeldeploy.dev/fake-result=crashloop",
    )

    def waiting_reason() -> str | None:
        statuses = get_json(kubectl, namespace, "pod", "crash").get("status", {}).get("containerStatuses", [])  # type: ignore[union-attr]
        return statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None

    assert wait_until(waiting_reason, timeout=60, what="the crash-looping pod's status") == "CrashLoopBackOff"
    pod = get_json(kubectl, namespace, "pod", "crash")
    ready = [c for c in pod["status"]["conditions"] if c["type"] == "Ready"]  # type: ignore[index]
    assert ready[0]["status"] == "False"


def test_deleting_a_deployment_collects_its_replicaset_and_pods(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "deployment", "gone", "--image=registry.invalid/web:1", "--replicas=2", "-n", namespace)
    wait_until(
        lambda: (
            len(json.loads(kubectl("get", "pods", "-n", namespace, "-l", "app=gone", "-o", "json").stdout)["items"])
            == 2
        ),
        timeout=60,
        what="two pods of deployment gone",
    )
    kubectl("delete", "deployment", "gone", "-n", namespace, "--wait=false")

    def leftovers() -> list[str]:
        out = kubectl("get", "replicasets,pods", "-n", namespace, "-l", "app=gone", "-o", "name").stdout
        return out.split()

    wait_until(lambda: not leftovers(), timeout=60, what="garbage collection of deployment gone", describe=leftovers)


def test_claim_on_the_default_storage_class_binds(kubectl: Kubectl, namespace: str) -> None:
    claim = textwrap.dedent(
        """
        apiVersion: v1
        kind: PersistentVolumeClaim
        metadata: {name: models}
        spec:
          accessModes: [ReadWriteOnce]
          resources: {requests: {storage: 1Gi}}
        """
    )
    kubectl("apply", "-n", namespace, "-f", "-", input=claim)
    wait_until(
        lambda: get_json(kubectl, namespace, "pvc", "models").get("status", {}).get("phase") == "Bound",  # type: ignore[union-attr]
        timeout=60,
        what="claim models to bind",
    )


WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.harness.modeldeploy.dev
spec:
  group: harness.modeldeploy.dev
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              replicas: {type: integer, minimum: 0, default: 1}
              color: {type: string, enum: [red, blue]}
          status:
            type: object
            properties:
              replicas: {type: integer}
              note: {type: string}
"""


def test_crd_serves_objects_with_status_and_scale(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-f", "-", input=WIDGET_CRD)
    wait_until(
        lambda: kubectl("get", "widgets", "-n", namespace, check=False).returncode == 0,
        timeout=30,
        what="the widgets API to be served",
    )
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input="apiVersion: harness.modeldeploy.dev/v1\nkind: Widget\nmetadata: {name: w}\nspec: {color: red}\n",
    )
    widget = get_json(kubectl, namespace, "widget", "w")
    assert widget["spec"] == {"color": "red", "replicas": 1}  # the schema's default applied by the API server

    bad = kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        check=False,
        input="apiVersion: harness.modeldeploy.dev/v1\nkind: Widget\nmetadata: {name: x}\nspec: {color: green}\n",
    )
    assert bad.returncode != 0 and "spec.color" in bad.stderr

    # The status subresource: status changes go through it, and a write to the main resource leaves status alone.
    kubectl(
        "patch",
        "widget",
        "w",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"replicas": 1, "note": "seen"}}',
    )
    assert get_json(kubectl, namespace, "widget", "w")["status"] == {"replicas": 1, "note": "seen"}
    kubectl("patch", "widget", "w", "-n", namespace, "--type=merge", "-p", '{"status": {"note": "ignored"}}')
    assert get_json(kubectl, namespace, "widget", "w")["status"]["note"] == "seen"  # type: ignore[index]

    # The scale subresource: kubectl scale writes spec.replicas through it.
    kubectl("scale", "widget", "w", "-n", namespace, "--replicas=4")
    assert get_json(kubectl, namespace, "widget", "w")["spec"]["replicas"] == 4  # type: ignore[index]
    scale = json.loads(
        kubectl("get", "--raw", f"/apis/harness.modeldeploy.dev/v1/namespaces/{namespace}/widgets/w/scale").stdout
    )
    assert scale["spec"]["replicas"] == 4 and scale["status"]["replicas"] == 1
    kubectl("delete", "crd", "widgets.harness.modeldeploy.dev", "--wait=false")


def test_port_forward_to_a_missing_service_says_what_kubectl_said(
    cluster: ClusterHandle, kubectl: Kubectl, namespace: str
) -> None:
    with pytest.raises(PortForwardError, match=r"service/nope did not start: .*not found"):
        PortForward(cluster.kubectl_path, "service/nope", 8080, namespace=namespace, env=cluster.env)
