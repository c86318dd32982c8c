"""Typed errors of the inference server: each carries its HTTP status and a message that says what was wrong."""

from __future__ import annotations


class ServingError(Exception):
    """A request the server cannot answer; `status` is the HTTP status, the message goes to the client."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    """The client's request is malformed or does not fit the model (names, datatypes, shapes, sizes)."""

    status = 400


class ModelNotFound(ServingError):
    """The request names a model or version this server does not serve."""

    status = 404


class RequestTimeout(ServingError):
    """The request's body did not arrive within MODELDEPLOY_BODY_TIMEOUT_SECONDS (a slow or stalled sender)."""

    status = 408


class PayloadTooLarge(ServingError):
    """The request body is larger than MODELDEPLOY_MAX_REQUEST_BYTES."""

    status = 413


class UnsupportedMediaType(ServingError):
    """The request body is encoded in a way the server does not read (e.g. an unknown Content-Encoding)."""

    status = 415


class NotReady(ServingError):
    """The model is not loaded yet, or the server is shutting down; the client should retry elsewhere or later."""

    status = 503


class Overloaded(ServingError):
    """The server sheds this request (queue full, memory budget spent, or the request waited past its deadline):
    503 with Retry-After on REST, RESOURCE_EXHAUSTED on gRPC; the client should retry later or elsewhere."""

    status = 503

    def __init__(self, message: str, *, reason: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        """A metric label: queue_full, memory, deadline."""
        self.retry_after = retry_after


class InferenceFailed(ServingError):
    """onnxruntime failed on input that passed every check; a fault of the model or the server, not the client."""

    status = 500


class ModelLoadError(Exception):
    """The model directory cannot be served (missing, unreadable or corrupt); the message says which file and why."""
