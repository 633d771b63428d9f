"""The history database: one SQLite row per finished job, paged newest first by a (finished_at, id) cursor.

The gallery's conventions (webui/sqlite_file.py, shared with webui/gallery/index.py): WAL journaling with synchronous=NORMAL, one
connection per thread, writes in one `BEGIN IMMEDIATE` transaction each, so a process killed in the
middle of a write loses at most that transaction and the file always opens clean. A file of its
own beside gallery.sqlite (data dir/history.sqlite): the gallery index may be thrown away and
rebuilt from the images, the history cannot.

Paging is by keyset, not OFFSET: `before` is the last row of the previous page, so page N costs
the same as page 1 however many jobs there are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, NamedTuple

from ..sqlite_file import SqliteFile
from .record import HistoryRecord

SCHEMA_VERSION = 2  # 2: worker, retried (webui/workers)
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL DEFAULT '',
    owner TEXT,
    description TEXT NOT NULL DEFAULT '',
    error TEXT,
    submitted_at REAL NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL NOT NULL DEFAULT 0,
    request TEXT NOT NULL DEFAULT '{}',
    inputs_dropped INTEGER NOT NULL DEFAULT 0,
    api_type TEXT,
    api_body TEXT,
    images TEXT NOT NULL DEFAULT '[]',
    infotexts TEXT NOT NULL DEFAULT '[]',
    seeds TEXT NOT NULL DEFAULT '[]',
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    rerun_of TEXT,
    worker TEXT,
    retried TEXT
);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at, id);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, finished_at, id);
"""
ADDED_COLUMNS = (("worker", "TEXT"), ("retried", "TEXT"))  # since version 1, each NULL in older rows


class Cursor(NamedTuple):
    """Where a page ends: the (finished_at, id) of its last job; the next page starts below it."""

    finished_at: float
    id: str

    @classmethod
    def parse(cls, text: str) -> "Cursor":
        """From `HistoryRecord.cursor` ("<finished_at>~<id>"); ValueError when it is not one."""
        stamp, sep, job_id = str(text).partition("~")
        if not sep or not job_id:
            raise ValueError("before must be the next_before of an earlier page")
        return cls(float(stamp), job_id)


class HistoryStore(SqliteFile):
    """history.sqlite; safe from many threads (one writer at a time, readers alongside)."""

    what = "the job history"

    def __init__(self, file: Path) -> None:
        super().__init__(file)
        with self._write_lock:
            db = self._db()
            db.executescript(SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for column, kind in ADDED_COLUMNS:  # a file from an older Easel: the columns added since
                if column not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def add(self, records: Iterable[HistoryRecord]) -> int:
        """Insert (or replace, by id) these records in one transaction."""
        rows = [r.row() for r in records]
        if not rows:
            return 0
        columns = ", ".join(HistoryRecord.COLUMNS)
        marks = ", ".join("?" for _ in HistoryRecord.COLUMNS)
        self._write(lambda db: db.executemany(f"INSERT OR REPLACE INTO jobs ({columns}) VALUES ({marks})", rows))
        return len(rows)

    def get(self, job_id: str) -> HistoryRecord | None:
        row = self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return HistoryRecord.from_row(row) if row else None

    def page(self, limit: int, before: Cursor | None = None, state: str | None = None) -> list[HistoryRecord]:
        """Up to `limit` jobs, newest first, finished before `before`, in `state` when given."""
        clauses, args = [], []
        if state:
            clauses.append("state = ?")
            args.append(state)
        if before is not None:
            clauses.append("(finished_at, id) < (?, ?)")
            args += [before.finished_at, before.id]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db().execute(f"SELECT * FROM jobs {where} ORDER BY finished_at DESC, id DESC LIMIT ?",
                                  (*args, max(1, int(limit))))
        return [HistoryRecord.from_row(r) for r in rows]

    def count(self) -> int:
        return self._db().execute("SELECT COUNT(*) FROM jobs").fetchone()[0]

    def integrity(self) -> str:
        return self._db().execute("PRAGMA integrity_check").fetchone()[0]
