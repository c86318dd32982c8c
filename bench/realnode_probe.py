"""Connects to every test NodePort of a real-node cluster hundreds of times a second, to find refusal windows
that the load tests' requests (about 12 a second) would hit only now and then.

    python bench/realnode_probe.py --cluster NAME                 # until Ctrl-C; beside bench/realnode_rollouts.py
    python bench/realnode_probe.py --cluster NAME --rate 300 --duration 600

Each Service named `*-nodeport` gets its own thread once it answers. The thread opens a TCP connection to
127.0.0.1:<nodePort> --rate times a second and closes it with a reset. It stops when the Service's namespace is
being deleted: a namespace's teardown refuses connections by design. Each refused, unreachable or timed-out
connect is printed with its time (ms) and source port; a packet capture can look the port up. A connect slower
than 0.5 s is a lost SYN that was sent again. A summary per Service comes at the end.

The probes start once kube-proxy routes the Service to an endpoint (rn_support.nodeport_routed), and use
source ports of their own (--ports, below the NodePort range and outside the kernel's ephemeral range). The
reason: a connect refused while kube-proxy still REJECTs a new Service leaves a conntrack entry with no DNAT
(SYN_SENT, UNREPLIED, 120 s). A later connect from the same source port to the same NodePort matches that entry and
is refused by the host, whatever the endpoints are; and the kernel's walk over one destination's source ports
restarts elsewhere now and then, so kernel-chosen ports come back to it. A prober that waited on kernel-chosen
ports would plant such entries in front of the tests' own requests.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import urllib3
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "realnode"))

from rn_support import nodeport_routed, stamp  # noqa: E402

from modeldeploy.cluster.local import default_state_root  # noqa: E402

SLOW_SECONDS = 0.5
RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER 0: no TIME_WAIT per probe


class Prober:
    def __init__(self, rate: float, ports: range) -> None:
        self.rate = rate
        self._ports = itertools.cycle(ports)
        self._lock = threading.Lock()
        self.results: dict[str, dict[str, int]] = {}

    def _next_port(self) -> int:
        with self._lock:
            return next(self._ports)

    def run(self, key: str, node_port: int, stop: threading.Event) -> None:
        while not stop.is_set() and not nodeport_routed(key):  # no connect kube-proxy would REJECT (docstring)
            stop.wait(0.2)
        if stop.is_set():  # its namespace went before kube-proxy routed it: nothing was probed
            return
        print(f"{stamp()} {key} :{node_port} probing", flush=True)
        counts = self.results.setdefault(key, {"connects": 0, "slow": 0})
        due = time.monotonic()
        while not stop.is_set():
            self._connect_once(key, node_port, counts)
            due += 1 / self.rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                due = time.monotonic()
        print(f"{stamp()} {key} :{node_port} stopped: {counts}", flush=True)

    def _connect_once(self, key: str, node_port: int, counts: dict[str, int]) -> None:
        source = self._next_port()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(5)
        started = time.monotonic()
        try:
            sock.bind(("127.0.0.1", source))
            sock.connect(("127.0.0.1", node_port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
            took = time.monotonic() - started
            if took > SLOW_SECONDS:
                counts["slow"] += 1
                print(f"{stamp()} {key} :{node_port} slow {took:.3f} s from port {source}", flush=True)
        except OSError as err:
            name = errno.errorcode.get(err.errno or 0, str(err))
            counts[name] = counts.get(name, 0) + 1
            print(
                f"{stamp()} {key} :{node_port} {name} after {time.monotonic() - started:.3f} s from port {source}",
                flush=True,
            )
        finally:
            sock.close()
        counts["connects"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", required=True, help="a cluster up with --real-node")
    parser.add_argument("--rate", type=float, default=300, help="connects per second to each NodePort")
    parser.add_argument("--duration", type=float, default=0, help="seconds to run (0: until Ctrl-C)")
    parser.add_argument("--ports", default="20000-29999", help="the probes' source ports, FIRST-LAST")
    args = parser.parse_args()
    first, last = (int(p) for p in args.ports.split("-"))
    config.load_kube_config(str(default_state_root() / args.cluster / "kubeconfig"))
    core = client.CoreV1Api()
    prober = Prober(args.rate, range(first, last + 1))
    active: dict[str, tuple[threading.Event, threading.Thread]] = {}  # by Service, its stop and its prober
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while not done.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                live = {n.metadata.name for n in core.list_namespace().items if not n.metadata.deletion_timestamp}
                wanted = {
                    f"{s.metadata.namespace}/{s.metadata.name}": s.spec.ports[0].node_port
                    for s in core.list_service_for_all_namespaces().items
                    if s.spec.type == "NodePort" and s.metadata.name.endswith("-nodeport")
                    and s.metadata.namespace in live
                }  # fmt: skip
            except (urllib3.exceptions.HTTPError, client.ApiException) as err:
                print(f"{stamp()} the cluster stopped answering ({err.__class__.__name__}): stopping", flush=True)
                break
            for key, node_port in wanted.items():
                if key not in active:
                    stop = threading.Event()
                    thread = threading.Thread(target=prober.run, args=(key, node_port, stop), daemon=True)
                    thread.start()
                    active[key] = (stop, thread)
            for key in [k for k in active if k not in wanted]:
                active.pop(key)[0].set()
            done.wait(0.3)
    except KeyboardInterrupt:
        pass
    for stop, _ in active.values():
        stop.set()
    for _, thread in active.values():
        thread.join(timeout=10)  # a connect in flight ends within its 5 s timeout
    print("\nper Service: connects, and what failed")
    for key, counts in prober.results.items():
        print(f"  {key}: {counts}")
    print(f"$ python bench/realnode_probe.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
