"""The reconcile decision, pure: from a ModelDeployment and what the watches saw, the writes to make and the status.

Nothing here talks to the API server; `reconcile.py` carries out the plan. `decide` runs small steps in order, each
reading the typed spec and what the steps before it found, and adding its writes to the plan: the artifact claim,
the training Job (`decide_training`, which returns its writes instead of making them), the version to serve
(rollout.py), the retained versions, the serving children, then the health, the phase, the conditions and the
status.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final

from modeldeploy import contracts
from modeldeploy.spec import ModelDeployment, ModelDeploymentSpec
from modeldeploy_operator import builders, drift, naming, rollout
from modeldeploy_operator.observed import ChildState, DeploymentState, Observed, PodState
from modeldeploy_operator.settings import Settings


class Phase(StrEnum):
    """status.phase."""

    PENDING = "Pending"
    TRAINING = "Training"
    DEPLOYING = "Deploying"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class Condition(StrEnum):
    """The types of status.conditions, in the order they are written."""

    TRAINED = "Trained"
    COMPRESSED = "Compressed"
    AVAILABLE = "Available"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class TrainingState(StrEnum):
    """Where the current spec's model is."""

    TRAINED = "Trained"
    TRAINING = "Training"
    FAILED = "Failed"


class Reason(StrEnum):
    """The reasons this module gives (a failed Job's report and a pod's waiting reason bring their own)."""

    TRAINED = "Trained"
    IMPORTED = "Imported"
    TRAINING = "Training"
    RETRYING = "Retrying"
    RETRYING_AFTER_OOM_KILLED = "RetryingAfterOOMKilled"
    OOM_KILLED = "OOMKilled"
    JOB_FAILED = "JobFailed"
    POD_FAILING = "PodFailing"
    CLAIM_PENDING = "ClaimPending"
    CLAIM_DELETING = "ClaimDeleting"
    UNSCHEDULABLE = "Unschedulable"
    CHILD_CONFLICT = "ChildConflict"
    COMPRESSED = "Compressed"
    MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
    NO_DEPLOYMENT = "NoDeployment"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    TRAINING_FAILED = "TrainingFailed"
    ROLLOUT_COMPLETE = "RolloutComplete"
    PODS_PENDING = "PodsPending"
    ROLLING_OUT = "RollingOut"
    PODS_FAILING = "PodsFailing"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    AS_EXPECTED = "AsExpected"
    READY = "Ready"
    DEGRADED = "Degraded"
    CANARY_IN_PROGRESS = "CanaryInProgress"
    STALLED = "Stalled"
    RECONCILED = "Reconciled"
    ARTIFACTS_LOST = "ArtifactsLost"


CONDITION_TYPES: Final = tuple(Condition)
# A condition that turns to one of these (type, status) pairs is news worth a Warning event.
WARNING_STATES: Final = frozenset(
    {(Condition.TRAINED, "False"), (Condition.DEGRADED, "True"), (Condition.COMPRESSED, "False")}
)
# Phases in which nothing more happens until someone acts: kstatus's Stalled, and a Warning event.
STALLED_PHASES: Final = frozenset({Phase.FAILED, Phase.DEGRADED})


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

    def block(self, blocker: Blocker) -> None:
        """Record a blocker; the first one found is the one the status reports."""
        self.blocker = self.blocker or blocker


@dataclass(frozen=True)
class Training:
    """Where the current spec's model is, and the writes that move it on (`decide_training` makes none itself)."""

    state: TrainingState
    reason: str
    message: str
    target: dict[str, Any] | None = None
    """The version entry of the current spec, once trained."""
    fresh: bool = False
    """`target` comes from the Job's report just read: it goes first in status.versions."""
    create: tuple[dict[str, Any], ...] = ()
    delete: tuple[tuple[str, str], ...] = ()
    blocker: Blocker | None = None
    requeue_after: float = 0.0


