"""AUTOMATIC1111 request fields that used to be refused: the hires checkpoint, a given first pass, the legacy
firstphase size, and img2img's noise multiplier, unrounded and separate latent masks and x/y mask blur.

Each changes the image the way AUTOMATIC1111's code does (an exact reference where one exists), and its
default leaves the pixels as they were. One module app on tiny SD 1.x checkpoints, 64x64, 3-4 steps.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from webui.api.errors import ApiError
from webui.api.models import Img2ImgRequest, Txt2ImgRequest
from webui.api.translate import to_generation_request
from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, ValidationError
from webui.model_manager.architecture import Architecture
from webui.model_manager.tiny import write_single_file
from webui.pnginfo import infotext_to_fields

SD1, OTHER, INPAINT = "tiny-sd1.safetensors", "other-sd1.safetensors", "inpaint-sd1.safetensors"


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    from conftest import make_easel

    root = tmp_path_factory.mktemp("a1111_fields")
    folder = root / "checkpoints"
    folder.mkdir()
    for path in tiny_ckpt_dir.iterdir():
        (folder / path.name).symlink_to(path)
    write_single_file(folder / OTHER, Architecture("sd1"), seed=3)
    write_single_file(folder / INPAINT, Architecture("sd1", inpainting=True), seed=3)
    easel = make_easel(root, folder)
    easel.settings.update({"sd_checkpoints_limit": 3})  # both SD 1.x files stay loaded between the jobs
    yield easel
    easel.close()


def picture(width: int = 64, height: int = 64) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], -1)
    return Image.fromarray(base.astype(np.uint8))


def box_mask(box=(20, 20, 44, 44)) -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, box)
    return mask


def request(**changes) -> GenerationRequest:
    base = dict(prompt="a red fox", negative_prompt="blurry", steps=4, width=64, height=64, seed=42,
                sampler_name="Euler", checkpoint=SD1, save_images=False)
    base.update(changes)
    return GenerationRequest(**base)


def generate(app, **changes) -> tuple[np.ndarray, dict[str, str], Image.Image]:
    result = app.generate(request(**changes))
    return np.asarray(result.images[0]).astype(np.int16), parse_infotext(result.infotexts[0]).params, \
        result.images[0]


HIRES = dict(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=3, denoising_strength=0.6)


# ---- hires fix: another checkpoint, a given first pass ---------------------------------------------------


def test_hires_checkpoint_runs_the_second_pass_on_it(app):
    plain, plain_params, _ = generate(app, **HIRES)
    same, params, _ = generate(app, **HIRES, hr_checkpoint_name="Use same checkpoint")
    assert np.array_equal(same, plain) and params == plain_params  # A1111's "same" entry: nothing changes
    other, params, _ = generate(app, **HIRES, hr_checkpoint_name="other-sd1")
    assert other.shape == plain.shape and np.abs(other - plain).max() > 0
    assert params["Hires checkpoint"].startswith("other-sd1 [") and params["Model"] == "tiny-sd1"
    fields = infotext_to_fields(parse_infotext(f"x\nSteps: 4, Seed: 1, Size: 64x64, Hires upscale: 1.5, "
                                               f"Hires checkpoint: {params['Hires checkpoint']}"))
    assert fields["hr_checkpoint_name"] == params["Hires checkpoint"]
    from webui.ui.send_to import pasted_fields

    pasted = pasted_fields(app, f"x\nSteps: 4, Seed: 1, Size: 64x64, Hires upscale: 1.5, "
                                f"Hires checkpoint: {params['Hires checkpoint']}")
    assert pasted["hr_checkpoint_name"] == app.models.registry.title(app.models.registry.find(OTHER))
    no_key = parse_infotext("x\nSteps: 4, Seed: 1, Size: 64x64, Hires upscale: 2")
    assert infotext_to_fields(no_key)["hr_checkpoint_name"] == ""  # A1111: no key is "Use same checkpoint"
    with pytest.raises(ValidationError, match="hr_checkpoint_name"):
        app.engine.validate(request(**HIRES, hr_checkpoint_name="no-such-model"))


def test_hires_from_a_given_first_pass_equals_the_generated_one(app):
    """An image upscale takes the first pass's decoded picture: giving that picture as `firstpass_image` to a job
    on the hires checkpoint must give exactly the image of a hires pass on that checkpoint after a generated first
    pass, with no first pass sampled."""
    lanczos = dict(HIRES, hr_upscaler="Lanczos")
    _, _, first_pass = generate(app)  # what the hires fix's first pass decodes to
    generated, params, _ = generate(app, **lanczos, hr_checkpoint_name="other-sd1")
    calls: list[int] = []
    unet = app.models.get_companion(OTHER).unet
    handle = unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        given, _, _ = generate(app, **lanczos, checkpoint=OTHER, firstpass_image=first_pass)
    finally:
        handle.remove()
    assert np.array_equal(given, generated)
    assert len(calls) == 3  # the three hires steps only (one CFG batch each); no first pass
    latent, _, _ = generate(app, **HIRES, firstpass_image=first_pass)  # a latent upscale encodes the picture
    plain, _, _ = generate(app, **HIRES)
    assert latent.shape == plain.shape and np.abs(latent - plain).max() > 0
    with pytest.raises(ValidationError, match="firstpass_image"):
        app.engine.validate(request(firstpass_image=first_pass))  # without enable_hr it would be ignored


def test_hires_sampler_scheduler_and_prompts_are_honoured(app):
    plain, _, _ = generate(app, **HIRES)
    for change, key in ((dict(hr_sampler_name="DPM++ 2M"), "Hires sampler"),
                        (dict(hr_scheduler="Karras"), "Hires schedule type"),
                        (dict(hr_prompt="a blue bird"), "Hires prompt"),
                        (dict(hr_negative_prompt="sharp"), "Hires negative prompt")):
        image, params, _ = generate(app, **HIRES, **change)
        assert np.abs(image - plain).max() > 0 and key in params, change


# ---- the API edge: A1111's payloads ------------------------------------------------------------------------


def test_the_api_accepts_the_fields_and_firstphase_replaces_width_and_height(app):
    built = to_generation_request(Txt2ImgRequest(prompt="x", width=128, height=96, firstphase_width=64,
                                                 firstphase_height=80, enable_hr=True, hr_checkpoint_name="other-sd1",
                                                 hr_upscaler="Latent"), app)
    assert (built.width, built.height, built.hr_checkpoint_name) == (64, 80, "other-sd1")
    with pytest.raises(ApiError) as error:
        to_generation_request(Txt2ImgRequest(prompt="x", firstphase_width=64), app)
    assert error.value.status == 422 and "needs firstphase_height" in repr((error.value.detail, error.value.extra))
    with pytest.raises(ApiError) as error:
        to_generation_request(Img2ImgRequest(init_images=["x"], image_cfg_scale=2.0), app)
    said = repr((error.value.detail, error.value.extra))
    assert error.value.error == "NotImplemented" and "instruct-pix2pix" in said and "image_cfg_scale" in said


# ---- img2img: noise multiplier, masks ----------------------------------------------------------------------


def i2i(app, **changes):
    base = dict(mode="img2img", init_images=[picture()], denoising_strength=0.7, inpaint_full_res=False)
    base.update(changes)
    return generate(app, **base)


def test_initial_noise_multiplier_field_and_setting(app):
    plain, plain_params, _ = i2i(app)
    one, params, _ = i2i(app, initial_noise_multiplier=1.0)
    assert np.array_equal(one, plain) and "Noise multiplier" not in params and params == plain_params
    lower, params, _ = i2i(app, initial_noise_multiplier=0.5)
    assert np.abs(lower - plain).max() > 0 and params["Noise multiplier"] == "0.5"
    setting, params, _ = i2i(app, override_settings={"initial_noise_multiplier": 0.5})
    assert np.array_equal(setting, lower) and params["Noise multiplier"] == "0.5"
    fields = infotext_to_fields(parse_infotext("x\nSteps: 4, Seed: 1, Size: 64x64, Denoising strength: 0.7, "
                                               "Noise multiplier: 0.5"))
    assert fields["override_settings"]["initial_noise_multiplier"] == 0.5
    txt, params, _ = generate(app, initial_noise_multiplier=0.5)  # img2img's only, as in AUTOMATIC1111
    assert "Noise multiplier" not in params
    with pytest.raises(ValidationError, match="initial_noise_multiplier"):
        app.engine.validate(request(mode="img2img", init_images=[picture()], initial_noise_multiplier=3.0))


def test_mask_blur_along_x_and_y(app):
    plain, plain_params, _ = i2i(app, mask=box_mask(), mask_blur=4)
    same, params, _ = i2i(app, mask=box_mask(), mask_blur=4, mask_blur_x=4, mask_blur_y=4)
    assert np.array_equal(same, plain) and params == plain_params and params["Mask blur"] == "4"
    apart, params, _ = i2i(app, mask=box_mask(), mask_blur=4, mask_blur_x=8, mask_blur_y=0)
    assert np.abs(apart - plain).max() > 0 and "Mask blur" not in params  # A1111 writes none when they differ
    # y blur 0: the composite's mask keeps the box's hard top and bottom edges, x blur softens left and right
    column, row = apart[:, 32].astype(int), apart[32, :].astype(int)
    original = np.asarray(picture()).astype(int)
    assert np.array_equal(column[:20], original[:20, 32]) and np.abs(row[12:20] - original[32, 12:20]).max() > 0


def test_unrounded_latent_mask(app):
    plain, _, _ = i2i(app, mask=box_mask(), mask_blur=8)
    rounded, _, _ = i2i(app, mask=box_mask(), mask_blur=8, mask_round=True)
    assert np.array_equal(rounded, plain)
    unrounded, _, _ = i2i(app, mask=box_mask(), mask_blur=8, mask_round=False)
    assert np.abs(unrounded - plain).max() > 0


class ConditioningRecorder:
    """Stands where the denoiser would: keeps what the engine hands an inpainting model besides the latents."""

    def set_image_conditioning(self, conditioning):
        self.conditioning = conditioning


def test_unrounded_mask_reaches_inpainting_models(app):
    """AUTOMATIC1111 passes mask_round on to the 9-channel models' conditioning: the mask and masked picture."""
    from webui.core.pipeline import Batch, Sampling
    from webui.features.img2img import prepare_mask

    model = app.models.get(INPAINT)
    blurred = prepare_mask(box_mask(), (64, 64), 8, 8)
    seen = {}
    for rounded in (True, False):
        recorder = ConditioningRecorder()
        sampling = Sampling(Batch(0, [1], 0), None, None, recorder, None, inpaint_inputs=([picture()], [blurred]),
                            inpaint_mask_rounded=rounded)
        app.engine._inpainting_model_conditioning(model, sampling, 64, 64)
        seen[rounded] = recorder.conditioning
    assert not torch.equal(seen[True], seen[False])
    plain, _, _ = i2i(app, checkpoint=INPAINT, mask=box_mask(), mask_blur=8)
    unrounded, _, _ = i2i(app, checkpoint=INPAINT, mask=box_mask(), mask_blur=8, mask_round=False)
    assert np.abs(unrounded - plain).max() > 0


