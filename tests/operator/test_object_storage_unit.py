"""spec.storage.uri on the operator's side: no claim, a fetching init container, spread replicas and a budget."""

from __future__ import annotations

from typing import Any

from md_factories import DIGITS_SPEC, make_md, model
from modeldeploy_operator import builders, decide, naming
from modeldeploy_operator.observed import Observed, PodState, summarize_pod
from modeldeploy_operator.settings import Settings

from modeldeploy import contracts
from modeldeploy.spec import parse_spec

SETTINGS = Settings()
SERVED = {"version": "v0123456789ab", "path": "digits/v0123456789ab"}


def _spec(**storage: Any) -> dict[str, Any]:
    return {**DIGITS_SPEC, "storage": {"uri": "s3://models/team-a", **storage}, "serving": {"replicas": 3}}


def test_no_claim_and_the_trainer_writes_to_scratch_with_the_users_secret_as_environment() -> None:
    md = make_md(_spec(secretRef={"name": "s3-keys"}))
    assert builders.build_claim(model(md)) is None
    pod = builders.build_training_job(model(md), SETTINGS)["spec"]["template"]["spec"]
    models = next(v for v in pod["volumes"] if v["name"] == builders.MODELS_VOLUME)
    assert models == {"name": builders.MODELS_VOLUME, "emptyDir": {}}
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    (train,) = pod["containers"]
    assert train["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod


def test_serving_pods_fetch_into_an_empty_dir_verified_then_serve_it_read_only() -> None:
    md = make_md(_spec(secretRef={"name": "s3-keys"}, size="200Mi"))
    dep = builders.build_deployment(model(md), SERVED, SETTINGS)
    pod = dep["spec"]["template"]["spec"]
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    assert {"name": builders.MODELS_VOLUME, "emptyDir": {"sizeLimit": "200Mi"}} in pod["volumes"]
    (fetch,) = pod["initContainers"]
    (server,) = pod["containers"]
    assert fetch["image"] == server["image"]  # the serving image: nothing else to pull on the node
    assert fetch["command"] == ["modeldeploy", "fetch"]
    args = fetch["args"]
    assert args[args.index("--uri") + 1] == "s3://models/team-a"
    assert args[args.index("--version") + 1] == "v0123456789ab"
    assert args[args.index("--max-size") + 1] == "200Mi"
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
    assert "envFrom" not in server  # the server never sees the storage keys
    assert fetch["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert fetch["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in server["env"]}
    assert env["MODELDEPLOY_MODEL_DIR"] == f"{contracts.ARTIFACT_MOUNT}/digits/v0123456789ab"
    mount = next(m for m in server["volumeMounts"] if m["name"] == builders.MODELS_VOLUME)
    assert mount["readOnly"] is True


def test_replicas_spread_over_nodes_and_zones_of_the_same_rollout() -> None:
    pod = builders.build_deployment(model(make_md(_spec())), SERVED, SETTINGS)["spec"]["template"]["spec"]
    (constraint,) = pod["topologySpreadConstraints"]
    assert constraint["topologyKey"] == "kubernetes.io/hostname"
    assert constraint["labelSelector"] == {"matchLabels": naming.serving_selector("digits")}
    assert constraint["matchLabelKeys"] == ["pod-template-hash"]
    assert constraint["maxSkew"] == 1
    # Zones by a preferred anti-affinity: a zone spread constraint would switch the node spreading off on any
    # cluster whose nodes have no zone label (the scheduler then scores no node for spreading).
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "topology.kubernetes.io/zone"
    assert term["podAffinityTerm"]["labelSelector"] == {"matchLabels": naming.serving_selector("digits")}


def test_a_named_service_account_is_for_workload_identity_and_only_then_gets_a_token() -> None:
    md = make_md(_spec(serviceAccountName="model-reader"))
    for pod in (
        builders.build_deployment(model(md), SERVED, SETTINGS)["spec"]["template"]["spec"],
        builders.build_training_job(model(md), SETTINGS)["spec"]["template"]["spec"],
    ):
        assert pod["serviceAccountName"] == "model-reader"
        assert pod["automountServiceAccountToken"] is True


def test_the_claim_path_is_unchanged_without_a_uri() -> None:
    md = make_md({**DIGITS_SPEC, "serving": {"replicas": 3}})
    pod = builders.build_deployment(model(md), SERVED, SETTINGS)["spec"]["template"]["spec"]
    assert "initContainers" not in pod and "topologySpreadConstraints" not in pod and "affinity" not in pod
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == naming.claim_name("digits", parse_spec(md))
    assert builders.build_pdb(model(md)) is None
    assert builders.build_claim(model(md)) is not None


def test_the_disruption_budget_defaults_to_one_for_two_or_more_replicas_and_follows_min_available() -> None:
    pdb = builders.build_pdb(model(make_md(_spec())))
    assert pdb is not None
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == {"matchLabels": naming.serving_selector("digits")}
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    one = make_md({**_spec(), "serving": {"replicas": 1}})
    assert builders.build_pdb(model(one)) is None
    asked = make_md({**_spec(), "serving": {"replicas": 4, "minAvailable": "50%"}})
    pdb = builders.build_pdb(model(asked))
    assert pdb is not None and pdb["spec"]["minAvailable"] == "50%"


def test_decide_applies_the_budget_and_makes_no_claim_and_no_cleanup_job() -> None:
    status = {
        "modelVersion": SERVED["version"],
        "versions": [{**SERVED, "specHash": "x"}, {"version": "v0", "path": "digits/v0", "specHash": "y"}],
    }
    md = make_md({**_spec(), "retainVersions": 1}, status=status)
    plan = decide.decide(md, Observed(), SETTINGS, "2026-01-01T00:00:00Z")
    kinds = [m["kind"] for m in plan.create + plan.apply_new + plan.apply]
    assert "PersistentVolumeClaim" not in kinds
    assert "PodDisruptionBudget" in kinds
    assert not any(m["kind"] == "Job" and "cleanup" in m["metadata"]["name"] for m in plan.create)


def test_a_failed_fetch_is_the_degraded_reason_with_the_fetchs_own_words() -> None:
    line = "cannot fetch the model: ChecksumMismatch: s3://models/team-a/digits/v0123456789ab/model.onnx does not match"
    pod = summarize_pod(
        {
            "metadata": {
                "name": "digits-abc",
                "labels": {naming.LABEL_COMPONENT: naming.COMPONENT_SERVING, naming.LABEL_VERSION: SERVED["version"]},
            },
            "status": {
                "phase": "Pending",
                "initContainerStatuses": [
                    {
                        "name": builders.FETCH_CONTAINER,
                        "restartCount": 2,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
                        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": line}},
                    }
                ],
            },
        }
    )
    assert isinstance(pod, PodState)
    md = make_md(_spec(), status={"modelVersion": SERVED["version"], "versions": [{**SERVED, "specHash": "x"}]})
    plan = decide.decide(md, Observed(pods=(pod,)), SETTINGS, "2026-01-01T00:00:00Z")
    degraded = next(c for c in plan.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert "container fetch is in CrashLoopBackOff" in degraded["message"]
    assert "ChecksumMismatch" in degraded["message"]
    assert plan.status["phase"] == decide.Phase.DEGRADED
