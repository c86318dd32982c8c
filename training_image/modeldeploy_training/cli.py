"""The `modeldeploy train` subcommand: options only; the work (and TensorFlow) is imported when it runs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from modeldeploy import contracts

HELP = "train (or import) a model, convert it to ONNX, compress it and write the artifact"

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--spec",
        type=Path,
        help=f"a ModelDeployment manifest (YAML or JSON) or just its spec; default: the JSON in ${contracts.SPEC_ENV}",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(contracts.ARTIFACT_MOUNT),
        help="the artifact root; the version goes to OUTPUT/<name>/<version>/ (default: %(default)s)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(contracts.DATA_MOUNT),
        help="where the spec's dataset and model paths are relative to (the claim's mount; default: %(default)s)",
    )
    parser.add_argument(
        "--user-output",
        type=Path,
        default=Path(contracts.USER_OUTPUT_DIR),
        help="where a custom training image left its model (recipe custom; default: %(default)s)",
    )
    parser.add_argument(
        "--termination-log",
        help=f"where the JSON report goes (default: ${contracts.TERMINATION_LOG_ENV}, else "
        f"{contracts.DEFAULT_TERMINATION_LOG} when it is writable)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the job, write the report where the kubelet reads it, print it as the last line; 0 on success."""
    # Our progress at INFO; the libraries' INFO chatter (tf2onnx, the quantizer's root-logger lines) stays out.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("modeldeploy_training").setLevel(logging.INFO)
    from modeldeploy_training.quiet import quiet_tensorflow  # noqa: PLC0415

    quiet_tensorflow()  # before TensorFlow is imported: its notices out, its warnings and errors kept
    from modeldeploy_training.runner import execute  # noqa: PLC0415  (TensorFlow and onnxruntime only now)
    from modeldeploy_training.settings import settings_from_env  # noqa: PLC0415

    settings = settings_from_env()
    report = execute(args, settings)
    _write_report(report, args.termination_log or settings.termination_log)
    print(contracts.encode_report(report))
    return 0 if report.get("ok") else 1


def _write_report(report: dict[str, Any], path: str | None) -> None:
    if path is None and not os.access(contracts.DEFAULT_TERMINATION_LOG, os.W_OK):
        # Outside a pod there is no termination log; the printed line is the report.
        return
    try:
        contracts.write_report(report, path)
    except OSError as err:
        print(f"cannot write the report to {path or contracts.DEFAULT_TERMINATION_LOG}: {err}", file=sys.stderr)
