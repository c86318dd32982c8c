"""`make kind-demo` end to end with the real kind CLI: kind-up, kind-load, kind-deploy, kind-sample, kind-predict and
kind-down, run as a user runs them, on a node image built here (hack/kind-node-image.sh) with no registry.

The kind CLI and the node image are built once per machine (cached). Where the Docker engine cannot run privileged
containers (a capability bounding set without CAP_SYS_RESOURCE), the test starts a dockerd of its own for kind
(hack/kind-docker.sh) and stops it at the end; the project's images are copied into it from the default engine.
A cold run builds the node image (minutes of CPU on two cores): in CI (CI=true) the test runs only with
MODELDEPLOY_KIND_TEST=1. MODELDEPLOY_KIND_TEST=0 skips it anywhere.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kind, pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
KIND_DOCKER = REPO / "hack" / "kind-docker.sh"
OPT_IN = "MODELDEPLOY_KIND_TEST"
PROJECT_IMAGES = ("operator", "training", "serving")
# The node image's cold build (debootstrap, Go builds of kind, kubeadm, etcd, CoreDNS, ...) and a cold image build.
BUILD_TIMEOUT = 3600


def _project_version() -> str:
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    raise AssertionError("pyproject.toml has no version line")


# manifests/overlays/kind names the images by the project's version: the test loads exactly those.
IMAGE_TAG = _project_version()


def _run(
    command: list[str], *, env: dict[str, str] | None = None, timeout: float, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
            f"--- stderr\n{result.stderr[-4000:]}"
        )
    return result


def _why_not() -> str | None:
    choice = os.environ.get(OPT_IN)
    if choice == "0":
        return f"{OPT_IN}=0"
    if os.environ.get("CI") == "true" and choice != "1":
        return (
            f"in CI the kind test runs only with {OPT_IN}=1: a cold run builds a kind node image "
            "(docs: README, kind section, for its cost)"
        )
    problems = []
    if os.geteuid() != 0:
        problems.append("not root (debootstrap and chroot build the node image; kind runs privileged containers)")
    for tool, why in (
        ("docker", "the Docker CLI"),
        ("dockerd", "a Docker engine"),
        ("go", "Go, to build kind and the node's programs"),
        ("make", "make"),
    ):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed ({why})")
    if not problems and _run(["docker", "version"], timeout=30, check=False).returncode != 0:
        problems.append("no Docker engine answers (make docker-up)")
    return "; ".join(problems) or None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _image_present(image: str, env: dict[str, str]) -> bool:
    return _run(["docker", "image", "inspect", image], env=env, timeout=60, check=False).returncode == 0


@dataclass(frozen=True)
class KindSetup:
    """The engine kind uses (its environment), the cached kind and kubectl, and the node image."""

    env: dict[str, str]
    kind_bin: Path
    kubectl: Path
    node_image: str


@pytest.fixture(scope="module")
def kind_engine() -> Iterator[dict[str, str]]:
    """The environment of a Docker engine that runs privileged containers: the default one, or one started here."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    default_env = dict(os.environ)
    # The project's images come from the default engine (built there when missing, as `make images` does).
    missing = [f"modeldeploy/{name}:{IMAGE_TAG}" for name in PROJECT_IMAGES]
    missing = [image for image in missing if not _image_present(image, default_env)]
    if missing:
        _run(
            ["bash", str(REPO / "images" / "build.sh"), *PROJECT_IMAGES],
            env={**default_env, "IMAGE_TAG": IMAGE_TAG},
            timeout=BUILD_TIMEOUT,
        )
    if _run(["bash", str(KIND_DOCKER), "check"], timeout=120, check=False).returncode == 0:
        yield default_env
        return
    # An engine for kind that was already running (a developer's, say) is used and left running.
    engine_env = {**default_env, "DOCKER_HOST": _run(["bash", str(KIND_DOCKER), "host"], timeout=30).stdout.strip()}
    started_here = _run(["docker", "version"], env=engine_env, timeout=30, check=False).returncode != 0
    up = _run(["bash", str(KIND_DOCKER), "up"], timeout=180, check=False)
    if up.returncode != 0:
        pytest.skip(f"Docker cannot run privileged containers and hack/kind-docker.sh up failed: {up.stderr}")
    env = {**default_env, "DOCKER_HOST": up.stdout.strip().splitlines()[-1]}
    try:
        for name in PROJECT_IMAGES:
            image = f"modeldeploy/{name}:{IMAGE_TAG}"
            if not _image_present(image, env):
                save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE, env=default_env)
                load = subprocess.run(
                    ["docker", "load"], stdin=save.stdout, capture_output=True, env=env, timeout=900, check=False
                )
                assert save.wait(timeout=60) == 0 and load.returncode == 0, f"copying {image}: {load.stderr!r}"
        yield env
    finally:
        if started_here:
            _run(["bash", str(KIND_DOCKER), "down"], timeout=180, check=False)


