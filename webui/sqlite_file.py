"""One SQLite file shared by many threads, written crash-safely: the gallery index and the job history.

WAL journaling with synchronous=NORMAL, one connection per thread (readers never wait for the writer),
and every write in one `BEGIN IMMEDIATE` transaction under a lock, so a process killed in the middle
of a write loses at most that transaction and the file always opens clean.
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable


class SqliteFile:
    """Per-thread connections to `file` and a transactional `_write`; subclasses add the schema and queries."""

    what = "the database"               # named in the error when a closed file is used
    pragmas: tuple[str, ...] = ()       # extra per-connection PRAGMAs

    def __init__(self, file: Path) -> None:
        self.file = Path(file)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            if self._closed:
                raise RuntimeError(f"{self.what} is closed")
            db = sqlite3.connect(self.file, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses at most the last commits, never the file
            for pragma in self.pragmas:
                db.execute(f"PRAGMA {pragma}")
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            for db in self._connections:
                try:
                    db.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()

    def _write(self, statements: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `statements(db)` in one transaction (all or nothing, also when the process dies in it)."""
        with self._write_lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = statements(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result
