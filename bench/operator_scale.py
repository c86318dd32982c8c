"""N ModelDeployments applied at once: seconds until all Ready, the operator's CPU seconds and peak RSS, and the
floor (the same Jobs and Deployments created directly with kubectl and seen ready) on the same control plane.

Also printed: when the last training Job completed (from the Jobs' completionTime, so no extra polling), in both
runs, and the operator's API requests per ModelDeployment (from the line it logs when it stops).

    .venv/bin/python bench/operator_scale.py --n 100 500
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from modeldeploy_operator import builders  # noqa: E402
from modeldeploy_operator.settings import Settings  # noqa: E402

from modeldeploy.cluster.waiting import wait_crd_established  # noqa: E402
from modeldeploy.spec import ModelDeployment, normalize  # noqa: E402

# Small requests so that N=500 fits the three fake nodes at once (this measures the control loop, not packing).
SMALL = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}
SPEC: dict[str, Any] = {
    "training": {"dataset": {"builtin": "digits"}, "epochs": 1, "resources": SMALL},
    "serving": {"replicas": 1, "resources": SMALL},
}


def kubectl(env: dict[str, str], *args: str, input: str | None = None) -> str:
    result = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args[:3])}: {result.stderr.strip()}")
    return result.stdout


def kubectl_or_empty(env: dict[str, str], *args: str) -> str:
    """kubectl's stdout, "" when it fails: a CRD that has no conditions yet fails a jsonpath filter (not yet)."""
    result = subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env, check=False)
    return result.stdout if result.returncode == 0 else ""


def proc_usage(pid: int) -> tuple[float, float]:
    """CPU seconds (user+system) and peak RSS in MB of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cpu, peak


def wait(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(1.0)
    raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")


def last_job_done(env: dict[str, str], ns: str, started: float) -> float:
    """Seconds from `started` (epoch) to the latest completionTime of the namespace's Jobs."""
    jobs = json.loads(kubectl(env, "get", "jobs", "-n", ns, "-o", "json"))["items"]
    times = [
        datetime.datetime.strptime(j["status"]["completionTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        for j in jobs
        if (j.get("status") or {}).get("completionTime")
    ]
    return max(times).timestamp() - started if times else float("nan")


def api_requests(log: Path) -> dict[str, int]:
    """The operator's request counts from the line it logs when it stops."""
    found = re.findall(r"API requests: (.*)", log.read_text(errors="replace"))
    if not found or found[-1] == "none":
        return {}
    return {what: int(count) for what, count in (item.rsplit("=", 1) for item in found[-1].split(", "))}


def run_operator(env: dict[str, str], n: int) -> tuple[float, float, float, float]:
    ns = f"bench-op-{n}"
    kubectl(env, "create", "namespace", ns)
    log = Path(tempfile.gettempdir()) / f"bench-operator-{n}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modeldeploy.cli", "operator", "--namespace", ns], stdout=out, stderr=out, env=env
        )
    try:
        wait(lambda: "leading as" in log.read_text(errors="replace"), 60, "the operator to lead")
        items = [
            {
                "apiVersion": "modeldeploy.dev/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": f"m{i}"},
                "spec": SPEC,
            }
            for i in range(n)
        ]
        start, started = time.monotonic(), time.time()
        kubectl(
            env,
            "apply",
            "-n",
            ns,
            "-f",
            "-",
            input=yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}),
        )

        def all_ready() -> bool:
            got = json.loads(kubectl(env, "get", "md", "-n", ns, "-o", "json"))["items"]
            ready = sum(1 for i in got if (i.get("status") or {}).get("phase") == "Ready")
            return ready == n

        wait(all_ready, 1800, f"{n} ModelDeployments Ready")
        seconds = time.monotonic() - start
        cpu, rss = proc_usage(proc.pid)
        return seconds, cpu, rss, last_job_done(env, ns, started)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        calls = api_requests(log)
        if calls:
            total = sum(calls.values())
            top = ", ".join(f"{what} {count / n:.1f}" for what, count in sorted(calls.items(), key=lambda c: -c[1]))
            print(f"  operator N={n}: {total / n:.1f} API requests per ModelDeployment ({top})", flush=True)
        delete_namespace(env, ns)


