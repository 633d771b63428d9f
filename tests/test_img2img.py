"""img2img, inpainting (ordinary and 9-channel checkpoints), outpainting and hires fix on tiny models."""
import numpy as np
import pytest
from PIL import Image

from webui.core import latents as latents_io
from webui.core.infotext import parse_infotext
from webui.core.pipeline import Feature
from webui.core.request import GenerationRequest, ValidationError
from webui.features.img2img import (RESIZE_CROP, RESIZE_FILL, RESIZE_JUST, masked_region, outpaint_canvas,
                                    prepare_mask, resize_image)

from conftest import make_easel


def picture(width=64, height=64, seed=0) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], -1)
    return Image.fromarray((base + rng.integers(0, 40, base.shape)).clip(0, 255).astype(np.uint8))


def center_mask(size=(64, 64), box=(20, 20, 44, 44)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def arr(image):
    return np.asarray(image.convert("RGB")).astype(np.int16)


def i2i(**kw) -> GenerationRequest:
    base = dict(mode="img2img", prompt="a house", steps=6, width=64, height=64, seed=4, sampler_name="Euler",
                checkpoint="tiny-sd1.safetensors", save_images=False, init_images=[picture()], inpaint_full_res=False)
    base.update(kw)
    return GenerationRequest(**base)


@pytest.fixture
def app(tmp_path, tiny_variants_dir):
    app = make_easel(tmp_path, tiny_variants_dir)
    yield app
    app.close()


@pytest.fixture
def sd1(easel):
    return easel


class LatentCapture(Feature):
    """A feature (the engine's public protocol) that keeps the sampled latents and the prepared inputs."""

    name = "test_capture"

    def finish_images(self, run, batch, images, latents):
        self.latents, self.inputs = latents, run.state["img2img"].images
        return images


def _sampled_latents(app, request):
    """The real engine's sampled latents (before decoding) and the encoded input, for latent-level checks."""
    capture = LatentCapture()
    app.engine.features.insert(0, capture)
    try:
        app.img2img(request)
    finally:
        app.engine.features.remove(capture)
    init = latents_io.encode(app.models.get(request.checkpoint), [p.target for p in capture.inputs])
    return capture.latents, init


def test_strength_near_zero_keeps_the_input_and_one_ignores_it(sd1):
    init_latents = None
    for strength, expect_close in ((0.01, True), (1.0, False)):
        latents, init_latents = _sampled_latents(sd1, i2i(denoising_strength=strength))
        relative = float((latents - init_latents).abs().mean() / init_latents.abs().mean())
        assert (relative < 0.1) if expect_close else (relative > 0.5), (strength, relative)
    other = picture(seed=9).transpose(Image.Transpose.ROTATE_180)

    def input_effect(strength):
        a = sd1.img2img(i2i(denoising_strength=strength))
        b = sd1.img2img(i2i(denoising_strength=strength, init_images=[other]))
        return np.abs(arr(a.images[0]) - arr(b.images[0])).mean()

    # strength 1 starts from noise at sigma_max (~14.6 latents' std): the input barely matters
    assert input_effect(1.0) < 0.25 * input_effect(0.3)


def test_strength_zero_is_the_vae_round_trip(sd1):
    model = sd1.models.get("tiny-sd1.safetensors")
    result = sd1.img2img(i2i(denoising_strength=0.0))
    round_trip = latents_io.decode(model, latents_io.encode(model, [picture()]))[0]
    assert np.array_equal(arr(result.images[0]), arr(round_trip))


def test_img2img_output_files_and_infotext(sd1):
    result = sd1.img2img(i2i(denoising_strength=0.6, save_images=True))
    assert "/img2img-images/" in result.paths[0]
    info = parse_infotext(result.infotexts[0])
    assert info.params["Denoising strength"] == "0.6" and info.params["Size"] == "64x64"


@pytest.mark.parametrize("checkpoint", ["sd1.safetensors", "sd1-inpaint.safetensors", "sdxl-inpaint.safetensors"])
def test_inpaint_changes_inside_and_keeps_outside_exactly(app, checkpoint):
    mask = center_mask()
    result = app.img2img(i2i(checkpoint=checkpoint, mask=mask, mask_blur=4, denoising_strength=0.9,
                             inpainting_fill=1))
    out, original = arr(result.images[0]), arr(picture())
    blurred = np.asarray(prepare_mask(mask, (64, 64), 4, 4))
    outside = blurred == 0
    assert outside.sum() > 1000
    assert np.array_equal(out[outside], original[outside])
    inside = np.asarray(mask) == 255
    assert np.abs(out[inside] - original[inside]).mean() > 5
    info = parse_infotext(result.infotexts[0])
    assert info.params["Mask blur"] == "4" and info.params["Masked content"] == "original"


def test_inpainting_model_gets_mask_channels(app):
    model = app.models.get("sd1-inpaint.safetensors")
    assert model.unet.config.in_channels == 9
    seen = []
    handle = model.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        app.txt2img(GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=1,
                                      checkpoint="sd1-inpaint.safetensors", save_images=False))
    finally:
        handle.remove()
    assert seen and all(channels == 9 for channels in seen)


@pytest.mark.parametrize("fill", [0, 2, 3])
def test_masked_content_modes(sd1, fill):
    base = sd1.img2img(i2i(mask=center_mask(), inpainting_fill=1, denoising_strength=0.8))
    other = sd1.img2img(i2i(mask=center_mask(), inpainting_fill=fill, denoising_strength=0.8))
    assert np.isfinite(arr(other.images[0])).all()
    assert np.abs(arr(base.images[0]) - arr(other.images[0])).mean() > 0.1


