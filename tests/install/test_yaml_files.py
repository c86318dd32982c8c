"""Every YAML file of the repository parses, and every ModelDeployment in it (and in the docs) fits the CRD schema."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from modeldeploy.spec import KIND, crd

from .conftest import REPO

FENCE = re.compile(r"```ya?ml\n(.*?)```", re.DOTALL)


def repo_files(*patterns: str) -> list[Path]:
    """Files git knows of (tracked or not ignored): what a clone has, without .venv and caches."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(REPO / name for name in listed if (REPO / name).is_file())


def structural_to_json_schema(node: Any) -> Any:
    """The CRD's OpenAPI v3 schema as JSON Schema (draft 4): drop the x-kubernetes-* keys jsonschema cannot read."""
    if isinstance(node, dict):
        return {k: structural_to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if isinstance(node, list):
        return [structural_to_json_schema(v) for v in node]
    return node


def validator() -> jsonschema.Draft4Validator:
    schema = structural_to_json_schema(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft4Validator(schema)


def model_deployments() -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for path in repo_files("*.yaml", "*.yml"):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(doc, dict) and doc.get("kind") == KIND:
                found.append((str(path.relative_to(REPO)), doc))
    for path in repo_files("*.md"):
        for block in FENCE.findall(path.read_text(encoding="utf-8")):
            for doc in yaml.safe_load_all(block):
                if isinstance(doc, dict) and doc.get("kind") == KIND:
                    found.append((str(path.relative_to(REPO)), doc))
    return found


@pytest.mark.parametrize("path", repo_files("*.yaml", "*.yml"), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert docs, f"{path} is empty"


def test_there_are_model_deployments_to_check() -> None:
    where = {path for path, _ in model_deployments()}
    assert {"samples/digits-cnn.yaml", "samples/autoscaling.yaml"} <= where


@pytest.mark.parametrize("where_doc", model_deployments(), ids=lambda item: f"{item[0]}:{item[1]['metadata']['name']}")
def test_every_model_deployment_fits_the_crd_schema(where_doc: tuple[str, dict[str, Any]]) -> None:
    where, doc = where_doc
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(doc)]
    assert not errors, f"{where}: {errors}"


def test_the_schema_check_catches_a_mistake() -> None:
    bad = {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": KIND, "metadata": {"name": "x"}}
    bad["spec"] = {"training": {"dataset": {"builtin": "mnist"}, "epochs": 0}}
    messages = " ".join(e.message for e in validator().iter_errors(bad))
    assert "'mnist' is not one of ['digits']" in messages and "0 is less than the minimum of 1" in messages
