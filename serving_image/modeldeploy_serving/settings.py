"""The server's settings: read once from the environment (docs/contracts/serving.md), command-line options win."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from modeldeploy_serving.errors import SettingsError

ENV_PREFIX: Final = "MODELDEPLOY_"


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured by. Field `x` is read from `MODELDEPLOY_X` (upper case)."""

    model_dir: Path
    """A version directory of the model artifact, or any directory holding `model.onnx` (required)."""

    model_name: str | None = None
    """The name in `/v2/models/{name}`; None means the model card's `name`, else the directory's name."""

    model_version: str | None = None
    """The version reported and accepted in `/versions/{v}`; None means the card's `version`, else `1`."""

    http_port: int = 8080
    """REST port: Open Inference Protocol V2, TF-Serving `:predict`, `/metrics`, health."""

    grpc_port: int = 8081
    """gRPC port for `inference.GRPCInferenceService`; 0 turns gRPC off."""

    host: str = "0.0.0.0"
    """Address both servers bind."""

    intra_op_threads: int = 1
    """onnxruntime intra-op threads; one per core the pod is given is the usual choice."""

    batching: bool = True
    """Dynamic batching; the server turns it off by itself when the model has no dynamic batch dimension."""

    max_batch_size: int = 32
    """At most this many rows (summed over the merged requests) go into one onnxruntime run."""

    max_queue_delay_us: int = 2000
    """How long the first queued request waits at most for others that are already on their way, in microseconds."""

    max_request_bytes: int = 16 * 1024 * 1024
    """Request bodies larger than this get 413 (REST) or RESOURCE_EXHAUSTED (gRPC)."""

    max_request_rows: int = 4096
    """Requests with more rows (first dimension) than this get 400; rows over max_batch_size run in several batches."""

    max_queue_rows: int = 1024
    """Rows queued for the model at most; a request that would go over is shed at once (503 / RESOURCE_EXHAUSTED)."""

    max_queue_requests: int = 512
    """Requests queued for the model at most; over it, shed like max_queue_rows."""

    max_queue_wait_ms: int = 500
    """Work queued at most, in milliseconds of model time (queued rows x the recent runs' time per row); a request
    that would go over is shed at once. This bounds the latency of the requests admitted under overload."""

    queue_timeout_ms: int = 5000
    """A request that waited this long in the queue is answered 503 instead of being run for nobody; a client's V2
    `timeout` parameter (microseconds, as Triton's) may shorten it."""

    max_decoding_bytes: int = 64 * 1024 * 1024
    """Request bodies held at once (being read or decoded), in bytes; a body that would go over is shed (503)."""

    body_timeout_seconds: float = 30.0
    """A request body must have arrived this long after its headers, else 408: a slow sender holds no budget longer."""

    max_concurrent_requests: int = 256
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

    shutdown_grace_seconds: float = 20.0
    """After SIGTERM: not ready at once, in-flight requests finish within this bound, then the process exits."""

    log_level: str = field(default="INFO")
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
    def load(cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
        """Settings from `environ` (default os.environ) with `overrides` (options that were given) on top."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, f.type, raw)
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        if "model_dir" not in values:
            raise SettingsError("no model directory: set MODELDEPLOY_MODEL_DIR or pass --model-dir")
        values["model_dir"] = Path(values["model_dir"])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject values the server cannot run with, naming the variable."""
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"{_env(name)}={port} is not a TCP port (0..65535)")
        if self.http_port == 0:
            raise SettingsError("MODELDEPLOY_HTTP_PORT=0: the HTTP port carries health and cannot be turned off")
        if self.grpc_port != 0 and self.grpc_port == self.http_port:
            raise SettingsError(f"MODELDEPLOY_GRPC_PORT and MODELDEPLOY_HTTP_PORT are both {self.http_port}")
        positive = (
            "intra_op_threads",
            "max_batch_size",
            "max_request_bytes",
            "max_request_rows",
            "max_queue_rows",
            "max_queue_requests",
            "queue_timeout_ms",
            "max_queue_wait_ms",
            "max_decoding_bytes",
            "max_concurrent_requests",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{_env(name)}={getattr(self, name)} must be at least 1")
        if self.max_decoding_bytes < self.max_request_bytes:
            raise SettingsError(
                f"MODELDEPLOY_MAX_DECODING_BYTES={self.max_decoding_bytes} is below MODELDEPLOY_MAX_REQUEST_BYTES="
                f"{self.max_request_bytes}: a body of the largest allowed size could never be read"
            )
        if self.max_queue_delay_us < 0:
            raise SettingsError(f"MODELDEPLOY_MAX_QUEUE_DELAY_US={self.max_queue_delay_us} must not be negative")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise SettingsError(
                "MODELDEPLOY_TLS_CERT_FILE and MODELDEPLOY_TLS_KEY_FILE go together: set both or neither"
            )
        for name in ("auth_token_file", "tls_cert_file", "tls_key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise SettingsError(f"{_env(name)}={path} is not a readable file")
        if self.body_timeout_seconds <= 0:
            raise SettingsError(f"MODELDEPLOY_BODY_TIMEOUT_SECONDS={self.body_timeout_seconds} must be positive")
        if self.shutdown_grace_seconds < 0:
            raise SettingsError(
                f"MODELDEPLOY_SHUTDOWN_GRACE_SECONDS={self.shutdown_grace_seconds} must not be negative"
            )


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _parse(name: str, annotation: Any, raw: str) -> Any:
    """One environment value converted to its field's type; a wrong value names the variable and what it must be."""
    kind = str(annotation)
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError("expected true or false")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as err:
        raise SettingsError(f"{_env(name)}={raw!r} is not a valid {kind}: {err}") from err
    return raw