def test_separate_latent_mask(app):
    plain, _, _ = i2i(app, mask=box_mask(), mask_blur=0)
    same, _, _ = i2i(app, mask=box_mask(), mask_blur=0, latent_mask=box_mask())  # the same mask: no change
    assert np.array_equal(same, plain)
    wider, _, _ = i2i(app, mask=box_mask(), mask_blur=0, latent_mask=box_mask((8, 8, 56, 56)))
    assert np.abs(wider - plain).max() > 0
    outside = np.ones((64, 64), bool)
    outside[20:44, 20:44] = False  # the pixel mask still decides what is pasted back
    assert np.array_equal(wider[outside], plain[outside])
    with pytest.raises(ValidationError, match="latent_mask"):
        app.engine.validate(request(mode="img2img", init_images=[picture()], latent_mask=box_mask()))


def test_the_txt2img_tab_sends_the_hires_checkpoint():
    from webui.ui.txt2img import txt2img_request

    tab = dict(prompt="x", steps=4, width=64, height=64, enable_hr=True, checkpoint=SD1)
    assert txt2img_request({**tab, "hr_checkpoint_name": "Use same checkpoint"}).hr_checkpoint_name == ""
    assert txt2img_request({**tab, "hr_checkpoint_name": "other-sd1.safetensors [0123456789]"}).hr_checkpoint_name \
        == "other-sd1.safetensors [0123456789]"
