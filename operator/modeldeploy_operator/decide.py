"""The reconcile decision, pure: from a ModelDeployment and what the watches saw, the writes to make and the status.

Nothing here talks to the API server; `reconcile.py` carries out the plan.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final

from modeldeploy import contracts
from modeldeploy.spec import apply_defaults, spec_schema
from modeldeploy_operator import builders, drift, naming, rollout
from modeldeploy_operator.observed import ChildState, DeploymentState, Observed, PodState
from modeldeploy_operator.settings import Settings

CONDITION_TYPES: Final = (
    "Trained",
    "Compressed",
    "Available",
    "Progressing",
    "Degraded",
    "Ready",
    "Reconciling",
    "Stalled",
)
# A condition that turns to one of these (type, status) pairs is news worth a Warning event.
WARNING_STATES: Final = frozenset({("Trained", "False"), ("Degraded", "True"), ("Compressed", "False")})

PHASE_PENDING: Final = "Pending"
PHASE_TRAINING: Final = "Training"
PHASE_DEPLOYING: Final = "Deploying"
PHASE_READY: Final = "Ready"
PHASE_DEGRADED: Final = "Degraded"
PHASE_FAILED: Final = "Failed"


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Blocker:
    """Why the children cannot be brought to the spec until someone acts: Ready=False and Stalled=True."""

    reason: str
    message: str


@dataclass
class Plan:
    """The writes that bring the children to the spec, and the status that describes the result."""

    create: list[dict[str, Any]] = field(default_factory=list)
    """Created when absent, never updated (PVC, Jobs: their specs are immutable). An existing object of the same
    name that this ModelDeployment does not control is left alone and blocks (ChildConflict)."""
    apply: list[dict[str, Any]] = field(default_factory=list)
    """Server-side applied with the operator's field manager (Deployment, Service, HPA): children that the cache
    shows controlled by this ModelDeployment."""
    apply_new: list[dict[str, Any]] = field(default_factory=list)
    """Children the cache does not show: applied only after a read proves the name free (or the object ours)."""
    delete: list[tuple[str, str]] = field(default_factory=list)
    """(kind, name) of children to remove."""
    patch: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    """(kind, name, strategic merge patch) made before the applies: repairs that server-side apply cannot make."""
    drifted: list[str] = field(default_factory=list)
    """Which child drifted where, for the log."""
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    blocker: Blocker | None = None
    """What keeps this reconcile from reaching the spec (a child conflict seen in the cache, a refused write)."""
    phase: str = ""
    notices: list[Event] = field(default_factory=list)
    """Events of their own, beside the transition's (an artifact claim that was deleted)."""
    requeue_after: float = 0.0
    """Reconcile again after this many seconds even without a watch event (a grace period that ends)."""
    verify_gone: str = ""
    """The claim whose loss `reconcile` confirms with a read before it carries out the recovery."""
    raw_conditions: list[dict[str, Any]] = field(default_factory=list)
    """The conditions before a blocker and the merge with the stored ones (`finish` turns them into the status)."""


@dataclass(frozen=True)
class Training:
    """Where the current spec's model is: `state` is Trained, Training or Failed."""

    state: str
    reason: str
    message: str
    target: dict[str, Any] | None = None


def normalized_spec(md: dict[str, Any]) -> dict[str, Any]:
    """The spec with the CRD's defaults (the API server applies them too; this covers objects built in tests)."""
    spec: dict[str, Any] = apply_defaults(copy.deepcopy(md.get("spec") or {}), spec_schema())
    return spec


def version_entry(report: contracts.TrainingReport, short_hash: str, job: str) -> dict[str, Any]:
    """What the status keeps of a successful report (the model card on the volume has the rest)."""
    fields = report.fields
    entry: dict[str, Any] = {"version": report.version, "specHash": short_hash, "jobName": job}
    for key in ("path", "quantization", "reused"):
        if key in fields:
            entry[key] = fields[key]
    for key in ("accuracy", "sourceAccuracy", "durationSeconds"):
        if isinstance(fields.get(key), int | float):
            entry[key] = float(fields[key])
    for key in ("sizeBytes", "fp32SizeBytes"):
        if isinstance(fields.get(key), int):
            entry[key] = int(fields[key])
    tflite = _tflite_entry(fields.get("tflite"))
    if tflite:
        entry["tflite"] = tflite
    entry.setdefault("path", f"{job.rsplit('-train-', 1)[0]}/{report.version}")
    return entry


