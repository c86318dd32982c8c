"""Installs where users are: every pinned dependency has a wheel for each supported platform (the index is asked
once a week per set of requirements; see modeldeploy.tools.wheelcheck), and the markers choose the right TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys

from modeldeploy.tools import wheelcheck
from modeldeploy.tools.wheelcheck import LINUX_AMD64, LINUX_ARM64, MACOS_ARM64

from .conftest import REPO


def _tensorflow(requirements: list[str]) -> list[str]:
    return [r for r in requirements if r.startswith("tensorflow")]


def test_markers_choose_tensorflow_cpu_only_where_it_has_wheels() -> None:
    pyproject = wheelcheck.pyproject_requirements()
    assert _tensorflow(wheelcheck.applicable(pyproject, LINUX_AMD64)) == ["tensorflow-cpu~=2.21.0"]
    assert _tensorflow(wheelcheck.applicable(pyproject, LINUX_ARM64)) == ["tensorflow~=2.21.0"]
    assert _tensorflow(wheelcheck.applicable(pyproject, MACOS_ARM64)) == ["tensorflow~=2.21.0"]
    image = wheelcheck.requirements_file(REPO / "training_image" / "requirements.txt")
    assert _tensorflow(wheelcheck.applicable(image, LINUX_AMD64)) == ["tensorflow-cpu==2.21.0"]
    assert _tensorflow(wheelcheck.applicable(image, LINUX_ARM64)) == ["tensorflow==2.21.0"]


def test_every_pinned_dependency_has_a_wheel_for_each_supported_platform() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modeldeploy.tools.wheelcheck"], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for platform in ("linux/amd64", "linux/arm64", "macos/arm64"):
        assert f"pyproject.toml on {platform}: " in result.stdout


def test_a_requirement_without_a_wheel_there_is_named() -> None:
    """What the markers avoid: tensorflow-cpu has no Linux aarch64 wheel."""
    assert wheelcheck.missing_wheels(LINUX_ARM64, ["tensorflow-cpu==2.21.0", "numpy==2.4.6"]) == [
        "tensorflow-cpu==2.21.0"
    ]


def test_an_unreachable_index_fails_fast_and_says_so() -> None:
    # A proxy on a closed port of this machine: the index cannot be reached.
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "HTTPS_PROXY": closed, "https_proxy": closed}
    result = subprocess.run(
        [sys.executable, "-m", "modeldeploy.tools.wheelcheck", "--force"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert result.returncode == 2
    assert "the package index cannot be reached" in result.stderr
