"""The Guidance add-ons and Refiner accordions in a real browser: switch on, generate, paste back."""
from __future__ import annotations

import pytest
from PIL import Image

from webui.core.images import read_infotext
from webui.core.infotext import parse_infotext

from test_browser import open_app, set_slider

from playwright.sync_api import expect  # noqa: E402  (test_browser skips the module without chromium)


@pytest.fixture(scope="module")
def server(ui_server):
    """conftest's session-wide UI server."""
    return ui_server


def test_switch_on_generate_and_paste_back(server):
    with open_app(server.url) as page:
        page.locator("#txt2img_prompt textarea").fill("a lighthouse")
        for elem_id, value in (("txt2img_steps", 3), ("txt2img_width", 64), ("txt2img_height", 64)):
            set_slider(page, elem_id, value)
        page.locator("#txt2img_seed input").fill("5")
        page.locator("#txt2img_guidance_addons").get_by_text("Guidance add-ons").click()
        page.locator("#txt2img_freeu_enabled input[type=checkbox]").check()
        page.locator("#txt2img_pag_enabled input[type=checkbox]").check()
        set_slider(page, "txt2img_pag_scale", 2)
        page.locator("#txt2img_refiner").get_by_text("Refiner").first.click()
        page.locator("#txt2img_refiner_checkpoint input").fill("tiny-sdxl")
        page.get_by_role("option", name="tiny-sdxl.safetensors", exact=False).first.click()
        page.locator("#txt2img_generate").click()
        info = page.locator("#html_info_txt2img")
        expect(info).to_contain_text("freeu_enabled: True", timeout=90_000)
        expect(info).to_contain_text("pagi_scale: 2")
        expect(info).to_contain_text("Refiner: tiny-sdxl [")

        made = sorted((server.root / "outputs" / "txt2img-images").rglob("*.png"))[-1]
        params = parse_infotext(read_infotext(Image.open(made))).params
        assert params["Refiner switch at"] == "0.8" and params["freeu_b1"] == "1.01"

        # switch them off, then paste the image's parameters back through PNG Info
        page.locator("#txt2img_freeu_enabled input[type=checkbox]").uncheck()
        page.locator("#txt2img_pag_enabled input[type=checkbox]").uncheck()
        page.get_by_role("tab", name="PNG Info").click()
        page.locator("#pnginfo_image input[type=file]").set_input_files(str(made))
        expect(page.locator("#pnginfo_html")).to_contain_text("freeu_enabled", timeout=15_000)
        page.locator("#pnginfo_send_txt2img").click()
        expect(page.locator("#txt2img_freeu_enabled input[type=checkbox]")).to_be_checked(timeout=15_000)
        expect(page.locator("#txt2img_pag_enabled input[type=checkbox]")).to_be_checked()
        expect(page.locator("#txt2img_pag_scale input[type=number]")).to_have_value("2")
        expect(page.locator("#txt2img_refiner_checkpoint input")).to_have_value(params["Refiner"].replace(
            "tiny-sdxl [", "tiny-sdxl.safetensors ["))
