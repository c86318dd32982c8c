"""Sizes of the built images, and the serving image's start-to-ready time (docker run to /v2/health/ready 200).

Run: make images && .venv/bin/python bench/images.py [--runs 5] [--model-dir DIR]
Goals: serving image <= 400 MB, ready <= 3 s. The serving container runs as in its pod (non-root, read-only root
filesystem, /tmp writable) on the host network bound to a loopback port. Without --model-dir it serves a small
digits-shaped ONNX model written here (64 inputs -> 10 classes, dynamic batch), so no training is needed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

SIZE_GOAL_MB = 400
READY_GOAL_S = 3.0
IMAGES = ("training", "serving", "operator")


def docker(*args: str, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=120)
    if check and result.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def image_tag() -> str:
    for line in Path(__file__).resolve().parents[1].joinpath("pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return os.environ.get("IMAGE_TAG") or line.split("=", 1)[1].strip().strip('"')
    raise SystemExit("pyproject.toml has no version")


def image_size_mb(image: str) -> float | None:
    out = docker("image", "inspect", "--format", "{{.Size}}", image, check=False)
    return int(out) / 1e6 if out else None


def write_small_model(directory: Path) -> Path:
    import numpy as np  # noqa: PLC0415
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(size=(64, 10)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"]),
        ],
        "digits-like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, directory / "model.onnx")
    directory.chmod(0o755)
    (directory / "model.onnx").chmod(0o644)
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def start_to_ready(image: str, model_dir: Path, timeout: float = 60) -> float:
    port = free_port()
    name = f"modeldeploy-bench-serving-{os.getpid()}-{port}"
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    docker(
        "run", "--detach", "--name", name, "--user", "65532:65532", "--read-only", "--tmpfs", "/tmp",
        "--network", "host", "--volume", f"{model_dir}:/model:ro",
        "--env", "MODELDEPLOY_MODEL_DIR=/model", "--env", "MODELDEPLOY_HOST=127.0.0.1",
        "--env", f"MODELDEPLOY_HTTP_PORT={port}", "--env", "MODELDEPLOY_GRPC_PORT=0", image,
    )  # fmt: skip
    try:
        while not is_ready(url):
            if time.monotonic() - start > timeout:
                raise SystemExit(f"{image} not ready within {timeout:g} s:\n{docker('logs', name, check=False)}")
            if docker("inspect", "--format", "{{.State.Running}}", name) != "true":
                raise SystemExit(f"{image} exited before ready:\n{docker('logs', name, check=False)}")
            time.sleep(0.02)
        return time.monotonic() - start
    finally:
        docker("rm", "--force", name, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model-dir", type=Path, help="a version directory to serve (default: a small model)")
    args = parser.parse_args()
    prefix, tag = os.environ.get("IMAGE_PREFIX", "modeldeploy"), image_tag()

    print(f"{'image':36} {'size MB':>8}")
    for name in ("python:3.11-slim", *(f"{prefix}/{n}:{tag}" for n in IMAGES)):
        size = image_size_mb(name)
        print(f"{name:36} {'absent' if size is None else f'{size:8.0f}':>8}")
    serving = f"{prefix}/serving:{tag}"
    size = image_size_mb(serving)
    if size is None:
        raise SystemExit(f"{serving} is not built: run 'make images'")

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir.resolve() if args.model_dir else write_small_model(Path(tmp) / "model")
        Path(tmp).chmod(0o755)
        times = []
        for i in range(args.runs):
            times.append(start_to_ready(serving, model_dir))
            print(f"run {i + 1}: serving start-to-ready {times[-1]:.2f} s")
    median = statistics.median(times)
    print(
        f"serving image {size:.0f} MB (goal <= {SIZE_GOAL_MB}: {'met' if size <= SIZE_GOAL_MB else 'MISSED'}); "
        f"start-to-ready median {median:.2f} s, max {max(times):.2f} s "
        f"(goal <= {READY_GOAL_S:g}: {'met' if median <= READY_GOAL_S else 'MISSED'})"
    )
    model = f" --model-dir {args.model_dir}" if args.model_dir else ""
    print(f"command: .venv/bin/python bench/images.py --runs {args.runs}{model}")


if __name__ == "__main__":
    main()
