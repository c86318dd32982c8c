"""Helpers of the real-node tests: the cluster handle, the operator process, ModelDeployments, port-forwards."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modeldeploy.cluster import realnode
from modeldeploy.cluster.waiting import wait_until

PLACEMENT = {
    "nodeSelector": {realnode.NODE_LABEL_KEY: realnode.NODE_LABEL_VALUE},
    "tolerations": [{"key": realnode.TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
}


@dataclass(frozen=True)
class RealCluster:
    name: str
    kubeconfig: Path
    kubectl_path: str
    env: dict[str, str]

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_path, *args],
            check=False,
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result


class Operator:
    """`modeldeploy operator` watching one namespace, as a subprocess; its log is kept for failure messages."""

    def __init__(self, env: dict[str, str], namespace: str, log: Path) -> None:
        self.log_path = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modeldeploy.cli", "operator", "--namespace", namespace],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**env, "MODELDEPLOY_OPERATOR_LEASE_DURATION_SECONDS": "6"},
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Models:
    """ModelDeployments placed on the real node, in the test's namespace."""

    def __init__(self, cluster: RealCluster, namespace: str, operator: Operator) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.operator = operator

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, "-n", self.namespace, **kwargs)

    def apply(self, name: str, spec: dict[str, Any]) -> None:
        spec = json.loads(json.dumps(spec))
        for part in ("training", "serving"):
            spec.setdefault(part, {}).update(json.loads(json.dumps(PLACEMENT)))
        spec.setdefault("storage", {})["storageClassName"] = realnode.STORAGE_CLASS
        manifest = {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name}}
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump({**manifest, "spec": spec}))

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", kind, name, "-o", "json").stdout))

    def items(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json", *(["-l", selector] if selector else [])]
        return list(json.loads(self.kubectl(*args).stdout)["items"])

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get("modeldeployment", name).get("status") or {})

    def wait_phase(self, name: str, phase: str, timeout: float) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            md = self.get("modeldeployment", name)
            status = md.get("status") or {}
            current = status.get("observedGeneration") == md["metadata"].get("generation")
            if current and status.get("phase") == "Failed" and phase != "Failed":
                raise AssertionError(f"{name} Failed: {status.get('conditions')}")
            return status if current and status.get("phase") == phase else None

        return wait_until(
            check, timeout=timeout, what=f"{name} phase {phase}", interval=1, describe=lambda: self._describe(name)
        )

    def _describe(self, name: str) -> str:
        pods = self.kubectl("get", "pods", "-o", "wide", check=False).stdout
        return f"status={self.status(name)}\npods:\n{pods}\noperator log tail:\n{self.operator.log()[-2000:]}"