@pytest.fixture(scope="module")
def kind_setup(kind_engine: dict[str, str]) -> KindSetup:
    started = time.monotonic()
    kind_dir = Path(
        _run(["bash", str(REPO / "src/modeldeploy/cluster/build-kind.sh")], timeout=BUILD_TIMEOUT).stdout.split()[-1]
    )
    k8s_dir = Path(
        _run(
            ["bash", str(REPO / "src/modeldeploy/cluster/build-binaries.sh"), "--real-node"], timeout=BUILD_TIMEOUT
        ).stdout.split()[-1]
    )
    node_image = _run(
        ["bash", str(REPO / "hack" / "kind-node-image.sh")], env=kind_engine, timeout=BUILD_TIMEOUT
    ).stdout.split()[-1]
    print(f"kind binaries and node image {node_image}: ready in {time.monotonic() - started:.0f} s")
    return KindSetup(kind_engine, kind_dir / "kind", k8s_dir / "kubectl", node_image)


def test_make_kind_demo_trains_serves_and_predicts_then_kind_down_leaves_nothing(
    kind_setup: KindSetup, tmp_path: Path
) -> None:
    name = f"test-kind-{os.getpid()}"
    env = {**kind_setup.env, "KUBECONFIG": str(tmp_path / "kubeconfig")}
    make_vars = [
        f"KIND={kind_setup.kind_bin}",
        f"KUBECTL={kind_setup.kubectl}",
        f"KIND_NODE_IMAGE={kind_setup.node_image}",
        f"KIND_CLUSTER={name}",
        f"KIND_PORT={_free_port()}",
        f"IMAGE_TAG={IMAGE_TAG}",
        "KIND_PREBUILT=1",
    ]
    timings: dict[str, float] = {}

    def make(target: str, timeout: float) -> str:
        started = time.monotonic()
        result = _run(["make", "--no-print-directory", "-C", str(REPO), target, *make_vars], env=env, timeout=timeout)
        timings[target] = time.monotonic() - started
        return result.stdout

    def kube(*args: str) -> list[str]:
        command = [str(kind_setup.kubectl), "--context", f"kind-{name}", *args]
        return _run(command, env=env, timeout=60).stdout.split()

    try:
        make("kind-up", 900)
        assert kube("get", "nodes", "-o", "name") == [f"node/{name}-control-plane", f"node/{name}-worker"]
        make("kind-load", 1800)
        make("kind-deploy", 600)
        # The operator in its own pods, under its own ServiceAccount, every replica ready.
        operator = kube(
            "-n", "modeldeploy-system", "get", "deployment", "modeldeploy-operator", "-o",
            "jsonpath={.spec.template.spec.serviceAccountName} {.spec.replicas} {.status.readyReplicas}",
        )  # fmt: skip
        assert operator[0] == "modeldeploy-operator" and operator[1] == operator[2], operator
        make("kind-sample", 1800)
        # The artifact lives on kind's default storage (local-path), served by two replicas on the worker.
        claims = kube("get", "pvc", "-o", "jsonpath={range .items[*]}{.spec.storageClassName}={.status.phase} {end}")
        assert claims and all(claim == "standard=Bound" for claim in claims), claims
        serving = kube(
            "get", "pods", "-l", "app.kubernetes.io/component=serving", "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}={.status.phase} {end}",
        )  # fmt: skip
        assert serving == [f"{name}-worker=Running"] * 2, serving
        predicted = make("kind-predict", 300)
        assert "0 (probability" in predicted, predicted
    finally:
        started = time.monotonic()
        down = _run(
            ["make", "--no-print-directory", "-C", str(REPO), "kind-down", *make_vars],
            env=env,
            timeout=300,
            check=False,
        )
        timings["kind-down"] = time.monotonic() - started
        print("wall time per target: " + ", ".join(f"{t} {s:.0f} s" for t, s in timings.items()))
    assert down.returncode == 0, down.stderr
    clusters = _run([str(kind_setup.kind_bin), "get", "clusters"], env=env, timeout=60).stdout.split()
    assert name not in clusters
    left = _run(
        ["docker", "ps", "-aq", "--filter", f"label=io.x-k8s.kind.cluster={name}"], env=env, timeout=60
    ).stdout.split()
    assert left == [], f"kind-down left containers of {name}: {left}"
