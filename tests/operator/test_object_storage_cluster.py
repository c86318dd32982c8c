"""spec.storage.uri on the local control plane (kwok plays the pods): no claim, a fetching init container, replicas
spread over the fake nodes, a PodDisruptionBudget, and a failed fetch as the Degraded reason."""

from __future__ import annotations

from typing import Any

from conftest import Models, OperatorProcess

from modeldeploy.cluster.waiting import wait_until

URI_SPEC: dict[str, Any] = {
    "training": {"dataset": {"builtin": "digits"}, "epochs": 2},
    "storage": {"uri": "s3://models/team-a", "secretRef": {"name": "object-store"}},
    "serving": {"replicas": 3},
}


def test_a_model_in_object_storage_serves_without_a_claim_spread_and_budgeted(
    operator: OperatorProcess, models: Models
) -> None:
    models.apply("digits", URI_SPEC)
    status = models.wait_phase("digits", "Ready")
    assert status["readyReplicas"] == 3
    assert models.items("pvc") == []  # nothing to mount: the node can be any node
    (job,) = models.items("jobs", "app.kubernetes.io/component=training")
    job_pod = job["spec"]["template"]["spec"]
    assert {"name": "models", "emptyDir": {}} in job_pod["volumes"]
    assert job_pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "object-store"}}]

    deployment = models.get("deployment", "digits")
    pod_spec = deployment["spec"]["template"]["spec"]
    (fetch,) = pod_spec["initContainers"]
    assert fetch["name"] == "fetch" and fetch["command"] == ["modeldeploy", "fetch"]
    assert "--uri" in fetch["args"] and "s3://models/team-a" in fetch["args"]
    assert not any("persistentVolumeClaim" in v for v in pod_spec["volumes"])
    assert [c["topologyKey"] for c in pod_spec["topologySpreadConstraints"]] == ["kubernetes.io/hostname"]
    pods = models.items("pods", "app.kubernetes.io/component=serving")
    # Three replicas on three fake nodes, which have no zone label and, in a full run, other tests' pods: a zone
    # spread constraint beside the node one made the scheduler ignore both, and all three landed on one node.
    assert len({p["spec"]["nodeName"] for p in pods}) == 3, [p["spec"]["nodeName"] for p in pods]

    pdb = models.get("pdb", "digits")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    wait_until(lambda: (models.get("pdb", "digits") or {}).get("status", {}).get("disruptionsAllowed") == 2,
               timeout=30, what="the budget to allow 2 of 3 disruptions")  # fmt: skip

    models.apply("digits", {**URI_SPEC, "serving": {"replicas": 1}})  # one replica: no budget to block a drain
    wait_until(lambda: models.get("pdb", "digits") is None, timeout=30, what="the budget to go with 1 replica")


def test_a_failed_fetch_is_the_degraded_reason(operator: OperatorProcess, models: Models) -> None:
    line = (
        "cannot fetch the model: ChecksumMismatch: s3://models/team-a/digits/v0/model.onnx does not match its model "
        "card"
    )
    annotations = {"modeldeploy.dev/fake-result": "initcrashloop", "modeldeploy.dev/fake-termination-message": line}
    models.apply("digits", {**URI_SPEC, "serving": {"replicas": 2, "podAnnotations": annotations}})
    models.wait_phase("digits", "Degraded")
    degraded = models.condition("digits", "Degraded")
    assert degraded["status"] == "True"
    assert "container fetch is in CrashLoopBackOff" in degraded["message"]
    assert "ChecksumMismatch" in degraded["message"]
    assert models.condition("digits", "Ready")["status"] == "False"


def test_the_schema_refuses_a_uri_beside_a_claim_and_takes_imports_by_uri(
    kubectl: Any, namespace: str, crd: None
) -> None:
    def dry_run(spec: dict[str, Any]) -> Any:
        import yaml  # noqa: PLC0415

        manifest = {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
                    "metadata": {"name": "x"}, "spec": spec}  # fmt: skip
        return kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest),
                       check=False)  # fmt: skip

    both = dry_run({**URI_SPEC, "storage": {"uri": "s3://m/x", "existingClaim": "c"}})
    assert both.returncode != 0 and "set uri (object storage) or existingClaim" in both.stderr
    two_datasets = dry_run({"training": {"dataset": {"builtin": "digits", "uri": "s3://m/d.npz"}}})
    assert (
        two_datasets.returncode != 0
        and "set exactly one of builtin or path (on claimName) or uri" in two_datasets.stderr
    )
    bad_scheme = dry_run({**URI_SPEC, "storage": {"uri": "file:///etc"}})
    assert bad_scheme.returncode != 0 and "spec.storage.uri" in bad_scheme.stderr
    imported = dry_run({"importModel": {"uri": "https://models.example/m.onnx"}, "storage": {"uri": "s3://m/x"}})
    assert imported.returncode == 0, imported.stderr
    half_import = dry_run({"importModel": {"claimName": "c"}})
    assert (
        half_import.returncode != 0
        and "set exactly one of spec.importModel.path (on claimName) or spec.importModel.uri" in half_import.stderr
    )
