"""The `modeldeploy operator` subcommand (options only; kopf is imported when it runs)."""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import threading

HELP = "run the ModelDeployment operator (foreground; Ctrl-C or SIGTERM stops it cleanly)"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    parser.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", ""),
        help="namespace of the leader-election Lease (default: the first watched namespace, else 'default')",
    )
    parser.add_argument(
        "--no-leader-election",
        action="store_true",
        help="act without the Lease (only when exactly one operator process runs)",
    )
    parser.add_argument(
        "--liveness", metavar="URL", help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug details")


def run(args: argparse.Namespace) -> int:
    import faulthandler  # noqa: PLC0415
    import signal  # noqa: PLC0415

    import kopf  # noqa: PLC0415 (heavy, and only needed when the operator runs)

    from modeldeploy_operator import handlers  # noqa: PLC0415,F401 (registers the handlers with kopf)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
        logging.getLogger("kopf.activities.startup").setLevel(logging.INFO)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack: a hang shows itself
    namespaces: list[str] = list(args.namespace)
    lost = threading.Event()
    # kopf waits for this flag on an executor thread; the cleanup handler resolves it on every stop (also after
    # SIGINT/SIGTERM), else that thread would block the interpreter's exit.
    stop_flag: concurrent.futures.Future[None] = concurrent.futures.Future()

    def on_lost() -> None:
        lost.set()
        if not stop_flag.done():
            stop_flag.set_result(None)

    memo = kopf.Memo(
        lease_namespace=args.lease_namespace or (namespaces[0] if namespaces else "default"),
        leader_election=not args.no_leader_election,
        on_lost=on_lost,
        stop_flag=stop_flag,
    )
    kopf.run(
        standalone=True,  # kopf's peering pauses every operator of equal priority; the Lease elects one instead
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness,
        stop_flag=stop_flag,
        memo=memo,
    )
    return 1 if lost.is_set() else 0
