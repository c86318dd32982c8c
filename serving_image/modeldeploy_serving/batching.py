"""Dynamic batching: requests queued by any transport are stacked along the batch dimension into one model run.

One worker thread owns the model. It takes the oldest request, adds every queued request of the same signature
(input names, datatypes and non-batch dimensions) while the rows fit in max_batch_size, and waits for more only while
other requests are already on their way (announced by expect(), e.g. a body being read and decoded), never longer
than max_queue_delay after the oldest one arrived. A lone request therefore runs at once, and under load the batch
fills up from the requests that queued while the previous run was busy. onnxruntime releases the GIL while it runs,
so the event loops keep parsing requests meanwhile.

Work is bounded: the queue holds at most max_queue_rows rows and max_queue_requests requests (a request that would go
over is refused at once with Overloaded, except into an empty queue, so that a request of any admitted size can run
when the server is idle); a request that waits past its deadline is answered Overloaded instead of being run; a
request with more rows than max_batch_size is split into chunks that run in consecutive batches. No exception ends
the worker: a batch that fails in an unforeseen way fails its own requests (with an error id in the log) only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from modeldeploy_serving.errors import InferenceFailed, NotReady, Overloaded, ServingError
from modeldeploy_serving.types import Array

log = logging.getLogger(__name__)

Feeds = dict[str, Array]
Signature = tuple[tuple[str, str, tuple[int, ...]], ...]
_NO_DEADLINE = float("inf")
_Answer = tuple["asyncio.Future[Feeds]", "Feeds | None", "BaseException | None"]
"""A request waiting on an event loop, and its outputs or its error."""


def signature_of(feeds: Feeds) -> Signature:
    """Requests can share a run when they agree on everything but the batch dimension."""
    return tuple(sorted((name, array.dtype.str, tuple(array.shape[1:])) for name, array in feeds.items()))


def rows_of(feeds: Feeds) -> int:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


@dataclass
class _Pending:
    """One queued request (or chunk of one). Its caller waits on `future` (a thread) or on `waiter` (an event loop,
    see Batcher.submit_async), never both."""

    feeds: Feeds
    rows: int
    signature: Signature
    future: Future[Feeds] | None
    deadline: float = _NO_DEADLINE
    enqueued_at: float = field(default_factory=time.perf_counter)
    waiter: asyncio.Future[Feeds] | None = None

    def start(self) -> bool:
        """Whether the request is still wanted, and from now on not cancellable (a thread's future)."""
        if self.waiter is not None:
            return not self.waiter.cancelled()  # a read of a flag; a later cancel only drops the answer
        assert self.future is not None
        return self.future.set_running_or_notify_cancel()


@dataclass(frozen=True)
class BatchStats:
    """What one run was: its rows, its requests, and how long the oldest of them had waited in the queue."""

    rows: int
    requests: int
    queue_seconds: tuple[float, ...]


def _expired(pending: _Pending, now: float) -> Overloaded:
    waited = (now - pending.enqueued_at) * 1000
    return Overloaded(
        f"the request waited {waited:.0f} ms in the queue, past its deadline; retry later or elsewhere",
        reason="deadline",
    )


def _joined(parent: Future[Feeds], parts: list[Future[Feeds]]) -> None:
    """Complete `parent` with the chunks' outputs stacked back in order, once all chunks are done."""
    lock = threading.Lock()
    remaining = [len(parts)]

    def done(_: Future[Feeds]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        if not parent.set_running_or_notify_cancel():
            return
        for part in parts:
            error = part.exception() if not part.cancelled() else NotReady("the server is shutting down")
            if error is not None:
                parent.set_exception(error)
                return
        try:
            results = [part.result() for part in parts]
            parent.set_result({name: np.concatenate([r[name] for r in results]) for name in results[0]})
        except Exception as err:  # noqa: BLE001 - an output without the batch dimension: cannot be joined
            parent.set_exception(InferenceFailed(f"the model's outputs cannot be joined across batches: {err}"))

    for part in parts:
        part.add_done_callback(done)


class Batcher:
    """Merges concurrent predict calls into runs of `predict`; results are split back per request.

    Wake-ups cost: the worker and the event loop share the GIL, and each time one wakes the other both pay for a
    context switch and a GIL hand-over. So a submit wakes the worker only when it has something to do (it is idle,
    or the batch it is forming may now be full or has no more requests coming; otherwise it wakes at the batch's
    delay anyway), and the answers of one batch reach an event loop with one wake-up (submit_async), not one per
    request."""

    def __init__(
        self,
        predict: Callable[[Feeds], Feeds],
        *,
        max_batch_size: int,
        max_queue_delay: float,
        max_queue_rows: int = 1 << 62,
        max_queue_requests: int = 1 << 62,
        max_queue_wait: float = float("inf"),
        max_queue_batches: float = float("inf"),
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._predict = predict
        self._max_rows = max_batch_size
        self._max_queue_wait = max_queue_wait
        self._max_queue_batches = max_queue_batches
        # Model seconds per row, a moving average of recent runs: what the queued rows will cost to run.
        self._seconds_per_row = 0.0
        # When the run in progress should end (perf_counter; 0 when none runs), by the same estimate.
        self._busy_until = 0.0
        self._max_delay = max_queue_delay
        self._max_queue_rows = max_queue_rows
        self._max_queue_requests = max_queue_requests
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._expected = 0
        self._stopping = False
        # What the worker waits for: _IDLE (any request), _FORMING (more rows for the batch of _forming_rows), or
        # _BUSY (not waiting: nobody needs to wake it).
        self._state = _BUSY
        self._forming_rows = 0
        # Answers for event loops, sent once the batch is done (worker thread only).
        self._outbox: list[_Answer] = []
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

    def is_alive(self) -> bool:
        """False once the worker has ended while the server still takes requests (liveness must then fail)."""
        return self._stopping or self._thread.is_alive() or self._thread.ident is None

    @property
    def expected(self) -> int:
        return self._expected

    @property
    def queued(self) -> tuple[int, int]:
        """(requests, rows) waiting in the queue."""
        with self._cond:
            return len(self._queue), self._queued_rows

    def expect(self) -> None:
        """A request is on its way (being read or decoded): a batch being formed may wait for it."""
        with self._cond:
            self._expected += 1

    def unexpect(self) -> None:
        """An announced request will not come (it failed before submit)."""
        with self._cond:
            self._expected -= 1
            if self._state == _FORMING and self._expected <= 0:
                self._cond.notify()

    def submit(self, feeds: Feeds, *, expected: bool = False, deadline: float | None = None) -> Future[Feeds]:
        """Queue one request (its inputs share a first dimension, the rows); the future gets its outputs. With
        `expected`, this call ends the announcement whatever happens. Overloaded when the queue is full."""
        parts = self._queue_parts(feeds, expected, deadline, None)
        if len(parts) == 1:
            future = parts[0].future
            assert future is not None
            return future
        return self._joined(parts)

    def submit_async(
        self, feeds: Feeds, *, expected: bool = False, deadline: float | None = None
    ) -> asyncio.Future[Feeds]:
        """submit for a caller on the running event loop: the answers of a batch reach that loop with one wake-up
        for all its requests (a thread's future would wake it once per request)."""
        loop = asyncio.get_running_loop()
        parts = self._queue_parts(feeds, expected, deadline, loop)
        waiter = parts[0].waiter
        if waiter is not None:
            return waiter
        return asyncio.wrap_future(self._joined(parts), loop=loop)  # a request split into chunks: rare, large

    def _queue_parts(
        self, feeds: Feeds, expected: bool, deadline: float | None, loop: asyncio.AbstractEventLoop | None
    ) -> list[_Pending]:
        try:
            rows = rows_of(feeds)
            until = _NO_DEADLINE if deadline is None else deadline
            if rows > self._max_rows:
                chunks = [
                    {name: array[start : start + self._max_rows] for name, array in feeds.items()}
                    for start in range(0, rows, self._max_rows)
                ]
                parts = [_Pending(chunk, rows_of(chunk), signature_of(chunk), Future(), until) for chunk in chunks]
            elif loop is not None:
                parts = [_Pending(feeds, rows, signature_of(feeds), None, until, waiter=loop.create_future())]
            else:
                parts = [_Pending(feeds, rows, signature_of(feeds), Future(), until)]
            with self._cond:
                if expected:
                    self._expected -= 1
                    expected = False
                if self._stopping:
                    raise NotReady("the server is shutting down")
                if self._queue and (
                    self._queued_rows + rows > self._max_queue_rows
                    or len(self._queue) + len(parts) > self._max_queue_requests
                    or self._work_ahead() > self._wait_bound()
                ):
                    raise self._full()
                self._queue.extend(parts)
                self._queued_rows += rows
                state = self._state
                if state == _IDLE or (
                    state == _FORMING
                    and (self._expected <= 0 or self._forming_rows + self._queued_rows >= self._max_rows)
                ):
                    self._cond.notify()
        finally:
            if expected:
                self.unexpect()
        return parts

    def check_room(self) -> None:
        """Overloaded if a request would be shed now whatever its size: called before its body is read and
        decoded, so that a saturated server spends no CPU on requests it cannot take (that CPU is the model's)."""
        if self._queue and (
            self._queued_rows >= self._max_queue_rows
            or len(self._queue) >= self._max_queue_requests
            or self._work_ahead() > self._wait_bound()
        ):
            raise self._full()

    def _work_ahead(self) -> float:
        """Model seconds before a request queued now starts: the queued rows at the recent time per row, and what is
        left of the run in progress. A request's own rows are not counted, so that a large request is admitted
        as readily as a small one (it is bounded by max_request_rows instead)."""
        running = self._busy_until - time.perf_counter() if self._busy_until else 0.0
        return self._queued_rows * self._seconds_per_row + max(running, 0.0)

    def _wait_bound(self) -> float:
        """The bound of _work_ahead: max_queue_wait, or max_queue_batches full batches at the recent time per row
        when that is less (the unit a batching server's latency is made of, for a light model and a heavy one)."""
        return min(self._max_queue_wait, self._max_queue_batches * self._max_rows * self._seconds_per_row)

    def _full(self) -> Overloaded:
        return Overloaded(
            f"the queue is full ({len(self._queue)} requests, {self._queued_rows} rows, about "
            f"{self._work_ahead() * 1000:.0f} ms of model time ahead; at most {self._max_queue_requests} requests, "
            f"{self._max_queue_rows} rows, {self._wait_bound() * 1000:.0f} ms); retry later",
            reason="queue_full",
        )

    @staticmethod
    def _joined(parts: list[_Pending]) -> Future[Feeds]:
        parent: Future[Feeds] = Future()
        _joined(parent, [p.future for p in parts if p.future is not None])
        return parent

    def _work(self) -> None:
        while True:
            batch: list[_Pending] = []
            try:
                collected = self._collect()
                if collected is None:
                    return
                batch = collected
                self._send_answers()  # of requests that expired while this batch was collected
                self._run(batch)
            except Exception as err:  # the worker outlives any batch: its requests fail, the next batch runs
                error_id = uuid.uuid4().hex[:12]
                log.exception("batch of %d request(s) failed, error id %s", len(batch), error_id)
                failure = InferenceFailed(f"internal error {error_id} ({type(err).__name__}); see the server's log")
                for pending in batch:
                    if pending.future is None or not pending.future.done():
                        self._fail(pending, failure)
            finally:
                self._send_answers()

    def _collect(self) -> list[_Pending] | None:
        expired: list[_Pending] = []
        try:
            with self._cond:
                try:
                    while True:
                        while not self._queue:
                            if self._stopping:
                                return None
                            if expired:
                                return []  # answer them now (finally below), not after the next request arrives
                            self._state = _IDLE
                            self._cond.wait()
                        self._state = _BUSY
                        first = self._pop()
                        if first.deadline >= time.perf_counter():
                            break
                        expired.append(first)
                    batch = [first]
                    rows = first.rows
                    deadline = first.enqueued_at + self._max_delay
                    while rows < self._max_rows:
                        rows = self._take_matching(batch, rows, expired)
                        if rows >= self._max_rows or self._expected <= 0 or self._stopping:
                            break
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            break
                        self._state, self._forming_rows = _FORMING, rows
                        self._cond.wait(remaining)
                        self._state = _BUSY
                    return batch
                finally:
                    self._state = _BUSY
        finally:
            now = time.perf_counter()
            for pending in expired:
                if pending.start():
                    self._fail(pending, _expired(pending, now))

    def _pop(self) -> _Pending:
        pending = self._queue.popleft()
        self._queued_rows -= pending.rows
        return pending

    def _take_matching(self, batch: list[_Pending], rows: int, expired: list[_Pending]) -> int:
        """Move queued requests of the batch's signature into it while they fit; others keep their place."""
        signature = batch[0].signature
        now = time.perf_counter()
        kept: deque[_Pending] = deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.deadline < now:
                self._queued_rows -= pending.rows
                expired.append(pending)
            elif pending.signature == signature and rows + pending.rows <= self._max_rows:
                self._queued_rows -= pending.rows
                batch.append(pending)
                rows += pending.rows
            else:
                kept.append(pending)
                if rows >= self._max_rows:
                    break
        kept.extend(self._queue)
        self._queue = kept
        return rows

    def _answer(self, pending: _Pending, outputs: Feeds) -> None:
        if pending.waiter is not None:
            self._outbox.append((pending.waiter, outputs, None))
        else:
            assert pending.future is not None
            pending.future.set_result(outputs)

    def _fail(self, pending: _Pending, error: BaseException) -> None:
        if pending.waiter is not None:
            self._outbox.append((pending.waiter, None, error))
        else:
            assert pending.future is not None
            pending.future.set_exception(error)

    def _send_answers(self) -> None:
        """The event loops' answers gathered so far, with one wake-up per loop."""
        if not self._outbox:
            return
        answers, self._outbox = self._outbox, []
        by_loop: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
        for answer in answers:
            by_loop.setdefault(answer[0].get_loop(), []).append(answer)
        for loop, theirs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, theirs)
            except RuntimeError:  # that loop is closed: nobody waits for these answers any more
                log.debug("dropped %d answers for a closed event loop", len(theirs))

    def _run(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        live = [p for p in batch if p.start()]
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
            outputs = self._timed_predict(merged, sum(p.rows for p in live))
        except Exception:  # noqa: BLE001 - any failure of a merged run: each request runs alone below
            # One request's values may make the model fail (an index out of range, say): run each alone so that
            # only that request gets the error.
            for pending in live:
                self._run_alone(pending)
            return
        offset = 0
        for pending in live:
            end = offset + pending.rows
            try:
                self._answer(pending, {name: value[offset:end] for name, value in outputs.items()})
            except IndexError as err:  # an output without the batch dimension after all
                self._fail(pending, err)
            offset = end

    def _timed_predict(self, feeds: Feeds, rows: int) -> Feeds:
        started = time.perf_counter()
        self._busy_until = started + rows * self._seconds_per_row
        try:
            outputs = self._predict(feeds)
        finally:
            self._busy_until = 0.0
        per_row = (time.perf_counter() - started) / max(rows, 1)
        # Written by the worker only; submit() reads a float, which is atomic in CPython.
        self._seconds_per_row = per_row if not self._seconds_per_row else 0.8 * self._seconds_per_row + 0.2 * per_row
        return outputs

    def _run_alone(self, pending: _Pending) -> None:
        try:
            outputs = self._timed_predict(pending.feeds, pending.rows)
        except ServingError as err:
            self._fail(pending, err)
        except Exception as err:  # the worker must survive anything and hand it to the request
            error_id = uuid.uuid4().hex[:12]
            log.exception("model run failed, error id %s", error_id)
            self._fail(
                pending, InferenceFailed(f"internal error {error_id} ({type(err).__name__}); see the server's log")
            )
        else:
            self._answer(pending, outputs)


_IDLE, _FORMING, _BUSY = range(3)


def _settle(answers: list[_Answer]) -> None:
    """On the event loop: hand each waiting request its outputs or its error (unless it was cancelled)."""
    for waiter, outputs, error in answers:
        if waiter.done():
            continue
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(outputs)  # type: ignore[arg-type]


class DirectRunner:
    """Batching off: each request runs alone, on one worker thread (onnxruntime sessions are not re-entrant-fast)."""

    def __init__(
        self,
        predict: Callable[[Feeds], Feeds],
        on_batch: Callable[[BatchStats], None] | None = None,
        *,
        max_queue_requests: int = 1 << 62,
    ) -> None:
        self._predict = predict
        self._on_batch = on_batch
        self._max_queue_requests = max_queue_requests
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modeldeploy-runner")
        self._stopping = False
        self._lock = threading.Lock()
        self._queued = 0

    def start(self) -> None:
        pass

    def is_alive(self) -> bool:
        return True  # the pool replaces a worker that died

    @property
    def expected(self) -> int:
        return 0

    def expect(self) -> None:
        pass

    def unexpect(self) -> None:
        pass

    def check_room(self) -> None:
        if self._queued >= self._max_queue_requests:
            raise self._full()

    def _full(self) -> Overloaded:
        return Overloaded(
            f"the queue is full ({self._queued} requests waiting, at most {self._max_queue_requests}); retry later",
            reason="queue_full",
        )

    def submit(self, feeds: Feeds, *, expected: bool = False, deadline: float | None = None) -> Future[Feeds]:
        del expected
        if self._stopping:
            raise NotReady("the server is shutting down")
        with self._lock:
            if self._queued >= self._max_queue_requests:
                raise self._full()
            self._queued += 1
        enqueued = time.perf_counter()
        return self._pool.submit(self._call, feeds, enqueued, _NO_DEADLINE if deadline is None else deadline)

    def submit_async(
        self, feeds: Feeds, *, expected: bool = False, deadline: float | None = None
    ) -> asyncio.Future[Feeds]:
        return asyncio.wrap_future(self.submit(feeds, expected=expected, deadline=deadline))

    def _call(self, feeds: Feeds, enqueued: float, deadline: float) -> Feeds:
        with self._lock:
            self._queued -= 1
        now = time.perf_counter()
        if now > deadline:
            raise _expired(_Pending(feeds, 0, (), Future(), deadline, enqueued), now)
        if self._on_batch is not None:
            self._on_batch(BatchStats(rows=rows_of(feeds), requests=1, queue_seconds=(now - enqueued,)))
        try:
            return self._predict(feeds)
        except ServingError:
            raise
        except Exception as err:
            error_id = uuid.uuid4().hex[:12]
            log.exception("model run failed, error id %s", error_id)
            raise InferenceFailed(f"internal error {error_id} ({type(err).__name__}); see the server's log") from err

    def stop(self, timeout: float | None = None) -> None:
        del timeout
        self._stopping = True
        self._pool.shutdown(wait=True)
