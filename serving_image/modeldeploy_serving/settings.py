"""The server's settings: read once from the environment (docs/contracts/serving.md), command-line options win."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from modeldeploy.envsettings import EnvSettings, SettingsError, load_settings

ENV_PREFIX: Final = "MODELDEPLOY_"

Port = Annotated[int, Field(ge=0, le=65535)]
Positive = Annotated[int, Field(ge=1)]


class Settings(EnvSettings):
    """Everything the server is configured by. Field `x` is read from `MODELDEPLOY_X` (upper case), by the rules of
    modeldeploy.envsettings (an empty value is unset)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)

    model_dir: Path
    """A version directory of the model artifact, or any directory holding `model.onnx` (required)."""

    model_name: str | None = None
    """The name in `/v2/models/{name}`; None means the model card's `name`, else the directory's name."""

    model_version: str | None = None
    """The version reported and accepted in `/versions/{v}`; None means the card's `version`, else `1`."""

    http_port: Port = 8080
    """REST port: Open Inference Protocol V2, TF-Serving `:predict`, `/metrics`, health."""

    grpc_port: Port = 8081
    """gRPC port for `inference.GRPCInferenceService`; 0 turns gRPC off."""

    host: str = "0.0.0.0"
    """Address both servers bind."""

    intra_op_threads: Positive = 1
    """onnxruntime intra-op threads; one per core the pod is given is the usual choice."""

    batching: bool = True
    """Dynamic batching; the server turns it off by itself when the model has no dynamic batch dimension."""

    max_batch_size: Positive = 32
    """At most this many rows (summed over the merged requests) go into one onnxruntime run."""

    max_queue_delay_us: Annotated[int, Field(ge=0)] = 2000
    """How long the first queued request waits at most for others that are already on their way, in microseconds."""

    max_request_bytes: Positive = 16 * 1024 * 1024
    """Request bodies larger than this get 413 (REST) or RESOURCE_EXHAUSTED (gRPC)."""

    max_request_rows: Positive = 4096
    """Requests with more rows (first dimension) than this get 400; rows over max_batch_size run in several batches."""

    max_queue_rows: Positive = 1024
    """Rows queued for the model at most; a request that would go over is shed at once (503 / RESOURCE_EXHAUSTED)."""

    max_queue_requests: Positive = 512
    """Requests queued for the model at most; over it, shed like max_queue_rows."""

    max_queue_wait_ms: Positive = 500
    """Model time ahead of a request at most, in milliseconds (the queued rows x the recent runs' time per row, plus
    what is left of the run in progress); a request that arrives with more ahead of it is shed at once, before its
    body is read. This bounds the latency of the requests admitted under overload."""

    max_queue_batches: Positive = 2
    """Model time ahead of a request at most, in full batches (max_batch_size rows at the recent time per row, the
    run in progress included), when that is less than max_queue_wait_ms: a request admitted under overload waits
    for about this many batch runs at most, for a light model and a heavy one alike. A request of n batches takes
    n runs unloaded and at most 2 + n under overload (2x for 2-batch requests, before the CPU that the transport
    takes from the model under overload); the queue still holds enough to keep the model busy."""

    queue_timeout_ms: Positive = 5000
    """A request that waited this long in the queue is answered 503 instead of being run for nobody; a client's V2
    `timeout` parameter (microseconds, as Triton's) may shorten it."""

    max_decoding_bytes: Positive = 64 * 1024 * 1024
    """Request bodies held at once (being read or decoded), in bytes; a body that would go over is shed (503)."""

    body_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    """A request body must have arrived this long after its headers, else 408: a slow sender holds no budget longer."""

    max_concurrent_requests: Positive = 256
    """Connections (HTTP) and RPCs (gRPC) served at once per protocol; over it, 503 / RESOURCE_EXHAUSTED."""

    allow_non_finite: bool = False
    """Accept NaN and Infinity in float inputs (binary and gRPC data; JSON cannot carry them). Off: 400."""

    auth_token_file: str | None = None
    """A file of bearer tokens, one per line (a mounted Secret); set, every request but the open paths needs
    `Authorization: Bearer <token>` (REST) or `authorization` metadata (gRPC). Re-read when it changes."""

    auth_open_paths: str = "/v2/health/live,/v2/health/ready,/metrics"
    """Comma-separated REST paths reachable without a token (the kubelet's probes, Prometheus); gRPC's ServerLive
    and ServerReady are open when the REST health paths are."""

    tls_cert_file: str | None = None
    """PEM certificate (chain) for HTTPS and gRPC TLS, e.g. `tls.crt` of a kubernetes.io/tls Secret; re-read when
    it changes, for new connections. Needs tls_key_file."""

    tls_key_file: str | None = None
    """PEM private key of tls_cert_file (`tls.key`)."""

    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 20.0
    """After SIGTERM: not ready at once, in-flight requests finish within this bound, then the process exits."""

    log_level: str = "INFO"
    """Python logging level name (DEBUG, INFO, WARNING, ...)."""

    @property
    def max_queue_delay_seconds(self) -> float:
        return self.max_queue_delay_us / 1_000_000

    @property
    def max_queue_wait_seconds(self) -> float:
        return self.max_queue_wait_ms / 1000

    @property
    def queue_timeout_seconds(self) -> float:
        return self.queue_timeout_ms / 1000

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None) -> Settings:
        """Settings from the environment with `overrides` (options that were given, not None) on top."""
        given = {name: value for name, value in (overrides or {}).items() if value is not None}
        if "model_dir" not in given and not _is_set(cls.env_name("model_dir")):
            raise SettingsError("no model directory: set MODELDEPLOY_MODEL_DIR or pass --model-dir")
        settings = load_settings(cls, given)
        settings.check()
        return settings

    def check(self) -> None:
        """Reject combinations the server cannot run with, naming the variables (each value's own range is checked
        by its type when it is read)."""
        if self.http_port == 0:
            raise SettingsError("MODELDEPLOY_HTTP_PORT=0: the HTTP port carries health and cannot be turned off")
        if self.grpc_port != 0 and self.grpc_port == self.http_port:
            raise SettingsError(f"MODELDEPLOY_GRPC_PORT and MODELDEPLOY_HTTP_PORT are both {self.http_port}")
        if self.max_decoding_bytes < self.max_request_bytes:
            raise SettingsError(
                f"MODELDEPLOY_MAX_DECODING_BYTES={self.max_decoding_bytes} is below MODELDEPLOY_MAX_REQUEST_BYTES="
                f"{self.max_request_bytes}: a body of the largest allowed size could never be read"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise SettingsError(
                "MODELDEPLOY_TLS_CERT_FILE and MODELDEPLOY_TLS_KEY_FILE go together: set both or neither"
            )
        for name in ("auth_token_file", "tls_cert_file", "tls_key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise SettingsError(f"{self.env_name(name)}={path} is not a readable file")


def _is_set(name: str) -> bool:
    return bool(os.environ.get(name))
