"""Model versions, datasets and imports in object storage (spec.storage.uri: s3://, gs://, az://), through obstore.

Object stores have no rename, so a version is committed by its card (docs/contracts/model-artifact.md, "In object
storage"): every file first, `model.json` last. A reader trusts only a version whose card exists, and then only the
bytes whose size and SHA-256 match the card. A trainer killed mid-upload leaves files without a card: no reader
serves them, and the next run of the same version writes them again.

obstore (the Rust object_store crate, one wheel without Python dependencies) takes credentials from the standard
environment (AWS_*, GOOGLE_*, AZURE_*; IRSA's and the clouds' workload identity included). It is imported when a
function here runs, never at import (the CLI stays light).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from modeldeploy import contracts

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

WRITABLE_SCHEMES: Final = ("s3", "gs", "az")
READ_SCHEMES: Final = (*WRITABLE_SCHEMES, "https")
MAX_URI_LENGTH: Final = 1024
MAX_CARD_BYTES: Final = 1024 * 1024
CHUNK_BYTES: Final = 1024 * 1024
ENDPOINT_ENV: Final = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
# A pod's fetch is retried by the kubelet (with its own backoff), so each request gives up soon and says why.
MAX_RETRIES: Final = 3
RETRY_TIMEOUT: Final = timedelta(seconds=30)
_URI = re.compile(r"^(?P<scheme>[a-z0-9]+)://(?P<bucket>[A-Za-z0-9._-]{1,255})(?P<key>/[^\x00-\x1f\x7f]*)?$")

# Reasons a storage operation failed, as the status and the fetch's termination message name them.
NOT_FOUND: Final = "NotFound"
ACCESS_DENIED: Final = "AccessDenied"
UNREACHABLE: Final = "StorageUnreachable"
INCOMPLETE: Final = "VersionIncomplete"
CHECKSUM_MISMATCH: Final = "ChecksumMismatch"
TOO_LARGE: Final = "TooLarge"
INVALID_URI: Final = "InvalidURI"
LOCAL_WRITE_FAILED: Final = "LocalWriteFailed"


class StorageError(RuntimeError):
    """An object store refused, lacked or garbled something; `reason` is one word, the message says what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Location:
    """A parsed URI: scheme, bucket (container, or host for https) and key prefix without slashes at either end."""

    scheme: str
    bucket: str
    key: str = ""

    def join(self, *parts: str) -> Location:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return Location(self.scheme, self.bucket, key)

    @property
    def store_url(self) -> str:
        return f"{self.scheme}://{self.bucket}"

    def __str__(self) -> str:
        return f"{self.store_url}/{self.key}" if self.key else self.store_url


def parse_uri(uri: str, field: str = "spec.storage.uri", *, writable: bool = False) -> Location:
    """Check a URI before anything is fetched: a known scheme, a bucket, no empty or `..` segment, bounded length."""
    schemes = WRITABLE_SCHEMES if writable else READ_SCHEMES
    if not isinstance(uri, str) or len(uri) > MAX_URI_LENGTH:
        raise StorageError(INVALID_URI, f"{field} must be a URI of at most {MAX_URI_LENGTH} characters")
    match = _URI.match(uri)
    if match is None or match["scheme"] not in schemes:
        raise StorageError(
            INVALID_URI,
            f"{field} {uri!r} is not a URI this supports; use {', '.join(s + '://bucket/prefix' for s in schemes)}",
        )
    key = (match["key"] or "").strip("/")
    if key and any(part in ("", ".", "..") for part in key.split("/")):
        raise StorageError(INVALID_URI, f"{field} {uri!r} has an empty, '.' or '..' segment; give a plain prefix")
    return Location(match["scheme"], match["bucket"], key)


def endpoint_url() -> str | None:
    """An S3-compatible store's endpoint (the standard AWS variables), None for AWS itself."""
    return next((os.environ[name] for name in ENDPOINT_ENV if os.environ.get(name)), None)


