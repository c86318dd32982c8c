"""Object storage (spec.storage.uri): how long a serving pod's fetch takes, and what it adds to the serving image.

Run: .venv/bin/python bench/objectstore.py [--runs 5] [--images BEFORE AFTER]

1. A real S3 server (versitygw, started here on 127.0.0.1 over a temporary directory) gets two committed versions:
   a digits-sized model (the tests' digits CNN, ~50 KB) and a 30 MB one (a 28-layer 512x512 MLP). Each is fetched
   `--runs` times by `modeldeploy fetch`, the init container's command, as a new process (Python start-up, imports,
   card, download, sha256 of every byte, rename), and by the library call alone. Medians and extremes are printed.
2. With --images, the sizes of two serving images (e.g. main's modeldeploy/serving:0.1.0 and this branch's) and the
   obstore package's size inside the second: what the fetch costs every node that pulls the image.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_version(root: Path, name: str, build: Any) -> Path:
    """A committed-to-be version: the model, and a card whose `files` has its size and sha256."""
    import hashlib  # noqa: PLC0415
    import json  # noqa: PLC0415

    models = _module(ROOT / "tests" / "serving" / "onnx_models.py", "bench_onnx_models")
    version_dir = root / name / "v000000000001"
    build(models, version_dir / "model.onnx")
    card = models.write_card(version_dir, name)
    data = (version_dir / "model.onnx").read_bytes()
    card["files"] = {"model.onnx": {"sizeBytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    (version_dir / "model.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
    return version_dir


def timed(runs: int, call: Any) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def describe(times: list[float]) -> str:
    return f"median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f})"


def fetch_figures(runs: int) -> None:
    from modeldeploy import objectstore  # noqa: PLC0415
    from modeldeploy.cluster import objectstore as store  # noqa: PLC0415
    from modeldeploy.cluster.local import free_ports  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="bench-objectstore-") as tmp_name:
        tmp = Path(tmp_name)
        with store.standalone(tmp / "objects", free_ports(1)[0]) as info:
            env = {**os.environ, **store.client_env(info)}
            os.environ.update(store.client_env(info))
            root = objectstore.parse_uri("s3://models/bench")
            cases = {
                "digits": lambda m, p: m.digits_cnn(p),
                "mlp-30mb": lambda m, p: m.slow_mlp(p, layers=28, width=512),
            }
            print(f"versitygw on 127.0.0.1:{info['port']}, {runs} runs each")
            print(f"{'model':10} {'bytes':>10}  {'modeldeploy fetch (new process)':44}  library call (fetch_version)")
            for name, build in cases.items():
                local = make_version(tmp / "out", name, build)
                objectstore.put_version(local, root, name, local.name)
                size = (local / "model.onnx").stat().st_size
                dest = tmp / "pod"
                command = [sys.executable, "-m", "modeldeploy.cli", "fetch", "--uri", str(root), "--model", name]
                command += ["--version", local.name, "--dest", str(dest), "--termination-log", str(tmp / "log")]

                def cli(command: list[str] = command) -> None:
                    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)

                def library(name: str = name, version: str = local.name, dest: Path = dest) -> None:
                    objectstore.fetch_version(root, name, version, dest, max_bytes=2**31)

                cli_times = timed(runs, cli)
                lib_times = timed(runs, library)
                shutil.rmtree(dest, ignore_errors=True)
                print(f"{name:10} {size:>10}  {describe(cli_times):44}  {describe(lib_times)}")


def image_figures(before: str, after: str) -> None:
    def size(image: str) -> int:
        out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image],
                             capture_output=True, text=True, check=True, timeout=60).stdout  # fmt: skip
        return int(out.strip())

    obstore_kb = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "du", after, "-sk", "/opt/venv/lib/python3.11/site-packages/obstore"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.split()[0]  # fmt: skip
    b, a = size(before), size(after)
    print(f"serving image {before}: {b / 1e6:.1f} MB; {after}: {a / 1e6:.1f} MB; difference {(a - b) / 1e6:+.1f} MB")
    print(f"obstore installed in {after}: {int(obstore_kb) / 1024:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", nargs=2, metavar=("BEFORE", "AFTER"), help="two serving images to compare")
    args = parser.parse_args()
    print(f"command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")
    fetch_figures(args.runs)
    if args.images:
        image_figures(*args.images)


if __name__ == "__main__":
    main()
