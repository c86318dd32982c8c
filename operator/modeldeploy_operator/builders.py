"""Pure builders of the children's manifests: the same ModelDeployment always gives the same objects."""

from __future__ import annotations

import copy
import datetime
import hashlib
import uuid
from typing import Any, Final

from modeldeploy import contracts, serving_settings
from modeldeploy.spec import API_VERSION, KIND, JsonObject, ModelDeployment, ModelDeploymentSpec, crd_default
from modeldeploy.spec import Serving as ServingSpec
from modeldeploy_operator import naming
from modeldeploy_operator.settings import Settings

MODELS_VOLUME: Final = "models"
DATA_VOLUME: Final = "data"
TMP_VOLUME: Final = "tmp"
OUTPUT_VOLUME: Final = "output"

# Resources when the spec gives none: enough for the digits models; a user's spec replaces them entirely.
DEFAULT_SERVING_RESOURCES: Final[dict[str, Any]] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}
DEFAULT_TRAINING_RESOURCES: Final[dict[str, Any]] = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"memory": "4Gi"},
}
SHUTDOWN_GRACE_SECONDS: Final = 20


def config_hash(manifest: dict[str, Any]) -> str:
    """Hash of a built manifest: a child whose annotation matches needs no write."""
    return hashlib.sha256(contracts.canonical_json(manifest).encode()).hexdigest()[:16]


def owner_reference(md: ModelDeployment) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": md.name,
        "uid": md.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(md: ModelDeployment, name: str, component: str, **labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": md.namespace,
        "labels": {**naming.base_labels(md.name, component), **labels},
        "annotations": {},
        "ownerReferences": [owner_reference(md)],
    }


def _stamp(manifest: dict[str, Any]) -> dict[str, Any]:
    """Record the manifest's hash on it (computed without the annotation itself)."""
    manifest["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH] = config_hash(manifest)
    return manifest


def restricted_container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_pod_security(settings: Settings) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_user,
        "fsGroup": settings.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _storage_access(spec: ModelDeploymentSpec) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """envFrom and pod-spec fields that give a pod the storage credentials the user named: the keys of their Secret
    as environment (named here, read only by the kubelet), or their ServiceAccount for workload identity."""
    storage = spec.storage
    env_from = [{"secretRef": {"name": storage.secret_ref.name}}] if storage.secret_ref else []
    pod_fields: dict[str, Any] = {}
    if storage.service_account_name:
        # Workload identity exchanges the ServiceAccount's token for cloud credentials: only then is it mounted.
        pod_fields = {"serviceAccountName": storage.service_account_name, "automountServiceAccountToken": True}
    return env_from, pod_fields


def build_claim(md: ModelDeployment) -> dict[str, Any] | None:
    """The artifact volume's claim, or None when the spec names an existing claim (the user's, never ours) or puts
    the artifact in object storage."""
    storage = md.spec.storage
    if storage.existing_claim or storage.uri:
        return None
    claim: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(md, naming.claim_name(md.name, md.spec), naming.COMPONENT_STORAGE),
        "spec": {
            "accessModes": [storage.access_mode],
            "resources": {"requests": {"storage": storage.size}},
        },
    }
    if storage.storage_class_name:
        claim["spec"]["storageClassName"] = storage.storage_class_name
    return _stamp(claim)


