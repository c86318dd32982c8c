"""The reconcile decision, pure: from a ModelDeployment and what the watches saw, the writes to make and the status.

Nothing here talks to the API server; `reconcile.py` carries out the plan.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Final

from modeldeploy import contracts
from modeldeploy.spec import apply_defaults, spec_schema
from modeldeploy_operator import builders, naming
from modeldeploy_operator.observed import Observed, PodState
from modeldeploy_operator.settings import Settings

CONDITION_TYPES: Final = ("Trained", "Compressed", "Available", "Progressing", "Degraded", "Ready")
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


@dataclass
class Plan:
    """The writes that bring the children to the spec, and the status that describes the result."""

    create: list[dict[str, Any]] = field(default_factory=list)
    """Created when absent, never updated (PVC, Jobs: their specs are immutable)."""
    apply: list[dict[str, Any]] = field(default_factory=list)
    """Server-side applied with the operator's field manager (Deployment, Service, HPA)."""
    delete: list[tuple[str, str]] = field(default_factory=list)
    """(kind, name) of children to remove."""
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


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
) -> Training:
    model = md["metadata"]["name"]
    generation = int(md["metadata"].get("generation", 0))
    short = naming.short_spec_hash(spec)
    name = naming.job_name(model, short)
    verb = "Imported" if "importModel" in spec else "Trained"
    known = next((v for v in versions if v.get("specHash") == short), None)
    if known is not None:
        return Training("Trained", verb, f"version {known['version']} from Job {known.get('jobName', name)}", known)
    job = observed.job(name)
    if job is None:
        plan.create.append(builders.build_training_job({**md, "spec": spec}, settings))
        # The same reason and message as a running Job: the watch sees the new Job a moment later, and a status
        # that changed only for that would cost a status write for nothing.
        return Training("Training", "Training", f"Job {name} is training")
    if job.deleting:
        return Training("Training", "Retrying", f"waiting for the previous Job {name} to be removed before retrying")
    pods = [p for p in observed.pods if p.job_name == name]
    if job.outcome == "Active":
        return Training("Training", "Training", f"Job {name} is training")
    final = _final_pod(pods)
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
    dep = observed.deployment
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

    claim = builders.build_claim(full)
    if claim is not None and observed.claim is None:
        plan.create.append(claim)

    training = decide_training(full, spec=spec, observed=observed, versions=versions, plan=plan, settings=settings)
    target = training.target
    served = target or next((v for v in versions if v.get("version") == old.get("modelVersion")), None)

    # Retention: the newest retainVersions versions stay (their Jobs and artifacts), plus whatever is served.
    pinned = {str(v["version"]) for v in (target, served) if v}
    # Pods of a previous version may still be serving from its directory until the rollout is done.
    pinned |= {p.version for p in observed.pods if p.component == naming.COMPONENT_SERVING and p.version}
    versions, dropped = _retained(versions, int(spec.get("retainVersions", 3)), pinned)
    kept_hashes = {v.get("specHash") for v in versions} | {naming.short_spec_hash(spec)}
    for job in observed.jobs:
        if job.component == naming.COMPONENT_TRAINING and job.spec_hash not in kept_hashes and not job.deleting:
            plan.delete.append(("Job", job.name))
    kept_paths = {v.get("path") for v in versions}
    doomed = [v for v in dropped if v.get("path") and v.get("path") not in kept_paths and not v.get("reused")]
    if doomed:
        plan.create.append(builders.build_cleanup_job(full, doomed, settings))

    # Serving: the current spec's version when trained, else keep serving what was served.
    autoscaled = builders.is_autoscaled(spec)
    deployment_hash = ""
    dep = observed.deployment
    if served is not None:
        deployment = builders.build_deployment(full, served, settings)
        deployment_hash = deployment["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH]
        replicas_drifted = not autoscaled and dep is not None and dep.desired != deployment["spec"]["replicas"]
        if dep is None or dep.config_hash != deployment_hash or replicas_drifted:
            plan.apply.append(deployment)
        service = builders.build_service(full)
        if observed.service is None or observed.service.config_hash != service["metadata"]["annotations"].get(
            naming.ANNOTATION_CONFIG_HASH
        ):
            plan.apply.append(service)
    hpa = builders.build_hpa(full)
    if hpa is not None and served is not None:
        if observed.hpa is None or observed.hpa.config_hash != hpa["metadata"]["annotations"].get(
            naming.ANNOTATION_CONFIG_HASH
        ):
            plan.apply.append(hpa)
    elif hpa is None and observed.hpa is not None:
        plan.delete.append(("HorizontalPodAutoscaler", observed.hpa.name))
    policy = builders.build_network_policy(full)
    if policy is not None and served is not None:
        if observed.network_policy is None or observed.network_policy.config_hash != policy["metadata"][
            "annotations"
        ].get(naming.ANNOTATION_CONFIG_HASH):
            plan.apply.append(policy)
    elif policy is None and observed.network_policy is not None:
        plan.delete.append(("NetworkPolicy", observed.network_policy.name))

    desired = int(spec["serving"].get("replicas", 1))
    if autoscaled:
        desired = dep.desired if dep is not None else int(spec["serving"]["autoscaling"].get("minReplicas", 1))
    serving_pods = [p for p in observed.pods if p.component == naming.COMPONENT_SERVING and not p.deleting]
    broken = [p for p in serving_pods if p.broken_reason]
    pending = [p for p in serving_pods if p.phase == "Pending"]
    rolled = target is not None and _is_rolled_out(observed, deployment_hash, desired, str(target["version"]))
    available = dep is not None and dep.available_condition and dep.available > 0
    degraded_message = ""
    if broken:
        first = broken[0]
        degraded_message = f"{len(broken)} serving pod(s) failing; pod {first.name}: {first.broken_reason}"
        degraded_message += f" ({first.restarts} restarts)" if first.restarts else ""
    elif dep is not None and dep.deadline_exceeded:
        degraded_message = f"Deployment {dep.name} exceeded its progress deadline"
    failed = training.state == "Failed"
    ready_count = dep.ready if dep is not None else 0

    if failed:
        phase = PHASE_FAILED
    elif degraded_message:
        phase = PHASE_DEGRADED
    elif target is None:
        phase = PHASE_TRAINING if observed.jobs or plan.create else PHASE_PENDING
    elif not rolled:
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
            "MinimumReplicasAvailable" if available else ("NoDeployment" if dep is None else "ReplicasUnavailable"),
            f"{ready_count}/{desired} serving replicas ready" if dep is not None else "no inference Deployment yet",
        ),
        _progressing_condition(phase, training, rolled=rolled, pending=pending, ready=ready_count, desired=desired),
        _condition(
            "Degraded",
            bool(degraded_message),
            "PodsFailing" if broken else ("ProgressDeadlineExceeded" if degraded_message else "AsExpected"),
            degraded_message or "no failures",
        ),
        _ready_condition(phase, training, ready=ready_count, desired=desired, served=served, degraded=degraded_message),
    ]
    conditions = merge_conditions(old.get("conditions") or [], conditions, generation, now)
    ready_message = next(c["message"] for c in conditions if c["type"] == "Ready")
    plan.events.extend(
        transition_events(old.get("conditions") or [], conditions, str(old.get("phase") or ""), phase, ready_message)
    )

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
    return plan


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
