"""A timeline of what a refused request on the real node could line up with, one line per event with wall-clock ms.

    python bench/realnode_timeline.py --cluster NAME --out DIR      # until stopped (SIGINT/SIGTERM)

Writes into DIR:
- endpoints.log: every EndpointSlice change in the cluster: each endpoint's pod, address and ready/serving/terminating;
- pods.log: every serving or training pod change: phase, Ready, container restarts, deletion;
- packets.log: every TCP reset and ICMP error on the host (tcpdump on all interfaces, `apt-get install tcpdump`;
  only this bench needs it): the address that sent it
  tells a pod with nothing listening (a RST from the pod's address) from kube-proxy's REJECT of a Service with no
  endpoint (an ICMP port-unreachable from the host);
- kube-proxy.log and kubelet.log: copies of the cluster's own, at MODELDEPLOY_REALNODE_VERBOSITY (1 unless set).

`python bench/realnode_timeline.py --around HH:MM:SS.mmm --out DIR` prints every line of those files within two
seconds of a failure's timestamp (the realnode tests print failures with such timestamps).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "realnode"))

from rn_support import endpoint_line, pod_line, watch_lines  # noqa: E402

from modeldeploy.cluster.local import default_state_root  # noqa: E402

WINDOW_SECONDS = 2.0


def _watch(kind: str, out: Path, stop: threading.Event) -> None:
    list_call, line = {
        "endpointslices": (client.DiscoveryV1Api().list_endpoint_slice_for_all_namespaces, endpoint_line),
        "pods": (client.CoreV1Api().list_pod_for_all_namespaces, pod_line),
    }[kind]
    with out.open("a", buffering=1) as f:
        watch_lines(list_call, (), line, lambda text: f.write(text + "\n"), stop)


def record(cluster: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = default_state_root() / cluster
    config.load_kube_config(str(state / "kubeconfig"))
    # Copied as they grow (tail -F): the cluster's state directory, logs included, is removed at `down`.
    followers = []
    for name in ("kube-proxy", "kubelet"):
        found = next(iter(sorted(state.rglob(f"{name}.log"))), None)
        if found:
            with (out / f"{name}.log").open("ab") as copy:
                followers.append(subprocess.Popen(["tail", "-F", "-n", "+1", str(found)], stdout=copy))
    packets = (out / "packets.log").open("a", buffering=1)
    if shutil.which("tcpdump") is None:
        sys.exit("tcpdump is not installed (apt-get install tcpdump): packets.log would stay empty")
    tcpdump = subprocess.Popen(
        ["tcpdump", "-i", "any", "-nn", "-l", "-tttt", "icmp or (tcp[tcpflags] & tcp-rst != 0)"],
        stdout=packets,
        stderr=subprocess.DEVNULL,
    )
    stop = threading.Event()
    threads = [
        threading.Thread(target=_watch, args=(kind, out / f"{kind}.log", stop), daemon=True)
        for kind in ("endpointslices", "pods")
    ]
    for t in threads:
        t.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        stop.set()
    for process in (tcpdump, *followers):
        process.terminate()
        process.wait(timeout=10)


_STAMP = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d{3,6})")


def _seconds(text: str) -> float | None:
    found = _STAMP.search(text)
    if not found:
        return None
    h, m, s, frac = found.groups()
    return int(h) * 3600 + int(m) * 60 + int(s) + float(f"0.{frac}")


def around(stamp: str, out: Path) -> None:
    at = _seconds(stamp)
    if at is None:
        sys.exit(f"--around takes HH:MM:SS.mmm, not {stamp!r}")
    rows = []
    for log in sorted(out.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            when = _seconds(line[:40])  # klog: I1202 17:06:34.903123; tcpdump: 2026-12-02 17:06:34.903123
            if when is not None and abs(when - at) <= WINDOW_SECONDS:
                rows.append((when, log.stem, line))
    for when, source, line in sorted(rows):
        print(f"{when - at:+7.3f} {source:15} {line[:400]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", help="a local cluster with a real node (record until stopped)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--around", help="print what the timeline holds within 2 s of this HH:MM:SS.mmm")
    args = parser.parse_args()
    if args.around:
        around(args.around, args.out)
    elif args.cluster:
        record(args.cluster, args.out)
    else:
        parser.error("--cluster NAME (record) or --around HH:MM:SS.mmm (read)")


if __name__ == "__main__":
    main()
