"""The transport-agnostic data plane: health, metadata and inference on typed requests; REST and gRPC adapt to it."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import numpy as np

from modeldeploy_serving import __version__
from modeldeploy_serving.admission import Admission, ByteBudget, fits
from modeldeploy_serving.batching import Batcher, DirectRunner, Feeds
from modeldeploy_serving.codecs import classify
from modeldeploy_serving.errors import (
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    NotReady,
    Overloaded,
    ServingError,
)
from modeldeploy_serving.metrics import Metrics
from modeldeploy_serving.runtime import PLATFORM, ModelInfo, OnnxModel
from modeldeploy_serving.settings import Settings
from modeldeploy_serving.types import InferOutput, InferRequest, InferResponse, RequestedOutput, TensorMetadata

log = logging.getLogger(__name__)

SERVER_NAME: Final = "modeldeploy"
# The protocol extensions this server implements, as reported by GET /v2 and ServerMetadata.
EXTENSIONS: Final = ("binary_tensor_data", "classification")


class RequestScope:
    """One inference request as the metrics see it: the adapter sets `code` (or calls `failed`) when it knows the
    outcome."""

    def __init__(self, metrics: Metrics) -> None:
        self.code = "200"
        self._metrics = metrics

    def failed(self, err: ServingError) -> None:
        self.code = str(err.status)
        if isinstance(err, Overloaded):
            self._metrics.observe_shed(err.reason)


class DataPlane:
    """Owns the model and its runner; every method is what one endpoint of the protocol means."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._model: OnnxModel | None = None
        self._runner: Batcher | DirectRunner | None = None
        self._admission: Admission | None = None
        self._input_specs: dict[str, TensorMetadata] = {}
        self.budget = ByteBudget(settings.max_decoding_bytes)
        self._ready = False
        self._shutting_down = False
        self.batching = False

    # --- lifecycle -------------------------------------------------------------------------------------------

    def load(self) -> ModelInfo:
        """Load and warm up the model, start its runner, become ready. Blocking: call it off the event loop."""
        started = time.perf_counter()
        s = self.settings
        model = OnnxModel.load(
            s.model_dir, name=s.model_name, version=s.model_version, intra_op_threads=s.intra_op_threads
        )
        info = model.info
        self.batching = s.batching and info.has_dynamic_batch
        if s.batching and not info.has_dynamic_batch:
            log.info("dynamic batching off: the model has no dynamic batch dimension on every input and output")
        # Batch 2 proves that the batch dimension really is dynamic before the server says ready; a warm-up at the max
        # batch size would only pre-grow onnxruntime's arena to its peak (17 MB more idle RSS for a 0.1 GFLOP CNN
        # at 32 rows) to spare the first full batch about 15 ms once.
        model.warm_up((1, 2) if self.batching and s.max_batch_size > 1 else (1,))
        self.metrics.set_model(info.name)
        if self.batching:
            self._runner = Batcher(
                model.predict,
                max_batch_size=s.max_batch_size,
                max_queue_delay=s.max_queue_delay_seconds,
                max_queue_rows=s.max_queue_rows,
                max_queue_requests=s.max_queue_requests,
                max_queue_wait=s.max_queue_wait_seconds,
                max_queue_batches=s.max_queue_batches,
                on_batch=self.metrics.observe_batch,
            )
        else:
            self._runner = DirectRunner(
                model.predict, on_batch=self.metrics.observe_batch, max_queue_requests=s.max_queue_requests
            )
        self._admission = Admission(
            info.inputs,
            dynamic_batch=info.has_dynamic_batch,
            max_rows=s.max_request_rows,
            max_elements=s.max_request_bytes,
        )
        self._input_specs = {t.name: t for t in info.inputs}
        self._runner.start()
        self._model = model
        seconds = time.perf_counter() - started
        self.metrics.load_seconds.labels(info.name).set(seconds)
        if not self._shutting_down:
            self._ready = True
        log.info(
            "model %r version %r loaded from %s and warmed up in %.3f s (batching %s)",
            info.name,
            info.version,
            s.model_dir,
            seconds,
            f"on, up to {s.max_batch_size} rows, {s.max_queue_delay_us} us" if self.batching else "off",
        )
        return info

    def begin_shutdown(self) -> None:
        """SIGTERM: not ready from now on, so that the endpoints stop sending; requests in flight still finish."""
        self._shutting_down = True
        self._ready = False

    def stop(self, timeout: float | None = None) -> None:
        """After the transports drained: run what is queued and stop the runner."""
        if self._runner is not None:
            self._runner.stop(timeout)

    # --- health and metadata -------------------------------------------------------------------------------

    def live(self) -> bool:
        """False when the model's worker has died: the kubelet's liveness probe then restarts the container."""
        return self._runner is None or self._runner.is_alive()

    def ready(self) -> bool:
        return self._ready

    @property
    def info(self) -> ModelInfo | None:
        return self._model.info if self._model is not None else None

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        info = self._resolve(name, version)
        return {
            "name": info.name,
            "versions": [info.version],
            "platform": PLATFORM,
            "inputs": [t.as_dict() for t in info.inputs],
            "outputs": [t.as_dict() for t in info.outputs],
        }

    def model_ready(self, name: str, version: str | None = None) -> bool:
        self._resolve(name, version)
        return self._ready

    def _resolve(self, name: str, version: str | None) -> ModelInfo:
        info = self.info
        if info is None:
            raise NotReady("the model is still loading")
        if name != info.name:
            raise ModelNotFound(f"unknown model {name!r}; this server serves {info.name!r}")
        if version not in (None, "", info.version):
            raise ModelNotFound(f"unknown version {version!r} of model {name!r}; this server serves {info.version!r}")
        return info

    # --- inference -----------------------------------------------------------------------------------------

    def admission(self, name: str, version: str | None) -> Admission:
        """The check each input of a request to `name` passes before it is decoded; 404 / 503 at once, also when
        the queue is so full that any request would be shed (before the body is read: a saturated server spends
        its CPU on the model, not on reading and decoding requests it would refuse)."""
        self._resolve(name, version)
        admission, runner = self._admission, self._runner
        if admission is None or runner is None:
            raise NotReady("the model is still loading")
        runner.check_room()
        return admission

    @contextmanager
    def request_scope(self, protocol: str) -> Iterator[RequestScope]:
        """Count one inference request in the metrics (in flight, then by code and latency)."""
        scope = RequestScope(self.metrics)
        started = time.perf_counter()
        self.metrics.in_flight_now.inc()
        try:
            yield scope
        except ServingError as err:
            scope.failed(err)
            raise
        except BaseException:
            scope.code = "500"
            raise
        finally:
            self.metrics.in_flight_now.dec()
            self.metrics.observe_request(protocol, scope.code, time.perf_counter() - started)

    def expect(self) -> bool:
        """Announce a request whose body is being read, so that a forming batch may wait for it (see batching).
        An announced request was received before SIGTERM: it is in flight and is answered even if shutdown begins
        while its body is still arriving. After SIGTERM nothing is announced any more (infer says 503)."""
        if self._runner is None or self._shutting_down:
            return False
        self._runner.expect()
        return True

    def unexpect(self) -> None:
        if self._runner is not None:
            self._runner.unexpect()

    async def infer(
        self, name: str, version: str | None, request: InferRequest, *, expected: bool = False
    ) -> InferResponse:
        """Check the request against the model, run it (batched with others when possible), build the response.
        With `expected`, this call ends the announcement made by expect(), whatever happens."""
        try:
            info = self._resolve(name, version)
            if self._shutting_down and not expected:
                raise NotReady("the server is shutting down")
            feeds = self._feeds(info, request)
            requested = self._requested(info, request)
            deadline = time.perf_counter() + self._queue_timeout(request)
            runner = self._runner
            if runner is None:
                raise NotReady("the model is still loading")
            handed, expected = expected, False
            future = runner.submit_async(feeds, expected=handed, deadline=deadline)
        finally:
            if expected:
                self.unexpect()
        results = await future
        outputs: list[InferOutput] = []
        for wanted in requested:
            array = results[wanted.name]
            binary = request.binary_outputs if wanted.binary is None else wanted.binary
            if wanted.classification:
                array = classify(array, wanted.classification, info.labels)
                outputs.append(InferOutput(wanted.name, "BYTES", tuple(array.shape), array, binary))
                continue
            datatype = next(t.datatype for t in info.outputs if t.name == wanted.name)
            outputs.append(InferOutput(wanted.name, datatype, tuple(array.shape), array, binary))
        return InferResponse(
            model_name=info.name, model_version=info.version, outputs=outputs, id=request.id, parameters={}
        )

    def _queue_timeout(self, request: InferRequest) -> float:
        """Seconds the request may wait in the queue: the setting, or less when the client's V2 `timeout`
        parameter (microseconds, as Triton reads it) says so."""
        limit = self.settings.queue_timeout_seconds
        timeout = request.parameters.get("timeout")
        if timeout is None:
            return limit
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
            raise InvalidInput("parameter 'timeout' must be a positive integer of microseconds")
        return min(limit, timeout / 1_000_000)

    def _feeds(self, info: ModelInfo, request: InferRequest) -> Feeds:
        """The request's inputs checked against the model's: names, datatypes, ranks, fixed dimensions, batch."""
        if not request.inputs:
            raise InvalidInput("the request has no inputs")
        specs = self._input_specs
        feeds: Feeds = {}
        for tensor in request.inputs:
            spec = specs.get(tensor.name)
            if spec is None:
                raise InvalidInput(f"unknown input {tensor.name!r}; the model's inputs are {sorted(specs)}")
            if tensor.name in feeds:
                raise InvalidInput(f"input {tensor.name!r} is given twice")
            if tensor.datatype != spec.datatype:
                raise InvalidInput(
                    f"input {tensor.name!r} has datatype {tensor.datatype}, the model needs {spec.datatype}"
                )
            if not fits(tensor.shape, spec.shape):
                raise InvalidInput(
                    f"input {tensor.name!r} has shape {list(tensor.shape)}, the model needs {list(spec.shape)} "
                    "(-1: any size)"
                )
            if 0 in tensor.shape:
                raise InvalidInput(f"input {tensor.name!r} has shape {list(tensor.shape)}: no dimension may be 0")
            if info.has_dynamic_batch and tensor.shape[0] > self.settings.max_request_rows:
                raise InvalidInput(
                    f"input {tensor.name!r} has {tensor.shape[0]} rows; this server takes at most "
                    f"{self.settings.max_request_rows} per request (MODELDEPLOY_MAX_REQUEST_ROWS)"
                )
            if tensor.data.dtype.kind == "f" and not self.settings.allow_non_finite and not _all_finite(tensor.data):
                raise InvalidInput(
                    f"input {tensor.name!r} holds NaN or Infinity (or a number too large for {tensor.datatype}); "
                    "send finite values (the server takes non-finite ones with MODELDEPLOY_ALLOW_NON_FINITE=true)"
                )
            feeds[tensor.name] = tensor.data
        if len(feeds) != len(specs):  # every name in feeds is one of specs, once
            missing = sorted(set(specs) - set(feeds))
            raise InvalidInput(f"missing input(s) {missing}; the model's inputs are {sorted(specs)}")
        if info.has_dynamic_batch and len(feeds) > 1:
            batch_sizes = {array.shape[0] for array in feeds.values()}
            if len(batch_sizes) > 1:
                raise InvalidInput(f"inputs disagree on the batch size (first dimension): {sorted(batch_sizes)}")
        return feeds

    def _requested(self, info: ModelInfo, request: InferRequest) -> list[RequestedOutput]:
        names = [t.name for t in info.outputs]
        if request.outputs is None or not request.outputs:
            return [RequestedOutput(name) for name in names]
        seen: set[str] = set()
        for wanted in request.outputs:
            if wanted.name not in names:
                raise InvalidInput(f"unknown output {wanted.name!r}; the model's outputs are {names}")
            if wanted.name in seen:
                raise InvalidInput(f"output {wanted.name!r} is requested twice")
            seen.add(wanted.name)
            if wanted.classification < 0:
                raise InvalidInput(f"output {wanted.name!r}: classification must be a positive count")
        return request.outputs


# Up to this many elements, a float64 sum of float32 values costs less than np.errstate around a float32 sum.
_SMALL_ARRAY: Final = 4096
_add: Final = np.add.reduce


def _all_finite(array: Any) -> bool:
    """NaN and Infinity propagate into a sum, so a finite sum (one reduction) proves every value finite; only a
    sum that overflowed needs the element-wise check. A small array of 16 or 32-bit floats is summed in float64,
    where its sum cannot overflow, without the cost of np.errstate (a few microseconds, as much as the sum)."""
    if array.size <= _SMALL_ARRAY and array.dtype.itemsize <= 4:
        return math.isfinite(_add(array, axis=None, dtype=np.float64))
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(array.sum()):
            return True
    return bool(np.isfinite(array).all())


def load_or_explain(plane: DataPlane) -> ModelInfo | None:
    """Load the model; on failure log why in one line and return None (the caller exits non-zero)."""
    try:
        return plane.load()
    except ModelLoadError as err:
        log.error("cannot serve %s: %s", plane.settings.model_dir, err)
        return None
