"""Thumbnails cached on disk, keyed by the file's path, size and mtime (a changed file gets a new one)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image

from ..fileio import atomic_write_bytes

THUMB_SIZE = 256


class Thumbnails:
    def __init__(self, folder: Path, size: int = THUMB_SIZE) -> None:
        self.folder = Path(folder)
        self.size = size

    def key(self, path: str, size: int, mtime: float) -> str:
        return hashlib.sha1(f"{path}\0{size}\0{mtime!r}\0{self.size}".encode()).hexdigest()

    def get(self, path: str) -> Path | None:
        """The thumbnail file for an image (made now if missing); None when the image cannot be read."""
        try:
            stat = os.stat(path)
        except OSError:
            return None
        key = self.key(path, stat.st_size, stat.st_mtime)
        target = self.folder / key[:2] / f"{key}.webp"
        if target.is_file():
            return target
        try:
            with Image.open(path) as image:
                image.draft("RGB", (self.size, self.size))  # JPEG: decode at a reduced scale
                image.thumbnail((self.size, self.size))
                picture = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None
        import io

        buffer = io.BytesIO()
        picture.save(buffer, "WEBP", quality=80, method=4)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, buffer.getvalue())
        return target

    def cleanup(self, keep: set[str]) -> int:
        """Delete cached thumbnails whose key is not in `keep` (images gone, changed, or out of the index)."""
        removed = 0
        if not self.folder.is_dir():
            return 0
        for bucket in self.folder.iterdir():
            if not bucket.is_dir():
                continue
            for thumb in bucket.glob("*.webp"):
                if thumb.stem not in keep:
                    try:
                        thumb.unlink()
                        removed += 1
                    except OSError:
                        pass
        return removed