def training_env_spec(md: ModelDeployment) -> str:
    """MODELDEPLOY_SPEC: the whole ModelDeployment as stored (apiVersion, kind, metadata.name, spec)."""
    return contracts.canonical_json(
        {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": md.name}, "spec": md.spec.document}
    )


def _data_claim(spec: ModelDeploymentSpec) -> str | None:
    if spec.import_model is not None:
        return spec.import_model.claim_name or None  # none when the model comes from spec.importModel.uri
    dataset = spec.training.dataset if spec.training is not None else None
    return (dataset.claim_name or None) if dataset is not None else None


def _resources(given: Any, default: dict[str, Any]) -> dict[str, Any]:
    """A container's resources: the spec's as given (a Kubernetes type), else the operator's default."""
    return copy.deepcopy(dict(given) if given else default)


def _placement(pod_spec: dict[str, Any], node_selector: Any, tolerations: Any) -> None:
    """The spec's nodeSelector and tolerations on a pod, as given (lists, so that the drift check compares equal)."""
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = copy.deepcopy([dict(t) for t in tolerations])


def build_training_job(md: ModelDeployment, settings: Settings) -> dict[str, Any]:
    """The training (or import) Job of the current spec; its name and pod labels come from the spec hash."""
    spec = md.spec
    model = md.name
    full_hash = spec.hash
    short = full_hash[: naming.SHORT_HASH]
    training = spec.training
    labels = {naming.LABEL_SPEC_HASH: short}
    # With spec.storage.uri the version is written to a scratch emptyDir, then committed to object storage.
    models_source: dict[str, Any] = (
        {"emptyDir": {}}
        if spec.storage_uri
        else {"persistentVolumeClaim": {"claimName": naming.claim_name(model, spec)}}
    )
    volumes: list[dict[str, Any]] = [
        {"name": MODELS_VOLUME, **models_source},
        {"name": TMP_VOLUME, "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": MODELS_VOLUME, "mountPath": contracts.ARTIFACT_MOUNT},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    ]
    data_claim = _data_claim(spec)
    if data_claim:
        volumes.append({"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": data_claim, "readOnly": True}})
        mounts.append({"name": DATA_VOLUME, "mountPath": contracts.DATA_MOUNT, "readOnly": True})
    init_containers: list[dict[str, Any]] = []
    resources = _resources(training.resources if training else None, DEFAULT_TRAINING_RESOURCES)
    if training is not None and training.image:
        # A user's trainer needs none of our code: it runs first and leaves its model in /workspace/output.
        volumes.append({"name": OUTPUT_VOLUME, "emptyDir": {}})
        output_mount = {"name": OUTPUT_VOLUME, "mountPath": contracts.USER_OUTPUT_DIR}
        mounts.append(output_mount)
        user: dict[str, Any] = {
            "name": "user-train",
            "image": training.image,
            "imagePullPolicy": settings.image_pull_policy,
            "volumeMounts": [output_mount, *[m for m in mounts if m["name"] == DATA_VOLUME]],
            "resources": copy.deepcopy(resources),
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }
        if training.command:
            user["command"] = list(training.command)
        if training.args:
            user["args"] = list(training.args)
        init_containers.append(user)
    container = {
        "name": naming.TRAIN_CONTAINER,
        "image": settings.training_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["train", "--output", contracts.ARTIFACT_MOUNT],
        "env": [{"name": contracts.SPEC_ENV, "value": training_env_spec(md)}],
        "volumeMounts": mounts,
        "resources": resources,
        "securityContext": restricted_container_security(),
        "terminationMessagePath": contracts.DEFAULT_TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    env_from, access_fields = _storage_access(spec)
    if env_from:
        container["envFrom"] = env_from
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": restricted_pod_security(settings),
        "automountServiceAccountToken": False,  # the trainer never calls the API
        "containers": [container],
        "volumes": volumes,
        **access_fields,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if training is not None:
        _placement(pod_spec, training.node_selector, training.tolerations)
    metadata = _metadata(md, naming.job_name(model, short), naming.COMPONENT_TRAINING, **labels)
    metadata["annotations"][naming.ANNOTATION_GENERATION] = str(md.generation)
    if training is not None:
        backoff_limit, deadline = training.backoff_limit, training.active_deadline_seconds
    else:  # an import Job: spec.importModel has no such fields; it runs under spec.training's defaults (the CRD's)
        backoff_limit = int(crd_default("training", "backoffLimit"))
        deadline = int(crd_default("training", "activeDeadlineSeconds"))
    metadata["annotations"][naming.ANNOTATION_SPEC_HASH] = full_hash
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": backoff_limit,
            "activeDeadlineSeconds": deadline,
            # Exit 1 is the contract's reported failure (bad data, budget exceeded): retrying cannot fix it.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": naming.TRAIN_CONTAINER, "operator": "In", "values": [1]},
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]
            },
            "template": {
                "metadata": {
                    "labels": {**naming.base_labels(model, naming.COMPONENT_TRAINING), **labels},
                    "annotations": dict((training.pod_annotations if training else None) or {}),
                },
                "spec": pod_spec,
            },
        },
    }


