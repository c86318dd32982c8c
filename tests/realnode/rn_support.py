"""Helpers of the real-node tests: the cluster handle, the operator process, ModelDeployments, port-forwards."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modeldeploy.cluster import realnode
from modeldeploy.cluster.local import ClusterState, default_state_root
from modeldeploy.cluster.waiting import wait_until

PLACEMENT = {
    "nodeSelector": {realnode.NODE_LABEL_KEY: realnode.NODE_LABEL_VALUE},
    "tolerations": [{"key": realnode.TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
}


@dataclass(frozen=True)
class RealCluster:
    name: str
    kubeconfig: Path
    kubectl_path: str
    env: dict[str, str]

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_path, *args],
            check=False,
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    @property
    def logs_dir(self) -> Path:
        """Where its components (kube-proxy, the kubelet, the control plane) write their logs."""
        return default_state_root() / self.name / "logs"

    def create_namespace(self, name: str) -> None:
        """A namespace, once its default ServiceAccount exists (pods are refused before)."""
        self.kubectl("create", "namespace", name)
        wait_until(
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
            timeout=30,
            what=f"the default ServiceAccount in {name}",
        )


def existing_cluster(name: str) -> RealCluster:
    """The handle of a local cluster already up with a real node (a bench's --cluster); exits saying so if not."""
    state = ClusterState.load(default_state_root() / name)
    if state is None or not state.real_node:
        sys.exit(f"{name} is not a local cluster with a real node")
    kubeconfig = default_state_root() / name / "kubeconfig"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": f"{state.bin_dir}:{os.environ.get('PATH', '')}"}
    return RealCluster(name, kubeconfig, str(Path(state.bin_dir) / "kubectl"), env)


class Operator:
    """`modeldeploy operator` watching one namespace, as a subprocess; its log is kept for failure messages."""

    def __init__(self, env: dict[str, str], namespace: str, log: Path) -> None:
        self.log_path = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modeldeploy.cli", "operator", "--namespace", namespace],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**env, "MODELDEPLOY_OPERATOR_LEASE_DURATION_SECONDS": "6"},
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class Models:
    """ModelDeployments placed on the real node, in the test's namespace."""

    def __init__(self, cluster: RealCluster, namespace: str, operator: Operator) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.operator = operator

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, "-n", self.namespace, **kwargs)

    def apply(self, name: str, spec: dict[str, Any]) -> None:
        spec = json.loads(json.dumps(spec))
        for part in ("training", "serving"):
            spec.setdefault(part, {}).update(json.loads(json.dumps(PLACEMENT)))
        spec.setdefault("storage", {})["storageClassName"] = realnode.STORAGE_CLASS
        manifest = {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name}}
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump({**manifest, "spec": spec}))

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", kind, name, "-o", "json").stdout))

    def items(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json", *(["-l", selector] if selector else [])]
        return list(json.loads(self.kubectl(*args).stdout)["items"])

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get("modeldeployment", name).get("status") or {})

    def wait_phase(self, name: str, phase: str, timeout: float) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            md = self.get("modeldeployment", name)
            status = md.get("status") or {}
            current = status.get("observedGeneration") == md["metadata"].get("generation")
            if current and status.get("phase") == "Failed" and phase != "Failed":
                raise AssertionError(f"{name} Failed: {status.get('conditions')}")
            return status if current and status.get("phase") == phase else None

        return wait_until(
            check, timeout=timeout, what=f"{name} phase {phase}", interval=1, describe=lambda: self._describe(name)
        )

    def _describe(self, name: str) -> str:
        pods = self.kubectl("get", "pods", "-o", "wide", check=False).stdout
        return f"status={self.status(name)}\npods:\n{pods}\noperator log tail:\n{self.operator.log()[-2000:]}"


def stamp() -> str:
    """Wall-clock time with milliseconds: how the load's failures and the witness's lines are lined up."""
    return f"{datetime.datetime.now():%H:%M:%S.%f}"[:-3]


