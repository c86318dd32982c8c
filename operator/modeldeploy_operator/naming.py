"""Deterministic names and labels of a ModelDeployment's children, so that a re-run finds what an earlier run made."""

from __future__ import annotations

import hashlib
from typing import Final

from modeldeploy.spec import ModelDeploymentSpec

MANAGED_BY: Final = "modeldeploy-operator"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_SELECTOR: Final = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
"""The label selector of every child the operator makes (its watches and its cache audit use it)."""
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
# The kwok stages of the local cluster read these two on the training pod (docs/contracts/training-job.md).
LABEL_MODEL: Final = "modeldeploy.dev/model"
LABEL_SPEC_HASH: Final = "modeldeploy.dev/spec-hash"
LABEL_VERSION: Final = "modeldeploy.dev/model-version"
# Only on a canary's pods (spec.serving.canary): the stable pods carry none, so adding canaries rolled no pod.
LABEL_TRACK: Final = "modeldeploy.dev/track"
TRACK_CANARY: Final = "canary"
TRACK_STABLE: Final = "stable"

ANNOTATION_GENERATION: Final = "modeldeploy.dev/generation"
ANNOTATION_CONFIG_HASH: Final = "modeldeploy.dev/config-hash"
ANNOTATION_SPEC_HASH: Final = "modeldeploy.dev/spec-hash"

COMPONENT_TRAINING: Final = "training"
COMPONENT_SERVING: Final = "serving"
COMPONENT_CLEANUP: Final = "cleanup"
COMPONENT_STORAGE: Final = "storage"

TRAIN_CONTAINER: Final = "train"
SERVING_CONTAINER: Final = "serving"
SHORT_HASH: Final = 12


def short_spec_hash(spec: ModelDeploymentSpec) -> str:
    """The first 12 hex digits of the spec's hash (contracts.spec_hash): what names a training Job and labels its
    pod."""
    return spec.hash[:SHORT_HASH]


def claim_name(model: str, spec: ModelDeploymentSpec) -> str:
    return spec.storage.existing_claim or f"{model}-models"


def job_name(model: str, short_hash: str) -> str:
    """One training Job per model and training spec: a new spec hash is a new Job, the same one is found again."""
    return f"{model}-train-{short_hash}"


def cleanup_job_name(model: str, versions: list[str]) -> str:
    digest = hashlib.sha256(",".join(sorted(versions)).encode()).hexdigest()[:10]
    return f"{model}-cleanup-{digest}"


def serving_name(model: str) -> str:
    """The Deployment, the Service and the HPA share the ModelDeployment's name (the Service's DNS name)."""
    return model


def canary_name(model: str) -> str:
    """The canary Deployment beside the main one (spec.serving.canary); the one Service selects both."""
    return f"{model}-canary"


def track_service_name(model: str, track: str) -> str:
    """The Service of one track (spec.serving.gateway): the HTTPRoute's weighted backends."""
    return f"{model}-{track}"


def base_labels(model: str, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: "modeldeploy",
        LABEL_INSTANCE: model,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: "modeldeploy",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_MODEL: model,
    }


def serving_selector(model: str) -> dict[str, str]:
    """The Deployment's selector; immutable once created, so it holds nothing that can change."""
    return {LABEL_MODEL: model, LABEL_COMPONENT: COMPONENT_SERVING}


def selector_string(selector: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
