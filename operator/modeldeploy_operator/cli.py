"""The `modeldeploy operator` subcommand (options only; kopf is imported when it runs)."""

from __future__ import annotations

import argparse

HELP = "not implemented yet"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    del args
    raise SystemExit("modeldeploy operator: not implemented yet")
