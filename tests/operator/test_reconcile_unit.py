"""One reconcile against a fake API: children it does not control are never written, refused writes reach the status."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from md_factories import OWNER_UID, job, make_md, model, report, training_pod
from modeldeploy_operator import builders, decide
from modeldeploy_operator.observed import ChildState, Observed
from modeldeploy_operator.reconcile import reconcile
from modeldeploy_operator.settings import Settings
from modeldeploy_operator.storage import NotFoundError, StorageError

SETTINGS = Settings()


class FakeKube:
    """Objects by (kind, name); `refuse` maps (verb, kind) to the (status, message) the API server answers."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
        self.objects = objects or {}
        self.refuse: dict[tuple[str, str], tuple[int, str]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.field_manager = "test"

    def _check(self, verb: str, kind: str) -> None:
        if (verb, kind) in self.refuse:
            status, message = self.refuse[(verb, kind)]
            raise StorageError(f"{verb} {kind}: {status} {message}", status, "", message)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        if (kind, name) not in self.objects:
            raise NotFoundError("not found", 404)
        return copy.deepcopy(self.objects[(kind, name)])

    def create(self, manifest: dict[str, Any]) -> bool:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        self._check("create", kind)
        if (kind, name) in self.objects:
            return False
        self.objects[(kind, name)] = manifest
        self.writes.append(("create", kind, name))
        return True

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        self._check("apply", kind)
        self.objects[(kind, name)] = manifest
        self.writes.append(("apply", kind, name))
        return manifest

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.writes.append(("delete", kind, name))
        return self.objects.pop((kind, name), None) is not None

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("status", "ModelDeployment", name))
        return {"metadata": {"resourceVersion": "7"}, "status": status}


def _theirs(kind: str, name: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "labels": {"app": "web"}}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"kind": kind, "metadata": meta, "spec": {"selector": {"app": "web"}}}


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def _trained() -> tuple[dict[str, Any], Observed]:
    md = make_md()
    observed = Observed(
        jobs=(job(md, "Succeeded"),),
        pods=(training_pod(md, "Succeeded", report(md)),),
        claim=ChildState("digits-models", "", controller_uid=OWNER_UID),
    )
    return md, observed


def test_a_service_of_the_same_name_made_by_someone_else_is_left_alone_and_reported() -> None:
    md, observed = _trained()
    theirs = _theirs("Service", "digits")
    kube = FakeKube({("Service", "digits"): copy.deepcopy(theirs)})
    outcome = reconcile(kube, md, observed, SETTINGS)  # type: ignore[arg-type]
    assert kube.objects[("Service", "digits")] == theirs  # neither modified nor adopted
    assert ("apply", "Deployment", "digits") in kube.writes  # what is ours still goes on
    assert outcome.written_status is not None
    status = outcome.written_status[1]
    # The Deployment it just made reads as the watch will show it: its first sight costs no status write.
    available = _conditions(status)["Available"]
    assert (available["reason"], available["message"]) == ("ReplicasUnavailable", "0/1 serving replicas ready")
    ready = _conditions(status)["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "ChildConflict"
    assert "Service digits already exists" in ready["message"] and "no controller owner reference" in ready["message"]
    assert "rename" in ready["message"] or "another name" in ready["message"]
    assert _conditions(status)["Stalled"]["status"] == "True"
    assert status["phase"] == "Failed" and status["observedGeneration"] == md["metadata"]["generation"]
    assert [e.reason for e in outcome.events] == ["ChildConflict"]
    assert outcome.blocker is not None


def test_a_deployment_controlled_by_another_object_is_reported_with_its_owner() -> None:
    md, observed = _trained()
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "other", "controller": True}
    kube = FakeKube({("Deployment", "digits"): _theirs("Deployment", "digits", owner)})
    outcome = reconcile(kube, md, observed, SETTINGS)  # type: ignore[arg-type]
    assert ("apply", "Deployment", "digits") not in kube.writes
    assert ("apply", "Service", "digits") in kube.writes
    assert outcome.written_status is not None
    assert _conditions(outcome.written_status[1])["Available"]["reason"] == "NoDeployment"  # none of ours
    refused = FakeKube()
    refused.refuse[("apply", "Deployment")] = (422, "admission webhook said no")
    outcome = reconcile(refused, md, observed, SETTINGS)  # type: ignore[arg-type]
    assert outcome.written_status is not None
    assert _conditions(outcome.written_status[1])["Available"]["reason"] == "NoDeployment"


def test_a_child_in_the_cache_under_our_labels_but_another_controller_is_never_written() -> None:
    md, observed = _trained()
    observed = Observed(
        jobs=observed.jobs, pods=observed.pods, claim=ChildState("digits-models", "", controller_uid="old-uid")
    )
    plan = decide.decide(md, observed, SETTINGS, "2025-01-01T00:00:00Z")
    assert plan.blocker is not None and plan.blocker.reason == "ChildConflict"
    assert "PersistentVolumeClaim digits-models" in plan.blocker.message and "old-uid" in plan.blocker.message
    assert _conditions(plan.status)["Ready"]["reason"] == "ChildConflict"
    foreign_job = Observed(jobs=(replace(job(md), controller_uid="x"),))
    plan = decide.decide(md, foreign_job, SETTINGS, "2025-01-01T00:00:00Z")
    assert not [m for m in plan.create if m["kind"] == "Job"] and plan.delete == []
    assert plan.blocker is not None and "Job digits-train-" in plan.blocker.message


