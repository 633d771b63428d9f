"""The job history's parts without a server (issue 20): the request as JSON without its input images, the
store's keyset paging over 10,000 jobs, and a process killed by SIGKILL in the middle of writing.

The server tests (a real restart, the API, the queue panel) are in test_history_server.py.
"""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

from PIL import Image

from conftest import ROOT
from webui.core.jobs import Job, JobState
from webui.core.request import GenerationRequest
from webui.history import Cursor, HistoryRecord, HistoryStore, JobHistory, plain_request
from webui.history.service import MARK, InputsNotKept

import pytest


def record(i: int, state: str = "done", finished_at: float | None = None) -> HistoryRecord:
    return HistoryRecord(id=f"job-{i:06}", state=state, description=f"prompt {i}", owner="api",
                         submitted_at=1000.0 + i, finished_at=1000.0 + i if finished_at is None else finished_at,
                         request={"prompt": f"prompt {i}", "seed": i}, infotexts=[f"prompt {i}\nSteps: 2"],
                         images=[f"/nowhere/{i}.png"], seeds=[i])


def test_the_request_is_kept_as_json_without_its_input_images():
    picture = Image.new("RGB", (8, 8))
    plain, dropped = plain_request(GenerationRequest(prompt="a cat", seed=7, steps=3))
    assert not dropped and plain["prompt"] == "a cat" and plain["seed"] == 7
    assert GenerationRequest.from_dict(plain) == GenerationRequest(prompt="a cat", seed=7, steps=3)
    edit = GenerationRequest(prompt="x", mode="img2img", init_images=[picture], mask=Image.new("L", (8, 8)),
                             alwayson_scripts={"controlnet": {"args": [{"image": picture, "weight": 0.5}]}})
    plain, dropped = plain_request(edit)
    assert dropped and plain["init_images"] == [] and plain["mask"] is None
    assert plain["alwayson_scripts"] == {"controlnet": {"args": [{"image": None, "weight": 0.5}]}}
    with pytest.raises(InputsNotKept, match="input images"):
        JobHistory.request_of(HistoryRecord(id="j", state="done", request=plain, inputs_dropped=True))


def test_ten_thousand_jobs_page_by_cursor(tmp_path):
    store = HistoryStore(tmp_path / "history.sqlite")
    started = time.perf_counter()
    store.add(record(i, "failed" if i % 10 == 0 else "done", finished_at=1000.0 + i // 2) for i in range(10_000))
    written = time.perf_counter() - started
    seen, cursor, pages, slowest = [], None, 0, 0.0
    while True:
        started = time.perf_counter()
        page = store.page(200, cursor)
        slowest = max(slowest, time.perf_counter() - started)
        if not page:
            break
        seen += [r.id for r in page]
        cursor, pages = Cursor.parse(page[-1].cursor), pages + 1
    # every job once, newest first (ties on finished_at broken by id), whatever the page
    assert len(seen) == len(set(seen)) == 10_000 and pages == 50
    expected = sorted((record(i, finished_at=1000.0 + i // 2) for i in range(10_000)),
                      key=lambda r: (r.finished_at, r.id), reverse=True)
    assert seen == [r.id for r in expected]
    failed = store.page(5000, state="failed")
    assert len(failed) == 1000 and {r.state for r in failed} == {"failed"}
    back = store.get("job-000042")
    assert back.request == {"prompt": "prompt 42", "seed": 42} and back.seeds == [42] and back.api_body is None
    print(f"\n10,000 jobs written in {written * 1000:.0f} ms; slowest page of 200: {slowest * 1000:.1f} ms")
    assert slowest < 0.25  # about 2-5 ms here; generous for a busy machine
    with pytest.raises(ValueError):
        Cursor.parse("not a cursor")


WRITER = """
import sys
from webui.history import HistoryRecord, HistoryStore
store = HistoryStore(sys.argv[1])
i = 0
while True:
    store.add(HistoryRecord(id=f"k{i}-{j}", state="done", finished_at=float(i), request={"prompt": "x" * 2000})
              for j in range(50))
    i += 1
"""


def test_a_kill_in_the_middle_of_writing_leaves_the_database_usable(tmp_path):
    file = tmp_path / "history.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(file)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with sqlite3.connect(file, timeout=5) as db:
                    if db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] >= 500:
                        break
            except sqlite3.OperationalError:
                pass
            time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)  # while it writes, batch after batch
        writer.wait(10)
    finally:
        if writer.poll() is None:
            writer.kill()
    store = HistoryStore(file)
    assert store.integrity() == "ok"
    count = store.count()
    assert count >= 500 and count % 50 == 0  # whole transactions only
    store.add([record(1)])
    assert store.count() == count + 1 and store.get("job-000001").description == "prompt 1"
    assert len(store.page(10)) == 10


def test_unwritten_and_live_jobs_page_with_the_stored_ones(tmp_path):
    """A job that just ended is listed before the writer thread stored it, and only once after."""
    history = JobHistory(tmp_path)
    history.store.add([record(i) for i in range(5)])
    job = Job(run=lambda job: None, description="fresh")
    job.meta[MARK] = plain_request(GenerationRequest(prompt="fresh"))
    job.state, job.finished_at = JobState.DONE, 2000.0
    history.job_finished(job)  # not started: nothing written yet
    page, more = history.page(3, live=[job])
    assert [r.id for r in page] == [job.id, "job-000004", "job-000003"] and more
    assert history.get(job.id).request["prompt"] == "fresh"
    history.start()
    assert history.wait_idle(10)
    assert history.store.get(job.id).state == "done"
    page, more = history.page(10, live=[job])
    assert [r.id for r in page].count(job.id) == 1 and len(page) == 6 and more is None
    page, _ = history.page(10, before=Cursor.parse(page[2].cursor))
    assert [r.id for r in page] == ["job-000002", "job-000001", "job-000000"]
    history.stop()


def test_a_history_file_from_before_workers_gains_the_worker_columns(tmp_path):
    """Version 1 had no worker/retried: its rows read back with None, new rows keep where they ran."""
    from webui.history.store import SCHEMA

    old_schema = SCHEMA.replace(",\n    worker TEXT,\n    retried TEXT", "")
    assert "worker" not in old_schema
    with sqlite3.connect(tmp_path / "history.sqlite") as db:
        db.executescript(old_schema)
        db.execute("INSERT INTO jobs (id, state, finished_at) VALUES ('old', 'done', 1.0)")
    store = HistoryStore(tmp_path / "history.sqlite")
    try:
        assert store.get("old").worker is None and store.get("old").retried is None
        moved = HistoryRecord(id="new", state="done", finished_at=2.0, worker="w1-cpu",
                              retried="worker w0-cpu was lost (…); retried on another worker")
        store.add([moved])
        assert store.get("new") == moved
    finally:
        store.close()
