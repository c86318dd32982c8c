"""A watch-fed record of one namespace's ModelDeployments, training Jobs and serving Deployments, with the promises a
killed operator must keep checked on every event (tests/operator/test_kill_cluster.py).

Three watches (the kubernetes client, on threads) keep the latest object of each kind and what moved over time: the
versions each ModelDeployment's status listed, the version its status and its Deployment served, the uid of every
training Job ever made. A promise broken at any moment, even one repaired a second later, is kept as a violation.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "modeldeploy.dev", "v1alpha1", "modeldeployments"
LABEL_MODEL = "modeldeploy.dev/model"
LABEL_VERSION = "modeldeploy.dev/model-version"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_SPEC_HASH = "modeldeploy.dev/spec-hash"
RETAINED = 3
"""spec.retainVersions's default: the newest versions kept with their Jobs; older ones may go, and only they."""


def _conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c.get("type", ""): c.get("status", "") for c in (obj.get("status") or {}).get("conditions") or []}


def job_is_complete(job: dict[str, Any]) -> bool:
    """As the operator reads a Job (observed.summarize_job): succeeded once Complete or SuccessCriteriaMet."""
    conditions = _conditions(job)
    return "True" in (conditions.get("Complete"), conditions.get("SuccessCriteriaMet"))


def is_rolled_out(deployment: dict[str, Any]) -> bool:
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    want = int(spec.get("replicas", 1))
    counts = [
        int(status.get(key) or 0) for key in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
    ]
    current = int(status.get("observedGeneration") or 0) >= int(deployment["metadata"].get("generation") or 0)
    return current and counts == [want] * 4


@dataclass
class Model:
    """What was seen of one ModelDeployment and its serving Deployment."""

    expected: list[str] = field(default_factory=list)
    """Its versions in the order the test asked for them (each spec change trains the next one)."""
    md: dict[str, Any] | None = None
    deployment: dict[str, Any] | None = None
    listed: set[str] = field(default_factory=set)
    """Every version status.versions has ever listed (a version may leave it only when RETAINED newer ones are
    trained)."""
    status_served: list[str] = field(default_factory=list)
    """status.modelVersion, each change."""
    deployed: list[str] = field(default_factory=list)
    """The Deployment's model-version label, each change."""


