"""Writing a model version on the artifact volume: into `.tmp-<version>-<random>/`, fsynced, then renamed, so a
reader never sees half an artifact (docs/contracts/model-artifact.md)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from modeldeploy import contracts
from modeldeploy_training.errors import TrainingFailure, storage_failure

log = logging.getLogger(__name__)


def find_existing(model_dir: Path, version: str) -> dict[str, Any] | None:
    """The card of a complete version already on the volume, None when there is none yet."""
    path = model_dir / version
    if contracts.is_complete_version(path):
        try:
            return contracts.read_model_card(path)
        except contracts.ContractError as err:
            raise TrainingFailure(f"{err}; remove {path} to let the run write it again") from err
    if path.exists():
        raise TrainingFailure(
            f"{path} exists but is not a complete artifact (no {contracts.MODEL_CARD_FILE}); it was not written by "
            "this program: remove it, then retry"
        )
    return None


# A trainer killed mid-write (OOM, eviction, deadline) leaves its `.tmp-` directory; a live one touches its own
# far more often than this (every epoch, every file it writes).
STALE_TMP_SECONDS = 6 * 3600


def remove_stale_temporaries(model_dir: Path, max_age: float = STALE_TMP_SECONDS) -> list[Path]:
    """Remove `.tmp-` directories of killed trainers (nothing changed in them for `max_age`); return them."""
    removed: list[Path] = []
    if not model_dir.is_dir():
        return removed
    now = time.time()
    for tmp in model_dir.glob(f"{contracts.TMP_PREFIX}*"):
        try:
            newest = max(p.stat().st_mtime for p in (tmp, *tmp.rglob("*")))
        except OSError:
            continue  # removed meanwhile by its own writer
        if now - newest > max_age:
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("removed %s, left by a trainer that did not finish", tmp)
            removed.append(tmp)
    return removed


def write_bytes(path: Path, data: bytes) -> None:
    """Write and fsync one file (a rename is only atomic for data that already reached the disk)."""
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under root (files made by other libraries, e.g. Keras' save)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_entries(version_dir: Path) -> dict[str, dict[str, Any]]:
    """The card's `files`: size and SHA-256 of every file but the card itself, by path relative to the version."""
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(version_dir).as_posix()
        if rel == contracts.MODEL_CARD_FILE:
            continue
        entries[rel] = {"sizeBytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return entries


class VersionWriter:
    """A version being written. Use as a context manager: on any failure its `.tmp-…` directory is removed."""

    def __init__(self, model_dir: Path, version: str) -> None:
        self.model_dir = model_dir
        self.version = version
        self.tmp = model_dir / f"{contracts.TMP_PREFIX}{version}-{secrets.token_hex(4)}"
        # Scratch space for conversion and candidates, on the same volume; removed before the rename.
        self.work = self.tmp / ".work"
        self.final = model_dir / version

    def __enter__(self) -> VersionWriter:
        try:
            self.work.mkdir(parents=True)
            (self.tmp / contracts.SOURCE_DIR).mkdir()
        except OSError as err:
            self._remove()
            raise storage_failure(err, str(self.tmp)) from err
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._remove()

    def _remove(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self, card: dict[str, Any]) -> Path:
        """Write model.json last, fsync everything, and rename into place."""
        try:
            shutil.rmtree(self.work)
            card["files"] = file_entries(self.tmp)
            write_bytes(self.tmp / contracts.MODEL_CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())
            fsync_tree(self.tmp)
            os.rename(self.tmp, self.final)
            _fsync_dir(self.model_dir)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY) and contracts.is_complete_version(self.final):
                # A concurrent run of the same spec finished first; its version is the same model.
                self._remove()
                return self.final
            if contracts.is_complete_version(self.final) and not self.tmp.exists():
                return self.final  # the rename happened; only the directory fsync failed
            raise storage_failure(err, str(self.final)) from err
        log.info("wrote %s", self.final)
        return self.final