def build_cleanup_job(md: ModelDeployment, versions: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """A Job that removes the artifact directories of versions dropped from the retained history."""
    model = md.name
    paths = sorted(f"{contracts.ARTIFACT_MOUNT}/{v['path']}" for v in versions if v.get("path"))
    names = [str(v["version"]) for v in versions]
    container = {
        "name": "cleanup",
        # The training image has `rm` and is on the nodes already: no second image to pull from another registry.
        "image": settings.cleanup_image or settings.training_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["rm", "-rf", "--", *paths],
        "volumeMounts": [{"name": MODELS_VOLUME, "mountPath": contracts.ARTIFACT_MOUNT}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": restricted_container_security(),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": restricted_pod_security(settings),
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [
            {
                "name": MODELS_VOLUME,
                "persistentVolumeClaim": {"claimName": naming.claim_name(model, md.spec)},
            }
        ],
    }
    # The artifacts live where the training Job wrote them (a node-local volume, say): run there too.
    training = md.spec.training
    if training is not None:
        _placement(pod_spec, training.node_selector, training.tolerations)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(md, naming.cleanup_job_name(model, names), naming.COMPONENT_CLEANUP),
        "spec": {
            "backoffLimit": 2,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": naming.base_labels(model, naming.COMPONENT_CLEANUP)},
                "spec": pod_spec,
            },
        },
    }