def test_only_masked_keeps_the_full_image_size(sd1):
    big = picture(128, 96)
    mask = center_mask((128, 96), (60, 40, 80, 60))
    result = sd1.img2img(i2i(init_images=[big], mask=mask, inpaint_full_res=True, inpaint_full_res_padding=8,
                             mask_blur=2, denoising_strength=0.9))
    out = arr(result.images[0])
    assert out.shape == (96, 128, 3)
    outside = np.asarray(prepare_mask(mask, (128, 96), 2, 2)) == 0
    assert np.array_equal(out[outside], arr(big)[outside])
    assert parse_infotext(result.infotexts[0]).params["Inpaint area"] == "Only masked"


def test_inverted_mask_changes_the_outside(sd1):
    mask = center_mask()
    result = sd1.img2img(i2i(mask=mask, inpainting_mask_invert=1, mask_blur=0, denoising_strength=0.9))
    out, original = arr(result.images[0]), arr(picture())
    inside = np.asarray(mask) == 255
    assert np.array_equal(out[inside], original[inside])
    assert np.abs(out[~inside] - original[~inside]).mean() > 5


def test_outpaint_grows_the_canvas_and_preserves_the_original(sd1):
    result = sd1.img2img(i2i(outpaint_left=32, outpaint_down=20, mask_blur=2, denoising_strength=1.0,
                             inpainting_fill=0))
    out = arr(result.images[0])
    assert out.shape == (64 + 20, 64 + 32, 3)
    kept = out[:64 - 16, 32 + 0:32 + 64]  # the original minus the blend overlap along the new edges
    original = arr(picture())[:64 - 16, :]
    assert np.array_equal(kept[:, 16:], original[:, 16:])
    assert np.abs(out[:, :24].astype(float) - 128).mean() != 0  # the new border was generated
    info = parse_infotext(result.infotexts[0])
    assert info.params["Outpaint left"] == "32" and info.params["Outpaint down"] == "20"


def test_hires_fix_output_size_and_infotext(sd1):
    result = sd1.txt2img(GenerationRequest(prompt="a castle", steps=4, width=64, height=64, seed=2,
                                           checkpoint="tiny-sd1.safetensors", enable_hr=True, hr_scale=1.5,
                                           hr_second_pass_steps=3, denoising_strength=0.6, save_images=False))
    assert result.images[0].size == (96, 96)
    info = parse_infotext(result.infotexts[0])
    assert info.params["Size"] == "64x64" and info.params["Hires upscale"] == "1.5"
    assert info.params["Hires steps"] == "3" and info.params["Hires upscaler"] == "Latent"
    assert info.params["Denoising strength"] == "0.6"


@pytest.mark.parametrize("upscaler", ["Latent (bicubic antialiased)", "Lanczos", "Nearest"])
def test_hires_upscalers_and_resize_to(sd1, upscaler):
    result = sd1.txt2img(GenerationRequest(prompt="a castle", steps=3, width=64, height=64, seed=2,
                                           checkpoint="tiny-sdxl.safetensors", enable_hr=True, hr_upscaler=upscaler,
                                           hr_resize_x=128, hr_resize_y=96, save_images=False))
    assert result.images[0].size == (128, 96)
    assert parse_infotext(result.infotexts[0]).params["Hires resize"] == "128x96"


def test_hires_validation_names_fields(sd1):
    with pytest.raises(ValidationError) as caught:
        sd1.submit(GenerationRequest(enable_hr=True, hr_upscaler="Magic", hr_scale=9, width=512, height=512))
    fields = {e.field for e in caught.value.errors}
    assert {"hr_upscaler", "hr_scale"} <= fields


def test_img2img_validation(sd1):
    with pytest.raises(ValidationError) as caught:
        sd1.submit(GenerationRequest(mode="img2img", init_images=[], denoising_strength=2))
    assert {"init_images", "denoising_strength"} <= {e.field for e in caught.value.errors}


# ---- pixel helpers ----------------------------------------------------------------------------


def test_resize_modes_give_the_requested_size():
    image = picture(100, 50)
    for mode in (RESIZE_JUST, RESIZE_CROP, RESIZE_FILL):
        assert resize_image(image, 64, 64, mode).size == (64, 64)
    filled = arr(resize_image(Image.new("RGB", (100, 50), "red"), 64, 64, RESIZE_FILL))
    assert (filled[:, :, 0] > 200).all()  # the bands are stretched edges, not black


def test_masked_region_is_padded_and_matches_aspect_ratio():
    mask = center_mask((200, 100), (90, 40, 110, 60))
    region = masked_region(mask, 10, (64, 64))
    assert region.size[0] == region.size[1]
    assert region.left <= 80 and region.right >= 120


def test_outpaint_canvas_mask():
    canvas, mask = outpaint_canvas(picture(), 16, 0, 0, 8, overlap=4)
    assert canvas.size == (80, 72) and mask.size == (80, 72)
    m = np.asarray(mask)
    assert m[0, 0] == 255 and m[30, 40] == 0 and m[30, 17] == 255 and m[30, 21] == 0
    assert np.array_equal(arr(canvas)[0:60, 16:80], arr(picture())[0:60, :])