@dataclass(frozen=True)
class Inputs:
    """What every step reads: the ModelDeployment with its typed spec, what the watches saw, the settings and the
    time."""

    model: ModelDeployment
    observed: Observed
    settings: Settings
    now: str

    @property
    def spec(self) -> ModelDeploymentSpec:
        return self.model.spec

    @property
    def uid(self) -> str:
        return self.model.uid


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
    model: ModelDeployment,
    *,
    observed: Observed,
    versions: list[dict[str, Any]],
    settings: Settings,
    now: str = "",
) -> Training:
    """The training (or import) Job of the current spec: where its model is, and the Job to create or delete."""
    spec = model.spec
    short = naming.short_spec_hash(spec)
    name = naming.job_name(model.name, short)
    verb = Reason.IMPORTED if spec.import_model is not None else Reason.TRAINED
    known = next((v for v in versions if v.get("specHash") == short), None)
    if known is not None:
        message = f"version {known['version']} from Job {known.get('jobName', name)}"
        return Training(TrainingState.TRAINED, verb, message, known)
    job = observed.job(name)
    if job is not None and job.controller_uid != model.uid:
        message = conflict_message(model.name, "Job", name, _holder(job.controller_uid))
        blocker = Blocker(Reason.CHILD_CONFLICT, message)
        return Training(TrainingState.TRAINING, Reason.CHILD_CONFLICT, message, blocker=blocker)
    if job is None:
        # The same reason and message as a running Job: the watch sees the new Job a moment later, and a status
        # that changed only for that would cost a status write for nothing.
        created = (builders.build_training_job(model, settings),)
        return Training(TrainingState.TRAINING, Reason.TRAINING, f"Job {name} is training", create=created)
    if job.deleting:
        message = f"waiting for the previous Job {name} to be removed before retrying"
        return Training(TrainingState.TRAINING, Reason.RETRYING, message)
    pods = [p for p in observed.pods if p.job_name == name]
    if job.outcome == "Active":
        return _active_training(name, pods, observed, now)
    final = _final_pod(pods)
    oom = next((p for p in pods if p.last_exit_reason == "OOMKilled"), None)
    if job.outcome == "Failed" and oom is not None and not (final and final.termination_message):
        limit = "raise spec.training.resources.limits.memory (or train a smaller model)"
        message = f"Job {name} failed: pod {oom.name} was OOMKilled; {limit}"
        return Training(TrainingState.FAILED, Reason.OOM_KILLED, message)
    if job.outcome == "Failed":
        if job.generation < model.generation:
            # A new generation of the spec is a new attempt; the same generation never retries (no retry storm).
            message = f"Job {name} failed earlier; retrying for generation {model.generation}"
            return Training(TrainingState.TRAINING, Reason.RETRYING, message, delete=(("Job", name),))
        report = contracts.parse_report(final.termination_message if final else None)
        if report.ok or not (final and final.termination_message):
            message = job.message or "the training Job failed without a report"
            return Training(
                TrainingState.FAILED, Reason.JOB_FAILED, f"Job {name} failed: {message}; fix the spec to retry"
            )
        return Training(TrainingState.FAILED, report.reason, f"Job {name}: {report.message}")
    # Succeeded: the report is in the pod's termination message.
    if final is None:
        if pods:
            return Training(TrainingState.TRAINING, Reason.TRAINING, f"Job {name} completed; reading its pod's report")
        # The pod is gone (deleted by hand or by a TTL) and with it the report: train again; the training
        # program finds the complete version on the volume and reuses it.
        message = f"Job {name} completed but its pod and report are gone; re-running"
        return Training(TrainingState.TRAINING, Reason.RETRYING, message, delete=(("Job", name),))
    report = contracts.parse_report(final.termination_message)
    if not report.ok:
        return Training(TrainingState.FAILED, report.reason, f"Job {name}: {report.message}")
    entry = version_entry(report, short, name)
    return Training(TrainingState.TRAINED, verb, f"version {entry['version']} from Job {name}", entry, fresh=True)


def _holder(controller: str) -> str:
    if controller:
        return f"it is controlled by another owner (uid {controller})"
    return "it has no controller owner reference (it was not made by this operator for this ModelDeployment)"


def conflict_message(model: str, kind: str, name: str, holder: str) -> str:
    """What a ChildConflict says: which object, why the operator keeps off it, and what the user can do."""
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


