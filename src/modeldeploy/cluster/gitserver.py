"""Git repositories served read-only over smart HTTP on 127.0.0.1: `git http-backend` behind a tiny HTTP server.

Flux's source-controller clones `http://127.0.0.1:PORT/<name>.git` from here, as it would from a Git host. Every
bare repository under the root is served (GIT_HTTP_EXPORT_ALL); pushes are refused (http-backend's receive-pack is
off without an authenticated user). Run as `python -m modeldeploy.cluster.gitserver --root DIR --port PORT`.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16 * 1024 * 1024  # a fetch negotiation is kilobytes; anything near this is not a Git client
BACKEND_TIMEOUT_SECONDS = 120


class GitBackendHandler(BaseHTTPRequestHandler):
    """Hands each GET and POST to `git http-backend` as a CGI request and relays its answer."""

    server_version = "modeldeploy-gitserver"
    root: Path = Path()

    def do_GET(self) -> None:
        if self.path == "/healthz":  # what `modeldeploy cluster up` waits on
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._backend(b"")

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            self.send_error(400, "Content-Length is not a number")
            return
        if not 0 <= length <= MAX_REQUEST_BYTES:
            self.send_error(413, f"request body of {length} bytes; at most {MAX_REQUEST_BYTES} are accepted")
            return
        self._backend(self.rfile.read(length))

    def _backend(self, body: bytes) -> None:
        url = urlsplit(self.path)
        env = {
            "PATH": "/usr/bin:/bin:/usr/local/bin",
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "SERVER_PROTOCOL": self.request_version,
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        try:
            result = subprocess.run(
                ["git", "http-backend"], input=body, capture_output=True, env=env, timeout=BACKEND_TIMEOUT_SECONDS,
                check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            self.send_error(504, f"git http-backend did not answer within {BACKEND_TIMEOUT_SECONDS} s")
            return
        head, sep, payload = result.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = result.stdout.partition(b"\n\n")
        if not sep:
            log.warning("git http-backend gave no CGI headers: %s", result.stderr.decode(errors="replace")[-500:])
            self.send_error(502, "git http-backend gave no answer")
            return
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        log.info("%s %s", self.client_address[0], format % args)


def serve(root: Path, port: int) -> None:
    if shutil.which("git") is None:
        raise SystemExit("gitserver: git is not installed (Debian: apt-get install git)")
    handler = type("Handler", (GitBackendHandler,), {"root": root.resolve()})
    with ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        log.info("serving the repositories under %s on http://127.0.0.1:%d/", root, port)
        server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, required=True, help="directory whose bare repositories are served")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    serve(args.root, args.port)


if __name__ == "__main__":
    main()
