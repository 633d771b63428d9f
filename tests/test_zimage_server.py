"""Z-Image through the ways in: the A1111 API (txt2img, img2img) and `launch.py generate` with a tiny Z-Image
Turbo folder; and in a real browser, switching checkpoints sets each family's defaults in the tabs and gives
back what the user had set for the family switched away from, and an SD 3.5 and a Z-Image checkpoint each
generate from the page (one server for the module)."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, start_server
from webui.core.images import read_infotext
from webui.core.infotext import parse_infotext
from webui.model_manager.tiny_sd3 import write_sd3_folder
from webui.model_manager.tiny_zimage import write_zimage_folder

BODY = {"prompt": "a lighthouse at dusk", "steps": 2, "width": 64, "height": 64, "seed": 4, "sampler_name": "Euler",
        "cfg_scale": 1, "override_settings": {"sd_model_checkpoint": "tiny-zimage-turbo"}}


@pytest.fixture(scope="module")
def zimage_ckpts(tmp_path_factory, tiny_ckpt_dir):
    root = tmp_path_factory.mktemp("zimage-server")
    write_zimage_folder(root / "ckpt" / "tiny-zimage-turbo", seed=6)
    write_sd3_folder(root / "ckpt" / "tiny-sd35-medium", "sd35-medium", seed=6)
    for path in tiny_ckpt_dir.glob("tiny-sd1.*"):  # an SD 1.x checkpoint beside it, to switch between families
        shutil.copy(path, root / "ckpt" / path.name)
    return root


@pytest.fixture(scope="module")
def zimage_server(zimage_ckpts):
    server = start_server(zimage_ckpts, zimage_ckpts / "ckpt", ["--api"])
    yield server
    server.stop()


def _image(data: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data["images"][0])))


def test_txt2img_and_img2img_api_with_zimage(zimage_server):
    first = httpx.post(zimage_server.url + "/sdapi/v1/txt2img", json=BODY, timeout=300)
    assert first.status_code == 200, first.text
    text = json.loads(first.json()["info"])["infotexts"][0]
    for part in ("Steps: 2", "Sampler: Euler", "Schedule type: Simple", "CFG scale: 1", "Model: tiny-zimage-turbo"):
        assert part in text
    picture = _image(first.json())
    assert picture.size == (64, 64) and np.asarray(picture).std() > 1
    changed = httpx.post(zimage_server.url + "/sdapi/v1/img2img", timeout=300, json=dict(
        BODY, init_images=[first.json()["images"][0]], denoising_strength=0.5, seed=8))
    assert changed.status_code == 200, changed.text
    assert "Denoising strength: 0.5" in json.loads(changed.json()["info"])["infotexts"][0]
    assert np.abs(np.asarray(_image(changed.json()), float) - np.asarray(picture, float)).max() > 0
    ddim = httpx.post(zimage_server.url + "/sdapi/v1/txt2img", json=dict(BODY, sampler_name="DDIM"), timeout=120)
    assert ddim.status_code == 422 and "sampler_name" in ddim.text


def test_cli_generates_with_zimage(zimage_ckpts, tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, str(ROOT / "launch.py"), "generate", "--device", "cpu",
                           "--models-dir", str(tmp_path / "models"), "--data-dir", str(tmp_path / "data"),
                           "--outputs-dir", str(tmp_path / "outputs"), "--ckpt-dir", str(zimage_ckpts / "ckpt"),
                           "--model", "tiny-zimage-turbo", "--prompt", "a red chair", "--steps", "2", "--cfg-scale",
                           "1", "--sampler", "Euler", "--seed", "3", "--width", "64", "--height", "64",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "EASEL_VENV": sys.prefix})  # this interpreter: no .venv to make
    assert done.returncode == 0, done.stderr
    info = parse_infotext(read_infotext(Image.open(done.stdout.split()[0])))
    assert info.prompt == "a red chair" and info.params["Model"] == "tiny-zimage-turbo"
    assert info.params["Schedule type"] == "Simple" and info.params["Seed"] == "3"


def pick_checkpoint(page, name: str) -> None:
    box = page.locator("#setting_sd_model_checkpoint input")
    box.click()
    box.fill(name)
    page.get_by_role("option", name=name, exact=False).first.click()


def test_switching_families_sets_their_defaults_and_keeps_what_was_set(zimage_server):
    from tests.test_browser import expect, open_app, set_slider

    def shows(page, steps: str, cfg: str, width: str, sampler: str, schedule: str) -> None:
        expect(page.locator("#txt2img_steps input[type=number]")).to_have_value(steps, timeout=30_000)
        expect(page.locator("#txt2img_cfg_scale input[type=number]")).to_have_value(cfg)
        expect(page.locator("#txt2img_width input[type=number]")).to_have_value(width)
        expect(page.locator("#txt2img_sampling input")).to_have_value(sampler)
        expect(page.locator("#txt2img_scheduler input")).to_have_value(schedule)

    sd1 = httpx.post(zimage_server.url + "/sdapi/v1/txt2img", timeout=300, json=dict(
        BODY, steps=1, override_settings={"sd_model_checkpoint": "tiny-sd1"}))
    assert sd1.status_code == 200, sd1.text  # SD 1.x is the loaded checkpoint when the page opens
    with open_app(zimage_server.url) as page:
        set_slider(page, "txt2img_steps", 13)  # what the user set for SD 1.x
        pick_checkpoint(page, "tiny-zimage-turbo")
        shows(page, "8", "1", "1024", "Euler", "Simple")  # Turbo's defaults
        set_slider(page, "txt2img_steps", 6)
        pick_checkpoint(page, "tiny-sd1")
        shows(page, "13", "7", "512", "DPM++ 2M", "Automatic")  # back to what was set for SD 1.x
        pick_checkpoint(page, "tiny-zimage-turbo")
        shows(page, "6", "1", "1024", "Euler", "Simple")  # and for Z-Image


def test_sd35_and_zimage_generate_from_the_page(zimage_server):
    """Pick each checkpoint in the top bar: its family's defaults appear; a 64x64 2-step image comes back."""
    from tests.test_browser import expect, open_app, set_steps_and_size

    sd1 = httpx.post(zimage_server.url + "/sdapi/v1/txt2img", timeout=300, json=dict(
        BODY, steps=1, override_settings={"sd_model_checkpoint": "tiny-sd1"}))
    assert sd1.status_code == 200, sd1.text  # the page opens on SD 1.x, whatever an earlier test loaded
    with open_app(zimage_server.url) as page:
        page.locator("#txt2img_prompt textarea").fill("a lighthouse at dusk")
        for name, steps, cfg in (("tiny-sd35-medium", "40", "4.5"), ("tiny-zimage-turbo", "8", "1")):
            pick_checkpoint(page, name)
            expect(page.locator("#txt2img_steps input[type=number]")).to_have_value(steps, timeout=30_000)
            expect(page.locator("#txt2img_cfg_scale input[type=number]")).to_have_value(cfg)
            expect(page.locator("#txt2img_width input[type=number]")).to_have_value("1024")
            set_steps_and_size(page, 2)
            page.locator("#txt2img_generate").click()
            info = page.locator("#html_info_txt2img")
            expect(info).to_contain_text(f"Model: {name}", timeout=90_000)
            expect(info).to_contain_text("Steps: 2")
            expect(info).to_contain_text("Size: 64x64")
            expect(page.locator("#txt2img_gallery img").first).to_be_visible()
