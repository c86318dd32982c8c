"""Overload benchmark of the inference server: closed-loop load at about 4x its capacity with a mix of small and
maximum-size requests. Reports the shed rate (503), the p99 latency of the admitted requests against the
unloaded p99 of the same mix, whether the server stayed up and its peak RSS, and how long after the load stops it
serves normally again.

Phases, one server (heavy CNN, binary tensors, pinned to core 0; the load generator on core 1):
1. unloaded: one client, the mix, `--unloaded-seconds`: p50/p99 per kind of request;
2. capacity: `--capacity-clients` clients, the mix: admitted requests per second when saturated;
3. overload: `--overload-clients` closed-loop clients (shed requests come back at once and are sent again, or after
   the 503's Retry-After with `--honour-retry-after`; `--offered 4` paces them to 4x the capacity of phase 2 in
   all; the offered rate is reported against the capacity: the goal is at least 4x), `--seconds`;
4. recovery: from the moment the load stops, one small request after another: the time until one is answered
   200 within twice the unloaded p99 of small requests.

    .venv/bin/python bench/serving_overload.py [--seconds 60] [-- extra options of modeldeploy serve]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import BIN, CLIENT_CORE, SERVER_CORE, cpu_seconds, free_port, load_model_builders, start, stop

SMALL_ROWS = 1
SAMPLE = (32, 32, 3)


@dataclass
class Tally:
    latencies: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    errors: int = 0

    def add(self, kind: str, status: int, seconds: float) -> None:
        self.latencies.setdefault((kind, status), []).append(seconds)

    def count(self, status: int | None = None) -> int:
        return sum(len(v) for (_, s), v in self.latencies.items() if status is None or s == status)

    def admitted(self, kind: str | None = None) -> list[float]:
        return [x for (k, s), v in self.latencies.items() if s == 200 and kind in (None, k) for x in v]


def request_bytes(port: int, rows: int) -> bytes:
    x = np.random.default_rng(rows).random((rows, *SAMPLE), dtype=np.float32)
    raw = x.astype("<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    head = (
        f"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(header) + len(raw)}\r\n\r\n"
    )
    return head.encode() + header + raw


async def one_client(
    port: int,
    bodies: dict[str, bytes],
    mix: list[str],
    until: float,
    tally: Tally,
    *,
    seed: int,
    polite: bool,
    interval: float = 0.0,
) -> None:
    """Keep-alive HTTP/1.1 on one connection: send, read the whole answer, send the next (closed loop). `polite`:
    after a 503, wait the Retry-After it names before sending again, as a well-behaved client (tritonclient's retry,
    a gateway) does. `interval`: send at most one request per interval (from a random phase), the next at once when
    an answer came later than its slot: a closed loop with a set offered rate."""
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    slot = time.perf_counter() + rng.random() * interval
    try:
        while time.perf_counter() < until:
            if interval:
                await asyncio.sleep(max(0.0, slot - time.perf_counter()))
                slot = max(slot + interval, time.perf_counter())
            kind = rng.choice(mix)
            started = time.perf_counter()
            writer.write(bodies[kind])
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            close = False
            retry_after = 0.0
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                elif line.startswith(b"connection:") and b"close" in line:
                    close = True
                elif line.startswith(b"retry-after:"):
                    retry_after = float(line.split(b":")[1])
            await reader.readexactly(length)
            tally.add(kind, status, time.perf_counter() - started)
            if polite and status == 503 and retry_after:
                await asyncio.sleep(min(retry_after, max(0.0, until - time.perf_counter())))
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (ConnectionError, asyncio.IncompleteReadError):
        tally.errors += 1
    finally:
        writer.close()


async def load(
    port: int,
    bodies: dict[str, bytes],
    mix: list[str],
    clients: int,
    seconds: float,
    *,
    polite: bool = False,
    rate: float = 0.0,
) -> Tally:
    """`clients` closed-loop clients for `seconds`; `rate`: requests per second offered by them all at most."""
    tally = Tally()
    until = time.perf_counter() + seconds
    interval = clients / rate if rate else 0.0
    await asyncio.gather(
        *(one_client(port, bodies, mix, until, tally, seed=i, polite=polite, interval=interval) for i in range(clients))
    )
    return tally


async def recovery(port: int, small: bytes, bound: float, limit: float = 30.0) -> float:
    """Seconds from now until a small request is answered 200 within `bound` seconds."""
    began = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() - began < limit:
            sent = time.perf_counter()
            writer.write(small)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if b"content-length" in line)
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200") and time.perf_counter() - sent <= bound:
                return time.perf_counter() - began
    finally:
        writer.close()
    return float("inf")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Local:
    """The server as a local process pinned to the server core."""

    where = ""

    def __init__(self, command: list[str], port: int) -> None:
        self.started = start(command, port, {})
        self.idle_mb = self.started.idle_rss_mb

    def cpu(self) -> float:
        return cpu_seconds(self.started.process)

    def alive(self) -> bool:
        return self.started.process.poll() is None

    def peak_mb(self) -> float:
        return peak_rss_mb(self.started.process.pid)

    def stop(self) -> None:
        stop(self.started)


class Container:
    """The serving image under `docker run --memory`, pinned to the server core; memory and CPU from its cgroup
    (v1, cgroupfs driver), restarts and OOM kills from `docker inspect`."""

    def __init__(self, image: str, model_dir: Path, port: int, args: argparse.Namespace) -> None:
        for path in (model_dir, *model_dir.parents[:2]):
            path.chmod(0o755)  # the image runs as a non-root user
        self.where = f" (container, --memory {args.memory})"
        self.id = subprocess.run(
            [
                "docker",
                "run",
                "-d",
                f"--memory={args.memory}",
                f"--memory-swap={args.memory}",
                f"--cpuset-cpus={SERVER_CORE}",
                "-p",
                f"127.0.0.1:{port}:8080",
                "-v",
                f"{model_dir}:/models/m:ro",
                "-e",
                "MODELDEPLOY_MODEL_DIR=/models/m",
                "-e",
                "MODELDEPLOY_MODEL_NAME=m",
                "-e",
                "MODELDEPLOY_GRPC_PORT=0",
                "-e",
                f"MODELDEPLOY_MAX_REQUEST_ROWS={args.large_rows}",
                image,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                ready = subprocess.run(
                    ["curl", "-sf", f"http://127.0.0.1:{port}/v2/health/ready"], capture_output=True, check=False
                )
            except OSError:
                break
            if ready.returncode == 0:
                break
            time.sleep(0.1)  # polling a container we do not control
        self.idle_mb = self._read("memory", "memory.usage_in_bytes") / 2**20

    def _read(self, controller: str, name: str) -> int:
        return int(Path(f"/sys/fs/cgroup/{controller}/docker/{self.id}/{name}").read_text())

    def cpu(self) -> float:
        return self._read("cpuacct", "cpuacct.usage") / 1e9

    def peak_mb(self) -> float:
        return self._read("memory", "memory.max_usage_in_bytes") / 2**20

    def alive(self) -> bool:
        state = json.loads(subprocess.run(["docker", "inspect", self.id], capture_output=True, check=True).stdout)
        info = state[0]["State"]
        return bool(info["Running"] and not info["OOMKilled"] and state[0]["RestartCount"] == 0)

    def stop(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.id], capture_output=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="length of the overload phase")
    parser.add_argument("--unloaded-seconds", type=float, default=10)
    parser.add_argument("--capacity-clients", type=int, default=8)
    parser.add_argument("--overload-clients", type=int, default=128, help="closed-loop clients of the overload phase")
    parser.add_argument("--large-rows", type=int, default=64, help="rows of the maximum-size request")
    parser.add_argument(
        "--honour-retry-after",
        action="store_true",
        help="overload clients wait the Retry-After of a 503 before sending again (default: resend at once)",
    )
    parser.add_argument(
        "--offered",
        type=float,
        default=0.0,
        help="overload clients offer this many times the measured capacity at most, in requests per second (each "
        "client paced; default: as fast as answers come back)",
    )
    parser.add_argument("--large-share", type=float, default=0.1, help="share of maximum-size requests in the mix")
    parser.add_argument(
        "--image",
        help="run the server as this serving image under `docker run --memory 512m` (e.g. modeldeploy/serving:TAG) "
        "instead of a local process (the options after -- apply to a local process only)",
    )
    parser.add_argument("--memory", default="512m", help="the container's memory limit with --image")
    parser.add_argument("serve_args", nargs="*", help="extra options of modeldeploy serve (after --)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(CLIENT_CORE)})
    work = Path(tempfile.mkdtemp(prefix="serving-overload-"))
    model = load_model_builders().heavy_cnn(work / "heavy" / "model.onnx")
    port = free_port()
    command = [
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
        "0",
        "--max-request-rows",
        str(args.large_rows),
        *args.serve_args,
    ]
    server: Local | Container = Container(args.image, model.parent, port, args) if args.image else Local(command, port)
    bodies = {"small": request_bytes(port, SMALL_ROWS), "large": request_bytes(port, args.large_rows)}
    tenths = round(args.large_share * 10)
    mix = ["large"] * tenths + ["small"] * (10 - tenths)
    try:
        unloaded = asyncio.run(load(port, bodies, mix, 1, args.unloaded_seconds))
        capacity = asyncio.run(load(port, bodies, mix, args.capacity_clients, 10))
        capacity_rps = capacity.count(200) / 10
        clients = args.overload_clients
        cpu_before = server.cpu()
        rate = args.offered * capacity_rps
        overload = asyncio.run(
            load(port, bodies, mix, clients, args.seconds, polite=args.honour_retry_after, rate=rate)
        )
        overload_cpu = server.cpu() - cpu_before
        bound = max(pct(unloaded.admitted("small"), 99) / 1000 * 2, 0.05)
        recovered = asyncio.run(recovery(port, bodies["small"], bound))
        alive = server.alive()
        peak = server.peak_mb()
    finally:
        server.stop()
    offered = overload.count() / args.seconds
    shed = overload.count(503)
    other = overload.count() - overload.count(200) - shed
    p99_unloaded = pct(unloaded.admitted(), 99)
    admitted_rows = len(overload.admitted("small")) * SMALL_ROWS + len(overload.admitted("large")) * args.large_rows
    p99_admitted = pct(overload.admitted(), 99)
    lines = [
        "| phase | clients | requests/s answered 200 | 503/s | other | p50 ms | p99 ms | p99 small ms | p99 large ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, tally, n, seconds in (
        ("unloaded", unloaded, 1, args.unloaded_seconds),
        ("capacity", capacity, args.capacity_clients, 10),
        ("overload", overload, clients, args.seconds),
    ):
        admitted = tally.admitted()
        small, large = tally.admitted("small"), tally.admitted("large")
        lines.append(
            f"| {name} | {n} | {tally.count(200) / seconds:.1f} | {tally.count(503) / seconds:.1f} | "
            f"{tally.count() - tally.count(200) - tally.count(503) + tally.errors} | {pct(admitted, 50):.1f} | "
            f"{pct(admitted, 99):.1f} | {pct(small, 99):.1f} | {pct(large, 99):.1f} |"
        )
    lines += [
        "",
        f"- offered load during overload: {offered:.1f} requests/s = {offered / capacity_rps:.1f}x the capacity "
        f"({capacity_rps:.1f}/s admitted at {args.capacity_clients} clients), "
        f"{offered / max(overload.count(200) / args.seconds, 1e-9):.1f}x what was admitted under overload "
        "(goal >= 4x)",
        f"- shed: {shed} of {overload.count()} requests ({shed / max(overload.count(), 1):.0%}) with 503; "
        f"other non-200 answers: {other}; connection errors: {overload.errors}",
        f"- p99 of admitted requests under overload {p99_admitted:.1f} ms vs unloaded p99 {p99_unloaded:.1f} ms: "
        f"{p99_admitted / p99_unloaded:.2f}x (goal <= 3x)",
        f"- admitted under overload: {overload.count(200) / args.seconds:.1f}/s "
        f"({overload.count(200) / args.seconds / capacity_rps:.0%} of capacity; server CPU {overload_cpu:.1f} s "
        f"in {args.seconds:.0f} s); rows answered {admitted_rows / args.seconds:.0f}/s, "
        f"{admitted_rows / max(overload_cpu, 1e-9):.0f} per server CPU second; large requests "
        f"{len(overload.admitted('large')) / max(overload.count(200), 1):.0%} of those admitted "
        f"({args.large_share:.0%} of those sent)",
        f"- recovery: a small request answered 200 within {bound * 1000:.0f} ms (2x the unloaded small p99, at "
        f"least 50 ms) {recovered:.2f} s after the load stopped (goal <= 2 s)",
        f"- server alive after the run (no restart, no OOM kill): {alive}; peak memory {peak:.0f} MB (VmHWM, or "
        f"the container cgroup's max usage); idle at start "
        f"{server.idle_mb:.0f} MB{server.where}",
        f"- clients after a 503: {'wait its Retry-After' if args.honour_retry_after else 'resend at once'}; "
        + (f"paced to {rate:.0f} requests/s in all ({args.offered:g}x the capacity)" if rate else "not paced"),
        f"- mix: {args.large_share:.0%} requests of {args.large_rows} rows, the rest {SMALL_ROWS} row; heavy CNN "
        f"(0.1 GFLOP a row), binary tensors; median unloaded latency small "
        f"{statistics.median(unloaded.admitted('small')) * 1000:.1f} ms",
        "",
        f"    {' '.join(sys.argv)}",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
