"""The `modeldeploy` command: one CLI for the operator, the local cluster, training, serving and trying a spec."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast


class CommandModule(Protocol):
    """A subcommand lives in a light module: it adds its options, and imports its heavy parts only in run()."""

    HELP: str

    def configure_parser(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# name -> module; each module is imported when the parser is built, so it must import nothing heavy at top level.
COMMANDS: dict[str, str] = {
    "operator": "modeldeploy_operator.cli",
    "cluster": "modeldeploy.cluster.cli",
    "train": "modeldeploy_training.cli",
    "serve": "modeldeploy_serving.cli",
    "run": "modeldeploy.run",
    "predict": "modeldeploy.predict",
    "pull": "modeldeploy.pull",
    "fetch": "modeldeploy.fetch",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modeldeploy",
        description="Train, compress, serve and scale a model from one ModelDeployment.",
        epilog=(
            "start here:\n"
            "  modeldeploy run samples/digits-cnn.yaml          try a spec on this machine (train, compress, serve)\n"
            "  modeldeploy predict --model digits digit.png     ask the served model\n"
            "  modeldeploy pull digits --format tflite          copy a version's model.tflite out, verified\n"
            "  modeldeploy cluster up                           a local control plane (prints its kubeconfig)\n"
            "  modeldeploy operator                             the operator, against $KUBECONFIG\n"
            "\n'modeldeploy COMMAND --help' tells more about each."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = cast(CommandModule, importlib.import_module(module_name))
        command = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure_parser(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = cast(CommandModule, args._module)
    try:
        return module.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