def open_store(location: Location) -> Any:
    """The obstore store of a location's bucket; credentials and endpoint from the environment."""
    from obstore.store import from_url  # noqa: PLC0415  (only when storage is used)

    client: ClientConfig = {"connect_timeout": timedelta(seconds=10), "timeout": timedelta(seconds=300)}
    endpoint = endpoint_url()
    if location.scheme == "s3" and endpoint and endpoint.startswith("http://"):
        client["allow_http"] = True  # an S3-compatible store inside the cluster (the local one: versitygw)
    retry: RetryConfig = {"max_retries": MAX_RETRIES, "retry_timeout": RETRY_TIMEOUT}
    try:
        return from_url(location.store_url, client_options=client, retry_config=retry)
    except Exception as err:
        raise StorageError(INVALID_URI, f"cannot use {location}: {type(err).__name__}: {err}") from err


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn obstore's errors into StorageError with a reason and what to do."""
    from obstore import exceptions  # noqa: PLC0415

    try:
        yield
    except StorageError:
        raise
    except (FileNotFoundError, exceptions.NotFoundError) as err:
        raise StorageError(NOT_FOUND, f"{what}: no such object") from err
    except (PermissionError, exceptions.PermissionDeniedError, exceptions.UnauthenticatedError) as err:
        raise StorageError(
            ACCESS_DENIED,
            f"{what}: access denied ({_first_line(err)}); check the credentials in spec.storage.secretRef "
            "(or the ServiceAccount's role) and the bucket's policy",
        ) from err
    except OSError as err:
        raise StorageError(UNREACHABLE, f"{what}: {err}") from err
    except exceptions.BaseError as err:
        text = _first_line(err)
        if _DENIED.search(text):
            raise StorageError(
                ACCESS_DENIED, f"{what}: access denied ({text}); check the credentials in spec.storage.secretRef"
            ) from err
        raise StorageError(UNREACHABLE, f"{what}: {type(err).__name__}: {text}") from err


# A 403 as a status, never as part of a number, host, port or path ("http://127.0.0.1:40312/" is no denial).
_DENIED: Final = re.compile(r"(?<![\w./:-])403(?![\w./:-])|Forbidden|SignatureDoesNotMatch|InvalidAccessKeyId")


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:400]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def safe_relative(rel: Any) -> str:
    """A card's file name, refused when it could write outside the version directory."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        raise StorageError(CHECKSUM_MISMATCH, f"the card lists a file named {rel!r}, which is not a relative path")
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise StorageError(CHECKSUM_MISMATCH, f"the card lists {rel!r}, which leaves the version directory")
    return rel


def _size(store: Any, key: str) -> int | None:
    """An object's size, None when there is no such object."""
    import obstore  # noqa: PLC0415

    try:
        return int(obstore.head(store, key)["size"])
    except (FileNotFoundError, obstore.exceptions.NotFoundError):
        return None


# A test hook (tests/realnode): seconds to wait after each object of an upload, so that a test can delete the
# trainer's pod between two objects. Set through the storage Secret (its keys are the Job's environment).
UPLOAD_PAUSE_ENV: Final = "MODELDEPLOY_TEST_UPLOAD_PAUSE_SECONDS"


def _test_pause() -> float:
    try:
        return min(max(float(os.environ.get(UPLOAD_PAUSE_ENV) or 0), 0.0), 300.0)
    except ValueError:
        return 0.0


# ---- writing a version ------------------------------------------------------------------------------------------


