"""The gallery as the app holds it: the index, a background indexer thread, thumbnails and the trash.

Saving an image only appends its path to a queue (`image_saved`, called on the job worker); one
daemon thread, started by the app (never on import), writes those rows and runs the incremental
scans of outputs/ and the folders the user added. A restart scans again, so whatever a kill cut
short (rows not yet committed, a move to the trash half done) is repaired from the files.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from .index import GalleryIndex, Query
from .scanner import ScanProgress, record_from_saved, scan_folder
from .thumbnails import Thumbnails

log = logging.getLogger(__name__)


class GalleryError(ValueError):
    user_facing = True


class Gallery:
    def __init__(self, data_dir: Path, outputs_dir: Path, cache_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.outputs_dir = Path(outputs_dir).resolve()
        self.index = GalleryIndex(self.data_dir / "gallery.sqlite")
        self.thumbnails = Thumbnails(Path(cache_dir or self.data_dir / "cache") / "gallery-thumbs")
        self.trash_dir = (self.data_dir / "gallery-trash").resolve()
        self.progress = ScanProgress()
        self._saved: deque[tuple[str, str, tuple[int, int] | None, str | None]] = deque()
        self._scan_asked = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---- the background indexer ----------------------------------------------------------------

    def start(self, scan: bool = True) -> None:
        """Start the indexer thread (idempotent); `scan`: repair the index from the folders now."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="easel-gallery", daemon=True)
                self._thread.start()
        if scan:
            self.scan()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self.index.close()

    def scan(self) -> None:
        """Ask for an incremental scan of every folder (outputs and the added ones)."""
        with self._lock:
            self._idle.clear()
            self._scan_asked.set()
        self._wake.set()

    def image_saved(self, path: str, image: Any = None, infotext: str = "", job_id: str | None = None) -> None:
        """A listener on saved images (the job worker calls it): queue the path, return at once."""
        size = getattr(image, "size", None)
        with self._lock:
            self._idle.clear()
            self._saved.append((str(path), infotext or "", tuple(size) if size else None, job_id))
        self._wake.set()
        if self._thread is None:  # never started (a CLI run): nothing will index it, keep nothing queued
            self._saved.clear()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Tests and the benchmark: until nothing is queued or scanning."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self._drain_saved()
                if self._scan_asked.is_set():
                    self._scan_asked.clear()
                    self._scan_all()
                    self._drain_saved()
            except Exception:
                log.exception("the gallery indexer failed; it will try again on the next image or scan")
            with self._lock:
                if not self._saved and not self._scan_asked.is_set():
                    self._idle.set()

    def _drain_saved(self) -> bool:
        records = []
        while self._saved:
            path, infotext, size, job_id = self._saved.popleft()
            resolved = str(Path(path).resolve())
            records.append(record_from_saved(resolved, infotext, size, job_id, self._root_of(resolved)))
        if records:
            self.index.upsert(records)
        return self._stop.is_set()

    def _root_of(self, path: str) -> str:
        for root in self.roots():
            if path.startswith(str(root) + os.sep):
                return str(root)
        return str(Path(path).parent)

    def roots(self) -> list[Path]:
        roots = [self.outputs_dir]
        for folder in self.index.folders():
            path = Path(folder)
            if path not in roots:
                roots.append(path)
        return roots

    def _scan_all(self) -> None:
        self.progress = progress = ScanProgress(state="scanning")
        started = time.monotonic()
        self._repair_trash()
        for root in self.roots():
            if self._stop.is_set():
                return
            progress.folder = str(root)
            if not root.is_dir():
                continue
            scan_folder(root, self.index.known(str(root)), progress, self.index.upsert, self.index.forget,
                        between=self._drain_saved, skip=(self.trash_dir,))
        progress.state, progress.folder = "done", ""
        progress.thumbnails_removed = self._clean_thumbnails()
        log.info("gallery scan: %d file(s), %d indexed, %d removed in %.1fs", progress.total, progress.indexed,
                 progress.removed, time.monotonic() - started)

    def _clean_thumbnails(self) -> int:
        """After a full scan: drop cached thumbnails of images that are gone, changed, or no longer indexed."""
        keep = {self.thumbnails.key(path, size, mtime) for path, size, mtime in self.index.files()}
        return self.thumbnails.cleanup(keep)

    def _repair_trash(self) -> None:
        """Finish or undo a move to the trash that a kill cut short: the file decides."""
        for row in self.index.trashed():
            trash_path = row.get("trash_path")
            if trash_path and Path(trash_path).is_file():
                continue
            if Path(row["path"]).is_file():
                self.index.mark_trashed(row["id"], None)  # never moved: back in the gallery
            else:
                self.index.delete_row(row["id"])          # gone from both places

    # ---- actions --------------------------------------------------------------------------------

    def search(self, query: Query) -> tuple[list[dict[str, Any]], int]:
        return self.index.search(query)

    def record(self, image_id: int) -> dict[str, Any]:
        row = self.index.get(image_id)
        if row is None:
            raise GalleryError(f"no image with id {image_id} in the gallery")
        return row

    def file_of(self, image_id: int) -> Path | None:
        row = self.index.get(image_id)
        if row is None:
            return None
        path = Path(row["trash_path"] if row.get("trashed_at") else row["path"])
        return path if path.is_file() else None

    def thumbnail(self, image_id: int) -> Path | None:
        path = self.file_of(image_id)
        return self.thumbnails.get(str(path)) if path is not None else None

    def trash(self, image_id: int) -> None:
        """Move the file into <data>/gallery-trash (recoverable with restore); the row remembers where."""
        row = self.record(image_id)
        if row.get("trashed_at"):
            return
        source = Path(row["path"])
        target = self.trash_dir / f"{row['id']}-{source.name}"
        self.index.mark_trashed(row["id"], str(target))  # first the intent: a kill before the move is undone at start
        try:
            self.trash_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), str(target))
        except OSError as exc:
            self.index.mark_trashed(row["id"], None)
            raise GalleryError(f"could not move {source.name} to the trash: {exc}") from exc

    def restore(self, image_id: int) -> str:
        row = self.record(image_id)
        if not row.get("trashed_at"):
            return row["path"]
        source, target = Path(row["trash_path"]), Path(row["path"])
        if target.exists():
            raise GalleryError(f"{target} exists again; not overwriting it")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), str(target))
        except OSError as exc:
            raise GalleryError(f"could not restore {target.name}: {exc}") from exc
        self.index.mark_trashed(row["id"], None)
        return str(target)

    BULK_ACTIONS = ("favourite", "unfavourite", "board", "unboard", "trash", "restore")

    def bulk(self, image_ids: list[int], action: str, board: str | None = None) -> dict[str, Any]:
        """One action on many images (select-many); trash and restore go one file at a time and report failures."""
        ids = [int(i) for i in image_ids]
        if action not in self.BULK_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(self.BULK_ACTIONS)}")
        failed: dict[int, str] = {}
        if action in ("favourite", "unfavourite"):
            for image_id in ids:
                self.index.set_favourite(image_id, action == "favourite")
        elif action in ("board", "unboard"):
            if action == "board" and not (board or "").strip():
                raise ValueError("name the board to move the images to")
            self.index.set_board(ids, board if action == "board" else None)
        else:
            for image_id in ids:
                try:
                    self.trash(image_id) if action == "trash" else self.restore(image_id)
                except GalleryError as exc:
                    failed[image_id] = str(exc)
        return {"done": len(ids) - len(failed), "failed": failed}

    def add_folder(self, folder: str) -> str:
        path = Path(folder).expanduser()
        if not path.is_absolute() or not path.is_dir():
            raise GalleryError(f"{folder} is not a folder (give its absolute path)")
        resolved = str(path.resolve())
        self.index.add_folder(resolved)
        self.scan()
        return resolved

    def remove_folder(self, folder: str) -> None:
        """Stop indexing an added folder: its rows leave the index (its files stay where they are)."""
        if folder not in self.index.folders():
            raise GalleryError(f"{folder} is not one of the added folders")
        self.index.remove_folder(folder)
        self.scan()  # and the thumbnails of its images go with the next scan's clean-up

    def empty_trash(self) -> int:
        """Delete the images in the trash for good. The file goes first, then the row: a kill in between
        leaves a row whose file is gone, which the next scan's trash repair removes."""
        gone = []
        for row in self.index.trashed():
            trash_path = row.get("trash_path")
            if trash_path:
                path = Path(trash_path)
                if path.resolve().parent != self.trash_dir:  # only ever a file of our own trash folder
                    continue
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("could not delete %s from the trash: %s", path, exc)
                    continue
            gone.append(row["id"])
        self.index.delete_rows(gone)
        self.scan()
        return len(gone)

    def status(self) -> dict[str, Any]:
        return {"images": self.index.count(), "scan": self.progress.as_dict(),
                "folders": [str(p) for p in self.roots()], "queued": len(self._saved)}
