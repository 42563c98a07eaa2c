"""Keep MediaPipe's native log chatter off the terminal, so an error stays the one line it is meant to be.

MediaPipe's C++ code (absl logging, TensorFlow Lite) writes lines such as
`W0000 00:00:17.9 12345 face_landmarker_graph.cc:181] Sets FaceBlendshapesGraph acceleration to xnnpack by default.`
straight to file descriptor 2 whenever a model loads; neither an environment variable nor the Python API turns them
off. `filtered_native_stderr` points descriptor 2 at a pipe and forwards every line except those informational and
warning lines (`I....`/`W....` records, "Logging before InitGoogle", "Created TensorFlow Lite XNNPACK delegate"), so
native errors (`E`/`F` records, anything else) still reach the terminal. Python's own `sys.stderr` (progress bars,
error lines, tracebacks) is rebound to the original terminal, so it is neither filtered nor seen as a pipe.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Iterator

NATIVE_NOISE = re.compile(
    rb"^(?:[IW]\d{4} \S+ +\d+ [^\]]+\] |WARNING: Logging before InitGoogle\(\)|"
    rb"INFO: Created TensorFlow Lite XNNPACK delegate)"
)


def _forward(read_fd: int, out_fd: int) -> None:
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not NATIVE_NOISE.match(line):
                os.write(out_fd, line + b"\n")
    if pending and not NATIVE_NOISE.match(pending):
        os.write(out_fd, pending)
    os.close(read_fd)


@contextlib.contextmanager
def filtered_native_stderr() -> Iterator[None]:
    """Within the block, native writes to descriptor 2 pass through the noise filter (see the module docstring)."""
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no real descriptor 2 (embedded interpreter, pytest capture)
        yield
        return
    python_stderr = sys.stderr
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    sys.stderr = os.fdopen(os.dup(original), "w", buffering=1, encoding=getattr(python_stderr, "encoding", None) or "utf-8",
                           errors="backslashreplace")
    thread = threading.Thread(target=_forward, args=(read_fd, original), name="native-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last writer: the thread drains it and stops
        thread.join(timeout=5.0)
        replaced, sys.stderr = sys.stderr, python_stderr
        replaced.close()
        os.close(original)
