"""Shared helpers of the install tests: the kustomize builds, as kubectl (with its built-in kustomize) makes them."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from modeldeploy.cluster.local import find_binaries

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
CRDS = REPO / "crds"


def kubectl_binary() -> str:
    """kubectl on PATH, else the local control plane's (built once and cached, as `make test` does)."""
    return shutil.which("kubectl") or str(find_binaries() / "kubectl")


@cache
def build(path: str = "manifests") -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl_binary(), "kustomize", str(REPO / path)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {path}: {result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: found {len(matches)}"
    return matches[0]
