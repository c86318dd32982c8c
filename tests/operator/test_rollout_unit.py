"""Pin and canary, pure: which version each Deployment serves, the replica split, promotion and rollback."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from md_factories import OWNER_UID, deployment, make_md, model, serving_pod
from modeldeploy_operator import builders, decide, naming, rollout
from modeldeploy_operator.observed import CanaryMetrics, ChildState, DeploymentState, Observed, PodState, summarize_pod
from modeldeploy_operator.settings import Settings

from modeldeploy.spec import parse_spec

SETTINGS = Settings()
T0 = "2025-01-01T00:00:00Z"
T1 = "2025-01-01T00:01:00Z"  # 60 s later
T5 = "2025-01-01T00:05:00Z"  # 300 s later

OLD = {"version": "vold", "path": "digits/vold", "specHash": "aaaaaaaaaaaa", "jobName": "digits-train-aaaaaaaaaaaa"}
# A canary Deployment that is no longer wanted: scaled to zero (the operator has no right to delete Deployments).
SCALED_TO_ZERO = ("Deployment", "digits-canary", {"spec": {"replicas": 0}})
MID = {"version": "vmid", "path": "digits/vmid", "specHash": "bbbbbbbbbbbb", "jobName": "digits-train-bbbbbbbbbbbb"}


def _md(serving: dict[str, Any], status: dict[str, Any] | None = None, generation: int = 2) -> dict[str, Any]:
    """A ModelDeployment whose current spec's version is trained (newest), with `OLD` (and MID) retained."""
    spec = {"training": {"dataset": {"builtin": "digits"}}, "serving": serving}
    md = make_md(spec, generation=generation)
    new = {
        "version": "vnew",
        "path": "digits/vnew",
        "specHash": naming.short_spec_hash(parse_spec(md)),
        "jobName": "digits-train-new",
    }
    md["status"] = {"modelVersion": "vold", "versions": [new, MID, OLD], **(status or {})}
    return md


def _observed(**kwargs: Any) -> Observed:
    return Observed(claim=ChildState("digits-models", "", controller_uid=OWNER_UID), **kwargs)


def _conditions(plan: decide.Plan) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in plan.status["conditions"]}


def _deployments(plan: decide.Plan) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in plan.apply_new + plan.apply if m["kind"] == "Deployment"}


