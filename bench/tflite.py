"""Benchmark of spec.compression.formats [onnx, tflite] on the digits CNN: size and held-out accuracy of every TFLite
variant beside the ONNX candidates, and what tflite adds to the training program's time.

The training program runs in this process the way the Job runs it (`run_job`), alternately with formats [onnx] and
[onnx, tflite] on the same spec, each run into a fresh artifact root (no reuse), so that both see the same machine
load; the first pair warms TensorFlow up (graph tracing) and is not counted.

    .venv/bin/python bench/tflite.py [--epochs 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

COMMAND = ".venv/bin/python bench/tflite.py"


def manifest(epochs: int, formats: list[str]) -> dict[str, Any]:
    from modeldeploy.spec import normalize  # noqa: PLC0415

    return normalize(
        {
            "apiVersion": "modeldeploy.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "digits"},
            "spec": {
                "training": {"recipe": "cnn", "dataset": {"builtin": "digits"}, "epochs": epochs},
                "compression": {"formats": formats},
            },
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="counted runs of each kind, after one warm-up pair")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from modeldeploy_training.job import Options, run_job  # noqa: PLC0415

    from modeldeploy import contracts  # noqa: PLC0415  (TensorFlow loads with the job, not at import)

    durations: dict[str, list[float]] = {"onnx": [], "onnx+tflite": []}
    tflite_step: list[float] = []
    card: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tflite-") as tmp:
        for round_ in range(args.rounds + 1):
            for kind, formats in (("onnx", ["onnx"]), ("onnx+tflite", ["onnx", "tflite"])):
                root = Path(tmp) / f"{kind}-{round_}"
                report = run_job(manifest(args.epochs, formats), Options(output=root, data_root=root))
                if round_ == 0:
                    continue
                durations[kind].append(float(report["durationSeconds"]))
                if kind == "onnx+tflite":
                    card = contracts.read_model_card(root / str(report["path"])) or {}
                    tflite_step.append(float(card["tflite"]["durationSeconds"]))

    metrics = card["metrics"]
    print(
        f"digits CNN, {args.epochs} epochs, accuracy on {metrics['evaluatedOn']} held-out samples "
        f"(source model {metrics['sourceAccuracy']:.4f})"
    )
    print(f"{'format':<7} {'variant':<15} {'size (B)':>9} {'accuracy':>9}  chosen")
    rows = [("onnx", c, card["compression"]["chosen"]) for c in card["compression"]["candidates"]]
    rows += [("tflite", c, card["tflite"].get("chosen")) for c in card["tflite"]["candidates"]]
    for fmt, c, chosen in rows:
        acc = f"{c['accuracy']:.4f}" if c["accuracy"] is not None else "-"
        print(f"{fmt:<7} {c['name']:<15} {c['sizeBytes']:>9} {acc:>9}  {'*' if c['name'] == chosen else ''}")
    base = statistics.median(durations["onnx"])
    both = statistics.median(durations["onnx+tflite"])
    print(
        f"training program, median of {args.rounds} interleaved runs each: formats [onnx] {base:.1f} s, "
        f"[onnx, tflite] {both:.1f} s: +{both - base:.1f} s ({both / base:.2f}x); "
        f"the TFLite step itself (4 conversions + interpreter accuracy) median {statistics.median(tflite_step):.1f} s"
    )
    print(f"command: {COMMAND} --epochs {args.epochs} --rounds {args.rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
