"""A trainer removes the `.tmp-` directories that killed trainers left, and never a live one's."""

from __future__ import annotations

import os
import time
from pathlib import Path

from modeldeploy_training import artifact


def test_stale_tmp_directories_go_and_fresh_ones_and_versions_stay(tmp_path: Path) -> None:
    stale = tmp_path / ".tmp-v1-dead"
    (stale / ".work").mkdir(parents=True)
    (stale / ".work" / "weights.bin").write_bytes(b"x")
    old = time.time() - artifact.STALE_TMP_SECONDS - 60
    for path in (stale, stale / ".work", stale / ".work" / "weights.bin"):
        os.utime(path, (old, old))
    live = tmp_path / ".tmp-v2-live"
    (live / ".work").mkdir(parents=True)
    os.utime(live, (old, old))  # its directory is old, but it wrote a file just now: still alive
    (live / ".work" / "epoch-3").write_bytes(b"y")
    version = tmp_path / "v0"
    version.mkdir()
    os.utime(version, (old, old))
    assert artifact.remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and version.exists()
    assert artifact.remove_stale_temporaries(tmp_path / "missing") == []