def _hash(manifest: dict[str, Any]) -> str:
    return str(manifest["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH])


def _as_rolled(manifest: dict[str, Any], name: str = "digits") -> DeploymentState:
    """The Deployment as the cache shows it once every replica of `manifest` is ready."""
    replicas = int(manifest["spec"]["replicas"])
    version = manifest["metadata"]["labels"][naming.LABEL_VERSION]
    return replace(deployment(_hash(manifest), version, replicas), name=name)


def _canary_pod(name: str, version: str = "vnew", **changes: Any) -> PodState:
    return replace(serving_pod(name), version=version, track=naming.TRACK_CANARY, **changes)


@pytest.mark.parametrize(
    ("total", "percent", "split"),
    [
        (4, 25, (3, 1)),
        (4, 50, (2, 2)),
        (4, 10, (3, 1)),
        (4, 90, (1, 3)),
        (10, 25, (7, 3)),
        (1, 25, (1, 1)),
        (0, 25, (0, 0)),
    ],
)
def test_the_share_is_the_replica_ratio_at_least_one_each(total: int, percent: int, split: tuple[int, int]) -> None:
    assert rollout.split_replicas(total, percent) == split


# -- pin --
def test_a_pin_rolls_the_deployment_to_the_retained_version_without_training() -> None:
    md = _md({"modelVersion": "vmid"}, {"modelVersion": "vnew"})
    plan = decide.decide(md, _observed(), SETTINGS, T0)
    assert [m["kind"] for m in plan.create] == []  # no training Job
    (main,) = _deployments(plan).values()
    assert main["metadata"]["labels"][naming.LABEL_VERSION] == "vmid"
    env = {e["name"]: e["value"] for e in main["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELDEPLOY_MODEL_VERSION"] == "vmid"
    assert env["MODELDEPLOY_MODEL_DIR"].endswith("/digits/vmid")
    assert main["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert plan.status["modelVersion"] == "vmid" and plan.status["pinned"] is True
    assert plan.status["endpoint"] == "http://digits.ns.svc:8080" and plan.status["modelPath"] == "digits/vmid"
    # Once rolled out it is Ready, and the Ready message says it is pinned.
    rolled = decide.decide({**md, "status": plan.status}, _observed(deployment=_as_rolled(main)), SETTINGS, T0)
    assert rolled.status["phase"] == "Ready"
    assert "pinned" in _conditions(rolled)["Ready"]["message"]


def test_a_pin_of_a_version_that_is_not_retained_keeps_serving_and_says_so() -> None:
    md = _md({"modelVersion": "vgone"}, {"modelVersion": "vnew"})
    plan = decide.decide(md, _observed(), SETTINGS, T0)
    (main,) = _deployments(plan).values()
    assert main["metadata"]["labels"][naming.LABEL_VERSION] == "vnew"
    assert plan.status["modelVersion"] == "vnew" and "pinned" not in plan.status
    degraded, ready = _conditions(plan)["Degraded"], _conditions(plan)["Ready"]
    assert degraded["status"] == "True" and degraded["reason"] == "VersionNotRetained"
    assert "vgone" in degraded["message"] and "vnew, vmid, vold" in degraded["message"]
    assert ready["status"] == "False" and ready["reason"] == "VersionNotRetained"
    assert _conditions(plan)["Stalled"]["status"] == "True"


def test_unpinning_returns_to_the_newest_version_even_with_a_canary_configured() -> None:
    md = _md({"canary": {"trafficPercent": 25}}, {"modelVersion": "vmid", "pinned": True})
    plan = decide.decide(md, _observed(), SETTINGS, T0)
    assert set(_deployments(plan)) == {"digits"}
    assert plan.status["modelVersion"] == "vnew" and "pinned" not in plan.status


def test_pinned_and_canaried_versions_are_never_garbage_collected() -> None:
    md = _md({"modelVersion": "vold", "replicas": 2})
    md["spec"]["retainVersions"] = 1
    md["status"]["modelVersion"] = "vnew"
    plan = decide.decide(md, _observed(), SETTINGS, T0)
    assert [v["version"] for v in plan.status["versions"]] == ["vnew", "vold"]
    (cleanup,) = [m for m in plan.create if m["metadata"]["labels"][naming.LABEL_COMPONENT] == "cleanup"]
    assert cleanup["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "/models/digits/vmid"
    canary = _md({"canary": {"trafficPercent": 50}, "replicas": 2})
    canary["spec"]["retainVersions"] = 1
    plan = decide.decide(canary, _observed(), SETTINGS, T0)
    assert [v["version"] for v in plan.status["versions"]] == ["vnew", "vold"]  # vnew canaried, vold stable


# -- canary --
def test_a_new_version_with_a_canary_runs_beside_the_stable_one_behind_the_one_service() -> None:
    md = _md({"canary": {"trafficPercent": 25}, "replicas": 4})
    plan = decide.decide(md, _observed(), SETTINGS, T0)
    deps = _deployments(plan)
    main, canary = deps["digits"], deps["digits-canary"]
    assert main["metadata"]["labels"][naming.LABEL_VERSION] == "vold" and main["spec"]["replicas"] == 3
    assert canary["metadata"]["labels"][naming.LABEL_VERSION] == "vnew" and canary["spec"]["replicas"] == 1
    assert canary["metadata"]["ownerReferences"][0]["uid"] == OWNER_UID
    (service,) = [m for m in plan.apply_new if m["kind"] == "Service"]
    selector = service["spec"]["selector"]
    for dep in (main, canary):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()  # the one Service sends to both
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The canary's own selector does not reach the stable pods; the stable pods carry no track label (no roll).
    assert canary["spec"]["selector"]["matchLabels"][naming.LABEL_TRACK] == "canary"
    assert naming.LABEL_TRACK not in main["spec"]["template"]["metadata"]["labels"]
    assert plan.status["modelVersion"] == "vold"
    assert plan.status["canary"] | {"startedAt": T0} == plan.status["canary"]
    assert plan.status["canary"]["share"] == "25%" and plan.status["canary"]["state"] == "Progressing"
    assert plan.status["phase"] == "Deploying"
    assert _conditions(plan)["Progressing"]["reason"] == "CanaryInProgress"
    assert _conditions(plan)["Ready"]["status"] == "False"


def _running_canary(serving: dict[str, Any], started: str = T0) -> tuple[dict[str, Any], Observed, dict[str, Any]]:
    """The state once both Deployments rolled out: (md with its status, observed, canary manifest)."""
    md = _md(serving)
    first = decide.decide(md, _observed(), SETTINGS, started)
    deps = _deployments(first)
    main, canary = deps["digits"], deps["digits-canary"]
    pods = tuple(_canary_pod(f"digits-canary-{i}") for i in range(canary["spec"]["replicas"]))
    observed = _observed(deployment=_as_rolled(main), canary=_as_rolled(canary, "digits-canary"), pods=pods)
    return {**md, "status": first.status}, observed, canary


def test_a_running_canary_is_progressing_in_kstatus_terms_and_keeps_its_start_time() -> None:
    md, observed, _ = _running_canary({"canary": {"trafficPercent": 25}, "replicas": 4})
    plan = decide.decide(md, observed, SETTINGS, T5)
    assert plan.apply == [] and plan.apply_new[0]["kind"] == "Service"  # both Deployments as built
    assert plan.status["canary"]["startedAt"] == T0
    assert plan.status["phase"] == "Deploying"
    conditions = _conditions(plan)
    assert conditions["Reconciling"]["status"] == "True" and conditions["Reconciling"]["reason"] == "CanaryInProgress"
    assert conditions["Stalled"]["status"] == "False"
    assert plan.status["readyDisplay"] == "4/4"


def test_raising_the_share_to_100_promotes_the_canary() -> None:
    md, observed, _ = _running_canary({"canary": {"trafficPercent": 25}, "replicas": 4})
    md["spec"]["serving"]["canary"]["trafficPercent"] = 100
    plan = decide.decide(md, observed, SETTINGS, T1)
    deps = _deployments(plan)
    assert set(deps) == {"digits"}
    assert (
        deps["digits"]["metadata"]["labels"][naming.LABEL_VERSION] == "vnew" and deps["digits"]["spec"]["replicas"] == 4
    )
    assert plan.status["modelVersion"] == "vnew"
    assert plan.status["canary"]["state"] == "Promoted" and plan.status["canary"]["reason"] == "PromotedBySpec"
    assert plan.patch == [] and plan.delete == []  # the canary serves until the main Deployment rolled
    assert [e.reason for e in plan.events if e.reason == "CanaryPromoted"] == ["CanaryPromoted"]
    after = replace(observed, deployment=_as_rolled(deps["digits"]))
    done = decide.decide({**md, "status": plan.status}, after, SETTINGS, T1)
    assert done.patch == [SCALED_TO_ZERO]
    assert done.status["phase"] == "Ready" and done.status["canary"]["state"] == "Promoted"


def test_removing_the_canary_from_the_spec_promotes_it_too() -> None:
    md, observed, _ = _running_canary({"canary": {"trafficPercent": 25}, "replicas": 4})
    del md["spec"]["serving"]["canary"]
    plan = decide.decide(md, observed, SETTINGS, T1)
    assert plan.status["modelVersion"] == "vnew" and "canary" not in plan.status
    assert plan.patch == [SCALED_TO_ZERO]


def test_a_canary_whose_pods_crash_is_rolled_back_and_stays_rolled_back() -> None:
    md, observed, _ = _running_canary({"canary": {"trafficPercent": 25, "promoteAfterSeconds": 120}, "replicas": 4})
    crashing = _canary_pod("digits-canary-0", broken_reason="container serving is in CrashLoopBackOff", restarts=3)
    plan = decide.decide(md, replace(observed, pods=(crashing,)), SETTINGS, T1)
    assert plan.patch == [SCALED_TO_ZERO]
    # The stable version takes back the canary's replicas; it never stopped serving.
    (main,) = _deployments(plan).values()
    assert main["metadata"]["labels"][naming.LABEL_VERSION] == "vold" and main["spec"]["replicas"] == 4
    assert plan.status["modelVersion"] == "vold"
    canary = plan.status["canary"]
    assert canary["state"] == "RolledBack" and canary["reason"] == "CanaryPodsFailing"
    assert "CrashLoopBackOff" in canary["message"]
    conditions = _conditions(plan)
    assert conditions["Degraded"]["reason"] == "CanaryRolledBack" and conditions["Stalled"]["status"] == "True"
    assert conditions["Ready"]["reason"] == "CanaryRolledBack"
    assert plan.status["phase"] == "Degraded"
    assert any(e.type == "Warning" and e.reason == "CanaryRolledBack" for e in plan.events)
    # The next reconciles do not start the same version again.
    again = decide.decide({**md, "status": plan.status}, replace(observed, canary=None, pods=()), SETTINGS, T5)
    assert set(_deployments(again)) <= {"digits"} and again.status["canary"]["state"] == "RolledBack"
    assert not any(e.reason == "CanaryRolledBack" for e in again.events)


def test_a_canary_that_stays_ready_is_promoted_after_promote_after_seconds() -> None:
    md, observed, _ = _running_canary({"canary": {"trafficPercent": 25, "promoteAfterSeconds": 120}, "replicas": 4})
    early = decide.decide(md, observed, SETTINGS, T1)
    assert early.status["canary"]["state"] == "Progressing"
    assert 60 < early.requeue_after <= 61  # woken when the window ends, without a watch event
    plan = decide.decide(md, observed, SETTINGS, T5)
    assert plan.status["modelVersion"] == "vnew"
    assert plan.status["canary"]["state"] == "Promoted" and plan.status["canary"]["reason"] == "PromotedAfterAnalysis"


def test_a_canary_not_ready_when_its_window_ends_is_rolled_back() -> None:
    md, observed, _ = _running_canary({"canary": {"trafficPercent": 25, "promoteAfterSeconds": 120}, "replicas": 4})
    unready = replace(observed, pods=(_canary_pod("digits-canary-0", ready=False, phase="Pending"),))
    plan = decide.decide(md, unready, SETTINGS, T5)
    assert plan.status["canary"]["state"] == "RolledBack" and plan.status["canary"]["reason"] == "CanaryNotReady"
    assert plan.status["modelVersion"] == "vold"


def test_the_error_rate_from_the_canary_pods_metrics_decides() -> None:
    serving = {"canary": {"trafficPercent": 25, "promoteAfterSeconds": 120, "maxErrorRate": 0.05}, "replicas": 4}
    md, observed, _ = _running_canary(serving)
    bad = decide.decide(md, replace(observed, canary_metrics=CanaryMetrics(requests=100, errors=6)), SETTINGS, T1)
    assert bad.status["canary"]["reason"] == "CanaryErrorRate" and "6/100" in bad.status["canary"]["message"]
    good = decide.decide(md, replace(observed, canary_metrics=CanaryMetrics(requests=100, errors=5)), SETTINGS, T5)
    assert good.status["canary"]["state"] == "Promoted" and "5/100" in good.status["canary"]["message"]
    unknown = decide.decide(md, observed, SETTINGS, T5)
    assert unknown.status["canary"]["reason"] == "CanaryMetricsUnavailable"
    # While the window runs, the operator comes back to read the rate again.
    watching = decide.decide(md, replace(observed, canary_metrics=CanaryMetrics(10, 0)), SETTINGS, T1)
    assert watching.requeue_after == 10.0 and watching.status["canary"]["requests"] == 10


def test_a_stable_version_s_failing_pods_are_degraded_but_a_canary_s_are_its_rollback() -> None:
    md, observed, _ = _running_canary({"canary": {"trafficPercent": 50}, "replicas": 2})
    stable_broken = replace(
        serving_pod("digits-abc", broken="container serving is in CrashLoopBackOff"), version="vold"
    )
    plan = decide.decide(md, replace(observed, pods=(*observed.pods, stable_broken)), SETTINGS, T1)
    assert _conditions(plan)["Degraded"]["reason"] == "PodsFailing"


def test_the_first_version_is_served_at_once_even_with_a_canary_configured() -> None:
    md = _md({"canary": {"trafficPercent": 25}})
    md["status"] = {}
    md["status"]["versions"] = [_md({})["status"]["versions"][0]]
    plan = decide.decide(md, _observed(), SETTINGS, T0)
    assert set(_deployments(plan)) == {"digits"} and "canary" not in plan.status


def test_the_canary_deployment_is_built_from_the_main_one() -> None:
    md = _md({"canary": {"trafficPercent": 25}, "replicas": 4})
    full = md
    main = builders.build_deployment(model(full), OLD, SETTINGS)
    canary = builders.build_canary_deployment(model(full), MID, SETTINGS, 1)
    assert canary["metadata"]["name"] == "digits-canary"
    main_pod, canary_pod = main["spec"]["template"]["spec"], canary["spec"]["template"]["spec"]
    assert main_pod["securityContext"] == canary_pod["securityContext"]
    assert main_pod["automountServiceAccountToken"] is False and canary_pod["automountServiceAccountToken"] is False
    assert _hash(canary) == _hash(builders.build_canary_deployment(model(full), MID, SETTINGS, 1))
    assert _hash(canary) != _hash(builders.build_canary_deployment(model(full), MID, SETTINGS, 2))


def test_argo_cd_reads_a_running_canary_as_progressing_and_a_rolled_back_one_as_degraded() -> None:
    """manifests/argocd/health.lua on the statuses decide writes (tests/install has the interpreter cases)."""
    import lupa  # noqa: PLC0415

    script = (Path(__file__).resolve().parents[2] / "manifests" / "argocd" / "health.lua").read_text()
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval(f"function(obj)\n{script}\nend")

    def health(md: dict[str, Any], plan: decide.Plan) -> tuple[str, str]:
        result = check(lua.table_from({**md, "status": plan.status}, recursive=True))
        return str(result["status"]), str(result["message"])

    md, observed, _ = _running_canary({"canary": {"trafficPercent": 25}, "replicas": 4})
    status, message = health(md, decide.decide(md, observed, SETTINGS, T1))
    assert status == "Progressing" and "canary version vnew serves 25%" in message
    crash = _canary_pod("digits-canary-0", broken_reason="container serving is in CrashLoopBackOff")
    status, message = health(md, decide.decide(md, replace(observed, pods=(crash,)), SETTINGS, T1))
    assert status == "Degraded" and message.startswith("CanaryRolledBack: canary version vnew was rolled back")


def test_the_error_rate_is_read_from_what_the_serving_pods_metrics_render() -> None:
    from modeldeploy_serving.metrics import Metrics  # noqa: PLC0415

    metrics = Metrics()
    metrics.set_model("digits")
    for code, times in (("200", 90), ("400", 4), ("500", 3), ("503", 1)):
        for _ in range(times):
            metrics.observe_request("rest", code, 0.001)
    metrics.observe_request("grpc", "OK", 0.001)
    metrics.observe_request("grpc", "INTERNAL", 0.001)
    metrics.observe_request("grpc", "INVALID_ARGUMENT", 0.001)
    counts = rollout.request_counts(metrics.render().decode())
    # A client's bad request (400, INVALID_ARGUMENT) is not the canary's failure; 5xx and INTERNAL are.
    assert counts == CanaryMetrics(requests=101, errors=5)
    assert rollout.request_counts("") == CanaryMetrics(0, 0)
    with pytest.raises(ValueError):
        rollout.request_counts('modeldeploy_requests_total{code="200" 3\n')


def test_metrics_are_wanted_only_while_a_canary_with_max_error_rate_runs() -> None:
    md = _md(
        {"canary": {"trafficPercent": 25, "maxErrorRate": 0.01}},
        {"canary": {"version": "vnew", "state": "Progressing"}},
    )
    assert rollout.wants_metrics(parse_spec(md), md["status"]) == "vnew"
    md["status"]["canary"]["state"] = "RolledBack"
    assert rollout.wants_metrics(parse_spec(md), md["status"]) == ""
    plain = _md({"canary": {"trafficPercent": 25}}, {"canary": {"version": "vnew", "state": "Progressing"}})
    assert rollout.wants_metrics(parse_spec(plain), plain["status"]) == ""


# -- Gateway API --
def test_with_a_gateway_the_route_splits_exactly_and_the_tracks_have_their_services() -> None:
    gateway = {"name": "public", "namespace": "gateways", "sectionName": "http", "hostnames": ["digits.example"]}
    md, observed, _ = _running_canary({"canary": {"trafficPercent": 10}, "replicas": 4, "gateway": gateway})
    md["status"].pop("route")  # as before the first apply
    plan = decide.decide(md, observed, SETTINGS, T1)
    (route,) = [m for m in plan.apply_new if m["kind"] == "HTTPRoute"]
    assert route["metadata"]["ownerReferences"][0]["uid"] == OWNER_UID
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "gateways",
         "sectionName": "http"}
    ]  # fmt: skip
    assert route["spec"]["hostnames"] == ["digits.example"]
    backends = {b["name"]: b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]}
    assert backends == {"digits-stable": 90, "digits-canary": 10}  # exact, not the replica ratio (25%)
    services = {m["metadata"]["name"]: m for m in plan.apply_new if m["kind"] == "Service"}
    assert services["digits-stable"]["spec"]["selector"][naming.LABEL_TRACK] == "stable"
    assert services["digits-canary"]["spec"]["selector"][naming.LABEL_TRACK] == "canary"
    deps = {
        m["metadata"]["name"]: m
        for m in decide.decide(md, _observed(), SETTINGS, T1).apply_new
        if m["kind"] == "Deployment"
    }
    assert deps["digits"]["spec"]["template"]["metadata"]["labels"][naming.LABEL_TRACK] == "stable"
    assert deps["digits-canary"]["spec"]["template"]["metadata"]["labels"][naming.LABEL_TRACK] == "canary"
    assert plan.status["route"]["canaryWeight"] == 10
    # Applied once per change: the recorded hash stops the next write; a promotion changes the weights.
    again = decide.decide({**md, "status": plan.status}, observed, SETTINGS, T1)
    assert not [m for m in again.apply_new if m["kind"] == "HTTPRoute"]
    md["spec"]["serving"]["canary"]["trafficPercent"] = 100
    promoted = decide.decide({**md, "status": plan.status}, observed, SETTINGS, T1)
    (route,) = [m for m in promoted.apply_new if m["kind"] == "HTTPRoute"]
    assert {b["name"]: b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]} == {
        "digits-stable": 100,
        "digits-canary": 0,
    }


def test_without_a_gateway_nothing_of_it_is_made() -> None:
    md, observed, _ = _running_canary({"canary": {"trafficPercent": 25}, "replicas": 4})
    plan = decide.decide(md, observed, SETTINGS, T1)
    assert not [m for m in plan.apply_new + plan.apply if m["kind"] == "HTTPRoute"]
    assert [m["metadata"]["name"] for m in plan.apply_new if m["kind"] == "Service"] == ["digits"]
    assert "route" not in plan.status


def test_a_canary_pod_that_restarted_once_is_a_rollback_that_quotes_its_last_words() -> None:
    md, observed, _ = _running_canary({"canary": {"trafficPercent": 25}, "replicas": 4})
    pod = summarize_pod(
        {
            "metadata": {
                "name": "digits-canary-x",
                "labels": {
                    naming.LABEL_COMPONENT: "serving",
                    naming.LABEL_VERSION: "vnew",
                    naming.LABEL_TRACK: "canary",
                },
            },
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {
                        "name": "serving",
                        "restartCount": 1,
                        "state": {"running": {}},
                        "lastState": {
                            "terminated": {
                                "reason": "Error",
                                "message": (
                                    "INFO loading\nERROR cannot serve /models/digits/vnew: model.onnx's sha256 "
                                    "is not the card's\nINFO uvicorn.error: Finished server process [1]\n"
                                ),
                            }
                        },
                    }
                ],
            },
        }
    )
    plan = decide.decide(md, replace(observed, pods=(pod,)), SETTINGS, T1)
    assert plan.status["canary"]["reason"] == "CanaryPodsFailing"
    assert plan.status["canary"]["message"] == (
        "canary pod digits-canary-x: it restarted 1 time(s) "
        "(last exit: Error: ERROR cannot serve /models/digits/vnew: model.onnx's sha256 is not the card's)"
    )


def test_with_autoscaling_the_hpa_keeps_the_stable_count_and_the_canary_adds_its_share() -> None:
    serving = {"canary": {"trafficPercent": 25}, "autoscaling": {"minReplicas": 2, "maxReplicas": 10}}
    md = _md(serving)
    hpa_scaled = replace(deployment("whatever", "vold", 8), name="digits")
    plan = decide.decide(md, _observed(deployment=hpa_scaled), SETTINGS, T0)
    deps = _deployments(plan)
    assert "replicas" not in deps["digits"]["spec"]  # the HPA's
    assert deps["digits-canary"]["spec"]["replicas"] == 2  # 25% of the HPA's 8
