"""TensorFlow's start-up and tf.data notices kept out of the trainer's and `modeldeploy run`'s output; its warnings and
errors still shown.

TensorFlow 2.21 logs from C++ through Abseil before anything calls `absl::InitializeLog()`, so those lines go to the
process's stderr whatever TF_CPP_MIN_LOG_LEVEL says (the oneDNN notice at import, twice, behind Abseil's "All log
messages before ..." banner). And with op determinism on (the trainer's same-spec-same-weights promise), Keras's
`fit` makes tf.data turn a parallel map into a sequential one, and TensorFlow logs at ERROR that the node keeps an
attribute (`use_unbounded_threadpool`) the sequential op lacks, adding "Unknown attributes will be ignored": nothing
is wrong. Both come from C++ straight to file descriptor 2, so they are filtered there: a small child process reads
the process's stderr through a pipe and passes on every line except those. Being a separate process, it also passes
on what a crashing TensorFlow writes last.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import subprocess
import sys
from typing import BinaryIO

# One pattern per kind of line dropped; everything else (warnings, other errors, tracebacks, our lines) passes.
NOISE = (
    # Abseil's banner before its first line of a process.
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR\r?$"),
    # INFO lines of TensorFlow's C++, in Abseil's format (I0000 00:00:1796188897.690075   13478 port.cc:153] ...)
    # and in TensorFlow's older one (2026-12-02 05:16:02.123456: I tensorflow/core/...cc:42] ...).
    re.compile(rb"^I\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w./-]+:\d+\] "),
    re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:[\d.]+: I [\w./-]+:\d+\] "),
    # The harmless tf.data rewrite under op determinism (see the module's docstring).
    re.compile(rb"^E\d{4} .*NodeDef mentions attribute use_unbounded_threadpool which is not in the op definition"),
)

_installed: list[subprocess.Popen[bytes]] = []


def is_noise(line: bytes) -> bool:
    """Whether a line of stderr is one of TensorFlow's notices that say nothing to the user."""
    return any(pattern.search(line) for pattern in NOISE)


def filter_stream(source: BinaryIO, sink: BinaryIO) -> None:
    """Copy `source` to `sink` line by line, without the noise; flushes every line (a crash loses nothing)."""
    for line in source:
        if not is_noise(line):
            sink.write(line)
            sink.flush()


def quiet_tensorflow() -> None:
    """Before TensorFlow is imported: its C++ logging at warnings and errors, its Python loggers too, and the
    notices it writes regardless filtered out of stderr. Once per process; a no-op when stderr cannot be replaced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Only where this process's stderr is its own: a host that redirected sys.stderr (pytest's capture) keeps it.
    stderr = sys.stderr
    if _installed or stderr is not sys.__stderr__ or stderr is None:
        return
    try:
        stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError):
        return
    read_end, write_end = os.pipe()
    try:
        # Its own session: a Ctrl-C on the terminal stops this process, while the filter drains to the end.
        child = subprocess.Popen(
            [sys.executable, "-m", "modeldeploy_training.quiet"],
            stdin=read_end,
            stdout=original,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        os.close(read_end)
        os.close(write_end)
        os.close(original)
        return
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    _installed.append(child)
    atexit.register(_restore, original, child)


def _restore(original: int, child: subprocess.Popen[bytes]) -> None:
    """At a normal exit: stderr back to what it was (the pipe closes, the filter drains and ends), then wait for it."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os.dup2(original, 2)
    os.close(original)
    # A process this one started may still hold the pipe: the filter then ends with it.
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=10)


if __name__ == "__main__":
    filter_stream(sys.stdin.buffer, sys.stdout.buffer)
