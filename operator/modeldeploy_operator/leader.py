"""Leader election through a coordination.k8s.io Lease, so that of two operator processes only one ever acts.

The standby waits for the Lease before kopf starts (no watch, no handler runs until then); the leader renews the
Lease and stops its process as soon as it cannot prove it still holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from modeldeploy_operator.storage import ConflictError, Kube, NotFoundError, StorageError

logger = logging.getLogger(__name__)

MICRO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    for fmt in (MICRO_FORMAT, "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.datetime.strptime(value, fmt).replace(tzinfo=datetime.UTC)
        except ValueError:
            continue
    return None


def format_time(moment: datetime.datetime) -> str:
    return moment.strftime(MICRO_FORMAT)


def is_free_for(lease: dict[str, Any] | None, identity: str, now: datetime.datetime) -> bool:
    """May `identity` take (or keep) the Lease: nobody holds it, it holds it, or the holder stopped renewing."""
    if lease is None:
        return True
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    if not holder or holder == identity:
        return True
    renewed = _parse_time(spec.get("renewTime")) or _parse_time(spec.get("acquireTime"))
    duration = int(spec.get("leaseDurationSeconds") or 0)
    return renewed is None or now > renewed + datetime.timedelta(seconds=duration)


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, duration: int) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_contact: float | None = None
        """time.monotonic() of the last Lease exchange the API server answered (readiness reads it)."""
        self.seen_holder = ""
        """The holder the last read of the Lease showed ("" when free)."""

    def _desired(self, lease: dict[str, Any] | None, now: datetime.datetime) -> dict[str, Any]:
        spec = dict((lease or {}).get("spec") or {})
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = format_time(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=self.duration, renewTime=format_time(now))
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; the resourceVersion makes two racing takers fail but one."""
        now = datetime.datetime.now(datetime.UTC)
        try:
            lease: dict[str, Any] | None = self.kube.get("Lease", self.namespace, self.name)
        except NotFoundError:
            lease = None
        self.last_contact = time.monotonic()
        self.seen_holder = str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")
        if not is_free_for(lease, self.identity, now):
            return False
        try:
            if lease is None:
                return self.kube.create(self._desired(None, now))
            self.kube.replace(self._desired(lease, now))
        except ConflictError:
            return False
        return True

    def holder(self) -> str:
        try:
            return str((self.kube.get("Lease", self.namespace, self.name).get("spec") or {}).get("holderIdentity", ""))
        except NotFoundError:
            return ""

    async def wait_for_leadership(self, stopping: asyncio.Event, interval: float = 2.0) -> bool:
        """Try the Lease every `interval` seconds until it is ours (True) or `stopping` is set (False)."""
        announced = False
        while not stopping.is_set():
            try:
                if await asyncio.to_thread(self.try_acquire):
                    return True
            except StorageError as err:
                logger.warning("cannot reach the Lease %s/%s: %s; retrying", self.namespace, self.name, err)
            else:
                if not announced:
                    logger.info("standby: Lease %s/%s is held by %s", self.namespace, self.name, self.seen_holder)
                    announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)
        return False

    def keep_renewing(self, on_lost: Callable[[], None]) -> None:
        """Renew every third of the duration in a thread; call on_lost when the Lease cannot be proven ours."""

        def loop() -> None:
            last_ok = time.monotonic()
            while not self._stop.wait(self.duration / 3):
                try:
                    ok = self.try_acquire()
                except StorageError as err:
                    logger.warning("renewing the Lease %s/%s failed: %s", self.namespace, self.name, err)
                    ok = False
                # The renewer must never die silently: a leader that stops renewing but keeps acting would act
                # beside the next leader. Anything unexpected counts as a failed renewal.
                except Exception:
                    logger.exception("renewing the Lease %s/%s crashed", self.namespace, self.name)
                    ok = False
                if ok:
                    last_ok = time.monotonic()
                    continue
                taken = self.seen_holder not in ("", self.identity)
                if taken or time.monotonic() - last_ok > self.duration * 2 / 3:
                    # Taken by another process, or someone else may take over at `duration`: stop acting now.
                    why = f"now held by {self.seen_holder}" if taken else "not renewed in time"
                    logger.error(
                        "lost the Lease %s/%s (%s); stopping so that one operator acts", self.namespace, self.name, why
                    )
                    on_lost()
                    return

        self._thread = threading.Thread(target=loop, name="lease-renewer", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Give the Lease up on a clean stop, so that a standby takes over at once instead of after `duration`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            lease = self.kube.get("Lease", self.namespace, self.name)
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = ""
            lease["spec"]["leaseDurationSeconds"] = 1
            self.kube.replace(lease)
            logger.info("released the Lease %s/%s", self.namespace, self.name)
        except StorageError as err:
            logger.warning("could not release the Lease %s/%s: %s", self.namespace, self.name, err)
