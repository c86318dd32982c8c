"""One reconcile of one ModelDeployment: decide (pure), then carry out the plan through storage."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from modeldeploy.spec import ModelDeployment
from modeldeploy_operator import builders, naming, rollout
from modeldeploy_operator import decide as deciding
from modeldeploy_operator.observed import CanaryMetrics, Observed, controller_description, controller_uid
from modeldeploy_operator.settings import Settings
from modeldeploy_operator.storage import FencedError, Kube, NotFoundError, StorageError, TransientError

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a reconcile did, for the handler to report (events) and to log."""

    events: list[deciding.Event] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    gone: bool = False
    written_status: tuple[int, dict[str, Any]] | None = None
    """(resourceVersion, status) of the status write, so the next reconcile does not act on a lagging watch."""
    requeue_after: float = 0.0
    """Reconcile again after this many seconds (a grace period that ends without a watch event)."""
    blocker: deciding.Blocker | None = None
    """Set when the spec could not be reached (a conflict, a refused write): the runtime retries with backoff."""


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_final(err: StorageError) -> bool:
    """A refusal that retrying alone will not fix (403, 422, 400...): it belongs in the status."""
    return not isinstance(err, TransientError | NotFoundError | FencedError)


def _with_canary_metrics(kube: Kube, md: dict[str, Any], model: ModelDeployment, observed: Observed) -> Observed:
    """While a canary's error rate is watched (spec.serving.canary.maxErrorRate), its serving pods' request counts,
    read from their /metrics through the API server. A pod that cannot be read leaves the rate unknown (None):
    the decision then neither promotes nor rolls back on the rate until the window ends."""
    version = rollout.wants_metrics(model.spec, md.get("status") or {})
    pods = [
        p
        for p in observed.pods
        if version and p.track == naming.TRACK_CANARY and p.version == version and p.ready and not p.deleting
    ]
    if not pods:
        return observed
    namespace = md["metadata"]["namespace"]
    port = model.spec.serving.port
    requests = errors = 0
    for pod in pods:
        try:
            counts = rollout.request_counts(kube.read_pod_text(namespace, pod.name, port, "/metrics"))
        except (StorageError, ValueError) as err:
            logger.info("%s/%s: canary pod %s's metrics unread: %s", namespace, md["metadata"]["name"], pod.name, err)
            return observed
        requests, errors = requests + counts.requests, errors + counts.errors
    return replace(observed, canary_metrics=CanaryMetrics(requests=requests, errors=errors))


