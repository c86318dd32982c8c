"""Drift: an edit of any field the operator sets is found; what the API server or other tools add is not drift."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from md_factories import OWNER_UID, make_md, model
from modeldeploy_operator import builders, decide, drift
from modeldeploy_operator.observed import ChildState, Observed, summarize_child, summarize_deployment
from modeldeploy_operator.settings import Settings

SETTINGS = Settings()
SERVED = {"version": "v1", "path": "digits/v1"}


def _as_stored(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as the API server returns it: defaults filled in, others' additions, canonical quantities."""
    obj = copy.deepcopy(manifest)
    obj["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "3"
    obj["metadata"]["labels"]["team"] = "ml"  # a label another tool adds
    obj["metadata"]["resourceVersion"] = "42"
    if obj["kind"] == "Deployment":
        obj["spec"]["progressDeadlineSeconds"] = 600
        pod = obj["spec"]["template"]["spec"]
        pod.update(dnsPolicy="ClusterFirst", schedulerName="default-scheduler", restartPolicy="Always")
        container = pod["containers"][0]
        # Defaults fill only what the manifest left out.
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container["readinessProbe"].update(timeoutSeconds=1, successThreshold=1)
        container["readinessProbe"]["httpGet"].setdefault("scheme", "HTTP")
        container["env"].append({"name": "EXTRA", "value": "added by a mutating webhook"})
        container["resources"]["requests"]["cpu"] = "100m"
        obj["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = "now"
        del obj["spec"]["template"]["metadata"]["annotations"]  # an empty map is stored as nothing
    if obj["kind"] == "Service":
        obj["spec"].update(clusterIP="10.0.0.7", sessionAffinity="None", ipFamilies=["IPv4"])
    return obj


def _md(**serving: Any) -> dict[str, Any]:
    spec = {"training": {"dataset": {"builtin": "digits"}}, "serving": {"replicas": 2, **serving}}
    md = make_md(spec)
    return md


def test_what_the_api_server_and_other_tools_add_is_no_drift() -> None:
    md = _md(resources={"requests": {"cpu": "0.1", "memory": "256Mi"}, "limits": {"memory": "1024Mi"}})
    deployment = builders.build_deployment(model(md), SERVED, SETTINGS)
    stored = _as_stored(deployment)
    stored["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "1Gi"
    assert drift.drift_of(deployment, drift.owned_view(stored)) == ""
    service = builders.build_service(model(md))
    assert drift.drift_of(service, drift.owned_view(_as_stored(service))) == ""


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda c, d: c.update(image="evil:1"), "containers[name=serving].image"),
        (lambda c, d: c["env"][1].update(value="other"), "env[name=MODELDEPLOY_MODEL_NAME].value"),
        (lambda c, d: c["resources"]["limits"].update(memory="2Gi"), "resources.limits.memory"),
        (lambda c, d: c["readinessProbe"].update(periodSeconds=30), "readinessProbe.periodSeconds"),
        (lambda c, d: c["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
        (lambda c, d: d["spec"].update(replicas=7), "spec.replicas"),
        (lambda c, d: d["metadata"]["annotations"].pop("modeldeploy.dev/config-hash"), "config-hash"),
    ],
)
def test_an_edit_of_a_deployment_field_the_operator_sets_is_drift(edit: Any, where: str) -> None:
    deployment = builders.build_deployment(model(_md()), SERVED, SETTINGS)
    stored = _as_stored(deployment)
    edit(stored["spec"]["template"]["spec"]["containers"][0], stored)
    assert where in drift.drift_of(deployment, drift.owned_view(stored))


def test_autoscaled_replicas_belong_to_the_hpa() -> None:
    md = _md(autoscaling={"minReplicas": 1, "maxReplicas": 5})
    deployment = builders.build_deployment(model(md), SERVED, SETTINGS)
    stored = _as_stored(deployment)
    stored["spec"]["replicas"] = 4
    assert drift.drift_of(deployment, drift.owned_view(stored)) == ""


def test_service_selector_is_one_value_and_a_port_edit_is_repaired_by_replacing_the_list() -> None:
    md = _md()
    service = builders.build_service(model(md))
    stored = _as_stored(service)
    stored["spec"]["selector"]["app"] = "web"  # a key added to an atomic map changes what it selects
    assert drift.drift_of(service, drift.owned_view(stored)) == "spec.selector"
    stored = _as_stored(service)
    stored["spec"]["ports"][0]["port"] = 9999
    observed = Observed(service=summarize_child(stored))
    plan = decide.Plan()
    decide._hold(plan, service, observed.service, lambda kind, child: False)
    assert plan.apply == [service]
    assert plan.patch == [
        ("Service", "digits", {"spec": {"ports": [*service["spec"]["ports"], {"$patch": "replace"}]}})
    ]


def test_a_container_port_edit_is_repaired_by_replacing_that_containers_ports() -> None:
    deployment = builders.build_deployment(model(_md()), SERVED, SETTINGS)
    stored = _as_stored(deployment)
    stored["metadata"]["ownerReferences"] = deployment["metadata"]["ownerReferences"]
    stored["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 9999
    plan = decide.Plan()
    decide._hold(plan, deployment, summarize_deployment(stored), lambda kind, child: False)
    assert plan.apply == [deployment] and "ports[name=http].containerPort" in plan.drifted[0]
    ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    only_ours = [{"name": "serving", "ports": [*ports, {"$patch": "replace"}]}]
    assert plan.patch == [("Deployment", "digits", {"spec": {"template": {"spec": {"containers": only_ours}}}})]
    # Any other drift is left to the apply alone.
    assert drift.ports_repair(deployment, "spec.template.spec.containers[name=serving].image") is None
    assert drift.ports_repair(deployment, "spec.template.spec.containers[name=nope].ports") is None


def test_a_drifted_child_is_applied_and_an_unchanged_one_is_not() -> None:
    md = _md()
    deployment = builders.build_deployment(model(md), SERVED, SETTINGS)
    stored = _as_stored(deployment)
    stored["metadata"]["ownerReferences"] = deployment["metadata"]["ownerReferences"]
    state = summarize_deployment(stored)
    assert state.controller_uid == OWNER_UID
    plan = decide.Plan()
    decide._hold(plan, deployment, state, lambda kind, child: False)
    assert plan.apply == []
    stored["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    decide._hold(plan, deployment, summarize_deployment(stored), lambda kind, child: False)
    assert plan.apply == [deployment] and "image" in plan.drifted[0]


def test_claim_metadata_is_held_but_not_its_spec() -> None:
    md = _md()
    claim = builders.build_claim(model(md))
    assert claim is not None
    stored = _as_stored(claim)
    stored["spec"]["resources"]["requests"]["storage"] = "5Gi"  # expanded by an admin: not ours to shrink
    stored["spec"]["volumeName"] = "pv-1"
    assert drift.drift_of(claim, drift.owned_view(stored), metadata_only=True) == ""
    del stored["metadata"]["labels"]["modeldeploy.dev/model"]
    assert "labels" in drift.drift_of(claim, drift.owned_view(stored), metadata_only=True)
    observed = Observed(claim=ChildState(**{**summarize_child(stored).__dict__}))
    assert observed.claim is not None and observed.claim.owned is not None


def test_quantities_compare_by_value() -> None:
    assert drift.quantity("500m") == drift.quantity("0.5")
    assert drift.quantity("1Gi") == drift.quantity("1024Mi")
    assert drift.quantity("http") is None
    assert drift.first_drift({"cpu": "0.5"}, {"cpu": "500m"}) == ""
    assert drift.first_drift({"cpu": "1"}, {"cpu": "2"}) == "cpu"
