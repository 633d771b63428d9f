"""Tiled Diffusion (txt2img accordion) and Ultimate SD upscale (img2img's Script dropdown) in a real browser.

One page on conftest's session-wide UI server; 64x64 pictures (8x8 latents, tiles of 6 with overlap 2), 2-3 steps.
"""
from __future__ import annotations

from PIL import Image

from webui.core.images import read_infotext
from webui.core.infotext import parse_infotext

from test_browser import open_app, set_slider, set_steps_and_size

from playwright.sync_api import expect  # noqa: E402  (test_browser skips the module without chromium)


def _pick(page, elem_id: str, option: str) -> None:
    """Choose `option` in a Gradio dropdown."""
    page.locator(f"#{elem_id} input").fill(option)
    page.get_by_role("option", name=option, exact=True).first.click()


def _newest(folder, pattern: str):
    return max(folder.rglob(pattern), key=lambda path: path.stat().st_mtime)


def test_tiled_diffusion_and_ultimate_sd_upscale(ui_server, tmp_path):
    outputs = ui_server.root / "outputs"
    with open_app(ui_server.url) as page:
        # Tiled Diffusion in txt2img: switch on, small latent tiles, generate; its key in the infotext
        set_steps_and_size(page, 2)
        page.locator("#txt2img_prompt textarea").fill("a tiled meadow")
        page.locator("#txt2img_seed input").fill("913")
        page.locator("#txt2img_tiled_diffusion_accordion").get_by_text("Tiled Diffusion", exact=True).first.click()
        page.locator("#txt2img_tiled_diffusion_enabled input").check()
        for name, value in (("tile_width", 6), ("tile_height", 6), ("overlap", 2)):
            set_slider(page, f"txt2img_tiled_diffusion_{name}", value)
        page.locator("#txt2img_generate").click()
        info = page.locator("#html_info_txt2img")
        expect(info).to_contain_text("'Method': 'MultiDiffusion', 'Tile tile width': 6", timeout=60_000)
        expect(info).to_contain_text("'Tile Overlap': 2")
        made = _newest(outputs / "txt2img-images", "*-913.png")
        params = parse_infotext(read_infotext(Image.open(made))).params
        assert "'Tile tile height': 6" in params["Tiled Diffusion"]

        # paste back: switched off, then the file's parameters sent from PNG Info switch it on again
        page.locator("#txt2img_tiled_diffusion_enabled input").uncheck()
        set_slider(page, "txt2img_tiled_diffusion_overlap", 5)
        page.get_by_role("tab", name="PNG Info").click()
        page.locator("#pnginfo_image input[type=file]").set_input_files(str(made))
        expect(page.locator("#pnginfo_html")).to_contain_text("Tiled Diffusion", timeout=15_000)
        page.locator("#pnginfo_send_txt2img").click()
        expect(page.locator("#txt2img_tiled_diffusion_enabled input")).to_be_checked(timeout=15_000)
        expect(page.locator("#txt2img_tiled_diffusion_overlap input[type=number]")).to_have_value("2")

        # Ultimate SD upscale: img2img's Script dropdown, 2x from the image's size in four 64px tiles
        picture = tmp_path / "in.png"
        Image.new("RGB", (64, 64), (40, 120, 200)).save(picture)
        page.get_by_role("tab", name="img2img", exact=True).first.click()
        page.locator("#img2img_image input[type=file]").set_input_files(str(picture))
        expect(page.locator("#img2img_image img")).to_be_visible(timeout=30_000)
        page.locator("#img2img_prompt textarea").fill("an upscaled sky")
        page.locator("#img2img_seed input").fill("914")
        for name, value in (("steps", 2), ("width", 64), ("height", 64)):
            set_slider(page, f"img2img_{name}", value)
        _pick(page, "img2img_script", "Ultimate SD upscale")
        _pick(page, "ultimateupscale_target_size_type", "Scale from image size")
        _pick(page, "ultimateupscale_upscaler_index", "Lanczos")
        for name, value in (("custom_scale", 2), ("tile_width", 64), ("padding", 0)):
            set_slider(page, f"script_img2img_ultimate_sd_upscale_{name}", value)
        page.locator("#img2img_generate").click()
        info = page.locator("#html_info_img2img")
        expect(info).to_contain_text("Ultimate SD upscale upscaler: Lanczos", timeout=90_000)
        expect(info).to_contain_text("Size: 128x128")
        upscaled = _newest(outputs / "img2img-images", "*-914*.png")
        assert Image.open(upscaled).size == (128, 128)  # larger than the 64x64 input