def reconcile(kube: Kube, md: dict[str, Any], observed: Observed, settings: Settings) -> Outcome:
    """Bring the children to the spec and write the status; safe to run again at any point (idempotent).

    A child that exists under its name but is not controlled by this ModelDeployment is never written: the status
    says ChildConflict. A write the API server refuses for good ends in the status too (and one Event); transient
    errors propagate, and the runtime retries with backoff.
    """
    now = now_rfc3339()
    model = ModelDeployment.from_object(md)
    observed = _with_canary_metrics(kube, md, model, observed)
    plan = deciding.decide(md, observed, settings, now, model=model)
    outcome = Outcome()
    namespace = md["metadata"]["namespace"]
    uid = str(md["metadata"].get("uid") or "")
    blocker = plan.blocker

    def refused(verb: str, manifest_kind: str, name: str, err: StorageError) -> None:
        nonlocal blocker
        logger.warning("%s/%s: %s %s %s refused: %s", namespace, md["metadata"]["name"], verb, manifest_kind, name, err)
        blocker = blocker or deciding.write_failure(verb, manifest_kind, name, err.status, err.api_message)

    def foreign(kind: str, name: str) -> bool:
        """Read an object the cache does not show: True (and a ChildConflict) when someone else controls it."""
        nonlocal blocker
        try:
            existing = kube.get(kind, namespace, name)
        except NotFoundError:
            return False
        if controller_uid(existing) == uid:
            return False
        message = deciding.conflict_message(md["metadata"]["name"], kind, name, controller_description(existing))
        blocker = blocker or deciding.Blocker("ChildConflict", message)
        return True

    if plan.verify_gone:
        try:
            claim = kube.get("PersistentVolumeClaim", namespace, plan.verify_gone)
        except NotFoundError:
            claim = None
        if claim is not None and not (claim.get("metadata") or {}).get("deletionTimestamp"):
            # Not lost: the watch no longer sees it (its labels were edited away). Put its metadata back and act
            # on nothing else: the next reconcile sees the claim and its versions again.
            if controller_uid(claim) == uid:
                built = builders.build_claim(model)
                if built is not None:
                    kube.apply(deciding.claim_metadata(built))
                    outcome.writes.append(f"applied PersistentVolumeClaim {plan.verify_gone} (labels restored)")
            return outcome
    for manifest in plan.create:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        try:
            if kube.create(manifest):
                outcome.writes.append(f"created {kind} {name}")
            else:
                foreign(kind, name)  # it existed: ours (a re-run) or someone else's
        except StorageError as err:
            if not _is_final(err):
                raise
            refused("create", kind, name, err)
    for kind, name in plan.delete:
        try:
            if kube.delete(kind, namespace, name):
                outcome.writes.append(f"deleted {kind} {name}")
        except StorageError as err:
            if not _is_final(err):
                raise
            refused("delete", kind, name, err)
    for line in plan.drifted:
        logger.info("%s/%s: drift in %s: repairing", namespace, md["metadata"]["name"], line)
    for kind, name, body in plan.patch:
        try:
            kube.strategic_patch(kind, namespace, name, body)
            outcome.writes.append(f"patched {kind} {name}")
        except StorageError as err:
            if not _is_final(err):
                raise
            refused("patch", kind, name, err)
    unmade = False  # the plan's new serving Deployment was not made: decide.deployment_not_made
    for manifest in [*plan.apply_new, *plan.apply]:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        new = any(manifest is m for m in plan.apply_new)
        serving = new and kind == "Deployment" and name == naming.serving_name(md["metadata"]["name"])
        try:
            if new and foreign(kind, name):
                unmade = unmade or serving
                if kind == "HTTPRoute":
                    plan.status.pop("route", None)
                continue
            kube.apply(manifest)
            outcome.writes.append(f"applied {kind} {name}")
        except NotFoundError as err:
            if kind != "HTTPRoute":
                raise
            # Not a transient 404: the Gateway API is not installed. Said in the status, tried again with backoff.
            plan.status.pop("route", None)
            missing = "the Gateway API (gateway.networking.k8s.io/v1 HTTPRoute) is not installed in this cluster"
            hint = "install its CRDs and a Gateway controller, or remove spec.serving.gateway"
            blocker = blocker or deciding.Blocker("GatewayAPIMissing", f"apply HTTPRoute {name}: {missing}; {hint}")
            logger.warning("%s/%s: %s (%s)", namespace, md["metadata"]["name"], missing, err)
        except StorageError as err:
            if not _is_final(err):
                raise
            if kind == "HTTPRoute":
                plan.status.pop("route", None)  # applied again next time
            unmade = unmade or serving
            refused("apply", kind, name, err)
    if unmade:
        deciding.deployment_not_made(plan)
    if blocker is not plan.blocker or unmade:
        deciding.finish(md, plan, now, blocker)
    outcome.events = plan.events
    outcome.requeue_after = plan.requeue_after
    outcome.blocker = blocker
    patch = deciding.status_patch(md.get("status") or {}, plan.status)
    if patch is not None:
        try:
            written = kube.patch_status(namespace, md["metadata"]["name"], patch)
        except NotFoundError:
            outcome.gone = True  # deleted meanwhile: the garbage collector takes the children
            return outcome
        outcome.writes.append(f"status phase={plan.status['phase']}")
        version = (written.get("metadata") or {}).get("resourceVersion")
        if isinstance(version, str) and version.isdigit():
            outcome.written_status = (int(version), written.get("status") or plan.status)
    return outcome
