"""A release users can pull: the workflow (linted by actionlint), its names and labels, and the manifests naming the
images it pushes. The images themselves are built by `make release-dry-run` (Docker), not here."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from .conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
RELEASE = REPO / "images" / "release.sh"


def _release(*args: str) -> str:
    result = subprocess.run([str(RELEASE), *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _workflow() -> dict[Any, Any]:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(workflow, dict)
    return workflow


def test_actionlint_passes_the_workflows_and_catches_a_broken_one() -> None:
    script = str(REPO / "hack" / "actionlint.sh")
    good = subprocess.run([script], capture_output=True, text=True, timeout=600, check=False, cwd=REPO)
    assert good.returncode == 0, good.stdout + good.stderr
    broken = "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.no_such }}\n"
    bad = subprocess.run([script, "-"], input=broken, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and "no_such" in bad.stdout


def test_the_workflow_pushes_three_multi_platform_images_with_sbom_and_provenance_on_a_version_tag() -> None:
    workflow = _workflow()
    assert workflow[True]["push"]["tags"] == ["v[0-9]+.[0-9]+.[0-9]+*"]  # YAML reads the key `on` as True
    job = workflow["jobs"]["image"]
    assert job["permissions"] == {"contents": "read", "packages": "write"}
    assert sorted(i["image"] for i in job["strategy"]["matrix"]["include"]) == ["operator", "serving", "training"]
    for item in job["strategy"]["matrix"]["include"]:
        assert (REPO / item["dockerfile"]).is_file()
    build = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action@"))
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build["with"]["push"] is True and build["with"]["sbom"] is True
    assert build["with"]["provenance"] == "mode=max"
    assert build["with"]["tags"] == "${{ steps.release.outputs.name }}"
    assert build["with"]["labels"] == "${{ steps.release.outputs.labels }}"
    names = next(s for s in job["steps"] if s.get("id") == "release")["run"]
    assert "images/release.sh check-manifests" in names and 'images/release.sh name "$IMAGE"' in names


def test_one_name_scheme_and_labels_from_the_commit() -> None:
    assert _release("name", "operator", "1.2.3").strip() == "ghcr.io/modeldeploy/modeldeploy-operator:1.2.3"
    labels = dict(line.split("=", 1) for line in _release("labels", "serving", "1.2.3").splitlines())
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=REPO)
    assert labels["org.opencontainers.image.title"] == "modeldeploy-serving"
    assert labels["org.opencontainers.image.version"] == "1.2.3"
    assert labels["org.opencontainers.image.revision"] == head.stdout.strip()
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert _release("labels", "serving", "1.2.3") == _release("labels", "serving", "1.2.3")  # no clock in them


def test_the_manifests_name_what_the_workflow_pushes(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(RELEASE), "check-manifests"], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    other = subprocess.run(
        [str(RELEASE), "check-manifests", "9.9.9"], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )
    assert other.returncode == 1 and "does not name ghcr.io/modeldeploy/modeldeploy-operator:9.9.9" in other.stderr