def build_deployment(
    md: ModelDeployment, served: dict[str, Any], settings: Settings, *, replicas: int | None = None
) -> dict[str, Any]:
    """The inference Deployment serving the version `served` ({"version", "path"}) with the current serving spec.

    With autoscaling on, `replicas` is left out: the HPA owns it and the operator never writes it back. `replicas`
    replaces spec.serving.replicas while a canary runs beside it (the stable share).
    """
    spec = md.spec
    model = md.name
    serving = spec.serving
    port = serving.port
    grpc_port = serving.grpc_port
    version = str(served["version"])
    drain = serving.drain_seconds
    env = serving_settings.environment(
        {
            "model_dir": f"{contracts.ARTIFACT_MOUNT}/{served['path']}",
            "model_name": model,
            "model_version": version,
            **serving_settings.from_spec(serving),
            "shutdown_grace_seconds": SHUTDOWN_GRACE_SECONDS,
        }
    )
    secret_volumes, secret_mounts, secret_env = _serving_secrets(serving)
    env.update(secret_env)
    # Only with TLS: without it the probes stay as they were, so an operator upgrade rolls no serving pod.
    scheme = {"scheme": "HTTPS"} if serving.tls else {}
    container = {
        "name": naming.SERVING_CONTAINER,
        "image": serving.image or settings.serving_image,
        "imagePullPolicy": settings.image_pull_policy,
        "ports": [
            {"name": "http", "containerPort": port, "protocol": "TCP"},
            {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"},
        ],
        "env": [{"name": key, "value": value} for key, value in env.items()],
        # A server that cannot start says why in its last log line: the kubelet keeps it as the termination
        # message, and the ModelDeployment's Degraded condition quotes it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http", **scheme},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http", **scheme},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        # Loading and warming a model can take a while; liveness must not kill a pod that is still loading.
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http", **scheme},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        **({"lifecycle": {"preStop": {"sleep": {"seconds": drain}}}} if drain else {}),
        "resources": _resources(serving.resources, DEFAULT_SERVING_RESOURCES),
        "securityContext": restricted_container_security(),
        "volumeMounts": [
            {"name": MODELS_VOLUME, "mountPath": contracts.ARTIFACT_MOUNT, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
            *secret_mounts,
        ],
    }
    pod_spec: dict[str, Any] = {
        "securityContext": restricted_pod_security(settings),
        "terminationGracePeriodSeconds": drain + SHUTDOWN_GRACE_SECONDS + 10,
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [
            {
                "name": MODELS_VOLUME,
                "persistentVolumeClaim": {"claimName": naming.claim_name(model, spec), "readOnly": True},
            },
            {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "256Mi"}},
            *secret_volumes,
        ],
    }
    _placement(pod_spec, serving.node_selector, serving.tolerations)
    selector = naming.serving_selector(model)
    if spec.storage_uri:
        _fetch_from_object_storage(
            pod_spec, container, spec=spec, model=model, served=served, settings=settings, selector=selector
        )
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "revisionHistoryLimit": spec.retain_versions,
        "progressDeadlineSeconds": 600,
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": serving.strategy.max_surge,
                "maxUnavailable": serving.strategy.max_unavailable,
            },
        },
        "template": {
            "metadata": {
                "labels": {
                    **naming.base_labels(model, naming.COMPONENT_SERVING),
                    **selector,
                    naming.LABEL_VERSION: version,
                    # Only with a Gateway: its Services tell the tracks apart (a canary's pods say canary).
                    **({naming.LABEL_TRACK: naming.TRACK_STABLE} if serving.gateway else {}),
                },
                "annotations": dict(serving.pod_annotations or {}),
            },
            "spec": pod_spec,
        },
    }
    if not serving.is_autoscaled:
        deployment_spec["replicas"] = serving.replicas if replicas is None else replicas
    metadata = _metadata(md, naming.serving_name(model), naming.COMPONENT_SERVING, **{naming.LABEL_VERSION: version})
    return _stamp({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": deployment_spec})


def build_canary_deployment(
    md: ModelDeployment, canary: dict[str, Any], settings: Settings, replicas: int
) -> dict[str, Any]:
    """The canary Deployment: the main one's pods serving version `canary`, `replicas` of them, beside the stable
    ones. Its pods keep the main selector's labels, so the model's one Service sends them their replica share of
    the traffic (no mesh); the track label keeps them apart from the main Deployment's own ReplicaSets."""
    model = md.name
    manifest = build_deployment(md, canary, settings, replicas=replicas)
    manifest["metadata"]["annotations"].pop(naming.ANNOTATION_CONFIG_HASH, None)
    manifest["metadata"]["name"] = naming.canary_name(model)
    manifest["metadata"]["labels"][naming.LABEL_TRACK] = naming.TRACK_CANARY
    selector = {**naming.serving_selector(model), naming.LABEL_TRACK: naming.TRACK_CANARY}
    manifest["spec"]["selector"] = {"matchLabels": selector}
    manifest["spec"]["template"]["metadata"]["labels"][naming.LABEL_TRACK] = naming.TRACK_CANARY
    manifest["spec"]["replicas"] = replicas  # the HPA scales the main Deployment only
    manifest["spec"]["revisionHistoryLimit"] = 1
    return _stamp(manifest)


# Where the serving container finds the user's Secrets (docs/contracts/serving.md).
AUTH_VOLUME: Final = "auth-tokens"
AUTH_DIR: Final = "/var/run/modeldeploy/auth"
TLS_VOLUME: Final = "tls"
TLS_DIR: Final = "/var/run/modeldeploy/tls"


def _serving_secrets(
    serving: ServingSpec,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """Volumes, mounts and environment for spec.serving.auth and .tls: the user's Secrets mounted as files by the
    kubelet (the operator names them and never reads them, so its RBAC has no Secrets), whole directories rather
    than subPath so that a changed Secret reaches the running pod."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    env: dict[str, str] = {}
    auth = serving.auth
    if auth is not None:
        items = [{"key": "tokens", "path": "tokens"}]
        volumes.append({"name": AUTH_VOLUME, "secret": {"secretName": auth.secret_name, "items": items}})
        mounts.append({"name": AUTH_VOLUME, "mountPath": AUTH_DIR, "readOnly": True})
        env["MODELDEPLOY_AUTH_TOKEN_FILE"] = f"{AUTH_DIR}/tokens"
        open_paths = ["/v2/health/live", "/v2/health/ready"] + ([] if auth.protect_metrics else ["/metrics"])
        env["MODELDEPLOY_AUTH_OPEN_PATHS"] = ",".join(open_paths)
    tls = serving.tls
    if tls is not None:
        items = [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]
        volumes.append({"name": TLS_VOLUME, "secret": {"secretName": tls.secret_name, "items": items}})
        mounts.append({"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": True})
        env["MODELDEPLOY_TLS_CERT_FILE"] = f"{TLS_DIR}/tls.crt"
        env["MODELDEPLOY_TLS_KEY_FILE"] = f"{TLS_DIR}/tls.key"
    return volumes, mounts, env


def build_service(md: ModelDeployment) -> dict[str, Any]:
    model = md.name
    serving = md.spec.serving
    return _stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(md, naming.serving_name(model), naming.COMPONENT_SERVING),
            "spec": {
                "type": "ClusterIP",
                "selector": naming.serving_selector(model),
                "ports": [
                    {"name": "http", "port": serving.port, "targetPort": "http", "protocol": "TCP"},
                    {
                        "name": "grpc",
                        "port": serving.grpc_port,
                        "targetPort": "grpc",
                        "protocol": "TCP",
                    },
                ],
            },
        }
    )


def build_network_policy(md: ModelDeployment) -> dict[str, Any] | None:
    """The serving pods' ingress: their HTTP and gRPC ports from what spec.serving.allowFrom names (default: the
    ModelDeployment's namespace), nothing else; None when spec.serving.networkPolicy is false."""
    model = md.name
    serving = md.spec.serving
    if not serving.network_policy:
        return None
    allowed: tuple[JsonObject, ...] = serving.allow_from or ({"podSelector": {}},)
    peers = copy.deepcopy([dict(p) for p in allowed])
    ports = [
        {"port": serving.port, "protocol": "TCP"},
        {"port": serving.grpc_port, "protocol": "TCP"},
    ]
    return _stamp(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _metadata(md, naming.serving_name(model), naming.COMPONENT_SERVING),
            "spec": {
                "podSelector": {"matchLabels": naming.serving_selector(model)},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": peers, "ports": ports}],
            },
        }
    )


def build_hpa(md: ModelDeployment) -> dict[str, Any] | None:
    """The HPA on the Deployment when autoscaling is on (None otherwise: then the operator deletes its HPA)."""
    autoscaling = md.spec.serving.autoscaling
    if autoscaling is None or not autoscaling.enabled:
        return None
    model = md.name
    return _stamp(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(md, naming.serving_name(model), naming.COMPONENT_SERVING),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": naming.serving_name(model)},
                "minReplicas": autoscaling.min_replicas,
                "maxReplicas": autoscaling.max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {
                                "type": "Utilization",
                                "averageUtilization": autoscaling.target_cpu_utilization_percentage,
                            },
                        },
                    }
                ],
            },
        }
    )


