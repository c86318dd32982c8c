"""Leader election through a coordination.k8s.io Lease, by client-go's rules, so that only one process ever acts.

- Expiry is judged on this process's monotonic clock: a Lease held by another process is free only when its record
  has not changed for `leaseDurationSeconds` since this process last saw it change (never by comparing the holder's
  `renewTime` with the local wall clock, which two machines do not share).
- The leader renews every `retry_period`; it may write only until `renew_deadline` after the start of its last
  successful renewal (the fence, checked by storage before every write). `renew_deadline + api_timeout` is at most
  the lease duration, so the last write of a leader that stopped renewing has landed before any standby can take
  over. A leader past its deadline stops acting at once and its process exits (to be restarted as a standby).

The standby waits for the Lease before kopf starts (no watch, no handler runs until then).
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


def format_time(moment: datetime.datetime) -> str:
    return moment.strftime(MICRO_FORMAT)


def _record(lease: dict[str, Any] | None) -> dict[str, Any] | None:
    return dict(lease.get("spec") or {}) if lease is not None else None


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        duration: float,
        renew_deadline: float,
        retry_period: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_period < renew_deadline < duration:
            raise ValueError(f"need retry period {retry_period} < renew deadline {renew_deadline} < lease {duration}")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observed: dict[str, Any] | None = None
        self._observed_at = 0.0
        self.valid_until = 0.0
        """clock() until which this process may write (the fence); 0 when it does not lead."""
        self.lost = False
        self.last_contact: float | None = None
        """clock() of the last Lease exchange the API server answered (readiness reads it)."""
        self.seen_holder = ""
        """The holder the last read of the Lease showed ("" when free)."""

    def may_write(self) -> bool:
        """The fence: True only while the last successful renewal is younger than the renew deadline."""
        return not self.lost and self.clock() < self.valid_until

    def observe(self, lease: dict[str, Any] | None) -> None:
        """Remember the record and, when it changed, when this process saw it change (client-go's observedTime)."""
        record = _record(lease)
        if record != self._observed or self._observed_at == 0.0:
            self._observed = record
            self._observed_at = self.clock()

    def is_free(self, lease: dict[str, Any] | None) -> bool:
        """May this process take (or keep) the Lease: nobody holds it, it does, or its record stopped changing."""
        spec = _record(lease) or {}
        holder = spec.get("holderIdentity")
        if lease is None or not holder or holder == self.identity:
            return True
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        return self.clock() > self._observed_at + duration

    def _desired(self, lease: dict[str, Any] | None) -> dict[str, Any]:
        now = format_time(datetime.datetime.now(datetime.UTC))  # informational only: nobody compares clocks
        spec = dict(_record(lease) or {})
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=int(self.duration), renewTime=now)
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; the resourceVersion makes two racing takers fail but one."""
        started = self.clock()
        try:
            lease: dict[str, Any] | None = self.kube.get("Lease", self.namespace, self.name)
        except NotFoundError:
            lease = None
        self.last_contact = self.clock()
        self.observe(lease)
        self.seen_holder = str((_record(lease) or {}).get("holderIdentity") or "")
        if not self.is_free(lease):
            return False
        desired = self._desired(lease)
        try:
            if lease is None:
                if not self.kube.create(desired):
                    return False
            else:
                desired = self.kube.replace(desired)
        except ConflictError:
            return False
        self.observe(desired)
        self.seen_holder = self.identity
        if not self.lost:
            self.valid_until = started + self.renew_deadline
        return True

    async def wait_for_leadership(self, stopping: asyncio.Event) -> bool:
        """Try the Lease every retry period until it is ours (True) or `stopping` is set (False)."""
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
                await asyncio.wait_for(stopping.wait(), self.retry_period)
        return False

    def _fence(self, why: str, on_lost: Callable[[], None]) -> None:
        self.lost = True
        self.valid_until = 0.0
        logger.error("lost the Lease %s/%s (%s); stopping so that one operator acts", self.namespace, self.name, why)
        on_lost()

    def keep_renewing(self, on_lost: Callable[[], None]) -> None:
        """Renew every retry period in a thread; past the renew deadline, fence every write and call on_lost."""

        def loop() -> None:
            while not self._stop.wait(self.retry_period):
                if not self.may_write():
                    self._fence(f"not renewed within the renew deadline of {self.renew_deadline:g}s", on_lost)
                    return
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
                if not ok and self.seen_holder not in ("", self.identity):
                    self._fence(f"now held by {self.seen_holder}", on_lost)
                    return
            # stopped: release() takes it from here

        self._thread = threading.Thread(target=loop, name="lease-renewer", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Give the Lease up on a clean stop, so that a standby takes over at once instead of after `duration`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.may_write():
            return  # not (provably) ours any more: a lost leader writes nothing, not even the release
        try:
            lease = self.kube.get("Lease", self.namespace, self.name)
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = ""
            lease["spec"]["leaseDurationSeconds"] = 1
            self.kube.replace(lease)
            self.valid_until = 0.0
            logger.info("released the Lease %s/%s", self.namespace, self.name)
        except StorageError as err:
            logger.warning("could not release the Lease %s/%s: %s", self.namespace, self.name, err)
