"""The queue panel in a real browser: it shows what runs and what waits, from every way in,
and cancels your own job (not other people's)."""
from __future__ import annotations

import httpx
import pytest

from test_browser import open_app, set_steps_and_size  # skips the module without chromium

from api_helpers import start_long_job, stop_job, wait_until
from playwright.sync_api import expect


@pytest.fixture(scope="module")
def server(api_server):
    """conftest's session-wide --api server."""
    return api_server


def test_queue_panel_shows_api_jobs_and_cancels_your_own(server):
    api = httpx.Client(base_url=server.url, timeout=120)
    with open_app(server.url) as page:
        expect(page.locator("#easel_queue")).to_contain_text("Queue: empty", timeout=30_000)
        page.locator("#easel_queue button").first.click()  # the panel is one closed line until opened
        expect(page.locator("#easel_queue_view")).to_contain_text("The queue is empty", timeout=30_000)

        api_job = start_long_job(api)
        table = page.locator("#easel_queue_table")
        expect(table).to_contain_text("running now", timeout=30_000)
        expect(table).to_contain_text("API")
        expect(table).not_to_contain_text("a long job")  # another user's prompt is not shown

        # queue a job from this page: it waits behind the API job, and is ours to cancel
        page.locator("#txt2img_prompt textarea").fill("my own queued picture")
        set_steps_and_size(page, 3)
        page.locator("#txt2img_generate").click()
        expect(table).to_contain_text("my own queued picture", timeout=30_000)
        expect(table.locator("tr.easel-queue-mine")).to_contain_text("#1")
        mine = wait_until(lambda: [j for j in api.get("/easel/v1/jobs").json()["jobs"] if j["owner"] == "ui"],
                          timeout=30, what="the UI job in the queue")[0]
        assert mine["position"] == 1 and not mine["mine"]  # the API sees it as a browser session's job

        page.locator("#easel_queue_cancel").click()
        expect(page.locator("#easel_queue_message")).to_contain_text("Cancelled", timeout=30_000)
        assert api.get(f"/easel/v1/jobs/{mine['id']}").json()["state"] == "cancelled"
        assert api.get(f"/easel/v1/jobs/{api_job}").json()["state"] == "running"  # not ours: untouched
        stop_job(api, api_job)
        expect(page.locator("#easel_queue_view")).to_contain_text("The queue is empty", timeout=30_000)