def _active_training(name: str, pods: list[PodState], observed: Observed, now: str) -> Training:
    """A running Job, with what keeps its pod from running as the reason: the kubelet's and scheduler's words.

    An image that cannot be pulled or a container that cannot be created is a failure (Stalled) until it changes;
    an unschedulable pod (an unbound claim among the causes) is still progress: an autoscaler or a provisioner may
    fix it, and it is reported once it lasts longer than UNSCHEDULABLE_GRACE_SECONDS (until then, the result asks
    for a reconcile when the grace ends).
    """
    live = [p for p in pods if not p.deleting and p.phase in ("Pending", "Running")]
    for pod in live:
        if pod.broken_reason:
            return Training(
                TrainingState.FAILED,
                pod.waiting_reason or Reason.POD_FAILING,
                f"Job {name}: training pod {pod.name}: {pod.broken_reason}",
            )
    requeue = 0.0
    for pod in live:
        if not pod.unschedulable_message:
            continue
        claim = observed.claim
        claim_pending = claim is not None and claim.phase == "Pending"
        grace = CLAIM_PENDING_GRACE_SECONDS if claim_pending else UNSCHEDULABLE_GRACE_SECONDS
        waited = _seconds_between(pod.unschedulable_since, now)
        if waited < grace:
            requeue = max(requeue, grace - waited + 0.5)
            continue
        if claim is not None and claim_pending:
            message = f"Job {name}: PersistentVolumeClaim {claim.name} is Pending; training pod {pod.name}: "
            message += pod.unschedulable_message
            return Training(TrainingState.TRAINING, Reason.CLAIM_PENDING, message, requeue_after=requeue)
        message = f"Job {name}: training pod {pod.name} cannot be scheduled: {pod.unschedulable_message}"
        return Training(TrainingState.TRAINING, Reason.UNSCHEDULABLE, message, requeue_after=requeue)
    retried = next((p for p in pods if p.last_exit_reason == "OOMKilled"), None)
    if retried is not None:
        message = f"Job {name} is training again: pod {retried.name} was OOMKilled (raise its memory limit)"
        return Training(TrainingState.TRAINING, Reason.RETRYING_AFTER_OOM_KILLED, message, requeue_after=requeue)
    return Training(TrainingState.TRAINING, Reason.TRAINING, f"Job {name} is training", requeue_after=requeue)


def _condition(kind: str, status: bool | None, reason: str, message: str) -> dict[str, Any]:
    """One condition; its type and reason as plain strings (the status is JSON and YAML, never enums)."""
    value = "Unknown" if status is None else ("True" if status else "False")
    return {"type": str(kind), "status": value, "reason": str(reason), "message": message}


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
    warning = new_phase in STALLED_PHASES or any((cond["type"], cond["status"]) in WARNING_STATES for cond in flipped)
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


@dataclass(frozen=True)
class ServingChoice:
    """Which versions serve with how many replicas (rollout.py's choice), and the replica count asked for."""

    choice: rollout.Serving
    desired: int
    """spec.serving.replicas, or the HPA's count when autoscaled."""
    autoscaled: bool

    @property
    def served(self) -> dict[str, Any] | None:
        return self.choice.stable

    @property
    def stable_desired(self) -> int:
        """The main Deployment's replicas: all of them, less the canary's share while one runs."""
        if self.autoscaled or self.choice.stable_replicas is None:
            return self.desired
        return self.choice.stable_replicas


@dataclass(frozen=True)
class Children:
    """What holding the serving children found: the main Deployment's config hash, whether the canary's Deployment
    has rolled out, and status.route."""

    deployment_hash: str = ""
    canary_rolled: bool = True
    route: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Health:
    """How the serving side is doing: what the Available, Progressing, Degraded and Ready conditions say."""

    rolled: bool
    available: bool
    pending: list[PodState]
    degraded_reason: str
    degraded_message: str
    ready: int
    desired: int


def decide(
    md: dict[str, Any], observed: Observed, settings: Settings, now: str, *, model: ModelDeployment | None = None
) -> Plan:
    """Everything one reconcile does, as data. `model` is `md` parsed (ModelDeployment.from_object), when the caller
    has it already."""
    inputs = Inputs(model or ModelDeployment.from_object(md), observed, settings, now)
    plan = Plan()
    old: dict[str, Any] = md.get("status") or {}
    versions = [dict(v) for v in old.get("versions") or [] if isinstance(v, dict) and v.get("version")]
    claim = builders.build_claim(inputs.model)
    if claim is not None and versions and (observed.claim is None or observed.claim.deleting):
        inputs, versions = _recover_lost_artifacts(inputs, claim, versions, plan)
        old = {k: v for k, v in old.items() if k != "modelVersion"}
    _hold_claim(inputs, claim, plan)
    training = _training(inputs, claim, versions, plan)
    if training.fresh and training.target is not None:
        versions = [training.target, *versions]
    serving = _choose_serving(inputs, training, versions, old, plan)
    versions = _retain(inputs, training, serving, versions, plan)
    children = _hold_serving(inputs, serving, old, claim, plan)
    health = _health(inputs, training, serving, children, plan)
    phase = _phase(inputs, training, serving, health, plan)
    # A Deployment applied by this reconcile reads as the watch will show it a moment later (no replicas yet), so
    # that its appearance in the cache costs no status write of its own (as a just-created Job).
    name = naming.serving_name(inputs.model.name)
    deployment_exists = inputs.observed.deployment is not None or any(
        m["kind"] == "Deployment" and m["metadata"]["name"] == name for m in plan.apply_new
    )
    conditions = _conditions(training, serving, health, phase, deployment_exists=deployment_exists)
    plan.phase = phase
    plan.raw_conditions = conditions
    plan.status = _status(
        inputs, training, serving, children, health, phase=phase, conditions=conditions, versions=versions
    )
    finish(md, plan, now, plan.blocker)
    return plan


