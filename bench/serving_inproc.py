"""Server work per request without a network, a load generator or a quiet machine: requests go straight into a
revision's ASGI app (its REST adapter, data plane, batcher and onnxruntime, digits CNN, V2 JSON, one sample each)
from `--concurrency` closed-loop tasks in this process.

Two ways to read it:
- natively (default): CPU seconds per request of the process and of its threads, the batcher thread's voluntary
  context switches (its wake-ups) and the model runs per request. Noisy on a shared machine, like any time.
- `--callgrind`: each revision runs twice under `valgrind --tool=callgrind` (`--requests` and twice that), and the
  difference of the instructions executed, divided by the extra requests, is the instructions per request, split
  into the event loop's thread and the others (batcher and onnxruntime). Instruction counts do not depend on what
  else the machine runs; they vary a little with how requests happen to batch (shown as runs per request).

Revisions are git revisions (their sources taken with git archive) or `.` for this working tree; they all run in
this virtualenv.

    .venv/bin/python bench/serving_inproc.py [--callgrind] [--requests 2000] [--concurrency 64] REV [REV ...]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent


def sources(revision: str, work: Path) -> str:
    """A PYTHONPATH with the program sources of `revision` first."""
    if revision == ".":
        return f"{ROOT / 'src'}:{ROOT / 'serving_image'}"
    from serving_compare import export  # noqa: PLC0415 - beside this file (on sys.path in main)

    into = work / re.sub(r"[^\w.-]", "_", revision)
    if not into.exists():
        export(revision, into)
    return f"{into / 'src'}:{into / 'serving_image'}"


def thread_stats() -> dict[str, tuple[float, int]]:
    """CPU seconds and voluntary context switches of each thread of this process, by thread name."""
    ticks = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    stats: dict[str, tuple[float, int]] = {}
    for task in Path("/proc/self/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        switches = next(
            int(line.split()[1])
            for line in (task / "status").read_text().splitlines()
            if line.startswith("voluntary_ctxt_switches")
        )
        name = names.get(int(task.name), f"native-{task.name}")
        cpu, count = stats.get(name, (0.0, 0))
        stats[name] = (cpu + (int(fields[11]) + int(fields[12])) / ticks, count + switches)
    return stats


def runs_so_far(plane: Any) -> float:
    text = plane.metrics.render().decode()
    found = re.search(r"^modeldeploy_batch_size_count\{[^}]*\} (\S+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")


async def drive(app: Any, body: bytes, requests: int, concurrency: int) -> int:
    """Send `requests` requests from `concurrency` tasks; the number answered other than 200."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    failures = 0
    left = [requests]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def client() -> None:
        nonlocal failures
        while left[0] > 0:
            left[0] -= 1
            status = [0]

            async def send(message: dict[str, Any], status: list[int] = status) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v2/models/m/infer",
                "raw_path": b"/v2/models/m/infer",
                "root_path": "",
                "query_string": b"",
                "headers": headers,
                "server": ("127.0.0.1", 8080),
                "client": ("127.0.0.1", 50000),
            }
            await app(scope, receive, send)
            failures += status[0] != 200

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return failures


def child(args: argparse.Namespace) -> int:
    """One measurement in this process, with the revision's sources on sys.path (set by the parent)."""
    os.environ.update(
        MODELDEPLOY_MODEL_DIR=args.model_dir,
        MODELDEPLOY_MODEL_NAME="m",
        MODELDEPLOY_GRPC_PORT="0",
        MODELDEPLOY_LOG_LEVEL="WARNING",
        # Nothing shed, whatever the revision's bounds: under valgrind a run takes 50x its time, and a shed request
        # costs less than a served one.
        MODELDEPLOY_MAX_QUEUE_WAIT_MS="3600000",
        MODELDEPLOY_MAX_QUEUE_BATCHES="1000000",
    )
    dataplane = importlib.import_module("modeldeploy_serving.dataplane")
    rest = importlib.import_module("modeldeploy_serving.rest")
    settings = importlib.import_module("modeldeploy_serving.settings").Settings.load()
    plane = dataplane.DataPlane(settings)
    plane.load()
    app = rest.build_app(plane)
    x = np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)
    body = orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8, 8, 1], "data": x.ravel().tolist()}]}
    )
    asyncio.run(drive(app, body, 200, args.concurrency))  # warm-up: caches, arenas, first batches
    runs_before, before, cpu_before = runs_so_far(plane), thread_stats(), time.process_time()
    failures = asyncio.run(drive(app, body, args.requests, args.concurrency))
    cpu, after, runs = time.process_time() - cpu_before, thread_stats(), runs_so_far(plane) - runs_before
    plane.stop(5)
    threads = {
        name: (cpu_after - before.get(name, (0.0, 0))[0], switches - before.get(name, (0.0, 0))[1])
        for name, (cpu_after, switches) in after.items()
    }
    print(json.dumps({"cpu": cpu, "failures": failures, "runs": runs, "threads": threads}))
    return 0


