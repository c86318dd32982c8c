"""The `modeldeploy predict` subcommand: one request to a served model (options only; numpy loads in run)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "send an image (PNG/JPEG) or an array (.npy/.npz/.json) to a served model and print the class"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        f"{HELP}.\n\n"
        "Talks the Open Inference Protocol (V2 REST). An image is converted to the model's channels, resized to\n"
        "its input (the model's metadata gives the shape) and scaled as its model card's preprocessing says; an\n"
        "array is sent as it is (one sample, or a batch). Prints the top class and its probability per row."
    )
    parser.epilog = (
        "examples:\n"
        "  modeldeploy predict --model digits digit.png\n"
        "  kubectl port-forward svc/digits 8080:8080 &   # a ModelDeployment in a cluster\n"
        "  modeldeploy predict --url http://127.0.0.1:8080/v2/models/digits batch.npy --top 3\n"
    )
    parser.add_argument("input", type=Path, metavar="FILE", help="a .png/.jpg/.jpeg image or a .npy/.npz/.json array")
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:8080",
        help="the server, optionally with /v2/models/NAME (default: %(default)s)",
    )
    parser.add_argument("--model", "-m", help="the model's name (the ModelDeployment's name), unless the URL has it")
    parser.add_argument("--top", type=int, default=1, help="classes to print per row (default: %(default)s)")
    parser.add_argument(
        "--card",
        type=Path,
        metavar="MODEL_JSON",
        help="the model card (model.json of the version), for its preprocessing; default: the built-in recipes' 0..1",
    )
    parser.add_argument(
        "--invert",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="invert an image's brightness (digits are light on dark); default: when the image is mostly light",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")


def run(args: argparse.Namespace) -> int:
    from modeldeploy.tools import client  # noqa: PLC0415

    if args.top < 1:
        sys.stderr.write("modeldeploy predict: --top must be at least 1\n")
        return 2
    try:
        endpoint = client.parse_endpoint(args.url, args.model)
        meta = client.model_metadata(endpoint)
        preprocessing = None
        if args.card is not None:
            try:
                preprocessing = json.loads(args.card.read_text(encoding="utf-8")).get("preprocessing")
            except (OSError, json.JSONDecodeError, AttributeError) as err:
                raise client.PredictError(f"cannot read the model card {args.card}: {err}") from err
        batch = client.load_input(args.input, meta.inputs[0], preprocessing, args.invert)
        rows = client.classify(endpoint, meta, batch, args.top)
    except client.PredictError as err:
        sys.stderr.write(f"modeldeploy predict: {err}\n")
        return 1
    if args.json:
        result = [[{"class": c.label, "index": c.index, "probability": c.probability} for c in row] for row in rows]
        sys.stdout.write(json.dumps({"model": meta.name, "version": meta.version, "rows": result}) + "\n")
        return 0
    for number, row in enumerate(rows):
        prefix = f"row {number}: " if len(rows) > 1 else ""
        sys.stdout.write(f"{prefix}{client.format_row(row)}\n")
    return 0
