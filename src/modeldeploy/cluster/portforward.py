"""`kubectl port-forward` to a free port on 127.0.0.1, for the demo and the tests that talk to a Service for real."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from types import TracebackType


class PortForwardError(RuntimeError):
    """kubectl port-forward did not start; the message carries what kubectl said."""


class PortForward:
    """Forwards `target` (e.g. `service/digits`) port `port` to a free port on 127.0.0.1; `url` (and `local_port`, for
    a client that is not HTTP: gRPC, a raw socket) is where it listens.

    Bound to 127.0.0.1 only (never all interfaces); close() (or leaving the `with` block) stops kubectl.
    """

    def __init__(
        self,
        kubectl: str,
        target: str,
        port: int,
        *,
        namespace: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        args = [kubectl, "port-forward", *(["-n", namespace] if namespace else []), target, f":{port}"]
        self.proc = subprocess.Popen(
            [*args, "--address", "127.0.0.1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(env) if env is not None else None,
        )
        assert self.proc.stdout is not None
        # kubectl's first line names the local port ("Forwarding from 127.0.0.1:41234 -> 8080"), or says why not.
        first = self.proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", first)
        if not match:
            self.close()
            raise PortForwardError(f"kubectl port-forward {target} did not start: {first.strip() or 'no output'}")
        self.local_port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.local_port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> PortForward:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
