"""Atomic file writes (a crash leaves the old file or the new one, never half of one), and file sizes for people."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """A binary handle on a hidden temporary file beside `path`; on success it is fsynced and renamed over
    `path`, on any exception (interrupts included) it is deleted and `path` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a hidden temporary file beside `path`, fsync, then rename over it."""
    with atomic_open(path) as handle:
        handle.write(data)


def format_size(size: int | float | None) -> str:
    """Bytes as people read them on model sites: decimal units ("4.3 GB"); "?" when unknown."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
