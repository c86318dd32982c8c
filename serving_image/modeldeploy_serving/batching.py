"""Dynamic batching: requests queued by any transport are stacked along the batch dimension into one model run.

One worker thread owns the model. It takes the oldest request, adds every queued request of the same signature
(input names, datatypes and non-batch dimensions) while the rows fit in max_batch_size, and waits for more only while
other requests are already on their way (announced by expect(), e.g. a body being read and decoded), never longer
than max_queue_delay after the oldest one arrived. A lone request therefore runs at once, and under load the batch
fills up from the requests that queued while the previous run was busy. onnxruntime releases the GIL while it runs,
so the event loops keep parsing requests meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from modeldeploy_serving.errors import NotReady, ServingError
from modeldeploy_serving.types import Array

log = logging.getLogger(__name__)

Feeds = dict[str, Array]
Signature = tuple[tuple[str, str, tuple[int, ...]], ...]


def signature_of(feeds: Feeds) -> Signature:
    """Requests can share a run when they agree on everything but the batch dimension."""
    return tuple(sorted((name, array.dtype.str, tuple(array.shape[1:])) for name, array in feeds.items()))


@dataclass
class _Pending:
    feeds: Feeds
    rows: int
    signature: Signature
    future: Future[Feeds]
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchStats:
    """What one run was: its rows, its requests, and how long the oldest of them had waited in the queue."""

    rows: int
    requests: int
    queue_seconds: tuple[float, ...]


class Batcher:
    """Merges concurrent predict calls into runs of `predict`; results are split back per request."""

    def __init__(
        self,
        predict: Callable[[Feeds], Feeds],
        *,
        max_batch_size: int,
        max_queue_delay: float,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._predict = predict
        self._max_rows = max_batch_size
        self._max_delay = max_queue_delay
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._expected = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="modeldeploy-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Run what is queued, then end the worker; later submits fail with NotReady."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def expect(self) -> None:
        """A request is on its way (being read or decoded): a batch being formed may wait for it."""
        with self._cond:
            self._expected += 1

    def unexpect(self) -> None:
        """An announced request will not come (it failed before submit)."""
        with self._cond:
            self._expected -= 1
            self._cond.notify_all()

    def submit(self, feeds: Feeds, *, expected: bool = False) -> Future[Feeds]:
        """Queue one request (its inputs share a first dimension, the rows); the future gets its outputs."""
        rows = int(next(iter(feeds.values())).shape[0])
        pending = _Pending(feeds, rows, signature_of(feeds), Future())
        with self._cond:
            if expected:
                self._expected -= 1
            if self._stopping:
                raise NotReady("the server is shutting down")
            self._queue.append(pending)
            self._cond.notify_all()
        return pending.future

    def _work(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            self._run(batch)

    def _collect(self) -> list[_Pending] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch = [first]
            rows = first.rows
            deadline = first.enqueued_at + self._max_delay
            while rows < self._max_rows:
                rows = self._take_matching(batch, rows)
                if rows >= self._max_rows or self._expected <= 0 or self._stopping:
                    break
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return batch

    def _take_matching(self, batch: list[_Pending], rows: int) -> int:
        """Move queued requests of the batch's signature into it while they fit; others keep their place."""
        signature = batch[0].signature
        kept: deque[_Pending] = deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.signature == signature and rows + pending.rows <= self._max_rows:
                batch.append(pending)
                rows += pending.rows
            else:
                kept.append(pending)
                if rows >= self._max_rows:
                    break
        kept.extend(self._queue)
        self._queue = kept
        return rows

    def _run(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not live:
            return
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    rows=sum(p.rows for p in live),
                    requests=len(live),
                    queue_seconds=tuple(started - p.enqueued_at for p in live),
                )
            )
        if len(live) == 1:
            self._run_alone(live[0])
            return
        names = list(live[0].feeds)
        try:
            merged = {name: np.concatenate([p.feeds[name] for p in live]) for name in names}
            outputs = self._predict(merged)
        except ServingError:
            # One request's values may make the model fail (an index out of range, say): run each alone so that
            # only that request gets the error.
            for pending in live:
                self._run_alone(pending)
            return
        offset = 0
        for pending in live:
            end = offset + pending.rows
            try:
                pending.future.set_result({name: value[offset:end] for name, value in outputs.items()})
            except IndexError as err:  # an output without the batch dimension after all
                pending.future.set_exception(err)
            offset = end

    def _run_alone(self, pending: _Pending) -> None:
        try:
            pending.future.set_result(self._predict(pending.feeds))
        except ServingError as err:
            pending.future.set_exception(err)
        except Exception as err:  # the worker must survive anything and hand it to the request
            log.exception("model run failed")
            pending.future.set_exception(err)


class DirectRunner:
    """Batching off: each request runs alone, on one worker thread (onnxruntime sessions are not re-entrant-fast)."""

    def __init__(self, predict: Callable[[Feeds], Feeds], on_batch: Callable[[BatchStats], None] | None = None) -> None:
        self._predict = predict
        self._on_batch = on_batch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modeldeploy-runner")
        self._stopping = False

    def start(self) -> None:
        pass

    def expect(self) -> None:
        pass

    def unexpect(self) -> None:
        pass

    def submit(self, feeds: Feeds, *, expected: bool = False) -> Future[Feeds]:
        del expected
        if self._stopping:
            raise NotReady("the server is shutting down")
        enqueued = time.perf_counter()
        return self._pool.submit(self._call, feeds, enqueued)

    def _call(self, feeds: Feeds, enqueued: float) -> Feeds:
        if self._on_batch is not None:
            rows = int(next(iter(feeds.values())).shape[0]) if feeds and next(iter(feeds.values())).ndim else 1
            self._on_batch(BatchStats(rows=rows, requests=1, queue_seconds=(time.perf_counter() - enqueued,)))
        return self._predict(feeds)

    def stop(self, timeout: float | None = None) -> None:
        del timeout
        self._stopping = True
        self._pool.shutdown(wait=True)
