"""Which retained version serves, pure: a pin (spec.serving.modelVersion) and the canary's state machine.

`decide` asks `choose_serving` which version the main Deployment serves (the stable one), which version a canary
Deployment serves beside it (if any) and with how many replicas, and what the status says about it. Nothing here
talks to the API server; the canary's start time lives in status.canary, so a restarted operator resumes the same
analysis window.

The canary's states (status.canary.state):
- Progressing: the newly trained version runs beside the stable one, both behind the model's one Service.
- Promoted: it took over (spec.serving.canary.trafficPercent raised to 100, or the analysis passed after
  promoteAfterSeconds); it is the stable version now and the canary Deployment is gone.
- RolledBack: its pods failed, its error rate passed maxErrorRate, or it was not ready when the window ended; the
  stable version serves alone and the same version is not tried again (a new version, a raise to 100 or the canary's
  removal from the spec moves on).
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from modeldeploy.spec import Canary, ModelDeploymentSpec
from modeldeploy_operator.observed import CanaryMetrics, DeploymentState, PodState


class CanaryState(StrEnum):
    """status.canary.state."""

    PROGRESSING = "Progressing"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"


@dataclass(frozen=True)
class Problem:
    """Why the spec's serving wish is not met although something serves: Degraded=True with this reason."""

    reason: str
    message: str


@dataclass
class Serving:
    """The decision: what the main (stable) and canary Deployments serve, and what the status says."""

    stable: dict[str, Any] | None
    """The version entry the main Deployment serves (None: nothing trained yet)."""
    canary: dict[str, Any] | None = None
    """The version entry a canary Deployment serves beside it (None: no canary Deployment)."""
    canary_replicas: int = 0
    stable_replicas: int | None = None
    """The main Deployment's replicas while a canary runs (None: the spec's count, or the HPA's)."""
    pinned: bool = False
    status: dict[str, Any] | None = None
    """status.canary (None: the key is absent)."""
    problem: Problem | None = None
    progress: str = ""
    """While a canary runs: what the Progressing condition says."""
    requeue_after: float = 0.0
    notes: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) of events of their own: a promotion, a rollback."""


# What counts as a failed request in the serving pods' modeldeploy_requests counter: the server's fault (HTTP 5xx,
# including shed load; the gRPC codes of the same), not the client's (4xx: a bad request is not the canary's fault).
GRPC_SERVER_ERRORS: Final = frozenset({"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DATA_LOSS", "RESOURCE_EXHAUSTED"})


def request_counts(metrics_text: str) -> CanaryMetrics:
    """Requests and failed requests in one serving pod's /metrics (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415 (only with a canary)

    requests = errors = 0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "modeldeploy_requests":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            count = int(sample.value)
            code = str(sample.labels.get("code", ""))
            requests += count
            if code.startswith("5") or code in GRPC_SERVER_ERRORS:
                errors += count
    return CanaryMetrics(requests=requests, errors=errors)


def wants_metrics(spec: ModelDeploymentSpec, status: dict[str, Any]) -> str:
    """The canary version whose pods' metrics the next decision needs ("" when none): while a canary with
    spec.serving.canary.maxErrorRate runs."""
    canary = spec.serving.canary
    state = status.get("canary") or {}
    if canary is None or canary.max_error_rate is None or state.get("state") != CanaryState.PROGRESSING:
        return ""
    return str(state.get("version") or "")


