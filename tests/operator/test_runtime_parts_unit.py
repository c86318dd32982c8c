"""The work queue, leader election's rule, the settings, and the observed-state summaries."""

from __future__ import annotations

import datetime
import threading
import time

import pytest
from modeldeploy_operator import observed
from modeldeploy_operator.leader import LeaderElector, is_free_for
from modeldeploy_operator.settings import SettingsError, settings_from_env
from modeldeploy_operator.storage import Kube
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


def _lease(holder: str, renewed: datetime.datetime, duration: int = 15) -> dict[str, object]:
    return {
        "spec": {
            "holderIdentity": holder,
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "leaseDurationSeconds": duration,
        }
    }


def test_lease_is_taken_only_when_free_ours_or_expired() -> None:
    now = datetime.datetime.now(datetime.UTC)
    assert is_free_for(None, "me", now)
    assert is_free_for(_lease("me", now), "me", now)
    assert not is_free_for(_lease("other", now - datetime.timedelta(seconds=5)), "me", now)
    assert is_free_for(_lease("other", now - datetime.timedelta(seconds=16)), "me", now)
    assert is_free_for(_lease("", now), "me", now)


def test_settings_come_from_the_environment_and_bad_values_say_which() -> None:
    settings = settings_from_env({"MODELDEPLOY_OPERATOR_TRAINING_IMAGE": "r/t:2", "MODELDEPLOY_OPERATOR_WORKERS": "3"})
    assert settings.training_image == "r/t:2" and settings.workers == 3
    assert settings.serving_image == "modeldeploy/serving:0.1.0"
    with pytest.raises(SettingsError, match="MODELDEPLOY_OPERATOR_WORKERS"):
        settings_from_env({"MODELDEPLOY_OPERATOR_WORKERS": "many"})


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


class _LeaseHeldBy:
    """A fake API holding one Lease whose holder a test sets."""

    def __init__(self, holder: str) -> None:
        self.holder = holder

    def get(self, kind: str, namespace: str, name: str) -> dict[str, object]:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": self.holder, "renewTime": now, "leaseDurationSeconds": 60}
        return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"}, "spec": spec}

    def replace(self, manifest: dict[str, object]) -> dict[str, object]:
        return manifest


def test_a_leader_whose_lease_another_takes_stops_at_the_next_renewal() -> None:
    kube = _LeaseHeldBy("me")
    elector = LeaderElector(kube, "ns", "lease", "me", duration=3)  # type: ignore[arg-type]
    assert elector.try_acquire()
    lost = threading.Event()
    elector.keep_renewing(lost.set)
    kube.holder = "intruder"
    started = time.monotonic()
    assert lost.wait(timeout=5)
    assert time.monotonic() - started < 2.5  # the next renewal (every second), not after 2/3 of the duration
    elector.release()


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
