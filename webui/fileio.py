"""Atomic file writes (a crash leaves the old file or the new one, never half of one), and file sizes for people."""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

log = logging.getLogger(__name__)
TEMP_SUFFIX = ".tmp"
_umask: int | None = None
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (read once). Linux shows it in /proc; elsewhere it is set and put back at once."""
    global _umask
    with _umask_lock:
        if _umask is None:
            try:
                text = Path("/proc/self/status").read_text()
                _umask = int(next(line.split()[1] for line in text.splitlines() if line.startswith("Umask:")), 8)
            except (OSError, StopIteration, ValueError, IndexError):
                _umask = os.umask(0o022)
                os.umask(_umask)
        return _umask


def _file_mode(path: Path) -> int:
    """The mode a plain open() would give a new file (0666 less the umask), or the replaced file's own mode.

    mkstemp creates 0600 files; renamed into place as they are, images and config.json would be
    unreadable to the user's other accounts and tools (a web server, a sync client, a backup job)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """A binary handle on a hidden temporary file beside `path`; on success it is fsynced and renamed over
    `path`, on any exception (interrupts included) it is deleted and `path` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _file_mode(path))
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


def remove_stale_temp_files(folder: Path, name: str | None = None) -> list[Path]:
    """Delete the hidden temporary files `atomic_open` leaves when the process is killed mid-write.

    `name`: only those of this file (`.config.json.*.tmp`); otherwise every `.*.tmp` in the folder.
    Call at start-up only, when no write of this process can be in flight."""
    prefix = f".{name}." if name else "."
    removed = []
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(TEMP_SUFFIX)]
    except OSError:
        return removed
    for candidate in candidates:
        try:
            if candidate.is_file():
                candidate.unlink()
                removed.append(candidate)
        except OSError as exc:
            log.warning("could not remove the stale temporary file %s: %s", candidate, exc)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted save in %s", len(removed), folder)
    return removed


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
