"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, controller-manager, scheduler and kwok.

Every process is started by us, recorded by PID (and its start time, so a recycled PID is never killed) in the
cluster's state directory, and stopped by `down`. The state directory is one per cluster name, so a test run and a
demo run side by side.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from modeldeploy.cluster import gitops, objectstore, realnode
from modeldeploy.cluster.pki import make_pki

log = logging.getLogger(__name__)

SERVICE_CIDR = "10.0.0.0/16"  # room for thousands of Services (the scale benchmark makes 500+)
SERVICE_IP = "10.0.0.1"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
BINARIES = (*COMPONENTS, "kubectl")


class ClusterError(RuntimeError):
    """The cluster cannot be brought up or down; the message says why and what to do (no traceback for users)."""


def default_state_root() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(os.environ.get("MODELDEPLOY_STATE_DIR", str(Path(base) / "modeldeploy" / "clusters")))


def default_cache_root() -> Path:
    """Where the builds of this project are cached, as the build scripts choose it (MODELDEPLOY_CACHE, else
    $XDG_CACHE_HOME/modeldeploy, else ~/.cache/modeldeploy)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("MODELDEPLOY_CACHE") or Path(base) / "modeldeploy")


def find_binaries(build: bool = True, *, real_node: bool = False, oldest: bool = False) -> Path:
    """The directory with the control plane's binaries, building them (once, cached) when they are missing; with
    `real_node`, also the kubelet, kube-proxy and the pause program; with `oldest`, the control plane of the oldest
    Kubernetes the operator supports (build-binaries.sh says which) beside the usual etcd, kwok and kubectl."""
    wanted = (*BINARIES, *(realnode.NODE_BINARIES if real_node else ()))
    override = os.environ.get("MODELDEPLOY_BIN_DIR")
    if override and not oldest:
        path = Path(override)
        missing = [b for b in wanted if not (path / b).is_file()]
        if missing:
            raise ClusterError(f"MODELDEPLOY_BIN_DIR={path} lacks {', '.join(missing)}")
        return path
    script = resources.files("modeldeploy.cluster").joinpath("build-binaries.sh")
    env = {**os.environ, "MODELDEPLOY_NO_BUILD": "" if build else "1"}
    with resources.as_file(script) as script_path:
        command = ["bash", str(script_path), *(["--real-node"] if real_node else []), *(["--oldest"] if oldest else [])]
        result = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, check=False)
    if result.returncode != 0:
        what = "building the control plane's binaries failed" if build else "the binaries are missing"
        raise ClusterError(f"{what} (the lines above say why)")
    return Path(result.stdout.strip().splitlines()[-1])


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now, all different (held open together while choosing)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a process from /proc/PID/stat (fields 3 and 22), None when there is no such entry."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], fields[19]


def recorded_start_time(pid: int) -> str:
    """What to record for a process just started: its start time, even if it has already exited (a zombie)."""
    stat = _proc_stat(pid)
    return stat[1] if stat else "gone"


def process_start_time(pid: int) -> str | None:
    """The start time of a live process, None when it is gone or has exited (a zombie holds no port)."""
    stat = _proc_stat(pid)
    if stat is None or stat[0] == "Z":
        return None
    return stat[1]


@dataclass
class ClusterState:
    """What `up` recorded and `down` reads: ports, processes and where things are."""

    name: str
    directory: Path
    bin_dir: str = ""
    owner_pid: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)
    real_node: dict[str, Any] = field(default_factory=dict)  # what the real node's sweep needs; empty without one
    gitops: dict[str, Any] = field(default_factory=dict)  # Flux's bin directory and the Git root; empty without
    object_store: dict[str, Any] = field(default_factory=dict)  # versitygw's port, bucket and keys; empty without

    @property
    def file(self) -> Path:
        return self.directory / "cluster.json"

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def save(self) -> None:
        data = {
            "name": self.name,
            "bin_dir": self.bin_dir,
            "owner_pid": self.owner_pid,
            "ports": self.ports,
            "processes": self.processes,
            "real_node": self.real_node,
            "gitops": self.gitops,
            "object_store": self.object_store,
        }
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        tmp.replace(self.file)

    @classmethod
    def load(cls, directory: Path) -> ClusterState | None:
        try:
            data = json.loads((directory / "cluster.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return cls(
            name=data["name"],
            directory=directory,
            bin_dir=data.get("bin_dir", ""),
            owner_pid=data.get("owner_pid", 0),
            ports=data.get("ports", {}),
            processes=data.get("processes", {}),
            real_node=data.get("real_node", {}),
            gitops=data.get("gitops", {}),
            object_store=data.get("object_store", {}),
        )


class LocalCluster:
    """One named local control plane. `up()` returns the kubeconfig; `down()` leaves nothing behind."""

    def __init__(
        self,
        name: str = "modeldeploy",
        *,
        state_root: Path | None = None,
        nodes: int = 3,
        real_node: bool = False,
        gitops: bool = False,
        object_store: bool = False,
    ) -> None:
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ClusterError(f"cluster name {name!r} must be letters, digits, '-' or '_'")
        self.name = name
        self.nodes = nodes
        self.real_node = real_node
        self.gitops = gitops
        self.object_store = object_store
        self.directory = (state_root or default_state_root()) / name

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    # ---- up -------------------------------------------------------------------------------------------------

    def up(self, bin_dir: Path | None = None, owner_pid: int = 0) -> Path:
        existing = ClusterState.load(self.directory)
        if existing is not None:
            if self._all_running(existing) and self._api_ready(existing):
                if self.real_node and not existing.real_node:
                    raise ClusterError(
                        f"cluster {self.name} is up without a real node: "
                        f"`modeldeploy cluster down --name {self.name}`, then up again with --real-node"
                    )
                if self.gitops and not existing.gitops:
                    raise ClusterError(
                        f"cluster {self.name} is up without Flux: "
                        f"`modeldeploy cluster down --name {self.name}`, then up again with --gitops"
                    )
                if self.object_store and not existing.object_store:
                    raise ClusterError(
                        f"cluster {self.name} is up without an object store: "
                        f"`modeldeploy cluster down --name {self.name}`, then up again with --object-store"
                    )
                log.info("cluster %s is already up", self.name)
                return existing.kubeconfig
            log.info("cluster %s has stale state (a component is gone): cleaning it up first", self.name)
            self.down()
        bins = bin_dir or find_binaries(real_node=self.real_node)
        flux_bins = self._find_flux_binaries() if self.gitops else None  # built before anything starts
        store_bin = self._find_objectstore_binary() if self.object_store else None
        node = realnode.RealNode(self.directory, bins) if self.real_node else None
        if node is not None:
            try:
                node.check_host()  # before anything starts: say what is missing and start nothing
            except realnode.RealNodeUnavailable as err:
                raise ClusterError(str(err)) from None
        self.directory.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "pki", "certs"):
            (self.directory / sub).mkdir(exist_ok=True)
        names = ["etcd-client", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok"]
        if node is not None:
            names += ["kubelet", "kubelet-healthz", "kube-proxy-healthz", "kube-proxy-metrics"]
        if flux_bins is not None:
            names += list(gitops.PORTS)
        if store_bin is not None:
            names.append(objectstore.PORT_KEY)
        state = ClusterState(
            name=self.name,
            directory=self.directory,
            bin_dir=str(bins),
            owner_pid=owner_pid,
            ports=dict(zip(names, free_ports(len(names)), strict=True)),
        )
        state.save()
        started = time.monotonic()
        try:
            make_pki(self.directory / "pki", SERVICE_IP)
            self._write_kubeconfig(state)
            self._start(state, "etcd", self._etcd_args(state))
            self._wait_healthy(state, "etcd", f"http://127.0.0.1:{state.ports['etcd-client']}/health", 30)
            self._start(state, "kube-apiserver", self._apiserver_args(state))
            self._wait_healthy(state, "kube-apiserver", f"https://127.0.0.1:{state.ports['apiserver']}/readyz", 60)
            self._start(state, "kube-controller-manager", self._controller_manager_args(state))
            self._start(state, "kube-scheduler", self._scheduler_args(state))
            self._start(state, "kwok", self._kwok_args(state))
            self._bootstrap_objects(state)
            self._wait_healthy(
                state, "kube-controller-manager", f"https://127.0.0.1:{state.ports['controller-manager']}/healthz", 30
            )
            self._wait_healthy(state, "kube-scheduler", f"https://127.0.0.1:{state.ports['scheduler']}/healthz", 30)
            self._wait_nodes_ready(state)
            if node is not None:
                self._start_real_node(state, node)
            if flux_bins is not None:
                self._start_gitops(state, flux_bins)
            if store_bin is not None:
                self._start_object_store(state, store_bin, real_node=node is not None)
        except BaseException:
            self.down()
            raise
        log.info("cluster %s is up in %.1f s", self.name, time.monotonic() - started)
        return state.kubeconfig

    def _start(
        self,
        state: ClusterState,
        component: str,
        args: list[str],
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        binary = Path(state.bin_dir) / component
        port_keys = {
            "etcd": ["etcd-client", "etcd-peer"],
            "kube-apiserver": ["apiserver"],
            "kube-controller-manager": ["controller-manager"],
            "kube-scheduler": ["scheduler"],
            "kwok": ["kwok"],
            "kubelet": ["kubelet", "kubelet-healthz"],
            "kube-proxy": ["kube-proxy-healthz", "kube-proxy-metrics"],
            **gitops.PORTS_OF,
            objectstore.COMPONENT: [objectstore.PORT_KEY],
        }.get(component, [])
        for key in port_keys:
            if port_is_taken(state.ports[key]):
                raise ClusterError(f"port {state.ports[key]} on 127.0.0.1 ({component}) is taken by another process")
        log_path = self.directory / "logs" / f"{component}.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                [*(command or [str(binary)]), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
                env=env,
                start_new_session=True,  # its own process group: a Ctrl-C in the caller's terminal is not its end
            )
        state.processes[component] = {
            "pid": proc.pid,
            "start_time": recorded_start_time(proc.pid),
            "log": str(log_path),
        }
        state.save()

    def _log_tail(self, component: str, lines: int = 25) -> str:
        path = self.directory / "logs" / f"{component}.log"
        try:
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def _check_alive(self, state: ClusterState, component: str) -> None:
        info = state.processes.get(component)
        if info is None or process_start_time(info["pid"]) != info["start_time"]:
            raise ClusterError(
                f"{component} exited during start-up; last lines of {self.directory / 'logs' / component}.log:\n"
                f"{self._log_tail(component)}"
            )

    def _ssl_context(self, verify: bool) -> ssl.SSLContext:
        pki = self.directory / "pki"
        if verify:
            ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def _get(self, url: str, timeout: float = 2.0) -> int:
        ctx = None
        if url.startswith("https://"):
            ctx = self._ssl_context(verify=url.startswith(f"https://127.0.0.1:{self._apiserver_port()}"))
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=ctx) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return err.code
        except (urllib.error.URLError, OSError):
            return 0

    def _apiserver_port(self) -> int:
        state = ClusterState.load(self.directory)
        return state.ports.get("apiserver", -1) if state else -1

    def _wait_healthy(self, state: ClusterState, component: str, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(state, component)
            if self._get(url) == 200:
                return
            time.sleep(0.1)
        raise ClusterError(
            f"{component} did not become healthy at {url} within {timeout:g} s; last lines of its log:\n"
            f"{self._log_tail(component)}"
        )

    def _api_ready(self, state: ClusterState) -> bool:
        return self._get(f"https://127.0.0.1:{state.ports.get('apiserver', 0)}/readyz") == 200

    def _write_kubeconfig(self, state: ClusterState) -> None:
        pki = self.directory / "pki"
        server = f"https://127.0.0.1:{state.ports['apiserver']}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": self.name, "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}
            ],
            "users": [
                {
                    "name": f"{self.name}-admin",
                    "user": {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")},
                }
            ],
            "contexts": [{"name": self.name, "context": {"cluster": self.name, "user": f"{self.name}-admin"}}],
            "current-context": self.name,
        }
        state.kubeconfig.write_text(json.dumps(config, indent=2), encoding="utf-8")

    def _etcd_args(self, state: ClusterState) -> list[str]:
        client = f"http://127.0.0.1:{state.ports['etcd-client']}"
        peer = f"http://127.0.0.1:{state.ports['etcd-peer']}"
        return [
            f"--name={self.name}",
            f"--data-dir={self.directory / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.name}={peer}",
            "--unsafe-no-fsync",  # a throw-away cluster: durability is not worth the disk waits
            "--log-level=warn",
        ]

    def _apiserver_args(self, state: ClusterState) -> list[str]:
        pki = self.directory / "pki"
        return [
            f"--etcd-servers=http://127.0.0.1:{state.ports['etcd-client']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={state.ports['apiserver']}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            # The default Service's endpoint would be 127.0.0.1, which Endpoints reject; nothing in-cluster needs it.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={self.directory / 'certs'}",
            "--profiling=false",
            "--v=1",
            *self._apiserver_kubelet_args(),
        ]

    def _apiserver_kubelet_args(self) -> list[str]:
        """How the apiserver reaches the real node's kubelet (logs, exec, port-forward): by its InternalIP, with
        the admin identity, checking the kubelet's serving cert. Without a real node, nothing changes."""
        if not self.real_node:
            return []
        pki = self.directory / "pki"
        return [
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--kubelet-client-certificate={pki / 'admin.crt'}",
            f"--kubelet-client-key={pki / 'admin.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        ]

    def _component_kubeconfig_args(self, state: ClusterState) -> list[str]:
        kc = str(state.kubeconfig)
        return [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}"]

    def _controller_manager_args(self, state: ClusterState) -> list[str]:
        pki = self.directory / "pki"
        return [
            *self._component_kubeconfig_args(state),
            "--leader-elect=false",
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--bind-address=127.0.0.1",
            f"--secure-port={state.ports['controller-manager']}",
            f"--cert-dir={self.directory / 'certs'}",
            # Fake nodes have no kubelet to report a pod gone: do not wait minutes before evicting from a lost node.
            "--node-monitor-grace-period=40s",
            "--profiling=false",
            "--v=1",
        ]

    def _scheduler_args(self, state: ClusterState) -> list[str]:
        return [
            *self._component_kubeconfig_args(state),
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={state.ports['scheduler']}",
            f"--cert-dir={self.directory / 'certs'}",
            "--profiling=false",
            "--v=1",
        ]

    def _kwok_args(self, state: ClusterState) -> list[str]:
        stages = self.directory / "kwok-stages.yaml"
        stage_dir = resources.files("modeldeploy.cluster").joinpath("stages")
        docs = [
            stage_dir.joinpath(name).read_text(encoding="utf-8")
            for name in sorted(p.name for p in stage_dir.iterdir() if p.name.endswith(".yaml"))
        ]
        stages.write_text("\n---\n".join(docs), encoding="utf-8")
        return [
            f"--kubeconfig={state.kubeconfig}",
            f"--config={stages}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
            f"--server-address=127.0.0.1:{state.ports['kwok']}",
            "--cidr=10.244.0.1/16",
            "--node-ip=10.243.0.1",
            "--node-lease-duration-seconds=40",
            "--v=INFO",
        ]

    def kubectl(self, *args: str, input_text: str | None = None, bin_dir: str | None = None) -> str:
        state = ClusterState.load(self.directory)
        binary = str(Path(bin_dir or (state.bin_dir if state else "")) / "kubectl")
        try:
            result = subprocess.run(
                [binary, f"--kubeconfig={self.kubeconfig}", *args],
                input=input_text,
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
        except subprocess.TimeoutExpired as err:
            raise ClusterError(
                f"kubectl {' '.join(args)} got no answer within {err.timeout:g} s: is the API server overloaded? "
                f"(its log: {self.directory / 'logs' / 'kube-apiserver.log'})"
            ) from err
        if result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def _bootstrap_objects(self, state: ClusterState) -> None:
        """The default StorageClass (kwok binds its claims) and the fake Nodes."""
        docs = [resources.files("modeldeploy.cluster").joinpath("storage-class.yaml").read_text(encoding="utf-8")]
        for i in range(self.nodes):
            docs.append(
                json.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": {
                            "name": f"kwok-node-{i}",
                            "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                            "labels": {
                                "type": "kwok",
                                "kubernetes.io/hostname": f"kwok-node-{i}",
                                "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64",
                                "node-role.kubernetes.io/agent": "",
                            },
                        },
                        "status": {
                            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "1000"},
                            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "1000"},
                        },
                    }
                )
            )
        self.kubectl("apply", "-f", "-", input_text="\n---\n".join(docs), bin_dir=state.bin_dir)

    def _wait_nodes_ready(self, state: ClusterState) -> None:
        deadline = time.monotonic() + 30
        while True:
            for component in COMPONENTS:
                self._check_alive(state, component)
            out = self.kubectl(
                "get",
                "nodes",
                "-l",
                "type=kwok",
                "-o",
                'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
                bin_dir=state.bin_dir,
            )
            if out.split().count("True") >= self.nodes:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"fake nodes not Ready after 30 s; kwok's log:\n{self._log_tail('kwok')}")
            time.sleep(0.2)

    def _start_real_node(self, state: ClusterState, node: realnode.RealNode) -> None:
        """containerd, the images, the kubelet, kube-proxy and the volume provisioner; returns when the node is
        Ready. What `down` must undo is recorded before anything on the host changes."""
        started = time.monotonic()
        state.real_node = node.record_host()
        state.save()
        node.write_files(state.ports["apiserver"], state.ports)
        node.prepare_host()
        self.kubectl(
            "apply", "-f", "-", input_text="\n---\n".join(json.dumps(m) for m in node.rbac_manifests()),
            bin_dir=state.bin_dir,
        )  # fmt: skip
        self._start(state, "containerd", node.containerd_args(), command=[shutil.which("containerd") or "containerd"])
        deadline = time.monotonic() + 30
        while not node.containerd_socket.exists() or _ctr_fails(node):
            self._check_alive(state, "containerd")
            if time.monotonic() > deadline:
                raise ClusterError(f"containerd did not answer within 30 s:\n{self._log_tail('containerd')}")
            time.sleep(0.1)
        node.import_pause()
        images_started = time.monotonic()
        imported = node.import_from_docker(realnode.PROJECT_IMAGES)
        log.info(
            "real node: imported %s from Docker in %.1f s",
            ", ".join(imported) or "no project images (build them: make images)",
            time.monotonic() - images_started,
        )
        self._start(state, "kubelet", node.kubelet_args())
        self._start(state, "kube-proxy", node.kube_proxy_args(state.ports))
        self._start(
            state,
            "provisioner",
            [
                f"--server=https://127.0.0.1:{state.ports['apiserver']}",
                f"--pki={self.directory / 'pki'}",
                f"--root={node.root / 'volumes'}",
            ],
            command=[sys.executable, "-m", "modeldeploy.cluster.provisioner"],
        )
        deadline = time.monotonic() + 90
        while True:
            for component in realnode.NODE_COMPONENTS:
                self._check_alive(state, component)
            ready = self.kubectl(
                "get", "nodes", realnode.NODE_NAME, "--ignore-not-found",
                "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
                bin_dir=state.bin_dir,
            )  # fmt: skip
            if ready.strip() == "True":
                break
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the real node is not Ready after 90 s; the kubelet's log:\n{self._log_tail('kubelet')}"
                )
            time.sleep(0.5)
        log.info("real node %s is Ready in %.1f s", realnode.NODE_NAME, time.monotonic() - started)

    def _find_flux_binaries(self) -> Path:
        try:
            return gitops.find_flux_binaries()
        except gitops.FluxBuildError as err:
            raise ClusterError(str(err)) from None

    def _start_gitops(self, state: ClusterState, flux_bins: Path) -> None:
        """Flux's CRDs, its namespace, the Git server and the two controllers; returns when both are ready.
        What `down` must stop is recorded before each process starts."""
        started = time.monotonic()
        git_root = self.directory / "git"
        storage = self.directory / "flux-artifacts"
        git_root.mkdir(exist_ok=True)
        storage.mkdir(exist_ok=True)
        state.gitops = {"bin_dir": str(flux_bins), "git_root": str(git_root)}
        state.save()
        crds = flux_bins / "crds"
        self.kubectl("apply", "--server-side", "-f", str(crds), bin_dir=state.bin_dir)
        self.kubectl("create", "namespace", gitops.FLUX_NAMESPACE, bin_dir=state.bin_dir)
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds), bin_dir=state.bin_dir)
        self._start(state, "gitserver", [], command=gitops.gitserver_command(git_root, state.ports))
        env = gitops.controller_env(state.kubeconfig)
        self._start(
            state, "source-controller", gitops.source_controller_args(storage, state.ports),
            command=[str(flux_bins / "source-controller")], env=env,
        )  # fmt: skip
        self._start(
            state, "kustomize-controller", gitops.kustomize_controller_args(state.ports),
            command=[str(flux_bins / "kustomize-controller")], env=env,
        )  # fmt: skip
        for component, port in gitops.HEALTH_PORT_OF.items():
            self._wait_healthy(state, component, f"http://127.0.0.1:{state.ports[port]}/readyz", 60)
        self._wait_healthy(state, "gitserver", f"http://127.0.0.1:{state.ports['git']}/healthz", 30)
        log.info("Flux is up in %.1f s; Git: %s", time.monotonic() - started, gitops.git_url(state.ports, "NAME"))

    def _find_objectstore_binary(self) -> Path:
        try:
            return objectstore.find_binary()
        except objectstore.ObjectStoreBuildError as err:
            raise ClusterError(str(err)) from None

    def _start_object_store(self, state: ClusterState, binary: Path, *, real_node: bool) -> None:
        """versitygw on 127.0.0.1 (and the real node's bridge, for pods), its bucket made through the S3 API."""
        started = time.monotonic()
        data = self.directory / "objects"
        data.mkdir(exist_ok=True)
        port = state.ports[objectstore.PORT_KEY]
        hosts = [realnode.NODE_IP] if real_node else []
        info: dict[str, Any] = {"port": port, "bucket": objectstore.BUCKET, "data": str(data), "hosts": hosts}
        info.update(objectstore.new_credentials())
        state.object_store = info
        state.save()
        (self.directory / "object-store.env").write_text(
            "".join(f"{k}={v}\n" for k, v in objectstore.client_env(info).items()), encoding="utf-8"
        )
        os.chmod(self.directory / "object-store.env", 0o600)
        if hosts:  # what pods on the real node use: the bridge address instead of the loopback one
            pods_env = self.directory / "object-store-pods.env"
            pods_env.write_text(
                "".join(f"{k}={v}\n" for k, v in objectstore.client_env(info, hosts[0]).items()), encoding="utf-8"
            )
            os.chmod(pods_env, 0o600)
        self._start(
            state, objectstore.COMPONENT, objectstore.server_args(data, port, hosts),
            command=[str(binary)], env=objectstore.server_env(info),
        )  # fmt: skip
        self._wait_healthy(state, objectstore.COMPONENT, f"http://127.0.0.1:{port}{objectstore.HEALTH_PATH}", 30)
        objectstore.create_bucket(info, binary)
        log.info(
            "object store (versitygw) is up in %.1f s: s3://%s at %s",
            time.monotonic() - started, objectstore.BUCKET, objectstore.endpoint("127.0.0.1", port),
        )  # fmt: skip

    def object_store_info(self) -> dict[str, Any]:
        """The running store's endpoint(s), bucket and keys; empty when the cluster has none."""
        state = ClusterState.load(self.directory)
        return dict(state.object_store) if state is not None else {}

    def load_images(self, images: list[str]) -> list[str]:
        """Import images from the local Docker engine into the real node's containerd (after `make images`)."""
        state = ClusterState.load(self.directory)
        if state is None or not state.real_node:
            raise ClusterError(f"cluster {self.name} has no real node: `modeldeploy cluster up --real-node` first")
        node = realnode.RealNode(self.directory, Path(state.bin_dir))
        imported = node.import_from_docker(images)
        missing = sorted(set(images) - set(imported))
        if missing:
            raise ClusterError(f"not in Docker: {', '.join(missing)} (build them: make images)")
        return imported

    # ---- down / status --------------------------------------------------------------------------------------

    def _all_running(self, state: ClusterState) -> bool:
        expected = {
            *COMPONENTS,
            *(realnode.NODE_COMPONENTS if state.real_node else ()),
            *(gitops.COMPONENTS if state.gitops else ()),
            *((objectstore.COMPONENT,) if state.object_store else ()),
        }
        return all(
            c in state.processes and process_start_time(state.processes[c]["pid"]) == state.processes[c]["start_time"]
            for c in expected
        )

    def down(self) -> list[str]:
        """Stop exactly what `up` started (by PID and start time), then remove the state. Returns what it stopped."""
        state = ClusterState.load(self.directory)
        stopped: list[str] = []
        if state is not None:
            alive = {
                c: info["pid"]
                for c, info in state.processes.items()
                if process_start_time(info["pid"]) == info.get("start_time") and info.get("start_time")
            }
            for pid in alive.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and any(
                process_start_time(pid) == state.processes[c]["start_time"] for c, pid in alive.items()
            ):
                _reap()
                time.sleep(0.05)
            for c, pid in alive.items():
                if process_start_time(pid) == state.processes[c]["start_time"]:
                    log.warning("%s (pid %d) ignored SIGTERM for 4 s: killing it", c, pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                stopped.append(c)
            _reap()
            busy = [p for p in state.ports.values() if port_is_taken(p)]
            if busy:
                log.warning("ports still answering after stop: %s", busy)
            if state.real_node:
                node = realnode.RealNode(self.directory, Path(state.bin_dir))
                for what in node.sweep(state.real_node):
                    log.info("real node: %s", what)
                left = realnode.mounts_under(self.directory)
                if left:  # removing the tree now would reach into whatever is still mounted in it
                    raise ClusterError(
                        f"mounts remain under {self.directory} ({', '.join(left[:5])}): unmount them "
                        f"(umount -l), then run `modeldeploy cluster down --name {self.name}` again"
                    )
        if self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)
        return stopped

    def restart_apiserver(self, timeout: float = 60) -> None:
        """Kill kube-apiserver and start it again with the same flags (tests of watch gaps).

        Every client's watch ends; the new watch cache begins now, so a watch resumed from an older
        resourceVersion gets 410 Gone and its client must list again. Killed, not stopped: a graceful stop waits
        for its in-flight requests, and a frozen client's may never end.
        """
        state = self._running_state()
        info = state.processes["kube-apiserver"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(info["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while process_start_time(info["pid"]) == info["start_time"] or port_is_taken(state.ports["apiserver"]):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info["pid"], os.WNOHANG)  # started by this process (a test's cluster): reap it
            if time.monotonic() > deadline:
                raise ClusterError(f"kube-apiserver (pid {info['pid']}) did not stop within 20 s")
            time.sleep(0.1)
        self._start(state, "kube-apiserver", self._apiserver_args(state))
        url = f"https://127.0.0.1:{state.ports['apiserver']}/readyz"
        self._wait_healthy(state, "kube-apiserver", url, timeout)

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision (returned): a watch from an older revision that
        reaches etcd gets 410 Gone instead of the events since."""
        state = self._running_state()
        etcd = f"http://127.0.0.1:{state.ports['etcd-client']}"
        revision = self._etcd_post(f"{etcd}/v3/kv/range", {"key": "Lw==", "count_only": True})["header"]["revision"]
        self._etcd_post(f"{etcd}/v3/kv/compaction", {"revision": revision, "physical": True})
        return int(revision)

    def _running_state(self) -> ClusterState:
        state = ClusterState.load(self.directory)
        if state is None or not self._all_running(state):
            raise ClusterError(f"cluster {self.name} is not up")
        return state

    @staticmethod
    def _etcd_post(url: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer

    def status(self) -> dict[str, Any]:
        state = ClusterState.load(self.directory)
        if state is None:
            return {"name": self.name, "up": False, "components": {}}
        components = {
            c: {
                "pid": info["pid"],
                "running": process_start_time(info["pid"]) == info.get("start_time"),
                "log": info.get("log"),
            }
            for c, info in state.processes.items()
        }
        return {
            "name": self.name,
            "up": self._all_running(state) and self._api_ready(state),
            "kubeconfig": str(state.kubeconfig),
            "ports": state.ports,
            "components": components,
            **({"git": gitops.git_url(state.ports, "NAME")} if state.gitops else {}),
        }


def _ctr_fails(node: realnode.RealNode) -> bool:
    try:
        node.ctr("version")
    except RuntimeError:
        return True
    return False


def _reap() -> None:
    """Collect exited children of this process (when `up` and `down` run in one process, as in tests)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def clean_orphans(prefix: str, state_root: Path | None = None) -> list[str]:
    """Bring down clusters named `prefix*` whose owner process is gone (a test run that was killed)."""
    root = state_root or default_state_root()
    removed: list[str] = []
    if not root.exists():
        return removed
    for directory in root.iterdir():
        if not directory.name.startswith(prefix):
            continue
        state = ClusterState.load(directory)
        owner = state.owner_pid if state else 0
        if owner and Path(f"/proc/{owner}").exists():
            continue
        LocalCluster(directory.name, state_root=root).down()
        removed.append(directory.name)
    return removed


if __name__ == "__main__":  # pragma: no cover - a debugging aid
    logging.basicConfig(level=logging.INFO)
    print(LocalCluster(sys.argv[1] if len(sys.argv) > 1 else "modeldeploy").up())
