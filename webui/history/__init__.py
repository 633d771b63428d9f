"""Job history that survives restarts: every finished, failed, interrupted or cancelled generation in SQLite.

store.py (the database), record.py (a job -> a row, without its input images), service.py (the
writer thread the queue's finish listener feeds, paging live + stored jobs, re-running a past job).
Importing this package starts nothing: the app calls `JobHistory.start()`.
"""
from .record import HistoryRecord, plain_request
from .service import JobHistory
from .store import Cursor, HistoryStore

__all__ = ["Cursor", "HistoryRecord", "HistoryStore", "JobHistory", "plain_request"]
