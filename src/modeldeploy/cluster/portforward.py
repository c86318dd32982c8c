"""`kubectl port-forward` to a free port on 127.0.0.1, for the demo and the tests that talk to a Service for real."""

from __future__ import annotations

import re
import subprocess
import threading
from collections import deque
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
        # kubectl writes a line per connection ("Handling connection for 8080"): unread, they would fill the pipe
        # after about two thousand connections and stall kubectl, and every forwarded request with it.
        self._last_lines: deque[str] = deque([first], maxlen=20)
        threading.Thread(target=self._drain, name=f"port-forward {target}", daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._last_lines.append(line)

    def output(self) -> str:
        """kubectl's last lines: why a forward that exited stopped."""
        return "".join(self._last_lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def __enter__(self) -> PortForward:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
