"""Queued generations kept on disk, so a restart (or a crash) loses none of them.

AUTOMATIC1111 has no queue, and ComfyUI and SwarmUI forget theirs on restart; Easel promises
"nothing is lost", so every queued txt2img/img2img request is written to
`<data dir>/queue/<id>/request.json` when it is submitted, with each image in it (init
images, masks, ControlNet and identity photos) as a PNG file beside it, and removed when the
job ends. A job that was waiting or running when the process stopped (Ctrl+C, a crash,
kill -9) is therefore still there at the next start, and the server queues it again, in the
original order, with its id and owner, and saves its images (the client that would have
received them is gone). A job that was started twice and never finished is not tried a
third time (it may be what crashed the process): it is moved to `queue/failed/` with a log
line.

Only values JSON can hold, PIL images and numpy arrays are stored; a request carrying
anything else (an extension's object) runs as usual but is not kept, and the log says so.
"""
from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..fileio import atomic_write_text
from .request import GenerationRequest

log = logging.getLogger(__name__)
IMAGE_KEY = "__easel_image__"
ARRAY_KEY = "__easel_array__"
REQUEST_FILE = "request.json"
MAX_ATTEMPTS = 2  # started this often without finishing: given up (moved to failed/)
PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


class NotStorable(TypeError):
    """A request holds a value that cannot be written to disk faithfully."""


@dataclass
class StoredJob:
    """One queued generation read back from disk."""

    id: str
    request: GenerationRequest
    owner: str | None = None
    submitted_at: float = 0.0
    attempts: int = 0
    folder: Path = field(default=Path("."), repr=False)


class _Writer:
    """Turns a request's values into JSON, writing images and arrays as files into `folder`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0

    def encode(self, value: Any) -> Any:
        if value is None or isinstance(value, (str, bool, int)):
            return value
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise NotStorable("a NaN or infinite number")
            return value
        if isinstance(value, Image.Image):
            self.count += 1
            name = f"image-{self.count}.png"
            image = value if value.mode in PNG_MODES else value.convert("RGBA")
            image.save(self.folder / name, format="PNG")
            return {IMAGE_KEY: name}
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise NotStorable("an array of Python objects")
            self.count += 1
            name = f"array-{self.count}.npy"
            np.save(self.folder / name, value, allow_pickle=False)
            return {ARRAY_KEY: name}
        if isinstance(value, (list, tuple)):
            return [self.encode(item) for item in value]
        if isinstance(value, dict):
            if not all(isinstance(key, str) for key in value):
                raise NotStorable("an object with non-text keys")
            if IMAGE_KEY in value or ARRAY_KEY in value:
                raise NotStorable(f"an object using the reserved key {IMAGE_KEY} or {ARRAY_KEY}")
            return {key: self.encode(item) for key, item in value.items()}
        raise NotStorable(f"a {type(value).__name__}")


def _decode(value: Any, folder: Path) -> Any:
    if isinstance(value, list):
        return [_decode(item, folder) for item in value]
    if isinstance(value, dict):
        if set(value) == {IMAGE_KEY}:
            with Image.open(_inside(folder, value[IMAGE_KEY])) as image:
                image.load()
                return image.copy()
        if set(value) == {ARRAY_KEY}:
            return np.load(_inside(folder, value[ARRAY_KEY]), allow_pickle=False)
        return {key: _decode(item, folder) for key, item in value.items()}
    return value


def _inside(folder: Path, name: Any) -> Path:
    if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"bad file name {name!r}")
    return folder / name


class PendingJobStore:
    """The `queue/` folder: one sub-folder per queued generation (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()

    def _job_folder(self, job_id: str) -> Path:
        if not job_id or any(c in job_id for c in "/\\\x00") or job_id.startswith("."):
            raise NotStorable(f"a job id unfit for a folder name ({job_id!r})")
        return self.folder / job_id

    def save(self, job_id: str, request: GenerationRequest, owner: str | None, submitted_at: float) -> bool:
        """Write the request (written whole or not at all); False, with a log line, when it cannot be stored."""
        try:
            target = self._job_folder(job_id)
            staging = self.folder / f".{job_id}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            writer = _Writer(staging)
            values = {name: writer.encode(getattr(request, name)) for name in GenerationRequest.field_names()}
            record = {"id": job_id, "owner": owner, "submitted_at": submitted_at, "attempts": 0, "request": values}
            atomic_write_text(staging / REQUEST_FILE, json.dumps(record, ensure_ascii=False))
            with self._lock:
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
            return True
        except (NotStorable, OSError, ValueError) as exc:
            shutil.rmtree(self.folder / f".{job_id}.tmp", ignore_errors=True)
            log.info("job %s is not kept across restarts: its request holds %s", job_id, exc)
            return False

    def started(self, job_id: str) -> None:
        """Count a start, so a job that keeps crashing the process is not tried for ever."""
        with self._lock:
            path = self.folder / job_id / REQUEST_FILE
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                record["attempts"] = int(record.get("attempts", 0)) + 1
                atomic_write_text(path, json.dumps(record, ensure_ascii=False))
            except (OSError, ValueError):
                pass

    def remove(self, job_id: str) -> None:
        with self._lock:
            shutil.rmtree(self.folder / job_id, ignore_errors=True)

    def load(self) -> list[StoredJob]:
        """Every stored job, oldest first; unreadable ones and ones tried MAX_ATTEMPTS times go to failed/."""
        if not self.folder.is_dir():
            return []
        for leftover in self.folder.glob(".*.tmp"):  # a save cut short: the job never reached the queue
            shutil.rmtree(leftover, ignore_errors=True)
        found: list[StoredJob] = []
        for folder in sorted(p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                             and p.name != "failed"):
            try:
                record = json.loads((folder / REQUEST_FILE).read_text(encoding="utf-8"))
                request = GenerationRequest.from_dict(_decode(record["request"], folder))
                stored = StoredJob(str(record["id"]), request, record.get("owner"),
                                   float(record.get("submitted_at", 0)), int(record.get("attempts", 0)), folder)
            except Exception as exc:  # noqa: BLE001 - anything unreadable is set aside, never fatal
                self._give_up(folder, f"it cannot be read ({exc})")
                continue
            if stored.attempts >= MAX_ATTEMPTS:
                self._give_up(folder, f"it was started {stored.attempts} times and never finished")
                continue
            found.append(stored)
        return sorted(found, key=lambda s: s.submitted_at)

    def _give_up(self, folder: Path, why: str) -> None:
        failed = self.folder / "failed"
        failed.mkdir(exist_ok=True)
        target = failed / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            folder.rename(target)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            target = None
        log.warning("queued job %s is not restored: %s%s", folder.name, why,
                    f"; its request is kept in {target}" if target else "")
