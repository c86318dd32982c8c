"""A `modeldeploy run` of the digits sample shared by the CLI tests: real training (few epochs), real serving."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modeldeploy.cluster.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "digits-cnn.yaml"
EPOCHS = "3"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def modeldeploy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modeldeploy.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Served:
    """A `modeldeploy run` in the background; its stdout is collected line by line."""

    proc: subprocess.Popen[str]
    port: int
    output: Path
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return "".join(self.lines)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def served(artifacts: Path) -> Iterator[Served]:
    port = free_port()
    command = [sys.executable, "-m", "modeldeploy.cli", "run", str(SAMPLE), "--port", str(port)]
    command += ["--epochs", EPOCHS, "--output", str(artifacts)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    served = Served(proc, port, artifacts)
    threading.Thread(target=served._pump, daemon=True).start()
    try:
        wait_until(
            lambda: "prediction for" in served.text() or proc.poll() is not None,
            timeout=300,
            what="modeldeploy run to train, serve and print its sample prediction",
            describe=served.text,
        )
        assert proc.poll() is None, f"modeldeploy run exited {proc.returncode}:\n{served.text()}"
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def version_dir(artifacts: Path) -> Path:
    (found,) = [p for p in (artifacts / "digits").iterdir() if re.fullmatch(r"v[0-9a-f]{12}", p.name)]
    return found
