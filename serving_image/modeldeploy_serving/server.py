"""The process: REST (uvicorn) and gRPC on one event loop over one data plane; load, warm up, serve, drain on SIGTERM.

Load failure policy: the HTTP port comes up first (live, not ready), the model loads in a thread; if it cannot be
loaded the process logs one line saying why and exits with status 1, so that Kubernetes shows the failure
(CrashLoopBackOff with the reason in the log) instead of a pod that stays silently unready.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import uvicorn

from modeldeploy_serving.auth import ReloadingCertificate, TokenFile
from modeldeploy_serving.dataplane import DataPlane, load_or_explain
from modeldeploy_serving.rest import build_app
from modeldeploy_serving.settings import Settings

log = logging.getLogger(__name__)

EXIT_CANNOT_SERVE: Final = 1


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: this process decides what SIGTERM means."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ServingProcess:
    """Runs the servers until SIGTERM/SIGINT (or a load failure) and returns the exit status."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.plane = DataPlane(settings)
        self._http: _Uvicorn | None = None
        self._grpc: Any = None
        self._exit_code = 0
        self._stopping: asyncio.Event | None = None

    async def run(self) -> int:
        started = time.perf_counter()
        s = self.settings
        self._stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        try:
            tokens = TokenFile(Path(s.auth_token_file)) if s.auth_token_file else None
            certificate = (
                ReloadingCertificate(Path(s.tls_cert_file), Path(s.tls_key_file))
                if s.tls_cert_file and s.tls_key_file
                else None
            )
        except (OSError, ValueError, ssl.SSLError) as err:
            log.error("cannot serve with the auth/TLS files given: %s", err)
            return EXIT_CANNOT_SERVE
        config = uvicorn.Config(
            build_app(self.plane, tokens),
            host=s.host,
            port=s.http_port,
            loop="none",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=int(max(1, s.shutdown_grace_seconds)),
            # Over this many connections and tasks at once, uvicorn answers 503 itself.
            limit_concurrency=s.max_concurrent_requests,
            server_header=False,
        )
        if certificate is not None:
            # uvicorn's own context would read the files once; ours is reloaded when they change (below).
            config.load()
            config.ssl = certificate.context
            reloader = asyncio.create_task(_reload_every_second(certificate), name="tls-reload")
        self._http = _Uvicorn(config)
        http_task = asyncio.create_task(self._http.serve(), name="http")
        if s.grpc_port:
            from modeldeploy_serving.grpc_server import build_grpc_server  # noqa: PLC0415 - grpc costs memory

            self._grpc = build_grpc_server(self.plane, tokens)
            address = f"{_grpc_host(s.host)}:{s.grpc_port}"
            try:
                if certificate is not None:
                    from modeldeploy_serving.auth import grpc_credentials  # noqa: PLC0415 - with grpc

                    self._grpc.add_secure_port(address, grpc_credentials(certificate))
                else:
                    self._grpc.add_insecure_port(address)
            except RuntimeError as err:  # grpc says "Failed to bind": the port is taken or the host is wrong
                log.error("cannot listen for gRPC on %s:%d: %s", s.host, s.grpc_port, err)
                self._grpc = None
                self._exit_code = EXIT_CANNOT_SERVE
                self.request_stop(None)
            else:
                await self._grpc.start()
        info = None if self._exit_code else await asyncio.to_thread(load_or_explain, self.plane)
        if self._exit_code:
            pass
        elif info is None:
            self._exit_code = EXIT_CANNOT_SERVE
            self.request_stop(None)
        else:
            _settle_garbage_collector()
            log.info(
                "ready in %.3f s: model %r on http://%s:%d%s",
                time.perf_counter() - started,
                info.name,
                s.host,
                s.http_port,
                f" and grpc {s.host}:{s.grpc_port}" if s.grpc_port else "",
            )
        await self._stopping.wait()
        if certificate is not None:
            reloader.cancel()
        await self._drain(http_task)
        return self._exit_code

    def request_stop(self, sig: signal.Signals | None) -> None:
        """SIGTERM: not ready at once; the drain (in run) finishes what is in flight within the grace period."""
        if sig is not None:
            log.info(
                "%s: not ready any more, finishing requests in flight (at most %.0f s)",
                sig.name,
                self.settings.shutdown_grace_seconds,
            )
        self.plane.begin_shutdown()
        if self._stopping is not None:
            self._stopping.set()

    async def _drain(self, http_task: asyncio.Task[None]) -> None:
        grace = self.settings.shutdown_grace_seconds
        assert self._http is not None
        self._http.should_exit = True
        waits: list[Any] = [http_task]
        if self._grpc is not None:
            waits.append(self._grpc.stop(grace))
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout=grace + 2)
        except TimeoutError:
            log.error("requests still in flight after %.0f s: exiting anyway", grace)
        await asyncio.to_thread(self.plane.stop, 1.0)
        log.info("stopped")


# Collections of the youngest generation per allocated container objects. Python's default (700) runs one every
# few dozen requests, and each walks the young objects of every request in flight: about 7% of the event loop's CPU
# at 64 concurrent requests on the small model. Garbage is mostly freed by reference counting anyway.
_GC_GEN0_THRESHOLD: Final = 10_000


def _settle_garbage_collector() -> None:
    """Once loaded: the objects of imports and model loading live as long as the process, so move them out of the
    collector's sight (gc.freeze) and collect the young generation less often. No gc.collect() first: it takes
    about 100 ms of the event loop (delaying the first readiness answer) to find a handful of cyclic objects."""
    _return_free_heap()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(_GC_GEN0_THRESHOLD, gen1, gen2)


def _return_free_heap() -> None:
    """glibc keeps what loading freed (the parsed ONNX file, start-up garbage) in its heaps; malloc_trim gives it
    back to the kernel: about 2 MB of idle RSS. Elsewhere (musl has no malloc_trim) this does nothing."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


async def _reload_every_second(certificate: ReloadingCertificate) -> None:
    """New HTTPS connections get the certificate files' current pair (a rotated Secret) without a restart."""
    while True:
        await asyncio.sleep(1.0)
        certificate.refresh()


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def serve(settings: Settings) -> int:
    """Run the server in this process until it is told to stop; the exit status."""
    configure_logging(settings.log_level)
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:  # uvicorn[standard] brings it; without it asyncio's loop works, only slower
        return asyncio.run(ServingProcess(settings).run())
    return uvloop.run(ServingProcess(settings).run())
