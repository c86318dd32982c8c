"""Every pinned dependency has a wheel for each supported platform: `python -m modeldeploy.tools.wheelcheck`.

What is checked, per platform, with pip's own resolver against the package index (`pip install --dry-run --no-deps
--only-binary=:all: --platform ... --python-version 3.11`: metadata only, nothing is downloaded or installed):
- pyproject.toml's dependencies and every extra (what `pip install modeldeploy[...]` and `make venv` install) on
  Linux x86_64, Linux aarch64 and macOS arm64, each requirement's environment markers evaluated for that platform
  (pip itself would evaluate them for this machine);
- the images' pinned requirements (training_image/, serving_image/requirements.txt) on linux/amd64 and
  linux/arm64, the platforms the release workflow builds.

A platform whose inputs passed once is not asked again for a week (a stamp in ~/.cache/modeldeploy/wheel-check/
keyed by the requirements and the platform), so `make test` asks the index only after a change. An index that
cannot be reached fails the check with a message saying so, within the timeout, instead of hanging.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[3]
PYTHON_VERSION = "3.11"
STAMP_DIR = Path("~/.cache/modeldeploy/wheel-check").expanduser()
STAMP_MAX_AGE = 7 * 24 * 3600
PIP_TIMEOUT = 240.0
# pip's words for an index it could not reach (as opposed to one that answered without a matching wheel).
UNREACHABLE = re.compile(
    r"NewConnectionError|ConnectTimeout|ConnectionError|Max retries exceeded|ProxyError|SSLError|"
    r"Temporary failure in name resolution|Network is unreachable|Read timed out"
)


@dataclass(frozen=True)
class Platform:
    name: str
    tags: tuple[str, ...]
    """pip --platform tags a wheel may carry to install there (pip does not widen one tag to older ones)."""
    sys_platform: str
    platform_machine: str


def _manylinux(arch: str) -> tuple[str, ...]:
    # glibc 2.17 (manylinux2014) up to 2.36 (Debian bookworm, the images' python:3.11-slim).
    return (f"manylinux2014_{arch}", *(f"manylinux_2_{minor}_{arch}" for minor in range(17, 37)))


def _macos_arm64() -> tuple[str, ...]:
    return tuple(f"macosx_{major}_0_{arch}" for major in range(11, 16) for arch in ("arm64", "universal2"))


LINUX_AMD64 = Platform("linux/amd64", _manylinux("x86_64"), "linux", "x86_64")
LINUX_ARM64 = Platform("linux/arm64", _manylinux("aarch64"), "linux", "aarch64")
MACOS_ARM64 = Platform("macos/arm64", _macos_arm64(), "darwin", "arm64")
PLATFORMS = (LINUX_AMD64, LINUX_ARM64, MACOS_ARM64)
IMAGE_PLATFORMS = (LINUX_AMD64, LINUX_ARM64)
PYPROJECT_EXTRAS = ("serving", "training", "operator", "dev")


class IndexUnreachable(RuntimeError):
    """The package index did not answer; nothing was learnt about the wheels."""


def environment(platform: Platform) -> dict[str, str]:
    """The marker environment of CPython 3.11 on `platform`."""
    env: dict[str, str] = {key: str(value) for key, value in default_environment().items()}
    system = {"linux": "Linux", "darwin": "Darwin"}[platform.sys_platform]
    env.update(
        sys_platform=platform.sys_platform,
        platform_system=system,
        platform_machine=platform.platform_machine,
        os_name="posix",
        python_version=PYTHON_VERSION,
        python_full_version=f"{PYTHON_VERSION}.0",
        implementation_name="cpython",
        platform_python_implementation="CPython",
    )
    return env


def applicable(lines: list[str], platform: Platform) -> list[str]:
    """The requirements that apply on `platform` (markers evaluated for it), without their markers."""
    env = environment(platform)
    chosen = []
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({**env, "extra": ""}):
            requirement.marker = None
            chosen.append(str(requirement))
    return chosen


def pyproject_requirements(path: Path = REPO / "pyproject.toml") -> list[str]:
    project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
    lines = list(project.get("dependencies", []))
    for extra in PYPROJECT_EXTRAS:
        lines += project["optional-dependencies"][extra]
    return lines


def requirements_file(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def checks() -> list[tuple[str, Platform, list[str]]]:
    """(what, platform, requirements) for every check."""
    out = [("pyproject.toml", p, applicable(pyproject_requirements(), p)) for p in PLATFORMS]
    for image in ("training_image", "serving_image"):
        lines = requirements_file(REPO / image / "requirements.txt")
        out += [(f"{image}/requirements.txt", p, applicable(lines, p)) for p in IMAGE_PLATFORMS]
    return out


def pip_command(platform: Platform, requirements: list[str], target: Path) -> list[str]:
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet"]
    command += ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    command += ["--target", str(target), "--timeout", "20", "--retries", "1", "--disable-pip-version-check"]
    for tag in platform.tags:
        command += ["--platform", tag]
    return [*command, *requirements]


def missing_wheels(platform: Platform, requirements: list[str]) -> list[str]:
    """The requirements without a wheel for `platform` (empty when all have one); IndexUnreachable when the index
    does not answer."""

    def run(reqs: list[str]) -> subprocess.CompletedProcess[str]:
        with tempfile.TemporaryDirectory(prefix="modeldeploy-wheelcheck-") as target:
            try:
                result = subprocess.run(
                    pip_command(platform, reqs, Path(target)),
                    capture_output=True,
                    text=True,
                    timeout=PIP_TIMEOUT,
                    check=False,
                    env={**os.environ, "PIP_NO_INPUT": "1"},
                )
            except subprocess.TimeoutExpired as err:
                raise IndexUnreachable(f"pip did not finish within {PIP_TIMEOUT:.0f} s") from err
        if result.returncode != 0 and UNREACHABLE.search(result.stderr):
            last = [line for line in result.stderr.splitlines() if UNREACHABLE.search(line)][-1]
            raise IndexUnreachable(last.strip()[:300])
        return result

    if run(requirements).returncode == 0:
        return []
    # One at a time, to name every requirement that lacks a wheel rather than only the first.
    return [r for r in requirements if run([r]).returncode != 0]


def stamp_path(what: str, platform: Platform, requirements: list[str]) -> Path:
    key = json.dumps([what, platform.name, platform.tags, PYTHON_VERSION, sorted(requirements)])
    return STAMP_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def is_fresh(stamp: Path) -> bool:
    return stamp.exists() and time.time() - stamp.stat().st_mtime < STAMP_MAX_AGE


def check(what: str, platform: Platform, requirements: list[str], force: bool) -> tuple[bool, str]:
    """(passed, the line to print) for one check; IndexUnreachable when the index does not answer."""
    stamp = stamp_path(what, platform, requirements)
    if not force and is_fresh(stamp):
        return True, f"{what} on {platform.name}: {len(requirements)} requirements have wheels (checked before)"
    started = time.monotonic()
    missing = missing_wheels(platform, requirements)
    if missing:
        return False, f"{what} on {platform.name}: no wheel for {', '.join(missing)}"
    STAMP_DIR.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"what": what, "platform": platform.name, "requirements": requirements}))
    seconds = time.monotonic() - started
    return True, f"{what} on {platform.name}: {len(requirements)} requirements have wheels ({seconds:.1f} s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modeldeploy.tools.wheelcheck", description=__doc__)
    parser.add_argument("--force", action="store_true", help="ask the index even where a recent check passed")
    args = parser.parse_args(argv)
    # The checks wait on the index more than on the CPU: three at a time.
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(check, *item, args.force) for item in checks()]
        try:
            results = [future.result() for future in futures]
        except IndexUnreachable as err:
            for future in futures:
                future.cancel()
            print(
                f"wheelcheck: the package index cannot be reached ({err}); the wheel check needs it. "
                "Check the network or proxy and run it again.",
                file=sys.stderr,
            )
            return 2
    for passed, line in results:
        print(line, file=sys.stdout if passed else sys.stderr)
    if all(passed for passed, _ in results):
        return 0
    print(
        "wheelcheck: pin a version that has a wheel there, or choose another package for that platform with an "
        "environment marker (pyproject.toml, the image's requirements.txt)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
