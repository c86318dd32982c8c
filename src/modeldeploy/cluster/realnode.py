"""The local cluster's real node: containerd, a kubelet and kube-proxy on this machine, beside the kwok nodes.

Pods that select it (label `modeldeploy.dev/node=real`, toleration of the `modeldeploy.dev/real-node` taint) run for
real. Everything lives under the cluster's state directory: containerd has its own root, state and socket (Docker's
engine and its containerd are left alone), the kubelet its own root and cgroup root. `sweep` removes everything the
node made, also after a crash: the pods' processes (found by cgroup), containerd's shims (by their socket argument),
mounts under the state directory (network namespaces included), the bridge and its veths, the iptables chains that
did not exist before, the cgroups, and the kernel settings the kubelet and kube-proxy change.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NODE_NAME = "real-node-0"
NODE_LABEL_KEY = "modeldeploy.dev/node"
NODE_LABEL_VALUE = "real"
TAINT_KEY = "modeldeploy.dev/real-node"
BRIDGE = "mdrn0"
POD_CIDR = "10.245.0.0/24"
NODE_IP = "10.245.0.1"  # the bridge's address: the kubelet serves there, pods' gateway, never outside this host
CGROUP_ROOT = "modeldeploy-real-node"
STORAGE_CLASS = "modeldeploy-local"
PROVISIONER_NAME = "modeldeploy.dev/host-path"
PAUSE_IMAGE = "modeldeploy.local/pause:3.10"
PROJECT_IMAGES = ("modeldeploy/training:0.1.0", "modeldeploy/serving:0.1.0")  # the operator runs outside by default
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
NODE_COMPONENTS = ("containerd", "kubelet", "kube-proxy", "provisioner")
NODE_BINARIES = ("kubelet", "kube-proxy", "pause")
# Kernel settings the kubelet (its "kernel defaults") and kube-proxy (localhost NodePorts) write: restored on down.
SYSCTLS = (
    "net/ipv4/conf/all/route_localnet",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle")


class RealNodeUnavailable(RuntimeError):
    """The machine cannot run the real node; the message lists what is missing and how to get it."""


def _run(*args: str, check: bool = True, input_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(list(args), capture_output=True, input=input_bytes, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.decode(errors='replace')}")
    return result


def log_verbosity() -> int:
    """The kubelet's and kube-proxy's klog level: 1, or MODELDEPLOY_REALNODE_VERBOSITY (0-10) when set at `up`.
    2 shows each of kube-proxy's rule syncs; 4 the latency of each endpoint's programming and the kubelet's probes."""
    value = os.environ.get("MODELDEPLOY_REALNODE_VERBOSITY", "").strip() or "1"
    if not value.isdigit() or int(value) > 10:
        raise RealNodeUnavailable(f"MODELDEPLOY_REALNODE_VERBOSITY={value!r}: give a klog level from 0 to 10")
    return int(value)


def cni_bin_dir() -> str | None:
    return next((d for d in CNI_BIN_DIRS if Path(d, "bridge").is_file() and Path(d, "host-local").is_file()), None)


def cgroup_controllers() -> dict[str, Path]:
    """Mounted cgroup v1 hierarchies by controller name (the systemd one as name=systemd)."""
    found: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        pre, _, post = line.partition(" - ")
        fields = post.split()
        if len(fields) < 3 or fields[0] != "cgroup":
            continue
        mountpoint = Path(pre.split()[4])
        for option in fields[2].split(","):
            if option in {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "hugetlb",
                          "net_cls", "net_prio", "perf_event", "rdma", "misc", "name=systemd"}:  # fmt: skip
                found.setdefault(option, mountpoint)
    return found


