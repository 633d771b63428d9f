"""Job history across a real restart (issue 20): jobs that ended done, failed, interrupted and cancelled on a
server killed with SIGKILL are all there after the restart, through /easel/v1/jobs (paged, filtered, each
job's info and result, run again with the same request) and in the queue panel of a real browser.

One module-scoped pair of servers on the same folders; before the restart 1,200 older jobs are added to
the database, so the cursor is followed over several pages of 500 (tests/test_history.py pages 10,000 rows
in-process).
"""
from __future__ import annotations

import json
import signal
import sqlite3
import time

import httpx
import pytest

from api_helpers import TINY, decode, max_diff, start_long_job, stop_job, wait_until
from conftest import start_server
from webui.history import HistoryRecord, HistoryStore

FINAL = ("done", "failed", "interrupted", "cancelled")
OLD = 1_200


def stored(root) -> dict[str, str]:
    with sqlite3.connect(root / "data" / "history.sqlite", timeout=5) as db:
        return dict(db.execute("SELECT id, state FROM jobs"))


@pytest.fixture(scope="module")
def restarted(tmp_path_factory, tiny_ckpt_dir):
    root = tmp_path_factory.mktemp("history-server")
    broken = root / "models" / "Stable-diffusion"
    broken.mkdir(parents=True)
    (broken / "zz-broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage" * 10)
    (root / "data").mkdir()  # the broken file is the newest: keep the tiny one selected
    (root / "data" / "config.json").write_text(json.dumps({"sd_model_checkpoint": "tiny-sd1.safetensors"}))
    clock = time.monotonic()
    server = start_server(root, tiny_ckpt_dir, ["--api", "--nowebui"])
    print(f"\nfirst start {time.monotonic() - clock:.1f} s")
    jobs: dict[str, str] = {}
    try:
        with httpx.Client(base_url=server.url, timeout=120) as api:
            def submit(**changes) -> str:
                response = api.post("/easel/v1/jobs", json={"type": "txt2img", "params": dict(TINY, **changes)})
                assert response.status_code == 202, response.text
                return response.json()["id"]

            def finish(job_id: str) -> None:
                wait_until(lambda: api.get(f"/easel/v1/jobs/{job_id}").json()["state"] in FINAL, timeout=120,
                           what=f"job {job_id}")

            jobs["failed"] = submit(override_settings={"sd_model_checkpoint": "zz-broken"})
            finish(jobs["failed"])
            jobs["interrupted"] = start_long_job(api, width=128, height=128)
            jobs["cancelled"] = submit(prompt="never ran")
            api.delete(f"/easel/v1/jobs/{jobs['cancelled']}")
            stop_job(api, jobs["interrupted"])
            blocking = api.post("/sdapi/v1/txt2img", json=dict(TINY, prompt="not saved", force_task_id="unsaved"))
            assert blocking.status_code == 200, blocking.text
            jobs["unsaved"] = "unsaved"
            jobs["done"] = submit(prompt="a lighthouse in the fog", save_images=True)
            finish(jobs["done"])
            jobs["done_image"] = api.get(f"/easel/v1/jobs/{jobs['done']}/result").json()["images"][0]
        print(f"jobs done at {time.monotonic() - clock:.1f} s")
        wait_until(lambda: len(stored(root)) >= 5, timeout=30, what="the history to be written")
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
    finally:
        server.stop()
    store = HistoryStore(root / "data" / "history.sqlite")  # older jobs: several pages more
    store.add(HistoryRecord(id=f"old-{i:05}", state="done", finished_at=1.0e9 + i, description=f"old job {i}",
                            request={"prompt": f"old job {i}"}) for i in range(OLD))
    store.add([HistoryRecord(id="on-a-worker", state="done", finished_at=1.0e9 + OLD, worker="w1-cuda1",
                             retried="worker w0-cuda0 was lost (…); retried on another worker")])  # --workers
    store.close()
    started = time.monotonic()
    server = start_server(root, tiny_ckpt_dir, ["--api"])
    server.jobs, server.start_seconds = jobs, time.monotonic() - started
    yield server
    server.stop()


