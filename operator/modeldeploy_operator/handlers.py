"""The kopf wiring: indices that cache what the watches see, and thin handlers that queue a reconcile.

No handler here needs a finalizer: every child carries an owner reference, so the garbage collector removes it.
The one thing outside the owner chain is the artifacts on a user's existing claim (spec.storage.existingClaim);
they are kept on purpose (the user's volume, and a re-created ModelDeployment reuses them).
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from modeldeploy.spec import GROUP, PLURAL, VERSION
from modeldeploy_operator import naming, observed
from modeldeploy_operator.runtime import Key, Runtime
from modeldeploy_operator.settings import settings_from_env
from modeldeploy_operator.storage import connect

OURS = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}


def _parent(namespace: str | None, labels: Any) -> Key | None:
    model = (labels or {}).get(naming.LABEL_MODEL)
    return (namespace, model) if namespace and model else None


# -- the indices: the only cache the reconcile reads (kopf runs no other handler before they are filled) --
# They are `async` although nothing in them awaits: kopf runs a sync handler on an executor thread (a thread
# hand-off, a context copy and a shielded task per call), and these run on every watch event.
@kopf.index(GROUP, VERSION, PLURAL)
async def md_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    if namespace is None:
        return {}
    meta = body.get("metadata") or {}
    keep = ("name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp")
    return {
        (namespace, name): {
            "metadata": {k: meta[k] for k in keep if k in meta},
            "spec": body.get("spec") or {},
            "status": body.get("status") or {},
        }
    }


@kopf.index("batch", "v1", "jobs", labels=OURS)
async def job_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, observed.JobState]:
    parent = _parent(namespace, labels)
    return {parent: observed.summarize_job(body)} if parent else {}


@kopf.index("v1", "pods", labels=OURS)
async def pod_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, observed.PodState]:
    parent = _parent(namespace, labels)
    return {parent: observed.summarize_pod(body)} if parent else {}


@kopf.index("apps", "v1", "deployments", labels=OURS)
async def deployment_index(
    namespace: str | None, name: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, observed.DeploymentState]:
    parent = _parent(namespace, labels)
    wanted = parent is not None and name in (parent[1], naming.canary_name(parent[1]))
    return {parent: observed.summarize_deployment(body)} if parent and wanted else {}


@kopf.index("v1", "services", labels=OURS)
async def service_index(
    namespace: str | None, name: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, observed.ChildState]:
    parent = _parent(namespace, labels)
    tracks = (naming.TRACK_STABLE, naming.TRACK_CANARY)
    wanted = parent is not None and name in (parent[1], *(naming.track_service_name(parent[1], t) for t in tracks))
    return {parent: observed.summarize_child(body)} if parent and wanted else {}


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=OURS)
async def hpa_index(
    namespace: str | None, name: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, observed.ChildState]:
    parent = _parent(namespace, labels)
    return {parent: observed.summarize_child(body)} if parent and parent[1] == name else {}


@kopf.index("v1", "persistentvolumeclaims", labels=OURS)
async def claim_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, observed.ChildState]:
    parent = _parent(namespace, labels)
    return {parent: observed.summarize_child(body)} if parent else {}


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=OURS)
async def network_policy_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, observed.ChildState]:
    parent = _parent(namespace, labels)
    return {parent: observed.summarize_child(body)} if parent else {}


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=OURS)
async def pdb_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, observed.ChildState]:
    parent = _parent(namespace, labels)
    return {parent: observed.summarize_child(body)} if parent else {}


# -- events: any change of a ModelDeployment or of one of its children queues that ModelDeployment --
@kopf.on.event(GROUP, VERSION, PLURAL)
async def md_changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    if namespace is not None and "runtime" in memo:
        memo.runtime.queue.add((namespace, name))


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
@kopf.on.event("v1", "pods", labels=OURS)
@kopf.on.event("apps", "v1", "deployments", labels=OURS)
@kopf.on.event("v1", "services", labels=OURS)
@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=OURS)
@kopf.on.event("v1", "persistentvolumeclaims", labels=OURS)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=OURS)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=OURS)
async def child_changed(namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    parent = _parent(namespace, labels)
    if parent is not None and "runtime" in memo:
        memo.runtime.queue.add(parent)


# -- startup and cleanup (the process has won the Lease before kopf starts: see process.py) --
@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: Any, **kwargs: Any) -> None:
    if "runtime" in memo:
        return
    config = memo.get("config") or settings_from_env()
    settings.posting.level = 40  # kopf's own events for ERROR only; the operator posts its transitions itself
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.batch_window = 0.05
    kube = memo.get("kube") or connect(
        config.field_manager, max(config.api_connections, config.workers + 2), config.api_timeout_seconds
    )
    memo.kube = kube
    indices = {
        name: kwargs[name]
        for name in (
            "md_index",
            "job_index",
            "pod_index",
            "deployment_index",
            "service_index",
            "hpa_index",
            "claim_index",
            "network_policy_index",
            "pdb_index",
        )
    }
    runtime = Runtime(
        settings=config,
        kube=kube,
        loop=asyncio.get_running_loop(),
        indices=indices,
        clusterwide=bool(memo.get("clusterwide", False)),
    )
    runtime.start()
    memo.runtime = runtime


@kopf.on.cleanup()
async def stop(memo: Any, logger: kopf.Logger, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await asyncio.to_thread(runtime.stop)
    flag = memo.get("stop_flag")
    if flag is not None and not flag.done():
        flag.set_result(None)
    logger.info("stopped")
