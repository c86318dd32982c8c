"""Fixtures of the operator's integration tests: the CRD installed once, an operator process per test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy.cluster.waiting import wait_crd_established, wait_until

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"


@pytest.fixture(scope="session")
def crd(kubectl: Any) -> None:
    kubectl("apply", "-f", str(CRDS))
    # check=False: before the CRD has conditions, kubectl's jsonpath filter fails outright ("not array"): not yet.
    wait_crd_established(lambda *a: str(kubectl(*a, check=False).stdout))


# Short, but with client-go's margins (retry < renew deadline; renew deadline + API timeout <= lease duration) and
# room for a busy shared machine: a leader that cannot renew for 6 s stops writing.
LEASE_TIMING = {
    "MODELDEPLOY_OPERATOR_LEASE_DURATION_SECONDS": "10",
    "MODELDEPLOY_OPERATOR_RENEW_DEADLINE_SECONDS": "6",
    "MODELDEPLOY_OPERATOR_RETRY_PERIOD_SECONDS": "1",
    "MODELDEPLOY_OPERATOR_API_TIMEOUT_SECONDS": "4",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """`modeldeploy operator` as a subprocess watching one namespace; its log is kept for assertions."""

    def __init__(self, env: dict[str, str], namespace: str, log: Path, extra_env: dict[str, str] | None = None) -> None:
        self.env = {**env, **LEASE_TIMING, **(extra_env or {})}
        self.namespace = namespace
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_port = _free_port()

    def start(self) -> OperatorProcess:
        command = [sys.executable, "-m", "modeldeploy.cli", "operator", "--namespace", self.namespace]
        command += ["--liveness", f"http://127.0.0.1:{self.health_port}/healthz"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def is_leading(self) -> bool:
        return "leading as" in self.log()

    def probe(self, path: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of the operator's /healthz or /readyz; (0, {}) when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=5) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as err:
            return int(err.code), json.loads(err.read())
        except OSError:
            return 0, {}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)


@pytest.fixture
def start_operator(cluster: Any, namespace: str, crd: None, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(name: str = "operator", **extra_env: str) -> OperatorProcess:
        process = OperatorProcess(cluster.env, namespace, tmp_path / f"{name}.log", extra_env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
        if os.environ.get("MODELDEPLOY_SHOW_OPERATOR_LOG"):
            print(process.log())


@pytest.fixture
def operator(start_operator: Callable[..., OperatorProcess]) -> OperatorProcess:
    process = start_operator()
    wait_until(process.is_leading, timeout=30, what="the operator to lead", describe=process.log)
    return process


class Models:
    """kubectl-level helpers on ModelDeployments in the test's namespace."""

    def __init__(self, kubectl: Any, namespace: str) -> None:
        self.kubectl = kubectl
        self.namespace = namespace

    def apply(self, name: str, spec: dict[str, Any]) -> None:
        manifest = {
            "apiVersion": "modeldeploy.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.kubectl("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump(manifest))

    def get(self, kind: str, name: str = "") -> Any:
        args = ["get", kind, "-n", self.namespace, "-o", "json"] + ([name] if name else [])
        result = self.kubectl(*args, check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def items(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-n", self.namespace, "-o", "json"] + (["-l", selector] if selector else [])
        return list(json.loads(self.kubectl(*args).stdout)["items"])

    def status(self, name: str) -> dict[str, Any]:
        md = self.get("modeldeployment", name)
        return dict((md or {}).get("status") or {})

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        for cond in self.status(name).get("conditions") or []:
            if cond["type"] == kind:
                return dict(cond)
        return {}

    def wait_phase(self, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            md = self.get("modeldeployment", name) or {}
            status = md.get("status") or {}
            current = status.get("observedGeneration") == md.get("metadata", {}).get("generation")
            return status if current and status.get("phase") == phase else None

        return wait_until(
            check, timeout=timeout, what=f"{name} phase {phase}", interval=0.3, describe=lambda: self.status(name)
        )


@pytest.fixture
def models(kubectl: Any, namespace: str) -> Models:
    return Models(kubectl, namespace)