def test_every_job_is_there_after_a_kill_and_restart(restarted):
    jobs = restarted.jobs
    with httpx.Client(base_url=restarted.url, timeout=60) as api:
        for state in FINAL:
            info = api.get(f"/easel/v1/jobs/{jobs[state]}")
            assert info.status_code == 200 and info.json()["state"] == state, (state, info.text)
        failed = api.get(f"/easel/v1/jobs/{jobs['failed']}").json()
        assert failed["error"].startswith("SafetensorError")
        first = api.get("/easel/v1/jobs", params={"finished": True, "limit": 5}).json()
        past = [j["id"] for j in first["jobs"] if j["type"] == "txt2img"]  # not the start-up's model load
        assert past[:2] == [jobs["done"], "unsaved"]
        assert {jobs[s] for s in FINAL} <= set(past) and first["next_before"]
        only_failed = api.get("/easel/v1/jobs", params={"finished": True, "state": "failed"}).json()["jobs"]
        assert [j["id"] for j in only_failed] == [jobs["failed"]]

        result = api.get(f"/easel/v1/jobs/{jobs['done']}/result").json()
        image = decode(result["images"][0])
        assert image.size == (64, 64) and result["images"][0] == jobs["done_image"]
        assert result["parameters"]["prompt"] == "a lighthouse in the fog" and result["state"] == "done"
        unsaved = api.get("/easel/v1/jobs/unsaved/result").json()
        assert unsaved["images"] == [] and "not saved" in unsaved["warnings"][0]
        assert "Steps: 3" in unsaved["info"]

        assert api.get("/easel/v1/jobs", params={"finished": True, "before": "x"}).status_code == 422
        assert api.get("/easel/v1/jobs", params={"finished": True, "state": "nope"}).status_code == 422
        assert api.get("/easel/v1/jobs/no-such-job").status_code == 404
        moved = api.get("/easel/v1/jobs/on-a-worker").json()  # where a past job ran, with --workers
        assert moved["worker"] == "w1-cuda1" and moved["retried"].endswith("retried on another worker")


def test_pages_through_many_past_jobs(restarted):
    with httpx.Client(base_url=restarted.url, timeout=60) as api:
        seen, cursor, timings = [], None, []
        while True:
            started = time.perf_counter()
            page = api.get("/easel/v1/jobs", params={"finished": True, "limit": 500,
                                                     **({"before": cursor} if cursor else {})})
            timings.append(time.perf_counter() - started)
            body = page.json()
            seen += [j["id"] for j in body["jobs"]]
            cursor = body["next_before"]
            if not cursor:
                break
        assert len(seen) == len(set(seen)) >= OLD + 5 and seen[-1] == "old-00000"
        started = time.perf_counter()
        first = api.get("/easel/v1/jobs", params={"finished": True, "limit": 50})
        one_page = time.perf_counter() - started
    print(f"\nserver restart {restarted.start_seconds:.1f} s; first page of 50 of {len(seen)} jobs "
          f"{one_page * 1000:.0f} ms; pages of 500: median {sorted(timings)[len(timings) // 2] * 1000:.0f} ms, "
          f"slowest {max(timings) * 1000:.0f} ms ({len(timings)} pages)")
    assert first.status_code == 200 and one_page < 1.0


def test_queue_panel_lists_opens_and_runs_again_a_job_from_before_the_restart(restarted):
    from playwright.sync_api import expect
    from test_browser import open_app  # skips without chromium

    done = restarted.jobs["done"]
    with open_app(restarted.url) as page, httpx.Client(base_url=restarted.url, timeout=60) as api:
        page.locator("#easel_queue button").first.click()
        table = page.locator("#easel_history_table")
        expect(table).to_contain_text("a lighthouse in the fog", timeout=30_000)
        expect(table).to_contain_text("failed")
        pick = page.locator("#easel_history_pick input")
        pick.fill(done)
        pick.press("Enter")
        page.locator("#easel_history_open").click()
        expect(page.locator("#easel_history_opened")).to_contain_text(done, timeout=30_000)
        expect(page.locator("#easel_history_images img").first).to_be_visible(timeout=30_000)
        expect(page.locator("#easel_history_info")).to_contain_text("a lighthouse in the fog")
        page.locator("#easel_history_rerun").click()
        expect(page.locator("#easel_history_queued")).to_contain_text("Queued again", timeout=30_000)
        rerun = wait_until(lambda: [j for j in api.get("/easel/v1/jobs", params={"finished": True, "limit": 20})
                                    .json()["jobs"] if j["rerun_of"] == done and j["state"] == "done"],
                           timeout=120, what="the job run again from the panel")[0]
        assert rerun["owner"] == "ui"
        expect(table).to_contain_text("a lighthouse in the fog", timeout=30_000)


def test_a_past_job_runs_again_with_the_same_request(restarted):
    jobs = restarted.jobs
    with httpx.Client(base_url=restarted.url, timeout=60) as api:
        response = api.post(f"/easel/v1/jobs/{jobs['done']}/rerun")
        assert response.status_code == 202, response.text
        new = response.json()
        assert new["rerun_of"] == jobs["done"] and new["id"] != jobs["done"]
        result = api.get(f"/easel/v1/jobs/{new['id']}/result", params={"wait": 120}).json()
        assert result["state"] == "done" and result["parameters"]["prompt"] == "a lighthouse in the fog"
        # the same seed on the same CPU: the same picture
        assert max_diff(decode(result["images"][0]), decode(jobs["done_image"])) == 0
        assert api.post("/easel/v1/jobs/no-such-job/rerun").status_code == 404
