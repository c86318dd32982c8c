"""The REST adapter: Open Inference Protocol V2 (JSON and the binary tensor extension), TF-Serving :predict, /metrics.

Endpoints are short: read the body within the size limit, decode to the typed request (rest_codec.py), call the
data plane, encode. Every error leaves as {"error": "..."} with the status its type carries.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from modeldeploy_serving.auth import TokenFile
from modeldeploy_serving.dataplane import DataPlane
from modeldeploy_serving.errors import (
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    UnsupportedMediaType,
)
from modeldeploy_serving.rest_codec import (
    ORJSON_OPTIONS,
    check_values,
    decode_infer_request,
    decode_predict_request,
    encode_infer_response,
    encode_predict_response,
)

log = logging.getLogger(__name__)

HEADER_LENGTH: Final = "inference-header-content-length"
_JSON: Final = "application/json"
# The V2 infer endpoint, matched before Starlette's router (see RestApp); names as Starlette's {name} matches them.
_INFER_PATH: Final = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_JSON_HEADERS: Final = ((b"content-type", b"application/json"),)
_BINARY_HEADERS: Final = ((b"content-type", b"application/octet-stream"),)
# A body this large takes about a millisecond or more to decode (JSON): it is decoded off the event loop.
_DECODE_OFF_LOOP_BYTES: Final = 256 * 1024
_UNAUTHORIZED: Final = orjson.dumps(
    {"error": "missing or wrong bearer token: send the header Authorization: Bearer <token>"}
)


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, option=ORJSON_OPTIONS), status_code=status, media_type=_JSON, headers=headers)


def error_response(err: ServingError) -> Response:
    headers = {"Retry-After": str(err.retry_after)} if isinstance(err, Overloaded) else None
    return json_response({"error": err.message}, status=err.status, headers=headers)


def build_app(plane: DataPlane, tokens: TokenFile | None = None) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI application serving `plane` over HTTP (see RestApp)."""
    return RestApp(plane, tokens)


