"""A work queue of ModelDeployment keys, as in controller-runtime: deduplicated, one worker per key at a time.

Watch events for a ModelDeployment and for its children add its key; a burst of events becomes one reconcile, and
a key that changes while being reconciled is reconciled once more afterwards. With `min_interval`, a key is not
started again sooner than that after its previous start: the events of one rollout (Deployment, ReplicaSet, pods)
arrive tens of milliseconds apart, and each reconcile of them would otherwise write a status of its own.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, min_interval: float = 0.0) -> None:
        self._min_interval = min_interval
        self._started: dict[K, float] = {}
        self._held: set[K] = set()
        self._cond = threading.Condition()
        self._queue: deque[K] = deque()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._delayed: list[tuple[float, int, K]] = []
        self._counter = itertools.count()
        self._closed = False

    def add(self, key: K) -> None:
        with self._cond:
            if self._closed:
                return
            if key in self._processing:
                self._dirty.add(key)  # reconciled again when the current run is done
            elif key not in self._queued:
                self._enqueue(key)

    def _enqueue(self, key: K) -> None:
        """Queue now, or (too soon after its last start) mark queued and hold it back until the interval ends."""
        self._queued.add(key)
        started = self._started.get(key)
        due = started + self._min_interval if started is not None else 0.0
        if due > time.monotonic():
            self._held.add(key)
            heapq.heappush(self._delayed, (due, next(self._counter), key))
        else:
            self._queue.append(key)
        self._cond.notify()

    def add_after(self, key: K, delay: float) -> None:
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._counter), key))
            self._cond.notify()

    def _promote_due(self) -> float | None:
        """Move delayed keys that are due into the queue; return the seconds until the next one is due."""
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            if key in self._held:
                self._held.discard(key)
                self._queue.append(key)
            elif key in self._processing:
                self._dirty.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._queue.append(key)
        return self._delayed[0][0] - now if self._delayed else None

    def get(self) -> K | None:
        """The next key to reconcile (marked as in progress), or None once the queue is closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                wait = self._promote_due()
                if self._queue:
                    key = self._queue.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    if self._min_interval > 0:
                        self._remember_start(key)
                    return key
                self._cond.wait(timeout=wait)

    def _remember_start(self, key: K) -> None:
        now = time.monotonic()
        if len(self._started) > 4096:  # forget keys that could not be held back any more (deleted objects)
            self._started = {k: t for k, t in self._started.items() if now - t < self._min_interval}
        self._started[key] = now

    def done(self, key: K) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                if key not in self._queued:
                    self._enqueue(key)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._delayed)
