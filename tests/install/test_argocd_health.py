"""The Argo CD health check (Lua) of a ModelDeployment, run in a real Lua interpreter against status fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HEALTH_LUA = REPO / "manifests" / "argocd" / "health.lua"
CASES = yaml.safe_load((Path(__file__).parent / "health_cases.yaml").read_text())
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def argocd_health(obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    """Run the script as Argo CD does: `obj` is the resource as a Lua table, the script returns {status, message}."""
    import lupa  # noqa: PLC0415

    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval(f"function(obj)\n{script or HEALTH_LUA.read_text()}\nend")
    result = check(lua.table_from(obj, recursive=True))
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_health_of_each_status(case: dict[str, Any]) -> None:
    health = argocd_health(case["object"])
    assert health["status"] == case["expect"]["status"], health
    assert case["expect"]["message"] in health["message"], health


def test_every_argo_cd_outcome_the_script_gives_is_covered() -> None:
    statuses = {case["expect"]["status"] for case in CASES}
    assert statuses <= ARGO_STATUSES
    assert {"Healthy", "Progressing", "Degraded", "Suspended"} <= statuses


def test_the_argocd_cm_patch_carries_the_same_script() -> None:
    patch = yaml.safe_load((REPO / "manifests" / "argocd" / "argocd-cm-patch.yaml").read_text())
    assert patch["data"]["resource.customizations.health.modeldeploy.dev_ModelDeployment"] == HEALTH_LUA.read_text()