def build_event(
    md: dict[str, Any],
    event_type: str,
    reason: str,
    message: str,
    *,
    reporting_instance: str,
    now: datetime.datetime,
    unique: uuid.UUID,
) -> dict[str, Any]:
    """An events.k8s.io/v1 Event about `md` at `now`, named after it and `unique`."""
    meta = md["metadata"]
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{unique.hex[:16]}", "namespace": meta["namespace"]},
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "type": event_type,
        "reason": reason,
        "note": message[:1024],
        "action": "Reconcile",
        "reportingController": "modeldeploy.dev/operator",
        "reportingInstance": reporting_instance,
        "regarding": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
    }


FETCH_CONTAINER: Final = "fetch"
HOSTNAME_KEY: Final = "kubernetes.io/hostname"
ZONE_KEY: Final = "topology.kubernetes.io/zone"


def _fetch_from_object_storage(
    pod_spec: dict[str, Any],
    server: dict[str, Any],
    *,
    spec: ModelDeploymentSpec,
    model: str,
    served: dict[str, Any],
    settings: Settings,
    selector: dict[str, str],
) -> None:
    """Serving without a claim (spec.storage.uri): an init container from the serving image copies the version into
    an emptyDir, every file checked against its card, before the server starts; the replicas spread over nodes
    (and zones where nodes have the label), so that one node's loss or drain leaves the others serving."""
    size = spec.storage.size
    pod_spec["volumes"][0] = {"name": MODELS_VOLUME, "emptyDir": {"sizeLimit": size}}
    env_from, access_fields = _storage_access(spec)
    fetch_args = ["--uri", spec.storage_uri, "--model", model, "--version", str(served["version"])]
    fetch_args += ["--dest", contracts.ARTIFACT_MOUNT, "--max-size", size]
    fetch: dict[str, Any] = {
        "name": FETCH_CONTAINER,
        "image": server["image"],
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["modeldeploy", "fetch"],
        "args": fetch_args,
        "env": [{"name": "HOME", "value": "/tmp"}],
        # The fetch's one line of why (ChecksumMismatch, AccessDenied, ...) becomes the Degraded condition's message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": restricted_container_security(),
        "volumeMounts": [
            {"name": MODELS_VOLUME, "mountPath": contracts.ARTIFACT_MOUNT},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
    }
    if env_from:
        fetch["envFrom"] = env_from
    pod_spec["initContainers"] = [fetch]
    pod_spec.update(access_fields)
    # Nodes: a spread constraint. Zones: a preferred anti-affinity, not a second constraint, because the scheduler
    # scores no node for spreading when any node lacks one of the constraints' keys (podtopologyspread's
    # IgnoredNodes): on a cluster without zone labels (bare metal, kind, kwok) a zone constraint would silently turn
    # the node spreading off too. An anti-affinity term just counts nothing on a node without the label.
    pod_spec["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": HOSTNAME_KEY,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(selector)},
            # Only the pods of the same rollout are counted: old pods being replaced do not skew the new ones.
            "matchLabelKeys": ["pod-template-hash"],
        }
    ]
    pod_spec["affinity"] = {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {"labelSelector": {"matchLabels": dict(selector)}, "topologyKey": ZONE_KEY},
                }
            ]
        }
    }


