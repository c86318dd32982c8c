"""Opt-in bearer-token authentication and TLS material, read from files (a mounted Secret) and re-read when the
files change, so that a rotated token or certificate takes effect without a restart."""

from __future__ import annotations

import hmac
import logging
import os
import ssl
import time
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

# How often a file's modification time is looked at, at most: a stat per second, not per request.
_CHECK_INTERVAL: Final = 1.0


class _Watched:
    """A file whose content is re-read when its modification time (or identity: Kubernetes swaps a symlink when a
    Secret changes) changes, checked at most once per second."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0

    def changed(self) -> bool:
        now = time.monotonic()
        if now - self._checked < _CHECK_INTERVAL and self._stamp is not None:
            return False
        self._checked = now
        try:
            stat = os.stat(self.path)
        except OSError:
            return False  # a Secret being swapped: keep what we have
        stamp = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True


class TokenFile:
    """Bearer tokens, one per line (blank lines and lines starting with # ignored), from a file."""

    def __init__(self, path: Path) -> None:
        self._file = _Watched(path)
        self._tokens: tuple[bytes, ...] = ()
        self._reload()
        if not self._tokens:
            raise ValueError(f"{path} holds no token: put one bearer token per line")

    def _reload(self) -> None:
        if not self._file.changed():
            return
        try:
            lines = self._file.path.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            log.error("cannot read the token file %s: %s; keeping the tokens read before", self._file.path, err)
            return
        tokens = tuple(line.strip().encode() for line in lines if line.strip() and not line.startswith("#"))
        if tokens:
            self._tokens = tokens
            log.info("%d bearer token(s) read from %s", len(tokens), self._file.path)

    def accepts(self, authorization: str | bytes | None) -> bool:
        """Whether an `Authorization` header value carries one of the tokens (compared in constant time)."""
        self._reload()
        if authorization is None:
            return False
        value = authorization.encode("latin-1") if isinstance(authorization, str) else authorization
        scheme, _, token = value.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        token = token.strip()
        # Every token is compared, so that the time taken does not tell which one nearly matched.
        return sum(hmac.compare_digest(token, known) for known in self._tokens) > 0


class ReloadingCertificate:
    """A server certificate and key from files; `context` serves new TLS handshakes with the files' current pair."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self._cert, self._key = _Watched(cert_file), _Watched(key_file)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._cert.changed()
        self._key.changed()
        self.context.load_cert_chain(cert_file, key_file)
        self.pair = (cert_file.read_bytes(), key_file.read_bytes())
        self.generation = 0
        """Counts the pairs loaded: each user (REST's context, gRPC's fetcher) tells by it that the pair changed."""

    def refresh(self) -> bool:
        """Load the pair again if either file changed; True when new handshakes now use a new pair."""
        cert_changed, key_changed = self._cert.changed(), self._key.changed()
        if not (cert_changed or key_changed):
            return False
        try:
            pair = (self.cert_file.read_bytes(), self.key_file.read_bytes())
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as err:
            # A half-written rotation (new cert, old key): keep serving the old pair, try again on the next change.
            log.error(
                "cannot load the TLS pair %s, %s: %s; keeping the previous one", self.cert_file, self.key_file, err
            )
            self._cert = _Watched(self.cert_file)
            self._key = _Watched(self.key_file)
            return False
        self.pair = pair
        self.generation += 1
        log.info("TLS certificate reloaded from %s", self.cert_file)
        return True


def grpc_auth_interceptor(tokens: TokenFile, open_methods: frozenset[str]) -> Any:
    """A grpc.aio interceptor: RPCs other than `open_methods` need `authorization: Bearer <token>` metadata, else
    UNAUTHENTICATED before any handler runs."""
    import grpc  # noqa: PLC0415 - grpc is imported only when gRPC is on

    async def deny(request: Any, context: Any) -> Any:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or wrong bearer token: send metadata authorization: Bearer <token>",
        )

    denied = grpc.unary_unary_rpc_method_handler(deny)

    class BearerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            if details.method.rsplit("/", 1)[-1] in open_methods:
                return await continuation(details)
            metadata = dict(details.invocation_metadata or ())
            if tokens.accepts(metadata.get("authorization")):
                return await continuation(details)
            return denied

    return BearerInterceptor()


def grpc_credentials(certificate: ReloadingCertificate) -> Any:
    """gRPC server credentials whose certificate is fetched again on each handshake when the files changed."""
    import grpc  # noqa: PLC0415 - grpc is imported only when gRPC is on

    def config(pair: tuple[bytes, bytes]) -> Any:
        return grpc.ssl_server_certificate_configuration([(pair[1], pair[0])])

    seen = [certificate.generation]

    def fetch() -> Any:
        certificate.refresh()
        if certificate.generation == seen[0]:
            return None  # keep the current configuration
        seen[0] = certificate.generation
        return config(certificate.pair)

    return grpc.dynamic_ssl_server_credentials(config(certificate.pair), fetch)
