"""The typed spec (modeldeploy.spec.ModelDeploymentSpec) against the CRD, the one source of the schema and defaults:
every property is a field, a field has a value whenever the CRD defaults or requires it, the enums are the Literals,
and the spec's hash (which decides retraining) is the one the dict-based code computed."""

from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from modeldeploy import contracts
from modeldeploy.spec import (
    KIND,
    ModelDeployment,
    ModelDeploymentSpec,
    SpecError,
    apply_defaults,
    crd_default,
    parse_spec,
    spec_schema,
)

REPO = Path(__file__).resolve().parents[2]
# Kubernetes types that go into a pod as they are written (the API server checked them): maps, not spec parts.
PASSED_THROUGH = frozenset(
    {
        "spec.training.resources",
        "spec.training.tolerations",
        "spec.serving.resources",
        "spec.serving.tolerations",
        "spec.serving.allowFrom",
    }
)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The spec part a field holds (through `X | None` and `tuple[X, ...]`), or None for a scalar or a map."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (tuple, types.UnionType, typing.Union):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _literals(annotation: Any) -> set[Any] | None:
    """The values of a Literal field (through `| None` and `tuple[...]`), or None when it is no Literal."""
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        found = _literals(arg)
        if found is not None:
            return found
    return None


def _check(cls: type[BaseModel], schema: dict[str, Any], path: str, problems: list[str]) -> None:
    properties: dict[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    fields = {(info.alias or name): info for name, info in cls.model_fields.items()}
    for extra in sorted(set(fields) - set(properties)):
        problems.append(f"{path}.{extra}: a field of {cls.__name__} that the CRD does not have")
    for name, sub in properties.items():
        where = f"{path}.{name}"
        info = fields.get(name)
        if info is None:
            problems.append(f"{where}: in the CRD, missing from {cls.__name__}")
            continue
        always = "default" in sub or name in required
        if info.is_required() != always:
            problems.append(
                f"{where}: the CRD {'defaults or requires it' if always else 'neither defaults nor requires it'}, "
                f"but {cls.__name__} makes it {'required' if info.is_required() else 'optional'}"
            )
        if not info.is_required() and info.default is not None:
            problems.append(f"{where}: {cls.__name__} has a default of its own ({info.default!r}): the CRD's only")
        enum = sub.get("enum") or (sub.get("items") or {}).get("enum")
        if enum is not None and _literals(info.annotation) != set(enum):
            problems.append(f"{where}: the CRD's enum {enum} is not the Literal of {cls.__name__}.{name}")
        part = _model_of(info.annotation)
        child = sub.get("items") if sub.get("type") == "array" else sub
        if part is not None:
            _check(part, child or {}, where, problems)
        elif isinstance(child, dict) and child.get("properties") and where not in PASSED_THROUGH:
            problems.append(f"{where}: an object with properties in the CRD, a plain value in {cls.__name__}")


def test_the_typed_spec_has_every_field_of_the_crd_and_takes_its_defaults_only_from_it() -> None:
    problems: list[str] = []
    _check(ModelDeploymentSpec, spec_schema(), "spec", problems)
    assert problems == []


def test_a_defaulted_field_has_the_crds_default() -> None:
    spec = ModelDeploymentSpec.parse(
        {"training": {"dataset": {"builtin": "digits"}}, "serving": {"autoscaling": {"maxReplicas": 3}}}
    )
    assert spec.training is not None and spec.training.dataset is not None
    assert spec.training.epochs == crd_default("training", "epochs")
    assert spec.training.learning_rate == crd_default("training", "learningRate")
    assert spec.training.dataset.label_column == crd_default("training", "dataset", "labelColumn")
    assert spec.serving.replicas == crd_default("serving", "replicas")
    assert spec.serving.batching.max_batch_size == crd_default("serving", "batching", "maxBatchSize")
    assert spec.serving.strategy.max_surge == crd_default("serving", "strategy", "maxSurge")
    assert spec.serving.network_policy is crd_default("serving", "networkPolicy")
    assert spec.compression.formats == tuple(crd_default("compression", "formats"))
    assert spec.storage.size == crd_default("storage", "size")
    assert spec.retain_versions == crd_default("retainVersions")
    assert spec.serving.autoscaling is not None
    assert spec.serving.autoscaling.min_replicas == crd_default("serving", "autoscaling", "minReplicas")
    assert spec.serving.canary is None and spec.serving.auth is None and spec.serving.gateway is None


def test_the_spec_is_frozen_and_a_bad_field_is_named() -> None:
    spec = ModelDeploymentSpec.parse({"training": {"dataset": {"builtin": "digits"}}})
    with pytest.raises(ValueError, match="frozen"):
        spec.retain_versions = 5  # type: ignore[misc]
    with pytest.raises(SpecError, match=r"spec\.compression\.quantization"):
        ModelDeploymentSpec.parse({"training": {}, "compression": {"quantization": "int3"}})
    with pytest.raises(SpecError, match=r"spec\.serving\.canary\.trafficPercent"):
        ModelDeploymentSpec.parse({"training": {}, "serving": {"canary": {}}})


def _dict_hash(spec: dict[str, Any]) -> str:
    """The hash as the code computed it before the typed spec: contracts.spec_hash of the defaulted dict."""
    return contracts.spec_hash(apply_defaults(copy.deepcopy(spec), spec_schema()))


def _samples() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((REPO / "samples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(doc, dict) and doc.get("kind") == KIND:
                found.append((f"{path.relative_to(REPO)}:{doc['metadata']['name']}", doc["spec"]))
    return found


SPECS: list[tuple[str, dict[str, Any]]] = [
    *_samples(),
    ("bare training", {"training": {"dataset": {"builtin": "digits"}}}),
    ("bare import", {"importModel": {"claimName": "c", "path": "m.onnx"}}),
    ("integer learning rate", {"training": {"dataset": {"builtin": "digits"}, "learningRate": 1}}),
    ("formats onnx", {"training": {"dataset": {"builtin": "digits"}}, "compression": {"formats": ["onnx"]}}),
    (
        "formats tflite",
        {"training": {"dataset": {"builtin": "digits"}}, "compression": {"formats": ["onnx", "tflite"]}},
    ),
    ("placement only", {"training": {"dataset": {"builtin": "digits"}, "nodeSelector": {"a": "b"}, "backoffLimit": 3}}),
    (
        "serving and storage only",
        {
            "training": {"recipe": "custom", "image": "me/trainer:1", "args": ["--fast"]},
            "serving": {"replicas": 3, "canary": {"trafficPercent": 20}, "gateway": {"name": "gw"}},
            "storage": {"uri": "s3://bucket/models", "secretRef": {"name": "creds"}},
        },
    ),
]


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=[name for name, _ in SPECS])
def test_the_hash_of_every_sample_and_spec_is_the_dict_based_one(name: str, spec: dict[str, Any]) -> None:
    typed = ModelDeploymentSpec.parse(spec)
    assert typed.hash == _dict_hash(spec)
    assert typed.document == apply_defaults(copy.deepcopy(spec), spec_schema())


def test_parsing_does_not_change_the_object_and_a_copy_with_changes_hashes_what_it_says() -> None:
    obj = {"metadata": {"name": "m", "namespace": "ns", "uid": "u", "generation": 4}, "spec": {"training": {}}}
    before = copy.deepcopy(obj)
    model = ModelDeployment.from_object(obj)
    assert obj == before
    assert (model.name, model.namespace, model.uid, model.generation) == ("m", "ns", "u", 4)
    assert model.spec == parse_spec(obj)
    changed = model.spec.model_copy(update={"retain_versions": 7})
    assert changed.document["retainVersions"] == 7
