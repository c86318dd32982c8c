"""The minimum-version check at startup lets the operator start on the local control plane (Kubernetes 1.34)."""

from __future__ import annotations

from conftest import OperatorProcess


def test_the_operator_checks_the_api_servers_version_and_starts(operator: OperatorProcess) -> None:
    log = operator.log()
    assert "the API server runs Kubernetes v1.34." in log, log
    assert "(1.30 or newer is needed)" in log
    assert operator.proc is not None and operator.proc.poll() is None
