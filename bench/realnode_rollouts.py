"""The real node's zero-downtime rollout, again and again: the retrain-under-load test run N times in a row on one
cluster, every third run beside CPU spinners. Every run must end with zero failed requests (the test's own bar).

    python bench/realnode_rollouts.py --cluster NAME --runs 30                 # 10 of the 30 beside CPU load
    python bench/realnode_rollouts.py --cluster NAME --runs 5 --keep-going    # count failures instead of stopping

NAME is a cluster already up with `modeldeploy cluster up --real-node --name NAME` (its images imported). Prints one
row per run (result, seconds, requests sent, failures with their times), the runs passed in a row, and the command.
Each run's pytest output is kept in --out (default /tmp/realnode-rollouts) for the failures' details.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST = "tests/realnode/test_digits_realnode.py::test_retrain_rolls_to_the_new_version_with_zero_failed_requests"
SUMMARY = re.compile(r"retrain under load: (\d+) requests, (\d+) failed")


def _spin() -> None:
    while True:
        pass


def run_once(cluster: str, log: Path, timeout: float) -> tuple[bool, float, str]:
    env = {**os.environ, "MODELDEPLOY_REALNODE_CLUSTER": cluster}
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", TEST, "-q", "-s", "-p", "no:cacheprovider"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    elapsed = time.monotonic() - started
    text = log.read_text(errors="replace")
    found = SUMMARY.search(text)
    detail = f"{found.group(1)} requests, {found.group(2)} failed" if found else "no request count (see the log)"
    if result.returncode:
        failures = re.search(r"AssertionError: (.*)", text)
        detail += f"; {failures.group(1)[:300]}" if failures else f"; pytest exited {result.returncode}"
    return result.returncode == 0, elapsed, detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", required=True, help="a cluster up with --real-node")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--busy-every", type=int, default=3, help="every Nth run goes beside CPU spinners (0: none)")
    parser.add_argument("--busy-processes", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--keep-going", action="store_true", help="run on after a failure")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    parser.add_argument("--out", type=Path, default=Path("/tmp/realnode-rollouts"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    passed_in_a_row = passed = 0
    for i in range(1, args.runs + 1):
        busy = bool(args.busy_every) and i % args.busy_every == 0
        spinners = args.busy_processes if busy else 0
        workers = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(spinners)]
        for w in workers:
            w.start()
        try:
            ok, elapsed, detail = run_once(args.cluster, args.out / f"run-{i:02d}.log", args.timeout)
        finally:
            for w in workers:
                w.kill()
        passed += ok
        passed_in_a_row = passed_in_a_row + 1 if ok else 0
        load = f"{args.busy_processes} spinners" if busy else "at rest"
        print(f"run {i:2d} ({load}): {'pass' if ok else 'FAIL'} in {elapsed:.0f} s, {detail}", flush=True)
        if not ok and not args.keep_going:
            break
    print(f"\n{passed} passed of {i} runs; the last {passed_in_a_row} in a row")
    print(f"$ python bench/realnode_rollouts.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
