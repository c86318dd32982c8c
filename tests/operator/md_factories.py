"""Objects for the unit tests: ModelDeployments as the API server would store them, and children as kwok makes them."""

from __future__ import annotations

import copy
import json
from typing import Any

from modeldeploy_operator import naming
from modeldeploy_operator.observed import DeploymentState, JobState, PodState

from modeldeploy import contracts
from modeldeploy.spec import ModelDeployment, normalize, parse_spec

OWNER_UID = "uid-1"
"""The uid of every ModelDeployment `make_md` builds: what its children's controller owner reference names."""

DIGITS_SPEC: dict[str, Any] = {"training": {"recipe": "cnn", "dataset": {"builtin": "digits"}, "epochs": 3}}


def make_md(
    spec: dict[str, Any] | None = None,
    *,
    name: str = "digits",
    generation: int = 1,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    obj = normalize(
        {
            "apiVersion": "modeldeploy.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "ns", "uid": "uid-1", "generation": generation},
            "spec": copy.deepcopy(spec if spec is not None else DIGITS_SPEC),
        }
    )
    obj["status"] = status or {}
    return obj


def model(md: dict[str, Any]) -> ModelDeployment:
    """The typed view of `md` that the builders take (decide parses it the same way)."""
    return ModelDeployment.from_object(md)


def report(md: dict[str, Any], **extra: Any) -> str:
    short = naming.short_spec_hash(parse_spec(md))
    body = {
        "ok": True,
        "version": f"v{short}",
        "path": f"{md['metadata']['name']}/v{short}",
        "specHash": contracts.spec_hash(md["spec"]),
        "reused": False,
        "accuracy": 0.95,
        "sourceAccuracy": 0.955,
        "quantization": "dynamic-uint8",
        "sizeBytes": 20480,
        "fp32SizeBytes": 51234,
        **extra,
    }
    return json.dumps(body)


def job(md: dict[str, Any], outcome: str = "Active", generation: int = 1) -> JobState:
    short = naming.short_spec_hash(parse_spec(md))
    return JobState(
        name=naming.job_name(md["metadata"]["name"], short),
        spec_hash=short,
        generation=generation,
        outcome=outcome,
        message="BackoffLimitExceeded: Job has reached the specified backoff limit" if outcome == "Failed" else "",
        component=naming.COMPONENT_TRAINING,
        controller_uid=OWNER_UID,
    )


def training_pod(md: dict[str, Any], phase: str, message: str | None) -> PodState:
    short = naming.short_spec_hash(parse_spec(md))
    return PodState(
        name=f"{md['metadata']['name']}-train-{short}-abcde",
        component=naming.COMPONENT_TRAINING,
        job_name=naming.job_name(md["metadata"]["name"], short),
        phase=phase,
        ready=False,
        broken_reason="",
        restarts=0,
        termination_message=message,
        unschedulable_message="",
    )


def serving_pod(name: str, *, ready: bool = True, broken: str = "", phase: str = "Running") -> PodState:
    return PodState(name, naming.COMPONENT_SERVING, "", phase, ready, broken, 3 if broken else 0, None, "")


def deployment(
    config_hash: str, version: str, desired: int = 1, ready: int | None = None, generation: int = 1
) -> DeploymentState:
    ready = desired if ready is None else ready
    return DeploymentState(
        name="digits",
        generation=generation,
        observed_generation=generation,
        desired=desired,
        replicas=desired,
        updated=desired,
        ready=ready,
        available=ready,
        available_condition=ready > 0,
        deadline_exceeded=False,
        config_hash=config_hash,
        model_version=version,
        controller_uid=OWNER_UID,
    )
