"""The real node's numbers: seconds from `kubectl apply` to Ready for the digits sample (training included), and
the memory the node costs the machine at idle (RSS of containerd, the kubelet, kube-proxy).

    python bench/realnode.py --cluster NAME      # a cluster already up with --real-node (else one is started)

Prints a table and the command that made it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from modeldeploy.cluster import realnode
from modeldeploy.cluster.local import ClusterState, LocalCluster, default_state_root
from modeldeploy.cluster.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", default="", help="a cluster up with a real node (default: start rn-bench)")
    parser.add_argument("--idle-seconds", type=float, default=30, help="settle time before the idle reading")
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
        k("wait", "--for=condition=Established", "-f", str(REPO / "crds"))
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
