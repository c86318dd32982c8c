"""The real node's zero-downtime rollout, again and again: the retrain-under-load test run N times in a row on one
cluster, every third run beside CPU spinners. Every run must end with zero failed requests (the test's own bar).

    python bench/realnode_rollouts.py --cluster NAME --runs 30                 # 10 of the 30 beside CPU load
    python bench/realnode_rollouts.py --cluster NAME --runs 5 --keep-going    # count failures instead of stopping
    python bench/realnode_rollouts.py --cluster NAME --test crash --test retrain --busy-every 1 --busy-processes 8

--test picks the load tests run in turn: retrain, pin, canary (25%), crash (a crashing canary rolled back).

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
TESTS = {
    "retrain": "tests/realnode/test_digits_realnode.py::test_retrain_rolls_to_the_new_version_with_zero_failed_"
    "requests",
    "pin": "tests/realnode/test_rollout_realnode.py::test_pin_an_older_version_while_requests_flow_with_zero_failed_"
    "requests",
    "canary": "tests/realnode/test_rollout_realnode.py::test_a_canary_at_25_percent_of_4_replicas_answers_a_quarter_"
    "and_is_promoted_on_its_metrics",
    "crash": "tests/realnode/test_rollout_realnode.py::test_a_canary_whose_pods_crash_is_rolled_back_while_the_"
    "stable_version_serves",
}
SUMMARY = re.compile(r"(\d+) requests(?: in [\d.]+ s)?, (\d+) failed|(\d+) requests in [\d.]+ s.*?; (\d+) failed")


def _spin() -> None:
    while True:
        pass


def run_once(cluster: str, test: str, log: Path, timeout: float) -> tuple[bool, float, str]:
    env = {**os.environ, "MODELDEPLOY_REALNODE_CLUSTER": cluster}
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", test, "-q", "-s", "-p", "no:cacheprovider"],
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
    counts = [g for g in found.groups() if g] if found else []
    detail = f"{counts[0]} requests, {counts[1]} failed" if counts else "no request count (see the log)"
    if result.returncode:
        failures = re.search(r"AssertionError: (.*)", text)
        detail += f"; {failures.group(1)[:300]}" if failures else f"; pytest exited {result.returncode}"
    return result.returncode == 0, elapsed, detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", required=True, help="a cluster up with --real-node")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--test", action="append", choices=sorted(TESTS), help="the tests to run in turn (default: retrain); repeatable"
    )
    parser.add_argument("--busy-every", type=int, default=3, help="every Nth run goes beside CPU spinners (0: none)")
    parser.add_argument("--busy-processes", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--keep-going", action="store_true", help="run on after a failure")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    parser.add_argument("--out", type=Path, default=Path("/tmp/realnode-rollouts"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tests = args.test or ["retrain"]
    passed_in_a_row = passed = 0
    for i in range(1, args.runs + 1):
        busy = bool(args.busy_every) and i % args.busy_every == 0
        spinners = args.busy_processes if busy else 0
        workers = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(spinners)]
        for w in workers:
            w.start()
        try:
            name = tests[(i - 1) % len(tests)]
            ok, elapsed, detail = run_once(args.cluster, TESTS[name], args.out / f"run-{i:02d}.log", args.timeout)
        finally:
            for w in workers:
                w.kill()
        passed += ok
        passed_in_a_row = passed_in_a_row + 1 if ok else 0
        load = f"{args.busy_processes} spinners" if busy else "at rest"
        print(f"run {i:2d} {name} ({load}): {'pass' if ok else 'FAIL'} in {elapsed:.0f} s, {detail}", flush=True)
        if not ok and not args.keep_going:
            break
    print(f"\n{passed} passed of {i} runs; the last {passed_in_a_row} in a row")
    print(f"$ python bench/realnode_rollouts.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
