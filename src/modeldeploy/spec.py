"""Reading a ModelDeployment manifest outside the API server: the CRD's own defaults, applied the same way."""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

GROUP = "modeldeploy.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
CRD_NAME = f"{PLURAL}.{GROUP}"


class InstallationError(RuntimeError):
    """The package was installed without a file it ships; nothing the user's spec can fix."""


class SpecError(ValueError):
    """A manifest or spec that cannot be used; the message names the field and what to do."""


@functools.cache
def crd() -> dict[str, Any]:
    """The ModelDeployment CRD as shipped in crds/ (the single source of the schema and its defaults)."""
    try:
        text = resources.files("modeldeploy").joinpath("data/crd.yaml").read_text(encoding="utf-8")
    except OSError as err:
        # data/crd.yaml links to crds/ in the source tree; an install from a tree without crds/ lacks it.
        raise InstallationError(
            f"the ModelDeployment CRD is missing from the installed modeldeploy package ({err.strerror}); "
            "install it from a source tree that includes crds/"
        ) from err
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def spec_schema() -> dict[str, Any]:
    """The OpenAPI schema of `.spec`."""
    version = crd()["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting as the API server does it: a missing property with a default gets it, recursively."""
    if isinstance(value, dict):
        out = dict(value)
        for name, sub in schema.get("properties", {}).items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = apply_defaults(out[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            known = schema.get("properties", {})
            out.update({k: apply_defaults(v, extra) for k, v in out.items() if k not in known})
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def load_manifest(path: Path) -> dict[str, Any]:
    """Read a ModelDeployment manifest (YAML or JSON), or a bare spec, and return a whole object with defaults.

    A bare spec gets its name from the file's stem, so `modeldeploy train --spec digits.yaml` works on either.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError(f"cannot read {path}: {err.strerror}") from err
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise SpecError(f"{path} is not valid YAML or JSON: {err}") from err
    manifests = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(manifests) > 1:
        raise SpecError(f"{path} holds {len(manifests)} ModelDeployments; give a file with one")
    if manifests:
        obj = manifests[0]
    elif len(docs) == 1 and isinstance(docs[0], dict) and ("training" in docs[0] or "importModel" in docs[0]):
        obj = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": path.stem}, "spec": docs[0]}
    else:
        raise SpecError(f"{path} holds no ModelDeployment (kind: {KIND}) and no spec with training or importModel")
    return normalize(obj)


def load_manifest_json(text: str) -> dict[str, Any]:
    """The same as load_manifest, for the JSON that the operator passes in MODELDEPLOY_SPEC."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(f"MODELDEPLOY_SPEC is not valid JSON: {err}") from err
    if not isinstance(obj, dict):
        raise SpecError("MODELDEPLOY_SPEC must be a JSON object (a ModelDeployment)")
    return normalize(obj)


def normalize(obj: dict[str, Any]) -> dict[str, Any]:
    """Check the parts every program relies on and apply the CRD's defaults to `.spec`."""
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("metadata.name is missing: name the ModelDeployment")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise SpecError("spec is missing or not a mapping")
    if ("training" in spec) == ("importModel" in spec):
        raise SpecError("set exactly one of spec.training (train a model) or spec.importModel (bring a model file)")
    out = dict(obj)
    out["spec"] = apply_defaults(spec, spec_schema())
    return out