def _seconds(text: str) -> float:
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def endpoint_line(event: str, obj: Any) -> str:
    """One EndpointSlice change: each endpoint's pod, address and conditions (R ready, S serving, T terminating)."""
    endpoints = []
    for ep in obj.endpoints or []:
        c = ep.conditions
        pod = ep.target_ref.name if ep.target_ref else "?"
        flags = "".join(flag for flag, on in (("R", c.ready), ("S", c.serving), ("T", c.terminating)) if on)
        endpoints.append(f"{pod}@{','.join(ep.addresses)}[{flags or '-'}]")
    return f"{stamp()} {event} slice {obj.metadata.namespace}/{obj.metadata.name} {' '.join(endpoints) or '(none)'}"


def pod_line(event: str, obj: Any) -> str:
    """One pod change: phase, Ready, restarts, each container's state, deletion."""
    meta, status = obj.metadata, obj.status
    ready = next((c.status for c in status.conditions or [] if c.type == "Ready"), "?")
    states = []
    for cs in status.container_statuses or []:
        state = cs.state
        if state.running:
            states.append("running")
        elif state.waiting:
            states.append(f"waiting:{state.waiting.reason}")
        elif state.terminated:
            states.append(f"terminated:{state.terminated.reason}:{state.terminated.exit_code}")
    restarts = sum(cs.restart_count for cs in status.container_statuses or [])
    deleting = " deleting" if meta.deletion_timestamp else ""
    return (
        f"{stamp()} {event} pod {meta.namespace}/{meta.name} ip={status.pod_ip} phase={status.phase} ready={ready} "
        f"restarts={restarts} {','.join(states)}{deleting}"
    )


def event_line(event: str, obj: Any) -> str:
    """One Event: a probe that failed, a container killed or restarted, a pod scheduled or deleted."""
    what = obj.involved_object
    message = (obj.message or "").replace("\n", " ")[:160]
    when = obj.last_timestamp or obj.event_time  # whole seconds: the API server's own, for events seen late
    at = f" (at {when:%H:%M:%S})" if when else ""
    return f"{stamp()} {event} event{at} {obj.type} {obj.reason} {what.kind}/{what.name}: {message}"


def node_line(event: str, obj: Any) -> str:
    """One change of the real node: its Ready condition (the node controller marks every pod on a node that stopped
    reporting not ready, which empties their Services) and the kubelet's last heartbeat."""
    ready = next((c for c in obj.status.conditions or [] if c.type == "Ready"), None)
    state = f"{ready.status} ({ready.reason}, heartbeat {ready.last_heartbeat_time:%H:%M:%S})" if ready else "?"
    return f"{stamp()} {event} node {obj.metadata.name} Ready={state}"


def watch_lines(
    list_call: Any,
    args: tuple[Any, ...],
    line: Callable[[str, Any], str],
    emit: Callable[[str], object],
    stop: threading.Event,
    **kwargs: Any,
) -> None:
    """Each change `list_call` watches, as `line` writes it, to `emit`, until `stop`; a broken watch is restarted
    and the lines say so."""
    from kubernetes import watch  # noqa: PLC0415 - only the load tests and the bench watch

    while not stop.is_set():
        w = watch.Watch()
        try:
            for event in w.stream(list_call, *args, timeout_seconds=30, **kwargs):
                emit(line(event["type"], event["object"]))
                if stop.is_set():
                    w.stop()
        except Exception as err:  # noqa: BLE001 - restarted, and said
            emit(f"{stamp()} watch restarted: {err}")