def run_child(pythonpath: str, args: argparse.Namespace, requests: int, callgrind_out: Path | None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", "--model-dir", args.model_dir]
    command += ["--requests", str(requests), "--concurrency", str(args.concurrency)]
    if callgrind_out is not None:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            "--dump-instr=no",
            f"--callgrind-out-file={callgrind_out}",
            *command,
        ]
    env = {**os.environ, "PYTHONPATH": pythonpath}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if callgrind_out is not None:
        # --separate-threads=yes: one file per thread, named <out>-<thread number>; thread 1 runs the event loop.
        per_thread = {}
        for path in callgrind_out.parent.glob(f"{callgrind_out.name}-*"):
            totals = re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.M)
            per_thread[int(path.name.rsplit("-", 1)[1])] = int(totals.group(1)) if totals else 0
            path.unlink()
        result["instructions"] = per_thread
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="*", help="git revisions, or . for this working tree")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="native runs of each revision, taking turns")
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    sys.path.insert(0, str(ROOT / "bench"))
    from serving import SERVER_CORE, load_model_builders  # noqa: PLC0415 - beside this file

    os.sched_setaffinity(0, {int(SERVER_CORE)})  # one core, as the server in bench/serving.py
    work = Path(tempfile.mkdtemp(prefix="serving-inproc-"))
    args.model_dir = str(load_model_builders().digits_cnn(work / "digits" / "model.onnx").parent)
    paths = {rev: sources(rev, work / "src") for rev in args.revisions}
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
    if args.callgrind:
        print(
            "| revision | instructions/request, all threads | event loop thread | other threads | "
            "model runs/request (N, 2N) |"
        )
        print("|---|---|---|---|---|")
        for rev, path in paths.items():
            small = run_child(path, args, args.requests, work / "cg.small")
            large = run_child(path, args, 2 * args.requests, work / "cg.large")
            extra = args.requests
            loop = (large["instructions"].get(1, 0) - small["instructions"].get(1, 0)) / extra
            total = (sum(large["instructions"].values()) - sum(small["instructions"].values())) / extra
            runs = f"{small['runs'] / args.requests:.3f}, {large['runs'] / (2 * args.requests):.3f}"
            failures = small["failures"] + large["failures"]
            note = f" ({failures} answers not 200)" if failures else ""
            print(f"| {rev}{note} | {total:,.0f} | {loop:,.0f} | {total - loop:,.0f} | {runs} |", flush=True)
        return 0
    print(
        "| revision | round | us CPU/request | event loop us | batcher us | batcher wake-ups/request | runs/request |"
    )
    print("|---|---|---|---|---|---|---|")
    for round_ in range(args.rounds):
        for rev, path in paths.items():
            result = run_child(path, args, args.requests, None)
            n = args.requests
            loop_cpu, _ = result["threads"].get("MainThread", (0.0, 0))
            batcher_cpu, wakeups = result["threads"].get("modeldeploy-batcher", (0.0, 0))
            note = f" ({result['failures']} answers not 200)" if result["failures"] else ""
            print(
                f"| {rev}{note} | {round_ + 1} | {result['cpu'] / n * 1e6:.1f} | {loop_cpu / n * 1e6:.1f} | "
                f"{batcher_cpu / n * 1e6:.1f} | {wakeups / n:.3f} | {result['runs'] / n:.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
