"""Write-then-rename helpers: a file under its final name is always complete.

A killed process leaves at most a `*.tmp-<pid>` file behind, which no reader ever takes for a finished output.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

PathLike = Union[str, os.PathLike]


def temp_path_for(final: PathLike) -> Path:
    """The temporary sibling a write goes to before it is renamed to `final` (same folder, so rename is atomic)."""
    final = Path(final)
    # Keep the real suffix last: encoders that pick a format from the extension (PyAV, OpenCV, PIL) still work.
    return final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")


@contextlib.contextmanager
def atomic_path(final: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to `final`, on any error remove it.

    >>> with atomic_path("out.txt") as tmp:
    ...     _ = tmp.write_text("done")
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_json(final: PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def save_npy(final: PathLike, array: np.ndarray) -> None:
    """Save one numpy array, atomically (np.save on an open handle so numpy does not append its own suffix)."""
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def write_bytes(final: PathLike, payload: bytes) -> None:
    """Write raw bytes, atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(payload)
