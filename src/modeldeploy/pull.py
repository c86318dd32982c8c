"""The `modeldeploy pull` subcommand: copy a version's model file out, verified (options only)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modeldeploy.run import DEFAULT_OUTPUT

HELP = "copy a version's model.tflite (or model.onnx) out of a cluster or a local artifact root, verified by its card"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        f"{HELP}.\n\n"
        "With --namespace, reads the ModelDeployment's status for the version (the served one unless --version),\n"
        "then the file through `kubectl exec` into one of its ready serving pods, which mount the artifact volume\n"
        "read-only (your kubeconfig needs get on modeldeployments and pods, and create on pods/exec). Without it,\n"
        "reads a local artifact root (what `modeldeploy run` writes). The file's size and SHA-256 must match the\n"
        "model card (and, in a cluster, the status) or nothing is written."
    )
    parser.epilog = (
        "examples:\n"
        "  modeldeploy pull digits --format tflite --namespace ml            # the served version, from the cluster\n"
        "  modeldeploy pull digits --format tflite --version v3f2a9c1b0d4e -o digits.tflite -n ml\n"
        "  modeldeploy pull digits --format tflite                           # after `modeldeploy run`\n"
    )
    parser.add_argument("name", metavar="NAME", help="the ModelDeployment's (the model's) name")
    parser.add_argument(
        "--format", choices=("tflite", "onnx"), default="tflite", help="which file to copy (default: %(default)s)"
    )
    parser.add_argument("--version", help="the version (vXXXXXXXXXXXX); default: the served one, or locally the newest")
    parser.add_argument("--output", "-o", type=Path, help="where to write it (default: NAME-VERSION.tflite|.onnx)")
    parser.add_argument(
        "--namespace", "-n", help="read from the cluster ($KUBECONFIG or --kubeconfig), in this namespace"
    )
    parser.add_argument("--kubeconfig", help="kubeconfig for kubectl (default: kubectl's own)")
    parser.add_argument("--kubectl", default="kubectl", help="the kubectl to run (default: %(default)s)")
    parser.add_argument(
        "--from",
        dest="root",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="without --namespace: the local artifact root (default: %(default)s, modeldeploy run's)",
    )


def run(args: argparse.Namespace) -> int:
    from modeldeploy.tools import pull  # noqa: PLC0415

    try:
        if args.namespace:
            kubectl = (args.kubectl, *(("--kubeconfig", args.kubeconfig) if args.kubeconfig else ()))
            line = pull.pull_cluster(
                kubectl, args.namespace, args.name, version=args.version, fmt=args.format, output=args.output
            )
        else:
            line = pull.pull_local(
                args.root.expanduser(), args.name, version=args.version, fmt=args.format, output=args.output
            )
    except pull.PullError as err:
        sys.stderr.write(f"modeldeploy pull: {err}\n")
        return 1
    sys.stdout.write(line + "\n")
    return 0