def _tflite_entry(value: Any) -> dict[str, Any]:
    """The report's `tflite` (spec.compression.formats with tflite), kept to the fields and types the CRD has."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, Any] = {}
    for key in ("quantization", "sha256", "failureReason", "message"):
        if isinstance(value.get(key), str):
            out[key] = value[key]
    if isinstance(value.get("accuracy"), int | float):
        out["accuracy"] = float(value["accuracy"])
    if isinstance(value.get("sizeBytes"), int):
        out["sizeBytes"] = int(value["sizeBytes"])
    return out


def _final_pod(pods: list[PodState]) -> PodState | None:
    """The pod whose ending speaks for the Job: a Succeeded one, else the last that ended."""
    ended = [p for p in pods if p.phase in ("Succeeded", "Failed")]
    succeeded = [p for p in ended if p.phase == "Succeeded"]
    if succeeded:
        return succeeded[-1]
    with_message = [p for p in ended if p.termination_message]
    candidates = with_message or ended
    return candidates[-1] if candidates else None


def decide_training(
    md: dict[str, Any],
    *,
    spec: dict[str, Any],
    observed: Observed,
    versions: list[dict[str, Any]],
    plan: Plan,
    settings: Settings,
    now: str = "",
) -> Training:
    model = md["metadata"]["name"]
    uid = str(md["metadata"].get("uid") or "")
    generation = int(md["metadata"].get("generation", 0))
    short = naming.short_spec_hash(spec)
    name = naming.job_name(model, short)
    verb = "Imported" if "importModel" in spec else "Trained"
    known = next((v for v in versions if v.get("specHash") == short), None)
    if known is not None:
        return Training("Trained", verb, f"version {known['version']} from Job {known.get('jobName', name)}", known)
    job = observed.job(name)
    if job is not None and job.controller_uid != uid:
        message = conflict_message(md, "Job", name, _holder(job.controller_uid))
        plan.blocker = plan.blocker or Blocker("ChildConflict", message)
        return Training("Training", "ChildConflict", message)
    if job is None:
        plan.create.append(builders.build_training_job({**md, "spec": spec}, settings))
        # The same reason and message as a running Job: the watch sees the new Job a moment later, and a status
        # that changed only for that would cost a status write for nothing.
        return Training("Training", "Training", f"Job {name} is training")
    if job.deleting:
        return Training("Training", "Retrying", f"waiting for the previous Job {name} to be removed before retrying")
    pods = [p for p in observed.pods if p.job_name == name]
    if job.outcome == "Active":
        return _active_training(name, pods, observed, plan, now)
    final = _final_pod(pods)
    oom = next((p for p in pods if p.last_exit_reason == "OOMKilled"), None)
    if job.outcome == "Failed" and oom is not None and not (final and final.termination_message):
        limit = "raise spec.training.resources.limits.memory (or train a smaller model)"
        return Training("Failed", "OOMKilled", f"Job {name} failed: pod {oom.name} was OOMKilled; {limit}")
    if job.outcome == "Failed":
        if job.generation < generation:
            # A new generation of the spec is a new attempt; the same generation never retries (no retry storm).
            plan.delete.append(("Job", name))
            return Training("Training", "Retrying", f"Job {name} failed earlier; retrying for generation {generation}")
        report = contracts.parse_report(final.termination_message if final else None)
        if report.ok or not (final and final.termination_message):
            message = job.message or "the training Job failed without a report"
            return Training("Failed", "JobFailed", f"Job {name} failed: {message}; fix the spec to retry")
        return Training("Failed", report.reason, f"Job {name}: {report.message}")
    # Succeeded: the report is in the pod's termination message.
    if final is None:
        if pods:
            return Training("Training", "Training", f"Job {name} completed; reading its pod's report")
        # The pod is gone (deleted by hand or by a TTL) and with it the report: train again; the training
        # program finds the complete version on the volume and reuses it.
        plan.delete.append(("Job", name))
        return Training("Training", "Retrying", f"Job {name} completed but its pod and report are gone; re-running")
    report = contracts.parse_report(final.termination_message)
    if not report.ok:
        return Training("Failed", report.reason, f"Job {name}: {report.message}")
    entry = version_entry(report, short, name)
    versions.insert(0, entry)
    return Training("Trained", verb, f"version {entry['version']} from Job {name}", entry)


def _holder(controller: str) -> str:
    if controller:
        return f"it is controlled by another owner (uid {controller})"
    return "it has no controller owner reference (it was not made by this operator for this ModelDeployment)"


def conflict_message(md: dict[str, Any], kind: str, name: str, holder: str) -> str:
    """What a ChildConflict says: which object, why the operator keeps off it, and what the user can do."""
    model = md["metadata"]["name"]
    hint = f"delete {kind} {name} if it is not needed (or, if its owner was a deleted ModelDeployment {model}, wait"
    hint += " for the garbage collector to remove it)"
    rename = f"or give this ModelDeployment another name than {model!r}"
    if kind == "Service":
        rename += " (a spec.serving.serviceName to choose the Service's name is planned)"
    return (
        f"{kind} {name} already exists and {holder}; the operator neither modifies nor adopts it. "
        f"To go on, {hint}, {rename}."
    )


def write_failure(verb: str, kind: str, name: str, status: int, api_message: str) -> Blocker:
    """A write the API server refused for good (403, 422, 400...) as the reason and message of the status."""
    lowered = api_message.lower()
    if status == 403 and "exceeded quota" in lowered:
        reason, hint = "QuotaExceeded", "raise the namespace's ResourceQuota or lower the spec's requests"
    elif status == 403:
        reason, hint = "Forbidden", "grant the operator's ServiceAccount this permission (or lift the policy)"
    elif status == 422:
        reason, hint = "Invalid", "fix the spec (or the admission policy) that makes this object invalid"
    elif status == 400:
        reason, hint = "BadRequest", "fix the spec field the message names"
    else:
        reason, hint = "WriteFailed", "see the message; the operator retries with backoff"
    return Blocker(reason, f"{verb} {kind} {name} refused ({status}): {api_message}; {hint}")


# A pod waits unschedulable for a moment in the normal course (a claim being provisioned and bound): reported only
# after this long, so that the normal case costs no status write (the reconcile is queued again for then).
UNSCHEDULABLE_GRACE_SECONDS: Final = 4.0
# A claim being provisioned keeps the pod unschedulable longer on a busy cluster (measured: 10-15 s for 40 claims
# at once on the local control plane); only a claim still Pending after this is news.
CLAIM_PENDING_GRACE_SECONDS: Final = 30.0


def _seconds_between(earlier: str, later: str) -> float:
    try:
        start = datetime.datetime.fromisoformat(earlier.replace("Z", "+00:00"))
        end = datetime.datetime.fromisoformat(later.replace("Z", "+00:00"))
    except ValueError:
        return UNSCHEDULABLE_GRACE_SECONDS  # no usable time: report at once
    return (end - start).total_seconds()


def _active_training(name: str, pods: list[PodState], observed: Observed, plan: Plan, now: str) -> Training:
    """A running Job, with what keeps its pod from running as the reason: the kubelet's and scheduler's words.

    An image that cannot be pulled or a container that cannot be created is a failure (Stalled) until it changes;
    an unschedulable pod (an unbound claim among the causes) is still progress: an autoscaler or a provisioner may
    fix it, and it is reported once it lasts longer than UNSCHEDULABLE_GRACE_SECONDS.
    """
    live = [p for p in pods if not p.deleting and p.phase in ("Pending", "Running")]
    for pod in live:
        if pod.broken_reason:
            return Training(
                "Failed",
                pod.waiting_reason or "PodFailing",
                f"Job {name}: training pod {pod.name}: {pod.broken_reason}",
            )
    for pod in live:
        if not pod.unschedulable_message:
            continue
        claim = observed.claim
        claim_pending = claim is not None and claim.phase == "Pending"
        grace = CLAIM_PENDING_GRACE_SECONDS if claim_pending else UNSCHEDULABLE_GRACE_SECONDS
        waited = _seconds_between(pod.unschedulable_since, now)
        if waited < grace:
            plan.requeue_after = max(plan.requeue_after, grace - waited + 0.5)
            continue
        if claim is not None and claim_pending:
            message = f"Job {name}: PersistentVolumeClaim {claim.name} is Pending; training pod {pod.name}: "
            return Training("Training", "ClaimPending", message + pod.unschedulable_message)
        message = f"Job {name}: training pod {pod.name} cannot be scheduled: {pod.unschedulable_message}"
        return Training("Training", "Unschedulable", message)
    retried = next((p for p in pods if p.last_exit_reason == "OOMKilled"), None)
    if retried is not None:
        message = f"Job {name} is training again: pod {retried.name} was OOMKilled (raise its memory limit)"
        return Training("Training", "RetryingAfterOOMKilled", message)
    return Training("Training", "Training", f"Job {name} is training")


def _condition(kind: str, status: bool | None, reason: str, message: str) -> dict[str, Any]:
    value = "Unknown" if status is None else ("True" if status else "False")
    return {"type": kind, "status": value, "reason": reason, "message": message}


def merge_conditions(
    old: list[dict[str, Any]], new: list[dict[str, Any]], generation: int, now: str
) -> list[dict[str, Any]]:
    """Give each condition its observedGeneration and a lastTransitionTime that moves only when its status does."""
    previous = {c.get("type"): c for c in old if isinstance(c, dict)}
    out = []
    for cond in new:
        before = previous.get(cond["type"])
        changed = before is None or before.get("status") != cond["status"]
        stamp = now if changed or not before or not before.get("lastTransitionTime") else before["lastTransitionTime"]
        out.append({**cond, "observedGeneration": generation, "lastTransitionTime": stamp})
    return out


def transition_events(
    old: list[dict[str, Any]], new: list[dict[str, Any]], old_phase: str, new_phase: str, summary: str
) -> list[Event]:
    """At most one event per reconcile: when the phase or the status of a condition changed (not on first sight).

    The note lists every condition whose status or reason changed; a reason-only change (e.g. PodsPending ->
    RollingOut) is in the status and in the next event's note, and posts no event of its own. One event per
    transition instead of one per condition keeps the API server's writes per ModelDeployment low.
    """
    previous = {c.get("type"): c for c in old if isinstance(c, dict)}
    changed = [
        (cond, previous[cond["type"]])
        for cond in new
        if cond["type"] in previous
        and (previous[cond["type"]].get("status"), previous[cond["type"]].get("reason"))
        != (cond["status"], cond["reason"])
    ]
    flipped = [cond for cond, before in changed if before.get("status") != cond["status"]]
    if old_phase == new_phase and not flipped:
        return []
    warning = new_phase in (PHASE_FAILED, PHASE_DEGRADED) or any(
        (cond["type"], cond["status"]) in WARNING_STATES for cond in flipped
    )
    details = "; ".join(f"{cond['type']}={cond['status']} ({cond['reason']}): {cond['message']}" for cond, _ in changed)
    if old_phase != new_phase:
        reason, note = new_phase, f"phase {old_phase or 'none'} -> {new_phase}: {summary}"
    else:
        reason, note = flipped[0]["reason"], ""
    note = "; ".join(part for part in (note, details) if part)
    return [Event("Warning" if warning else "Normal", reason, note)]


def _retained(
    versions: list[dict[str, Any]], keep: int, pinned: set[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The newest `keep` versions plus any pinned (current, served); the rest are dropped."""
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for entry in versions:
        if len(kept) < keep or entry.get("version") in pinned:
            kept.append(entry)
        else:
            dropped.append(entry)
    return kept, dropped


