"""Dynamic batching: merged runs give each request exactly its own rows, under real concurrency too."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from modeldeploy_serving.batching import Batcher
from modeldeploy_serving.errors import InferenceFailed, InvalidInput, NotReady, Overloaded

from .conftest import start_server


class GatedModel:
    """A fake model: doubles its input, records the rows of each run; the first run waits for a gate to open, so
    that the test decides what is queued behind it."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.runs: list[int] = []
        self.started = threading.Event()

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.runs:
            self.started.set()
            self.gate.wait(10)
        x = feeds["x"]
        self.runs.append(int(x.shape[0]))
        if (x < 0).any():
            raise InvalidInput("negative values")
        return {"y": x * 2}


def run_gated(batcher: Batcher, model: GatedModel, sizes: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    first = batcher.submit({"x": np.zeros((1, 3), np.float32)})
    assert model.started.wait(10)
    inputs = [np.full((n, 3), i + 1, np.float32) for i, n in enumerate(sizes)]
    futures = [batcher.submit({"x": x}) for x in inputs]
    model.gate.set()
    first.result(10)
    return [f.result(10)["y"] for f in futures], inputs


def test_queued_requests_of_mixed_sizes_merge_and_split_back() -> None:
    model = GatedModel()
    batcher = Batcher(model.predict, max_batch_size=8, max_queue_delay=0.0)
    batcher.start()
    try:
        sizes = [3, 1, 4, 1, 5, 2, 6, 1]
        results, inputs = run_gated(batcher, model, sizes)
    finally:
        batcher.stop(5)
    for result, x in zip(results, inputs, strict=True):
        np.testing.assert_array_equal(result, x * 2)
    merged = model.runs[1:]
    assert sum(merged) == sum(sizes)
    assert all(rows <= 8 for rows in merged)
    assert len(merged) < len(sizes), "queued requests were not merged"


def test_a_request_larger_than_the_batch_is_split_across_runs() -> None:
    model = GatedModel()
    batcher = Batcher(model.predict, max_batch_size=4, max_queue_delay=0.0)
    batcher.start()
    try:
        results, inputs = run_gated(batcher, model, [9, 1])
    finally:
        batcher.stop(5)
    np.testing.assert_array_equal(results[0], inputs[0] * 2)
    np.testing.assert_array_equal(results[1], inputs[1] * 2)
    assert max(model.runs) <= 4, model.runs
    assert sum(model.runs[1:]) == 10


def test_one_bad_request_in_a_batch_fails_alone() -> None:
    model = GatedModel()
    batcher = Batcher(model.predict, max_batch_size=8, max_queue_delay=0.0)
    batcher.start()
    try:
        first = batcher.submit({"x": np.zeros((1, 3), np.float32)})
        assert model.started.wait(10)
        good = batcher.submit({"x": np.ones((2, 3), np.float32)})
        bad = batcher.submit({"x": -np.ones((1, 3), np.float32)})
        model.gate.set()
        first.result(10)
        np.testing.assert_array_equal(good.result(10)["y"], np.full((2, 3), 2, np.float32))
        with pytest.raises(InvalidInput, match="negative"):
            bad.result(10)
    finally:
        batcher.stop(5)


def test_concurrent_http_requests_each_get_their_unbatched_result(models: dict[str, Path]) -> None:
    """Many clients at once on a model slow enough that requests queue: merged runs, per-request exact answers."""
    session = ort.InferenceSession(str(models["slow"] / "model.onnx"), providers=["CPUExecutionProvider"])
    # No shedding: on a busy machine the queue's model time could pass its bound, and this test is about merging.
    server = start_server(
        models["slow"],
        "--grpc-port",
        "0",
        "--max-batch-size",
        "16",
        "--max-queue-wait-ms",
        "600000",
        "--max-queue-batches",
        "1000",
    )
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(int(rng.integers(1, 6)), 512)).astype(np.float32) for _ in range(48)]

    def call(x: np.ndarray) -> np.ndarray:
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
        response = httpx.post(f"{server.url}/v2/models/slow/infer", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return np.array(response.json()["outputs"][0]["data"], np.float32).reshape(x.shape)

    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(call, inputs))
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    for x, got in zip(inputs, results, strict=True):
        np.testing.assert_allclose(got, session.run(None, {"input": x})[0], rtol=1e-4, atol=1e-5)
    runs = next(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("modeldeploy_batch_size_count")
    )
    assert runs < len(inputs), f"{runs} runs for {len(inputs)} concurrent requests: nothing merged"


