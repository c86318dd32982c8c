"""The real node's settings that need no node: the log level of its kubelet and kube-proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeldeploy.cluster import realnode


def test_kubelet_and_kube_proxy_log_at_level_1_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    node = realnode.RealNode(Path("/nonexistent"), Path("/nonexistent"))
    monkeypatch.delenv("MODELDEPLOY_REALNODE_VERBOSITY", raising=False)
    assert "--v=1" in node.kubelet_args()
    assert "--v=1" in node.kube_proxy_args({"kube-proxy-healthz": 1, "kube-proxy-metrics": 2})
    monkeypatch.setenv("MODELDEPLOY_REALNODE_VERBOSITY", "4")
    assert "--v=4" in node.kube_proxy_args({"kube-proxy-healthz": 1, "kube-proxy-metrics": 2})


@pytest.mark.parametrize("value", ["loud", "-1", "11"])
def test_a_bad_log_level_is_refused_saying_what_to_give(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MODELDEPLOY_REALNODE_VERBOSITY", value)
    with pytest.raises(realnode.RealNodeUnavailable, match="klog level from 0 to 10"):
        realnode.log_verbosity()