def put_version(
    local_dir: Path,
    root: Location,
    model: str,
    version: str,
    *,
    on_put: Callable[[str], None] | None = None,
) -> Location:
    """Upload a complete local version: every file of its card, checked, then the card itself, last.

    A version whose card is already there is first made invisible (its card deleted), so that no reader trusts a
    card while the files under it change. `on_put(name)` is called after each object (progress, and the tests'
    kill point). Returns the version's location.
    """
    import obstore  # noqa: PLC0415

    card_bytes = (local_dir / contracts.MODEL_CARD_FILE).read_bytes()
    files = json.loads(card_bytes).get("files") or {}
    target = root.join(model, version)
    for rel, entry in sorted(files.items()):
        local = local_dir / safe_relative(rel)
        if local.stat().st_size != entry.get("sizeBytes") or sha256_file(local) != entry.get("sha256"):
            raise StorageError(CHECKSUM_MISMATCH, f"{local} does not match its card before the upload")
    store = open_store(root)
    card_key = target.join(contracts.MODEL_CARD_FILE).key
    pause = _test_pause()
    with translated(f"cannot write {target}"):
        if _size(store, card_key) is not None:
            obstore.delete(store, card_key)
        for rel in sorted(files):
            obstore.put(store, target.join(rel).key, local_dir / rel)
            if on_put is not None:
                on_put(rel)
            time.sleep(pause)
        obstore.put(store, card_key, card_bytes)
    if on_put is not None:
        on_put(contracts.MODEL_CARD_FILE)
    return target


# ---- reading a version ------------------------------------------------------------------------------------------


def read_card(root: Location, model: str, version: str) -> dict[str, Any] | None:
    """The card of a committed version, None when there is none (never written, or an upload that did not finish)."""
    found = _read_card(root, model, version)
    return found[0] if found is not None else None


def _read_card(root: Location, model: str, version: str) -> tuple[dict[str, Any], bytes] | None:
    import obstore  # noqa: PLC0415

    path = root.join(model, version, contracts.MODEL_CARD_FILE)
    store = open_store(root)
    with translated(f"cannot read {path}"):
        size = _size(store, path.key)
        if size is None:
            return None
        if size > MAX_CARD_BYTES:
            raise StorageError(TOO_LARGE, f"{path} is {size} bytes; a model card is at most {MAX_CARD_BYTES}")
        data = bytes(obstore.get(store, path.key).bytes())
    return _parse_card(data, path, model, version), data


def _parse_card(data: bytes, path: Location, model: str, version: str) -> dict[str, Any]:
    try:
        card = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StorageError(CHECKSUM_MISMATCH, f"{path} is not JSON ({err}); the version is damaged") from err
    if not isinstance(card, dict) or card.get("schema") != contracts.MODEL_CARD_SCHEMA:
        raise StorageError(CHECKSUM_MISMATCH, f"{path} is not a model card ({contracts.MODEL_CARD_SCHEMA})")
    if card.get("version") != version or card.get("name") != model:
        raise StorageError(
            CHECKSUM_MISMATCH, f"{path} describes {card.get('name')}/{card.get('version')}, not {model}/{version}"
        )
    files = card.get("files")
    if not isinstance(files, dict) or contracts.MODEL_FILE not in files:
        raise StorageError(CHECKSUM_MISMATCH, f"{path} lists no {contracts.MODEL_FILE} in its files")
    return card


def is_committed(root: Location, model: str, version: str) -> dict[str, Any] | None:
    """The card of a version whose card and every listed object (by size) are there, None otherwise. What a trainer
    checks before it trains: a committed version is reused."""
    card = read_card(root, model, version)
    if card is None:
        return None
    store = open_store(root)
    target = root.join(model, version)
    with translated(f"cannot read {target}"):
        for rel, entry in card["files"].items():
            if _size(store, target.join(safe_relative(rel)).key) != entry.get("sizeBytes"):
                return None
    return card


def serving_files(card: dict[str, Any]) -> list[str]:
    """What a serving pod needs of a version: its model files, not the source model kept for reproducibility."""
    return sorted(rel for rel in card["files"] if not rel.startswith(contracts.SOURCE_DIR + "/"))


