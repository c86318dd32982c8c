"""The `modeldeploy run` subcommand: try a ModelDeployment on this machine (options only; TensorFlow loads in run)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

HELP = "train, compress and serve a ModelDeployment on this machine, without Kubernetes (to try a spec)"

DEFAULT_OUTPUT = Path("~/.cache/modeldeploy/models")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        f"{HELP}.\n\n"
        "Runs what the cluster would: the training Job's program writes the artifact (train, export to ONNX,\n"
        "compress within the accuracy budget), then the inference server serves it here in the foreground and\n"
        "one prediction on a sample of the spec's data is printed. Ctrl-C stops it. The same spec on the same\n"
        "data reuses the artifact of an earlier run."
    )
    parser.epilog = (
        "examples:\n"
        "  modeldeploy run samples/digits-cnn.yaml\n"
        "  modeldeploy run samples/digits-cnn.yaml --port 9000 --epochs 2\n"
        "  modeldeploy predict --url http://127.0.0.1:9000 --model digits digit.png   # from another shell\n"
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="a ModelDeployment manifest (YAML or JSON)")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port of the server (default: %(default)s)")
    parser.add_argument(
        "--grpc-port", type=int, default=0, help="gRPC port of the server; 0 (the default) turns gRPC off"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="artifact root, the local stand-in for the volume (default: %(default)s)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        help="what dataset.path and importModel.path are relative to, the stand-in for the claim "
        "(default: FILE's directory)",
    )
    parser.add_argument("--epochs", type=int, help="train this many epochs instead of the spec's (a quicker try)")
    parser.add_argument(
        "--exit-after-predict",
        action="store_true",
        help="stop the server after the sample prediction instead of serving until Ctrl-C (scripts, demos)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log the libraries' details too")


def run(args: argparse.Namespace) -> int:
    if not args.verbose:
        # TensorFlow's C++ start-up and tf.data notices say nothing about the spec; its warnings and errors still show.
        from modeldeploy_training.quiet import quiet_tensorflow  # noqa: PLC0415

        quiet_tensorflow()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="           | %(message)s",
        stream=sys.stderr,
    )
    # Epochs, parity and each compression candidate: the training package's progress lines.
    logging.getLogger("modeldeploy_training").setLevel(logging.INFO)
    if args.epochs is not None and args.epochs < 1:
        sys.stderr.write("modeldeploy run: --epochs must be at least 1\n")
        return 2
    from modeldeploy.tools.localrun import RunOptions, run_locally  # noqa: PLC0415 (numpy and more on use only)

    options = RunOptions(
        file=args.file,
        output=args.output.expanduser(),
        data_root=(args.data_root or args.file.resolve().parent).expanduser(),
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        epochs=args.epochs,
        exit_after_predict=args.exit_after_predict,
    )
    return run_locally(options)