def _blocked_by(inputs: Inputs, plan: Plan, kind: str, child: ChildState | DeploymentState | None) -> bool:
    """A child the cache shows under our labels but controlled by someone else: never written, reported."""
    if child is None or child.controller_uid == inputs.uid:
        return False
    message = conflict_message(inputs.model.name, kind, child.name, _holder(child.controller_uid))
    plan.block(Blocker(Reason.CHILD_CONFLICT, message))
    return True


def _hold_claim(inputs: Inputs, claim: dict[str, Any] | None, plan: Plan) -> None:
    """The artifact claim: created when absent (never updated: a claim's spec cannot change)."""
    if claim is not None and inputs.observed.claim is None:
        plan.create.append(claim)
    elif claim is not None:
        _blocked_by(inputs, plan, "PersistentVolumeClaim", inputs.observed.claim)


def _training(inputs: Inputs, claim: dict[str, Any] | None, versions: list[dict[str, Any]], plan: Plan) -> Training:
    """The training step: where the current spec's model is; its Job's writes go into the plan."""
    observed = inputs.observed
    if claim is not None and observed.claim is not None and observed.claim.deleting:
        message = f"waiting for the deleted claim {observed.claim.name} to go, then training"
        return Training(TrainingState.TRAINING, Reason.CLAIM_DELETING, message)
    training = decide_training(
        inputs.model, observed=observed, versions=versions, settings=inputs.settings, now=inputs.now
    )
    if training.blocker is not None:
        plan.block(training.blocker)
    plan.create.extend(training.create)
    plan.delete.extend(training.delete)
    plan.requeue_after = max(plan.requeue_after, training.requeue_after)
    return training


def _choose_serving(
    inputs: Inputs, training: Training, versions: list[dict[str, Any]], old: dict[str, Any], plan: Plan
) -> ServingChoice:
    """Serving: the current spec's version when trained, else keep serving what was served; a pin or a canary
    (spec.serving.modelVersion, spec.serving.canary) chooses among the retained versions (rollout.py)."""
    observed = inputs.observed
    autoscaling = inputs.spec.serving.autoscaling
    autoscaled = autoscaling is not None and autoscaling.enabled
    desired = inputs.spec.serving.replicas
    if autoscaling is not None and autoscaled:
        dep = observed.deployment
        desired = dep.desired if dep is not None else autoscaling.min_replicas
    canary_pods = [
        p for p in observed.pods if p.component == naming.COMPONENT_SERVING and p.track == naming.TRACK_CANARY
    ]
    choice = rollout.choose_serving(
        inputs.spec,
        target=training.target,
        versions=versions,
        old_status=old,
        total_replicas=desired,
        canary_deployment=observed.canary,
        canary_pods=canary_pods,
        metrics=observed.canary_metrics,
        now=inputs.now,
    )
    for kind, reason, message in choice.notes:
        plan.notices.append(Event(kind, reason, message))
    if choice.requeue_after:
        plan.requeue_after = (
            min(plan.requeue_after, choice.requeue_after) if plan.requeue_after else choice.requeue_after
        )
    return ServingChoice(choice, desired, autoscaled)