def _is_rolled_out(observed: Observed, desired_hash: str, desired: int, version: str) -> bool:
    return _deployment_rolled_out(observed.deployment, desired_hash, desired, version)


def _deployment_rolled_out(dep: DeploymentState | None, desired_hash: str, desired: int, version: str) -> bool:
    return bool(
        dep is not None
        and dep.config_hash == desired_hash
        and dep.model_version == version
        and dep.observed_generation >= dep.generation
        and dep.desired == desired
        and dep.updated == desired
        and dep.replicas == desired
        and dep.ready == desired
        and dep.available == desired
    )


def decide(md: dict[str, Any], observed: Observed, settings: Settings, now: str) -> Plan:
    """Everything one reconcile does, as data."""
    plan = Plan()
    spec = normalized_spec(md)
    full = {**md, "spec": spec}
    model = md["metadata"]["name"]
    namespace = md["metadata"]["namespace"]
    generation = int(md["metadata"].get("generation", 0))
    old = md.get("status") or {}
    versions = [dict(v) for v in old.get("versions") or [] if isinstance(v, dict) and v.get("version")]

    uid = str(md["metadata"].get("uid") or "")

    def blocked_by(kind: str, child: Any) -> bool:
        """A child the cache shows under our labels but controlled by someone else: never written, reported."""
        if child is None or child.controller_uid == uid:
            return False
        message = conflict_message(full, kind, child.name, _holder(child.controller_uid))
        plan.blocker = plan.blocker or Blocker("ChildConflict", message)
        return True

    claim = builders.build_claim(full)
    if claim is not None and versions and (observed.claim is None or observed.claim.deleting):
        observed, versions = _recover_lost_artifacts(md, claim, observed, versions, plan)
        old = {k: v for k, v in old.items() if k != "modelVersion"}
    if claim is not None and observed.claim is None:
        plan.create.append(claim)
    elif claim is not None:
        blocked_by("PersistentVolumeClaim", observed.claim)

    if claim is not None and observed.claim is not None and observed.claim.deleting:
        name = observed.claim.name
        training = Training("Training", "ClaimDeleting", f"waiting for the deleted claim {name} to go, then training")
    else:
        training = decide_training(
            full, spec=spec, observed=observed, versions=versions, plan=plan, settings=settings, now=now
        )
    target = training.target
    # Serving: the current spec's version when trained, else keep serving what was served; a pin or a canary
    # (spec.serving.modelVersion, spec.serving.canary) chooses among the retained versions (rollout.py).
    autoscaled = builders.is_autoscaled(spec)
    dep = observed.deployment
    desired = int(spec["serving"].get("replicas", 1))
    if autoscaled:
        desired = dep.desired if dep is not None else int(spec["serving"]["autoscaling"].get("minReplicas", 1))
    canary_pods = [
        p for p in observed.pods if p.component == naming.COMPONENT_SERVING and p.track == naming.TRACK_CANARY
    ]
    choice = rollout.choose_serving(
        spec,
        target=target,
        versions=versions,
        old_status=old,
        total_replicas=desired,
        canary_deployment=observed.canary,
        canary_pods=canary_pods,
        metrics=observed.canary_metrics,
        now=now,
    )
    served = choice.stable
    for kind, reason, message in choice.notes:
        plan.notices.append(Event(kind, reason, message))
    if choice.requeue_after:
        plan.requeue_after = (
            min(plan.requeue_after, choice.requeue_after) if plan.requeue_after else choice.requeue_after
        )

    # Retention: the newest retainVersions versions stay (their Jobs and artifacts), plus whatever is served,
    # pinned or canaried.
    pinned = {str(v["version"]) for v in (target, served, choice.canary) if v}
    pinned |= {str(spec["serving"]["modelVersion"])} if spec["serving"].get("modelVersion") else set()
    # Pods of a previous version may still be serving from its directory until the rollout is done.
    pinned |= {p.version for p in observed.pods if p.component == naming.COMPONENT_SERVING and p.version}
    versions, dropped = _retained(versions, int(spec.get("retainVersions", 3)), pinned)
    kept_hashes = {v.get("specHash") for v in versions} | {naming.short_spec_hash(spec)}
    for job in observed.jobs:
        if (
            job.component == naming.COMPONENT_TRAINING
            and job.spec_hash not in kept_hashes
            and not job.deleting
            and job.controller_uid == uid
        ):
            plan.delete.append(("Job", job.name))
    kept_paths = {v.get("path") for v in versions}
    doomed = [v for v in dropped if v.get("path") and v.get("path") not in kept_paths and not v.get("reused")]
    if doomed and not builders.storage_uri(spec):  # versions in object storage stay (docs/object-storage.md)
        plan.create.append(builders.build_cleanup_job(full, doomed, settings))

    deployment_hash = ""
    stable_desired = desired if autoscaled or choice.stable_replicas is None else choice.stable_replicas
    if served is not None:
        stable_replicas = None if autoscaled else choice.stable_replicas
        deployment = builders.build_deployment(full, served, settings, replicas=stable_replicas)
        deployment_hash = deployment["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH]
        _hold(plan, deployment, dep, blocked_by)
        _hold(plan, builders.build_service(full), observed.service, blocked_by)
    canary_rolled = True
    if served is not None and choice.canary is not None:
        canary = builders.build_canary_deployment(full, choice.canary, settings, choice.canary_replicas)
        canary_hash = canary["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH]
        _hold(plan, canary, observed.canary, blocked_by)
        canary_rolled = _deployment_rolled_out(
            observed.canary, canary_hash, choice.canary_replicas, str(choice.canary["version"])
        )
    route_status = _hold_gateway(
        plan, full, old=old, observed=observed, choice=choice, served=served, blocked_by=blocked_by
    )
    hpa = builders.build_hpa(full)
    if hpa is not None and served is not None:
        _hold(plan, hpa, observed.hpa, blocked_by)
    elif hpa is None and observed.hpa is not None and observed.hpa.controller_uid == uid:
        plan.delete.append(("HorizontalPodAutoscaler", observed.hpa.name))
    policy = builders.build_network_policy(full)
    if policy is not None and served is not None:
        _hold(plan, policy, observed.network_policy, blocked_by)
    elif policy is None and observed.network_policy is not None and observed.network_policy.controller_uid == uid:
        plan.delete.append(("NetworkPolicy", observed.network_policy.name))
    pdb = builders.build_pdb(full)
    if pdb is not None and served is not None:
        _hold(plan, pdb, observed.pdb, blocked_by)
    elif pdb is None and observed.pdb is not None and observed.pdb.controller_uid == uid:
        plan.delete.append(("PodDisruptionBudget", observed.pdb.name))
    if claim is not None and observed.claim is not None and observed.claim.controller_uid == uid:
        # A claim's spec cannot change after creation: only its labels, annotations and owner are held.
        where = drift.drift_of(claim, observed.claim.owned, metadata_only=True) if observed.claim.owned else ""
        if where:
            plan.apply.append(claim_metadata(claim))
            plan.drifted.append(f"{claim['kind']} {claim['metadata']['name']} at {where}")

    serving_pods = [p for p in observed.pods if p.component == naming.COMPONENT_SERVING and not p.deleting]
    # A canary's failing pods are the canary's verdict (a rollback), not the stable version's degradation.
    broken = [p for p in serving_pods if p.broken_reason and p.track != naming.TRACK_CANARY]
    pending = [p for p in serving_pods if p.phase == "Pending"]
    rolled = (
        target is not None
        and served is not None
        and _is_rolled_out(observed, deployment_hash, stable_desired, str(served["version"]))
    )
    canary_dep = observed.canary
    if canary_dep is not None and canary_dep.controller_uid == uid and choice.canary is None and canary_dep.desired:
        # A promoted canary's pods serve until the main Deployment has rolled to their version; a rolled-back or
        # unwanted one stops at once. Scaled to zero rather than deleted: the next canary reuses it, and the
        # operator needs no right to delete Deployments.
        promoted = (choice.status or {}).get("state") == rollout.STATE_PROMOTED
        if rolled or not promoted or canary_dep.model_version != str(served["version"] if served else ""):
            plan.patch.append(("Deployment", canary_dep.name, {"spec": {"replicas": 0}}))
    if rolled and not canary_rolled:
        rolled = False
    available = dep is not None and dep.available_condition and dep.available > 0
    # A Deployment applied by this reconcile reads as the watch will show it a moment later (no replicas yet), so
    # that its appearance in the cache costs no status write of its own (as a just-created Job).
    applied = [m for m in plan.apply_new if m["kind"] == "Deployment"]
    exists = dep is not None or any(m["metadata"]["name"] == naming.serving_name(model) for m in applied)
    degraded_message = ""
    if broken:
        first = broken[0]
        degraded_message = f"{len(broken)} serving pod(s) failing; pod {first.name}: {first.broken_reason}"
        degraded_message += f" ({first.restarts} restarts)" if first.restarts else ""
    elif dep is not None and dep.deadline_exceeded:
        degraded_message = f"Deployment {dep.name} exceeded its progress deadline"
    degraded_reason = "PodsFailing" if broken else ("ProgressDeadlineExceeded" if degraded_message else "AsExpected")
    if choice.problem is not None and not degraded_message:
        degraded_message, degraded_reason = choice.problem.message, choice.problem.reason
    failed = training.state == "Failed"
    ready_count = dep.ready if dep is not None else 0
    if choice.canary is not None and observed.canary is not None:
        ready_count += observed.canary.ready
        desired = stable_desired + choice.canary_replicas

    if failed:
        phase = PHASE_FAILED
    elif degraded_message:
        phase = PHASE_DEGRADED
    elif target is None:
        phase = PHASE_TRAINING if observed.jobs or plan.create else PHASE_PENDING
    elif not rolled or choice.canary is not None:
        phase = PHASE_DEPLOYING
    else:
        phase = PHASE_READY

    conditions = [
        _condition(
            "Trained",
            training.state == "Trained",
            training.reason,
            training.message,
        ),
        _compressed_condition(training),
        _condition(
            "Available",
            available,
            "MinimumReplicasAvailable" if available else ("ReplicasUnavailable" if exists else "NoDeployment"),
            f"{ready_count}/{desired} serving replicas ready" if exists else "no inference Deployment yet",
        ),
        _progressing_condition(phase, training, rolled=rolled, pending=pending, ready=ready_count, desired=desired),
        _condition("Degraded", bool(degraded_message), degraded_reason, degraded_message or "no failures"),
        _ready_condition(phase, training, ready=ready_count, desired=desired, served=served, degraded=degraded_message),
    ]
    _rollout_conditions(conditions, choice, phase, degraded_reason)
    plan.phase = phase
    plan.raw_conditions = conditions
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "conditions": conditions,
        "specHash": naming.short_spec_hash(spec),
        "replicas": dep.replicas if dep is not None else 0,
        "readyReplicas": ready_count,
        "desiredReplicas": desired,
        "readyDisplay": f"{ready_count}/{desired}",
        "selector": naming.selector_string(naming.serving_selector(model)),
        "versions": versions,
    }
    if served is not None:
        status["modelVersion"] = served["version"]
        status["modelPath"] = served.get("path")
        status["endpoint"] = f"http://{naming.serving_name(model)}.{namespace}.svc:{spec['serving']['port']}"
    if route_status:
        status["route"] = route_status
    if choice.pinned:
        status["pinned"] = True
    if choice.status is not None:
        status["canary"] = choice.status
    if target is not None:
        status["training"] = _training_status(target)
        status["compression"] = _compression_status(target, spec)
    elif training.state == "Failed":
        status["training"] = {
            "jobName": naming.job_name(model, naming.short_spec_hash(spec)),
            "specHash": naming.short_spec_hash(spec),
            "failureReason": training.reason,
            "message": training.message,
        }
    else:
        status["training"] = {
            "jobName": naming.job_name(model, naming.short_spec_hash(spec)),
            "specHash": naming.short_spec_hash(spec),
        }
    plan.status = status
    finish(md, plan, now, plan.blocker)
    return plan


def _hold_gateway(
    plan: Plan,
    full: dict[str, Any],
    *,
    old: dict[str, Any],
    observed: Observed,
    choice: rollout.Serving,
    served: dict[str, Any] | None,
    blocked_by: Callable[[str, Any], bool],
) -> dict[str, Any]:
    """spec.serving.gateway: the tracks' Services and the HTTPRoute with exact weights; its status.route entry.

    No watch sees HTTPRoutes (the Gateway API may not be installed: a watch of a missing resource would stall the
    operator's startup), so the route is applied when what it should be changed since the last successful apply
    (status.route.configHash), not on drift.
    """
    if served is None or not full["spec"]["serving"].get("gateway"):
        return {}
    for track in (naming.TRACK_STABLE, naming.TRACK_CANARY):
        service = builders.build_track_service(full, track)
        child = next((s for s in observed.track_services if s.name == service["metadata"]["name"]), None)
        _hold(plan, service, child, blocked_by)
    percent = int(full["spec"]["serving"]["canary"]["trafficPercent"]) if choice.canary is not None else 0
    route = builders.build_http_route(full, percent)
    if route is None:
        return {}
    digest = route["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH]
    if (old.get("route") or {}).get("configHash") != digest:
        plan.apply_new.append(route)
    return {"name": route["metadata"]["name"], "canaryWeight": percent, "configHash": digest}


def _rollout_conditions(
    conditions: list[dict[str, Any]], choice: rollout.Serving, phase: str, degraded_reason: str
) -> None:
    """What a pin or a canary adds to the conditions: a running canary is progress (not Ready yet), a rolled-back
    one or a pin of a version that is not retained is Degraded with its reason (kstatus and Argo CD read these)."""
    by_type = {c["type"]: c for c in conditions}
    ready, progressing = by_type["Ready"], by_type["Progressing"]
    if phase == PHASE_DEGRADED:
        ready["reason"] = degraded_reason if choice.problem is not None else ready["reason"]
        return
    if choice.canary is not None and phase in (PHASE_DEPLOYING, PHASE_READY):
        progressing.update(status="True", reason="CanaryInProgress", message=choice.progress)
        ready.update(status="False", reason="CanaryInProgress", message=choice.progress)
    elif choice.pinned and ready["status"] == "True":
        ready["message"] = ready["message"].replace(":", " (pinned: spec.serving.modelVersion):", 1)


def finish(md: dict[str, Any], plan: Plan, now: str, blocker: Blocker | None) -> None:
    """Turn the plan's phase and conditions into the status and its events, with kstatus's Reconciling/Stalled.

    A blocker (a child conflict, a write the API server refused) outranks everything else: Ready=False with its
    reason and message, phase Failed, Stalled=True. Run again by `reconcile` when a write fails after `decide`.
    """
    old = md.get("status") or {}
    generation = int(md["metadata"].get("generation", 0))
    phase = plan.phase
    conditions = [dict(c) for c in plan.raw_conditions]
    if blocker is not None:
        phase = PHASE_FAILED
        for cond in conditions:
            if cond["type"] == "Ready" or cond["type"] == "Progressing":
                cond.update(status="False", reason=blocker.reason, message=blocker.message)
    ready = next(c for c in conditions if c["type"] == "Ready")
    progressing = next(c for c in conditions if c["type"] == "Progressing")
    stalled = phase in (PHASE_FAILED, PHASE_DEGRADED)
    reconciling = not stalled and phase != PHASE_READY
    conditions.append(
        _condition("Reconciling", reconciling, progressing["reason"], progressing["message"])
        if reconciling
        else _condition("Reconciling", False, "Stalled" if stalled else "Reconciled", ready["message"])
    )
    conditions.append(
        _condition("Stalled", True, ready["reason"], ready["message"])
        if stalled
        else _condition("Stalled", False, "AsExpected", "nothing is blocked")
    )
    conditions = merge_conditions(old.get("conditions") or [], conditions, generation, now)
    events = transition_events(
        old.get("conditions") or [], conditions, str(old.get("phase") or ""), phase, ready["message"]
    )
    previous_ready: dict[str, Any] = next((c for c in old.get("conditions") or [] if c.get("type") == "Ready"), {})
    if blocker is not None and previous_ready.get("reason") != blocker.reason:
        # The event that reports the block carries its reason (once: later news while blocked keeps its own).
        events = [Event("Warning", blocker.reason, e.message) for e in events]
    plan.status = {**plan.status, "phase": phase, "conditions": conditions}
    plan.events = [*plan.notices, *events]


def _recover_lost_artifacts(
    md: dict[str, Any], claim: dict[str, Any], observed: Observed, versions: list[dict[str, Any]], plan: Plan
) -> tuple[Observed, list[dict[str, Any]]]:
    """The operator's artifact claim was deleted: every version on it is gone. Start again from nothing.

    The versions leave the status, the training Jobs go (a completed Job's report names an artifact that no longer
    exists: nothing is reused), the Deployment goes (its pods hold the old claim, which cannot finish deleting
    while they run); a new claim is made once the old one is gone, then the current spec trains again.
    """
    uid = str(md["metadata"].get("uid") or "")
    name = claim["metadata"]["name"]
    if observed.claim is None:
        plan.verify_gone = name  # the watch may only have lost it (its labels edited away): reconcile reads it
    for job in observed.jobs:
        if job.controller_uid == uid and not job.deleting and job.component == naming.COMPONENT_TRAINING:
            plan.delete.append(("Job", job.name))
    dep = observed.deployment
    if dep is not None and dep.controller_uid == uid:
        plan.delete.append(("Deployment", dep.name))
    lost = ", ".join(str(v["version"]) for v in versions)
    plan.notices.append(
        Event(
            "Warning",
            "ArtifactsLost",
            f"PersistentVolumeClaim {name} was deleted, and with it version(s) {lost}: the serving Deployment is "
            "removed so that the claim can go, and the current spec trains again on a new claim",
        )
    )
    kept_pods = tuple(p for p in observed.pods if p.component != naming.COMPONENT_TRAINING)
    return replace(observed, jobs=(), pods=kept_pods, deployment=None), []


def deployment_not_made(plan: Plan) -> None:
    """The new Deployment this plan applies was not made (a foreign object holds its name, or the write was
    refused): `Available` says there is none, instead of what the watch would have shown of a new one."""
    for cond in plan.raw_conditions:
        if cond["type"] == "Available" and cond["status"] == "False":
            cond.update(reason="NoDeployment", message="no inference Deployment yet")


def claim_metadata(claim: dict[str, Any]) -> dict[str, Any]:
    """The part of the claim the operator may still write after creation: its labels, annotations and owner."""
    keys = ("name", "namespace", "labels", "annotations", "ownerReferences")
    return {"apiVersion": "v1", "kind": claim["kind"], "metadata": {k: claim["metadata"][k] for k in keys}}


def _hold(
    plan: Plan,
    manifest: dict[str, Any],
    child: ChildState | DeploymentState | None,
    blocked_by: Callable[[str, Any], bool],
) -> None:
    """Plan the write that holds one applied child (Deployment, Service, HPA, NetworkPolicy) to its manifest, if any
    is needed."""
    kind = manifest["kind"]
    if child is None:
        plan.apply_new.append(manifest)
        return
    if blocked_by(kind, child):
        return
    if child.owned is not None:
        where = drift.drift_of(manifest, child.owned)
    else:  # a summary without the object (tests): the hash annotation, and the replicas that the hash leaves out
        want = manifest["metadata"]["annotations"].get(naming.ANNOTATION_CONFIG_HASH)
        where = "" if child.config_hash == want else "metadata.annotations"
        replicas = manifest["spec"].get("replicas")
        if isinstance(child, DeploymentState) and replicas is not None and child.desired != replicas:
            where = where or "spec.replicas"
    if not where:
        return
    plan.apply.append(manifest)
    plan.drifted.append(f"{kind} {manifest['metadata']['name']} at {where}")
    repair = drift.ports_repair(manifest, where)
    if repair is not None:  # a port's number is part of its list key: the list is replaced before the apply
        plan.patch.append((kind, manifest["metadata"]["name"], repair))


def _compressed_condition(training: Training) -> dict[str, Any]:
    target = training.target
    if target is not None:
        size, fp32 = target.get("sizeBytes"), target.get("fp32SizeBytes")
        sizes = f", {size} bytes (fp32 {fp32})" if size is not None else ""
        accuracy = f", accuracy {target['accuracy']:.4f}" if "accuracy" in target else ""
        return _condition(
            "Compressed", True, "Compressed", f"ONNX {target.get('quantization', 'fp32')}{sizes}{accuracy}"
        )
    if training.state == "Failed":
        return _condition("Compressed", False, training.reason, training.message)
    return _condition("Compressed", None, "Training", "waiting for the training Job")


def _progressing_condition(
    phase: str, training: Training, *, rolled: bool, pending: list[PodState], ready: int, desired: int
) -> dict[str, Any]:
    if phase == PHASE_FAILED:
        return _condition("Progressing", False, "TrainingFailed", training.message)
    if training.state == "Training":
        return _condition("Progressing", True, training.reason, training.message)
    if rolled:
        return _condition("Progressing", False, "RolloutComplete", f"{ready}/{desired} replicas ready")
    if pending:
        detail = pending[0].unschedulable_message
        message = f"{len(pending)} serving pod(s) Pending" + (f": {detail}" if detail else "")
        return _condition("Progressing", True, "PodsPending", message)
    return _condition("Progressing", True, "RollingOut", f"{ready}/{desired} replicas ready")


def _ready_condition(
    phase: str, training: Training, *, ready: int, desired: int, served: dict[str, Any] | None, degraded: str
) -> dict[str, Any]:
    if phase == PHASE_READY:
        version = served["version"] if served else ""
        return _condition("Ready", True, "Ready", f"version {version}: {ready}/{desired} replicas ready")
    if phase == PHASE_FAILED:
        return _condition("Ready", False, "TrainingFailed", training.message)
    if phase == PHASE_DEGRADED:
        return _condition("Ready", False, "Degraded", degraded)
    if phase in (PHASE_TRAINING, PHASE_PENDING):
        return _condition("Ready", False, "Training", training.message)
    return _condition("Ready", False, "RollingOut", f"{ready}/{desired} replicas ready")


def _training_status(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("jobName", "specHash", "version", "accuracy", "sourceAccuracy", "durationSeconds", "reused")
    return {k: entry[k] for k in keys if k in entry}


def _compression_status(entry: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"requested": spec["compression"].get("quantization", "auto")}
    for key in ("quantization", "accuracy", "sizeBytes", "fp32SizeBytes", "tflite"):
        if key in entry:
            out[key] = entry[key]
    return out


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch turning `old` into `new` (keys that went away become null), or None when equal."""
    if old == new:
        return None
    patch: dict[str, Any] = dict(new)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
