"""Serving pods replaced again and again under load on the real node, without retraining: many pod deletions an hour.

    python bench/realnode_churn.py --cluster NAME --cycles 40             # every third cycle beside CPU spinners

NAME is a cluster already up with `modeldeploy cluster up --real-node --name NAME` (its images imported). The digits
sample is trained once; then each cycle changes the ModelDeployment three times while requests flow through a
NodePort on 127.0.0.1 (the realnode tests' load: one request at a time, 20 ms apart):
  1. a pod annotation: the operator's Deployment rolls both pods (surge, then each old pod drains and exits);
  2. replicas 2 -> 1: one pod is deleted (what a canary's start does to the stable Deployment);
  3. replicas 1 -> 2.
Each step waits until the Deployment has settled and no pod of it is left terminating, so every deletion's whole
drain is under load. Prints each cycle's requests and failures (with millisecond times, for bench/realnode_timeline.py
--around) and the totals; exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "realnode"))

from rn_support import Models, Operator, existing_cluster  # noqa: E402
from test_digits_realnode import DIGITS, READY_TIMEOUT, Load, nodeport_service  # noqa: E402

from modeldeploy.cluster.waiting import wait_until  # noqa: E402


def _spin() -> None:
    while True:
        pass


def _settled(models: Models, replicas: int) -> bool:
    deployment = models.get("deployment", "digits")
    status = deployment.get("status") or {}
    pods = models.items("pods", "app.kubernetes.io/instance=digits")
    pods = [p for p in pods if "-train-" not in p["metadata"]["name"]]
    return (
        status.get("observedGeneration") == deployment["metadata"]["generation"]
        and status.get("replicas") == status.get("updatedReplicas") == status.get("readyReplicas") == replicas
        and len(pods) == replicas  # no pod left draining
    )


def _spec(replicas: int, churn: int) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(json.dumps(DIGITS))
    spec["serving"] = {"replicas": replicas, "podAnnotations": {"bench.modeldeploy.dev/churn": str(churn)}}
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", required=True, help="a cluster up with --real-node")
    parser.add_argument("--cycles", type=int, default=40)
    parser.add_argument("--busy-every", type=int, default=3, help="every Nth cycle beside CPU spinners (0: none)")
    parser.add_argument("--busy-processes", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--keep-going", action="store_true", help="run on after a failure")
    args = parser.parse_args()

    cluster = existing_cluster(args.cluster)
    namespace = f"churn-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(namespace)
    operator = Operator(cluster.env, namespace, Path(f"/tmp/{namespace}-operator.log"))
    models = Models(cluster, namespace, operator)
    failed_total = requests_total = deletions = 0
    try:
        models.apply("digits", _spec(2, 0))
        models.wait_phase("digits", "Ready", READY_TIMEOUT)
        url = nodeport_service(models, "digits")
        print(f"namespace {namespace}, NodePort {url}", flush=True)
        for cycle in range(1, args.cycles + 1):
            busy = bool(args.busy_every) and cycle % args.busy_every == 0
            workers = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy_processes * busy)]
            for w in workers:
                w.start()
            load = Load(url, "digits", models)
            started = time.monotonic()
            try:
                for replicas, churn in ((2, cycle), (1, cycle), (2, cycle)):
                    models.apply("digits", _spec(replicas, churn))
                    wait_until(lambda r=replicas: _settled(models, r), timeout=180, what=f"{replicas} pods settled")
                deletions += 3
            finally:
                load.stop()
                for w in workers:
                    w.kill()
            total = load.ok + len(load.failures)
            requests_total += total
            failed_total += len(load.failures)
            where = f"{args.busy_processes} spinners" if busy else "at rest"
            print(
                f"cycle {cycle:3d} ({where}): {total} requests, {len(load.failures)} failed in "
                f"{time.monotonic() - started:.0f} s {load.failures[:5]}",
                flush=True,
            )
            if load.failures and not args.keep_going:
                break
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    print(f"\n{requests_total} requests, {failed_total} failed; {deletions} serving pods deleted under load")
    print(f"$ python bench/realnode_churn.py {' '.join(sys.argv[1:])}")
    sys.exit(1 if failed_total else 0)


if __name__ == "__main__":
    main()
