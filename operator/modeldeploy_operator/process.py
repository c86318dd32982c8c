"""The operator process in order: health endpoints, then the Lease (standby until it is ours), then kopf.

The Lease is won before kopf starts, not inside a kopf startup handler: a standby then runs no watch and no
handler at all, and it still answers its probes (kopf serves its own liveness endpoint only after startup).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import socket
import uuid
from dataclasses import dataclass, field

from modeldeploy_operator.compatibility import is_supported_server
from modeldeploy_operator.health import HealthState, serve_health
from modeldeploy_operator.leader import LeaderElector
from modeldeploy_operator.settings import settings_from_env
from modeldeploy_operator.storage import connect

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    namespaces: list[str] = field(default_factory=list)
    lease_namespace: str = ""
    """Empty: the settings' lease_namespace, else the first watched namespace, else `default`."""
    leader_election: bool = True
    liveness: str | None = None


async def run_operator(options: Options) -> int:
    """Run until SIGINT/SIGTERM (0) or until the Lease is lost (1)."""
    import kopf  # noqa: PLC0415 (heavy, and only needed when the operator runs)

    from modeldeploy_operator import handlers  # noqa: PLC0415,F401 (registers the handlers with kopf)

    config = settings_from_env()
    kube = connect(config.field_manager, max(config.api_connections, config.workers + 2), config.api_timeout_seconds)
    if not is_supported_server(kube):  # older than the minimum Kubernetes: refused with the reason logged
        kube.close()
        return 2
    elector = None
    if options.leader_election:
        identity = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # The Lease has its own connections, so that busy workers never delay a renewal.
        lease_kube = connect(config.field_manager, 2, config.api_timeout_seconds)
        elector = LeaderElector(
            lease_kube,
            options.lease_namespace
            or config.lease_namespace
            or (options.namespaces[0] if options.namespaces else "default"),
            config.lease_name,
            identity,
            duration=config.lease_duration_seconds,
            renew_deadline=config.renew_deadline_seconds,
            retry_period=config.retry_period_seconds,
        )
        kube.may_write = elector.may_write  # the fence: no write once leadership cannot be proven
    state = HealthState(elector)
    runner = await serve_health(options.liveness, state) if options.liveness else None
    lost = False
    leading = False
    # kopf waits for this flag on an executor thread; the cleanup handler resolves it on every stop (also after
    # SIGINT/SIGTERM), else that thread would block the interpreter's exit.
    stop_flag: concurrent.futures.Future[None] = concurrent.futures.Future()

    def on_lost() -> None:
        nonlocal lost
        lost = True
        if not stop_flag.done():
            stop_flag.set_result(None)

    try:
        if elector is not None and not await _wait_as_standby(elector):
            return 0
        leading = True
        if elector is not None:
            logger.info("leading as %s (Lease %s/%s)", elector.identity, elector.namespace, elector.name)
            elector.keep_renewing(on_lost)
        state.role = "leader"
        memo = kopf.Memo(kube=kube, config=config, stop_flag=stop_flag, clusterwide=not options.namespaces)
        await kopf.operator(
            standalone=True,  # kopf's peering pauses every operator of equal priority; the Lease elects one instead
            clusterwide=not options.namespaces,
            namespaces=options.namespaces,
            stop_flag=stop_flag,
            memo=memo,
        )
    finally:
        state.role = "stopping"
        if elector is not None and leading:
            await asyncio.to_thread(elector.release)  # the handlers' cleanup has stopped every worker by now
        if runner is not None:
            await runner.cleanup()
        kube.close()
        if elector is not None:
            elector.kube.close()
    return 1 if lost else 0


async def _wait_as_standby(elector: LeaderElector) -> bool:
    """Wait for the Lease; False when SIGINT/SIGTERM came first.

    The signal handlers stay until kopf replaces them with its own, so no signal finds the default action (which
    would end the process without releasing the Lease).
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    return await elector.wait_for_leadership(stopping)
