"""Send-to fills every field: infotext -> request fields (unit), and PNG Info -> Inpaint / Extras in a browser."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from webui.core.infotext import parse_infotext
from webui.pnginfo import infotext_to_fields, override_item_fields, override_items
from webui.core.request import GenerationRequest
from webui.ui.generation_controls import common_request_fields


FULL = ("a harbor at dawn\nNegative prompt: fog\nSteps: 12, Sampler: Euler a, CFG scale: 6, Seed: 5, Size: 64x64, "
        "Model: tiny-sd1, Denoising strength: 0.55, Mask blur: 6, Masked content: latent noise, "
        "Inpaint area: Only masked, Masked area padding: 40, Mask mode: Inpaint not masked, "
        "Resize mode: Crop and resize, Clip skip: 2, RNG: NV, ENSD: 31337, Eta: 0.7, Sigma churn: 0.3, "
        "Sigma tmin: 0.1, Sigma tmax: 9, Sigma noise: 1.01, Sigma min: 0.05, Sigma max: 12, Schedule rho: 5, "
        "Lora composition: Switch, Lora switch steps: 3")


def test_every_img2img_and_settings_key_is_read_back():
    fields = infotext_to_fields(parse_infotext(FULL))
    assert (fields["inpainting_fill"], fields["inpaint_full_res"], fields["inpaint_full_res_padding"]) == (2, True, 40)
    assert (fields["inpainting_mask_invert"], fields["resize_mode"], fields["mask_blur"]) == (1, 1, 6)
    assert (fields["lora_composition"], fields["lora_switch_steps"]) == ("Switch", 3)
    assert (fields["eta"], fields["s_churn"], fields["s_tmin"], fields["s_tmax"], fields["s_noise"]) == \
        (0.7, 0.3, 0.1, 9.0, 1.01)
    assert fields["override_settings"] == {"CLIP_stop_at_last_layers": 2, "randn_source": "NV",
                                           "eta_noise_seed_delta": 31337, "sigma_min": 0.05, "sigma_max": 12.0,
                                           "rho": 5.0}


def test_defaults_left_out_of_an_inpaint_infotext_come_back_as_defaults():
    fields = infotext_to_fields(parse_infotext("x\nSteps: 4, Seed: 1, Denoising strength: 0.5, Mask blur: 4, "
                                               "Masked content: original"))
    assert (fields["inpaint_full_res"], fields["inpainting_mask_invert"], fields["resize_mode"]) == (False, 0, 0)
    txt2img = infotext_to_fields(parse_infotext("x\nSteps: 4, Sampler: Euler, Seed: 1"))
    assert txt2img["steps"] == 4
    assert not {"inpaint_full_res", "inpainting_mask_invert", "resize_mode", "inpainting_fill"} & set(txt2img)


def test_override_list_carries_the_settings_into_the_request():
    items = override_items(parse_infotext(FULL))
    assert items == ["Clip skip: 2", "RNG: NV", "ENSD: 31337", "Eta: 0.7", "Sigma churn: 0.3", "Sigma tmin: 0.1",
                     "Sigma tmax: 9", "Sigma noise: 1.01", "Sigma min: 0.05", "Sigma max: 12", "Schedule rho: 5"]
    # the user removes one entry before generating: only the others apply
    request = GenerationRequest(**common_request_fields({"prompt": "x", "steps": 4, "sampler_name": "Euler a",
                                                         "override_settings": [i for i in items if "ENSD" not in i]}))
    assert request.override_settings == {"CLIP_stop_at_last_layers": 2, "randn_source": "NV", "sigma_min": 0.05,
                                         "sigma_max": 12.0, "rho": 5.0}
    assert (request.eta, request.s_churn, request.s_tmax) == (0.7, 0.3, 9.0)
    request.validate()
    # no RNG stated: AUTOMATIC1111's default (GPU) is listed, so the user sees it; an empty list changes nothing
    assert "RNG: GPU" in override_items(parse_infotext("x\nSteps: 4, Sampler: Euler, Seed: 1"))
    assert override_item_fields([]) == {} and override_item_fields(["Nonsense: 1"]) == {}


def test_engine_infotext_round_trips_through_the_fields(easel):
    picture = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    sent = dict(inpainting_fill=2, inpaint_full_res=True, inpaint_full_res_padding=40, inpainting_mask_invert=1,
                resize_mode=1, mask_blur=6, lora_switch_steps=3, eta=0.7, s_churn=0.3, denoising_strength=0.55,
                override_settings={"CLIP_stop_at_last_layers": 2, "randn_source": "NV", "eta_noise_seed_delta": 7})
    request = GenerationRequest(mode="img2img", prompt="a harbor", steps=2, width=64, height=64, seed=3,
                                sampler_name="Euler a", checkpoint="tiny-sd1.safetensors", save_images=False,
                                init_images=[picture], mask=mask, **sent)
    result = easel.img2img(request)
    fields = infotext_to_fields(parse_infotext(result.infotexts[0]))
    for name, value in sent.items():
        if name != "lora_switch_steps":  # written only when several LoRAs switch
            assert fields[name] == value, name


# ---- in a browser ----------------------------------------------------------------------------

CHROMIUM = os.environ.get("EASEL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def page(request):
    if not CHROMIUM:
        if os.environ.get("EASEL_REQUIRE_BROWSER"):
            raise RuntimeError("EASEL_REQUIRE_BROWSER is set but no chromium was found")
        pytest.skip("chromium is not installed")
    from test_browser import open_app  # only here: importing it skips a module without chromium

    server = request.getfixturevalue("ui_server")  # conftest's session-wide UI server (not started without chromium)
    with open_app(server.url) as page:
        yield page


def test_pnginfo_send_to_inpaint_fills_the_img2img_fields(page, tmp_path):
    from playwright.sync_api import expect

    path = tmp_path / "made.png"
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", FULL)
    Image.new("RGB", (64, 64), (30, 120, 200)).save(path, pnginfo=meta)
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
    expect(page.locator("#pnginfo_html")).to_contain_text("a harbor at dawn", timeout=15_000)
    page.locator("#pnginfo_send_inpaint").click()

    expect(page.locator("#inpaint_prompt textarea")).to_have_value("a harbor at dawn", timeout=30_000)
    expect(page.locator("#img2img_mask_blur input[type=number]")).to_have_value("6")
    expect(page.locator("#img2img_inpaint_full_res_padding input[type=number]")).to_have_value("40")
    expect(page.locator("#img2img_inpainting_fill").get_by_label("latent noise")).to_be_checked()
    expect(page.locator("#img2img_inpaint_full_res").get_by_label("Only masked")).to_be_checked()
    expect(page.locator("#img2img_mask_mode").get_by_label("Inpaint not masked")).to_be_checked()
    expect(page.locator("#inpaint_resize_mode").get_by_label("Crop and resize", exact=True)).to_be_checked()
    expect(page.locator("#inpaint_denoising_strength input[type=number]")).to_have_value("0.55")
    overrides = page.locator("#inpaint_override_settings")
    expect(overrides).to_be_visible()
    for item in ("Clip skip: 2", "RNG: NV", "ENSD: 31337", "Eta: 0.7", "Sigma churn: 0.3"):
        expect(overrides).to_contain_text(item)
    page.locator("#inpaint_lora_composition_box").get_by_text("LoRA composition").first.click()  # a closed accordion
    expect(page.locator("#inpaint_lora_switch_steps input[type=number]")).to_have_value("3")
    expect(page.locator("#inpaint_lora_composition").get_by_label("Switch")).to_be_checked()

    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_send_extras").click()
    expect(page.locator("#extras_image img")).to_be_visible(timeout=30_000)
    assert page.locator("#extras_send_to_img2img").count() == 1  # the Extras gallery has Send-to buttons too