def run_floor(env: dict[str, str], n: int) -> tuple[float, float]:
    """The same PVC, Job, Deployment and Service per model, created directly, no operator."""
    ns = f"bench-floor-{n}"
    kubectl(env, "create", "namespace", ns)
    settings = Settings()
    items: list[dict[str, Any]] = []
    for i in range(n):
        md = ModelDeployment.from_object(
            normalize({"metadata": {"name": f"m{i}", "namespace": ns, "uid": "x", "generation": 1}, "spec": SPEC})
        )
        short = md.spec.hash[:12]
        for manifest in (
            builders.build_claim(md),
            builders.build_training_job(md, settings),
            builders.build_deployment(md, {"version": f"v{short}", "path": f"m{i}/v{short}"}, settings),
            builders.build_service(md),
        ):
            assert manifest is not None
            manifest["metadata"].pop("ownerReferences", None)
            items.append(manifest)
    start, started = time.monotonic(), time.time()
    kubectl(
        env, "apply", "-n", ns, "-f", "-", input=yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
    )

    def all_done() -> bool:
        jobs = json.loads(kubectl(env, "get", "jobs", "-n", ns, "-o", "json"))["items"]
        deps = json.loads(kubectl(env, "get", "deployments", "-n", ns, "-o", "json"))["items"]
        done = sum(
            any(c["type"] == "Complete" and c["status"] == "True" for c in j.get("status", {}).get("conditions", []))
            for j in jobs
        )
        ready = sum((d.get("status") or {}).get("readyReplicas") == 1 for d in deps)
        return done == n and ready == n

    wait(all_done, 1800, f"{n} Jobs complete and Deployments ready")
    seconds = time.monotonic() - start
    jobs_done = last_job_done(env, ns, started)
    delete_namespace(env, ns)
    return seconds, jobs_done


def delete_namespace(env: dict[str, str], ns: str) -> None:
    """Untimed: the next run starts on a control plane that is not still deleting this run's thousands of objects
    (the namespace controller and the garbage collector would compete with it for the controller-manager's QPS)."""
    kubectl(env, "delete", "namespace", ns, "--wait=true", "--timeout=1800s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--kubeconfig", help="an existing cluster (default: start a local control plane)")
    args = parser.parse_args()
    cluster = None
    if args.kubeconfig:
        kubeconfig = Path(args.kubeconfig)
    else:
        from modeldeploy.cluster.local import LocalCluster, find_binaries  # noqa: PLC0415

        bin_dir = find_binaries()
        os.environ["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
        cluster = LocalCluster(f"bench-{os.getpid()}")
        kubeconfig = cluster.up(bin_dir=bin_dir, owner_pid=os.getpid())
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(REPO / "operator")}
    try:
        kubectl(env, "apply", "-f", str(REPO / "crds"))
        wait_crd_established(lambda *a: kubectl_or_empty(env, *a))
        header = (
            f"{'N':>5} {'operator s':>11} {'floor s':>8} {'ratio':>6} {'op CPU s':>9} {'op peak RSS MB':>15}"
            f" {'op jobs done s':>15} {'floor jobs done s':>18}"
        )
        print(header, flush=True)
        for n in args.n:
            floor, floor_jobs = run_floor(env, n)
            seconds, cpu, rss, jobs = run_operator(env, n)
            print(
                f"{n:>5} {seconds:>11.1f} {floor:>8.1f} {seconds / floor:>6.2f} {cpu:>9.1f} {rss:>15.1f}"
                f" {jobs:>15.0f} {floor_jobs:>18.0f}",
                flush=True,
            )
        print(f"command: .venv/bin/python bench/operator_scale.py --n {' '.join(map(str, args.n))}")
    finally:
        if cluster is not None:
            cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