class RestApp:
    """The ASGI application: Starlette for every endpoint but POST .../infer, which is answered before its router.
    With `tokens`, every path but the settings' open paths needs `Authorization: Bearer <token>`."""

    def __init__(self, plane: DataPlane, tokens: TokenFile | None = None) -> None:
        self.plane = plane
        self.tokens = tokens
        self.limit = plane.settings.max_request_bytes
        self.body_timeout = plane.settings.body_timeout_seconds
        self.watchdog = BodyWatchdog(self.body_timeout)
        self.open_paths = frozenset(p.strip() for p in plane.settings.auth_open_paths.split(",") if p.strip())
        # Bodies larger than _DECODE_OFF_LOOP_BYTES are decoded on a worker thread: the event loop keeps answering
        # health probes and reading other requests meanwhile. One thread, so that decoding never holds more than one
        # large body's objects.
        self.decode_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modeldeploy-decode")
        self.starlette = Starlette(
            routes=self._routes(),
            exception_handlers={
                ServingError: self.serving_error,
                HTTPException: self.http_error,
                Exception: self.internal_error,
            },
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.tokens is not None and scope["type"] == "http" and scope["path"] not in self.open_paths:
            authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            if not self.tokens.accepts(authorization):
                await _unauthorized(send)  # before the body is read or anything else runs
                return
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            match = _INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                await self.infer(scope, receive, send, match[1], match[2])
                return
        await self.starlette(scope, receive, send)

    def _routes(self) -> list[Route]:
        def get(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
            return Route(path, endpoint, methods=["GET"])

        infer_route = _InferRoute(self)
        return [
            get("/v2/health/live", self.live),
            get("/v2/health/ready", self.ready),
            get("/v2", self.server_metadata),
            get("/v2/models/{name}", self.model_metadata),
            get("/v2/models/{name}/versions/{version}", self.model_metadata),
            get("/v2/models/{name}/ready", self.model_ready),
            get("/v2/models/{name}/versions/{version}/ready", self.model_ready),
            Route("/v2/models/{name}/infer", infer_route, methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", infer_route, methods=["POST"]),
            Route("/v1/models/{name}:predict", self.predict, methods=["POST"]),
            Route("/v1/models/{name}/versions/{version}:predict", self.predict, methods=["POST"]),
            get("/metrics", self.metrics),
        ]

    # -- the request body: the one place its size, encoding and arrival time are checked --

    async def read_body(
        self, receive: Receive, declared: str | None, max_values: int | None, held: list[int] | None = None
    ) -> bytes | None:
        """The body from the ASGI messages; None when the client went away before sending it all. Refused (413) as
        soon as it is known to be over the limit, before it is buffered whole; 408 when it has not arrived within
        the body timeout (see BodyWatchdog). With `held`, the bytes are taken from the server's budget (all at once
        when Content-Length says how many) and `held[0]` says how many, for the caller to give back. A JSON body is
        refused as soon as it holds more values than `max_values`, before the rest of it is read."""
        limit, budget = self.limit, self.plane.budget
        commas = 0
        if declared is not None:
            if not declared.isdigit():
                raise InvalidInput(f"Content-Length {declared!r} is not a number")
            length = int(declared)
            if length > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes")
            if held is not None:
                budget.take(length)
                held[0] = length
        chunks: list[bytes] = []
        size = 0
        watchdog = self.watchdog
        task = watchdog.watch()
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return None
                chunk = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
                    if held is not None and size > held[0]:
                        budget.take(size - held[0])
                        held[0] = size
                    if max_values is not None:
                        commas += chunk.count(b",")
                        check_values(commas + 1, max_values)
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except asyncio.CancelledError:
            if watchdog.timed_out(task):
                raise RequestTimeout(
                    f"the request body did not arrive within {self.body_timeout:g} s; send it at once"
                ) from None
            raise
        finally:
            watchdog.done(task)

    # -- POST .../infer: bare ASGI --

    async def infer(self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None) -> None:
        """POST .../infer as a bare ASGI handler: this endpoint carries the load, and Starlette's Request, Response,
        middleware and routing cost as much CPU as decoding a small model's request; with the server on one core
        that CPU is taken from inference. Same answers, statuses and errors as the other endpoints."""
        encoding = declared = header_value = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = value.decode("latin-1")
            elif key == b"inference-header-content-length":
                header_value = value.decode("latin-1")
            elif key == b"content-encoding":
                encoding = value.decode("latin-1")
        plane = self.plane
        expected = plane.expect()
        held = [0]
        status = 200
        headers: tuple[tuple[bytes, bytes], ...] = _JSON_HEADERS
        try:
            with plane.request_scope("rest") as metric:
                try:
                    _check_encoding(encoding)
                    admission = plane.admission(name, version)  # 404 / 503 before the body is read
                    # A JSON body's values are counted while it arrives; a binary body's JSON header when it is cut.
                    max_values = admission.max_json_values
                    count_now, count_later = (max_values, None) if header_value is None else (None, max_values)
                    raw = await self.read_body(receive, declared, count_now, held)
                    if raw is None:
                        metric.code = "499"  # the client closed the connection; nobody reads an answer
                        return
                    if header_value is not None and not header_value.isdigit():
                        raise InvalidInput(f"Inference-Header-Content-Length {header_value!r} is not a number")
                    length = None if header_value is None else int(header_value)
                    if len(raw) > _DECODE_OFF_LOOP_BYTES:
                        decoded = await asyncio.get_running_loop().run_in_executor(
                            self.decode_pool,
                            decode_infer_request,
                            raw,
                            length,
                            admission.tensor,
                            count_later,
                        )
                    else:
                        decoded = decode_infer_request(raw, length, admission.tensor, count_later)
                    del raw
                    handed, expected = expected, False
                    response = await plane.infer(name, version, decoded, expected=handed)
                    del decoded
                    body, json_length = encode_infer_response(response)
                    if json_length is not None:
                        headers = (*_BINARY_HEADERS, (b"inference-header-content-length", str(json_length).encode()))
                except ServingError as err:
                    metric.failed(err)
                    status, body = err.status, orjson.dumps({"error": err.message})
                    if isinstance(err, Overloaded):
                        headers = (*_JSON_HEADERS, (b"retry-after", str(err.retry_after).encode()))
                except Exception as exc:  # the same 500 as the other endpoints get from internal_error
                    metric.code = "500"
                    log.exception("unexpected error in POST %s", scope["path"], exc_info=exc)
                    status = 500
                    body = orjson.dumps({"error": f"internal error: {type(exc).__name__}: {exc}"})
        finally:
            if expected:
                plane.unexpect()
            self.plane.budget.give(held[0])
        await _send(send, status, headers, body)

    # -- the Starlette endpoints --

    async def predict(self, request: Request) -> Response:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        headers = request.headers
        with self.plane.request_scope("rest") as scope:
            try:
                _check_encoding(headers.get("content-encoding"))
                body = await self.read_body(request.receive, headers.get("content-length"), None)
                if body is None:
                    scope.code = "499"  # the client closed the connection; nobody reads an answer
                    return Response(status_code=499)
                admission = self.plane.admission(name, version)
                info = self.plane.info
                specs = [(t.name, t.datatype) for t in info.inputs] if info is not None else []
                decoded = decode_predict_request(body, specs, admission.tensor, admission.max_json_values)
                response = await self.plane.infer(name, version, decoded)
            except ServingError as err:
                scope.failed(err)
                return error_response(err)
            return Response(encode_predict_response(response), media_type=_JSON)

    async def live(self, request: Request) -> Response:
        is_live = self.plane.live()
        return json_response({"live": is_live}, status=200 if is_live else 503)

    async def ready(self, request: Request) -> Response:
        is_ready = self.plane.ready()
        return json_response({"ready": is_ready}, status=200 if is_ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(self.plane.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        params = request.path_params
        return json_response(self.plane.model_metadata(params["name"], params.get("version")))

    async def model_ready(self, request: Request) -> Response:
        params = request.path_params
        is_ready = self.plane.model_ready(params["name"], params.get("version"))
        return json_response({"name": params["name"], "ready": is_ready}, status=200 if is_ready else 503)

    async def metrics(self, request: Request) -> Response:
        return Response(self.plane.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- errors --

    async def serving_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServingError)
        return error_response(exc)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"no endpoint {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        return json_response({"error": message}, status=exc.status_code)

    async def internal_error(self, request: Request, exc: Exception) -> Response:
        log.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return json_response({"error": f"internal error: {type(exc).__name__}: {exc}"}, status=500)


class BodyWatchdog:
    """One timer for the whole event loop instead of one per request: a task reading a body registers itself with
    its deadline (a dict entry), and a periodic check cancels the tasks that are past it, which read_body turns
    into 408. A timer per request (asyncio.timeout) costs a heap push and pop of Python objects on every request;
    this costs two dict operations, and the check runs only while bodies are being read, at most every second. A
    slow body is refused between its deadline and one period later."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.period = min(1.0, timeout / 4)
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._cancelled: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self) -> asyncio.Task[object]:
        """Register the running task, which is about to read a body."""
        task = asyncio.current_task()
        assert task is not None, "bodies are read in a task"
        loop = task.get_loop()
        self._deadlines[task] = loop.time() + self.timeout
        if self._timer is None or loop is not self._loop:  # the server's loop, or a new one (tests run several)
            self._timer, self._loop = loop.call_at(loop.time() + self.period, self._check, loop), loop
        return task

    def done(self, task: asyncio.Task[object]) -> None:
        del self._deadlines[task]
        if self._cancelled:
            self._cancelled.discard(task)

    def timed_out(self, task: asyncio.Task[object]) -> bool:
        """Whether the CancelledError `task` got is this watchdog's (then it is taken back) and no one else's."""
        if task not in self._cancelled:
            return False
        self._cancelled.discard(task)
        return task.uncancel() == 0

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for task, deadline in self._deadlines.items():
            if deadline <= now and task not in self._cancelled:
                self._cancelled.add(task)
                task.cancel()
        self._timer = loop.call_at(now + self.period, self._check, loop) if self._deadlines else None


class _InferRoute:
    """RestApp.infer behind Starlette's router (an ASGI app, not a function, so that Starlette passes the scope
    through): it answers other methods with 405 and requests that the fast match in RestApp leaves to it."""

    def __init__(self, app: RestApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope["path_params"]
        await self.app.infer(scope, receive, send, params["name"], params.get("version"))


def _check_encoding(encoding: str | None) -> None:
    if encoding is not None and encoding.lower() != "identity":
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding.lower()!r} is not supported; send the body uncompressed"
        )


async def _send(send: Send, status: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _unauthorized(send: Send) -> None:
    headers = (*_JSON_HEADERS, (b"www-authenticate", b'Bearer realm="modeldeploy"'))
    await _send(send, 401, headers, _UNAUTHORIZED)
