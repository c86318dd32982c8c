"""The Argo CD health check run in Argo CD's own Lua environment: gopher-lua at Argo CD v3.4.7's version, with only
the libraries Argo CD opens for a resource customization (argocd_lua/main.go), not lupa's full Lua 5.4."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from modeldeploy.cluster.local import default_cache_root

from .test_argocd_health import CASES, HEALTH_LUA, argocd_health

HARNESS = Path(__file__).parent / "argocd_lua"


@pytest.fixture(scope="module")
def argocd_lua() -> Path:
    """The harness binary, built once per version of its sources into the project's cache (a few seconds)."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("Go is not installed: the gopher-lua harness is built from tests/install/argocd_lua (make test)")
    digest = hashlib.sha256(b"".join((HARNESS / f).read_bytes() for f in ("main.go", "go.mod", "go.sum")))
    binary = default_cache_root() / "bin" / f"argocd-lua-{digest.hexdigest()[:12]}" / "argocd-lua"
    if not binary.exists():
        env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
        result = subprocess.run(
            [go, "build", "-trimpath", "-o", str(binary), "."],
            cwd=HARNESS, env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"building the gopher-lua harness failed: {result.stderr}"
    return binary


def gopher_health(binary: Path, objects: list[dict[str, Any]], script: str | None = None) -> list[dict[str, str]]:
    payload = json.dumps({"script": script or HEALTH_LUA.read_text(), "objects": objects})
    result = subprocess.run([str(binary)], input=payload, capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_case_gives_the_expected_health_in_gopher_lua(argocd_lua: Path) -> None:
    results = gopher_health(argocd_lua, [case["object"] for case in CASES])
    assert len(results) == len(CASES)
    for case, health in zip(CASES, results, strict=True):
        assert "error" not in health, (case["name"], health)
        assert health["status"] == case["expect"]["status"], (case["name"], health)
        assert case["expect"]["message"] in health["message"], (case["name"], health)


def test_gopher_lua_and_lupa_give_the_same_answer(argocd_lua: Path) -> None:
    results = gopher_health(argocd_lua, [case["object"] for case in CASES])
    for case, health in zip(CASES, results, strict=True):
        assert health == argocd_health(case["object"]), case["name"]


def test_a_library_argo_cd_does_not_open_fails_there(argocd_lua: Path) -> None:
    """What lupa would hide: Argo CD opens no string library for a customization without useOpenLibs."""
    script = 'hs = {}\nhs.status = "Healthy"\nhs.message = string.format("%d", 1)\nreturn hs'
    (health,) = gopher_health(argocd_lua, [{"metadata": {"name": "x"}}], script)
    assert "error" in health and "string" in health["error"], health
    assert argocd_health({"metadata": {"name": "x"}}, script)["status"] == "Healthy"