def fetch_version(
    root: Location,
    model: str,
    version: str,
    dest_root: Path,
    *,
    max_bytes: int,
    include_source: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Copy a committed version to dest_root/<model>/<version>/, every byte checked against its card.

    Written under a `.tmp-` name and renamed when complete, like the trainer's local write; nothing is left behind
    on failure. Raises StorageError: INCOMPLETE when there is no card, CHECKSUM_MISMATCH for any byte that differs,
    TOO_LARGE past max_bytes (before anything is downloaded).
    """
    found = _read_card(root, model, version)
    source = root.join(model, version)
    if found is None:
        raise StorageError(
            INCOMPLETE,
            f"{source} has no {contracts.MODEL_CARD_FILE}: the version was never committed (its upload did not "
            "finish); the operator trains it again when its training Job runs",
        )
    card, card_bytes = found
    names = sorted(card["files"]) if include_source else serving_files(card)
    for rel in names:
        safe_relative(rel)
    total = sum(int(card["files"][n].get("sizeBytes") or 0) for n in names)
    if total > max_bytes:
        raise StorageError(
            TOO_LARGE,
            f"{source} holds {total} bytes to fetch, more than the {max_bytes} allowed; raise spec.storage.size",
        )
    final = dest_root / model / version
    tmp = dest_root / model / f"{contracts.TMP_PREFIX}{version}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    store = open_store(root)
    try:
        for rel in names:
            local = tmp / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            _download_checked(store, source.join(rel), local, card["files"][rel])
        (tmp / contracts.MODEL_CARD_FILE).write_bytes(card_bytes)  # as committed, byte for byte
        if final.exists():
            shutil.rmtree(final)  # a copy from an earlier attempt of this pod's init container
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, card


def _download_checked(store: Any, remote: Location, local: Path, entry: dict[str, Any]) -> None:
    import obstore  # noqa: PLC0415

    size = int(entry.get("sizeBytes") or 0)
    digest = hashlib.sha256()
    written = 0
    with translated(f"cannot read {remote}"), local.open("wb") as out:
        for chunk in obstore.get(store, remote.key).stream(min_chunk_size=CHUNK_BYTES):
            written += len(chunk)
            if written > size:
                break  # longer than the card says: no need to read the rest
            digest.update(chunk)
            _write_local(out, chunk, local)
    if written != size or digest.hexdigest() != entry.get("sha256"):
        seen = f"{written} bytes" if written <= size else f"more than {size} bytes"
        raise StorageError(
            CHECKSUM_MISMATCH,
            f"{remote} does not match its model card ({seen}, card: {size} bytes and sha256 "
            f"{str(entry.get('sha256'))[:12]}...): the object was changed or damaged after the version was committed; "
            "restore it, or delete the version's model.json and retrain",
        )


def _write_local(out: Any, chunk: bytes, path: Path) -> None:
    """A write to this machine's disk: its failure is the disk's, not the store's (the reason says which)."""
    try:
        out.write(chunk)
    except OSError as err:
        raise StorageError(
            LOCAL_WRITE_FAILED,
            f"cannot write {path}: {err.strerror or err}; a serving pod's copy lives in an emptyDir of "
            "spec.storage.size (raise it), a trainer's in its /tmp",
        ) from err


def fetch_object(uri: str, dest: Path, *, max_bytes: int, field: str) -> Path:
    """Copy one object (a dataset, a model to import) to dest, refusing it past max_bytes before it is read."""
    import obstore  # noqa: PLC0415

    location = parse_uri(uri, field)
    store = open_store(location)
    with translated(f"{field} {uri}"):
        result = obstore.get(store, location.key)
        size = int(result.meta["size"])
        if size > max_bytes:
            raise StorageError(TOO_LARGE, f"{field} {uri} is {size} bytes, more than the {max_bytes} allowed")
        dest.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with dest.open("wb") as out:
            for chunk in result.stream(min_chunk_size=CHUNK_BYTES):
                written += len(chunk)
                if written > max_bytes:
                    raise StorageError(TOO_LARGE, f"{field} {uri} is more than the {max_bytes} bytes allowed")
                _write_local(out, chunk, dest)
    return dest
