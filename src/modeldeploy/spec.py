"""Reading a ModelDeployment manifest outside the API server: the CRD's own defaults, applied the same way."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Self, TypeAlias

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

from modeldeploy import contracts

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


def crd_default(*path: str) -> Any:
    """The CRD's default of one spec field, e.g. `crd_default("training", "epochs")`, for a value that stands in for
    a field the spec does not have (an import Job runs under spec.training's limits)."""
    schema = spec_schema()
    for name in path:
        schema = schema["properties"][name]
    return copy.deepcopy(schema["default"])


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


# The typed spec. Its classes name no defaults: `ModelDeploymentSpec.parse` applies the CRD's (apply_defaults above)
# and then reads the result, so a field the CRD defaults is always set and a field it does not is None when absent.
# tests/core/test_spec_unit.py checks the classes against the CRD's schema (every property a field, required exactly
# where the CRD has a default or requires it, enums as Literals), so that the CRD stays the one source of defaults.

JsonObject: TypeAlias = Mapping[str, Any]
"""A Kubernetes type passed through to a pod as it is (resources, tolerations, NetworkPolicy peers)."""
IntOrString: TypeAlias = int | str


class SpecPart(BaseModel):
    """A frozen part of the spec, read from the CRD's camelCase names (unknown ones are ignored, as the API server
    prunes them)."""

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Dataset(SpecPart):
    """spec.training.dataset: exactly one of builtin, path (on claimName) or uri."""

    builtin: Literal["digits"] | None = None
    claim_name: str | None = None
    uri: str | None = None
    path: str | None = None
    format: Literal["auto", "npz", "csv", "images"]
    label_column: str


class Training(SpecPart):
    """spec.training: a built-in recipe on a dataset, or the user's own training image (recipe custom)."""

    recipe: Literal["cnn", "mlp", "custom"]
    image: str | None = None
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    dataset: Dataset | None = None
    epochs: int
    batch_size: int
    learning_rate: float
    validation_split: float
    seed: int
    resources: JsonObject | None = None
    backoff_limit: int
    active_deadline_seconds: int
    node_selector: Mapping[str, str] | None = None
    tolerations: tuple[JsonObject, ...] | None = None
    pod_annotations: Mapping[str, str] | None = None


class ImportModel(SpecPart):
    """spec.importModel: a model file to convert and compress, on a claim (claimName and path) or at a uri."""

    claim_name: str | None = None
    uri: str | None = None
    path: str | None = None
    format: Literal["auto", "keras", "h5", "savedmodel", "onnx"]
    eval_dataset: str | None = None


class Compression(SpecPart):
    """spec.compression: the artifacts to make and the accuracy and latency budget of the quantized model."""

    format: Literal["onnx"]
    formats: tuple[Literal["onnx", "tflite"], ...]
    quantization: Literal["none", "dynamic", "static", "fp16", "auto"]
    max_accuracy_drop: float
    max_latency_ratio: float
    opset: int


class Canary(SpecPart):
    """spec.serving.canary: a newly trained version beside the stable one, for a share of the replicas."""

    traffic_percent: int
    promote_after_seconds: int | None = None
    # int | float: an integer rate the user wrote is quoted back as written (in the canary's status messages).
    max_error_rate: int | float | None = None


class Gateway(SpecPart):
    """spec.serving.gateway: the Gateway API Gateway whose HTTPRoute splits the traffic by exact weights."""

    name: str
    namespace: str | None = None
    section_name: str | None = None
    hostnames: tuple[str, ...] | None = None


class Batching(SpecPart):
    enabled: bool
    max_batch_size: int
    max_queue_delay_microseconds: int


class Auth(SpecPart):
    """spec.serving.auth: bearer tokens from a Secret the operator mounts and never reads."""

    secret_name: str
    protect_metrics: bool


class Tls(SpecPart):
    """spec.serving.tls: a kubernetes.io/tls Secret for HTTPS and gRPC."""

    secret_name: str


class Autoscaling(SpecPart):
    """spec.serving.autoscaling: an HPA on the inference Deployment (it, not spec.serving.replicas, sets the count)."""

    enabled: bool
    min_replicas: int
    max_replicas: int
    target_cpu_utilization_percentage: int = Field(alias="targetCPUUtilizationPercentage")


class Strategy(SpecPart):
    max_surge: IntOrString
    max_unavailable: IntOrString


class Serving(SpecPart):
    """spec.serving: the inference Deployment, its Service, and what chooses the version it serves."""

    image: str | None = None
    model_version: str | None = None
    canary: Canary | None = None
    gateway: Gateway | None = None
    replicas: int
    port: int
    grpc_port: int
    resources: JsonObject | None = None
    batching: Batching
    threads: int
    drain_seconds: int
    auth: Auth | None = None
    network_policy: bool
    allow_from: tuple[JsonObject, ...] | None = None
    tls: Tls | None = None
    autoscaling: Autoscaling | None = None
    strategy: Strategy
    min_available: IntOrString | None = None
    node_selector: Mapping[str, str] | None = None
    tolerations: tuple[JsonObject, ...] | None = None
    pod_annotations: Mapping[str, str] | None = None

    @property
    def is_autoscaled(self) -> bool:
        """An HPA sets the replica count (spec.serving.autoscaling present and enabled)."""
        return self.autoscaling is not None and self.autoscaling.enabled


class SecretRef(SpecPart):
    name: str


class Storage(SpecPart):
    """spec.storage: where the artifacts live, a claim (new or existing) or object storage (uri)."""

    size: str
    storage_class_name: str | None = None
    existing_claim: str | None = None
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]
    uri: str | None = None
    secret_ref: SecretRef | None = None
    service_account_name: str | None = None


