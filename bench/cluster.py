"""Warm start (binaries cached) to Ready fake nodes, and teardown, of the local control plane.

Run: .venv/bin/python bench/cluster.py [--runs 3]
Goals: start <= 15 s, teardown <= 5 s. Prints one row per run and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from modeldeploy.cluster.local import LocalCluster, find_binaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    bins = find_binaries(build=False)
    ups, downs = [], []
    with tempfile.TemporaryDirectory() as root:
        for i in range(args.runs):
            cluster = LocalCluster(f"bench-{os.getpid()}-{i}", state_root=Path(root), nodes=args.nodes)
            start = time.monotonic()
            cluster.up(bin_dir=bins)
            ups.append(time.monotonic() - start)
            start = time.monotonic()
            cluster.down()
            downs.append(time.monotonic() - start)
            print(f"run {i + 1}: up to {args.nodes} Ready nodes {ups[-1]:.1f} s, down {downs[-1]:.1f} s")
    print(f"median: up {statistics.median(ups):.1f} s (goal <= 15), down {statistics.median(downs):.1f} s (goal <= 5)")


if __name__ == "__main__":
    main()
