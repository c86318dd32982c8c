"""The work queue, leader election's rule, the settings, and the observed-state summaries."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import threading
import time
from typing import Any

import pytest
from modeldeploy_operator import observed
from modeldeploy_operator.leader import LeaderElector
from modeldeploy_operator.runtime import Runtime
from modeldeploy_operator.settings import Settings, SettingsError, settings_from_env
from modeldeploy_operator.storage import Kube, NotFoundError
from modeldeploy_operator.workqueue import WorkQueue


def test_queue_deduplicates_and_requeues_a_key_changed_while_in_progress() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    queue.add("a")
    queue.add("b")
    assert queue.get() == "a"
    queue.add("a")  # changed while being reconciled
    assert queue.get() == "b"
    queue.done("b")
    queue.done("a")
    assert queue.get() == "a"
    queue.done("a")
    assert len(queue) == 0


def test_queue_delays_and_closes() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("later", 0.05)
    assert queue.get() == "later"
    queue.done("later")
    got: list[str | None] = []
    waiter = threading.Thread(target=lambda: got.append(queue.get()))
    waiter.start()
    queue.close()
    waiter.join(timeout=5)
    assert got == [None]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Leases:
    """A fake API holding one Lease: what the elector reads and writes (resourceVersion counts the writes)."""

    def __init__(self, spec: dict[str, object] | None) -> None:
        self.spec = spec
        self.version = 1
        self.writes = 0

    def get(self, kind: str, namespace: str, name: str) -> dict[str, object]:
        if self.spec is None:
            raise NotFoundError("gone", 404)
        meta = {"name": name, "namespace": namespace, "resourceVersion": str(self.version)}
        return {"metadata": meta, "spec": dict(self.spec)}

    def create(self, manifest: dict[str, Any]) -> bool:
        return self.replace(manifest) is not None

    def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.spec = dict(manifest["spec"])
        self.version += 1
        self.writes += 1
        return manifest


def _stamp(seconds_ago: float) -> str:
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _elector(kube: Any, clock: _Clock, identity: str = "me") -> LeaderElector:
    return LeaderElector(kube, "ns", "lease", identity, duration=15, renew_deadline=10, retry_period=2, clock=clock)


def test_a_lease_whose_renew_time_is_old_but_whose_record_just_changed_is_not_taken() -> None:
    # The holder's renewTime says 20 s ago (its clock, or ours, is off), but this process has just seen the record:
    # client-go counts the lease duration from when the record was last seen to change, on the local clock.
    leases = _Leases({"holderIdentity": "other", "renewTime": _stamp(20), "leaseDurationSeconds": 15})
    clock = _Clock()
    elector = _elector(leases, clock)
    assert not elector.try_acquire() and elector.seen_holder == "other"
    clock.now += 14
    assert not elector.try_acquire()
    # The holder renews (the record changes): the count starts again.
    leases.spec = {**(leases.spec or {}), "renewTime": _stamp(19)}
    clock.now += 2
    assert not elector.try_acquire()
    clock.now += 14
    assert not elector.try_acquire() and leases.writes == 0
    clock.now += 1.5  # 15.5 s without a change since this process saw the last one: the holder is gone
    assert elector.try_acquire() and leases.writes == 1
    assert (leases.spec or {})["holderIdentity"] == "me" and (leases.spec or {})["leaseTransitions"] == 1


def test_a_lease_free_missing_or_ours_is_taken_at_once() -> None:
    clock = _Clock()
    assert _elector(_Leases(None), clock).try_acquire()
    assert _elector(_Leases({"holderIdentity": "", "renewTime": _stamp(0)}), clock).try_acquire()
    assert _elector(_Leases({"holderIdentity": "me", "renewTime": _stamp(0)}), clock).try_acquire()


def test_the_fence_closes_at_the_renew_deadline_of_the_last_successful_renewal() -> None:
    leases = _Leases(None)
    clock = _Clock()
    elector = _elector(leases, clock)
    assert not elector.may_write()  # a standby never writes
    assert elector.try_acquire() and elector.may_write()
    clock.now += 9.9
    assert elector.may_write()
    clock.now += 0.2  # 10.1 s after the renewal started: a standby may take over at 15 s, so stop now
    assert not elector.may_write()
    assert elector.try_acquire() and elector.may_write()  # a late renewal that succeeds opens it again


def _from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """settings_from_env with exactly `env` as the operator's variables."""
    for name in [name for name in os.environ if name.upper().startswith("MODELDEPLOY_OPERATOR_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return settings_from_env()


def test_settings_enforce_client_gos_lease_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _from_env(monkeypatch, {})
    timing = (settings.retry_period_seconds, settings.renew_deadline_seconds, settings.api_timeout_seconds)
    assert (timing, settings.lease_duration_seconds) == ((2, 10, 5), 15)  # client-go's defaults
    short = _from_env(monkeypatch, {"MODELDEPLOY_OPERATOR_LEASE_DURATION_SECONDS": "6"})  # the others follow
    assert short.retry_period_seconds < short.renew_deadline_seconds == 4 < short.lease_duration_seconds
    assert short.api_timeout_seconds == 2
    with pytest.raises(SettingsError, match="RENEW_DEADLINE_SECONDS"):
        _from_env(monkeypatch, {"MODELDEPLOY_OPERATOR_RENEW_DEADLINE_SECONDS": "15"})
    with pytest.raises(SettingsError, match="API_TIMEOUT_SECONDS"):
        _from_env(monkeypatch, {"MODELDEPLOY_OPERATOR_API_TIMEOUT_SECONDS": "30"})


def test_settings_come_from_the_environment_and_bad_values_say_which(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"MODELDEPLOY_OPERATOR_TRAINING_IMAGE": "r/t:2", "MODELDEPLOY_OPERATOR_WORKERS": "3"}
    settings = _from_env(monkeypatch, env)
    assert settings.training_image == "r/t:2" and settings.workers == 3
    assert settings.serving_image == "modeldeploy/serving:0.1.0"
    with pytest.raises(SettingsError, match="MODELDEPLOY_OPERATOR_WORKERS"):
        _from_env(monkeypatch, {"MODELDEPLOY_OPERATOR_WORKERS": "many"})


def test_pod_summary_reads_the_train_container_termination_message_and_crash_loops() -> None:
    pod = {
        "metadata": {"name": "p", "labels": {"app.kubernetes.io/component": "training", "job-name": "j"}},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "name": "train",
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "message": '{"ok": true}'}},
                }
            ],
        },
    }
    summary = observed.summarize_pod(pod)
    assert summary.termination_message == '{"ok": true}' and summary.job_name == "j"
    crashing = {
        "metadata": {"name": "s", "labels": {}},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "serving", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ],
        },
    }
    summary = observed.summarize_pod(crashing)
    assert "CrashLoopBackOff" in summary.broken_reason and summary.restarts == 4


