"""Why a request from this host to a NodePort can be refused long after the Service has endpoints: the stale
conntrack entry that a connection refused by kube-proxy's REJECT leaves, shown on a real-node cluster.

    python bench/realnode_stale_conntrack.py --cluster NAME [--rounds 5] [--requests 1000]

NAME is a cluster already up with `modeldeploy cluster up --real-node --name NAME` (its images imported). Needs root,
conntrack and iptables-save (what the real node needs). Each round, in a namespace of its own, makes a NodePort
Service whose pod (a plain HTTP server) does not exist yet, so that kube-proxy REJECTs its port, and then:
  1. connects from a source port of its own (refused: conntrack keeps the entry) and, as the load tests used to wait
     for a new NodePort, from kernel-chosen ports every 0.2 s (refused too);
  2. starts the pod; once kube-proxy routes the port to it, connects from the same own port (refused again, by this
     host's stack), from a fresh own port, and again from the own port once its entry is deleted;
  3. then makes --requests connects on kernel-chosen ports, 20 ms apart (the tests' load), and counts those refused
     and whether each came from a port that the wait had been refused on.
Prints each round, and the rounds' totals; exits 1 if step 2 did not show as described (docs/real-node.md, "Stale
conntrack entries").
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "realnode"))

from rn_support import PLACEMENT, RealCluster, existing_cluster, nodeport_routed, service_rules  # noqa: E402

from modeldeploy.cluster import realnode  # noqa: E402
from modeldeploy.cluster.waiting import wait_until  # noqa: E402

SERVER = (
    "import http.server as h; h.ThreadingHTTPServer.request_queue_size = 1024; "
    "h.ThreadingHTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()"
)
OWN_PORT = 29101  # below the NodePort range and the kernel's ephemeral range: no other connection takes it
FRESH_PORT = 29103


def connect(port: int, source: int = 0) -> tuple[int, str]:
    """One TCP connect to 127.0.0.1:port (from `source`, or a kernel-chosen port): the source port and the result."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(5)
    try:
        if source:
            sock.bind(("127.0.0.1", source))
        sock.connect(("127.0.0.1", port))
        result = "connected"
    except OSError as err:
        result = os.strerror(err.errno) if err.errno else str(err)
    finally:
        chosen = sock.getsockname()[1]
        sock.close()
    return chosen, result


def entries(node_port: int, source: int) -> list[str]:
    listed = subprocess.run(
        ["conntrack", "-L", "-p", "tcp", "--dport", str(node_port), "--sport", str(source)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [" ".join(line.split()) for line in listed.splitlines()]


def make_late_service(cluster: RealCluster, namespace: str) -> int:
    """The NodePort Service of a pod that does not exist yet; its port once kube-proxy REJECTs it."""
    manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "late-nodeport", "namespace": namespace},
        "spec": {"type": "NodePort", "selector": {"app": "late"}, "ports": [{"port": 8080, "targetPort": 8080}]},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    got = cluster.kubectl("get", "service", "late-nodeport", "-n", namespace, "-o", "json").stdout
    service = f"{namespace}/late-nodeport"
    wait_until(
        lambda: any("REJECT" in r for r in service_rules("filter", service)),
        timeout=30,
        what=f"kube-proxy to REJECT {service}",
    )
    return int(json.loads(got)["spec"]["ports"][0]["nodePort"])


def start_late_pod(cluster: RealCluster, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "late", "namespace": namespace, "labels": {"app": "late"}},
        "spec": {
            **PLACEMENT,
            "containers": [
                {
                    "name": "http",
                    "image": realnode.PROJECT_IMAGES[1],
                    "imagePullPolicy": "Never",
                    # http.server's listen backlog of 5 would drop the load's SYNs when the machine is busy.
                    "command": ["python", "-c", SERVER],
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    service = f"{namespace}/late-nodeport"
    wait_until(lambda: nodeport_routed(service), timeout=120, what=f"kube-proxy to route {service} to the pod")


def one_round(cluster: RealCluster, requests: int) -> tuple[bool, int, int]:
    """A round as the module says: whether step 2 showed as described, the load's connects refused, and how many of
    those came from a port the wait had been refused on."""
    namespace = f"stale-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(namespace)
    try:
        node_port = make_late_service(cluster, namespace)
        _, own = connect(node_port, OWN_PORT)
        kept = entries(node_port, OWN_PORT)
        waited = {}
        for _ in range(5):
            chosen, result = connect(node_port)
            waited[chosen] = result
            time.sleep(0.2)
        print(f"  127.0.0.1:{node_port} REJECTed: from port {OWN_PORT}: {own}; conntrack keeps {kept or 'nothing'}")
        print(f"  the wait, from kernel-chosen ports: {', '.join(f'{p} {r}' for p, r in waited.items())}")
        start_late_pod(cluster, namespace)
        same, fresh = connect(node_port, OWN_PORT)[1], connect(node_port, FRESH_PORT)[1]
        subprocess.run(
            ["conntrack", "-D", "-p", "tcp", "--dport", str(node_port), "--sport", str(OWN_PORT)],
            capture_output=True,
            check=False,
        )
        cleared = connect(node_port, OWN_PORT)[1]
        print(f"  routed to the pod: from port {OWN_PORT} again: {same}; from port {FRESH_PORT}: {fresh}; "
              f"from port {OWN_PORT} once its entry is deleted: {cleared}")  # fmt: skip
        described = own == same == "Connection refused" and fresh == cleared == "connected" and bool(kept)
        refused = []
        for _ in range(requests):
            chosen, result = connect(node_port)
            if result != "connected":
                refused.append((chosen, result))
            time.sleep(0.02)
        again = [p for p, _ in refused if p in waited]
        print(f"  the load: {len(refused)} of {requests} refused {refused[:5]}; {len(again)} from a port the wait "
              f"was refused on")  # fmt: skip
        return described, len(refused), len(again)
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", required=True, help="a cluster up with --real-node")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000, help="the load's connects per round")
    args = parser.parse_args()
    cluster = existing_cluster(args.cluster)
    described, refused, again, rounds_hit = [], 0, 0, 0
    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}:")
        ok, n, m = one_round(cluster, args.requests)
        described.append(ok)
        refused, again, rounds_hit = refused + n, again + m, rounds_hit + (n > 0)
    print(f"{args.rounds} rounds: the stale entry refused its own port again in {sum(described)}; the load was refused "
          f"in {rounds_hit} rounds, {refused} connects of {args.rounds * args.requests}, {again} of them from a port "
          f"the wait had been refused on")  # fmt: skip
    sys.exit(0 if all(described) else 1)


if __name__ == "__main__":
    main()