def seconds_between(earlier: str, later: str) -> float | None:
    try:
        start = datetime.datetime.fromisoformat(earlier.replace("Z", "+00:00"))
        end = datetime.datetime.fromisoformat(later.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (end - start).total_seconds()


def split_replicas(total: int, percent: int) -> tuple[int, int]:
    """(stable, canary) replicas for a canary share of `percent` of `total` replicas, without a mesh.

    The share is the replica ratio, so its granularity is 100/total percent (4 replicas: steps of 25%). The
    canary gets round(total * percent / 100) replicas, at least 1; the stable version keeps at least 1. With
    1 replica both run one pod (50%) for the canary's time.
    """
    if total <= 0:
        return 0, 0
    canary = max(1, math.floor(total * percent / 100 + 0.5))
    if total > 1:
        canary = min(canary, total - 1)
    return max(1, total - canary), canary


def _entry(versions: list[dict[str, Any]], version: Any) -> dict[str, Any] | None:
    return next((v for v in versions if version and v.get("version") == version), None)


def choose_serving(
    spec: ModelDeploymentSpec,
    *,
    target: dict[str, Any] | None,
    versions: list[dict[str, Any]],
    old_status: dict[str, Any],
    total_replicas: int,
    canary_deployment: DeploymentState | None,
    canary_pods: list[PodState],
    metrics: CanaryMetrics | None,
    now: str,
) -> Serving:
    """Decide the stable and canary versions from the spec, the newest trained version `target` (the current
    spec's, None while it trains) and what the previous status recorded."""
    previous = _entry(versions, old_status.get("modelVersion"))
    current = previous or target
    pin = spec.serving.model_version
    if pin:
        entry = _entry(versions, pin)
        if entry is not None:
            return Serving(stable=entry, pinned=True)
        retained = ", ".join(str(v["version"]) for v in versions) or "none yet"
        message = (
            f"spec.serving.modelVersion {pin} is not a retained version (status.versions: {retained}); "
            f"version {current['version'] if current else 'none'} keeps serving. Pin one of the retained versions, "
            "or remove spec.serving.modelVersion to serve the newest"
        )
        return Serving(stable=current, problem=Problem("VersionNotRetained", message))
    canary = spec.serving.canary
    if target is None:
        return Serving(stable=current)
    old_canary = old_status.get("canary") or {}
    same = old_canary.get("version") == target["version"]
    history = old_canary if same else None
    if (
        canary is None
        or previous is None
        or previous["version"] == target["version"]
        or old_status.get("pinned")  # unpinning returns to the newest version at once
    ):
        return Serving(
            stable=target, status=history if history and history.get("state") != CanaryState.PROGRESSING else None
        )
    percent = canary.traffic_percent
    if percent >= 100:
        # Once: the next reconcile finds the new version stable (status.modelVersion) and runs no canary.
        why = "spec.serving.canary.trafficPercent is 100"
        note = ("Normal", "CanaryPromoted", f"version {target['version']} promoted: {why}")
        return Serving(
            stable=target, status=_status(target, CanaryState.PROMOTED, "PromotedBySpec", why, now), notes=[note]
        )
    if same and old_canary.get("state") == CanaryState.ROLLED_BACK:
        message = f"canary version {target['version']} was rolled back: {old_canary.get('message', '')}"
        return Serving(stable=previous, status=old_canary, problem=Problem("CanaryRolledBack", message))
    started = (
        str(old_canary.get("startedAt") or now) if same and old_canary.get("state") == CanaryState.PROGRESSING else now
    )
    stable_replicas, canary_replicas = split_replicas(total_replicas, percent)
    live = [p for p in canary_pods if not p.deleting and p.version == target["version"]]
    verdict = _verdict(
        canary, started=started, now=now, want=canary_replicas, deployment=canary_deployment, pods=live, metrics=metrics
    )
    if isinstance(verdict, Problem):
        status = _status(target, CanaryState.ROLLED_BACK, verdict.reason, verdict.message, now, started=started)
        note = ("Warning", "CanaryRolledBack", f"version {target['version']} rolled back: {verdict.message}")
        problem = Problem("CanaryRolledBack", f"canary version {target['version']} was rolled back: {verdict.message}")
        return Serving(stable=previous, status=status, problem=problem, notes=[note])
    if verdict == CanaryState.PROMOTED:
        message = f"the analysis passed after {canary.promote_after_seconds} s"
        if metrics is not None:
            message += f" ({metrics.errors}/{metrics.requests} failed requests)"
        status = _status(target, CanaryState.PROMOTED, "PromotedAfterAnalysis", message, now, started=started)
        note = ("Normal", "CanaryPromoted", f"version {target['version']} promoted: {message}")
        return Serving(stable=target, status=status, notes=[note])
    share = round(100 * canary_replicas / (canary_replicas + stable_replicas)) if canary_replicas else 0
    status = {
        "version": target["version"],
        "stableVersion": previous["version"],
        "state": str(CanaryState.PROGRESSING),
        "reason": "CanaryInProgress",
        "trafficPercent": percent,
        "share": f"{share}%",
        "replicas": canary_replicas,
        "stableReplicas": stable_replicas,
        "startedAt": started,
    }
    progress = (
        f"canary version {target['version']} serves {share}% ({canary_replicas} of "
        f"{canary_replicas + stable_replicas} replicas) beside version {previous['version']}"
    )
    after = canary.promote_after_seconds
    elapsed = seconds_between(started, now) or 0.0
    requeue = 0.0
    if after is not None:
        progress += f"; promoted automatically after {after} s if its pods stay ready"
        if canary.max_error_rate is not None:
            progress += f" and under {canary.max_error_rate} failed requests per request"
        requeue = max(0.5, float(after) - elapsed + 0.5)
        if canary.max_error_rate is not None:
            requeue = min(requeue, 10.0)  # the error rate is read again while the window runs
    else:
        progress += "; raise spec.serving.canary.trafficPercent to 100 (or remove spec.serving.canary) to promote"
    if metrics is not None:
        status["requests"], status["errors"] = metrics.requests, metrics.errors
    status["message"] = progress
    return Serving(
        stable=previous,
        canary=target,
        canary_replicas=canary_replicas,
        stable_replicas=stable_replicas,
        status=status,
        progress=progress,
        requeue_after=requeue,
    )


def _status(
    target: dict[str, Any], state: CanaryState, reason: str, message: str, now: str, *, started: str = ""
) -> dict[str, Any]:
    out = {"version": target["version"], "state": str(state), "reason": reason, "message": message, "finishedAt": now}
    if started:
        out["startedAt"] = started
    out["share"] = "100%" if state == CanaryState.PROMOTED else "0%"
    return out


def _verdict(
    canary: Canary,
    *,
    started: str,
    now: str,
    want: int,
    deployment: DeploymentState | None,
    pods: list[PodState],
    metrics: CanaryMetrics | None,
) -> Problem | CanaryState:
    """Problem (roll back), CanaryState.PROMOTED, or CanaryState.PROGRESSING (keep watching)."""
    failing = [p for p in pods if p.broken_reason or p.restarts]
    if failing:
        first = failing[0]
        why = first.broken_reason or f"it restarted {first.restarts} time(s)"
        if not first.broken_reason and first.last_exit_reason:
            said = f": {first.last_words}" if first.last_words else ""
            why += f" (last exit: {first.last_exit_reason}{said})"
        return Problem("CanaryPodsFailing", f"canary pod {first.name}: {why}")
    limit = canary.max_error_rate
    if limit is not None and metrics is not None and metrics.requests and metrics.error_rate > float(limit):
        rate = f"{metrics.errors}/{metrics.requests} requests failed ({metrics.error_rate:.4f})"
        return Problem("CanaryErrorRate", f"{rate}, over spec.serving.canary.maxErrorRate {limit}")
    after = canary.promote_after_seconds
    if after is None:
        return CanaryState.PROGRESSING
    elapsed = seconds_between(started, now)
    if elapsed is None or elapsed < float(after):
        return CanaryState.PROGRESSING
    ready = sum(1 for p in pods if p.ready)
    if deployment is None or deployment.ready < want or ready < want:
        window = f"the {after} s of spec.serving.canary.promoteAfterSeconds ended"
        return Problem("CanaryNotReady", f"{ready}/{want} canary pods were ready when {window}")
    if limit is not None and metrics is None:
        return Problem(
            "CanaryMetricsUnavailable",
            "the canary pods' /metrics could not be read, so its error rate is unknown; "
            "check that the operator may reach the pods (pods/proxy) or remove spec.serving.canary.maxErrorRate",
        )
    return CanaryState.PROMOTED
