"""Phase, conditions and the writes one reconcile makes, from what the watches saw (no cluster)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from md_factories import OWNER_UID, deployment, job, make_md, model, report, serving_pod, training_pod
from modeldeploy_operator import builders, decide, naming
from modeldeploy_operator.observed import ChildState, JobState, Observed, summarize_pod
from modeldeploy_operator.settings import Settings

from modeldeploy.spec import parse_spec

SETTINGS = Settings()
NOW = "2025-01-01T00:00:00Z"


def _decide(md: dict[str, Any], observed: Observed, settings: Settings, now: str) -> decide.Plan:
    """decide(), with the artifact claim in the cache once versions are on it (as the watch would show it)."""
    if observed.claim is None and (md.get("status") or {}).get("versions"):
        observed = replace(observed, claim=ChildState("digits-models", "", controller_uid=OWNER_UID))
    return decide.decide(md, observed, settings, now)


def _conditions(plan: decide.Plan) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in plan.status["conditions"]}


def _trained(md: dict[str, Any]) -> tuple[dict[str, Any], Observed]:
    """The state right after the training Job succeeded: status recorded, pod report read."""
    observed = Observed(jobs=(job(md, "Succeeded"),), pods=(training_pod(md, "Succeeded", report(md)),))
    plan = _decide(md, observed, SETTINGS, NOW)
    return {**md, "status": plan.status}, observed


def _kinds(manifests: list[dict[str, Any]]) -> list[str]:
    return [m["kind"] for m in manifests]


def test_new_model_deployment_creates_claim_and_training_job_and_is_not_ready() -> None:
    plan = _decide(make_md(), Observed(), SETTINGS, NOW)
    assert _kinds(plan.create) == ["PersistentVolumeClaim", "Job"]
    assert plan.apply == [] and plan.apply_new == []
    assert plan.status["phase"] == "Training"
    assert _conditions(plan)["Ready"]["status"] == "False"
    assert _conditions(plan)["Trained"]["reason"] == "Training"
    assert plan.status["observedGeneration"] == 1


def test_job_still_running_creates_nothing_again() -> None:
    md = make_md()
    plan = _decide(
        md, Observed(jobs=(job(md),), claim=ChildState("digits-models", "", controller_uid=OWNER_UID)), SETTINGS, NOW
    )
    assert plan.create == [] and plan.delete == []
    assert plan.status["phase"] == "Training"


def test_succeeded_job_records_the_report_and_deploys_that_version() -> None:
    md = make_md()
    observed = Observed(jobs=(job(md, "Succeeded"),), pods=(training_pod(md, "Succeeded", report(md)),))
    plan = _decide(md, observed, SETTINGS, NOW)
    short = naming.short_spec_hash(parse_spec(md))
    assert plan.status["modelVersion"] == f"v{short}"
    assert plan.status["versions"][0]["path"] == f"digits/v{short}"
    assert plan.status["endpoint"] == "http://digits.ns.svc:8080"
    assert plan.status["compression"]["quantization"] == "dynamic-uint8"
    assert plan.status["compression"]["accuracy"] == 0.95
    assert _kinds(plan.apply_new) == ["Deployment", "Service", "NetworkPolicy"]
    assert plan.status["phase"] == "Deploying"
    assert _conditions(plan)["Trained"]["status"] == "True"
    assert _conditions(plan)["Compressed"]["status"] == "True"


def test_ready_only_when_every_desired_replica_of_the_current_version_is_ready() -> None:
    md, _ = _trained(make_md({"training": {"dataset": {"builtin": "digits"}}, "serving": {"replicas": 3}}))
    version = md["status"]["modelVersion"]
    want = builders.build_deployment(model(md), md["status"]["versions"][0], SETTINGS)["metadata"]["annotations"][
        naming.ANNOTATION_CONFIG_HASH
    ]
    partial = _decide(md, Observed(deployment=deployment(want, version, 3, ready=2)), SETTINGS, NOW)
    assert partial.status["phase"] == "Deploying"
    assert _conditions(partial)["Ready"]["status"] == "False"
    assert _conditions(partial)["Available"]["status"] == "True"
    full = _decide(md, Observed(deployment=deployment(want, version, 3)), SETTINGS, NOW)
    assert full.status["phase"] == "Ready"
    assert _conditions(full)["Ready"]["status"] == "True"
    assert full.status["readyDisplay"] == "3/3"
    # The Deployment matches; only the missing Service and NetworkPolicy.
    assert full.apply_new == [builders.build_service(model(md)), builders.build_network_policy(model(md))]


def test_failed_job_reports_the_termination_message_and_does_not_retry() -> None:
    md = make_md()
    message = '{"ok": false, "reason": "InvalidData", "message": "dataset has no label column"}'
    observed = Observed(jobs=(job(md, "Failed"),), pods=(training_pod(md, "Failed", message),))
    plan = _decide(md, observed, SETTINGS, NOW)
    trained = _conditions(plan)["Trained"]
    assert plan.status["phase"] == "Failed"
    assert trained["status"] == "False" and trained["reason"] == "InvalidData"
    assert "dataset has no label column" in trained["message"]
    assert "Job" not in _kinds(plan.create) and plan.delete == []
    assert any(e.type == "Warning" and e.reason == "Failed" and "no label column" in e.message for e in plan.events)


def test_failed_job_is_retried_for_a_new_generation() -> None:
    md = make_md(generation=2)
    observed = Observed(jobs=(job(md, "Failed", generation=1),), pods=(training_pod(md, "Failed", "boom"),))
    plan = _decide(md, observed, SETTINGS, NOW)
    assert ("Job", naming.job_name("digits", naming.short_spec_hash(parse_spec(md)))) in plan.delete
    assert plan.status["phase"] == "Training"


def test_crash_looping_serving_pods_make_it_degraded_not_ready() -> None:
    md, _ = _trained(make_md())
    version = md["status"]["modelVersion"]
    want = builders.build_deployment(model(md), md["status"]["versions"][0], SETTINGS)["metadata"]["annotations"][
        naming.ANNOTATION_CONFIG_HASH
    ]
    pods = (serving_pod("digits-1", ready=False, broken="container serving is in CrashLoopBackOff"),)
    plan = _decide(md, Observed(deployment=deployment(want, version, 1, ready=0), pods=pods), SETTINGS, NOW)
    assert plan.status["phase"] == "Degraded"
    assert _conditions(plan)["Degraded"]["status"] == "True"
    assert "CrashLoopBackOff" in _conditions(plan)["Degraded"]["message"]
    assert _conditions(plan)["Ready"]["status"] == "False"


def test_pending_pods_keep_it_progressing() -> None:
    md, _ = _trained(make_md())
    version = md["status"]["modelVersion"]
    pods = (serving_pod("digits-1", ready=False, phase="Pending"),)
    plan = _decide(md, Observed(deployment=deployment("x", version, 1, ready=0), pods=pods), SETTINGS, NOW)
    assert _conditions(plan)["Progressing"]["reason"] == "PodsPending"
    assert _conditions(plan)["Ready"]["status"] == "False"


def test_replicas_edited_on_the_deployment_are_put_back() -> None:
    md, _ = _trained(make_md({"training": {"dataset": {"builtin": "digits"}}, "serving": {"replicas": 2}}))
    built = builders.build_deployment(model(md), md["status"]["versions"][0], SETTINGS)
    drifted = deployment(
        built["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH], md["status"]["modelVersion"], 7
    )
    plan = _decide(md, Observed(deployment=drifted), SETTINGS, NOW)
    assert built in plan.apply_new + plan.apply


def test_with_autoscaling_the_hpa_s_replica_count_is_left_alone() -> None:
    spec = {"training": {"dataset": {"builtin": "digits"}}, "serving": {"autoscaling": {"maxReplicas": 10}}}
    md, _ = _trained(make_md(spec))
    built = builders.build_deployment(model(md), md["status"]["versions"][0], SETTINGS)
    scaled = deployment(
        built["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH], md["status"]["modelVersion"], 7
    )
    hpa = builders.build_hpa(model(md))
    assert hpa is not None
    observed = Observed(
        deployment=scaled,
        hpa=ChildState(
            "digits", hpa["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH], controller_uid=OWNER_UID
        ),
    )
    plan = _decide(md, observed, SETTINGS, NOW)
    assert _kinds(plan.apply_new + plan.apply) == ["Service", "NetworkPolicy"]
    assert plan.status["phase"] == "Ready"
    assert plan.status["desiredReplicas"] == 7


def test_training_change_keeps_serving_the_old_version_until_the_new_one_is_trained() -> None:
    old, _ = _trained(make_md())
    new = make_md({"training": {"dataset": {"builtin": "digits"}, "epochs": 8}}, generation=2, status=old["status"])
    plan = _decide(new, Observed(), SETTINGS, NOW)
    assert _kinds(plan.create) == ["Job"]  # the claim is there already
    deployments = [m for m in plan.apply_new + plan.apply if m["kind"] == "Deployment"]
    assert deployments and deployments[0]["metadata"]["labels"][naming.LABEL_VERSION] == old["status"]["modelVersion"]
    assert plan.status["modelVersion"] == old["status"]["modelVersion"]
    assert plan.status["phase"] == "Training"


def test_old_versions_beyond_retain_versions_lose_their_jobs_and_artifacts() -> None:
    md, _ = _trained(make_md({"training": {"dataset": {"builtin": "digits"}}, "retainVersions": 2}))
    older = [
        {"version": f"v{i}", "path": f"digits/v{i}", "specHash": f"h{i}", "jobName": f"digits-train-h{i}"}
        for i in range(4)
    ]
    md["status"]["versions"] = [md["status"]["versions"][0], *older]
    old_jobs = tuple(
        JobState(f"digits-train-h{i}", f"h{i}", 1, "Succeeded", "", "training", controller_uid=OWNER_UID)
        for i in range(4)
    )
    plan = _decide(md, Observed(jobs=old_jobs), SETTINGS, NOW)
    assert [v["version"] for v in plan.status["versions"]] == [md["status"]["modelVersion"], "v0"]
    deleted = {name for kind, name in plan.delete if kind == "Job"}
    assert deleted == {"digits-train-h1", "digits-train-h2", "digits-train-h3"}
    (cleanup,) = [m for m in plan.create if m["metadata"]["labels"][naming.LABEL_COMPONENT] == "cleanup"]
    command = cleanup["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-3:] == ["/models/digits/v1", "/models/digits/v2", "/models/digits/v3"]


def test_unchanged_status_is_not_written_and_transition_times_stay() -> None:
    md, observed = _trained(make_md())
    again = _decide(md, observed, SETTINGS, "2030-01-01T00:00:00Z")
    assert decide.status_patch(md["status"], again.status) is None
    assert again.events == []


def test_status_patch_nulls_keys_that_went_away() -> None:
    assert decide.status_patch({"a": 1, "endpoint": "x"}, {"a": 2}) == {"a": 2, "endpoint": None}


def test_a_version_still_served_by_pods_keeps_its_artifact_during_the_rollout() -> None:
    md, _ = _trained(make_md({"training": {"dataset": {"builtin": "digits"}}, "retainVersions": 1}))
    md["status"]["versions"].append({"version": "vold", "path": "digits/vold", "specHash": "old", "jobName": "j"})
    old_pod = serving_pod("digits-old")
    old_pod = type(old_pod)(**{**old_pod.__dict__, "version": "vold"})
    during = _decide(md, Observed(pods=(old_pod,)), SETTINGS, NOW)
    assert [v["version"] for v in during.status["versions"]][-1] == "vold"
    after = _decide(md, Observed(), SETTINGS, NOW)
    assert "vold" not in [v["version"] for v in after.status["versions"]]


def test_a_whole_lifecycle_posts_three_events_and_writes_status_only_on_news() -> None:
    """Pending -> Training -> Deploying -> Ready as the watches see it: the writes that cost the API server."""
    md = make_md()
    claim = ChildState("digits-models", "", controller_uid=OWNER_UID)
    done, final = job(md, "Succeeded"), training_pod(md, "Succeeded", report(md))
    served = _trained(md)[0]["status"]["versions"][0]
    full = md
    config_hash = builders.build_deployment(model(full), served, SETTINGS)["metadata"]["annotations"][
        naming.ANNOTATION_CONFIG_HASH
    ]
    ready = deployment(config_hash, served["version"])
    created = replace(ready, replicas=0, updated=0, ready=0, available=0, available_condition=False)
    scaled = replace(ready, ready=0, available=0, available_condition=False)
    service = ChildState(
        "digits",
        builders.build_service(model(full))["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH],
        controller_uid=OWNER_UID,
    )
    seen = [
        Observed(),
        Observed(claim=claim, jobs=(job(md),)),
        Observed(claim=claim, jobs=(job(md),), pods=(training_pod(md, "Pending", None),)),
        Observed(claim=claim, jobs=(job(md),), pods=(training_pod(md, "Running", None),)),
        Observed(claim=claim, jobs=(job(md),), pods=(final,)),
        Observed(claim=claim, jobs=(done,), pods=(final,)),
        Observed(claim=claim, jobs=(done,), pods=(final,), deployment=created, service=service),
        Observed(
            claim=claim,
            jobs=(done,),
            pods=(final, serving_pod("digits-x", ready=False, phase="Pending")),
            deployment=scaled,
            service=service,
        ),
        Observed(claim=claim, jobs=(done,), pods=(final, serving_pod("digits-x")), deployment=ready, service=service),
    ]
    writes, events, phases = 0, [], []
    for observed in seen:
        plan = _decide(md, observed, SETTINGS, NOW)
        writes += decide.status_patch(md["status"], plan.status) is not None
        events += plan.events
        phases.append(plan.status["phase"])
        md = {**md, "status": plan.status}
    assert phases[-1] == "Ready"
    assert [e.reason for e in events] == ["Training", "Deploying", "Ready"]  # one per phase, conditions in the note
    assert "Trained=True" in events[1].message and "Compressed=True" in events[1].message
    # Creation, trained (with its Deployment applied), a pod Pending, Ready: no write while training runs, none when
    # the watch first shows the Job or the Deployment that the operator made.
    assert writes == 4


def test_the_network_policy_is_applied_once_and_deleted_when_turned_off() -> None:
    md, _ = _trained(make_md())
    policy = builders.build_network_policy(model(md))
    assert policy is not None
    stamp = ChildState(
        "digits", policy["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH], controller_uid=OWNER_UID
    )
    plan = _decide(md, Observed(network_policy=stamp), SETTINGS, NOW)
    assert "NetworkPolicy" not in _kinds(plan.apply_new + plan.apply)  # in place and unchanged: nothing to write
    off = {**md, "spec": {**md["spec"], "serving": {**md["spec"]["serving"], "networkPolicy": False}}}
    plan = _decide(off, Observed(network_policy=stamp), SETTINGS, NOW)
    assert ("NetworkPolicy", "digits") in plan.delete


def _training_pod_object(md: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """A training pod as the API server stores it (summarized by the same code as the watches use)."""
    short = naming.short_spec_hash(parse_spec(md))
    labels = {naming.LABEL_COMPONENT: naming.COMPONENT_TRAINING, "job-name": naming.job_name("digits", short)}
    return {"metadata": {"name": f"digits-train-{short}-x", "labels": labels}, "status": status}


def _active_with(md: dict[str, Any], pod_status: dict[str, Any], claim_phase: str = "Bound") -> decide.Plan:
    pod = summarize_pod(_training_pod_object(md, pod_status))
    claim = ChildState("digits-models", "", phase=claim_phase, controller_uid=OWNER_UID)
    return _decide(md, Observed(jobs=(job(md),), pods=(pod,), claim=claim), SETTINGS, NOW)


def test_training_pod_problems_reach_the_status_with_the_kubelets_and_schedulers_words() -> None:
    md = make_md()
    pull = {
        "phase": "Pending",
        "containerStatuses": [
            {
                "name": "train",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "r/t:9"'}},
            }
        ],
    }
    plan = _active_with(md, pull)
    conditions = _conditions(plan)
    assert plan.status["phase"] == "Failed" and conditions["Stalled"]["status"] == "True"
    assert conditions["Trained"]["reason"] == "ImagePullBackOff"
    assert 'Back-off pulling image "r/t:9"' in conditions["Ready"]["message"]
    unschedulable = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
                "lastTransitionTime": "2024-12-31T23:59:59Z",
            }
        ],
    }
    # For a moment (a claim being bound) this is the normal course: no news, but a reconcile queued for later.
    plan = _active_with(md, unschedulable)
    assert _conditions(plan)["Progressing"]["reason"] == "Training" and plan.requeue_after == 3.5
    unschedulable["conditions"][0]["lastTransitionTime"] = "2024-12-31T23:59:55Z"
    plan = _active_with(md, unschedulable)
    conditions = _conditions(plan)
    # Still progress (an autoscaler may add a node), but the scheduler's message is in Ready and Reconciling.
    assert plan.status["phase"] == "Training" and conditions["Reconciling"]["status"] == "True"
    assert conditions["Reconciling"]["reason"] == "Unschedulable"
    assert "didn't match Pod's node affinity/selector" in conditions["Ready"]["message"]
    plan = _active_with(md, unschedulable, claim_phase="Pending")  # a claim being provisioned: normal for 30 s
    assert _conditions(plan)["Progressing"]["reason"] == "Training" and plan.requeue_after == 25.5
    unschedulable["conditions"][0]["lastTransitionTime"] = "2024-12-31T23:59:20Z"
    plan = _active_with(md, unschedulable, claim_phase="Pending")
    assert _conditions(plan)["Progressing"]["reason"] == "ClaimPending"
    assert "didn't match" in _conditions(plan)["Progressing"]["message"]
    oom = {
        "phase": "Failed",
        "containerStatuses": [{"name": "train", "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}],
    }
    plan = _active_with(md, oom)
    assert _conditions(plan)["Progressing"]["reason"] == "RetryingAfterOOMKilled"
    pod = summarize_pod(_training_pod_object(md, oom))
    failed = _decide(md, Observed(jobs=(job(md, "Failed"),), pods=(pod,)), SETTINGS, NOW)
    assert _conditions(failed)["Trained"]["reason"] == "OOMKilled"
    assert "limits.memory" in _conditions(failed)["Ready"]["message"]


def test_a_serving_pod_killed_for_memory_says_so() -> None:
    crashing = {
        "metadata": {"name": "s", "labels": {}},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "serving",
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting"}},
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                }
            ],
        },
    }
    summary = summarize_pod(crashing)
    assert (
        summary.broken_reason
        == "container serving is in CrashLoopBackOff (last exit: OOMKilled): back-off 20s restarting"
    )
