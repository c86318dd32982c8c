"""`make demo REAL_NODE=1` without a cluster: the sample it applies, its refusal on a machine that cannot run the
real node, and the make target. The run itself is tests/realnode/test_demo_realnode.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy.cluster import realnode
from modeldeploy.tools import demo

REPO = Path(__file__).resolve().parents[2]


def load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text(encoding="utf-8")))


def test_the_real_node_sample_is_the_digits_sample_placed_on_the_real_node() -> None:
    plain, placed = load(REPO / "samples" / "digits-cnn.yaml"), load(demo.REAL_NODE_SAMPLE)
    placement = {
        "nodeSelector": {realnode.NODE_LABEL_KEY: realnode.NODE_LABEL_VALUE},
        "tolerations": [{"key": realnode.TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
    }
    for part in ("training", "serving"):
        assert {k: placed["spec"][part][k] for k in placement} == placement
        plain["spec"][part].update(placement)
    plain["spec"]["storage"]["storageClassName"] = realnode.STORAGE_CLASS
    assert placed == plain  # nothing else differs: the same model, trained and served for real


def test_the_placement_matches_the_nodes_label_and_taint() -> None:
    node = realnode.RealNode(Path("/nonexistent"), Path("/nonexistent"))
    labels = next(a for a in node.kubelet_args() if a.startswith("--node-labels="))
    assert f"{realnode.NODE_LABEL_KEY}={realnode.NODE_LABEL_VALUE}" in labels.split("=", 1)[1].split(",")
    taints = node._kubelet_config({"kubelet": 1, "kubelet-healthz": 2})["registerWithTaints"]
    assert taints == [{"key": realnode.TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
    assert realnode.STORAGE_CLASS in {m["metadata"]["name"] for m in node.rbac_manifests()}


def test_refuses_early_and_says_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        realnode,
        "missing_prerequisites",
        lambda bin_dir: ["the real node needs root (...)", "runc is not installed (apt-get install runc)"],
    )

    def must_not_run(*args: Any, **kwargs: Any) -> Path:
        raise AssertionError("a refusing demo builds and starts nothing")

    monkeypatch.setattr(demo, "find_binaries", must_not_run)
    monkeypatch.setattr(demo.LocalCluster, "up", must_not_run)
    assert demo.main(["--real-node"]) == 2
    err = capsys.readouterr().err
    assert "make demo REAL_NODE=1 cannot run on this machine" in err
    assert "  - runc is not installed (apt-get install runc)" in err
    assert "docs/real-node.md" in err and "`make demo` without REAL_NODE" in err


def test_held_out_digits_come_from_the_trainers_held_out_split() -> None:
    pytest.importorskip("modeldeploy_training")
    from modeldeploy_training import data  # noqa: PLC0415

    spec = load(demo.REAL_NODE_SAMPLE)["spec"]
    x, y = demo.held_out_digits(spec, 8)
    assert x.shape[0] == len(y) == 8
    parts = data.split(data.load_digits(), 0.2, spec["training"]["seed"])
    train_rows = {row.tobytes() for row in parts.x_train}
    assert not any(row.tobytes() in train_rows for row in x)
    assert len(set(y)) > 4  # spread over the split, not eight of one class


def dry_run_make(*args: str) -> subprocess.CompletedProcess[str]:
    # Under `make test` this runs as a sub-make: drop the parent's flags, or it prints "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}}
    return subprocess.run(
        ["make", "--no-print-directory", "-n", *args], cwd=REPO, capture_output=True, text=True, check=True, env=env
    )


def test_make_demo_leaves_building_the_binaries_to_the_demo_program() -> None:
    real = dry_run_make("demo", "REAL_NODE=1")
    assert real.stdout.strip().splitlines()[-1].endswith("-m modeldeploy.tools.demo --real-node")
    assert "build-binaries.sh" not in real.stdout
    plain = dry_run_make("demo")
    assert plain.stdout.strip().splitlines()[-1].endswith("-m modeldeploy.tools.demo")
    # The plain demo builds the binaries itself, in the background while `modeldeploy run` goes to a prediction.
    assert "build-binaries.sh" not in plain.stdout


FAKE_BUILD = """#!/usr/bin/env bash
# Stands in for build-binaries.sh: the cache check fails, a build reports steps, then prints its bin directory.
[ -n "${MODELDEPLOY_NO_BUILD:-}" ] && { echo "build-binaries: not built" >&2; exit 1; }
echo "build-binaries: compiling kube-apiserver v1.34.4 ..." >&2
sleep 0.6
[ -n "${FAKE_BUILD_FAILS:-}" ] && { echo "build-binaries: compiling kube-apiserver v1.34.4 FAILED" >&2; exit 1; }
echo "build-binaries: compiling kube-apiserver v1.34.4 done in 1 s" >&2
echo /cache/bin
"""


@pytest.fixture
def fake_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "build-binaries.sh"
    script.write_text(FAKE_BUILD)
    monkeypatch.setattr(demo, "BUILD_SCRIPT", script)
    monkeypatch.setattr(demo, "PROGRESS_EVERY", 0.2)
    return script


def test_the_background_build_says_what_it_compiles_and_for_how_long(
    fake_build: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build = demo.BinaryBuild()
    build.start()
    assert build.building
    assert build.wait() == Path("/cache/bin")
    out = capsys.readouterr().out
    assert "building the control plane's binaries from their Go modules: compiling kube-apiserver v1.34.4 ..." in out
    assert "so far; once per machine, cached after" in out
    assert "built the control plane's binaries in 0m 0" in out


def test_a_failed_build_says_why(fake_build: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_BUILD_FAILS", "1")
    build = demo.BinaryBuild()
    build.start()
    with pytest.raises(demo.ClusterError, match=r"compiling kube-apiserver v1\.34\.4 FAILED"):
        build.wait()


def test_an_interrupted_demo_stops_the_build(fake_build: Path) -> None:
    build = demo.BinaryBuild()
    build.start()
    assert build.process is not None
    build.stop()
    assert build.process.returncode is not None and build.process.returncode != 0


def test_cached_binaries_are_found_without_a_build(fake_build: Path) -> None:
    fake_build.write_text("#!/usr/bin/env bash\necho /cached/bin\n")
    build = demo.BinaryBuild()
    build.start()
    assert not build.building and build.process is None
    assert build.wait() == Path("/cached/bin")
