"""Benchmark of the inference server: throughput and p50/p99 latency at concurrency 1, 8 and 64 (one-sample
requests, wrk), idle RSS and start-to-ready time, for two models, against the floor (onnxruntime in-process) and a
naive FastAPI handler that calls onnxruntime per request (same uvicorn), all measured in the same run.

Each system gets the same request bodies in two formats: V2 JSON, and the binary tensor extension (a JSON header,
then the raw FP32 input), which is what a client sending a 3072-value image would use: decoding 59 kB of JSON
numbers costs about a third of what the heavy model's inference does. Answers are JSON in both.

The server (and the baseline) is pinned to core 0, wrk to core 1; onnxruntime uses one intra-op thread everywhere.
All traffic goes to 127.0.0.1. On a shared machine numbers move between runs: compare the ratios of one run, and
the "per server CPU second" ratios, which other load on the server's core does not skew in favour of the server
with more busy threads (the naive handler has one, modeldeploy two: event loop and batcher).

    .venv/bin/python bench/serving.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SERVER_CORE, CLIENT_CORE = "0", "1"
CONCURRENCY = (1, 8, 64)


def load_model_builders() -> Any:
    """The tests' ONNX builders (tests/serving/onnx_models.py): the benchmark serves the same models."""
    path = ROOT / "tests" / "serving" / "onnx_models.py"
    spec = importlib.util.spec_from_file_location("serving_onnx_models", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    non200: int
    per_cpu_second: float
    """Requests answered per CPU second that the server process used: on a shared machine a server with two busy
    threads gets more of the core than a one-thread server does, so compare this ratio too."""


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    url: str
    ready_seconds: float
    idle_rss_mb: float
    ready_cpu_seconds: float
    """CPU time the process had used when it became ready: what start-up costs, whatever else the core runs."""


def start(command: list[str], port: int, env: dict[str, str]) -> Started:
    """Start a server pinned to the server core; time until its readiness endpoint says 200."""
    began = time.perf_counter()
    process = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, *command],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=1) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited with {process.returncode}")
            try:
                if client.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.005)  # polling a child we do not control; 5 ms is the resolution of start-to-ready
    ready = time.perf_counter() - began
    ready_cpu = cpu_seconds(process)
    time.sleep(1.0)  # let start-up garbage settle before reading the idle RSS
    return Started(process, url, ready, rss_mb(process), ready_cpu)


def stop(started: Started) -> None:
    started.process.terminate()
    try:
        started.process.wait(30)
    except subprocess.TimeoutExpired:
        started.process.kill()


@dataclass(frozen=True)
class Body:
    """A request body as wrk sends it: JSON, or the binary tensor extension (a JSON header of `header_length`
    bytes, then the raw tensor)."""

    path: Path
    header_length: int | None = None


def write_bodies(work: Path, name: str, x: np.ndarray[Any, Any]) -> dict[str, Body]:
    """The same one-sample request in both formats; output stays JSON in both."""
    tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    json_body = work / f"{name}.json"
    json_body.write_bytes(orjson.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}))
    raw = x.astype("<f4").tobytes()
    header = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]})
    binary_body = work / f"{name}.bin"
    binary_body.write_bytes(header + raw)
    return {"JSON": Body(json_body), "binary": Body(binary_body, len(header))}


