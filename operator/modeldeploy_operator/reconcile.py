"""One reconcile of one ModelDeployment: decide (pure), then carry out the plan through storage."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from typing import Any

from modeldeploy_operator import decide as deciding
from modeldeploy_operator.observed import Observed
from modeldeploy_operator.settings import Settings
from modeldeploy_operator.storage import Kube, NotFoundError

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a reconcile did, for the handler to report (events) and to log."""

    events: list[deciding.Event] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    phase: str = ""
    gone: bool = False
    written_status: tuple[int, dict[str, Any]] | None = None
    """(resourceVersion, status) of the status write, so the next reconcile does not act on a lagging watch."""


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile(kube: Kube, md: dict[str, Any], observed: Observed, settings: Settings) -> Outcome:
    """Bring the children to the spec and write the status; safe to run again at any point (idempotent)."""
    plan = deciding.decide(md, observed, settings, now_rfc3339())
    outcome = Outcome(events=plan.events, phase=plan.status.get("phase", ""))
    namespace = md["metadata"]["namespace"]
    for manifest in plan.create:
        if kube.create(manifest):
            outcome.writes.append(f"created {manifest['kind']} {manifest['metadata']['name']}")
    for kind, name in plan.delete:
        if kube.delete(kind, namespace, name):
            outcome.writes.append(f"deleted {kind} {name}")
    for manifest in plan.apply:
        kube.apply(manifest)
        outcome.writes.append(f"applied {manifest['kind']} {manifest['metadata']['name']}")
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
