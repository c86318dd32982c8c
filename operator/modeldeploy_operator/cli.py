"""The `modeldeploy operator` subcommand (options only; kopf is imported when it runs)."""

from __future__ import annotations

import argparse
import logging
import os

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
        help="namespace of the leader-election Lease (default: $POD_NAMESPACE, else "
        "MODELDEPLOY_OPERATOR_LEASE_NAMESPACE, else the first watched namespace, else 'default')",
    )
    parser.add_argument(
        "--no-leader-election",
        action="store_true",
        help="act without the Lease (only when exactly one operator process runs)",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        help="serve the liveness probe at URL (e.g. http://0.0.0.0:8080/healthz; also while standby) and the "
        "readiness probe at /readyz on the same port",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug details")


def run(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415
    import faulthandler  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from modeldeploy.envsettings import SettingsError  # noqa: PLC0415
    from modeldeploy_operator.process import Options, run_operator  # noqa: PLC0415 (imports kopf)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
        logging.getLogger("kopf.activities.startup").setLevel(logging.INFO)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack: a hang shows itself
    namespaces: list[str] = list(args.namespace)
    options = Options(
        namespaces=namespaces,
        lease_namespace=args.lease_namespace,
        leader_election=not args.no_leader_election,
        liveness=args.liveness,
    )
    try:
        return asyncio.run(run_operator(options))
    except SettingsError as err:  # a bad MODELDEPLOY_OPERATOR_* value: its name and what it must be, no traceback
        logging.getLogger("modeldeploy_operator").error("cannot start: %s", err)
        return 2
