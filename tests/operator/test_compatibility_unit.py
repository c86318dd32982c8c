"""The minimum Kubernetes: versions as API servers report them, and the operator refusing an older one at startup."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from modeldeploy_operator.compatibility import (
    MINIMUM,
    UnsupportedKubernetes,
    check_server_version,
    is_supported_server,
    parse_server_version,
)
from modeldeploy_operator.storage import TransientError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"major": "1", "minor": "34", "gitVersion": "v1.34.4"}, (1, 34)),
        ({"major": "1", "minor": "30+", "gitVersion": "v1.30.4-eks-a737599"}, (1, 30)),  # managed clusters' "+"
        ({"major": "", "minor": "", "gitVersion": "v1.31.0-gke.1"}, (1, 31)),
        ({"gitVersion": "1.29.2"}, (1, 29)),
        ({"major": "2", "minor": "0"}, (2, 0)),
        ({"major": "", "minor": "", "gitVersion": "v0.0.0-master+$Format:%H$"}, None),  # unstamped build
        ({}, None),
    ],
)
def test_parse_server_version(info: dict[str, str], expected: tuple[int, int] | None) -> None:
    assert parse_server_version(info) == expected


def test_the_minimum_is_the_preStop_sleep_actions_default_on_release() -> None:
    assert MINIMUM == (1, 30)
    # The serving pods use the sleep action whenever drainSeconds > 0, which the CRD's default is.
    crd = yaml.safe_load((REPO / "crds" / "modeldeploy.dev_modeldeployments.yaml").read_text(encoding="utf-8"))
    serving = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["serving"]
    assert serving["properties"]["drainSeconds"]["default"] > 0


@pytest.mark.parametrize("info", [{"major": "1", "minor": "30"}, {"gitVersion": "v1.34.4"}, {"gitVersion": "v0.0.0"}])
def test_supported_or_unknown_versions_pass(info: dict[str, str]) -> None:
    check_server_version(info)


def test_an_older_server_is_refused_with_what_it_is_and_what_is_needed() -> None:
    with pytest.raises(UnsupportedKubernetes) as err:
        check_server_version({"major": "1", "minor": "29+", "gitVersion": "v1.29.8-gke.1"})
    message = str(err.value)
    assert "v1.29.8-gke.1" in message and "1.30 or newer" in message and "preStop sleep" in message
    assert "Upgrade" in message


class _Server:
    def __init__(self, result: dict[str, Any] | Exception) -> None:
        self.result = result

    def request(self, method: str, path: str) -> dict[str, Any]:
        assert (method, path) == ("GET", "/version")
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_is_supported_server_logs_the_refusal(caplog: pytest.LogCaptureFixture) -> None:
    assert is_supported_server(_Server({"gitVersion": "v1.34.4"}))
    assert not is_supported_server(_Server({"gitVersion": "v1.28.15"}))
    assert "cannot start: the API server runs Kubernetes v1.28.15" in caplog.text
    # Unreachable: not refused here; the operator's retries handle it as before.
    assert is_supported_server(_Server(TransientError("GET /version: connection refused")))


@pytest.fixture
def old_api_server() -> Iterator[str]:
    """An HTTP endpoint on 127.0.0.1 that answers /version as a Kubernetes 1.29 API server does."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"major": "1", "minor": "29", "gitVersion": "v1.29.15"}).encode()
            self.send_response(200 if self.path == "/version" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_operator_refuses_to_start_on_an_older_api_server(old_api_server: str, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "old", "cluster": {"server": old_api_server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "old", "context": {"cluster": "old", "user": "u"}}],
                "current-context": "old",
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "modeldeploy.cli", "operator", "--namespace", "default"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "cannot start: the API server runs Kubernetes v1.29.15; modeldeploy needs 1.30 or newer" in result.stderr
    assert "leading as" not in result.stderr
