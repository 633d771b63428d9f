"""Finished jobs keep their images on disk, not in memory.

The queue keeps the last 200 finished jobs so their results can be fetched again
(/easel/v1/jobs/<id>/result, the UI's gallery). Kept as PIL images, 20 large upscales
would hold gigabytes for as long as the history lasts. Instead, as soon as a job finishes
(and its waiters have been woken with the images still in memory), each image is written
once to `cache/job-results/<job number>/<n>.png` and `result.images` becomes an `ArchivedImages`
sequence that reads them back on access: readers index, iterate and count it as before.
A job's files go when it leaves the history; the folder is emptied at start and on close.
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

from PIL import Image

log = logging.getLogger(__name__)


class ArchivedImages(Sequence):
    """A read-only list of images stored as PNG files; each access decodes a fresh copy."""

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> Image.Image: ...

    @overload
    def __getitem__(self, index: slice) -> list[Image.Image]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._load(p) for p in self.paths[index]]
        return self._load(self.paths[index])

    @staticmethod
    def _load(path: Path) -> Image.Image:
        with Image.open(path) as image:
            image.load()
            return image

    def __repr__(self) -> str:
        return f"ArchivedImages({len(self.paths)} files)"


class ResultArchive:
    """Moves finished jobs' images to files under `folder` (one subfolder per job)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.clear()

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def keep(self, job: Any) -> None:
        """Replace the job's in-memory result images with files; leaves them in memory if they cannot be written."""
        result = job.result
        images = getattr(result, "images", None)
        if not isinstance(images, list) or not images or not all(isinstance(i, Image.Image) for i in images):
            return
        target = self._folder_of(job)
        paths: list[Path] = []
        try:
            target.mkdir(parents=True, exist_ok=True)
            for index, image in enumerate(images):
                path = target / f"{index:05}.png"
                image.save(path, "PNG", compress_level=1)
                paths.append(path)
        except (OSError, ValueError, KeyError) as exc:  # e.g. a mode PNG cannot store, a full disk
            log.warning("job %s: results stay in memory (%s)", job.id, exc)
            shutil.rmtree(target, ignore_errors=True)
            return
        result.images = ArchivedImages(paths)

    def drop(self, job: Any) -> None:
        shutil.rmtree(self._folder_of(job), ignore_errors=True)

    def _folder_of(self, job: Any) -> Path:
        # the queue's sequence number, not the id: a client may choose the id (force_task_id)
        return self.folder / f"{job.sequence:08}"
