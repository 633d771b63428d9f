"""Browser: enable a ControlNet unit in txt2img, upload an image, run the preprocessor, generate."""
import numpy as np
import pytest
from PIL import Image

from webui.core.images import read_infotext
from webui.core.infotext import parse_infotext

from test_browser import ARTIFACTS, open_app, set_slider, set_steps_and_size

from playwright.sync_api import expect  # noqa: E402  (test_browser skips without chromium)


@pytest.fixture(scope="module")
def server(ui_server):
    """conftest's session-wide UI server (a tiny canny ControlNet)."""
    return ui_server


def pick(page, elem_id: str, option: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option, exact=True).click()


def test_controlnet_unit_in_txt2img(server, tmp_path):
    picture = tmp_path / "control.png"
    array = np.zeros((64, 64, 3), np.uint8)
    array[16:48, 16:48] = 255
    Image.fromarray(array).save(picture)
    with open_app(server.url, height=1400) as page:
        set_steps_and_size(page, 3)
        page.locator("#txt2img_prompt textarea").fill("a white square")
        page.locator("#txt2img_seed input").fill("12")

        page.locator("#txt2img_controlnet").get_by_text("ControlNet", exact=True).first.click()
        page.locator("#txt2img_controlnet_0_enable input").check()
        page.locator("#txt2img_controlnet_0_image input[type=file]").set_input_files(str(picture))
        expect(page.locator("#txt2img_controlnet_0_image img")).to_be_visible(timeout=10_000)
        pick(page, "txt2img_controlnet_0_module", "canny")
        expect(page.locator("#txt2img_controlnet_0_model input")).to_have_value("control_canny_tiny", timeout=10_000)
        expect(page.locator("#txt2img_controlnet_0_threshold_a")).to_be_visible()
        set_slider(page, "txt2img_controlnet_0_processor_res", 64)
        page.locator("#txt2img_controlnet_0_run_preprocessor").click()
        expect(page.locator("#txt2img_controlnet_0_message")).to_contain_text("canny: 64×64", timeout=30_000)
        expect(page.locator("#txt2img_controlnet_0_preview img")).to_be_visible()

        page.locator("#txt2img_generate").click()
        expect(page.locator("#html_info_txt2img")).to_contain_text("ControlNet 0", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "controlnet.png"), full_page=True)
    made = sorted((server.root / "outputs" / "txt2img-images").rglob("*-12.png"))[-1]
    unit = parse_infotext(read_infotext(Image.open(made))).params["ControlNet 0"]
    assert "Module: canny" in unit and "Model: control_canny_tiny" in unit and "Processor Res: 64" in unit