class NamespaceHistory:
    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client  # noqa: PLC0415 (integration tests only)

        self.namespace = namespace
        self.started = time.monotonic()
        self.models: dict[str, Model] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.job_uids: dict[str, set[str]] = {}
        self.violations: list[str] = []
        self.watch_errors = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        custom, batch, apps = (
            client.CustomObjectsApi(api_client),
            client.BatchV1Api(api_client),
            client.AppsV1Api(api_client),
        )

        # Plain functions (no docstring naming a model class): the watch then yields the objects as dicts.
        def mds(namespace: str, **kwargs: Any) -> Any:
            return custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kwargs)

        def jobs(namespace: str, **kwargs: Any) -> Any:
            return batch.list_namespaced_job(namespace, label_selector=f"{LABEL_COMPONENT}=training", **kwargs)

        def deployments(namespace: str, **kwargs: Any) -> Any:
            return apps.list_namespaced_deployment(namespace, label_selector=f"{LABEL_COMPONENT}=serving", **kwargs)

        self._lists: dict[str, Callable[..., Any]] = {"md": mds, "job": jobs, "deployment": deployments}

    # -- the watches --
    def start(self) -> None:
        for kind, lister in self._lists.items():
            thread = threading.Thread(target=self._follow, args=(kind, lister), name=f"watch-{kind}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _follow(self, kind: str, lister: Callable[..., Any]) -> None:
        from kubernetes import watch  # noqa: PLC0415
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        version = ""
        while not self._stop.is_set():
            try:
                if not version:  # (re)list: what a watch gap hid is seen again
                    listed = json.loads(lister(self.namespace, _preload_content=False).data)
                    for item in listed["items"]:
                        self._seen(kind, "LISTED", item)
                    version = listed["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(lister, self.namespace, resource_version=version, timeout_seconds=5)
                for event in stream:
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version = ""
                        break
                    version = obj["metadata"]["resourceVersion"]
                    self._seen(kind, event["type"], obj)
                    if self._stop.is_set():
                        break
            except ApiException as err:
                version = "" if err.status == 410 else version
                self.watch_errors += 1
                time.sleep(0.2)
            except Exception:  # the connection broke (the API server is busy): logged, then watched again
                logger.exception("watching %s", kind)
                self.watch_errors += 1
                time.sleep(0.2)

    # -- the record and its promises --
    def expect(self, model: str, version: str) -> None:
        """The test is about to ask `model` for `version`, the newest of its versions from now on."""
        with self._cond:
            self.models.setdefault(model, Model()).expected.append(version)

    def _violate(self, message: str) -> None:
        self.violations.append(f"{time.monotonic() - self.started:.1f}s {message}")

    def _rank(self, record: Model, model: str, version: str) -> int:
        if version not in record.expected:
            self._violate(f"{model}: version {version} is none the test asked for ({record.expected})")
            return -1
        return record.expected.index(version)

    def _moved(self, record: Model, model: str, served: list[str], version: str, what: str) -> None:
        if not version or (served and served[-1] == version):
            return
        rank = self._rank(record, model, version)
        if served and rank < max(self._rank(record, model, v) for v in served):
            self._violate(f"{model}: {what} went back to {version} after {served}")
        served.append(version)

    def _seen(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        with self._cond:
            if kind == "job":
                self._seen_job(event, obj)
            elif kind == "md":
                model = str(meta.get("name"))
                record = self.models.setdefault(model, Model())
                record.md = None if event == "DELETED" else obj
                status = obj.get("status") or {}
                listed = [str(v.get("version")) for v in status.get("versions") or []]
                if len(set(listed)) != len(listed):
                    self._violate(f"{model}: status.versions lists a version twice: {listed}")
                lost = [v for v in record.listed - set(listed) if not self._superseded(record, model, v, listed)]
                if lost:
                    self._violate(
                        f"{model}: status.versions lost {sorted(lost)} (now {listed}, rv {meta.get('resourceVersion')})"
                    )
                record.listed |= set(listed)
                self._moved(
                    record, model, record.status_served, str(status.get("modelVersion") or ""), "status.modelVersion"
                )
            elif kind == "deployment":
                model = str((meta.get("labels") or {}).get(LABEL_MODEL))
                if meta.get("name") == model:  # the main Deployment (a canary has a name of its own)
                    record = self.models.setdefault(model, Model())
                    record.deployment = None if event == "DELETED" else obj
                    version = str((meta.get("labels") or {}).get(LABEL_VERSION) or "")
                    self._moved(record, model, record.deployed, version, "the Deployment's model version")
            self._cond.notify_all()

    def _superseded(self, record: Model, model: str, version: str, trained: Any) -> bool:
        """May `version` go (spec.retainVersions): RETAINED newer versions are trained."""
        rank = self._rank(record, model, version)
        return sum(1 for v in set(trained) if self._rank(record, model, v) > rank) >= RETAINED

    def _seen_job(self, event: str, job: dict[str, Any]) -> None:
        name, uid = str(job["metadata"]["name"]), str(job["metadata"].get("uid"))
        labels = job["metadata"].get("labels") or {}
        model, version = str(labels.get(LABEL_MODEL)), f"v{labels.get(LABEL_SPEC_HASH)}"
        uids = self.job_uids.setdefault(name, set())
        if uid not in uids:
            uids.add(uid)
            if len(uids) > 1:
                self._violate(f"training Job {name} made again (uids {sorted(uids)})")
        if event == "DELETED":
            self.jobs.pop(name, None)
            # The operator deletes the Job of a version it drops in the reconcile that adds the newest version,
            # before its status write: the newest counts as trained once its Job is complete.
            record = self.models.setdefault(model, Model())
            complete = {
                f"v{(j['metadata'].get('labels') or {}).get(LABEL_SPEC_HASH)}"
                for j in self.jobs.values()
                if (j["metadata"].get("labels") or {}).get(LABEL_MODEL) == model and job_is_complete(j)
            }
            if not self._superseded(record, model, version, record.listed | complete):
                self._violate(f"training Job {name} of a retained version deleted")
        else:
            self.jobs[name] = job

    # -- questions the test asks --
    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> float:
        """Block until `predicate()` (called under the lock, on every event) is true; the monotonic time it was."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
                self._cond.wait(min(left, 0.5))
            return time.monotonic()

    def job_of(self, model: str, version: str) -> dict[str, Any] | None:
        return self.jobs.get(f"{model}-train-{version.removeprefix('v')}")

    def converged(self) -> list[str]:
        """What keeps the namespace from its goal (empty when every model is Ready on its newest version, its
        Deployment rolled out to it, with one training Job per version it asked for and all versions listed)."""
        waiting = []
        for model, record in self.models.items():
            if not record.expected:
                continue
            want = record.expected[-1]
            md, dep = record.md or {}, record.deployment or {}
            status = md.get("status") or {}
            generation = (md.get("metadata") or {}).get("generation")
            if status.get("observedGeneration") != generation or status.get("phase") != "Ready":
                seen = status.get("observedGeneration")
                waiting.append(f"{model}: phase {status.get('phase')} of generation {seen}/{generation}")
            elif status.get("modelVersion") != want:
                waiting.append(f"{model}: Ready on {status.get('modelVersion')}, not {want}")
            elif ((dep.get("metadata") or {}).get("labels") or {}).get(LABEL_VERSION) != want or not is_rolled_out(dep):
                waiting.append(f"{model}: Deployment not rolled out to {want}")
            elif [v.get("version") for v in status.get("versions") or []] != record.expected[::-1][:RETAINED]:
                listed = [v.get("version") for v in status.get("versions") or []]
                waiting.append(f"{model}: status.versions {listed}, not {record.expected[::-1][:RETAINED]}")
            else:
                names = sorted(n for n in self.jobs if n.startswith(f"{model}-train-"))
                wanted = sorted(f"{model}-train-{v.removeprefix('v')}" for v in record.expected[-RETAINED:])
                if names != wanted:
                    waiting.append(f"{model}: training Jobs {names}, not {wanted}")
        return waiting

    def describe(self, model: str) -> str:
        """Where `model` stands, in the words of the kill points (for the table the test prints): what comes before
        a colon names the state, the rest gives the counts."""
        with self._cond:
            record = self.models.get(model) or Model()
            want = record.expected[-1]
            md = record.md or {}
            status = md.get("status") or {}
            generation = (md.get("metadata") or {}).get("generation")
            job = self.job_of(model, want)
            dep = record.deployment or {}
            deployed = ((dep.get("metadata") or {}).get("labels") or {}).get(LABEL_VERSION)
            listed = want in [v.get("version") for v in status.get("versions") or []]
            made = "no Job yet" if job is None else "Job made"
            if not status:
                where = f"Pending (no status yet, {made})"
            elif status.get("observedGeneration") != generation:
                where = f"{status.get('phase')} (the status of the previous generation, {made})"
            elif job is None:
                where = f"{status.get('phase')} (no Job yet)"
            elif not job_is_complete(job):
                where = "Training (Job running)"
            elif not listed:
                where = "Training (Job complete, version not in the status"
                where += ", Deployment already on it)" if deployed == want else ")"
            elif deployed != want:
                where = f"{status.get('phase')} (version in the status, Deployment on {deployed})"
            elif not is_rolled_out(dep):
                counts = dep.get("status") or {}
                where = (
                    f"{status.get('phase')} (mid-rollout): {counts.get('updatedReplicas', 0)} of "
                    f"{dep['spec'].get('replicas')} updated, {counts.get('readyReplicas', 0)} ready"
                )
            else:
                where = f"{status.get('phase')} (rolled out)"  # Deploying: before the status write that says Ready
            return where
