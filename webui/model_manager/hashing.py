"""File hashes as AUTOMATIC1111 prints them, cached by (size, mtime).

AutoV2 = first 10 hex digits of the file's sha256 (the `Model hash` in infotext);
AutoV3 hashes of LoRAs use 12 digits. Hashing a 7 GB file takes a while, so results are
kept in cache/hashes.json and only recomputed when the file changes.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Callable

from ..fileio import atomic_write_text

CHUNK = 1 << 20


def sha256_file(path: Path, progress: Callable[[int, int], None] | None = None) -> str:
    total = path.stat().st_size
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest()


class HashCache:
    """sha256 per file, persisted; thread-safe."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict] | None = None

    def _load(self) -> dict[str, dict]:
        if self._data is None:
            try:
                self._data = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(self._data, dict):
                    self._data = {}
            except (OSError, ValueError):
                self._data = {}
        return self._data

    def cached(self, path: Path) -> str | None:
        """The sha256 if known for the file as it is now; never reads the file."""
        try:
            stat = path.stat()
        except OSError:
            return None
        with self._lock:
            entry = self._load().get(str(path.resolve()))
        if entry and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime:
            return entry.get("sha256")
        return None

    def record(self, path: Path, sha256: str) -> None:
        """Remember a hash computed elsewhere (a download hashes as it writes), so a 7 GB file is not read twice."""
        stat = path.stat()
        with self._lock:
            data = self._load()
            data[str(path.resolve())] = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": sha256.lower()}
            atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))

    def sha256(self, path: Path, progress: Callable[[int, int], None] | None = None) -> str:
        known = self.cached(path)
        if known:
            return known
        stat = path.stat()
        value = sha256_file(path, progress)
        with self._lock:
            data = self._load()
            data[str(path.resolve())] = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": value}
            atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))
        return value


    def sha256_data(self, path: Path) -> str:
        """sha256 of a safetensors file's tensor data, skipping its header (AUTOMATIC1111's AutoV3 base)."""
        key = str(path.resolve()) + "#data"
        stat = path.stat()
        with self._lock:
            entry = self._load().get(key)
        if entry and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime:
            return entry["sha256"]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            header = int.from_bytes(handle.read(8), "little") if path.suffix == ".safetensors" else -8
            handle.seek(header + 8)
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        value = digest.hexdigest()
        with self._lock:
            data = self._load()
            data[key] = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": value}
            atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))
        return value


def autov2(sha256: str) -> str:
    return sha256[:10]


def autov3(sha256: str) -> str:
    return sha256[:12]


def legacy_short_hash(path: Path) -> str:
    """AUTOMATIC1111's old 8-digit model hash (64 KiB at offset 1 MiB), which its ControlNet extension
    still writes into infotext as `Model: name [hash]`. Reads 64 KiB, so no caching is needed."""
    with open(path, "rb") as handle:
        handle.seek(0x100000)
        return hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]
