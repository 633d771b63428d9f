"""The history as the app holds it: records a job when it ends, off the worker's critical path.

The queue's finish listener (`job_finished`, on the worker thread) only takes a snapshot of the
job (a few attribute reads) and appends it to a queue; one daemon thread, started by the app,
writes what is queued in one transaction. Until written, a record is served from memory, so a
job that just ended is never missing from a page. `stop()` writes what is left before it returns.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

from ..core.jobs import Job
from ..core.request import GenerationRequest
from .record import HistoryRecord, plain_request, snapshot
from .store import Cursor, HistoryStore

log = logging.getLogger(__name__)
MARK = "history_request"  # job.meta key: the plain request, set at submit; only such jobs are recorded


class InputsNotKept(ValueError):
    """A past job whose input images were not kept cannot be run again as it was."""

    user_facing = True


class JobHistory:
    def __init__(self, data_dir: Path) -> None:
        self.store = HistoryStore(Path(data_dir) / "history.sqlite")
        self._pending: OrderedDict[str, HistoryRecord] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None

    # ---- recording ------------------------------------------------------------------------------

    @staticmethod
    def submitted(job: Job, request: GenerationRequest) -> None:
        """Mark a generation job for the history, with its request as JSON (no input images)."""
        job.meta[MARK] = plain_request(request)

    def job_finished(self, job: Job) -> None:
        """The queue's finish listener: queue a snapshot of a marked job, return at once."""
        if MARK not in job.meta:
            return
        record = snapshot(job)
        with self._lock:
            self._idle.clear()
            self._pending[record.id] = record
        self._wake.set()

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="easel-history", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then close the database."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._flush()  # never started (a CLI run), or the thread ended first: write here
        self.store.close()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Tests and benchmarks: until every finished job is written."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            records = list(self._pending.values())
        if records:
            try:
                self.store.add(_jsonable(r) for r in records)
            except Exception:
                log.exception("could not write %d job(s) to the history; trying again", len(records))
                return
            with self._lock:
                for record in records:
                    if self._pending.get(record.id) is record:
                        del self._pending[record.id]
        with self._lock:
            if not self._pending:
                self._idle.set()

    # ---- reading --------------------------------------------------------------------------------

    def get(self, job_id: str) -> HistoryRecord | None:
        with self._lock:
            record = self._pending.get(job_id)
        return _jsonable(record) if record is not None else self.store.get(job_id)

    def page(self, limit: int, before: Cursor | None = None, state: str | None = None,
             live: Iterable[Job] = ()) -> tuple[list[HistoryRecord], str | None]:
        """(up to `limit` finished jobs newest first, the cursor of the next page or None).

        `live`: the queue's finished jobs still in memory (newer than anything written, or not yet
        written); merged with the stored ones, each job once."""
        candidates: dict[str, HistoryRecord] = {}
        with self._lock:
            unwritten = list(self._pending.values())
        for record in [*(snapshot(j) for j in live if MARK in j.meta and j.state.finished), *unwritten]:
            candidates.setdefault(record.id, record)
        candidates = {i: r for i, r in candidates.items() if _after(r, before) and (not state or r.state == state)}
        for record in self.store.page(limit + 1, before, state):
            candidates.setdefault(record.id, record)
        ordered = sorted(candidates.values(), key=lambda r: (r.finished_at, r.id), reverse=True)
        page = ordered[:limit]
        return page, (page[-1].cursor if len(ordered) > limit and page else None)

    # ---- running again --------------------------------------------------------------------------

    @staticmethod
    def request_of(record: HistoryRecord) -> GenerationRequest:
        """The request to run a past job again (ValidationError when it no longer validates)."""
        if record.inputs_dropped:
            raise InputsNotKept(f"job {record.id} had input images, which the history does not keep; "
                                "open it and send its parameters to img2img with a new image instead")
        if not record.request:
            raise InputsNotKept(f"job {record.id} has no stored request to run again")
        return GenerationRequest.from_dict(dict(record.request))


def _after(record: HistoryRecord, before: Cursor | None) -> bool:
    return before is None or (record.finished_at, record.id) < (before.finished_at, before.id)


def _jsonable(record: HistoryRecord) -> HistoryRecord:
    """The API body (a pydantic model in memory) as JSON, for the database."""
    body: Any = record.api_body
    if body is not None and hasattr(body, "model_dump"):
        return dataclasses.replace(record, api_body=body.model_dump(mode="json"))
    return record