class Witness:
    """Every pod, EndpointSlice and Event change in a namespace and every change of the real node, with the time it
    was seen: what a failed request is lined up against in the test's own failure message (CI keeps nothing else of
    a run)."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        from kubernetes import client, config  # noqa: PLC0415 - only the load tests watch

        api = config.new_client_from_config(str(kubeconfig))
        core = client.CoreV1Api(api)
        self.lines: list[str] = []
        self._stop = threading.Event()
        watches: list[tuple[Any, tuple[Any, ...], Callable[[str, Any], str], dict[str, Any]]] = [
            (core.list_namespaced_pod, (namespace,), pod_line, {}),
            (client.DiscoveryV1Api(api).list_namespaced_endpoint_slice, (namespace,), endpoint_line, {}),
            (core.list_namespaced_event, (namespace,), event_line, {}),
            (core.list_node, (), node_line, {"field_selector": f"metadata.name={realnode.NODE_NAME}"}),
        ]
        self._threads = [
            threading.Thread(
                target=watch_lines, args=(call, args, line, self.lines.append, self._stop), kwargs=kw, daemon=True
            )
            for call, args, line, kw in watches
        ]
        for t in self._threads:
            t.start()

    def around(self, when: str, seconds: float = 3.0) -> list[str]:
        at = _seconds(when)
        return [line for line in list(self.lines) if abs(_seconds(line.split(" ", 1)[0]) - at) <= seconds]

    def stop(self) -> None:
        self._stop.set()


# A klog line's time of day: "I1203 06:45:20.286486   18953 proxier.go:1484] ...".
KLOG_TIME = re.compile(r"^[IWEF]\d{4} (\d\d:\d\d:\d\d\.\d+) ")


def _tail(path: Path, size: int = 32 << 20) -> list[str]:
    """The last `size` bytes of a log, as lines (none if it cannot be read)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


class ComponentLogs:
    """What the node and the control plane logged near a moment: every kube-proxy line (at verbosity 2 each rule
    sync says how many endpoints it programmed), and the kubelet's and the controller-manager's lines about one
    namespace (probes, containers started and killed, EndpointSlice updates). The Witness shows what the API said;
    these show what the components that act on it did, and when."""

    COMPONENTS = ("kube-proxy", "kubelet", "kube-controller-manager")
    # kube-proxy's level-2 lines that say nothing about this node's IPv4 rules: a line per Service per sync on
    # topology hints no Service here has, and the syncs of the (empty) IPv6 family.
    NOISE = ("topology hints", 'ipFamily="IPv6"')

    def __init__(self, logs_dir: Path, namespace: str) -> None:
        self.logs_dir, self.namespace = logs_dir, namespace

    @functools.cached_property
    def _timed(self) -> dict[str, list[tuple[float, str]]]:
        """Each component's lines that concern the test, with their time of day. Read once, at the first `around()`:
        the failures are explained after the load has stopped, so the logs hold all of them by then."""
        timed = {}
        for component in self.COMPONENTS:
            needle = "" if component == "kube-proxy" else f"{self.namespace}/"
            timed[component] = [
                (_seconds(found[1]), line)
                for line in _tail(self.logs_dir / f"{component}.log")
                if needle in line and not any(text in line for text in self.NOISE) and (found := KLOG_TIME.match(line))
            ]
        return timed

    def around(self, when: str, seconds: float = 3.0, per_component: int = 12) -> list[str]:
        """Each component's lines within `seconds` of `when`, the `per_component` nearest to it, in time order."""
        at = _seconds(when)
        lines = []
        for component, timed in self._timed.items():
            near = [item for item in timed if abs(item[0] - at) <= seconds]
            nearest = sorted(sorted(near, key=lambda item: abs(item[0] - at))[:per_component])
            lines += [f"{component}: {' '.join(line.split())[:300]}" for _, line in nearest]
        return lines or [f"(no line of {', '.join(self.COMPONENTS)} within {seconds:.0f} s)"]


def service_rules(table: str, service: str) -> list[str]:
    """kube-proxy's rules in `table` for one Service (`namespace/name`): each names it in its comment."""
    rules = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=False).stdout
    return [r for r in rules.splitlines() if f'"{service}' in r or f"{service} " in r]


