"""Hires fix with model upscalers (models/ESRGAN): listed, accepted, run, recorded in infotext."""
from __future__ import annotations

import httpx
import numpy as np
import pytest

from webui.core.images import read_infotext
from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, ValidationError

from api_helpers import decode
from upscale_helpers import tiny_models


def hires(**kw) -> GenerationRequest:
    base = dict(prompt="a castle", steps=3, width=64, height=64, seed=5, sampler_name="Euler",
                checkpoint="tiny-sd1.safetensors", enable_hr=True, hr_scale=2, hr_second_pass_steps=2,
                denoising_strength=0.5, save_images=False)
    base.update(kw)
    return GenerationRequest(**base)


@pytest.fixture
def app(easel):
    tiny_models(easel.paths.models_dir)  # 4x-Tiny (ESRGAN) and 2x-TinyCompact (Real-ESRGAN Compact)
    return easel


def test_model_upscalers_are_hires_choices(app):
    names = app.engine.feature("hires").upscaler_names()
    assert {"4x-Tiny", "2x-TinyCompact", "Lanczos", "Latent"} <= set(names)
    assert "None" not in names  # hires fix always upscales


def test_hires_with_a_model_upscaler(app):
    model = app.txt2img(hires(hr_upscaler="4x-Tiny"))
    lanczos = app.txt2img(hires(hr_upscaler="Lanczos"))
    assert model.images[0].size == lanczos.images[0].size == (128, 128)
    params = parse_infotext(model.infotexts[0]).params
    assert params["Hires upscaler"] == "4x-Tiny" and params["Hires upscale"] == "2"
    assert parse_infotext(lanczos.infotexts[0]).params["Hires upscaler"] == "Lanczos"
    diff = np.abs(np.asarray(model.images[0], dtype=int) - np.asarray(lanczos.images[0], dtype=int))
    assert diff.mean() > 1  # the model's upscale (random weights) is not Lanczos's


def test_hires_model_upscaler_to_a_size_that_is_not_its_factor(app):
    result = app.txt2img(hires(hr_upscaler="2x-TinyCompact", hr_scale=1, hr_resize_x=96, hr_resize_y=80))
    assert result.images[0].size == (96, 80)
    assert parse_infotext(result.infotexts[0]).params["Hires upscaler"] == "2x-TinyCompact"


def test_unknown_or_removed_model_upscaler_names_the_field(app):
    (app.paths.models_dir / "ESRGAN" / "2x-TinyCompact.safetensors").unlink()
    with pytest.raises(ValidationError) as caught:
        app.submit(hires(hr_upscaler="2x-TinyCompact"))
    assert [e.field for e in caught.value.errors] == ["hr_upscaler"]
    assert "4x-Tiny" in str(caught.value.errors[0])


@pytest.fixture(scope="module")
def server(api_server):
    """conftest's session-wide --api server (the tiny upscalers in models/ESRGAN)."""
    return api_server


def test_api_and_ui_offer_model_upscalers_for_hires(server):
    body = {"prompt": "a castle", "steps": 3, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler",
            "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2, "denoising_strength": 0.5,
            "hr_upscaler": "4x-Tiny"}
    response = httpx.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=180)
    assert response.status_code == 200, response.text
    image = decode(response.json()["images"][0])
    assert image.size == (128, 128)
    assert parse_infotext(read_infotext(image)).params["Hires upscaler"] == "4x-Tiny"

    config = httpx.get(server.url + "/config", timeout=30).json()
    dropdown = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "txt2img_hr_upscaler")
    choices = [c[0] if isinstance(c, (list, tuple)) else c for c in dropdown["props"]["choices"]]
    assert "4x-Tiny" in choices and "2x-TinyCompact" in choices and "Latent" in choices


def test_a_request_is_prepared_once_into_typed_frozen_values(app):
    """Engine.prepare validates and parses every feature's arguments once; the job uses that result."""
    import dataclasses

    from webui.core.request import GenerationRequest, ValidationError
    from webui.features.hires import HiresSettings

    request = GenerationRequest(prompt="x", width=64, height=96, enable_hr=True, hr_scale=1.5, hr_upscaler="Lanczos",
                                hr_prompt="y", denoising_strength=0.4, checkpoint="tiny-sd1")
    prepared = app.engine.prepare(request)
    assert prepared.args["hires"] == HiresSettings(size=(96, 144), scale=1.5, resize=(0, 0), upscaler="Lanczos",
                                                   steps=0, sampler="", scheduler="", prompt="y", negative_prompt="",
                                                   denoising_strength=0.4)
    assert prepared.args["img2img"] is None and prepared.args["controlnet"] is None
    from PIL import Image

    from webui.features.img2img_feature import Img2ImgArgs

    picture = Image.new("RGB", (64, 64), (10, 20, 30))
    i2i = app.engine.prepare(GenerationRequest(mode="img2img", init_images=[picture], denoising_strength=0.3,
                                               inpainting_fill=2, outpaint_left=16, checkpoint="tiny-sd1"))
    args = i2i.args["img2img"]
    assert isinstance(args, Img2ImgArgs) and args.init_images == (picture,) and args.outpainting
    assert (args.denoising_strength, args.inpainting_fill, i2i.args["hires"]) == (0.3, 2, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.prompt = "changed"  # a change is dataclasses.replace(request, ...)
    with pytest.raises(TypeError):
        prepared.args["hires"] = None  # read-only
    assert app.engine.prepare(dataclasses.replace(request, enable_hr=False)).args["hires"] is None
    with pytest.raises(ValidationError) as error:
        app.engine.prepare(dataclasses.replace(request, hr_prompt=3, hr_scale=9))
    assert {e.field for e in error.value.errors} == {"hr_prompt", "hr_scale"}