def missing_prerequisites(bin_dir: Path | None) -> list[str]:
    """What this machine lacks to run the real node, each with what to do; empty when it can."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("the real node needs root (a kubelet manages mounts, cgroups and network namespaces)")
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        missing = {"cpu", "cpuacct", "cpuset", "memory", "pids"} - set(cgroup_controllers())
        if missing:
            problems.append(f"cgroup v1 controllers not mounted: {', '.join(sorted(missing))}")
    else:
        problems.append("this machine mounts cgroup v2 only; the real node is set up for cgroup v1 hierarchies")
    for tool, package in (("containerd", "containerd"), ("ctr", "containerd"), ("runc", "runc"),
                          ("iptables", "iptables"), ("ip", "iproute2"), ("conntrack", "conntrack")):  # fmt: skip
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed (apt-get install {package})")
    if cni_bin_dir() is None:
        problems.append("CNI plugins not found in /usr/lib/cni (apt-get install containernetworking-plugins)")
    if bin_dir is not None:
        lacking = [b for b in NODE_BINARIES if not (bin_dir / b).is_file()]
        if lacking:
            problems.append(f"{', '.join(lacking)} not built in {bin_dir} (make cluster-binaries REAL_NODE=1)")
    return problems


def _overlaps(cidr: str) -> list[str]:
    """Host routes and addresses that overlap `cidr` (our own bridge excluded)."""
    net = ipaddress.ip_network(cidr)
    hits = []
    for line in _run("ip", "-4", "-o", "addr", "show").stdout.decode().splitlines():
        parts = line.split()
        if parts[1] != BRIDGE and ipaddress.ip_interface(parts[3]).network.overlaps(net):
            hits.append(f"address {parts[3]} on {parts[1]}")
    for line in _run("ip", "-4", "route", "show", "table", "all").stdout.decode().splitlines():
        parts = line.split()
        dest = parts[1] if parts[0] in {"local", "broadcast", "unicast"} else parts[0]
        if dest == "default" or "dev" not in parts or parts[parts.index("dev") + 1] == BRIDGE:
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(dest, strict=False).overlaps(net):
                hits.append(f"route {line.strip()}")
    return hits


def _pause_archive(pause_binary: Path) -> bytes:
    """A docker-archive (what `docker save` writes) of an image holding only the static pause binary."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tar.gettarinfo(str(pause_binary), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        with pause_binary.open("rb") as f:
            tar.addfile(info, f)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [PAUSE_IMAGE], "Layers": ["layer/layer.tar"]}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in ((config_name, config), ("layer/layer.tar", layer_bytes), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass
class RealNode:
    """The files and commands of one cluster's real node; the processes are started by LocalCluster."""

    directory: Path  # the cluster's state directory
    bin_dir: Path

    @property
    def root(self) -> Path:
        return self.directory / "node"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def pki(self) -> Path:
        return self.directory / "pki"

    # ---- preparing --------------------------------------------------------------------------------------------

    def check_host(self) -> None:
        log_verbosity()  # a bad MODELDEPLOY_REALNODE_VERBOSITY is refused before anything starts
        problems = missing_prerequisites(self.bin_dir)
        if problems:
            raise RealNodeUnavailable("the real node cannot start: " + "; ".join(problems))
        if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            raise RealNodeUnavailable(
                f"interface {BRIDGE} exists: another cluster's real node runs on this machine (one at a time: "
                "`modeldeploy cluster status --name NAME` finds it; `modeldeploy cluster down --name NAME` stops it)"
            )
        for cidr in (POD_CIDR,):
            hits = _overlaps(cidr)
            if hits:
                raise RealNodeUnavailable(f"the pod network {cidr} collides with this host's {'; '.join(hits)}")

    def record_host(self) -> dict[str, Any]:
        """What the sweep restores or must not touch: kernel settings and iptables chains as they are now."""
        sysctls = {}
        for key in SYSCTLS:
            with contextlib.suppress(OSError):
                sysctls[key] = Path("/proc/sys", key).read_text(encoding="utf-8").strip()
        return {"sysctls": sysctls, "chains": self._chains(), "node": NODE_NAME, "bridge": BRIDGE}

    @staticmethod
    def _chains() -> dict[str, list[str]]:
        chains: dict[str, list[str]] = {}
        for binary in IPTABLES:
            for table in TABLES:
                result = _run(binary, "-w", "-t", table, "-S", check=False)
                names = [line.split()[1] for line in result.stdout.decode().splitlines() if line.startswith("-N ")]
                chains[f"{binary}/{table}"] = names
        return chains

    def write_files(self, api_port: int, ports: dict[str, int]) -> None:
        from modeldeploy.cluster.pki import make_node_pki  # noqa: PLC0415

        for sub in ("containerd", "kubelet", "cni/net.d", "cni/ipam", "pod-logs", "volumes"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        make_node_pki(self.pki, NODE_NAME, NODE_IP)
        for user, cert in ((f"system:node:{NODE_NAME}", "kubelet-client"), ("system:kube-proxy", "kube-proxy")):
            self._write_kubeconfig(self.root / f"{cert}.kubeconfig", api_port, user, cert)
        (self.root / "resolv.conf").write_text("# pods on the real node resolve nothing: no DNS runs here\n")
        cni = cni_bin_dir()
        (self.root / "containerd" / "config.toml").write_text(self._containerd_config(str(cni)), encoding="utf-8")
        (self.root / "cni" / "net.d" / "10-modeldeploy.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "modeldeploy-real-node",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,  # pods talk to this host only: no NAT to the outside
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                                "dataDir": str(self.root / "cni" / "ipam"),
                            },
                        }
                    ],
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        (self.root / "kubelet-config.json").write_text(json.dumps(self._kubelet_config(ports), indent=2))

    def _write_kubeconfig(self, path: Path, api_port: int, user: str, cert: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": f"https://127.0.0.1:{api_port}",
                        "certificate-authority": str(self.pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(self.pki / f"{cert}.crt"),
                        "client-key": str(self.pki / f"{cert}.key"),
                    },
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        }
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")

    def _containerd_config(self, cni_dir: str) -> str:
        c = self.root / "containerd"
        return f"""# containerd of the real node: its own root, state and socket; Docker's engine is not involved.
version = 2
root = "{c / "root"}"
state = "{c / "state"}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.containerd_socket}.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Pods may not get a lower OOM score than containerd's own: lowering it needs CAP_SYS_RESOURCE, which root lacks
  # in some VMs and containers (runc's init then dies with "can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{c / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_dir}"
    conf_dir = "{self.root / "cni" / "net.d"}"
    max_conf_num = 1
"""

    def _kubelet_config(self, ports: dict[str, int]) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": ports["kubelet-healthz"],
            "tlsCertFile": str(self.pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(self.pki / "kubelet-serving.key"),
            # The apiserver (logs, exec, port-forward) presents a client cert of the cluster's CA: that is the check.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.pki / "ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"],
            "failSwapOn": False,
            "failCgroupV1": False,
            "resolvConf": str(self.root / "resolv.conf"),
            "clusterDomain": "cluster.local",
            "podLogsDir": str(self.root / "pod-logs"),
            # Imported images cannot be pulled again (no registry): never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
            "maxPods": 40,
            "serializeImagePulls": False,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "nodeStatusReportFrequency": "20s",
            "volumePluginDir": str(self.root / "kubelet" / "volume-plugins"),
        }

    def prepare_host(self) -> None:
        """The bridge with the node's address (the kubelet binds it before any pod exists) and the cgroup root."""
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        # Pin the bridge's MAC address: else the kernel gives the bridge the lowest MAC of its ports, which changes
        # as pods come and go, and a pod that cached a deleted veth's MAC as its gateway's cannot answer the host
        # until its ARP entry expires. CNI's bridge plugin pins it too, but only when it adds the gateway address
        # itself; this address is added first, so that the kubelet can bind it before any pod exists.
        mac = Path(f"/sys/class/net/{BRIDGE}/address").read_text(encoding="utf-8").strip()
        _run("ip", "link", "set", BRIDGE, "address", mac)
        _run("ip", "addr", "add", f"{NODE_IP}/{ipaddress.ip_network(POD_CIDR).prefixlen}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        for controller, mount in cgroup_controllers().items():
            path = mount / CGROUP_ROOT
            path.mkdir(exist_ok=True)
            if controller == "cpuset":  # a new cpuset has no CPUs or memory nodes until given its parent's
                for key in ("cpuset.cpus", "cpuset.mems"):
                    (path / key).write_text((mount / key).read_text())

    def containerd_args(self) -> list[str]:
        return ["--config", str(self.root / "containerd" / "config.toml"), "--log-level", "warn"]

    def kubelet_args(self) -> list[str]:
        return [
            f"--config={self.root / 'kubelet-config.json'}",
            f"--kubeconfig={self.root / 'kubelet-client.kubeconfig'}",
            f"--root-dir={self.root / 'kubelet'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            f"--node-labels=type=real,{NODE_LABEL_KEY}={NODE_LABEL_VALUE}",
            f"--v={log_verbosity()}",
        ]

    def kube_proxy_args(self, ports: dict[str, int]) -> list[str]:
        return [
            f"--kubeconfig={self.root / 'kube-proxy.kubeconfig'}",
            f"--hostname-override={NODE_NAME}",
            "--proxy-mode=iptables",
            f"--cluster-cidr={POD_CIDR}",
            # NodePorts answer on this host's loopback only: tests reach Services at 127.0.0.1:<nodePort>.
            "--nodeport-addresses=127.0.0.1/32",
            f"--healthz-bind-address=127.0.0.1:{ports['kube-proxy-healthz']}",
            f"--metrics-bind-address=127.0.0.1:{ports['kube-proxy-metrics']}",
            # Leave the host's conntrack settings as they are.
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            f"--v={log_verbosity()}",
        ]

    def ctr(self, *args: str, input_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return _run("ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", *args, input_bytes=input_bytes)

    def import_pause(self) -> None:
        self.ctr("images", "import", "-", input_bytes=_pause_archive(self.bin_dir / "pause"))

    def import_from_docker(self, images: tuple[str, ...] | list[str]) -> list[str]:
        """Import these images from the local Docker engine (`docker save`); returns the ones it imported."""
        if shutil.which("docker") is None:
            return []
        imported = []
        for image in images:
            if _run("docker", "image", "inspect", image, check=False).returncode != 0:
                continue
            save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
            try:
                result = subprocess.run(
                    ["ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", "images", "import", "-"],
                    stdin=save.stdout,
                    capture_output=True,
                    check=False,
                )
            finally:
                if save.stdout is not None:
                    save.stdout.close()
                save.wait()
            if result.returncode != 0 or save.returncode != 0:
                raise RuntimeError(f"importing {image} into the real node failed: {result.stderr.decode()[-500:]}")
            imported.append(image)
        return imported

    def rbac_manifests(self) -> list[dict[str, Any]]:
        """The node's identity may do what a kubelet does (system:node); the local-path StorageClass."""
        return [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "modeldeploy:real-node"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
            },
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": STORAGE_CLASS},
                "provisioner": PROVISIONER_NAME,
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "Immediate",
            },
        ]

    # ---- removing ---------------------------------------------------------------------------------------------

    def sweep(self, recorded: dict[str, Any]) -> list[str]:
        """Remove what the node left after its processes were stopped; returns what it found (for the log)."""
        found: list[str] = []
        found += self._kill_cgroup_processes()
        found += self._kill_shims()
        kube_proxy = self.bin_dir / "kube-proxy"
        if kube_proxy.is_file():
            _run(str(kube_proxy), "--cleanup", "--v=0", check=False)
        found += self._remove_chains(recorded.get("chains", {}))
        found += self._unmount_all()
        found += self._remove_links()
        found += self._remove_cgroups()
        for key, value in recorded.get("sysctls", {}).items():
            path = Path("/proc/sys", key)
            with contextlib.suppress(OSError):
                if path.read_text(encoding="utf-8").strip() != value:
                    path.write_text(value, encoding="utf-8")
                    found.append(f"sysctl {key} restored to {value}")
        return found

    def _cgroup_dirs(self) -> list[Path]:
        dirs: list[Path] = []
        for mount in cgroup_controllers().values():
            top = mount / CGROUP_ROOT
            if top.is_dir():
                dirs.extend(sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)))
                dirs.append(top)
        return dirs

    def _kill_cgroup_processes(self) -> list[str]:
        found: list[str] = []
        deadline = time.monotonic() + 10
        while True:
            pids = set()
            for d in self._cgroup_dirs():
                with contextlib.suppress(OSError):
                    pids |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
            if not pids:
                return found
            if not found:
                found.append(f"{len(pids)} pod processes killed")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                found.append(f"pod processes still alive after SIGKILL: {sorted(pids)}")
                return found
            time.sleep(0.05)

    def _kill_shims(self) -> list[str]:
        """containerd's shims outlive containerd by design; ours carry our socket in their arguments."""
        found = []
        needle = str(self.containerd_socket).encode()
        shim_ids: list[str] = []
        task_dir = self.root / "containerd" / "state" / "io.containerd.runtime.v2.task" / "k8s.io"
        if task_dir.is_dir():
            shim_ids = [p.name for p in task_dir.iterdir()]
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline.split(b"\0")[0] and needle in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)
                found.append(f"shim {proc.name} killed")
        # A killed shim leaves its socket in /run/containerd/s: the name is a hash of our address, namespace, id.
        for shim_id in shim_ids:
            digest = hashlib.sha256(f"{self.containerd_socket}/k8s.io/{shim_id}".encode()).hexdigest()
            with contextlib.suppress(FileNotFoundError):
                Path("/run/containerd/s", digest).unlink()
                found.append(f"shim socket of {shim_id[:12]} removed")
        return found

    def _remove_chains(self, before: dict[str, list[str]]) -> list[str]:
        """Chains that did not exist before `up` (kube-proxy's, the kubelet's canaries), and every rule using them."""
        found = []
        now = self._chains()
        for key, chains in now.items():
            binary, table = key.split("/")
            ours = [c for c in chains if c not in set(before.get(key, [])) and c.startswith(("KUBE-", "CNI-"))]
            if not ours:
                continue
            rules = _run(binary, "-w", "-t", table, "-S", check=False).stdout.decode().splitlines()
            for rule in rules:
                parts = rule.split()
                if parts[0] == "-A" and parts[1] not in ours and any(f"-j {c}" in rule + " " for c in ours):
                    _run(binary, "-w", "-t", table, "-D", *parts[1:], check=False)
            for chain in ours:
                _run(binary, "-w", "-t", table, "-F", chain, check=False)
            for chain in ours:
                _run(binary, "-w", "-t", table, "-X", chain, check=False)
            found.append(f"{binary} {table}: removed {', '.join(ours)}")
        return found

    def _unmount_all(self) -> list[str]:
        found: list[str] = []
        for _ in range(5):
            mounts = mounts_under(self.directory)
            if not mounts:
                return found
            for point in sorted(set(mounts), key=lambda p: -len(p)):
                if _run("umount", point, check=False).returncode != 0:
                    _run("umount", "-l", point, check=False)
            found.append(f"{len(mounts)} mounts removed")
        return found

    def _remove_links(self) -> list[str]:
        found: list[str] = []
        if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            return found
        for line in _run("ip", "-o", "link", "show", "master", BRIDGE, check=False).stdout.decode().splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            _run("ip", "link", "del", name, check=False)
            found.append(f"veth {name} removed")
        _run("ip", "link", "del", BRIDGE, check=False)
        found.append(f"bridge {BRIDGE} removed")
        return found

    def _remove_cgroups(self) -> list[str]:
        dirs = self._cgroup_dirs()
        for d in dirs:
            with contextlib.suppress(OSError):
                d.rmdir()
        left = [str(d) for d in dirs if d.exists()]
        return [f"cgroups left (busy): {left}"] if left else []


def mounts_under(directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(prefix) or point == str(directory):
            points.append(point)
    return points