def rss_mb(process: subprocess.Popen[bytes]) -> float:
    pages = int(Path(f"/proc/{process.pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def cpu_seconds(process: subprocess.Popen[bytes]) -> float:
    """User plus system CPU time of the process, all threads."""
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, body: Body, connections: int, seconds: int, server: subprocess.Popen[bytes]) -> Run:
    cpu_before = cpu_seconds(server)
    output = subprocess.run(
        [
            "taskset",
            "-c",
            CLIENT_CORE,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            str(ROOT / "bench" / "serving.lua"),
            url,
        ],
        env={**os.environ, "BODY_FILE": str(body.path), "HEADER_LENGTH": str(body.header_length or "")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = int(re.search(r"P50_US (\d+)", output).group(1))  # type: ignore[union-attr]
    p99 = int(re.search(r"P99_US (\d+)", output).group(1))  # type: ignore[union-attr]
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non200 = (int(failed.group(1)) if failed else 0) + (sum(int(g) for g in errors.groups()) if errors else 0)
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    used = cpu_seconds(server) - cpu_before
    return Run(rps, p50 / 1000, p99 / 1000, non200, total / used if used > 0 else float("nan"))


def batch_stats(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    total = float(re.search(r"^modeldeploy_batch_size_sum\{[^}]*\} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(r"^modeldeploy_batch_size_count\{[^}]*\} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return total, count


def floor(model: Path, sample_shape: tuple[int, ...], batch: int, seconds: float = 2.0) -> tuple[float, float]:
    """onnxruntime in this process on the server core, one intra-op thread: samples per second at `batch`, and
    samples per CPU second of this process."""
    import onnxruntime as ort  # noqa: PLC0415 - only the floor needs it in this process

    os.sched_setaffinity(0, {int(SERVER_CORE)})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch, *sample_shape), dtype=np.float32)
    session.run(None, {"input": x})
    runs = 0
    began, cpu_began = time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - began) < seconds:
        session.run(None, {"input": x})
        runs += 1
    cpu = time.process_time() - cpu_began
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return runs * batch / elapsed, runs * batch / cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=6, help="length of each wrk run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    builders = load_model_builders()
    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    models = {
        "digits-cnn": (builders.digits_cnn(work / "digits" / "model.onnx"), (8, 8, 1)),
        "heavy-cnn": (builders.heavy_cnn(work / "heavy" / "model.onnx"), (32, 32, 3)),
    }
    rows: list[str] = []
    summary: list[str] = []
    for name, (model, sample_shape) in models.items():
        x = np.random.default_rng(0).random((1, *sample_shape), dtype=np.float32)
        bodies = write_bodies(work, name, x)
        results: dict[tuple[str, str], dict[int, Run]] = {}
        mean_batch: dict[str, float] = {}
        port = free_port()
        server = start(
            [
                str(BIN / "modeldeploy"),
                "serve",
                "--model-dir",
                str(model.parent),
                "--model-name",
                "m",
                "--host",
                "127.0.0.1",
                "--http-port",
                str(port),
                "--grpc-port",
                str(free_port()),
            ],
            port,
            {"MODELDEPLOY_LOG_LEVEL": "WARNING"},
        )
        try:
            for fmt, body in bodies.items():
                results[("modeldeploy", fmt)] = {}
                for conns in CONCURRENCY:
                    before = batch_stats(server.url)
                    results[("modeldeploy", fmt)][conns] = wrk(
                        f"{server.url}/v2/models/m/infer", body, conns, args.seconds, server.process
                    )
                    after = batch_stats(server.url)
                    if conns == 64:
                        rows_run = after[1] - before[1]
                        mean_batch[fmt] = (after[0] - before[0]) / rows_run if rows_run else 1.0
            loaded_rss = rss_mb(server.process)
        finally:
            stop(server)
        port = free_port()
        baseline = start(
            [
                str(BIN / "uvicorn"),
                "--app-dir",
                str(ROOT / "bench"),
                "serving_baseline:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            port,
            {"MODEL": str(model)},
        )
        try:
            for fmt, body in bodies.items():
                results[("naive FastAPI", fmt)] = {
                    conns: wrk(f"{baseline.url}/v2/models/m/infer", body, conns, args.seconds, baseline.process)
                    for conns in CONCURRENCY
                }
        finally:
            stop(baseline)
        floors = {1: floor(model, sample_shape, 1)}
        for batch in {max(1, round(b)) for b in mean_batch.values()}:
            floors[batch] = floor(model, sample_shape, batch)
        for fmt in bodies:
            for system in ("modeldeploy", "naive FastAPI"):
                for conns, run in results[(system, fmt)].items():
                    latency = f"{run.p50_ms:.2f} | {run.p99_ms:.2f}"
                    rows.append(
                        f"| {name} | {system} | {fmt} | {conns} | {run.rps:,.0f} | {run.per_cpu_second:,.0f} | "
                        f"{latency} | {run.non200} |"
                    )
        for batch, samples in sorted(floors.items()):
            rows.append(
                f"| {name} | onnxruntime in-process, batch {batch} | - | - | {samples[0]:,.0f} | {samples[1]:,.0f} "
                "| | | |"
            )
        for fmt in bodies:
            ours, naive = results[("modeldeploy", fmt)][64], results[("naive FastAPI", fmt)][64]
            same_batch = max(1, round(mean_batch[fmt]))
            summary.append(
                f"- {name}, {fmt}: at concurrency 64 modeldeploy/naive throughput {ours.rps / naive.rps:.2f}x "
                f"(goal >= 2; per server CPU second {ours.per_cpu_second / naive.per_cpu_second:.2f}x), "
                f"p99 {ours.p99_ms:.2f} ms vs {naive.p99_ms:.2f} ms (goal: no worse); mean batch "
                f"{mean_batch[fmt]:.1f} rows; modeldeploy / in-process onnxruntime at batch {same_batch}: "
                f"{ours.rps / floors[same_batch][0]:.0%} (goal >= 70% on the heavy model; per CPU second "
                f"{ours.per_cpu_second / floors[same_batch][1]:.0%})"
            )
        summary.append(
            f"- {name}: idle RSS {server.idle_rss_mb:.0f} MB (goal <= 100; naive {baseline.idle_rss_mb:.0f} MB; "
            f"{loaded_rss:.0f} MB after the load runs); start to ready {server.ready_seconds:.2f} s, "
            f"{server.ready_cpu_seconds:.2f} CPU-s (goal <= 2; naive {baseline.ready_seconds:.2f} s, "
            f"{baseline.ready_cpu_seconds:.2f} CPU-s)"
        )
    print(
        f"command: {' '.join([Path(sys.executable).name, *sys.argv])} (server on core {SERVER_CORE}, "
        f"wrk on core {CLIENT_CORE}, {args.seconds} s per run, one-sample requests)\n"
    )
    print(
        "| model | system | request format | concurrency | req/s (samples/s) | req per server CPU-s | p50 ms | p99 ms "
        "| non-200 or socket errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("\n".join(summary))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
