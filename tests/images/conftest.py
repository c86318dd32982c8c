"""Fixtures for the container images' tests: a Docker engine (started here when none answers, stopped after), the
images built from their Dockerfiles (cached builds are quick), and the digits sample trained once by the training
image into a directory that the serving tests then serve."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO / "images"
DOCKERFILES = {"training": "training_image", "serving": "serving_image", "operator": "operator"}
CONTAINER_LABEL = "dev.modeldeploy.test"
# A cold training image build downloads TensorFlow (~600 MB); the first test that needs it pays for it.
BUILD_TIMEOUT = 1800
PREBUILT_ENV = "MODELDEPLOY_IMAGES_PREBUILT"


def image_tag() -> str:
    version = os.environ.get("IMAGE_TAG")
    if version:
        return version
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    raise AssertionError("pyproject.toml has no version line")


def image_name(name: str) -> str:
    return f"{os.environ.get('IMAGE_PREFIX', 'modeldeploy')}/{name}:{image_tag()}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def _engine_answers() -> bool:
    try:
        return docker("version", "--format", "{{.Server.Version}}", timeout=20, check=False).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """A Docker engine that answers; started with images/docker.sh when none does (and then stopped at the end)."""
    if _engine_answers():
        yield
        return
    up = subprocess.run([str(IMAGES_DIR / "docker.sh"), "up"], capture_output=True, text=True, timeout=600, check=False)
    if up.returncode != 0 or not _engine_answers():
        pytest.skip(f"no Docker engine answers and images/docker.sh up could not start one: {up.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run([str(IMAGES_DIR / "docker.sh"), "down"], capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def base_image(docker_engine: None) -> None:
    result = subprocess.run(
        [str(IMAGES_DIR / "base-image.sh")], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"images/base-image.sh failed:\n{result.stderr[-3000:]}")


def build_image(name: str) -> str:
    """Build (or find in the layer cache) one image from its Dockerfile; skip when the Dockerfile is not there yet.

    With MODELDEPLOY_IMAGES_PREBUILT=1 the images already tagged (by `make images`, say) are tested as they are."""
    if os.environ.get(PREBUILT_ENV) == "1":
        image = image_name(name)
        if docker("image", "inspect", image, check=False).returncode != 0:
            raise AssertionError(f"{PREBUILT_ENV}=1 but {image} is not there: run 'make images' first")
        return image
    dockerfile = REPO / DOCKERFILES[name] / "Dockerfile"
    if not dockerfile.is_file():
        pytest.skip(f"{dockerfile.relative_to(REPO)} does not exist yet")
    result = subprocess.run(
        [str(IMAGES_DIR / "build.sh"), name], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"images/build.sh {name} failed:\n{result.stderr[-4000:]}")
    return image_name(name)


@pytest.fixture(scope="session")
def training_image(base_image: None) -> str:
    return build_image("training")


@pytest.fixture(scope="session")
def serving_image(base_image: None) -> str:
    return build_image("serving")


@pytest.fixture(scope="session")
def operator_image(base_image: None) -> str:
    return build_image("operator")


class Containers:
    """Containers started by one test, each labelled and removed at the end whatever happened."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def new_name(self, purpose: str) -> str:
        name = f"modeldeploy-test-{purpose}-{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        return name

    def run(
        self,
        purpose: str,
        image: str,
        *options: str,
        detach: bool,
        arguments: Sequence[str] = (),
        timeout: float = 120,
    ) -> tuple[str, subprocess.CompletedProcess[str]]:
        """`docker run` in the foreground (to its exit) or detached; returns the container's name and the result.

        `options` go to `docker run`, `arguments` to the image's entry point."""
        name = self.new_name(purpose)
        detached = ["--detach"] if detach else []
        command = ["run", "--name", name, "--label", CONTAINER_LABEL, *detached, *options, image, *arguments]
        result = docker(*command, timeout=timeout, check=False)
        if detach and result.returncode != 0:
            raise AssertionError(f"docker run {image} failed: {result.stderr.strip()}")
        return name, result

    def remove_all(self) -> None:
        for name in self.names:
            docker("rm", "--force", "--volumes", name, check=False, timeout=60)


@pytest.fixture
def containers(docker_engine: None) -> Iterator[Containers]:
    started = Containers()
    try:
        yield started
    finally:
        started.remove_all()


def world_writable_dir(path: Path) -> Path:
    """A host directory the images' non-root user (65532) can write."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def termination_log(path: Path) -> Path:
    path.write_text("")
    path.chmod(0o666)
    return path


def modeldeployment_json(manifest_path: Path) -> str:
    """MODELDEPLOY_SPEC as the operator sets it: the whole ModelDeployment as JSON."""
    manifest: dict[str, Any] = yaml.safe_load(manifest_path.read_text())
    return json.dumps(manifest)


@dataclass(frozen=True)
class TrainedArtifact:
    """What the training image left: the artifact root, its report, and what the container printed."""

    root: Path
    report: dict[str, Any]
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def version_dir(self) -> Path:
        return self.root / str(self.report["path"])


def run_training(
    containers: Containers, image: str, models: Path, log: Path, spec_json: str, *, data: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the training image as its Job's pod runs it: non-root, read-only root, /tmp writable, no network."""
    args = [
        "--user", "65532:65532", "--read-only", "--tmpfs", "/tmp", "--network", "none",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--volume", f"{models}:/models",
        "--volume", f"{log}:/termination-log",
        "--env", "MODELDEPLOY_TERMINATION_LOG=/termination-log",
        "--env", f"MODELDEPLOY_SPEC={spec_json}",
    ]  # fmt: skip
    if data is not None:
        args += ["--volume", f"{data}:/data:ro"]
    _, result = containers.run("train", image, *args, detach=False, timeout=900)
    text = log.read_text()
    report: dict[str, Any] = json.loads(text) if text.strip() else {}
    return result, report


@pytest.fixture(scope="session")
def trained_digits(training_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedArtifact]:
    """The digits sample (samples/digits-cnn.yaml) trained by the training image, once per session."""
    work = tmp_path_factory.mktemp("trained-digits")
    models = world_writable_dir(work / "models")
    log = termination_log(work / "termination-log")
    running = Containers()
    try:
        result, report = run_training(
            running, training_image, models, log, modeldeployment_json(REPO / "samples" / "digits-cnn.yaml")
        )
        yield TrainedArtifact(models, report, result.returncode, result.stdout, result.stderr)
    finally:
        running.remove_all()
