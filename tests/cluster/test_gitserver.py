"""The cluster's Git server: a repository under its root clones over smart HTTP, a push is refused, junk is bounded."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from modeldeploy.cluster.gitserver import MAX_REQUEST_BYTES
from modeldeploy.cluster.local import free_ports
from modeldeploy.cluster.waiting import wait_until

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x.invalid", "GIT_COMMITTER_NAME": "t"}
GIT_ENV |= {"GIT_COMMITTER_EMAIL": "t@x.invalid", "PATH": "/usr/bin:/bin:/usr/local/bin"}


def git(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], capture_output=True, text=True, env=GIT_ENV, check=check, timeout=60)


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A bare repository with one commit on main, served on a free port; yields (URL, work tree)."""
    root, work = tmp_path / "root", tmp_path / "work"
    git("init", "-q", "--bare", "-b", "main", str(root / "models.git"))
    git("init", "-q", "-b", "main", str(work))
    (work / "model.yaml").write_text("kind: ModelDeployment\n", encoding="utf-8")
    git("-C", str(work), "add", "-A")
    git("-C", str(work), "commit", "-q", "-m", "first")
    git("-C", str(work), "push", "-q", str(root / "models.git"), "main")
    (port,) = free_ports(1)
    command = [sys.executable, "-m", "modeldeploy.cluster.gitserver", f"--root={root}", f"--port={port}"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: healthy(port), timeout=15, what="the Git server to answer")
        yield f"http://127.0.0.1:{port}/models.git", work
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_served_repository_clones_and_sees_new_commits(served: tuple[str, Path], tmp_path: Path) -> None:
    url, work = served
    clone = tmp_path / "clone"
    git("clone", "-q", "--branch", "main", url, str(clone))
    assert (clone / "model.yaml").read_text(encoding="utf-8") == "kind: ModelDeployment\n"
    (work / "second.yaml").write_text("x: 1\n", encoding="utf-8")
    git("-C", str(work), "add", "-A")
    git("-C", str(work), "commit", "-q", "-m", "second")
    git("-C", str(work), "push", "-q", str(tmp_path / "root" / "models.git"), "main")
    head = git("-C", str(work), "rev-parse", "HEAD").stdout.strip()
    assert git("ls-remote", url, "refs/heads/main").stdout.split()[0] == head


def test_a_push_over_http_is_refused(served: tuple[str, Path]) -> None:
    url, work = served
    (work / "evil.yaml").write_text("x: 1\n", encoding="utf-8")
    git("-C", str(work), "add", "-A")
    git("-C", str(work), "commit", "-q", "-m", "not allowed")
    result = git("-C", str(work), "push", url, "main", check=False)
    assert result.returncode != 0, result.stdout


def test_an_oversized_request_is_refused_before_it_is_read(served: tuple[str, Path]) -> None:
    url, _ = served
    request = urllib.request.Request(
        f"{url}/git-upload-pack", data=b"", method="POST", headers={"Content-Length": str(MAX_REQUEST_BYTES + 1)}
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 413
