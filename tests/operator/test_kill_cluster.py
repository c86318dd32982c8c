"""The operator SIGKILLed at every phase of a ModelDeployment's life, a standby taking over each time (issue 13).

Local control plane; kwok plays the training and serving pods. kwok ends a training pod as soon as it runs, unless
its annotation `modeldeploy.dev/fake-result=hold` keeps it running until the test changes the annotation.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import random
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Models, OperatorProcess
from modeldeploy_operator import naming
from namespace_history import NamespaceHistory, job_is_complete

from modeldeploy.cluster.waiting import wait_until
from modeldeploy.spec import parse_spec

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# The shortest lease the settings allow with client-go's margins (retry < renew deadline; renew deadline + API
# timeout <= lease duration): a kill costs the standby 5 s of waiting, not 15.
FAST_LEASE = {
    "MODELDEPLOY_OPERATOR_LEASE_DURATION_SECONDS": "5",
    "MODELDEPLOY_OPERATOR_RENEW_DEADLINE_SECONDS": "3",
    "MODELDEPLOY_OPERATOR_RETRY_PERIOD_SECONDS": "0.5",
    "MODELDEPLOY_OPERATOR_API_TIMEOUT_SECONDS": "2",
}

# Kill points: (what the test waits to see of the model it just changed, the delay range then sampled before the
# kill, in seconds). Each delay range covers the phase's usual length on the local control plane (measured: the
# operator reacts to an event within ~0.1-0.5 s, kwok rolls 3 replicas in ~0.5 s), so the kills land at the phase's
# start, middle and end.
KILL_POINTS: dict[str, tuple[str, tuple[float, float]]] = {
    "pending": ("the new ModelDeployment, no Job of it yet", (0.0, 0.05)),
    "retrain-requested": ("the changed spec's generation, no Job of it yet", (0.0, 0.05)),
    "training": ("its training Job's pod running (held)", (0.0, 0.5)),
    "trained": ("its training Job complete, before the operator reads the report", (0.0, 0.15)),
    "unrecorded": ("its Job complete and the Deployment on the new version, its status write refused", (0.0, 1.0)),
    "deploying": ("its first Deployment made", (0.0, 0.3)),
    "rollout": ("its Deployment's template on the new version, pods rolling", (0.0, 0.3)),
}
# The training pod is held running until the test releases it.
HELD = {"training", "unrecorded"}
# (kill point, model): a model's first entry creates it, each later one retrains it (a new spec hash). Eight models,
# created over the run; every kill hits all of them at once, each in its own phase.
SCHEDULE: list[tuple[str, str]] = [
    ("pending", "m1"),
    ("training", "m2"),
    ("rollout", "m1"),
    ("trained", "m3"),
    ("unrecorded", "m2"),
    ("deploying", "m4"),
    ("trained", "m3"),
    ("retrain-requested", "m1"),
    ("rollout", "m4"),
    ("pending", "m5"),
    ("unrecorded", "m3"),
    ("training", "m2"),
    ("unrecorded", "m6"),
    ("trained", "m5"),
    ("deploying", "m7"),
    ("rollout", "m6"),
    ("training", "m3"),
    ("retrain-requested", "m7"),
    ("unrecorded", "m1"),
    ("trained", "m8"),
    ("training", "m5"),
    ("rollout", "m4"),
]
# An admission policy that refuses the operator's status writes of a ModelDeployment carrying this annotation: the
# leader then has applied the Deployment of a new version but cannot record the version, the state that a kill
# between those two writes leaves (a window of one request, too short to hit by timing alone).
REFUSE_STATUS = "test.modeldeploy.dev/refuse-status"


def _status_refusal(namespace: str) -> str:
    name = f"refuse-status-{namespace}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["modeldeploy.dev"],
                        "apiVersions": ["*"],
                        "operations": ["UPDATE"],
                        "resources": ["modeldeployments/status"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": f"!has(object.metadata.annotations) || !('{REFUSE_STATUS}' in "
                    "object.metadata.annotations)",
                    "message": "status writes refused by the kill test",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
        },
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy, binding]})


def _refuse_status(kubectl: Any, namespace: str, model: str, refuse: bool) -> None:
    change = f"{REFUSE_STATUS}=true" if refuse else f"{REFUSE_STATUS}-"
    kubectl("annotate", "md", model, "-n", namespace, change, "--overwrite")
    if refuse:  # the policy is enforced once the API server's informer has it: wait until it refuses

        def refused() -> bool:
            patch = ["patch", "md", model, "-n", namespace, "--subresource=status", "--type=merge"]
            result = kubectl(*patch, "-p", '{"status": {"phase": "Training"}}', "--dry-run=server", check=False)
            return "refused by the kill test" in result.stderr

        wait_until(refused, timeout=30, what="the admission policy refusing status writes")


def _spec(epochs: int, hold: bool) -> dict[str, Any]:
    training: dict[str, Any] = {"dataset": {"builtin": "digits"}, "epochs": epochs}
    if hold:  # not part of the spec hash: the version is the same with or without it
        training["podAnnotations"] = {"modeldeploy.dev/fake-result": "hold"}
    # spec.retainVersions is left at its default (3): a model retrained more often drops its oldest versions, and
    # the kills also find the reconciles that delete their Jobs and start the cleanup Job of their artifacts.
    return {"training": training, "serving": {"replicas": 3}}


def _version(model: str, spec: dict[str, Any]) -> str:
    """The version the spec trains: kwok's report names it after the Job's spec-hash label, as the trainer does."""
    return "v" + naming.short_spec_hash(parse_spec({"metadata": {"name": model}, "spec": spec}))


def _log_time(log: str, pattern: str) -> datetime.datetime | None:
    for line in log.splitlines():
        if re.search(pattern, line):
            return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return None


class OperatorPool:
    """Two operator processes, one leading: after a kill, a fresh standby is started at once."""

    def __init__(self, start: Callable[..., OperatorProcess]) -> None:
        self.start = start
        self.processes: list[OperatorProcess] = []
        self.killed: set[int] = set()
        self.exited_alone: list[str] = []

    def spawn(self) -> OperatorProcess:
        process = self.start(f"operator-{len(self.processes) + 1}", **FAST_LEASE)
        self.processes.append(process)
        return process

    def live(self) -> list[OperatorProcess]:
        return [p for p in self.processes if p.proc is not None and p.proc.poll() is None]

    def leader(self) -> OperatorProcess | None:
        leading = [p for p in self.live() if p.is_leading()]
        assert len(leading) <= 1, "two live operator processes say they lead"
        return leading[0] if leading else None

    def ready(self) -> OperatorProcess:
        """Wait for a leader and a standby; a process that ended without being killed (a fenced leader on a busy
        machine exits to be restarted) is noted and replaced."""
        for process in self.processes:
            if process.proc is not None and process.proc.poll() is not None and id(process) not in self.killed:
                self.killed.add(id(process))
                self.exited_alone.append(f"{process.log_path.name} exited {process.proc.returncode}")
        while len(self.live()) < 2:
            self.spawn()

        def both() -> OperatorProcess | None:
            leader = self.leader()
            standby = [p for p in self.live() if p is not leader and "standby" in p.log()]
            return leader if leader is not None and standby else None

        return wait_until(both, timeout=60, what="a leader and a standby", describe=self.logs)

    def kill_leader(self) -> OperatorProcess:
        leader = self.leader()
        assert leader is not None and leader.proc is not None
        leader.proc.send_signal(signal.SIGKILL)
        self.killed.add(id(leader))
        leader.proc.wait(timeout=10)
        return leader

    def logs(self) -> str:
        return "\n".join(f"== {p.log_path.name}\n{p.log()[-3000:]}" for p in self.processes)


@dataclass
class Kill:
    number: int
    point: str
    model: str
    delay: float
    state: str = ""
    takeover: float = 0.0
    converged: float = 0.0
    successor: str = ""
    bystander: str = ""


def _trigger(history: NamespaceHistory, point: str, model: str, version: str, generation: int) -> Callable[[], bool]:
    record = history.models[model]

    def seen() -> bool:
        md = record.md or {}
        dep = record.deployment or {}
        job = history.job_of(model, version)
        if point in ("pending", "retrain-requested"):
            return int((md.get("metadata") or {}).get("generation") or 0) == generation
        running = job is not None and int((job.get("status") or {}).get("ready") or 0) >= 1
        if point == "training":
            return running
        if point == "training-recorded":  # and the status says so
            return running and (md.get("status") or {}).get("observedGeneration") == generation
        if point == "trained":
            return job is not None and job_is_complete(job)
        deployed = ((dep.get("metadata") or {}).get("labels") or {}).get("modeldeploy.dev/model-version")
        if point == "deploying":
            return bool(dep)
        # unrecorded, rollout: the Deployment's template is on the new version. A rollout lasts about as long as one
        # watch event takes to reach this thread on a busy machine, so its start, not its middle, is what is waited
        # for: a kill point that could pass unseen would leave the test waiting for nothing.
        return deployed == version

    return seen


def _release(kubectl: Any, namespace: str, job: str) -> None:
    kubectl("annotate", "pods", "-n", namespace, "-l", f"job-name={job}", "modeldeploy.dev/fake-result=succeed",
            "--overwrite")  # fmt: skip


def _quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return (
        f"min {ordered[0]:.1f} s, median {statistics.median(ordered):.1f} s, p90 {p90:.1f} s, max {ordered[-1]:.1f} s"
    )


def test_killed_at_every_phase_a_standby_takes_over_and_nothing_is_lost_or_made_twice(
    start_operator: Callable[..., OperatorProcess], models: Models, kubectl: Any, namespace: str, api: Any
) -> None:
    """22 SIGKILLs of the leading operator, spread over a model's life: Pending (a new ModelDeployment, 2), a retrain
    just requested (2), Training with the Job's pod running (4), the Job just complete (4), the Job complete and the
    Deployment on the new version before the status records it (4, the status write held off by an admission
    policy), Deploying a first version (2) and mid-rollout of a retrained version (4). With each, another model (a
    bystander) is retrained at the same moment, so the kill also finds it wherever it is by then.

    Each kill waits for its point by watching the ModelDeployment, its Job and its Deployment, then a delay sampled
    uniformly over the phase's usual length (KILL_POINTS; the seed is printed, MODELDEPLOY_KILL_SEED replays it),
    so kills land early, midway and late in each phase; the state each actually hit is printed, classified from the
    API server's objects just after the kill (nothing writes then: the leader is dead, the standby still waits).

    Two operator processes run throughout (a leader and a standby, leader election with a 5 s lease): the leader is
    killed, the standby takes over, a fresh standby starts at once. After each kill every model must come back to
    Ready on its newest version; throughout, no training Job is made twice (a Job name never gets a second uid),
    status.versions never loses a version it must keep and no Job of such a version is deleted (retainVersions is
    the default 3: a version may go only once 3 newer ones are trained), and neither status.modelVersion nor the
    Deployment's model-version label ever goes back to an older version. Prints the seconds from each kill to
    convergence.
    """
    seed = int(os.environ.get("MODELDEPLOY_KILL_SEED") or random.SystemRandom().randrange(1_000_000))
    rng = random.Random(seed)
    print(f"\nkill schedule seed {seed} (MODELDEPLOY_KILL_SEED={seed} replays the delays)")
    kubectl("apply", "-f", "-", input=_status_refusal(namespace))
    pool = OperatorPool(start_operator)
    history = NamespaceHistory(api, namespace)
    history.start()
    epochs: dict[str, int] = {}
    kills: list[Kill] = []
    started = time.monotonic()
    try:
        for number, (point, model) in enumerate(SCHEDULE, 1):
            pool.ready()
            # A bystander: another model retrained at the same time, caught by the kill wherever it is then.
            bystander = rng.choice(sorted(m for m in epochs if m != model)) if len(epochs) > 1 else ""
            if bystander:
                epochs[bystander] += 1
                other = _spec(epochs[bystander], hold=False)
                history.expect(bystander, _version(bystander, other))
                models.apply(bystander, other)
            epochs[model] = epochs.get(model, 0) + 1
            spec = _spec(epochs[model], hold=point in HELD)
            version = _version(model, spec)
            job = f"{model}-train-{version.removeprefix('v')}"
            history.expect(model, version)
            models.apply(model, spec)
            what, (low, high) = KILL_POINTS[point]
            if point == "unrecorded":
                # The Training status of the new spec is written; from now on no status write passes; the Job ends.
                recorded = _trigger(history, "training-recorded", model, version, epochs[model])
                history.wait(recorded, 60, f"{model} training, in the status")
                _refuse_status(kubectl, namespace, model, refuse=True)
                _release(kubectl, namespace, job)
            history.wait(_trigger(history, point, model, version, epochs[model]), 60, f"kill {number}: {what}")
            kill = Kill(number, point, model, delay=rng.uniform(low, high))
            time.sleep(kill.delay)
            killed_at, killed_wall = time.monotonic(), datetime.datetime.now()
            pool.kill_leader()
            fresh = pool.spawn()
            time.sleep(0.3)  # the last writes before the kill reach the watches; nothing writes after it
            kill.state = history.describe(model)
            kill.bystander = f"{bystander}: {history.describe(bystander)}" if bystander else ""
            if point == "unrecorded":
                _refuse_status(kubectl, namespace, model, refuse=False)
            if point == "training" and number % 2:
                _release(kubectl, namespace, job)  # the Job completes while no operator leads
            new_leader = wait_until(pool.leader, timeout=60, what="a standby taking over", describe=pool.logs)
            taken = _log_time(new_leader.log(), "leading as")
            kill.takeover = (taken - killed_wall).total_seconds() if taken else -1.0
            kill.successor = "fresh" if new_leader is fresh else "standby"
            if point == "training" and not number % 2:
                _release(kubectl, namespace, job)  # the new leader sees the Job running, then complete
            done_at = history.wait(lambda: not history.converged(), 120, f"convergence after kill {number}")
            kill.converged = done_at - killed_at
            kills.append(kill)
            assert not history.violations, history.violations
    except (AssertionError, subprocess.TimeoutExpired):
        print(pool.logs())
        print("still converging:", history.converged())
        raise
    finally:
        history.stop()
        kubectl("delete", "-f", "-", "--ignore-not-found", input=_status_refusal(namespace), check=False)
        for kill in kills:
            print(
                f"kill {kill.number:2d} {kill.point:17s} {kill.model} +{kill.delay:.2f}s: {kill.state:55s} "
                f"takeover {kill.takeover:4.1f}s by the {kill.successor}, Ready again {kill.converged:5.1f}s"
            )
            if kill.bystander:
                print(f"        bystander {kill.bystander}")
        if pool.exited_alone:
            print("processes that ended without a kill:", pool.exited_alone)
        print(f"watch errors: {history.watch_errors}; whole run {time.monotonic() - started:.0f} s")
    print(f"{len(kills)} kills; seconds from kill to Ready: {_quantiles([k.converged for k in kills])}")
    print(f"seconds from kill to the new leader: {_quantiles([k.takeover for k in kills])}")
    hit = collections.Counter(k.state.split(":")[0] for k in kills)
    print("states the kills found:", dict(sorted(hit.items())))
    assert len(kills) == len(SCHEDULE) >= 20
    assert not history.violations, history.violations
    # The points that the test holds in place (a held pod, a refused status write) are hit every time.
    assert all("Job running" in k.state for k in kills if k.point == "training"), kills
    assert all("Deployment already on it" in k.state for k in kills if k.point == "unrecorded"), kills