def test_an_unforeseen_exception_fails_its_batch_only_and_the_worker_lives_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A merged run that raises something that is not a ServingError (a bug, a numpy error) used to end the
    worker while liveness said live; now its requests get an error with an id that the log names, and the next
    requests are served."""
    calls: list[int] = []

    def predict(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(int(feeds["x"].shape[0]))
        if (feeds["x"] == 7).any():
            raise ZeroDivisionError("a bug in the model code")
        return {"y": feeds["x"] * 2}

    batcher = Batcher(predict, max_batch_size=8, max_queue_delay=0.0)
    batcher.start()
    try:
        bad = batcher.submit({"x": np.full((1, 3), 7, np.float32)})
        with pytest.raises(InferenceFailed, match=r"internal error [0-9a-f]{12} ") as failure:
            bad.result(10)
        error_id = str(failure.value).split()[2]
        assert any(error_id in record.getMessage() for record in caplog.records), caplog.text
        assert batcher.is_alive()
        good = batcher.submit({"x": np.ones((2, 3), np.float32)})
        np.testing.assert_array_equal(good.result(10)["y"], np.full((2, 3), 2, np.float32))
    finally:
        batcher.stop(5)


def test_a_worker_that_died_fails_liveness() -> None:
    batcher = Batcher(lambda feeds: feeds, max_batch_size=8, max_queue_delay=0.0)
    assert batcher.is_alive()  # not started yet: nothing died
    batcher._thread.run = lambda: None  # type: ignore[method-assign]  # a worker that ends at once
    batcher.start()
    batcher._thread.join(5)
    assert not batcher.is_alive()


def test_a_full_queue_sheds_at_once_and_an_empty_one_takes_any_size() -> None:
    model = GatedModel()
    batcher = Batcher(model.predict, max_batch_size=4, max_queue_delay=0.0, max_queue_rows=6, max_queue_requests=3)
    batcher.start()
    try:
        first = batcher.submit({"x": np.zeros((1, 3), np.float32)})
        assert model.started.wait(10)
        # The queue is empty while the first runs: a request of more rows than the queue's bound still gets in.
        big = batcher.submit({"x": np.ones((8, 3), np.float32)})
        with pytest.raises(Overloaded, match="queue is full") as shed:
            batcher.submit({"x": np.ones((1, 3), np.float32)})
        assert shed.value.reason == "queue_full"
        model.gate.set()
        first.result(10)
        assert big.result(10)["y"].shape == (8, 3)
        # Drained: requests are taken again, up to the bound in requests.
        futures = [batcher.submit({"x": np.ones((1, 3), np.float32)}) for _ in range(3)]
        assert all(f.result(10)["y"].shape == (1, 3) for f in futures)
    finally:
        batcher.stop(5)


def test_a_request_past_its_deadline_is_answered_without_running() -> None:
    model = GatedModel()
    batcher = Batcher(model.predict, max_batch_size=4, max_queue_delay=0.0)
    batcher.start()
    try:
        first = batcher.submit({"x": np.zeros((1, 3), np.float32)})
        assert model.started.wait(10)
        late = batcher.submit({"x": np.full((2, 3), 5, np.float32)}, deadline=time.perf_counter() + 0.01)
        on_time = batcher.submit({"x": np.ones((1, 3), np.float32)}, deadline=time.perf_counter() + 60)
        time.sleep(0.05)  # the late request's deadline passes while the first run holds the worker
        model.gate.set()
        first.result(10)
        with pytest.raises(Overloaded, match="past its deadline"):
            late.result(10)
        assert on_time.result(10)["y"].shape == (1, 3)
    finally:
        batcher.stop(5)
    assert 2 not in model.runs, "the late request was run for nobody"


def test_announced_requests_are_counted_back_on_every_path() -> None:
    """expect() then submit(expected=True) ends the announcement whether submit queues, sheds or refuses."""
    model = GatedModel()
    batcher = Batcher(model.predict, max_batch_size=4, max_queue_delay=0.0, max_queue_rows=1, max_queue_requests=1)
    batcher.start()
    try:
        first = batcher.submit({"x": np.zeros((1, 3), np.float32)})
        assert model.started.wait(10)
        batcher.expect()
        queued = batcher.submit({"x": np.ones((1, 3), np.float32)}, expected=True)
        for _ in range(3):
            batcher.expect()
            with pytest.raises(Overloaded):
                batcher.submit({"x": np.ones((1, 3), np.float32)}, expected=True)
        batcher.expect()
        with pytest.raises(AttributeError):  # a broken call: an input that is no array
            batcher.submit({"x": "no array"}, expected=True)  # type: ignore[dict-item]
        assert batcher.expected == 0
        model.gate.set()
        first.result(10)
        queued.result(10)
    finally:
        batcher.stop(5)
    batcher.expect()
    with pytest.raises(NotReady):
        batcher.submit({"x": np.ones((1, 3), np.float32)}, expected=True)
    assert batcher.expected == 0


def test_the_queue_holds_at_most_its_bound_in_model_time() -> None:
    """Rows cost what the recent runs took per row: a heavy model's queue fills in fewer rows than a light one's.
    What counts is the model time ahead of a request, not its own rows, so a large request is taken as readily as
    a small one; with the queue that full, any request is refused before it is read (check_room)."""
    model = GatedModel()
    batcher = Batcher(model.predict, max_batch_size=4, max_queue_delay=0.0, max_queue_wait=0.5)
    batcher.start()
    try:
        first = batcher.submit({"x": np.zeros((1, 3), np.float32)})
        assert model.started.wait(10)
        batcher._seconds_per_row = 0.01  # as if the recent runs took 10 ms a row
        queued = batcher.submit({"x": np.ones((30, 3), np.float32)})  # into the empty queue: always taken
        fits = batcher.submit({"x": np.ones((15, 3), np.float32)})  # 300 ms ahead of it
        batcher.check_room()  # 450 ms ahead: room
        large = batcher.submit({"x": np.ones((6, 3), np.float32)})  # 450 ms ahead of it: taken
        with pytest.raises(Overloaded, match="about 510 ms of model time ahead"):
            batcher.submit({"x": np.ones((1, 3), np.float32)})  # 510 ms ahead: over the bound
        with pytest.raises(Overloaded, match="queue is full"):
            batcher.check_room()
        model.gate.set()
        first.result(10)
        assert queued.result(10)["y"].shape == (30, 3)
        assert fits.result(10)["y"].shape == (15, 3)
        assert large.result(10)["y"].shape == (6, 3)
    finally:
        batcher.stop(5)


def test_the_bound_in_batches_and_the_run_in_progress_count() -> None:
    """max_queue_batches: the bound in full batches at the recent time per row, when less than max_queue_wait;
    what is left of the run in progress counts as work ahead too."""
    model = GatedModel()
    batcher = Batcher(model.predict, max_batch_size=4, max_queue_delay=0.0, max_queue_wait=0.5, max_queue_batches=2)
    batcher.start()
    try:
        first = batcher.submit({"x": np.zeros((1, 3), np.float32)})
        assert model.started.wait(10)
        batcher._seconds_per_row = 0.01  # 2 batches of 4 rows: 80 ms
        queued = batcher.submit({"x": np.ones((5, 3), np.float32)})  # into the empty queue
        fits = batcher.submit({"x": np.ones((4, 3), np.float32)})  # 50 ms ahead
        with pytest.raises(Overloaded, match=r"about 90 ms of model time ahead.* 80 ms"):
            batcher.submit({"x": np.ones((1, 3), np.float32)})
        batcher._busy_until = time.perf_counter() + 10  # as if the run in progress had 10 s to go
        with pytest.raises(Overloaded, match="queue is full"):
            batcher.check_room()
        model.gate.set()
        first.result(10)
        assert queued.result(10)["y"].shape == (5, 3)
        assert fits.result(10)["y"].shape == (4, 3)
    finally:
        batcher.stop(5)


def test_the_answers_of_a_batch_wake_the_event_loop_once() -> None:
    """submit_async: a merged batch's answers reach the event loop in one call_soon_threadsafe (one wake-up of
    the loop, one GIL hand-over), not one per request; a request cancelled while queued is not run."""
    model = GatedModel()
    batcher = Batcher(model.predict, max_batch_size=8, max_queue_delay=0.0)

    async def run() -> tuple[int, list[np.ndarray], bool]:
        loop = asyncio.get_running_loop()
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal wakeups
            wakeups += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
        first = batcher.submit_async({"x": np.zeros((1, 3), np.float32)})
        assert model.started.wait(10)  # the worker holds the first run until the gate opens
        waiters = [batcher.submit_async({"x": np.full((1, 3), i + 1, np.float32)}) for i in range(5)]
        cancelled = batcher.submit_async({"x": np.full((2, 3), 9, np.float32)})
        cancelled.cancel()
        model.gate.set()
        await first
        results = [(await waiter)["y"] for waiter in waiters]
        return wakeups, results, cancelled.cancelled()

    batcher.start()
    try:
        wakeups, results, was_cancelled = asyncio.run(run())
    finally:
        batcher.stop(5)
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full((1, 3), 2 * (i + 1), np.float32))
    assert model.runs == [1, 5], "the cancelled request ran, or the others were not merged"
    assert wakeups == 2, f"{wakeups} wake-ups of the event loop for 2 runs"
    assert was_cancelled


def test_a_forming_batch_runs_when_the_last_announced_request_arrives() -> None:
    """While a batch waits for announced requests, a submit that cannot complete it does not wake the worker; the
    last announced one must (as a full batch would), so that the batch runs then and not at its delay (5 s)."""
    runs: list[int] = []

    def predict(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        runs.append(int(feeds["x"].shape[0]))
        return feeds

    batcher = Batcher(predict, max_batch_size=8, max_queue_delay=5.0)
    batcher.start()
    try:
        for _ in range(4):
            batcher.expect()
        started = time.perf_counter()
        futures = [batcher.submit({"x": np.ones((1, 3), np.float32)}, expected=True) for _ in range(4)]
        for future in futures:
            future.result(10)
        waited = time.perf_counter() - started
    finally:
        batcher.stop(5)
    assert sum(runs) == 4 and waited < 2.5, (runs, waited)