class ModelDeploymentSpec(SpecPart):
    """A ModelDeployment's spec, typed and frozen, with the CRD's defaults: build it with `parse`.

    `document` is the defaulted spec as a mapping, the form that is hashed (`hash`, which decides retraining) and
    that the training Job receives: the hash of an existing object must never change, so it is taken from the
    document as parsed, never from the fields written back.
    """

    training: Training | None = None
    import_model: ImportModel | None = None
    compression: Compression
    serving: Serving
    storage: Storage
    retain_versions: int

    _document: dict[str, Any] | None = PrivateAttr(default=None)
    _hash: str | None = PrivateAttr(default=None)

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> ModelDeploymentSpec:
        """The spec with the CRD's defaults applied, typed; SpecError names the field that does not fit."""
        document: dict[str, Any] = apply_defaults(copy.deepcopy(dict(spec)), spec_schema())
        try:
            parsed = cls.model_validate(document)
        except ValidationError as err:
            raise SpecError("; ".join(_describe(e) for e in err.errors())) from err
        parsed._document = document
        return parsed

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with `update`, its document is written from the fields again (so that it says what they say)."""
        copied = super().model_copy(update=update, deep=deep)
        if update:
            copied._document = copied._hash = None
        return copied

    @property
    def document(self) -> dict[str, Any]:
        """The defaulted spec as parsed (read it, never change it)."""
        if self._document is None:
            self._document = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return self._document

    @property
    def hash(self) -> str:
        """contracts.spec_hash of the document: what names the training Job and the model version."""
        if self._hash is None:
            self._hash = contracts.spec_hash(self.document)
        return self._hash

    @property
    def storage_uri(self) -> str:
        """spec.storage.uri: the artifact lives in object storage (no claim), or "" for a claim."""
        return self.storage.uri or ""


def _describe(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in ("spec", *error["loc"]))
    return f"{where}: {error['msg']}"


def parse_spec(obj: Mapping[str, Any]) -> ModelDeploymentSpec:
    """The typed spec of a ModelDeployment object (its `.spec`, defaulted by the CRD)."""
    return ModelDeploymentSpec.parse(obj.get("spec") or {})


@dataclass(frozen=True)
class ModelDeployment:
    """A ModelDeployment as the programs read it: who it is, and its typed spec (parsed once, by `from_object`)."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: ModelDeploymentSpec

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ModelDeployment:
        meta = obj.get("metadata") or {}
        return cls(
            name=str(meta.get("name") or ""),
            namespace=str(meta.get("namespace") or ""),
            uid=str(meta.get("uid") or ""),
            generation=int(meta.get("generation", 0)),
            spec=parse_spec(obj),
        )
