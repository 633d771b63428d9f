"""Issue 20 on a real server: a kill while the gallery indexes, the restart that repairs the index, and the
Gallery tab in a browser (generate, find by a prompt word, favourite, board, delete, restore).

One module-scoped pair of servers: the first is killed mid-index, the second (a restart on the same
folders) serves both the repair check and the browser test.
"""
from __future__ import annotations

import re
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import start_server
from test_gallery import A1111
from webui.core.images import encode_image

COUNT = 2500


@pytest.fixture(scope="module")
def restarted(tmp_path_factory):
    """Start a server, drop COUNT images into outputs/, ask for a scan, SIGKILL it mid-index, start it again."""
    root = tmp_path_factory.mktemp("gallery-server")
    out = root / "outputs" / "txt2img-images" / "older"
    out.mkdir(parents=True)
    server = start_server(root, None, ["--nowebui"])  # the API alone starts sooner; the restart has the UI
    picture = Image.new("RGB", (16, 16))
    for i in range(COUNT):
        text = A1111.format(prompt=f"kill test image number{i}", steps=2, sampler="Euler", seed=i, model="tiny")
        (out / f"{i:05}-{i}.png").write_bytes(encode_image(picture, "png", text))
    try:
        httpx.post(server.url + "/easel/v1/images/scan", timeout=5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill as soon as the scan has committed something
            if httpx.get(server.url + "/easel/v1/images/status", timeout=5).json()["images"] > 0:
                break
            time.sleep(0.01)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    db = sqlite3.connect(root / "data" / "gallery.sqlite")
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    killed_at = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    db.close()
    files = len(list(out.glob("*.png")))
    server = start_server(root, None, ["--demo-model"])
    server.killed = (integrity, killed_at, files)
    yield server
    server.stop()


def test_killed_mid_index_the_restart_finds_every_image(restarted):
    integrity, killed_at, files = restarted.killed
    assert integrity == "ok" and files == COUNT  # the database opens clean; the scan never touches images
    assert 0 < killed_at < COUNT, f"the kill should land while the scan indexes ({killed_at} of {COUNT})"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(restarted.url + "/easel/v1/images/status", timeout=5).json()["scan"]["state"] == "done":
            break
        time.sleep(0.2)
    total = httpx.get(restarted.url + "/easel/v1/images", params={"limit": 1}, timeout=10).json()["total"]
    body = httpx.get(restarted.url + "/easel/v1/images", params={"q": f"number{COUNT - 1}"}, timeout=10).json()
    assert total == COUNT and body["total"] == 1 and body["images"][0]["seed"] == COUNT - 1


def test_gallery_tab_finds_favourites_boards_deletes_and_restores(restarted):
    from playwright.sync_api import expect
    from test_browser import open_app, set_steps_and_size  # skips without chromium

    url = restarted.url
    with open_app(url, height=1100) as page:
        page.locator("#txt2img_prompt textarea").fill("a zebra made of origami paper")
        set_steps_and_size(page, 2)
        page.locator("#txt2img_generate").click()
        expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=60_000)
        deadline = time.monotonic() + 20  # indexed in the background, off the worker
        while time.monotonic() < deadline:
            found = httpx.get(url + "/easel/v1/images", params={"q": "origami"}, timeout=5).json()
            if found["total"]:
                break
            time.sleep(0.2)
        [image] = found["images"]
        assert image["job_id"] and image["width"] == 64 and image["steps"] == 2

        page.get_by_role("tab", name="Gallery", exact=True).first.click()
        expect(page.locator("#gallery_status_text")).to_contain_text("in the gallery", timeout=15_000)
        page.locator("#gallery_search textarea, #gallery_search input").first.fill("zebra orig")
        expect(page.locator("#gallery_status_text")).to_have_text(re.compile(r"^1 image\(s\) match"), timeout=15_000)
        expect(page.locator("#gallery_grid img")).to_have_count(1, timeout=15_000)
        page.locator("#gallery_grid img").first.click()
        expect(page.locator("#gallery_detail_info")).to_contain_text("a zebra made of origami paper", timeout=15_000)

        page.locator("#gallery_favourite").click()
        expect(page.locator("#gallery_favourite")).to_contain_text("★", timeout=15_000)
        page.locator("#gallery_board_name textarea, #gallery_board_name input").first.fill("animals")
        page.locator("#gallery_move").click()
        expect(page.locator("#gallery_detail_info")).to_contain_text("board: animals", timeout=15_000)
        record = httpx.get(f"{url}/easel/v1/images/{image['id']}", timeout=5).json()
        assert record["favourite"] and record["board"] == "animals"
        assert record["params"]["Seed"] == str(image["seed"])

        page.locator("#gallery_delete").click()
        expect(page.locator("#gallery_status_text")).to_have_text(re.compile(r"^0 image\(s\) match"), timeout=15_000)
        assert httpx.get(f"{url}/easel/v1/images", params={"q": "origami"}, timeout=5).json()["total"] == 0
        page.locator("#gallery_trash_view input").check()
        expect(page.locator("#gallery_grid img")).to_have_count(1, timeout=15_000)
        page.locator("#gallery_grid img").first.click()
        page.locator("#gallery_restore").click()
        expect(page.locator("#gallery_message")).to_contain_text("Restored", timeout=15_000)
        page.locator("#gallery_trash_view input").uncheck()
        expect(page.locator("#gallery_grid img")).to_have_count(1, timeout=15_000)
        page.locator("#gallery_grid img").first.click()
        page.locator("#gallery_send_to_img2img").click()  # send_to.py's buttons, as under every gallery
        expect(page.locator("#img2img_prompt textarea")).to_have_value("a zebra made of origami paper",
                                                                        timeout=15_000)
        restored = httpx.get(f"{url}/easel/v1/images", params={"q": "origami", "board": "animals",
                                                                  "favourite": True}, timeout=5).json()
        assert restored["total"] == 1
        assert httpx.get(url + restored["images"][0]["file_url"], timeout=5).status_code == 200

        page.get_by_role("tab", name="Gallery", exact=True).first.click()  # select many: all on the page
        page.locator("#gallery_select_many").get_by_text("Select many").first.click()
        page.locator("#gallery_pick_all").click()
        expect(page.locator("#gallery_picked input:checked")).to_have_count(1, timeout=10_000)
        page.locator("#gallery_bulk_board textarea, #gallery_bulk_board input").first.fill("zebras")
        page.locator("#gallery_bulk_action input").first.fill("board")
        page.locator("#gallery_bulk_action input").first.press("Enter")
        page.locator("#gallery_bulk_apply").click()
        expect(page.locator("#gallery_message")).to_contain_text("board: 1 image(s)", timeout=15_000)
        assert httpx.get(f"{url}/easel/v1/images/{image['id']}", timeout=5).json()["board"] == "zebras"
        page.locator("#gallery_board_name textarea, #gallery_board_name input").first.fill("animals")
        page.locator("#gallery_drop_board").click()
        expect(page.locator("#gallery_message")).to_contain_text("Board animals deleted", timeout=15_000)
        assert httpx.get(f"{url}/easel/v1/images/boards", timeout=5).json()["boards"] == ["zebras"]

        # a rescan's progress shows without a click: one new file, and the line ends on "1 indexed"
        later = restarted.root / "outputs" / "txt2img-images" / "older" / "later.png"
        later.write_bytes(encode_image(Image.new("RGB", (16, 16)), "png", A1111.format(
            prompt="one later file", steps=2, sampler="Euler", seed=1, model="tiny")))
        page.locator("#gallery_folders").get_by_text("Folders").first.click()
        page.locator("#gallery_rescan").click()
        expect(page.locator("#gallery_scan_text")).to_have_text(re.compile(r"^Scan done: \d+ file\(s\), 1 indexed"),
                                                               timeout=30_000)

        # emptying the trash asks for a second click, then deletes the file for good
        page.locator("#gallery_grid img").first.click()
        expect(page.locator("#gallery_detail_info")).to_contain_text("origami", timeout=15_000)
        page.locator("#gallery_delete").click()
        expect(page.locator("#gallery_status_text")).to_have_text(re.compile(r"^0 image\(s\) match"), timeout=30_000)
        page.locator("#gallery_empty_trash").click()
        expect(page.locator("#gallery_message")).to_contain_text("Click Empty trash again", timeout=15_000)
        page.locator("#gallery_empty_trash").click()
        expect(page.locator("#gallery_message")).to_contain_text("Deleted 1 image(s) for good", timeout=15_000)
        assert not Path(image["path"]).exists()
        assert httpx.get(f"{url}/easel/v1/images", params={"trash": True}, timeout=5).json()["total"] == 0
