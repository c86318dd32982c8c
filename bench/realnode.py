"""The real node's numbers: seconds from `kubectl apply` to Ready for the digits sample (training included), how
long a deleted serving pod still gets new connections (the drain window the pre-stop wait must cover), at rest and
with every core busy, and the memory the node costs the machine at idle (RSS of containerd, the kubelet, kube-proxy).

    python bench/realnode.py --cluster NAME      # a cluster already up with --real-node (else one is started)
    python bench/realnode.py --cluster NAME --deletions 10 --busy-processes 4

Prints a table and the command that made it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from modeldeploy.cluster import realnode
from modeldeploy.cluster.local import ClusterState, LocalCluster, default_state_root
from modeldeploy.cluster.waiting import wait_crd_established, wait_until

REPO = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _spin() -> None:
    while True:
        pass


class Drain:
    """Deletes serving pods one at a time and times, for each, how long until the EndpointSlice no longer lists it
    as ready (the controller-manager's part), until kube-proxy's rules no longer send new connections to it, and
    until the pod itself stops accepting connections (the pre-stop wait): the last must come after the second."""

    def __init__(self, k: Any, ns: str, service: str, port: int) -> None:
        self.k, self.ns, self.service, self.port = k, ns, service, port

    def ready_ips(self) -> set[str]:
        slices = json.loads(
            self.k(
                "get", "endpointslices", "-n", self.ns, "-l", f"kubernetes.io/service-name={self.service}", "-o", "json"
            )
        )["items"]
        return {
            address
            for s in slices
            for e in s.get("endpoints") or []
            if e.get("conditions", {}).get("ready")
            for address in e["addresses"]
        }

    def routed(self, ip: str) -> bool:
        rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
        # The rule's comment: "<namespace>/<service>[:<port name>] -> <pod IP>:<port>".
        comment = re.compile(
            rf'"{re.escape(self.ns)}/{re.escape(self.service)}(:[a-z0-9-]+)? -> {re.escape(ip)}:{self.port}"'
        )
        return any(line.startswith("-A KUBE-SVC-") and comment.search(line) for line in rules.splitlines())

    def accepts(self, ip: str) -> bool:
        """False once the pod refuses connections (its server closed its socket). A connect that times out is not a
        refusal: a SYN lost while kube-proxy rewrites its rules is retried by every client."""
        try:
            socket.create_connection((ip, self.port), timeout=5).close()
        except ConnectionRefusedError:
            return False
        except OSError:
            pass
        return True

    def once(self, pods: list[dict[str, Any]], replicas: int) -> tuple[float, float, float]:
        victim = pods[0]
        ip = victim["status"]["podIP"]
        wait_until(lambda: self.routed(ip), timeout=60, what=f"kube-proxy to route to {ip}")
        started = time.monotonic()
        self.k("delete", "pod", "-n", self.ns, victim["metadata"]["name"], "--wait=false")
        endpoints_at = proxy_at = closed_at = 0.0
        while not (endpoints_at and proxy_at and closed_at):
            now = time.monotonic() - started
            if not closed_at and not self.accepts(ip):
                closed_at = now
            if not proxy_at and not self.routed(ip):
                proxy_at = now
            if not endpoints_at and ip not in self.ready_ips():
                endpoints_at = now
            if now > 120:
                raise TimeoutError(f"pod {ip} still routed after 120 s")
            time.sleep(0.02)
        wait_until(lambda: len(self.ready_ips()) >= replicas, timeout=180, what=f"{replicas} ready endpoints again")
        return endpoints_at, proxy_at, closed_at


def measure_drain(drain: Drain, pods: Any, replicas: int, deletions: int, busy: int) -> list[tuple[str, str]]:
    workers = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(busy)]
    for w in workers:
        w.start()
    try:
        times = [drain.once(pods(), replicas) for _ in range(deletions)]
    finally:
        for w in workers:
            w.kill()
    what = f"{busy} busy processes on {os.cpu_count()} cores" if busy else "at rest"
    endpoints, proxy, closed = ([t[i] for t in times] for i in range(3))
    margin = [c - p for _, p, c in times]
    return [
        (f"deleted pod still routed, {what} (n={deletions})", ""),
        (
            "  until the EndpointSlice drops it: median / max",
            f"{statistics.median(endpoints):.2f} / {max(endpoints):.2f} s",
        ),
        ("  until kube-proxy stops routing: median / max", f"{statistics.median(proxy):.2f} / {max(proxy):.2f} s"),
        ("  until the pod stops accepting: median / max", f"{statistics.median(closed):.2f} / {max(closed):.2f} s"),
        ("  margin (stops accepting - stops routed): min", f"{min(margin):.2f} s"),
    ]


def drain_rows(k: Any, ns: str, md: dict[str, Any], deletions: int, busy: int) -> list[tuple[str, str]]:
    """The drain window on a NodePort Service over the sample's serving pods (kube-proxy answers it on 127.0.0.1)."""
    name = md["metadata"]["name"]
    replicas = md["spec"]["serving"].get("replicas", 1)
    selector = json.loads(k("get", "service", name, "-n", ns, "-o", "json"))["spec"]["selector"]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-nodeport", "namespace": ns},
        "spec": {"type": "NodePort", "selector": selector, "ports": [{"port": 8080, "targetPort": 8080}]},
    }
    k("apply", "-f", "-", input_text=json.dumps(service))
    labels = ",".join(f"{key}={value}" for key, value in selector.items())

    def pods() -> list[dict[str, Any]]:
        items = json.loads(k("get", "pods", "-n", ns, "-l", labels, "-o", "json"))["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp") and p["status"].get("podIP")]

    drain = Drain(k, ns, service["metadata"]["name"], 8080)
    return [*measure_drain(drain, pods, replicas, deletions, 0), *measure_drain(drain, pods, replicas, deletions, busy)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", default="", help="a cluster up with a real node (default: start rn-bench)")
    parser.add_argument("--idle-seconds", type=float, default=30, help="settle time before the idle reading")
    parser.add_argument("--deletions", type=int, default=10, help="serving pods deleted per drain measurement")
    parser.add_argument(
        "--busy-processes", type=int, default=2 * (os.cpu_count() or 1), help="CPU spinners for the loaded measurement"
    )
    args = parser.parse_args()
    name = args.cluster or "rn-bench"
    local = LocalCluster(name, real_node=True)
    started_here = not args.cluster
    if started_here:
        t = time.monotonic()
        local.up()
        print(f"cluster up --real-node: {time.monotonic() - t:.1f} s", file=sys.stderr)
    state = ClusterState.load(default_state_root() / name)
    assert state is not None and state.real_node, f"cluster {name} has no real node"
    env = {**os.environ, "KUBECONFIG": str(local.kubeconfig)}
    kubectl = str(Path(state.bin_dir) / "kubectl")

    def k(*a: str, input_text: str | None = None) -> str:
        return subprocess.run(
            [kubectl, *a], env=env, input=input_text, capture_output=True, text=True, check=True
        ).stdout

    rows: list[tuple[str, str]] = []
    try:
        k("apply", "-f", str(REPO / "crds"))
        wait_crd_established(k)
        ns = f"bench-{os.getpid()}"
        k("create", "namespace", ns)
        wait_until(lambda: "default" in k("get", "sa", "-n", ns), timeout=30, what="the default ServiceAccount")
        operator = subprocess.Popen(
            [sys.executable, "-m", "modeldeploy.cli", "operator", "--namespace", ns],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            md = yaml.safe_load((REPO / "samples" / "digits-cnn.yaml").read_text())
            placement = {
                "nodeSelector": {realnode.NODE_LABEL_KEY: realnode.NODE_LABEL_VALUE},
                "tolerations": [{"key": realnode.TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            }
            md["spec"]["training"].update(placement)
            md["spec"].setdefault("serving", {}).update(placement)
            md["spec"]["storage"]["storageClassName"] = realnode.STORAGE_CLASS
            t = time.monotonic()
            k("apply", "-n", ns, "-f", "-", input_text=json.dumps(md))
            wait_until(
                lambda: (
                    json.loads(k("get", "md", "digits", "-n", ns, "-o", "json")).get("status", {}).get("phase")
                    in {"Ready", "Failed"}
                ),
                timeout=600,
                what="digits Ready",
                interval=0.5,
            )
            status = json.loads(k("get", "md", "digits", "-n", ns, "-o", "json"))["status"]
            rows.append(("digits sample: apply to " + status["phase"], f"{time.monotonic() - t:.1f} s"))
            rows.append(
                ("  accuracy (from the trainer's report)", str(status.get("versions", [{}])[0].get("accuracy")))
            )
            if args.deletions and status["phase"] == "Ready":
                rows += drain_rows(k, ns, md, args.deletions, args.busy_processes)
        finally:
            operator.terminate()
            operator.wait(timeout=30)
        k("delete", "namespace", ns, "--wait=true", "--timeout=120s")
        time.sleep(args.idle_seconds)  # a reading at rest, after the pods' teardown
        total = 0.0
        for component in ("containerd", "kubelet", "kube-proxy"):
            mib = rss_mib(state.processes[component]["pid"])
            total += mib
            rows.append((f"idle RSS {component}", f"{mib:.0f} MiB"))
        rows.append(("idle RSS node total", f"{total:.0f} MiB"))
    finally:
        if started_here:
            local.down()
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    print(f"\n$ python bench/realnode.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