def nodeport_routed(service: str) -> bool:
    """Whether kube-proxy sends the NodePort of `service` (`namespace/name`) to an endpoint: a nat rule names one
    (`... --comment "ns/name -> 10.245.0.9:8080" ...`) and no filter rule REJECTs it.

    Wait for this before the first connection from this host to a new NodePort. kube-proxy writes a new Service's
    rules before its endpoints, and until then REJECTs it in the INPUT chain: a connection from this host has passed
    POSTROUTING by then, so conntrack keeps its entry (SYN_SENT, UNREPLIED, no DNAT) for 120 s. A later connection
    from the same source port to the same NodePort is taken for that entry's retransmitted SYN: no DNAT, and this
    host's own stack refuses it, whatever endpoints are ready. kube-proxy flushes such entries for UDP only, and the
    kernel's walk over one destination's source ports restarts elsewhere now and then, so a load does come back to
    those ports within the 120 s (measured: docs/real-node.md, "Stale conntrack entries").
    """
    routed = any(" -> " in rule for rule in service_rules("nat", service))
    return routed and not any("REJECT" in rule for rule in service_rules("filter", service))


# The host's counters that tell who refused a connection: a reset sent by the host's own stack (a SYN to 127.0.0.1
# that no DNAT rule caught, delivered to a port nothing listens on), kube-proxy's REJECT (an ICMP port unreachable: a
# Service without endpoints), conntrack dropping or failing to insert an entry (a NAT clash). A pod's reset is sent
# in the pod's network namespace and moves none of these: that namespace's own counter does.
SNMP_COUNTERS = {
    "Tcp": ("AttemptFails", "OutRsts", "EstabResets"),
    "Icmp": ("OutDestUnreachs", "InDestUnreachs"),
    "TcpExt": ("ListenOverflows", "ListenDrops", "TCPTimeWaitOverflow", "TCPReqQFullDrop"),
}
CONNTRACK_COUNTERS = ("invalid", "insert_failed", "drop", "early_drop", "clashres")


def _snmp(path: str) -> dict[str, int]:
    """`Proto: names` / `Proto: values` line pairs of /proc/net/snmp and /proc/net/netstat, the counters named above."""
    counters: dict[str, int] = {}
    lines = Path(path).read_text(encoding="ascii").splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        proto, _, rest = names.partition(": ")
        wanted = SNMP_COUNTERS.get(proto, ())
        for name, value in zip(rest.split(), values.partition(": ")[2].split(), strict=False):
            if name in wanted:
                counters[f"{proto}.{name}"] = int(value)
    return counters


def pod_network_namespaces() -> dict[str, int]:
    """Each pod address of the real node's range and a process in its network namespace (a pod's reset is counted
    there: /proc/<pid>/net/snmp is that namespace's)."""
    pods: dict[str, int] = {}
    namespaces: set[str] = {os.readlink("/proc/self/ns/net")}
    for entry in os.listdir("/proc"):
        try:
            namespace = os.readlink(f"/proc/{entry}/ns/net") if entry.isdigit() else ""
            if not namespace or namespace in namespaces:
                continue
            namespaces.add(namespace)
            trie = Path(f"/proc/{entry}/net/fib_trie").read_text(encoding="ascii").splitlines()
        except OSError:  # gone, or not ours to read
            continue
        local = {prev.split()[-1] for prev, line in itertools.pairwise(trie) if "/32 host LOCAL" in line}
        for address in local:
            if ipaddress.ip_address(address) in ipaddress.ip_network(realnode.POD_CIDR):
                pods[address] = int(entry)
    return pods


def listening(pid: int, port: int) -> bool:
    """Whether a TCP socket listens on `port` in the network namespace of `pid`."""
    lines = Path(f"/proc/{pid}/net/tcp").read_text(encoding="ascii").splitlines()[1:]
    return any(f.split()[1].endswith(f":{port:04X}") and f.split()[3] == "0A" for f in lines)


def host_counters() -> dict[str, int]:
    """The host network namespace's counters of SNMP_COUNTERS and CONNTRACK_COUNTERS (the latter summed over CPUs)."""
    counters = _snmp("/proc/net/snmp") | _snmp("/proc/net/netstat")
    stat = Path("/proc/net/stat/nf_conntrack")
    if stat.exists():
        header, *cpus = stat.read_text(encoding="ascii").split("\n")
        names = header.split()
        for cpu in filter(None, cpus):
            for name, value in zip(names, cpu.split(), strict=False):
                if name in CONNTRACK_COUNTERS:
                    counters[f"conntrack.{name}"] = counters.get(f"conntrack.{name}", 0) + int(value, 16)
    return counters


