"""Helpers and the module fixture of the GitOps tests: a local cluster of their own with Flux, the two Git repositories
users keep, and the operator run here as a process (as `make run` does); kwok plays the Deployment Flux applies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy.cluster import gitops
from modeldeploy.cluster.local import ClusterState, LocalCluster, clean_orphans, find_binaries
from modeldeploy.cluster.waiting import wait_crd_established, wait_until

REPO = Path(__file__).resolve().parents[2]
FLUX_OBJECTS = REPO / "manifests" / "flux" / "modeldeploy.yaml"
TEAM_SAMPLE = REPO / "samples" / "gitops" / "team-a-models"
TEAM_NAMESPACE = "team-a"
TEST_CLUSTER_PREFIX = "test-"  # as tests/conftest.py: clean_orphans finds a killed run's cluster by it
OPERATOR_REPO, TEAM_REPO = "modeldeploy", "team-a-models"
# The sample's intervals are for people (minutes); the tests shorten the team's so that drift is corrected and idle
# reconciles happen within seconds. The GitRepositories are told of each push at once, as a Flux Receiver would be.
TEAM_INTERVAL = "10s"


class Kubectl:
    def __init__(self, kubectl: str, env: dict[str, str]) -> None:
        self.path, self.env = kubectl, env

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [self.path, *args], input=input, capture_output=True, text=True, env=self.env, timeout=60, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def json(self, *args: str) -> Any:
        out = self(*args, "-o", "json", check=False)
        return json.loads(out) if out.strip() else None


class GitRepo:
    """A bare repository the cluster's Git server serves, with a work tree to commit into."""

    def __init__(self, root: Path, work: Path, name: str) -> None:
        self.bare = root / f"{name}.git"
        self.work = work / name
        self.name = name
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.bare)], check=True)
        subprocess.run(["git", "init", "-q", "-b", "main", str(self.work)], check=True)

    def git(self, *args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid"}
        env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
        return subprocess.run(
            ["git", "-C", str(self.work), *args], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()

    def commit_and_push(self, message: str) -> str:
        """Commit everything in the work tree, push it to main; returns the commit's SHA."""
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        self.git("push", "-q", str(self.bare), "main")
        return self.git("rev-parse", "HEAD")


@dataclass
class FluxEnv:
    """The cluster, its Git repositories and helpers on Flux's objects."""

    cluster: LocalCluster
    kubectl: Kubectl
    ports: dict[str, int]
    operator_repo: GitRepo
    team_repo: GitRepo
    operator_log: Path
    operator: subprocess.Popen[bytes] | None = None

    def flux_objects(self) -> str:
        """manifests/flux/modeldeploy.yaml with the URLs of the local Git server and the tests' team interval."""
        docs = [d for d in yaml.safe_load_all(FLUX_OBJECTS.read_text(encoding="utf-8")) if d]
        for doc in docs:
            name = doc["metadata"]["name"]
            if doc["kind"] == "GitRepository":
                doc["spec"]["url"] = gitops.git_url(self.ports, name)
            if doc["kind"] == "Kustomization" and name == "team-a-models":
                doc["spec"]["interval"] = TEAM_INTERVAL
        return yaml.safe_dump_all(docs)

    def request_reconcile(self, kind: str, name: str) -> None:
        """What `flux reconcile` and a webhook Receiver do: ask the controller to reconcile now."""
        stamp = f"{time.time():.6f}"
        self.kubectl(
            "annotate", "--overwrite", "-n", gitops.FLUX_NAMESPACE, kind, name,
            f"reconcile.fluxcd.io/requestedAt={stamp}",
        )  # fmt: skip

    def push(self, repo: GitRepo, message: str) -> str:
        sha = repo.commit_and_push(message)
        self.request_reconcile("gitrepository", repo.name)
        return sha

    def kustomization(self, name: str) -> dict[str, Any]:
        return dict(self.kubectl.json("get", "kustomization", "-n", gitops.FLUX_NAMESPACE, name) or {})

    def ready_at(self, name: str, sha: str) -> dict[str, Any] | None:
        """The Kustomization's Ready condition when it is True at this commit and current, else None."""
        ks = self.kustomization(name)
        status = ks.get("status") or {}
        if status.get("observedGeneration") != ks.get("metadata", {}).get("generation"):
            return None
        if not str(status.get("lastAppliedRevision", "")).endswith(sha):
            return None
        ready = condition(ks, "Ready")
        return ready if ready.get("status") == "True" else None

    def model(self, name: str = "digits") -> dict[str, Any]:
        return dict(self.kubectl.json("get", "modeldeployment", "-n", TEAM_NAMESPACE, name) or {})

    def reconcile_count(self, name: str) -> int:
        """How many reconciles of a Kustomization kustomize-controller has finished (its Prometheus metrics)."""
        url = f"http://127.0.0.1:{self.ports['kustomize-metrics']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        prefix = "gotk_reconcile_duration_seconds_count{"
        for line in text.splitlines():
            if line.startswith(prefix) and 'kind="Kustomization"' in line and f'name="{name}"' in line:
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    def start_operator(self) -> None:
        """The operator as a process here, once Flux has established the CRD (`make run` without its install)."""
        wait_crd_established(lambda *a: self.kubectl(*a, check=False), timeout=120)
        command = [sys.executable, "-m", "modeldeploy.cli", "operator", "--namespace", TEAM_NAMESPACE]
        with self.operator_log.open("ab") as out:
            self.operator = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env={**self.kubectl.env, "PYTHONUNBUFFERED": "1"}
            )

    def operator_leads(self) -> bool:
        return self.operator is not None and "leading as" in self.operator_log.read_text(errors="replace")


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxEnv]:
    """A cluster with Flux and the Git server, both repositories created empty and Flux's objects applied."""
    if shutil.which("git") is None:
        pytest.fail("git is not installed: the Git server and the tests' commits need it (apt-get install git)")
    clean_orphans(TEST_CLUSTER_PREFIX)
    bin_dir = find_binaries()
    cluster = LocalCluster(f"{TEST_CLUSTER_PREFIX}gitops-{os.getpid()}", gitops=True)
    env_holder: FluxEnv | None = None
    try:
        kubeconfig = cluster.up(bin_dir=bin_dir, owner_pid=os.getpid())
        state = ClusterState.load(cluster.directory)
        assert state is not None
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
        work = tmp_path_factory.mktemp("gitops")
        git_root = Path(state.gitops["git_root"])
        env_holder = FluxEnv(
            cluster=cluster,
            kubectl=Kubectl(str(bin_dir / "kubectl"), env),
            ports=state.ports,
            operator_repo=GitRepo(git_root, work, OPERATOR_REPO),
            team_repo=GitRepo(git_root, work, TEAM_REPO),
            operator_log=work / "operator.log",
        )
        env_holder.kubectl("apply", "-f", "-", input=env_holder.flux_objects())
        yield env_holder
    finally:
        if env_holder is not None and env_holder.operator is not None:
            env_holder.operator.terminate()
            try:
                env_holder.operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                env_holder.operator.kill()
                env_holder.operator.wait(timeout=10)
            if os.environ.get("MODELDEPLOY_SHOW_OPERATOR_LOG"):
                print(env_holder.operator_log.read_text(errors="replace"))
        if (cluster.directory / "logs").is_dir():  # the controllers' logs outlive the cluster, for a failed run
            shutil.copytree(cluster.directory / "logs", tmp_path_factory.mktemp("gitops-logs"), dirs_exist_ok=True)
        cluster.down()


def copy_tree(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)


def wait_kustomization_ready(flux: FluxEnv, name: str, sha: str, timeout: float) -> dict[str, Any]:
    return wait_until(
        lambda: flux.ready_at(name, sha),
        timeout=timeout,
        what=f"Kustomization {name} Ready at {sha[:8]}",
        interval=0.5,
        describe=lambda: (flux.kustomization(name).get("status") or {}).get("conditions"),
    )
