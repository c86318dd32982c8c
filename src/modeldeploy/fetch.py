"""The `modeldeploy fetch` subcommand: copy a committed version out of object storage, verified (options only).

Serving pods of a ModelDeployment with spec.storage.uri run it as their init container: it copies the version into
the pod's emptyDir and checks every byte against the model card, so the server starts only on a verified model. A
failure is one line naming the reason, printed and written as the container's termination message, which the
operator quotes in the ModelDeployment's Degraded condition.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path

from modeldeploy import contracts

HELP = "copy a model version from object storage (s3://...) into a directory, every file checked against its card"

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_size(text: str) -> int:
    """A Kubernetes quantity of bytes (1Gi, 500M, 1048576) as an int; ValueError for anything else."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (give e.g. 1Gi, 500Mi or a number of bytes)")
    return int(float(match[1]) * _FACTORS[match[2]])


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "example (what the serving pods' init container runs; credentials from the standard AWS variables):\n"
        "  modeldeploy fetch --uri s3://models/team-a --model digits --version v3f2a9c1b0d4e --dest /models\n"
    )
    parser.add_argument("--uri", required=True, help="spec.storage.uri: the root the trainer wrote versions under")
    parser.add_argument("--model", required=True, help="the model's (the ModelDeployment's) name")
    parser.add_argument("--version", required=True, help="the version to fetch (vXXXXXXXXXXXX)")
    parser.add_argument(
        "--dest",
        type=Path,
        default=Path(contracts.ARTIFACT_MOUNT),
        help="writes DEST/MODEL/VERSION/ (default: %(default)s)",
    )
    parser.add_argument(
        "--max-size",
        default="1Gi",
        help="refuse a version larger than this, before any download (default: %(default)s)",
    )
    parser.add_argument("--with-source", action="store_true", help="also fetch source/ (the model before conversion)")
    parser.add_argument(
        "--termination-log",
        default=contracts.DEFAULT_TERMINATION_LOG,
        help="where the failure line goes for the kubelet, when writable (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from modeldeploy import objectstore  # noqa: PLC0415  (fsspec and s3fs only now)

    started = time.monotonic()
    try:
        max_bytes = parse_size(args.max_size)
        root = objectstore.parse_uri(args.uri, "--uri")
        final, card = objectstore.fetch_version(
            root, args.model, args.version, args.dest, max_bytes=max_bytes, include_source=args.with_source
        )
    except ValueError as err:
        return _fail(args.termination_log, f"InvalidArgument: {err}")
    except objectstore.StorageError as err:
        return _fail(args.termination_log, f"{err.reason}: {err.message}")
    except OSError as err:
        return _fail(
            args.termination_log, f"LocalWriteFailed: cannot write {err.filename or args.dest}: {err.strerror}"
        )
    size = sum(int(card["files"][n].get("sizeBytes") or 0) for n in objectstore.serving_files(card))
    print(
        f"fetched {args.model}/{args.version} ({size} bytes, sha256 verified) from {args.uri} to {final} "
        f"in {time.monotonic() - started:.2f} s"
    )
    return 0


def _fail(termination_log: str, line: str) -> int:
    line = " ".join(line.split())[: contracts.FAILURE_MESSAGE_LIMIT]
    print(f"cannot fetch the model: {line}", file=sys.stderr)
    if os.access(termination_log, os.W_OK):
        # If this write fails the printed line stays: FallbackToLogsOnError makes it the message.
        with contextlib.suppress(OSError):
            Path(termination_log).write_text(f"cannot fetch the model: {line}\n", encoding="utf-8")
    return 1
