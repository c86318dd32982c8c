"""Flux on the local control plane: its source-controller and kustomize-controller as processes, and a Git server.

`modeldeploy cluster up --gitops` starts them after the control plane: the controllers are built from Flux's Go
modules (build-flux.sh, cached like the control plane's binaries), their CRDs come from the same modules, and the
Git server serves bare repositories under the cluster's state directory over smart HTTP on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

FLUX_NAMESPACE = "flux-system"
CONTROLLERS = ("source-controller", "kustomize-controller")
COMPONENTS = ("gitserver", *CONTROLLERS)
PORTS = ("git", "source-storage", "source-metrics", "source-health", "kustomize-metrics", "kustomize-health")
PORTS_OF = {
    "gitserver": ["git"],
    "source-controller": ["source-storage", "source-metrics", "source-health"],
    "kustomize-controller": ["kustomize-metrics", "kustomize-health"],
}
HEALTH_PORT_OF = {"source-controller": "source-health", "kustomize-controller": "kustomize-health"}


class FluxBuildError(RuntimeError):
    """Flux's controllers are not built and could not be; the message says what to do."""


def find_flux_binaries(build: bool = True) -> Path:
    """The directory with source-controller, kustomize-controller and crds/, building them (once, cached)."""
    override = os.environ.get("MODELDEPLOY_FLUX_BIN_DIR")
    if override:
        path = Path(override)
        missing = [b for b in (*CONTROLLERS, "crds") if not (path / b).exists()]
        if missing:
            raise FluxBuildError(f"MODELDEPLOY_FLUX_BIN_DIR={path} lacks {', '.join(missing)}")
        return path
    script = resources.files("modeldeploy.cluster").joinpath("build-flux.sh")
    env = {**os.environ, "MODELDEPLOY_NO_BUILD": "" if build else "1"}
    with resources.as_file(script) as script_path:
        result = subprocess.run(["bash", str(script_path)], stdout=subprocess.PIPE, text=True, env=env, check=False)
    if result.returncode != 0:
        what = "building Flux's controllers failed" if build else "Flux's controllers are missing"
        raise FluxBuildError(f"{what} (the lines above say why)")
    return Path(result.stdout.strip().splitlines()[-1])


def git_url(ports: dict[str, int], repository: str) -> str:
    """The URL Flux's GitRepository uses for a repository the cluster's Git server serves."""
    return f"http://127.0.0.1:{ports['git']}/{repository}.git"


def gitserver_command(root: Path, ports: dict[str, int]) -> list[str]:
    return [sys.executable, "-m", "modeldeploy.cluster.gitserver", f"--root={root}", f"--port={ports['git']}"]


def source_controller_args(storage: Path, ports: dict[str, int]) -> list[str]:
    storage_addr = f"127.0.0.1:{ports['source-storage']}"
    return [
        f"--storage-path={storage}",
        f"--storage-addr={storage_addr}",
        # The artifact URL kustomize-controller fetches; left empty it becomes the bind address, `:PORT`.
        f"--storage-adv-addr={storage_addr}",
        f"--metrics-addr=127.0.0.1:{ports['source-metrics']}",
        f"--health-addr=127.0.0.1:{ports['source-health']}",
        "--watch-all-namespaces=true",
        "--requeue-dependency=5s",
        "--log-level=info",
    ]


def kustomize_controller_args(ports: dict[str, int]) -> list[str]:
    return [
        f"--metrics-addr=127.0.0.1:{ports['kustomize-metrics']}",
        f"--health-addr=127.0.0.1:{ports['kustomize-health']}",
        "--watch-all-namespaces=true",
        # How soon a Kustomization whose dependsOn is not Ready yet looks again (default 30 s).
        "--requeue-dependency=5s",
        "--no-remote-bases=true",  # every base comes from the Git server, never from another host
        "--log-level=info",
    ]


def controller_env(kubeconfig: Path) -> dict[str, str]:
    """Flux's controllers have no --kubeconfig flag: controller-runtime reads KUBECONFIG from the environment."""
    return {**os.environ, "KUBECONFIG": str(kubeconfig), "RUNTIME_NAMESPACE": FLUX_NAMESPACE}