def test_a_job_that_exists_but_is_not_ours_blocks_after_the_create_meets_it() -> None:
    md = make_md()
    plan = decide.decide(md, Observed(), SETTINGS, "2025-01-01T00:00:00Z")
    (job_manifest,) = [m for m in plan.create if m["kind"] == "Job"]
    name = job_manifest["metadata"]["name"]
    kube = FakeKube({("Job", name): _theirs("Job", name)})
    outcome = reconcile(kube, md, Observed(), SETTINGS)  # type: ignore[arg-type]
    assert outcome.blocker is not None and outcome.blocker.reason == "ChildConflict"
    # A re-run that meets its own Job (the watch lags) is no conflict.
    ours = FakeKube({("Job", name): job_manifest})
    assert reconcile(ours, md, Observed(), SETTINGS).blocker is None  # type: ignore[arg-type]


def test_a_refused_write_becomes_a_condition_with_the_api_message_and_one_event() -> None:
    md, observed = _trained()
    kube = FakeKube()
    kube.refuse[("apply", "Deployment")] = (
        403,
        'deployments.apps "digits" is forbidden: exceeded quota: compute, requested: limits.memory=1Gi',
    )
    first = reconcile(kube, md, observed, SETTINGS)  # type: ignore[arg-type]
    assert first.written_status is not None
    status = first.written_status[1]
    ready = _conditions(status)["Ready"]
    assert ready["reason"] == "QuotaExceeded" and "exceeded quota: compute" in ready["message"]
    assert _conditions(status)["Stalled"]["status"] == "True"
    assert _conditions(status)["Reconciling"]["status"] == "False"
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "QuotaExceeded")]
    again = reconcile(kube, {**md, "status": status}, observed, SETTINGS)  # type: ignore[arg-type]
    assert again.events == [] and again.written_status is None  # the same refusal: no new event, no status write
    kube.refuse[("apply", "Deployment")] = (422, 'Deployment.apps "digits" is invalid: denied by policy')
    third = reconcile(kube, {**md, "status": status}, observed, SETTINGS)  # type: ignore[arg-type]
    assert third.written_status is not None
    assert _conditions(third.written_status[1])["Ready"]["reason"] == "Invalid"
    del kube.refuse[("apply", "Deployment")]
    fixed = reconcile(kube, {**md, "status": third.written_status[1]}, observed, SETTINGS)  # type: ignore[arg-type]
    assert fixed.blocker is None and fixed.written_status is not None
    conditions = _conditions(fixed.written_status[1])
    assert conditions["Stalled"]["status"] == "False" and conditions["Reconciling"]["status"] == "True"


def test_forbidden_without_quota_is_forbidden() -> None:
    blocker = decide.write_failure("create", "Job", "j", 403, 'jobs.batch is forbidden: User "x" cannot create')
    assert blocker.reason == "Forbidden" and "cannot create" in blocker.message
    assert decide.write_failure("apply", "Service", "s", 400, "bad").reason == "BadRequest"


def _ready_with_versions() -> tuple[dict[str, Any], Observed]:
    md, observed = _trained()
    status = decide.decide(md, observed, SETTINGS, "2025-01-01T00:00:00Z").status
    assert status["versions"]
    return {**md, "status": status}, observed


def test_a_deleted_artifact_claim_drops_the_versions_and_trains_again_with_one_event() -> None:
    md, observed = _ready_with_versions()
    deleting = replace(observed, claim=replace(observed.claim, deleting=True))  # type: ignore[arg-type]
    plan = decide.decide(md, deleting, SETTINGS, "2025-01-01T00:00:01Z")
    assert plan.status["versions"] == [] and "modelVersion" not in plan.status
    assert ("Job", observed.jobs[0].name) in plan.delete
    assert not plan.create  # neither a claim (the old one still goes) nor a Job on it
    assert [e.reason for e in plan.events if e.reason == "ArtifactsLost"] == ["ArtifactsLost"]
    assert _conditions(plan.status)["Progressing"]["reason"] == "ClaimDeleting"
    # Once gone: a new claim and a new Job, and no second ArtifactsLost (the versions are out of the status).
    after = {**md, "status": plan.status}
    gone = replace(observed, jobs=(), pods=(), claim=None)
    plan = decide.decide(after, gone, SETTINGS, "2025-01-01T00:00:02Z")
    assert [m["kind"] for m in plan.create] == ["PersistentVolumeClaim", "Job"]
    assert not [e for e in plan.events if e.reason == "ArtifactsLost"]


def test_a_claim_the_watch_lost_but_that_exists_is_not_taken_for_lost() -> None:
    md, observed = _ready_with_versions()
    claim = builders.build_claim(model(md))
    assert claim is not None
    stripped = copy.deepcopy(claim)
    stripped["metadata"]["labels"] = {}  # someone edited the labels away: the label-filtered watch drops it
    kube = FakeKube({("PersistentVolumeClaim", "digits-models"): stripped})
    outcome = reconcile(kube, md, replace(observed, claim=None), SETTINGS)  # type: ignore[arg-type]
    assert kube.writes == [("apply", "PersistentVolumeClaim", "digits-models")]
    assert kube.objects[("PersistentVolumeClaim", "digits-models")]["metadata"]["labels"] == claim["metadata"]["labels"]
    assert outcome.written_status is None and not outcome.events
