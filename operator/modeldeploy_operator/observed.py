"""What the operator needs to know of each child, extracted from the raw objects its watches see (pure functions).

The watches keep these small summaries in memory, so a reconcile reads no object from the API server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modeldeploy_operator import naming
from modeldeploy_operator.drift import owned_view

# Waiting reasons of a container that will not get better by waiting: the ModelDeployment is Degraded.
BROKEN_WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def _get(obj: Mapping[str, Any], *path: str) -> Any:
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int) else 0


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in _get(obj, "status", "conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == kind:
            return cond
    return None


def _is_true(obj: Mapping[str, Any], kind: str) -> bool:
    cond = _condition(obj, kind)
    return cond is not None and cond.get("status") == "True"


@dataclass(frozen=True)
class JobState:
    name: str
    spec_hash: str
    generation: int
    outcome: str  # "Active", "Succeeded" or "Failed"
    message: str
    component: str
    deleting: bool = False
    controller_uid: str = ""
    uid: str = ""
    """metadata.uid: what tells this object from a later one of the same name (runtime.Runtime.audit)."""


@dataclass(frozen=True)
class PodState:
    name: str
    component: str
    job_name: str
    phase: str
    ready: bool
    broken_reason: str
    restarts: int
    termination_message: str | None
    unschedulable_message: str
    deleting: bool = False
    version: str = ""
    last_exit_reason: str = ""
    """Why a container last ended (OOMKilled, Error...), from its state or lastState."""
    waiting_reason: str = ""
    """The waiting reason that makes the pod broken (ImagePullBackOff, CrashLoopBackOff...), else ""."""
    unschedulable_since: str = ""
    """lastTransitionTime of the PodScheduled=False condition (RFC 3339) while the pod is unschedulable."""
    track: str = ""
    """"canary" on a canary Deployment's pods (spec.serving.canary), else ""."""
    last_words: str = ""
    """The last line a container said when it last ended (its termination message), e.g. why a server refused to
    start; kept for a canary's rollback reason."""
    uid: str = ""
    """metadata.uid: what tells this object from a later one of the same name (runtime.Runtime.audit)."""


@dataclass(frozen=True)
class DeploymentState:
    name: str
    generation: int
    observed_generation: int
    desired: int
    replicas: int
    updated: int
    ready: int
    available: int
    available_condition: bool
    deadline_exceeded: bool
    config_hash: str
    model_version: str
    controller_uid: str = ""
    owned: Mapping[str, Any] | None = None
    """drift.owned_view of the object: what the drift check compares with the built manifest."""
    uid: str = ""
    """metadata.uid: what tells this object from a later one of the same name (runtime.Runtime.audit)."""


@dataclass(frozen=True)
class ChildState:
    """A child that needs nothing but its existence and configuration hash (Service, HPA, PVC)."""

    name: str
    config_hash: str
    phase: str = ""
    controller_uid: str = ""
    owned: Mapping[str, Any] | None = None
    """drift.owned_view of the object: what the drift check compares with the built manifest."""
    deleting: bool = False
    uid: str = ""
    """metadata.uid: what tells this object from a later one of the same name (runtime.Runtime.audit)."""


@dataclass(frozen=True)
class CanaryMetrics:
    """What the canary's serving pods counted since they started (their /metrics): requests and failed ones."""

    requests: int
    errors: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Observed:
    """Everything the watches know about one ModelDeployment's children."""

    jobs: tuple[JobState, ...] = ()
    pods: tuple[PodState, ...] = ()
    deployment: DeploymentState | None = None
    service: ChildState | None = None
    hpa: ChildState | None = None
    claim: ChildState | None = None
    network_policy: ChildState | None = None
    pdb: ChildState | None = None
    canary: DeploymentState | None = None
    """The canary Deployment (naming.canary_name), while spec.serving.canary runs one."""
    track_services: tuple[ChildState, ...] = ()
    """The stable and canary tracks' Services (spec.serving.gateway)."""
    canary_metrics: CanaryMetrics | None = None
    """The canary pods' request counts, read by the runtime while a canary's error rate is watched."""

    def job(self, name: str) -> JobState | None:
        return next((job for job in self.jobs if job.name == name), None)


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return _get(obj, "metadata", "labels") or {}


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return _get(obj, "metadata", "annotations") or {}


def _uid(obj: Mapping[str, Any]) -> str:
    return str(_get(obj, "metadata", "uid") or "")