def default_min_available(serving: ServingSpec) -> int | str | None:
    """spec.serving.minAvailable, else 1 for 2+ replicas (autoscaled: its minReplicas), else no budget."""
    if serving.min_available is not None:
        return serving.min_available
    replicas = serving.replicas
    if serving.autoscaling is not None and serving.autoscaling.enabled:
        replicas = serving.autoscaling.min_replicas
    return 1 if replicas >= 2 else None


def build_pdb(md: ModelDeployment) -> dict[str, Any] | None:
    """The serving pods' PodDisruptionBudget with spec.storage.uri (replicas on several nodes); None otherwise."""
    if not md.spec.storage_uri:
        return None
    min_available = default_min_available(md.spec.serving)
    if min_available is None:
        return None
    model = md.name
    return _stamp(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _metadata(md, naming.serving_name(model), naming.COMPONENT_SERVING),
            "spec": {
                "minAvailable": min_available,
                "selector": {"matchLabels": naming.serving_selector(model)},
                # A pod that never got Ready (a failed fetch) may be evicted: it serves nothing to protect.
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        }
    )


GATEWAY_GROUP: Final = "gateway.networking.k8s.io"


def build_track_service(md: ModelDeployment, track: str) -> dict[str, Any]:
    """The HTTP Service of one track's pods (stable or canary), a weighted backend of the HTTPRoute."""
    model = md.name
    port = md.spec.serving.port
    return _stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(md, naming.track_service_name(model, track), naming.COMPONENT_SERVING),
            "spec": {
                "type": "ClusterIP",
                "selector": {**naming.serving_selector(model), naming.LABEL_TRACK: track},
                "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
            },
        }
    )


def build_http_route(md: ModelDeployment, canary_percent: int) -> dict[str, Any] | None:
    """The HTTPRoute through the Gateway that spec.serving.gateway names (None without one): the stable and canary
    Services with exact weights, `canary_percent` of the requests to the canary (0 while none runs)."""
    gateway = md.spec.serving.gateway
    if gateway is None:
        return None
    model = md.name
    port = md.spec.serving.port
    parent: dict[str, Any] = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": gateway.name}
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name
    backends = [
        {"name": naming.track_service_name(model, track), "port": port, "weight": weight}
        for track, weight in ((naming.TRACK_STABLE, 100 - canary_percent), (naming.TRACK_CANARY, canary_percent))
    ]
    spec: dict[str, Any] = {"parentRefs": [parent], "rules": [{"backendRefs": backends}]}
    if gateway.hostnames:
        spec["hostnames"] = list(gateway.hostnames)
    return _stamp(
        {
            "apiVersion": f"{GATEWAY_GROUP}/v1",
            "kind": "HTTPRoute",
            "metadata": _metadata(md, naming.serving_name(model), naming.COMPONENT_SERVING),
            "spec": spec,
        }
    )