def _retain(
    inputs: Inputs, training: Training, serving: ServingChoice, versions: list[dict[str, Any]], plan: Plan
) -> list[dict[str, Any]]:
    """Retention: the newest retainVersions versions stay (their Jobs and artifacts), plus whatever is served,
    pinned or canaried; the others' Jobs are deleted and their artifacts removed by a cleanup Job."""
    spec, observed = inputs.spec, inputs.observed
    pinned = {str(v["version"]) for v in (training.target, serving.served, serving.choice.canary) if v}
    pinned |= {str(spec.serving.model_version)} if spec.serving.model_version else set()
    # Pods of a previous version may still be serving from its directory until the rollout is done.
    pinned |= {p.version for p in observed.pods if p.component == naming.COMPONENT_SERVING and p.version}
    versions, dropped = _retained(versions, spec.retain_versions, pinned)
    kept_hashes = {v.get("specHash") for v in versions} | {naming.short_spec_hash(spec)}
    for job in observed.jobs:
        if (
            job.component == naming.COMPONENT_TRAINING
            and job.spec_hash not in kept_hashes
            and not job.deleting
            and job.controller_uid == inputs.uid
        ):
            plan.delete.append(("Job", job.name))
    kept_paths = {v.get("path") for v in versions}
    doomed = [v for v in dropped if v.get("path") and v.get("path") not in kept_paths and not v.get("reused")]
    if doomed and not spec.storage_uri:  # versions in object storage stay (docs/object-storage.md)
        plan.create.append(builders.build_cleanup_job(inputs.model, doomed, inputs.settings))
    return versions


