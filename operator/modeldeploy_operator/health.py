"""The operator's liveness and readiness endpoints, served from the process's start, the standby included.

kopf's own liveness endpoint opens only after its startup handlers, and the standby never gets that far, so the
process serves its own (in kopf's event loop: a stuck loop fails the probe, as kopf's endpoint would):

- `/healthz` (the liveness URL's path): 200 while the event loop answers, standby or leader.
- `/readyz` (same host and port): 200 when the last Lease exchange with the API server is recent, i.e. this
  replica takes part in the election and could lead; 503 otherwise. Without leader election it is always 200.
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from modeldeploy_operator.leader import LeaderElector

READINESS_PATH = "/readyz"


@dataclass
class HealthState:
    """What the endpoints report; the process moves `role` from standby to leader to stopping."""

    elector: LeaderElector | None
    role: str = "standby"

    def is_ready(self, now: float | None = None) -> bool:
        if self.elector is None:
            return self.role == "leader"
        contact = self.elector.last_contact
        moment = time.monotonic() if now is None else now
        return contact is not None and moment - contact <= self.elector.duration and self.role != "stopping"


def parse_endpoint(url: str) -> tuple[str, int, str]:
    """(host, port, path) of `http://host:port/path`; the message says what a wrong URL should look like."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.port:
        raise ValueError(f"--liveness {url!r}: expected http://HOST:PORT/PATH, e.g. http://0.0.0.0:8080/healthz")
    return parts.hostname or "0.0.0.0", parts.port, parts.path or "/healthz"


async def serve_health(url: str, state: HealthState) -> Any:
    """Start serving; returns the aiohttp runner, whose `cleanup()` stops it."""
    import aiohttp.web  # noqa: PLC0415 (kopf's dependency; only needed when the operator runs)

    host, port, path = parse_endpoint(url)

    async def healthz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"role": state.role})

    async def readyz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        ready = state.is_ready()
        return aiohttp.web.json_response({"role": state.role, "ready": ready}, status=200 if ready else 503)

    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.get(path, healthz), aiohttp.web.get(READINESS_PATH, readyz)])
    runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, host, port).start()
    return runner