class HostEvidence:
    """What the host's network stack did about one request to a NodePort on 127.0.0.1, read right after it failed:
    the counters that moved while it ran (the host's, and each pod's resets), which pods listened on the target
    port, conntrack's entries for the port that are neither ESTABLISHED nor TIME_WAIT (kube-proxy's REJECT leaves an
    UNREPLIED SYN_SENT one; a connection answered only by a reset is deleted at once), and kube-proxy's rules for
    the Service at that moment. Needs root and conntrack/iptables-save (what the real node needs too); without them
    it says so."""

    def __init__(self, port: int, service: str, target_port: int = 8080) -> None:
        self.port, self.service, self.target_port = port, service, target_port
        tools = all(shutil.which(tool) for tool in ("conntrack", "iptables-save"))
        self.missing = "" if os.geteuid() == 0 and tools else "not root, or conntrack/iptables-save missing"
        self._pods: dict[str, int] = {}
        self._pods_read = 0.0

    def before(self) -> dict[str, int]:
        """The host's counters, and each pod's resets (`pod <address>`), before a request."""
        if self.missing:
            return {}
        if time.monotonic() - self._pods_read > 1:  # pods come and go: their namespaces are looked up each second
            self._pods, self._pods_read = pod_network_namespaces(), time.monotonic()
        return host_counters() | self._pod_resets()

    def _pod_resets(self) -> dict[str, int]:
        """Each known pod's TCP resets, read in its network namespace (a pod that is gone is left out)."""
        resets = {}
        for address, pid in self._pods.items():
            try:
                resets[f"pod {address} Tcp.OutRsts"] = _snmp(f"/proc/{pid}/net/snmp")["Tcp.OutRsts"]
            except (OSError, KeyError):
                continue
        return resets

    def after(self, before: dict[str, int]) -> list[str]:
        """Lines that say who refused: counters moved during the request, conntrack entries, kube-proxy's rules."""
        if self.missing:
            return [f"(no host evidence: {self.missing})"]
        now = host_counters() | self._pod_resets()
        moved = {k: now[k] - before[k] for k in now if k in before and now[k] != before[k]}
        lines = [f"counters that moved during the request (host, and each pod's resets): {moved or 'none'}"]
        listeners = []
        for address, pid in sorted(self._pods.items()):
            try:
                listeners.append(f"{address}:{'yes' if listening(pid, self.target_port) else 'NO'}")
            except OSError:
                listeners.append(f"{address}:gone")
        lines.append(f"pods listening on {self.target_port} right after: {' '.join(listeners) or '(no pod)'}")
        entries = subprocess.run(
            ["conntrack", "-L", "-p", "tcp", "--dport", str(self.port)], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        # An entry whose reply comes from 127.0.0.1 was never DNAT'd: a SYN of the same source port meets the host's
        # own stack. Those first, then the rest of what is neither ESTABLISHED nor TIME_WAIT.
        undnat = [e for e in entries if [f for f in e.split() if f.startswith("src=")][1:2] == ["src=127.0.0.1"]]
        odd = [e for e in set(entries) - set(undnat) if " ESTABLISHED " not in e and " TIME_WAIT " not in e]
        lines.append(
            f"conntrack: {len(entries)} entries for port {self.port}, {len(undnat)} not DNAT'd (the reply from "
            f"127.0.0.1), {len(odd)} others neither ESTABLISHED nor TIME_WAIT:"
        )
        lines += [f"  {' '.join(e.split())}" for e in (undnat + odd)[:12]]
        for table in ("nat", "filter"):
            mine = service_rules(table, self.service)
            lines.append(f"iptables -t {table}, the rules of {self.service}: {len(mine)}")
            lines += [f"  {r}" for r in mine[:12]]
        return lines
