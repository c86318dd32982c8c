"""The `modeldeploy serve` subcommand: options only; the server is imported when the command runs."""

from __future__ import annotations

import argparse

HELP = (
    "Serve an ONNX model over the Open Inference Protocol (REST and gRPC). Settings come from MODELDEPLOY_* "
    "environment variables (docs/contracts/serving.md); an option given here wins."
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--model-dir",
        help="version directory of the artifact, or any directory with model.onnx (MODELDEPLOY_MODEL_DIR)",
    )
    add("--model-name", help="name in /v2/models/{name} (MODELDEPLOY_MODEL_NAME; default: the card's, else the dir's)")
    add(
        "--model-version", help="version reported and accepted (MODELDEPLOY_MODEL_VERSION; default: the card's, else 1)"
    )
    add("--host", help="address to bind (MODELDEPLOY_HOST, default 0.0.0.0)")
    add("--http-port", type=int, help="REST port (MODELDEPLOY_HTTP_PORT, default 8080)")
    add("--grpc-port", type=int, help="gRPC port, 0 turns it off (MODELDEPLOY_GRPC_PORT, default 8081)")
    add("--intra-op-threads", type=int, help="onnxruntime intra-op threads (MODELDEPLOY_INTRA_OP_THREADS, default 1)")
    add(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="dynamic batching (MODELDEPLOY_BATCHING, default on)",
    )
    add("--max-batch-size", type=int, help="rows per model run at most (MODELDEPLOY_MAX_BATCH_SIZE, default 32)")
    add(
        "--max-queue-delay-us",
        type=int,
        help="how long a queued request waits for others at most (MODELDEPLOY_MAX_QUEUE_DELAY_US, default 2000)",
    )
    add("--max-request-bytes", type=int, help="larger bodies get 413 (MODELDEPLOY_MAX_REQUEST_BYTES, default 16 MiB)")
    add("--max-request-rows", type=int, help="more rows get 400 (MODELDEPLOY_MAX_REQUEST_ROWS, default 4096)")
    add("--max-queue-rows", type=int, help="rows queued at most, then 503 (MODELDEPLOY_MAX_QUEUE_ROWS, default 1024)")
    add(
        "--max-queue-requests",
        type=int,
        help="requests queued at most, then 503 (MODELDEPLOY_MAX_QUEUE_REQUESTS, default 512)",
    )
    add(
        "--max-queue-wait-ms",
        type=int,
        help="model time queued at most, then 503 (MODELDEPLOY_MAX_QUEUE_WAIT_MS, default 500)",
    )
    add(
        "--max-queue-batches",
        type=int,
        help="model time queued at most in full batches, then 503 (MODELDEPLOY_MAX_QUEUE_BATCHES, default 2)",
    )
    add(
        "--queue-timeout-ms",
        type=int,
        help="a request queued this long gets 503 (MODELDEPLOY_QUEUE_TIMEOUT_MS, default 5000)",
    )
    add(
        "--max-decoding-bytes",
        type=int,
        help="request bytes held at once, then 503 (MODELDEPLOY_MAX_DECODING_BYTES, default 64 MiB)",
    )
    add(
        "--body-timeout-seconds",
        type=float,
        help="a body must arrive within this, else 408 (MODELDEPLOY_BODY_TIMEOUT_SECONDS, default 30)",
    )
    add(
        "--max-concurrent-requests",
        type=int,
        help="connections/RPCs at once per protocol (MODELDEPLOY_MAX_CONCURRENT_REQUESTS, default 256)",
    )
    add(
        "--shutdown-grace-seconds",
        type=float,
        help="bound on finishing in-flight requests after SIGTERM (MODELDEPLOY_SHUTDOWN_GRACE_SECONDS, default 20)",
    )
    add("--log-level", help="DEBUG, INFO, WARNING, ... (MODELDEPLOY_LOG_LEVEL, default INFO)")


def run(args: argparse.Namespace) -> int:
    # The server (onnxruntime, uvicorn, grpc) is imported only when the command runs: `modeldeploy --help` stays light.
    import logging  # noqa: PLC0415

    from modeldeploy.envsettings import SettingsError  # noqa: PLC0415
    from modeldeploy_serving.server import serve  # noqa: PLC0415
    from modeldeploy_serving.settings import Settings  # noqa: PLC0415

    names = (
        "model_dir",
        "model_name",
        "model_version",
        "host",
        "http_port",
        "grpc_port",
        "intra_op_threads",
        "batching",
        "max_batch_size",
        "max_queue_delay_us",
        "max_request_bytes",
        "max_request_rows",
        "max_queue_rows",
        "max_queue_requests",
        "queue_timeout_ms",
        "max_queue_wait_ms",
        "max_queue_batches",
        "max_decoding_bytes",
        "max_concurrent_requests",
        "body_timeout_seconds",
        "shutdown_grace_seconds",
        "log_level",
    )
    try:
        settings = Settings.load(overrides={name: getattr(args, name, None) for name in names})
    except SettingsError as err:
        logging.basicConfig(format="%(levelname)s %(message)s")
        logging.getLogger("modeldeploy_serving").error("%s", err)
        return 2
    return serve(settings)
