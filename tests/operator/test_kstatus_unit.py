"""The operator's status read by kstatus itself (sigs.k8s.io/cli-utils, built from its Go module): what Flux's
health checks and `kubectl wait` conclude for a ModelDeployment in every phase, from statuses `decide` makes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from md_factories import OWNER_UID, deployment, job, make_md, model, report, serving_pod, training_pod
from modeldeploy_operator import builders, decide
from modeldeploy_operator.observed import ChildState, Observed, summarize_pod
from modeldeploy_operator.settings import Settings

from modeldeploy.cluster.local import default_cache_root

CLI_UTILS = "sigs.k8s.io/cli-utils@v0.37.2"
SOURCE = Path(__file__).parent / "kstatus" / "main.go"
NOW = "2025-01-01T00:00:00Z"
SETTINGS = Settings()


def _kstatus_binary() -> Path:
    """Build the checker once into a cache folder (a wrapper module; the Go module proxy provides cli-utils)."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        pytest.skip("Go is not installed (the local control plane needs it too)")
    folder = default_cache_root() / f"kstatus-{CLI_UTILS.replace('@', '-').replace('/', '_')}"
    binary = folder / "kstatus"
    if binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SOURCE, folder / "main.go")
    (folder / "go.mod").write_text("module kstatuscheck\n\ngo 1.24\n")
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    for command in (["get", CLI_UTILS], ["mod", "tidy"], ["build", "-trimpath", "-o", str(binary), "."]):
        subprocess.run([go, *command], cwd=folder, env=env, check=True, capture_output=True, timeout=900)
    return binary


def _object(md: dict[str, Any], plan: decide.Plan) -> dict[str, Any]:
    return {**md, "status": plan.status}


def _phases() -> dict[str, dict[str, Any]]:
    """One ModelDeployment per phase (and per kind of failure), as the operator writes them."""
    md = make_md()
    claim = ChildState("digits-models", "", controller_uid=OWNER_UID)
    out: dict[str, dict[str, Any]] = {}
    out["Pending"] = _object(md, decide.decide(md, Observed(), SETTINGS, NOW))
    out["Training"] = _object(md, decide.decide(md, Observed(jobs=(job(md),), claim=claim), SETTINGS, NOW))
    done = Observed(jobs=(job(md, "Succeeded"),), pods=(training_pod(md, "Succeeded", report(md)),), claim=claim)
    trained = decide.decide(md, done, SETTINGS, NOW)
    out["Deploying"] = _object(md, trained)
    served = trained.status["versions"][0]
    full = md
    built = builders.build_deployment(model(full), served, SETTINGS)
    ready_dep = deployment(built["metadata"]["annotations"]["modeldeploy.dev/config-hash"], served["version"])
    service = builders.build_service(model(full))
    service_state = ChildState("digits", service["metadata"]["annotations"]["modeldeploy.dev/config-hash"])
    service_state = replace(service_state, controller_uid=OWNER_UID)
    ready = replace(done, deployment=ready_dep, service=service_state, pods=(*done.pods, serving_pod("digits-a")))
    after = {**md, "status": trained.status}
    out["Ready"] = _object(md, decide.decide(after, ready, SETTINGS, NOW))
    crashing = replace(ready, pods=(serving_pod("digits-a", ready=False, broken="container serving is in X"),))
    out["Degraded"] = _object(md, decide.decide(after, crashing, SETTINGS, NOW))
    failed_report = '{"ok": false, "reason": "InvalidData", "message": "no label column"}'
    failed = Observed(jobs=(job(md, "Failed"),), pods=(training_pod(md, "Failed", failed_report),), claim=claim)
    out["Failed"] = _object(md, decide.decide(md, failed, SETTINGS, NOW))
    blocked = replace(ready, service=replace(service_state, controller_uid="someone-else"))
    out["ChildConflict"] = _object(md, decide.decide(after, blocked, SETTINGS, NOW))
    pull = summarize_pod(
        {
            "metadata": {"name": "p", "labels": {"job-name": job(md).name}},
            "status": {
                "phase": "Pending",
                "containerStatuses": [{"name": "train", "state": {"waiting": {"reason": "ImagePullBackOff"}}}],
            },
        }
    )
    out["ImagePullBackOff"] = _object(md, decide.decide(md, Observed(jobs=(job(md),), pods=(pull,)), SETTINGS, NOW))
    out.update(_rollout_phases())
    stale = _object(md, decide.decide(after, ready, SETTINGS, NOW))
    out["new generation not yet seen"] = {**stale, "metadata": {**stale["metadata"], "generation": 2}}
    return out


def _rollout_phases() -> dict[str, dict[str, Any]]:
    """A canary in progress, a rolled-back one and a pin of a version that is not retained (test_rollout_unit)."""
    import test_rollout_unit as rollout_cases  # noqa: PLC0415

    md, observed, _ = rollout_cases._running_canary({"canary": {"trafficPercent": 25}, "replicas": 4})
    out = {"Canary": _object(md, decide.decide(md, observed, SETTINGS, rollout_cases.T1))}
    crash = rollout_cases._canary_pod("digits-canary-0", broken_reason="container serving is in CrashLoopBackOff")
    rolled_back = decide.decide(md, replace(observed, pods=(crash,)), SETTINGS, rollout_cases.T1)
    out["CanaryRolledBack"] = _object(md, rolled_back)
    pin = rollout_cases._md({"modelVersion": "vgone"})
    out["VersionNotRetained"] = _object(pin, decide.decide(pin, rollout_cases._observed(), SETTINGS, NOW))
    return out


EXPECTED = {
    "Pending": "InProgress",
    "Training": "InProgress",
    "Deploying": "InProgress",
    "Ready": "Current",
    "Degraded": "Failed",
    "Failed": "Failed",
    "ChildConflict": "Failed",
    "ImagePullBackOff": "Failed",
    "new generation not yet seen": "InProgress",
    "Canary": "InProgress",
    "CanaryRolledBack": "Failed",
    "VersionNotRetained": "Failed",
}


def test_kstatus_reads_every_phase_as_gitops_tools_need() -> None:
    binary = _kstatus_binary()
    phases = _phases()
    assert set(phases) == set(EXPECTED)
    result = subprocess.run(
        [str(binary)], input=json.dumps(list(phases.values())), capture_output=True, text=True, check=True, timeout=60
    )
    computed = dict(zip(phases, json.loads(result.stdout), strict=True))
    assert {name: r.get("status", r.get("error")) for name, r in computed.items()} == EXPECTED
    # The failure's own words reach the pipeline (Flux prints kstatus's message).
    assert "no label column" in computed["Failed"]["message"]
    assert "Service digits already exists" in computed["ChildConflict"]["message"]
    assert "canary version vnew was rolled back" in computed["CanaryRolledBack"]["message"]
    assert "CrashLoopBackOff" in computed["CanaryRolledBack"]["message"]
