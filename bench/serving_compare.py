"""The inference server at two git revisions, measured in one run: the same wrk loads as bench/serving.py, the two
servers taking turns (A, B, B, A, ...) so that the machine's other load falls on both alike. Prints each pair and
the ratios B/A of throughput and of requests per server CPU second (the one to trust on a shared machine).

The server of revision A runs from that revision's sources (git archive into a temporary directory, put first on
PYTHONPATH); B likewise with --head, else this working tree. `--base X --head X` shows the noise of the machine.
All traffic goes to 127.0.0.1; each run is bounded by --seconds.

    .venv/bin/python bench/serving_compare.py --base HEAD~1 [--head HEAD] [--seconds 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def export(revision: str, into: Path) -> Path:
    """The program sources of `revision`, as a PYTHONPATH."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src/modeldeploy", "serving_image/modeldeploy_serving"],
        capture_output=True,
        check=True,
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="revision A")
    parser.add_argument("--head", help="revision B (default: the working tree, as installed)")
    parser.add_argument("--seconds", type=int, default=4, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="turns each server gets per load")
    args = parser.parse_args()
    bench = load("serving_bench", ROOT / "bench" / "serving.py")
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="serving-compare-"))
    base = export(args.base, work / "base")
    head = export(args.head, work / "head") if args.head else None
    model = bench.load_model_builders().digits_cnn(work / "digits" / "model.onnx")
    x = np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)
    bodies = bench.write_bodies(work, "digits", x)
    code = "import sys; from modeldeploy.cli import main; sys.exit(main())"
    servers = {}
    b_path = f"{head / 'src'}:{head / 'serving_image'}" if head else ""
    for label, pythonpath in (("A", f"{base / 'src'}:{base / 'serving_image'}"), ("B", b_path)):
        port = bench.free_port()
        command = [sys.executable, "-c", code, "serve", "--model-dir", str(model.parent), "--model-name", "m"]
        command += ["--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", "0"]
        env = {"MODELDEPLOY_LOG_LEVEL": "WARNING", **({"PYTHONPATH": pythonpath} if pythonpath else {})}
        servers[label] = bench.start(command, port, env)
    b_name = args.head or "the working tree"
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}; A = {args.base}, B = {b_name}\n")
    print("| format | concurrency | A req/s | B req/s | A req/CPU-s | B req/CPU-s | B/A req/s | B/A req/CPU-s |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        for fmt, body in bodies.items():
            for conns in (1, 64):
                runs: dict[str, list[Any]] = {"A": [], "B": []}
                for round_ in range(args.rounds):
                    order = ("A", "B") if round_ % 2 == 0 else ("B", "A")  # ABBA: whoever goes first is no edge
                    for label in order:
                        server = servers[label]
                        url = f"{server.url}/v2/models/m/infer"
                        runs[label].append(bench.wrk(url, body, conns, args.seconds, server.process))
                rps = {label: statistics.mean(r.rps for r in done) for label, done in runs.items()}
                cpu = {label: statistics.mean(r.per_cpu_second for r in done) for label, done in runs.items()}
                print(
                    f"| {fmt} | {conns} | {rps['A']:,.0f} | {rps['B']:,.0f} | {cpu['A']:,.0f} | {cpu['B']:,.0f} | "
                    f"{rps['B'] / rps['A']:.3f} | {cpu['B'] / cpu['A']:.3f} |"
                )
    finally:
        for server in servers.values():
            bench.stop(server)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