def _hold_serving(
    inputs: Inputs, serving: ServingChoice, old: dict[str, Any], claim: dict[str, Any] | None, plan: Plan
) -> Children:
    """The writes that hold the serving children (and the claim's metadata) to what the spec and the choice say."""
    model, observed, settings = inputs.model, inputs.observed, inputs.settings
    choice, served = serving.choice, serving.served

    def blocked_by(kind: str, child: Any) -> bool:
        return _blocked_by(inputs, plan, kind, child)

    deployment_hash = ""
    if served is not None:
        stable_replicas = None if serving.autoscaled else choice.stable_replicas
        deployment = builders.build_deployment(model, served, settings, replicas=stable_replicas)
        deployment_hash = deployment["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH]
        _hold(plan, deployment, observed.deployment, blocked_by)
        _hold(plan, builders.build_service(model), observed.service, blocked_by)
    canary_rolled = True
    if served is not None and choice.canary is not None:
        canary = builders.build_canary_deployment(model, choice.canary, settings, choice.canary_replicas)
        canary_hash = canary["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH]
        _hold(plan, canary, observed.canary, blocked_by)
        canary_rolled = _deployment_rolled_out(
            observed.canary, canary_hash, choice.canary_replicas, str(choice.canary["version"])
        )
    route = _hold_gateway(plan, model, old=old, observed=observed, choice=choice, served=served, blocked_by=blocked_by)
    for kind, manifest, child in (
        ("HorizontalPodAutoscaler", builders.build_hpa(model), observed.hpa),
        ("NetworkPolicy", builders.build_network_policy(model), observed.network_policy),
        ("PodDisruptionBudget", builders.build_pdb(model), observed.pdb),
    ):
        # Each exists only while the spec asks for it: deleted when it no longer does.
        if manifest is not None and served is not None:
            _hold(plan, manifest, child, blocked_by)
        elif manifest is None and child is not None and child.controller_uid == inputs.uid:
            plan.delete.append((kind, child.name))
    if claim is not None and observed.claim is not None and observed.claim.controller_uid == inputs.uid:
        # A claim's spec cannot change after creation: only its labels, annotations and owner are held.
        where = drift.drift_of(claim, observed.claim.owned, metadata_only=True) if observed.claim.owned else ""
        if where:
            plan.apply.append(claim_metadata(claim))
            plan.drifted.append(f"{claim['kind']} {claim['metadata']['name']} at {where}")
    return Children(deployment_hash, canary_rolled, route)


def _health(inputs: Inputs, training: Training, serving: ServingChoice, children: Children, plan: Plan) -> Health:
    """Rolled out, available, pending, degraded: from the serving pods and Deployments. A canary that is no longer
    wanted is scaled to zero here (once the main Deployment serves its version, if it was promoted)."""
    observed = inputs.observed
    choice, served = serving.choice, serving.served
    dep = observed.deployment
    serving_pods = [p for p in observed.pods if p.component == naming.COMPONENT_SERVING and not p.deleting]
    # A canary's failing pods are the canary's verdict (a rollback), not the stable version's degradation.
    broken = [p for p in serving_pods if p.broken_reason and p.track != naming.TRACK_CANARY]
    pending = [p for p in serving_pods if p.phase == "Pending"]
    rolled = (
        training.target is not None
        and served is not None
        and _deployment_rolled_out(dep, children.deployment_hash, serving.stable_desired, str(served["version"]))
    )
    canary_dep = observed.canary
    if (
        canary_dep is not None
        and canary_dep.controller_uid == inputs.uid
        and choice.canary is None
        and canary_dep.desired
    ):
        # A promoted canary's pods serve until the main Deployment has rolled to their version; a rolled-back or
        # unwanted one stops at once. Scaled to zero rather than deleted: the next canary reuses it, and the
        # operator needs no right to delete Deployments.
        promoted = (choice.status or {}).get("state") == rollout.CanaryState.PROMOTED
        if rolled or not promoted or canary_dep.model_version != str(served["version"] if served else ""):
            plan.patch.append(("Deployment", canary_dep.name, {"spec": {"replicas": 0}}))
    rolled = rolled and children.canary_rolled
    available = dep is not None and dep.available_condition and dep.available > 0
    degraded_message = ""
    if broken:
        first = broken[0]
        degraded_message = f"{len(broken)} serving pod(s) failing; pod {first.name}: {first.broken_reason}"
        degraded_message += f" ({first.restarts} restarts)" if first.restarts else ""
    elif dep is not None and dep.deadline_exceeded:
        degraded_message = f"Deployment {dep.name} exceeded its progress deadline"
    degraded_reason: str = (
        Reason.PODS_FAILING
        if broken
        else (Reason.PROGRESS_DEADLINE_EXCEEDED if degraded_message else Reason.AS_EXPECTED)
    )
    if choice.problem is not None and not degraded_message:
        degraded_message, degraded_reason = choice.problem.message, choice.problem.reason
    ready = dep.ready if dep is not None else 0
    desired = serving.desired
    if choice.canary is not None and observed.canary is not None:
        ready += observed.canary.ready
        desired = serving.stable_desired + choice.canary_replicas
    return Health(rolled, available, pending, degraded_reason, degraded_message, ready, desired)


def _phase(inputs: Inputs, training: Training, serving: ServingChoice, health: Health, plan: Plan) -> Phase:
    if training.state == TrainingState.FAILED:
        return Phase.FAILED
    if health.degraded_message:
        return Phase.DEGRADED
    if training.target is None:
        return Phase.TRAINING if inputs.observed.jobs or plan.create else Phase.PENDING
    if not health.rolled or serving.choice.canary is not None:
        return Phase.DEPLOYING
    return Phase.READY


def _conditions(
    training: Training, serving: ServingChoice, health: Health, phase: Phase, *, deployment_exists: bool
) -> list[dict[str, Any]]:
    """The conditions before `finish` adds kstatus's Reconciling and Stalled and merges them with the stored ones."""
    ready, desired = health.ready, health.desired
    if health.available:
        available_reason = Reason.MINIMUM_REPLICAS_AVAILABLE
    else:
        available_reason = Reason.REPLICAS_UNAVAILABLE if deployment_exists else Reason.NO_DEPLOYMENT
    conditions = [
        _condition(Condition.TRAINED, training.state == TrainingState.TRAINED, training.reason, training.message),
        _compressed_condition(training),
        _condition(
            Condition.AVAILABLE,
            health.available,
            available_reason,
            f"{ready}/{desired} serving replicas ready" if deployment_exists else "no inference Deployment yet",
        ),
        _progressing_condition(
            phase, training, rolled=health.rolled, pending=health.pending, ready=ready, desired=desired
        ),
        _condition(
            Condition.DEGRADED,
            bool(health.degraded_message),
            health.degraded_reason,
            health.degraded_message or "no failures",
        ),
        _ready_condition(
            phase,
            training,
            ready=ready,
            desired=desired,
            served=serving.served,
            degraded=health.degraded_message,
        ),
    ]
    _rollout_conditions(conditions, serving.choice, phase, health.degraded_reason)
    return conditions


def _status(
    inputs: Inputs,
    training: Training,
    serving: ServingChoice,
    children: Children,
    health: Health,
    *,
    phase: Phase,
    conditions: list[dict[str, Any]],
    versions: list[dict[str, Any]],
) -> dict[str, Any]:
    """The status, before `finish` settles the phase and the conditions."""
    model, spec, choice, served = inputs.model, inputs.spec, serving.choice, serving.served
    dep = inputs.observed.deployment
    short = naming.short_spec_hash(spec)
    status: dict[str, Any] = {
        "observedGeneration": model.generation,
        "phase": str(phase),
        "conditions": conditions,
        "specHash": short,
        "replicas": dep.replicas if dep is not None else 0,
        "readyReplicas": health.ready,
        "desiredReplicas": health.desired,
        "readyDisplay": f"{health.ready}/{health.desired}",
        "selector": naming.selector_string(naming.serving_selector(model.name)),
        "versions": versions,
    }
    if served is not None:
        status["modelVersion"] = served["version"]
        status["modelPath"] = served.get("path")
        status["endpoint"] = f"http://{naming.serving_name(model.name)}.{model.namespace}.svc:{spec.serving.port}"
    if children.route:
        status["route"] = children.route
    if choice.pinned:
        status["pinned"] = True
    if choice.status is not None:
        status["canary"] = choice.status
    target = training.target
    if target is not None:
        status["training"] = _training_status(target)
        status["compression"] = _compression_status(target, spec)
    elif training.state == TrainingState.FAILED:
        status["training"] = {
            "jobName": naming.job_name(model.name, short),
            "specHash": short,
            "failureReason": str(training.reason),
            "message": training.message,
        }
    else:
        status["training"] = {"jobName": naming.job_name(model.name, short), "specHash": short}
    return status


def _hold_gateway(
    plan: Plan,
    model: ModelDeployment,
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
    if served is None or model.spec.serving.gateway is None:
        return {}
    for track in (naming.TRACK_STABLE, naming.TRACK_CANARY):
        service = builders.build_track_service(model, track)
        child = next((s for s in observed.track_services if s.name == service["metadata"]["name"]), None)
        _hold(plan, service, child, blocked_by)
    canary = model.spec.serving.canary
    percent = canary.traffic_percent if choice.canary is not None and canary is not None else 0
    route = builders.build_http_route(model, percent)
    if route is None:
        return {}
    digest = route["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH]
    if (old.get("route") or {}).get("configHash") != digest:
        plan.apply_new.append(route)
    return {"name": route["metadata"]["name"], "canaryWeight": percent, "configHash": digest}


def _rollout_conditions(
    conditions: list[dict[str, Any]], choice: rollout.Serving, phase: Phase, degraded_reason: str
) -> None:
    """What a pin or a canary adds to the conditions: a running canary is progress (not Ready yet), a rolled-back
    one or a pin of a version that is not retained is Degraded with its reason (kstatus and Argo CD read these)."""
    by_type = {c["type"]: c for c in conditions}
    ready, progressing = by_type[Condition.READY], by_type[Condition.PROGRESSING]
    if phase == Phase.DEGRADED:
        ready["reason"] = str(degraded_reason) if choice.problem is not None else ready["reason"]
        return
    if choice.canary is not None and phase in (Phase.DEPLOYING, Phase.READY):
        progressing.update(status="True", reason=str(Reason.CANARY_IN_PROGRESS), message=choice.progress)
        ready.update(status="False", reason=str(Reason.CANARY_IN_PROGRESS), message=choice.progress)
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
        phase = Phase.FAILED
        for cond in conditions:
            if cond["type"] in (Condition.READY, Condition.PROGRESSING):
                cond.update(status="False", reason=str(blocker.reason), message=blocker.message)
    ready = next(c for c in conditions if c["type"] == Condition.READY)
    progressing = next(c for c in conditions if c["type"] == Condition.PROGRESSING)
    stalled = phase in STALLED_PHASES
    reconciling = not stalled and phase != Phase.READY
    conditions.append(
        _condition(Condition.RECONCILING, reconciling, progressing["reason"], progressing["message"])
        if reconciling
        else _condition(
            Condition.RECONCILING, False, Reason.STALLED if stalled else Reason.RECONCILED, ready["message"]
        )
    )
    conditions.append(
        _condition(Condition.STALLED, True, ready["reason"], ready["message"])
        if stalled
        else _condition(Condition.STALLED, False, Reason.AS_EXPECTED, "nothing is blocked")
    )
    conditions = merge_conditions(old.get("conditions") or [], conditions, generation, now)
    events = transition_events(
        old.get("conditions") or [], conditions, str(old.get("phase") or ""), phase, ready["message"]
    )
    previous_ready: dict[str, Any] = next(
        (c for c in old.get("conditions") or [] if c.get("type") == Condition.READY), {}
    )
    if blocker is not None and previous_ready.get("reason") != blocker.reason:
        # The event that reports the block carries its reason (once: later news while blocked keeps its own).
        events = [Event("Warning", blocker.reason, e.message) for e in events]
    plan.status = {**plan.status, "phase": str(phase), "conditions": conditions}
    plan.events = [*plan.notices, *events]


def _recover_lost_artifacts(
    inputs: Inputs, claim: dict[str, Any], versions: list[dict[str, Any]], plan: Plan
) -> tuple[Inputs, list[dict[str, Any]]]:
    """The operator's artifact claim was deleted: every version on it is gone. Start again from nothing.

    The versions leave the status, the training Jobs go (a completed Job's report names an artifact that no longer
    exists: nothing is reused), the Deployment goes (its pods hold the old claim, which cannot finish deleting
    while they run); a new claim is made once the old one is gone, then the current spec trains again.
    """
    observed = inputs.observed
    name = claim["metadata"]["name"]
    if observed.claim is None:
        plan.verify_gone = name  # the watch may only have lost it (its labels edited away): reconcile reads it
    for job in observed.jobs:
        if job.controller_uid == inputs.uid and not job.deleting and job.component == naming.COMPONENT_TRAINING:
            plan.delete.append(("Job", job.name))
    dep = observed.deployment
    if dep is not None and dep.controller_uid == inputs.uid:
        plan.delete.append(("Deployment", dep.name))
    lost = ", ".join(str(v["version"]) for v in versions)
    plan.notices.append(
        Event(
            "Warning",
            Reason.ARTIFACTS_LOST,
            f"PersistentVolumeClaim {name} was deleted, and with it version(s) {lost}: the serving Deployment is "
            "removed so that the claim can go, and the current spec trains again on a new claim",
        )
    )
    kept_pods = tuple(p for p in observed.pods if p.component != naming.COMPONENT_TRAINING)
    return replace(inputs, observed=replace(observed, jobs=(), pods=kept_pods, deployment=None)), []


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
        message = f"ONNX {target.get('quantization', 'fp32')}{sizes}{accuracy}"
        return _condition(Condition.COMPRESSED, True, Reason.COMPRESSED, message)
    if training.state == TrainingState.FAILED:
        return _condition(Condition.COMPRESSED, False, training.reason, training.message)
    return _condition(Condition.COMPRESSED, None, Reason.TRAINING, "waiting for the training Job")


def _progressing_condition(
    phase: Phase, training: Training, *, rolled: bool, pending: list[PodState], ready: int, desired: int
) -> dict[str, Any]:
    if phase == Phase.FAILED:
        return _condition(Condition.PROGRESSING, False, Reason.TRAINING_FAILED, training.message)
    if training.state == TrainingState.TRAINING:
        return _condition(Condition.PROGRESSING, True, training.reason, training.message)
    if rolled:
        return _condition(Condition.PROGRESSING, False, Reason.ROLLOUT_COMPLETE, f"{ready}/{desired} replicas ready")
    if pending:
        detail = pending[0].unschedulable_message
        message = f"{len(pending)} serving pod(s) Pending" + (f": {detail}" if detail else "")
        return _condition(Condition.PROGRESSING, True, Reason.PODS_PENDING, message)
    return _condition(Condition.PROGRESSING, True, Reason.ROLLING_OUT, f"{ready}/{desired} replicas ready")


def _ready_condition(
    phase: Phase, training: Training, *, ready: int, desired: int, served: dict[str, Any] | None, degraded: str
) -> dict[str, Any]:
    if phase == Phase.READY:
        version = served["version"] if served else ""
        return _condition(Condition.READY, True, Reason.READY, f"version {version}: {ready}/{desired} replicas ready")
    if phase == Phase.FAILED:
        return _condition(Condition.READY, False, Reason.TRAINING_FAILED, training.message)
    if phase == Phase.DEGRADED:
        return _condition(Condition.READY, False, Reason.DEGRADED, degraded)
    if phase in (Phase.TRAINING, Phase.PENDING):
        return _condition(Condition.READY, False, Reason.TRAINING, training.message)
    return _condition(Condition.READY, False, Reason.ROLLING_OUT, f"{ready}/{desired} replicas ready")


def _training_status(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("jobName", "specHash", "version", "accuracy", "sourceAccuracy", "durationSeconds", "reused")
    return {k: entry[k] for k in keys if k in entry}


def _compression_status(entry: dict[str, Any], spec: ModelDeploymentSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"requested": spec.compression.quantization}
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
