"""The health endpoints: served from the start (standby included), readiness from the last Lease exchange."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from modeldeploy_operator.health import HealthState, parse_endpoint, serve_health
from modeldeploy_operator.leader import LeaderElector


def _elector(duration: int = 15) -> LeaderElector:
    return LeaderElector(
        kube=None,  # type: ignore[arg-type]
        namespace="ns",
        name="lease",
        identity="me",
        duration=duration,
        renew_deadline=duration * 2 / 3,
        retry_period=duration / 7.5,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return int(err.code), json.loads(err.read())


def test_readiness_follows_the_last_lease_exchange() -> None:
    elector = _elector(duration=15)
    state = HealthState(elector)
    assert not state.is_ready()  # never reached the API server
    elector.last_contact = time.monotonic()
    assert state.is_ready()  # a standby that can reach the Lease is ready
    assert not state.is_ready(now=elector.last_contact + 16)
    state.role = "stopping"
    assert not state.is_ready(now=elector.last_contact)
    assert HealthState(None, role="leader").is_ready()


def test_parse_endpoint_wants_http_with_a_port() -> None:
    assert parse_endpoint("http://0.0.0.0:8080/healthz") == ("0.0.0.0", 8080, "/healthz")
    with pytest.raises(ValueError, match="http://HOST:PORT/PATH"):
        parse_endpoint("https://0.0.0.0:8080/healthz")


def test_a_standby_answers_liveness_and_readiness() -> None:
    port = _free_port()
    elector = _elector()
    state = HealthState(elector)

    async def scenario() -> list[tuple[int, dict[str, Any]]]:
        runner = await serve_health(f"http://127.0.0.1:{port}/healthz", state)
        try:
            got = [await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")]
            got.append(await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz"))
            elector.last_contact = time.monotonic()
            got.append(await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz"))
            return got
        finally:
            await runner.cleanup()

    live, unready, ready = asyncio.run(scenario())
    assert live == (200, {"role": "standby"})
    assert unready == (503, {"role": "standby", "ready": False})
    assert ready == (200, {"role": "standby", "ready": True})
