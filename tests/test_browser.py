"""A real browser against a real server: type a prompt, generate, see the image, find the file.

Runs headless Chromium (Debian's package) through Playwright. Without a browser the
test is skipped, unless EASEL_REQUIRE_BROWSER=1 (set by CI), where that is a failure.
"""
import os
import shutil
import time
from contextlib import contextmanager
from typing import Iterator

import pytest
from PIL import Image

from webui.core.images import read_infotext
from webui.core.infotext import parse_infotext

from conftest import ROOT

CHROMIUM = os.environ.get("EASEL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not CHROMIUM:
    if os.environ.get("EASEL_REQUIRE_BROWSER"):
        raise RuntimeError("EASEL_REQUIRE_BROWSER is set but no chromium was found")
    pytest.skip("chromium is not installed", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402


@contextmanager
def open_app(url: str, height: int = 1000, ready: str = "#txt2img_prompt textarea") -> Iterator:
    """Headless Chromium on Easel's page at `url`, once `ready` is on it (every browser test starts here)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": height})
            # the page now carries every tab's accordions (detailer, regions, guidance, wildcards ...): on a
            # 2-core CI box running a job, one click can wait past Playwright's default 30 s
            page.set_default_timeout(60_000)
            page.goto(url)
            page.wait_for_selector(ready, timeout=60_000)
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server(ui_server):
    """conftest's session-wide UI server (the LoRA paper_cut)."""
    return ui_server


@pytest.fixture(scope="module")
def page(server):
    with open_app(server.url) as page:
        yield page


def set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def set_steps_and_size(page, steps: int, width: int = 64, height: int = 64) -> None:
    """txt2img's steps and size sliders: the set-up nearly every browser test starts with."""
    set_slider(page, "txt2img_steps", steps)
    set_slider(page, "txt2img_width", width)
    set_slider(page, "txt2img_height", height)


def test_generate_in_the_browser(page, server):
    outputs = server.root / "outputs" / "txt2img-images"  # shared with other modules: only this job's file is new
    before = set(outputs.rglob("*.png"))
    page.locator("#txt2img_prompt textarea").fill("a lighthouse on a cliff")
    page.locator("#txt2img_neg_prompt textarea").fill("fog")
    set_steps_and_size(page, 3)
    page.locator("#txt2img_seed input").fill("21")
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=60_000)
    expect(page.locator("#html_info_txt2img")).to_contain_text("Seed: 21")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "txt2img.png"), full_page=True)

    files = sorted(set(outputs.rglob("*.png")) - before)
    assert len(files) == 1 and files[0].name.endswith("-21.png"), files
    info = parse_infotext(read_infotext(Image.open(files[0])))
    assert info.prompt == "a lighthouse on a cliff" and info.negative_prompt == "fog"
    assert info.params["Steps"] == "3" and info.params["Size"] == "64x64"


def test_recycle_button_reuses_the_last_seed(page):
    page.locator("#txt2img_random_seed").click()
    expect(page.locator("#txt2img_seed input")).to_have_value("-1")
    page.locator("#txt2img_reuse_seed").click()
    expect(page.locator("#txt2img_seed input")).to_have_value("21")


def test_bad_input_shows_a_readable_error(page):
    page.locator("#txt2img_seed input").fill("-5")
    page.locator("#txt2img_generate").click()
    error = page.locator("#html_info_txt2img .easel-error")
    expect(error).to_contain_text("seed: must be -1", timeout=30_000)
    expect(page.locator("body")).not_to_contain_text("Traceback")
    page.locator("#txt2img_seed input").fill("21")


def test_token_counter_and_lora_card(page, server):
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a (paper boat:1.3), [red|blue] sea " + "word " * 80)
    expect(page.locator("#txt2img_token_counter")).to_have_text("86/150", timeout=15_000)
    prompt.fill("a paper boat")
    expect(page.locator("#txt2img_token_counter")).to_have_text("3/75", timeout=15_000)
    page.locator("#txt2img_extra_networks").click()
    page.locator("#txt2img_lora_cards img").first.click()
    expect(prompt).to_have_value("a paper boat, <lora:paper_cut:1>", timeout=10_000)
    page.locator("#txt2img_seed input").fill("33")
    page.locator("#txt2img_generate").click()
    expect(page.locator("#html_info_txt2img")).to_contain_text("Lora hashes", timeout=60_000)
    expect(page.locator("#html_info_txt2img")).to_contain_text("Seed: 33")


