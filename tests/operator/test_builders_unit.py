"""The children's manifests: what the contracts and the issue ask of them, checked without a cluster."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

from md_factories import make_md, model
from modeldeploy_operator import builders, naming, observed
from modeldeploy_operator.settings import Settings

from modeldeploy import contracts

SETTINGS = Settings()


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


def test_training_job_follows_the_training_contract() -> None:
    md = make_md()
    job = builders.build_training_job(model(md), SETTINGS)
    short = contracts.spec_hash(md["spec"])[:12]
    assert job["metadata"]["name"] == f"digits-train-{short}"
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"][naming.LABEL_MODEL] == "digits"
    assert pod["metadata"]["labels"][naming.LABEL_SPEC_HASH] == short
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "train"
    assert container["image"] == "modeldeploy/training:0.1.0"
    assert container["args"] == ["train", "--output", "/models"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    passed = json.loads(_env(container)[contracts.SPEC_ENV])
    assert passed["metadata"] == {"name": "digits"}
    assert passed["spec"]["compression"]["quantization"] == "auto"  # defaults applied
    assert {"name": "models", "mountPath": "/models"} in container["volumeMounts"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert job["metadata"]["ownerReferences"][0]["controller"] is True


def test_serving_change_keeps_the_job_name_and_training_change_makes_a_new_one() -> None:
    base = builders.build_training_job(model(make_md()), SETTINGS)["metadata"]["name"]
    serving = make_md({**make_md()["spec"], "serving": {"replicas": 5}})
    placement = make_md({"training": {**make_md()["spec"]["training"], "nodeSelector": {"gpu": "yes"}}})
    epochs = make_md({"training": {**make_md()["spec"]["training"], "epochs": 9}})
    assert builders.build_training_job(model(serving), SETTINGS)["metadata"]["name"] == base
    assert builders.build_training_job(model(placement), SETTINGS)["metadata"]["name"] == base
    assert builders.build_training_job(model(epochs), SETTINGS)["metadata"]["name"] != base


def test_custom_training_image_runs_first_with_the_output_directory() -> None:
    md = make_md({"training": {"recipe": "custom", "image": "me/trainer:1", "command": ["python", "t.py"]}})
    pod = builders.build_training_job(model(md), SETTINGS)["spec"]["template"]["spec"]
    (user,) = pod["initContainers"]
    assert user["image"] == "me/trainer:1"
    assert user["command"] == ["python", "t.py"]
    assert {"name": "output", "mountPath": "/workspace/output"} in user["volumeMounts"]
    assert {"name": "output", "mountPath": "/workspace/output"} in pod["containers"][0]["volumeMounts"]


def test_import_mounts_the_users_claim_read_only_at_data() -> None:
    md = make_md({"importModel": {"claimName": "uploads", "path": "models/m.keras"}})
    pod = builders.build_training_job(model(md), SETTINGS)["spec"]["template"]["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "uploads", "readOnly": True}} in pod["volumes"]
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in pod["containers"][0]["volumeMounts"]


def test_deployment_serves_the_version_directory_read_only_with_restricted_security() -> None:
    md = make_md({**make_md()["spec"], "serving": {"replicas": 2, "port": 9000}})
    dep = builders.build_deployment(model(md), {"version": "vabc", "path": "digits/vabc"}, SETTINGS)
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _env(container)
    assert env["MODELDEPLOY_MODEL_DIR"] == "/models/digits/vabc"
    assert env["MODELDEPLOY_HTTP_PORT"] == "9000"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["resources"]["requests"]["cpu"] == "100m"
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_autoscaling_leaves_replicas_to_the_hpa() -> None:
    md = make_md({**make_md()["spec"], "serving": {"autoscaling": {"minReplicas": 2, "maxReplicas": 6}}})
    dep = builders.build_deployment(model(md), {"version": "v1", "path": "digits/v1"}, SETTINGS)
    hpa = builders.build_hpa(model(md))
    assert "replicas" not in dep["spec"]
    assert hpa is not None
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 6
    assert hpa["spec"]["scaleTargetRef"]["name"] == "digits"
    assert builders.build_hpa(model(make_md())) is None


def test_selector_never_holds_the_version() -> None:
    dep = builders.build_deployment(model(make_md()), {"version": "v1", "path": "digits/v1"}, SETTINGS)
    assert naming.LABEL_VERSION not in dep["spec"]["selector"]["matchLabels"]
    assert dep["spec"]["template"]["metadata"]["labels"][naming.LABEL_VERSION] == "v1"


def test_existing_claim_means_no_new_claim() -> None:
    md = make_md({**make_md()["spec"], "storage": {"existingClaim": "shared"}})
    assert builders.build_claim(model(md)) is None
    job = builders.build_training_job(model(md), SETTINGS)
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "shared"}} in job["spec"]["template"]["spec"][
        "volumes"
    ]
    claim = builders.build_claim(model(make_md()))
    assert claim is not None and claim["spec"]["resources"]["requests"]["storage"] == "1Gi"


def _serving_pod(serving: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = json.loads(json.dumps(make_md()["spec"]))
    spec["serving"].update(serving or {})
    deployment = builders.build_deployment(model(make_md(spec)), {"version": "v1", "path": "digits/v1"}, SETTINGS)
    return dict(deployment["spec"]["template"]["spec"])


def test_serving_pods_keep_answering_until_endpoints_drop_them() -> None:
    pod = _serving_pod()
    (container,) = pod["containers"]
    # The CRD's default drain, well above what bench/realnode.py measures for endpoints + kube-proxy under load.
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == 15
    # The grace period covers the pre-stop wait and the server's own drain.
    assert pod["terminationGracePeriodSeconds"] > 15 + int(_env(container)["MODELDEPLOY_SHUTDOWN_GRACE_SECONDS"])


def test_drain_seconds_set_the_pre_stop_wait_and_zero_leaves_it_out() -> None:
    pod = _serving_pod({"drainSeconds": 60})
    (container,) = pod["containers"]
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == 60
    assert pod["terminationGracePeriodSeconds"] > 60 + int(_env(container)["MODELDEPLOY_SHUTDOWN_GRACE_SECONDS"])
    # A sleep of 0 is refused by API servers without the AllowZero gate: no hook at all instead.
    (container,) = _serving_pod({"drainSeconds": 0})["containers"]
    assert "lifecycle" not in container


def test_cleanup_job_runs_where_training_ran() -> None:
    spec = json.loads(json.dumps(make_md()["spec"]))
    spec["training"]["nodeSelector"] = {"modeldeploy.dev/node": "real"}
    spec["training"]["tolerations"] = [{"key": "modeldeploy.dev/real-node", "operator": "Exists"}]
    md = make_md(spec)
    job = builders.build_cleanup_job(model(md), [{"version": "v0", "path": "digits/v0"}], SETTINGS)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"modeldeploy.dev/node": "real"}
    assert pod["tolerations"] == [{"key": "modeldeploy.dev/real-node", "operator": "Exists"}]
    assert pod["containers"][0]["command"][-1] == "/models/digits/v0"
    assert pod["containers"][0]["image"] == SETTINGS.training_image  # no image from another registry


def test_auth_and_tls_mount_the_users_secrets_as_files_and_probe_over_https() -> None:
    serving = {"auth": {"secretName": "tokens-secret"}, "tls": {"secretName": "cert-manager-tls"}}
    md = make_md({**make_md()["spec"], "serving": serving})
    pod = builders.build_deployment(model(md), {"version": "vabc", "path": "digits/vabc"}, SETTINGS)["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = _env(container)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert volumes["auth-tokens"]["secret"]["secretName"] == "tokens-secret"
    assert volumes["tls"]["secret"]["secretName"] == "cert-manager-tls"
    assert {i["key"] for i in volumes["tls"]["secret"]["items"]} == {"tls.crt", "tls.key"}
    for name in ("auth-tokens", "tls"):
        assert mounts[name]["readOnly"] is True
        assert "subPath" not in mounts[name]  # a subPath mount would never see the Secret change
    assert env["MODELDEPLOY_AUTH_TOKEN_FILE"] == f"{mounts['auth-tokens']['mountPath']}/tokens"
    assert env["MODELDEPLOY_TLS_CERT_FILE"] == f"{mounts['tls']['mountPath']}/tls.crt"
    assert env["MODELDEPLOY_TLS_KEY_FILE"] == f"{mounts['tls']['mountPath']}/tls.key"
    # The kubelet's probes and Prometheus reach their paths without a token; the probes speak HTTPS.
    assert env["MODELDEPLOY_AUTH_OPEN_PATHS"].split(",") == ["/v2/health/live", "/v2/health/ready", "/metrics"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_protected_metrics_need_the_token_and_no_auth_changes_nothing() -> None:
    md = make_md({**make_md()["spec"], "serving": {"auth": {"secretName": "t", "protectMetrics": True}}})
    container = builders.build_deployment(model(md), {"version": "v", "path": "digits/v"}, SETTINGS)["spec"][
        "template"
    ]["spec"]["containers"][0]
    assert "/metrics" not in _env(container)["MODELDEPLOY_AUTH_OPEN_PATHS"]
    assert "scheme" not in container["readinessProbe"]["httpGet"]  # no TLS: the probes as before
    plain = builders.build_deployment(model(make_md()), {"version": "v", "path": "digits/v"}, SETTINGS)
    plain_container = plain["spec"]["template"]["spec"]["containers"][0]
    assert not any(name.startswith(("MODELDEPLOY_AUTH", "MODELDEPLOY_TLS")) for name in _env(plain_container))
    assert {v["name"] for v in plain["spec"]["template"]["spec"]["volumes"]} == {"models", "tmp"}


def test_network_policy_admits_only_the_serving_ports_from_what_allow_from_names() -> None:
    default = builders.build_network_policy(model(make_md()))
    assert default is not None
    assert default["spec"]["podSelector"] == {"matchLabels": naming.serving_selector("digits")}
    assert default["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = default["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {}}]  # every pod of the ModelDeployment's own namespace, nobody else
    assert [p["port"] for p in rule["ports"]] == [8080, 8081]
    assert default["metadata"]["ownerReferences"][0]["controller"] is True
    peers = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
        {"namespaceSelector": {"matchLabels": {"team": "web"}}},
    ]  # fmt: skip
    md = make_md({**make_md()["spec"], "serving": {"allowFrom": peers, "port": 9000}})
    policy = builders.build_network_policy(model(md))
    assert policy is not None
    assert policy["spec"]["ingress"][0]["from"] == peers
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == 9000
    assert (
        builders.build_network_policy(model(make_md({**make_md()["spec"], "serving": {"networkPolicy": False}})))
        is None
    )


def test_a_crash_looping_server_says_why_in_the_pod_summary() -> None:
    dep = builders.build_deployment(model(make_md()), {"version": "v", "path": "digits/v"}, SETTINGS)
    assert dep["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"
    why = "cannot serve /models/digits/v: /models/digits/v/model.onnx has sha256 ab12 but its card records cd34"
    pod = {
        "metadata": {"name": "digits-1", "labels": {naming.LABEL_COMPONENT: naming.COMPONENT_SERVING}},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": naming.SERVING_CONTAINER,
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": f"INFO loading\nERROR {why}\n"}},
                }
            ],
        },
    }
    assert observed.summarize_pod(pod).broken_reason == f"container serving is in CrashLoopBackOff: ERROR {why}"


def test_no_pod_of_a_model_mounts_a_service_account_token() -> None:
    md = make_md()
    pods = [
        builders.build_training_job(model(md), SETTINGS)["spec"]["template"]["spec"],
        builders.build_cleanup_job(model(md), [{"version": "v0", "path": "digits/v0"}], SETTINGS)["spec"]["template"][
            "spec"
        ],
        builders.build_deployment(model(md), {"version": "v1", "path": "digits/v1"}, SETTINGS)["spec"]["template"][
            "spec"
        ],
    ]
    assert [pod["automountServiceAccountToken"] for pod in pods] == [False, False, False]


def test_an_event_is_about_the_model_deployment_with_a_bounded_note() -> None:
    md = make_md()
    now = datetime.datetime(2026, 12, 2, 8, 30, 1, 250000, tzinfo=datetime.UTC)
    unique = uuid.UUID("0123456789abcdef0123456789abcdef")
    event = builders.build_event(
        md, "Warning", "TrainingFailed", "x" * 2000, reporting_instance="op-1", now=now, unique=unique
    )
    assert event["metadata"] == {"name": "digits.0123456789abcdef", "namespace": "ns"}
    assert event["eventTime"] == "2026-12-02T08:30:01.250000Z"  # events.k8s.io/v1 wants microseconds
    assert (event["type"], event["reason"], len(event["note"])) == ("Warning", "TrainingFailed", 1024)
    assert event["regarding"] == {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "name": "digits",
        "namespace": "ns",
        "uid": "uid-1",
    }
    assert (event["reportingController"], event["reportingInstance"]) == ("modeldeploy.dev/operator", "op-1")
