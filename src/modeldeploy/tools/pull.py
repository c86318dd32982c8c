"""`modeldeploy pull`: copy a version's model file (model.tflite for devices, or model.onnx) out of where it lives,
checked byte for byte against its model card.

Two places hold versions: a local artifact root (what `modeldeploy run` writes) and, in a cluster, the artifact volume,
which every serving pod mounts read-only at /models. The cluster route reads through `kubectl exec` into a ready
serving pod: no new endpoint in the serving image, and what a user may read is what their RBAC (pods/exec) allows.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from modeldeploy import contracts, spec

FORMAT_FILES = {"onnx": contracts.MODEL_FILE, "tflite": contracts.TFLITE_FILE}
# Bounds before anything is read into memory: a card is a few KB, a model of this product at most hundreds of MB.
CARD_LIMIT_BYTES = 4 * 1024 * 1024
MODEL_LIMIT_BYTES = 2 * 1024 * 1024 * 1024
KUBECTL_TIMEOUT_S = 300.0


class PullError(Exception):
    """What went wrong and what to do, in one line."""


class Store(Protocol):
    """Where versions live; `read` returns at most `limit` bytes of a file given relative to the artifact root."""

    @property
    def where(self) -> str: ...

    def read(self, rel: str, limit: int) -> bytes: ...


def _check_relative(rel: str) -> str:
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise PullError(f"{rel!r} is not a path inside the artifact root")
    return path.as_posix()


@dataclass(frozen=True)
class LocalStore:
    """A local artifact root (the stand-in for the volume that `modeldeploy run` uses)."""

    root: Path

    @property
    def where(self) -> str:
        return str(self.root)

    def read(self, rel: str, limit: int) -> bytes:
        path = self.root / _check_relative(rel)
        try:
            size = path.stat().st_size
            if size > limit:
                raise PullError(f"{path} is {size} bytes, more than the {limit} expected")
            return path.read_bytes()
        except FileNotFoundError:
            raise PullError(f"{path} does not exist") from None
        except OSError as err:
            raise PullError(f"cannot read {path}: {err.strerror or err}") from err

    def versions(self, name: str) -> list[str]:
        """The complete versions of model `name`, newest first (by the card's createdAt, then name)."""
        model_dir = self.root / name
        if not model_dir.is_dir():
            raise PullError(f"no model {name!r} in {self.root}; `modeldeploy run FILE --output {self.root}` makes one")
        found: list[tuple[str, str]] = []
        for path in model_dir.iterdir():
            if contracts.is_complete_version(path):
                try:
                    card = contracts.read_model_card(path) or {}
                except contracts.ContractError:
                    continue
                found.append((str(card.get("createdAt", "")), path.name))
        return [v for _, v in sorted(found, reverse=True)]


@dataclass(frozen=True)
class PodStore:
    """The artifact volume as a serving pod sees it (mounted read-only at /models), read with `kubectl exec`."""

    kubectl: tuple[str, ...]
    namespace: str
    pod: str
    container: str

    @property
    def where(self) -> str:
        return f"pod {self.namespace}/{self.pod}:{contracts.ARTIFACT_MOUNT}"

    def read(self, rel: str, limit: int) -> bytes:
        path = f"{contracts.ARTIFACT_MOUNT}/{_check_relative(rel)}"
        # head -c: the pod never sends more than the card says the file holds (plus one byte, to notice more).
        argv = [*self.kubectl, "exec", "-n", self.namespace, self.pod, "-c", self.container, "--"]
        result = run_kubectl([*argv, "head", "-c", str(limit + 1), path])
        if len(result) > limit:
            raise PullError(f"{path} in {self.where} is larger than the {limit} bytes its card gives")
        return result


def run_kubectl(argv: list[str]) -> bytes:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=KUBECTL_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise PullError(f"{argv[0]} not found: install kubectl, or pass --kubectl PATH") from None
    except subprocess.TimeoutExpired:
        raise PullError(f"`{' '.join(argv[:6])} …` did not finish in {KUBECTL_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        err = " ".join(done.stderr.decode(errors="replace").split())[:500]
        raise PullError(f"`{' '.join(argv[:8])} …` failed: {err}")
    return done.stdout


def kubectl_json(kubectl: tuple[str, ...], *args: str) -> dict[str, Any]:
    out = run_kubectl([*kubectl, *args, "-o", "json"])
    try:
        value = json.loads(out)
    except json.JSONDecodeError as err:
        raise PullError(f"kubectl {' '.join(args)} did not print JSON: {err}") from err
    if not isinstance(value, dict):
        raise PullError(f"kubectl {' '.join(args)} did not print an object")
    return value


def version_from_status(md: dict[str, Any], version: str | None) -> tuple[str, dict[str, Any]]:
    """The version's path relative to the artifact root, and its status entry (served version by default)."""
    status = md.get("status") or {}
    name = (md.get("metadata") or {}).get("name", "?")
    entries = [e for e in status.get("versions") or [] if isinstance(e, dict)]
    wanted = version or status.get("modelVersion")
    if not wanted:
        raise PullError(f"ModelDeployment {name} has no trained version yet (status.modelVersion is empty); wait")
    for entry in entries:
        if entry.get("version") == wanted and isinstance(entry.get("path"), str):
            return entry["path"], entry
    known = ", ".join(str(e.get("version")) for e in entries) or "none"
    raise PullError(f"ModelDeployment {name} has no version {wanted} in its status (kept: {known})")


def ready_serving_pod(pods: dict[str, Any]) -> str:
    """A running, ready serving pod (it has the volume mounted)."""
    for pod in pods.get("items") or []:
        status = pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if status.get("phase") == "Running" and ready and not (pod.get("metadata") or {}).get("deletionTimestamp"):
            return str(pod["metadata"]["name"])
    raise PullError(
        "no ready serving pod to read the artifact volume through; scale spec.serving.replicas to at least 1 and wait"
    )


def pull(store: Store, version_path: str, fmt: str, output: Path, *, expected_sha256: str | None = None) -> str:
    """Copy the version's file of format `fmt` to `output` after checking it against the card; one line for the user."""
    file_name = FORMAT_FILES[fmt]
    try:
        card = json.loads(store.read(f"{version_path}/{contracts.MODEL_CARD_FILE}", CARD_LIMIT_BYTES))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PullError(f"the model card of {version_path} in {store.where} is not JSON: {err}") from err
    if not isinstance(card, dict) or card.get("schema") != contracts.MODEL_CARD_SCHEMA:
        raise PullError(f"{version_path}/{contracts.MODEL_CARD_FILE} in {store.where} is not a model card")
    section = card.get("tflite") if fmt == "tflite" else None
    if fmt == "tflite":
        if not isinstance(section, dict):
            raise PullError(
                f"version {card.get('version')} was made without tflite: add tflite to spec.compression.formats "
                "(that makes a new version) and pull again"
            )
        if "failureReason" in section:
            raise PullError(
                f"version {card.get('version')} has no {file_name}: "
                f"{section['failureReason']}: {section.get('message')}"
            )
    entry = (card.get("files") or {}).get(file_name)
    if not isinstance(entry, dict) or not isinstance(entry.get("sizeBytes"), int) or not entry.get("sha256"):
        raise PullError(f"the card of {version_path} lists no {file_name} with its size and sha256")
    data = store.read(f"{version_path}/{file_name}", min(entry["sizeBytes"], MODEL_LIMIT_BYTES))
    digest = hashlib.sha256(data).hexdigest()
    for what, expected in (
        ("the card's files", entry["sha256"]),
        ("the card's tflite section", (section or {}).get("sha256")),
        ("the ModelDeployment's status", expected_sha256),
    ):
        if expected and expected != digest:
            raise PullError(
                f"{file_name} of {version_path} in {store.where} has sha256 {digest}, {what} says {expected}: "
                "the file changed after it was written; nothing was copied"
            )
    if len(data) != entry["sizeBytes"]:
        raise PullError(f"{file_name} is {len(data)} bytes, the card says {entry['sizeBytes']}; nothing was copied")
    write_atomically(output, data)
    detail = ""
    if section:
        detail = f", {section.get('chosen')}, accuracy {section.get('accuracy')} on held-out data"
    return (
        f"{output}: {file_name} of {version_path} from {store.where} ({len(data)} bytes, sha256 {digest}{detail}), "
        "verified"
    )


def write_atomically(output: Path, data: bytes) -> None:
    """The whole file or none: written beside the target, then renamed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pull_local(root: Path, name: str, *, version: str | None, fmt: str, output: Path | None) -> str:
    store = LocalStore(root)
    versions = store.versions(name)
    if not versions:
        raise PullError(f"model {name!r} in {root} has no complete version")
    if version is not None and version not in versions:
        raise PullError(f"model {name!r} in {root} has no version {version} (complete: {', '.join(versions)})")
    chosen = version or versions[0]
    target = output or Path(f"{name}-{chosen}{Path(FORMAT_FILES[fmt]).suffix}")
    return pull(store, f"{name}/{chosen}", fmt, target)


def pull_cluster(
    kubectl: tuple[str, ...], namespace: str, name: str, *, version: str | None, fmt: str, output: Path | None
) -> str:
    from modeldeploy_operator import naming  # noqa: PLC0415  (the serving pods' container name and labels)

    md = kubectl_json(kubectl, "get", f"{spec.PLURAL}.{spec.GROUP}", name, "-n", namespace)
    version_path, entry = version_from_status(md, version)
    selector = str((md.get("status") or {}).get("selector") or naming.selector_string(naming.serving_selector(name)))
    pod = ready_serving_pod(kubectl_json(kubectl, "get", "pods", "-n", namespace, "-l", selector))
    expected = (entry.get("tflite") or {}).get("sha256") if fmt == "tflite" else None
    store = PodStore(kubectl, namespace, pod, naming.SERVING_CONTAINER)
    target = output or Path(f"{name}-{PurePosixPath(version_path).name}{Path(FORMAT_FILES[fmt]).suffix}")
    return pull(store, version_path, fmt, target, expected_sha256=expected)