def test_job_summary_outcomes() -> None:
    done = {
        "metadata": {"name": "j", "annotations": {"modeldeploy.dev/generation": "3"}},
        "status": {"conditions": [{"type": "Complete", "status": "True"}]},
    }
    failed = {
        "metadata": {"name": "j"},
        "status": {
            "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "m"}]
        },
    }
    assert observed.summarize_job(done).outcome == "Succeeded"
    assert observed.summarize_job(done).generation == 3
    assert observed.summarize_job(failed).outcome == "Failed"
    assert observed.summarize_job({"metadata": {"name": "j"}}).outcome == "Active"


def test_a_leader_whose_lease_another_takes_stops_at_the_next_renewal() -> None:
    kube = _Leases({"holderIdentity": "me", "renewTime": _stamp(0), "leaseDurationSeconds": 3})
    elector = LeaderElector(kube, "ns", "lease", "me", duration=3, renew_deadline=2, retry_period=0.5)  # type: ignore[arg-type]
    assert elector.try_acquire()
    lost = threading.Event()
    elector.keep_renewing(lost.set)
    kube.spec = {"holderIdentity": "intruder", "renewTime": _stamp(0), "leaseDurationSeconds": 60}
    started = time.monotonic()
    assert lost.wait(timeout=5)
    assert time.monotonic() - started < 1.5  # the next renewal, not after the renew deadline
    assert not elector.may_write()
    writes = kube.writes
    elector.release()
    assert kube.writes == writes  # a lost leader releases nothing


def test_the_client_counts_its_requests_by_method_and_resource() -> None:
    kube = Kube(api_client=None, field_manager="test")
    kube._count("PATCH", Kube.path("ModelDeployment", "ns", "m", "status"))
    kube._count("POST", Kube.path("Job", "ns"))
    kube._count("POST", "/apis/events.k8s.io/v1/namespaces/ns/events")
    kube._count("POST", "/apis/events.k8s.io/v1/namespaces/ns/events")
    assert kube.calls() == {"PATCH modeldeployments/status": 1, "POST jobs": 1, "POST events": 2}


