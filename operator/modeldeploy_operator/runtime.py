"""The running operator's parts: the work queue, the worker threads that reconcile, and the cache they read.

kopf's watches fill the indices (in the event loop); a worker asks the loop for a consistent snapshot of one
ModelDeployment and its children, reconciles it on its thread (the API client is blocking), and reports.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from modeldeploy_operator import decide, naming
from modeldeploy_operator.builders import build_event
from modeldeploy_operator.observed import ChildState, DeploymentState, JobState, Observed, PodState
from modeldeploy_operator.reconcile import reconcile
from modeldeploy_operator.settings import Settings
from modeldeploy_operator.storage import FencedError, Kube, StorageError, TransientError
from modeldeploy_operator.workqueue import WorkQueue

logger = logging.getLogger(__name__)

Key = tuple[str, str]


# What the audit lists for each index: the kind and the label selector of the index's watch.
AUDITED: Final = {
    "md_index": ("ModelDeployment", ""),
    "job_index": ("Job", naming.MANAGED_SELECTOR),
    "pod_index": ("Pod", naming.MANAGED_SELECTOR),
    "deployment_index": ("Deployment", naming.MANAGED_SELECTOR),
    "service_index": ("Service", naming.MANAGED_SELECTOR),
    "hpa_index": ("HorizontalPodAutoscaler", naming.MANAGED_SELECTOR),
    "claim_index": ("PersistentVolumeClaim", naming.MANAGED_SELECTOR),
    "network_policy_index": ("NetworkPolicy", naming.MANAGED_SELECTOR),
    "pdb_index": ("PodDisruptionBudget", naming.MANAGED_SELECTOR),
}


def _uid_of(value: Any) -> str:
    """The uid of an index entry: a ModelDeployment's kept body, or a child's summary."""
    if isinstance(value, Mapping):
        return str((value.get("metadata") or {}).get("uid") or "")
    return str(getattr(value, "uid", "") or "")


def _name_of(value: Any) -> str:
    if isinstance(value, Mapping):
        return str((value.get("metadata") or {}).get("name") or "")
    return str(getattr(value, "name", "") or "")


def _values(index: Mapping[Any, Any], key: Key, stale: frozenset[str] = frozenset()) -> list[Any]:
    store = index.get(key)
    if store is None:
        return []
    return [value for value in store if not stale or _uid_of(value) not in stale]


def _rv(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


@dataclass
class Runtime:
    """Everything that lives as long as the operator: built once at startup, reached through kopf's memo."""

    settings: Settings
    kube: Kube
    loop: asyncio.AbstractEventLoop
    indices: dict[str, Mapping[Any, Any]]
    queue: WorkQueue[Key] = field(init=False)
    reconciles: int = 0
    _written: dict[Key, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    _failures: dict[Key, int] = field(default_factory=dict)
    _gone: dict[Key, str] = field(default_factory=dict)
    """uid of ModelDeployments the API server no longer has although the index still does (deleted during a watch
    gap: kopf relists after a 410 but drops only what a DELETED event names)."""
    clusterwide: bool = False
    """The watches cover all namespaces: the audit then lists each kind once, cluster-wide."""
    _stale: frozenset[str] = frozenset()
    """uids of index entries whose object the API server no longer has (deleted during a watch gap: kopf relists
    after a 410 but drops an entry only on a DELETED event): hidden from every snapshot (`audit`)."""
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.queue = WorkQueue(min_interval=self.settings.min_reconcile_interval_seconds)

    # -- snapshot (runs in the event loop, where kopf mutates the indices) --
    def _snapshot_now(self, key: Key) -> tuple[dict[str, Any] | None, Observed]:
        stale = self._stale
        mds = _values(self.indices["md_index"], key, stale)
        md = mds[0] if mds else None
        deployments: list[DeploymentState] = _values(self.indices["deployment_index"], key, stale)
        services: list[ChildState] = _values(self.indices["service_index"], key, stale)
        hpas: list[ChildState] = _values(self.indices["hpa_index"], key, stale)
        claims: list[ChildState] = _values(self.indices["claim_index"], key, stale)
        policies: list[ChildState] = _values(self.indices.get("network_policy_index", {}), key, stale)
        pdbs: list[ChildState] = _values(self.indices.get("pdb_index", {}), key, stale)
        jobs: list[JobState] = _values(self.indices["job_index"], key, stale)
        pods: list[PodState] = _values(self.indices["pod_index"], key, stale)
        observed = Observed(
            jobs=tuple(jobs),
            pods=tuple(pods),
            deployment=next((d for d in deployments if d.name == key[1]), None),
            canary=next((d for d in deployments if d.name == naming.canary_name(key[1])), None),
            service=next((s for s in services if s.name == key[1]), None),
            track_services=tuple(s for s in services if s.name != key[1]),
            hpa=hpas[0] if hpas else None,
            claim=claims[0] if claims else None,
            network_policy=policies[0] if policies else None,
            pdb=pdbs[0] if pdbs else None,
        )
        return md, observed

    def snapshot(self, key: Key) -> tuple[dict[str, Any] | None, Observed]:
        async def take() -> tuple[dict[str, Any] | None, Observed]:
            return self._snapshot_now(key)

        md, observed = asyncio.run_coroutine_threadsafe(take(), self.loop).result(timeout=30)
        if md is None:
            return None, observed
        with self._lock:
            written = self._written.get(key)
            if written is not None:
                rv, status = written
                if _rv(md["metadata"].get("resourceVersion")) >= rv:
                    del self._written[key]  # the watch caught up with our last status write
                else:
                    md = {**md, "status": status}  # the watch lags behind our own write: trust the write
        return md, observed

    # -- workers --
    def start(self) -> None:
        for number in range(self.settings.workers):
            thread = threading.Thread(target=self._work, name=f"reconciler-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        resync = threading.Thread(target=self._resync, name="resync", daemon=True)
        resync.start()
        self._threads.append(resync)

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()
        for thread in self._threads:
            thread.join(timeout=10)
        # What this process cost the API server (bench/operator_scale.py reads this line).
        calls = ", ".join(f"{what}={count}" for what, count in sorted(self.kube.calls().items()))
        logger.info("%d reconciles; API requests: %s", self.reconciles, calls or "none")

    def _resync(self) -> None:
        # A safety net for anything no watch event announces; the watches do the real-time work.
        while not self._stop.wait(self.settings.resync_seconds):
            try:
                self.audit()
            except StorageError as err:
                logger.warning("cache audit skipped: %s", err)
            # A bug must not end the resyncs: logged in full, tried again at the next one.
            except Exception:
                logger.exception("cache audit crashed; trying again at the next resync")

            async def keys() -> list[Key]:
                return list(self.indices["md_index"].keys())

            for key in asyncio.run_coroutine_threadsafe(keys(), self.loop).result(timeout=30):
                self.queue.add(key)

    def audit(self) -> int:
        """Hide the index entries of objects the API server no longer has; returns how many it found.

        A watch that expires (410 Gone) makes kopf list again and re-index what it lists, but an object deleted
        during the gap gets no DELETED event, so its entry would stay until a restart (a deleted Deployment never
        re-made). Each resync lists every indexed kind, metadata only, and compares uids: an entry indexed before
        the list began whose uid the list lacks is gone. Its uid is hidden from snapshots (an object made again
        under the same name has another uid) and its ModelDeployment is queued, so the reconcile re-makes it.
        Cost: one list per kind (per watched namespace with entries), whatever the number of models.
        """

        async def indexed() -> dict[str, dict[str, tuple[Key, str]]]:
            return {
                name: {
                    _uid_of(value): (key, _name_of(value))
                    for key, store in self.indices[name].items()
                    for value in store
                    if _uid_of(value)
                }
                for name in AUDITED
                if name in self.indices
            }

        before = asyncio.run_coroutine_threadsafe(indexed(), self.loop).result(timeout=30)
        # Forget what no index holds any more (an entry replaced by a new object of the same name).
        self._stale = self._stale & frozenset(uid for entries in before.values() for uid in entries)
        found = 0
        for name, entries in before.items():
            fresh = {uid: where for uid, where in entries.items() if uid not in self._stale}
            if not fresh:
                continue
            kind, selector = AUDITED[name]
            namespaces = [""] if self.clusterwide else sorted({key[0] for key, _ in fresh.values()})
            listed: set[str] = set()
            for namespace in namespaces:
                listed |= self.kube.list_uids(kind, namespace, selector)
            gone = {uid: where for uid, where in fresh.items() if uid not in listed}
            if not gone:
                continue
            self._stale = self._stale | frozenset(gone)
            for uid, (key, child) in gone.items():
                logger.info(
                    "%s/%s: %s %s (uid %s) is gone from the API server, but its watch missed the deletion; "
                    "dropped from the cache",
                    key[0],
                    key[1],
                    kind,
                    child,
                    uid,
                )
                self.queue.add(key)
            found += len(gone)
        return found

    def backoff(self, key: Key, retry_after: float = 0.0) -> float:
        """The next delay of `key`: exponential per object with jitter, capped, never shorter than Retry-After."""
        with self._lock:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
        ceiling = min(self.settings.retry_max_seconds, self.settings.retry_seconds * 2 ** min(failures - 1, 30))
        return max(random.uniform(ceiling / 2, ceiling), retry_after)

    def forget(self, key: Key) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def _work(self) -> None:
        while (key := self.queue.get()) is not None:
            try:
                if self.reconcile_one(key):
                    self.forget(key)
                else:
                    delay = self.backoff(key)
                    logger.info("%s/%s is blocked; checking again in %.1fs", *key, delay)
                    self.queue.add_after(key, delay)
            except FencedError as err:
                logger.error("reconciling %s/%s stopped: %s", *key, err)
            except TransientError as err:
                delay = self.backoff(key, err.retry_after)
                logger.warning("reconciling %s/%s: %s; retrying in %.1fs", *key, err, delay)
                self.queue.add_after(key, delay)
            except StorageError as err:
                delay = self.backoff(key)
                logger.error("reconciling %s/%s failed: %s; retrying in %.1fs", *key, err, delay)
                self.queue.add_after(key, delay)
            # A bug must not kill a worker thread: logged in full, then retried later.
            except Exception:
                delay = self.backoff(key)
                logger.exception("reconciling %s/%s crashed; retrying in %.1fs", *key, delay)
                self.queue.add_after(key, delay)
            finally:
                self.queue.done(key)

    def reconcile_one(self, key: Key) -> bool:
        """Reconcile one ModelDeployment; False when something blocks it (then it is tried again with backoff)."""
        md, observed = self.snapshot(key)
        if md is None or md["metadata"].get("deletionTimestamp"):
            return True  # gone or going: owner references let the garbage collector remove the children
        uid = str(md["metadata"].get("uid") or "")
        with self._lock:
            if uid and self._gone.get(key) == uid:
                return True
        outcome = reconcile(self.kube, md, observed, self.settings)
        self.reconciles += 1
        if outcome.gone:
            with self._lock:
                self._gone[key] = uid
        if outcome.written_status is not None:
            with self._lock:
                self._written[key] = outcome.written_status
        for line in outcome.writes:
            logger.info("%s/%s: %s", key[0], key[1], line)
        for event in outcome.events:
            self.post_event(md, event)
        if outcome.requeue_after:
            self.queue.add_after(key, outcome.requeue_after)
        return outcome.blocker is None

    def post_event(self, md: dict[str, Any], event: decide.Event) -> None:
        now = datetime.datetime.now(datetime.UTC)
        body = build_event(
            md,
            event.type,
            event.reason,
            event.message,
            reporting_instance=self.kube.field_manager,
            now=now,
            unique=uuid.uuid4(),
        )
        try:
            self.kube.post_event(body)
        except StorageError as err:
            # An event is a courtesy; the status already says the same.
            meta = md["metadata"]
            logger.warning("could not post event %s on %s/%s: %s", event.reason, meta["namespace"], meta["name"], err)