def test_progress_and_interrupt(page, server):
    set_steps_and_size(page, 150, 512, 512)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_progress .easel-progress")).to_be_visible(timeout=30_000)
    expect(page.locator("#txt2img_progress")).to_contain_text("Step", timeout=30_000)
    expect(page.locator("#txt2img_preview img")).to_be_visible(timeout=30_000)
    started = time.monotonic()
    page.locator("#txt2img_interrupt").click()
    expect(page.locator("#html_info_txt2img")).to_contain_text("Interrupted", timeout=30_000)
    assert time.monotonic() - started < 15
    set_steps_and_size(page, 3)


def test_send_to_img2img_pnginfo_and_inpaint_upload(page, server, tmp_path):
    import numpy as np

    set_steps_and_size(page, 3)
    page.locator("#txt2img_prompt textarea").fill("a red barn")
    page.locator("#txt2img_seed input").fill("77")
    page.locator("#txt2img_generate").click()
    expect(page.locator("#html_info_txt2img")).to_contain_text("Seed: 77", timeout=60_000)

    page.locator("#txt2img_send_to_img2img").click()
    expect(page.locator("#img2img_prompt textarea")).to_have_value("a red barn", timeout=30_000)
    expect(page.locator("#img2img_seed input")).to_have_value("77")
    expect(page.locator("#img2img_image img")).to_be_visible(timeout=30_000)
    page.locator("#img2img_generate").click()
    expect(page.locator("#html_info_img2img")).to_contain_text("Denoising strength: 0.75", timeout=60_000)
    assert list((server.root / "outputs" / "img2img-images").rglob("*.png"))

    page.get_by_role("tab", name="PNG Info").click()
    made = sorted((server.root / "outputs" / "txt2img-images").rglob("*-77.png"))[-1]
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(made))
    expect(page.locator("#pnginfo_html")).to_contain_text("a red barn", timeout=15_000)
    page.locator("#pnginfo_send_inpaint").click()
    expect(page.locator("#inpaint_prompt textarea")).to_have_value("a red barn", timeout=30_000)

    picture, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), (200, 50, 50)).save(picture)
    mask_image = Image.new("L", (64, 64), 0)
    mask_image.paste(255, (16, 16, 48, 48))
    mask_image.save(mask)
    page.get_by_role("tab", name="Inpaint upload").click()
    page.locator("#img_inpaint_base input[type=file]").set_input_files(str(picture))
    page.locator("#img_inpaint_mask input[type=file]").set_input_files(str(mask))
    expect(page.locator("#img_inpaint_mask img")).to_be_visible(timeout=10_000)
    page.locator("#inpaint_generate").click()
    expect(page.locator("#html_info_inpaint")).to_contain_text("Mask blur: 4", timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "inpaint.png"), full_page=True)
    newest = max((server.root / "outputs" / "img2img-images").rglob("*.png"), key=lambda p: p.stat().st_mtime)
    out = np.asarray(Image.open(newest).convert("RGB")).astype(int)
    assert (out[0:4, 0:4] == [200, 50, 50]).all()  # outside the mask: the original pixels


def test_adetailer_and_regional_prompter_accordions(page, server):
    """Both accordions reach the engine from a freshly loaded page; the infotext records them. (The module's
    page, reloaded taller: a second sync Playwright cannot start while the module's one runs.)"""
    from detailer_helpers import write_tiny_yolo

    write_tiny_yolo(server.root / "models" / "adetailer" / "tiny_yolo.onnx")  # looked up when the job runs
    page.set_viewport_size({"width": 1280, "height": 1600})
    page.reload()
    page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
    set_steps_and_size(page, 3, 128, 64)
    page.locator("#txt2img_prompt textarea").fill("a red apple BREAK a blue sky")
    page.locator("#txt2img_seed input").fill("31")
    page.locator("#txt2img_regional_prompter_accordion").get_by_text("Regional Prompter", exact=True).first.click()
    page.locator("#txt2img_regional_prompter_active input").check()
    page.locator("#txt2img_adetailer_accordion").get_by_text("ADetailer", exact=True).first.click()
    page.locator("#txt2img_adetailer_enable input").check()
    model = page.locator("#txt2img_adetailer_0_ad_model input")
    model.fill("tiny_yolo.onnx")
    model.press("Enter")
    page.locator("#txt2img_adetailer_0_ad_model_classes textarea").fill("bright")
    page.locator("#txt2img_generate").click()
    info = page.locator("#html_info_txt2img")
    expect(info).to_contain_text("ADetailer model: tiny_yolo.onnx", timeout=60_000)
    expect(info).to_contain_text("RP Active: True")
    made = sorted((server.root / "outputs" / "txt2img-images").rglob("*-31.png"))[-1]
    params = parse_infotext(read_infotext(Image.open(made))).params
    assert params["ADetailer model classes"] == "bright" and params["RP Ratios"] == "1,1"
