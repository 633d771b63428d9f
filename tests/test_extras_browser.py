"""A real browser in the Extras tab: upload, upscale with a model, see the result, find the file.

Skipped without Chromium unless EASEL_REQUIRE_BROWSER=1 (as tests/test_browser.py).
"""
import re

import pytest
from PIL import Image

from upscale_helpers import smooth_image

from test_browser import ARTIFACTS, open_app  # skips this module without chromium, as test_browser does

from playwright.sync_api import expect  # noqa: E402


@pytest.fixture(scope="module")
def server(ui_server):
    """conftest's session-wide UI server (the tiny upscalers in models/ESRGAN)."""
    return ui_server


@pytest.fixture(scope="module")
def page(server):
    with open_app(server.url, height=1100) as page:
        page.get_by_role("tab", name="Extras").click()
        page.wait_for_selector("#extras_generate", timeout=60_000)
        yield page


def pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_upload_upscale_and_file_saved(page, server, tmp_path):
    source = tmp_path / "photo.png"
    smooth_image(64, 64).save(source)
    page.locator("#extras_image input[type=file]").set_input_files(str(source))
    expect(page.locator("#extras_image img")).to_be_visible(timeout=30_000)
    pick(page, "extras_upscaler_1", "4x-Tiny")
    page.locator("#extras_generate").click()
    expect(page.locator("#extras_gallery img").first).to_be_visible(timeout=60_000)
    expect(page.locator("#html_info_extras")).to_contain_text(
        "Postprocess upscale by: 4, Postprocess upscaler: 4x-Tiny", timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "extras.png"), full_page=True)

    files = sorted((server.root / "outputs" / "extras-images").iterdir())
    assert [f.name for f in files] == ["00000.png"]
    with Image.open(files[0]) as image:
        assert image.size == (256, 256)
        assert image.info["postprocessing"] == "Postprocess upscale by: 4, Postprocess upscaler: 4x-Tiny"


def test_batch_upload_reports_the_bad_file(page, server, tmp_path):
    good = tmp_path / "good.png"
    smooth_image(32, 32).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    page.get_by_role("tab", name="Batch Process").click()
    page.locator("#extras_image_batch input[type=file]").set_input_files([str(good), str(bad)])
    # Gradio shows the name and extension apart ("bad .png")
    expect(page.locator("#extras_image_batch")).to_contain_text(re.compile(r"bad\s*\.png"), timeout=30_000)
    pick(page, "extras_upscaler_1", "Lanczos")
    page.locator("#extras_generate").click()
    expect(page.locator("#html_info_extras")).to_contain_text("bad.png: not an image file", timeout=60_000)
    expect(page.locator("body")).not_to_contain_text("Traceback")
    assert (server.root / "outputs" / "extras-images" / "00001-good.png").exists()