def controller_uid(obj: Mapping[str, Any]) -> str:
    """The uid of the object's controlling owner ("" when none): what tells our children from look-alikes."""
    for ref in _get(obj, "metadata", "ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return str(ref.get("uid") or "")
    return ""


def controller_description(obj: Mapping[str, Any]) -> str:
    """Who controls the object, in words, for a message that tells the user why the operator keeps off it."""
    for ref in _get(obj, "metadata", "ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return f"it is controlled by {ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})"
    return "it has no controller owner reference (it was not made by this operator for this ModelDeployment)"


# A log line at one of these levels (a word of its own, in capitals: "uvicorn.error" is a logger's name, not a level).
_ERROR_LEVEL = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b")


def telling_line(message: str) -> str:
    """The line of a container's last words that says why it ended: the last one logged at an error level (a server
    logs why it cannot serve, then that it stopped), else the last one; at most 300 characters."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR_LEVEL.search(line)]
    return (errors or lines or [""])[-1][:300]


def summarize_job(obj: Mapping[str, Any]) -> JobState:
    if _is_true(obj, "Complete") or _is_true(obj, "SuccessCriteriaMet"):
        outcome, message = "Succeeded", ""
    elif _is_true(obj, "Failed") or _is_true(obj, "FailureTarget"):
        cond = _condition(obj, "Failed") or _condition(obj, "FailureTarget") or {}
        outcome, message = "Failed", f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
    else:
        outcome, message = "Active", ""
    generation = _annotations(obj).get(naming.ANNOTATION_GENERATION, "0")
    return JobState(
        name=str(_get(obj, "metadata", "name")),
        spec_hash=_labels(obj).get(naming.LABEL_SPEC_HASH, ""),
        generation=int(generation) if generation.isdigit() else 0,
        outcome=outcome,
        message=message,
        component=_labels(obj).get(naming.LABEL_COMPONENT, ""),
        deleting=_get(obj, "metadata", "deletionTimestamp") is not None,
        controller_uid=controller_uid(obj),
        uid=_uid(obj),
    )


def summarize_pod(obj: Mapping[str, Any]) -> PodState:
    statuses = list(_get(obj, "status", "initContainerStatuses") or []) + list(
        _get(obj, "status", "containerStatuses") or []
    )
    broken, waiting_reason, restarts, message, exit_reason, said = "", "", 0, None, "", ""
    for status in statuses:
        if not isinstance(status, Mapping):
            continue
        restarts += _int(status.get("restartCount"))
        ended = _get(status, "state", "terminated") or _get(status, "lastState", "terminated") or {}
        if ended.get("reason") not in (None, "Completed") and not exit_reason:
            exit_reason = str(ended["reason"])
            said = telling_line(str(ended.get("message") or ""))
        waiting = _get(status, "state", "waiting") or {}
        if waiting.get("reason") in BROKEN_WAITING_REASONS and not broken:
            waiting_reason = str(waiting["reason"])
            broken = f"container {status.get('name')} is in {waiting_reason}"
            if exit_reason:
                broken += f" (last exit: {exit_reason})"
            # The kubelet's message, then why it last exited (the serving image's last log line, e.g. a model whose
            # sha256 is not its card's).
            last_words = str((_get(status, "lastState", "terminated") or {}).get("message") or "").strip()
            details = [str(waiting.get("message") or "")[:300], last_words.splitlines()[-1][:300] if last_words else ""]
            if any(details):
                broken += ": " + "; ".join(d for d in details if d)
        if status.get("name") == naming.TRAIN_CONTAINER:
            terminated = _get(status, "state", "terminated") or _get(status, "lastState", "terminated") or {}
            if "message" in terminated:
                message = str(terminated["message"])
    scheduled = _condition(obj, "PodScheduled") or {}
    unschedulable = str(scheduled.get("message", "")) if scheduled.get("reason") == "Unschedulable" else ""
    labels = _labels(obj)
    return PodState(
        name=str(_get(obj, "metadata", "name")),
        component=labels.get(naming.LABEL_COMPONENT, ""),
        job_name=labels.get("job-name", labels.get("batch.kubernetes.io/job-name", "")),
        phase=str(_get(obj, "status", "phase") or "Pending"),
        ready=_is_true(obj, "Ready"),
        broken_reason=broken,
        restarts=restarts,
        termination_message=message,
        unschedulable_message=unschedulable,
        unschedulable_since=str(scheduled.get("lastTransitionTime") or "") if unschedulable else "",
        deleting=_get(obj, "metadata", "deletionTimestamp") is not None,
        version=labels.get(naming.LABEL_VERSION, ""),
        last_exit_reason=exit_reason,
        waiting_reason=waiting_reason,
        track=labels.get(naming.LABEL_TRACK, ""),
        last_words=said,
        uid=_uid(obj),
    )


def summarize_deployment(obj: Mapping[str, Any]) -> DeploymentState:
    progressing = _condition(obj, "Progressing") or {}
    return DeploymentState(
        name=str(_get(obj, "metadata", "name")),
        generation=_int(_get(obj, "metadata", "generation")),
        observed_generation=_int(_get(obj, "status", "observedGeneration")),
        desired=_int(_get(obj, "spec", "replicas")),
        replicas=_int(_get(obj, "status", "replicas")),
        updated=_int(_get(obj, "status", "updatedReplicas")),
        ready=_int(_get(obj, "status", "readyReplicas")),
        available=_int(_get(obj, "status", "availableReplicas")),
        available_condition=_is_true(obj, "Available"),
        deadline_exceeded=progressing.get("reason") == "ProgressDeadlineExceeded",
        config_hash=_annotations(obj).get(naming.ANNOTATION_CONFIG_HASH, ""),
        model_version=_labels(obj).get(naming.LABEL_VERSION, ""),
        controller_uid=controller_uid(obj),
        owned=owned_view(obj),
        uid=_uid(obj),
    )


def summarize_child(obj: Mapping[str, Any]) -> ChildState:
    return ChildState(
        name=str(_get(obj, "metadata", "name")),
        config_hash=_annotations(obj).get(naming.ANNOTATION_CONFIG_HASH, ""),
        phase=str(_get(obj, "status", "phase") or ""),
        controller_uid=controller_uid(obj),
        owned=owned_view(obj),
        deleting=_get(obj, "metadata", "deletionTimestamp") is not None,
        uid=_uid(obj),
    )
