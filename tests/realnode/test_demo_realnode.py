"""`make demo REAL_NODE=1` end to end: the demo program's real-node path brings up its own cluster with a real
node, takes samples/digits-cnn-real-node.yaml to Ready, predicts held-out digits, and removes all of it.

It needs the machine to itself: it skips while another cluster's real node is up (this file's name sorts before
the other real-node tests, so in a full run it goes first, before their session cluster starts). About 4 minutes,
most of it importing the images into the node's containerd.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modeldeploy.cluster import realnode
from modeldeploy.cluster.local import ClusterError, default_state_root, find_binaries

pytestmark = [pytest.mark.realnode, pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]


def succeeds(*command: str) -> bool:
    return subprocess.run(list(command), capture_output=True, check=False).returncode == 0


def _why_not() -> str | None:
    if os.environ.get("MODELDEPLOY_REALNODE_CLUSTER"):
        return "MODELDEPLOY_REALNODE_CLUSTER is set: a real node is already up, and only one runs per machine"
    try:
        # Built here when missing (once, cached), as the demo itself would: on a fresh machine this test runs before
        # the real-node fixtures that otherwise build them, and must not skip for that.
        bin_dir = find_binaries(real_node=True)
    except ClusterError as err:
        return str(err)
    problems = realnode.missing_prerequisites(bin_dir)
    if succeeds("ip", "link", "show", realnode.BRIDGE):
        problems.append(f"another cluster's real node is up (interface {realnode.BRIDGE} exists)")
    if shutil.which("docker") is None or not succeeds("docker", "version"):
        problems.append("no Docker engine answers (images/docker.sh up)")
    else:
        for image in realnode.PROJECT_IMAGES:
            if not succeeds("docker", "image", "inspect", image):
                problems.append(f"image {image} is not built (make images)")
    return "; ".join(problems) or None


def test_make_demo_real_node_trains_serves_predicts_and_leaves_nothing_behind() -> None:
    reason = _why_not()
    if reason:
        pytest.skip(f"the demo's real node cannot start: {reason}")
    name = f"rn-demo-{os.getpid()}"  # rn-: a killed run's cluster is removed by the real-node fixtures' sweep
    result = subprocess.run(
        [sys.executable, "-m", "modeldeploy.tools.demo", "--real-node", "--name", name],
        capture_output=True,
        text=True,
        timeout=1400,
        check=False,
    )
    out = result.stdout
    print(out)
    assert result.returncode == 0, f"the demo failed:\n{out[-3000:]}\n{result.stderr[-3000:]}"
    phases = re.findall(r"^\s+[\d.]+s  (\w+):", out, flags=re.MULTILINE)
    assert phases[-1] == "Ready" and "Training" in phases
    ready = re.search(r"^Ready ([\d.]+)s after kubectl apply .* held-out accuracy ([\d.]+)$", out, flags=re.MULTILINE)
    assert ready, out
    assert float(ready.group(2)) > 0.9
    predictions = re.findall(r"^  true (\d)  predicted (\d)  \(probability", out, flags=re.MULTILINE)
    assert len(predictions) == 8
    assert sum(t == p for t, p in predictions) >= 7
    assert "real-node-0" in out  # the pods' node, in the `kubectl get pods -o wide` it prints
    # Everything it started is gone; the Docker engine it found running is left alone.
    assert not (default_state_root() / name).exists()
    assert not succeeds("ip", "link", "show", realnode.BRIDGE)
    assert succeeds("docker", "version")