def test_queue_holds_a_key_back_until_its_minimum_interval_ends() -> None:
    queue: WorkQueue[str] = WorkQueue(min_interval=0.3)
    queue.add("a")
    assert queue.get() == "a"
    started = time.monotonic()
    queue.done("a")
    queue.add("a")  # too soon: held back ...
    queue.add("a")  # ... and still one key
    queue.add("b")  # another key is not held back
    assert queue.get() == "b"
    queue.done("b")
    assert queue.get() == "a"
    assert time.monotonic() - started >= 0.29
    queue.add("a")  # changed while in progress: once more, after the interval
    queue.done("a")
    assert len(queue) == 1
    assert queue.get() == "a"
    queue.done("a")
    assert len(queue) == 0


class _Lister:
    """What the API server lists now: uids by kind; counts the lists."""

    def __init__(self, uids: dict[str, set[str]]) -> None:
        self.uids = uids
        self.lists: list[tuple[str, str, str]] = []
        self.field_manager = "test"

    def list_uids(self, kind: str, namespace: str, label_selector: str = "") -> set[str]:
        self.lists.append((kind, namespace, label_selector))
        return set(self.uids.get(kind, set()))


def test_the_audit_hides_children_deleted_during_a_watch_gap_and_queues_their_model() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    key = ("ns", "digits")
    md = {"metadata": {"name": "digits", "namespace": "ns", "uid": "md-1"}, "spec": {}, "status": {}}
    deployment = observed.summarize_deployment({"metadata": {"name": "digits", "uid": "dep-1"}})
    service = observed.summarize_child({"metadata": {"name": "digits", "uid": "svc-1"}})
    indices: dict[str, Any] = {"md_index": {key: [md]}, "deployment_index": {key: [deployment]}}
    indices |= {"service_index": {key: [service]}, "hpa_index": {}, "claim_index": {}, "job_index": {}}
    indices |= {"pod_index": {}}
    # The Deployment was deleted while the watch was cut: the API server lists only the others.
    kube = _Lister({"ModelDeployment": {"md-1"}, "Service": {"svc-1"}})
    runtime = Runtime(settings=Settings(), kube=kube, loop=loop, indices=indices)  # type: ignore[arg-type]
    try:
        assert runtime.snapshot(key)[1].deployment is not None
        assert runtime.audit() == 1
        assert runtime.queue.get() == key
        md_now, seen = runtime.snapshot(key)
        assert md_now is not None and seen.deployment is None and seen.service is not None
        # One list per kind with entries, in the namespace of the entries, with the watch's label selector.
        assert sorted(kind for kind, _, _ in kube.lists) == ["Deployment", "ModelDeployment", "Service"]
        assert ("Deployment", "ns", "app.kubernetes.io/managed-by=modeldeploy-operator") in kube.lists
        # A Deployment made again under the same name replaces the entry (kopf keys entries by name): seen again.
        indices["deployment_index"][key] = [
            observed.summarize_deployment({"metadata": {"name": "digits", "uid": "dep-2"}})
        ]
        kube.uids["Deployment"] = {"dep-2"}
        assert runtime.audit() == 0
        assert runtime.snapshot(key)[1].deployment is not None and runtime._stale == frozenset()
    finally:
        runtime.queue.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


def test_the_metadata_list_follows_continue_tokens() -> None:
    kube = Kube(api_client=None, field_manager="test")
    pages = [
        {"metadata": {"continue": "next"}, "items": [{"metadata": {"uid": "a"}}, {"metadata": {"uid": "b"}}]},
        {"metadata": {}, "items": [{"metadata": {"uid": "c"}}]},
    ]
    asked: list[tuple[str, dict[str, str], str]] = []

    def call(method: str, path: str, *, query: dict[str, str], accept: str, **_: Any) -> tuple[int, bytes, Any]:
        asked.append((path, query, accept))
        return 200, json.dumps(pages[len(asked) - 1]).encode(), {}

    kube._call = call  # type: ignore[method-assign]
    assert kube.list_uids("Pod", "", "a=b") == {"a", "b", "c"}
    assert asked[0][0] == "/api/v1/pods" and asked[1][1]["continue"] == "next"
    assert asked[0][1]["labelSelector"] == "a=b" and "PartialObjectMetadataList" in asked[0][2]
