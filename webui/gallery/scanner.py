"""Reading an image file into an index row, and the incremental scan of a folder (size + mtime)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from ..core.infotext import Infotext, parse_infotext
from ..paths import walk_tree
from .index import ImageRecord

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
BATCH = 200   # rows per transaction: what a kill can lose, and how often readers see progress


def _int(value: str | None) -> int | None:
    try:
        return int(float(str(value).strip()))
    except (TypeError, ValueError):
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        return None


def record_from_info(path: str, info: Infotext | None, tool: str, size: tuple[int, int] | None,
                     stat: os.stat_result | None, root: str = "", job_id: str | None = None) -> ImageRecord:
    params = dict(info.params) if info else {}
    width = height = None
    if size:
        width, height = size
    elif "Size" in params:
        parts = params["Size"].lower().split("x")
        if len(parts) == 2:
            width, height = _int(parts[0]), _int(parts[1])
    return ImageRecord(
        path=path, root=root, size=stat.st_size if stat else 0, mtime=stat.st_mtime if stat else 0.0,
        prompt=info.prompt if info else "", negative_prompt=info.negative_prompt if info else "", params=params,
        tool=tool, model=params.get("Model") or None, model_hash=params.get("Model hash") or None,
        sampler=params.get("Sampler") or None, seed=_int(params.get("Seed")), width=width, height=height,
        steps=_int(params.get("Steps")), cfg=_float(params.get("CFG scale")),
        created=stat.st_mtime if stat else 0.0, job_id=job_id)


def read_record(path: Path, root: str = "", stat: os.stat_result | None = None) -> ImageRecord | None:
    """The row for one file, from the metadata any supported tool wrote (None: not a readable image)."""
    from ..pnginfo import read_generation_info  # imports the features that paste img2img fields

    try:
        stat = stat or path.stat()
        with Image.open(path) as image:
            size = image.size
            info = read_generation_info(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return record_from_info(str(path), info.info, info.tool, size, stat, root)


def record_from_saved(path: str, infotext: str, size: tuple[int, int] | None, job_id: str | None,
                      root: str) -> ImageRecord:
    """The row for an image Easel just saved: its infotext is in hand, no need to read the file back."""
    try:
        stat = os.stat(path)
    except OSError:
        stat = None
    info = parse_infotext(infotext) if infotext else None
    return record_from_info(path, info, "automatic1111" if info else "", size, stat, root, job_id)


def walk_images(root: Path, skip: tuple[Path, ...] = ()) -> Iterator[tuple[str, os.stat_result]]:
    """(path, stat) of every image under root; hidden files and folders (atomic writes' .tmp) are left out,
    and links to folders are not followed (a link back up would loop)."""
    skipped = {str(p) for p in skip}
    for entry, is_dir in walk_tree(root, lambda entry: entry.path not in skipped, follow_symlinks=False):
        if is_dir or not entry.name.lower().endswith(SUFFIXES):
            continue
        try:
            yield entry.path, entry.stat()
        except OSError:
            continue


@dataclass
class ScanProgress:
    state: str = "idle"        # idle, scanning, done
    folder: str = ""
    seen: int = 0              # files looked at in this scan
    total: int = 0             # files found (known once a folder is listed)
    indexed: int = 0           # files read and written
    removed: int = 0           # rows of files that are gone
    thumbnails_removed: int = 0  # cached thumbnails of images gone or changed, deleted after the scan

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def scan_folder(root: Path, known: dict[str, tuple[int, float]], progress: ScanProgress,
                write: Callable[[list[ImageRecord]], None], forget: Callable[[list[str]], None],
                between: Callable[[], bool] = lambda: False, skip: tuple[Path, ...] = ()) -> None:
    """Index new and changed files under root (size or mtime differ), forget rows of files that are gone.

    `between` runs between batches (the indexer serves freshly saved images there); True stops the scan."""
    files = list(walk_images(root, skip))
    progress.total += len(files)
    present = set()
    batch: list[ImageRecord] = []
    root_key = str(root)
    for path, stat in files:
        present.add(path)
        progress.seen += 1
        if known.get(path) == (stat.st_size, stat.st_mtime):
            continue
        record = read_record(Path(path), root_key, stat)
        if record is not None:
            batch.append(record)
        if len(batch) >= BATCH:
            write(batch)
            progress.indexed += len(batch)
            batch = []
            if between():
                return
    if batch:
        write(batch)
        progress.indexed += len(batch)
    gone = [p for p in known if p not in present]
    if gone:
        forget(gone)
        progress.removed += len(gone)
