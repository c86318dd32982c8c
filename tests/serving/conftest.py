"""Fixtures for the inference server's tests: real ONNX models in tmp dirs, and a real server process on free ports."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from .onnx_models import DIGIT_LABELS, digits_cnn, slow_mlp, strings_model, two_input_model, write_card

READY_LINE = "ready in"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A `modeldeploy serve` child process; its log lines are collected by a reader thread."""

    process: subprocess.Popen[str]
    http_port: int
    grpc_port: int
    lines: list[str] = field(default_factory=list)
    _events: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            self._events.put(line)
        self._events.put(None)

    def wait_for_line(self, text: str, timeout: float = 30.0) -> bool:
        """Wait until a log line holds `text` (True) or the process ended without one (False)."""
        if any(text in line for line in self.lines):
            return True
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._events.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                return False
            if text in line:
                return True
        raise TimeoutError(f"no log line with {text!r} within {timeout} s; log:\n{self.log}")

    def rss_bytes(self) -> int:
        fields = Path(f"/proc/{self.process.pid}/statm").read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


_started: list[ServerProcess] = []


@pytest.fixture(autouse=True)
def _no_server_outlives_its_test() -> Iterator[None]:
    """A test that fails before stopping the server it started must not leave the process running (the session
    and module fixtures' servers start before this fixture, so they are left to their own teardown)."""
    before = len(_started)
    yield
    for server in _started[before:]:
        server.stop(timeout=10)
    del _started[before:]


def start_server(model_dir: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> ServerProcess:
    """Start the server on 127.0.0.1 free ports and (by default) wait for its "ready" log line."""
    http_port, grpc_port = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "modeldeploy.cli",
        "serve",
        "--model-dir",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        *args,
    ]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPLOY_")}
    child_env.update(env or {})
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=child_env)
    server = ServerProcess(process, http_port, grpc_port)
    _started.append(server)
    threading.Thread(target=server._read, daemon=True).start()
    if wait and not server.wait_for_line(READY_LINE):
        raise RuntimeError(f"server exited with {process.wait()} before it was ready:\n{server.log}")
    return server


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model directories: the digits classifier with a card, the same without a card, two inputs, a slow MLP, a
    BYTES echo."""
    root = tmp_path_factory.mktemp("models")
    digits = root / "digits" / "v0123456789ab"
    digits_cnn(digits / "model.onnx")
    write_card(digits, "digits", labels=DIGIT_LABELS, preprocessing={"scale": 0.0625})
    bare = root / "bare-model"
    digits_cnn(bare / "model.onnx")
    fixed = root / "fixed-batch"
    digits_cnn(fixed / "model.onnx", batch=1)
    two = root / "two" / "v1"
    two_input_model(two / "model.onnx")
    write_card(two, "two")
    slow = root / "slow"
    slow_mlp(slow / "model.onnx")
    strings = root / "strings"
    strings_model(strings / "model.onnx")
    return {"digits": digits, "bare": bare, "fixed": fixed, "two": two, "slow": slow, "strings": strings}


@pytest.fixture(scope="session")
def server(models: dict[str, Path]) -> Iterator[ServerProcess]:
    """One server on the digits model for the tests that only send requests."""
    proc = start_server(models["digits"])
    yield proc
    proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http
