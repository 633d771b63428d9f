"""Soft inpainting on a tiny SD 1.x model: per-step latent blend, soft pixel composite, infotext, API."""
import base64
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from webui.core.infotext import parse_infotext
from webui.pnginfo import infotext_to_fields
from webui.core.request import GenerationRequest, ValidationError
from webui.features.img2img import prepare_mask
from webui.features.soft_inpaint import (PARAMETERS, SoftInpaintSettings, blend_latents, composite_alpha,
                                         from_alwayson, latent_weights)


BLUR = 3
A1111_TEXT = ("Soft inpainting enabled: True, Soft inpainting schedule bias: 1, Soft inpainting preservation strength: "
              "0.5, Soft inpainting transition contrast boost: 4, Soft inpainting mask influence: 0, Soft inpainting "
              "difference threshold: 0.5, Soft inpainting difference contrast: 2")


def picture(width=64, height=64, seed=0) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], -1)
    return Image.fromarray((base + rng.integers(0, 40, base.shape)).clip(0, 255).astype(np.uint8))


def mask_image() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (14, 14, 50, 50))
    return mask


def arr(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int32)


def inpaint(**kw) -> GenerationRequest:
    """An inpainting request; `soft_inpainting` and `soft_inpainting_<arg>` (the Inpaint tab's names) become
    the "soft inpainting" always-on script's args, the request's only place for them."""
    base = dict(mode="img2img", prompt="a house", steps=3, width=64, height=64, seed=4, sampler_name="Euler",
                checkpoint="tiny-sd1.safetensors", save_images=False, init_images=[picture()], mask=mask_image(),
                mask_blur=BLUR, inpainting_fill=1, inpaint_full_res=False, denoising_strength=0.9)
    soft = {k: kw.pop(k) for k in list(kw) if k.startswith("soft_inpainting")}
    base.update(kw)
    if soft:
        args = {"enabled": soft.pop("soft_inpainting", False)}
        args.update({k.removeprefix("soft_inpainting_"): v for k, v in soft.items()})
        base["alwayson_scripts"] = {"soft inpainting": {"args": args}}
    return GenerationRequest(**base)


def regions():
    """(outside, band, deep inside) boolean maps of the blurred mask the engine uses."""
    blurred = np.asarray(prepare_mask(mask_image(), (64, 64), BLUR, BLUR))
    return blurred == 0, (blurred > 0) & (blurred < 255), blurred == 255


# ---- the formulas ----------------------------------------------------------------------------------


def test_latent_weights_follow_mask_and_schedule():
    mask = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0])
    s = SoftInpaintSettings()
    early, late = latent_weights(mask, 14.6, s), latent_weights(mask, 0.1, s)
    assert early[0] == 0 and late[0] == 0 and early[-1] == 1 and late[-1] == 1
    assert torch.all(early[1:4] < late[1:4])  # the original yields as the noise falls
    assert torch.all(early[1:4] < mask[1:4]) and torch.all(late[1:4] > mask[1:4])
    # a larger bias preserves more at high sigma; no preservation strength: every masked pixel is new
    assert torch.all(latent_weights(mask, 5.0, SoftInpaintSettings(schedule_bias=2))[1:4] < early[1:4] + 1e-9)
    assert torch.equal(latent_weights(mask, 5.0, SoftInpaintSettings(preservation_strength=0))[1:],
                       torch.ones(4))


def test_blend_keeps_vector_length_and_is_exact_at_the_ends():
    a = torch.zeros(1, 4, 1, 3)
    b = torch.zeros(1, 4, 1, 3)
    a[0, 0], b[0, 1] = 1.0, 1.0            # orthogonal unit vectors
    a[0, 2, 0, 2], b[0, 2, 0, 2] = 1.0, 3.0  # parallel, lengths 1 and 3 (third pixel)
    a[0, 0, 0, 2] = b[0, 1, 0, 2] = 0.0
    weight = torch.tensor([0.0, 0.5, 1.0]).reshape(1, 1, 1, 3)
    out = blend_latents(a, b, weight, 4.0)
    assert torch.equal(out[..., 0], a[..., 0]) and torch.equal(out[..., 2], b[..., 2])
    # a plain lerp of orthogonal unit vectors has length 0.707; the power mean keeps 1
    assert abs(float(out[0, :, 0, 1].norm()) - 1.0) < 1e-6
    half = torch.full((1, 1, 1, 3), 0.5)
    linear = blend_latents(a, b, half, 1.0)
    assert abs(float(linear[0, :, 0, 2].norm()) - 2.0) < 1e-6   # p = 1: lengths interpolate linearly
    boosted = blend_latents(a, b, half, 32.0)
    assert 2.0 < float(boosted[0, :, 0, 2].norm()) <= 3.0        # large p: the longer vector's length wins


def test_composite_alpha():
    mask = np.array([0.0, 0.3, 0.5, 0.7, 1.0])
    same = np.full(5, 0.5)
    alpha = composite_alpha(mask, same, SoftInpaintSettings())
    assert alpha[0] == 0 and alpha[-1] == 1 and np.allclose(alpha[1:4], 0.5)  # difference = threshold: 50/50
    small, large = composite_alpha(mask, np.full(5, 0.1), SoftInpaintSettings()), \
        composite_alpha(mask, np.full(5, 2.0), SoftInpaintSettings())
    assert np.all(small[1:4] < 0.1) and np.all(large[1:4] > 0.9)
    follow = composite_alpha(mask, np.full(5, 9.0), SoftInpaintSettings(mask_influence=1))
    assert np.allclose(follow, mask)


# ---- the engine --------------------------------------------------------------------------------------


def test_off_is_exactly_todays_image(easel):
    plain = easel.img2img(inpaint())
    off = easel.img2img(inpaint(soft_inpainting=False, soft_inpainting_preservation_strength=3.0,
                                soft_inpainting_difference_threshold=0.0))
    assert np.array_equal(arr(plain.images[0]), arr(off.images[0]))
    assert "Soft inpainting" not in off.infotexts[0]


def test_soft_keeps_outside_changes_inside_and_blends_the_band(easel):
    original = arr(picture())
    hard = arr(easel.img2img(inpaint()).images[0])
    # the random tiny model moves latents far more than a real one (|change| 18-55 against a real model's
    # ~0.1-2), so the highest threshold with a gentle contrast leaves a visible share of the original
    soft = arr(easel.img2img(inpaint(soft_inpainting=True, soft_inpainting_difference_threshold=8.0,
                                     soft_inpainting_difference_contrast=1.0)).images[0])
    # threshold 0: every changed pixel of the band takes the generated one (same latents, other composite)
    generated = arr(easel.img2img(inpaint(soft_inpainting=True, soft_inpainting_difference_threshold=0.0,
                                          soft_inpainting_difference_contrast=1.0)).images[0])
    outside, band, inside = regions()
    assert outside.sum() > 1000 and band.sum() > 500 and inside.sum() > 40
    assert np.array_equal(soft[outside], original[outside])
    assert np.abs(soft[inside] - original[inside]).mean() > 5
    assert np.array_equal(soft[inside], generated[inside])
    # in the band each pixel lies between the original and the generated one (1 level for rounding)
    to_soft, to_generated = soft[band] - original[band], generated[band] - original[band]
    assert np.all(np.abs(to_soft) <= np.abs(to_generated) + 1)
    assert np.all(to_soft * to_generated >= -1)
    assert np.abs(to_soft).mean() < np.abs(to_generated).mean()  # the difference composite kept some original
    # the per-step soft blend changes the content itself, not only the paste-back
    assert np.abs(generated[band] - hard[band]).mean() > 1
    assert np.abs(soft[inside] - hard[inside]).mean() > 1


def test_soft_with_only_masked_and_a_batch(easel):
    big = picture(96, 80, seed=3)
    mask = Image.new("L", (96, 80), 0)
    mask.paste(255, (40, 30, 60, 50))
    result = easel.img2img(inpaint(init_images=[big], mask=mask, inpaint_full_res=True, inpaint_full_res_padding=8,
                                   batch_size=2, soft_inpainting=True))
    blurred = np.asarray(prepare_mask(mask, big.size, BLUR, BLUR))
    outside = blurred == 0
    for image in result.images:
        assert image.size == big.size
        assert np.array_equal(arr(image)[outside], arr(big)[outside])
        assert np.abs(arr(image)[blurred == 255] - arr(big)[blurred == 255]).mean() > 5
    assert not np.array_equal(arr(result.images[0]), arr(result.images[1]))


def test_infotext_round_trip(easel):
    sent = dict(soft_inpainting=True, soft_inpainting_schedule_bias=1.5, soft_inpainting_preservation_strength=0.75,
                soft_inpainting_transition_contrast_boost=6.0, soft_inpainting_mask_influence=0.25,
                soft_inpainting_difference_threshold=1.0, soft_inpainting_difference_contrast=3.0)
    result = easel.img2img(inpaint(**sent))
    text = result.infotexts[0]
    assert ("Soft inpainting enabled: True, Soft inpainting schedule bias: 1.5, Soft inpainting preservation "
            "strength: 0.75, Soft inpainting transition contrast boost: 6, Soft inpainting mask influence: 0.25, "
            "Soft inpainting difference threshold: 1, Soft inpainting difference contrast: 3") in text
    fields = infotext_to_fields(parse_infotext(text))
    for name, value in sent.items():
        assert fields[name] == value, name
    # AUTOMATIC1111's own text (its defaults) reads back as the same fields
    theirs = infotext_to_fields(parse_infotext("a house\nSteps: 20, Sampler: Euler, Seed: 1, Denoising strength: 0.75, "
                                               "Mask blur: 4, " + A1111_TEXT))
    assert theirs["soft_inpainting"] is True
    assert {p.field: theirs[p.field] for p in PARAMETERS} == {p.field: p.default for p in PARAMETERS}
    # the defaults are written exactly as AUTOMATIC1111 writes them
    defaults = easel.img2img(inpaint(soft_inpainting=True)).infotexts[0]
    assert A1111_TEXT in defaults
    # an inpainting infotext without the keys restores "off"
    plain = infotext_to_fields(parse_infotext("x\nSteps: 4, Seed: 1, Denoising strength: 0.5, Mask blur: 4"))
    assert plain["soft_inpainting"] is False


def test_validation_names_the_field(easel):
    with pytest.raises(ValidationError) as info:
        easel.engine.validate(inpaint(soft_inpainting=True, soft_inpainting_transition_contrast_boost=0.5,
                                      soft_inpainting_mask_influence=float("nan")))
    fields = {e.field for e in info.value.errors}
    assert fields == {"alwayson_scripts.soft inpainting.args.transition_contrast_boost",
                      "alwayson_scripts.soft inpainting.args.mask_influence"}
    with pytest.raises(ValidationError) as info:
        easel.engine.validate(inpaint(soft_inpainting="yes"))
    assert info.value.errors[0].field == "alwayson_scripts.soft inpainting.args.enabled"


def test_alwayson_args():
    assert from_alwayson({"args": [True, 2, 0.5, 4, 0, 0.5, 2]})["schedule_bias"] == 2
    assert from_alwayson({"args": [False]}) == {"enabled": False}
    assert from_alwayson({"args": {"enabled": True, "mask_influence": 0.5}}) == {"enabled": True, "mask_influence": 0.5}
    for bad in ({"args": [True] * 9}, {"args": {"strength": 1}}, {"args": "on"}):
        with pytest.raises(ValueError):
            from_alwayson(bad)


# ---- the API -----------------------------------------------------------------------------------------


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(api_server):
    """conftest's session-wide --api server."""
    return api_server


def test_api_alwayson_args_match_the_engine(server, easel):
    body = {"prompt": "a house", "steps": 3, "width": 64, "height": 64, "seed": 4, "sampler_name": "Euler",
            "cfg_scale": 7, "init_images": [b64(picture())], "mask": b64(mask_image()), "mask_blur": BLUR,
            "inpainting_fill": 1, "inpaint_full_res": False, "denoising_strength": 0.9,
            "override_settings": {"sd_model_checkpoint": "tiny-sd1.safetensors"},
            "alwayson_scripts": {"Soft Inpainting": {"args": [True, 1, 0.5, 4, 0, 0.5, 2]}}}
    with httpx.Client(base_url=server.url, timeout=300) as client:
        response = client.post("/sdapi/v1/img2img", json=body)
        assert response.status_code == 200, response.text
        api_image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
        bad = client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": {
            "soft inpainting": {"args": [True, 99]}}})
        assert bad.status_code == 422 and "soft inpainting.args.schedule_bias" in bad.text
    engine = easel.img2img(inpaint(soft_inpainting=True))
    hard = easel.img2img(inpaint())
    assert np.array_equal(arr(api_image), arr(engine.images[0]))
    assert not np.array_equal(arr(api_image), arr(hard.images[0]))
    assert A1111_TEXT in api_image.info["parameters"]


def test_soft_outpaint_keeps_the_original_and_records_it(easel):
    """Outpainting's 96x84 canvas (generated at 96x88) goes back through the soft alpha at its own size."""
    result = easel.img2img(inpaint(mask=None, outpaint_left=32, outpaint_down=20, mask_blur=2, denoising_strength=1.0,
                                   inpainting_fill=0, soft_inpainting=True))
    out = arr(result.images[0])
    assert out.shape == (64 + 20, 64 + 32, 3)
    original = arr(picture())
    assert np.array_equal(out[:64 - 16, 32 + 16:32 + 64], original[:64 - 16, 16:])
    assert np.abs(out[:, :24] - out[:, :24].mean()).mean() > 1  # the new border was generated
    assert A1111_TEXT in result.infotexts[0]


@pytest.mark.parametrize("sampler", ["DDIM", "UniPC"])
def test_soft_with_diffusers_schedulers(easel, sampler):
    """The VP-space path (`predict`): the same soft blend, expressed as the model's prediction."""
    original = arr(picture())
    outside, band, inside = regions()
    hard = arr(easel.img2img(inpaint(sampler_name=sampler)).images[0])
    # mask influence 1: the paste-back is the blurred mask, as without soft inpainting (up to rounding),
    # so what differs is the content the per-step blend produced
    soft = arr(easel.img2img(inpaint(sampler_name=sampler, soft_inpainting=True,
                                     soft_inpainting_mask_influence=1.0)).images[0])
    assert np.array_equal(soft[outside], original[outside])
    assert np.abs(soft[inside] - original[inside]).mean() > 5
    assert np.abs(soft[band] - hard[band]).mean() > 2


# ---- the Inpaint tab -----------------------------------------------------------------------------------


def test_inpaint_tab_accordion_generates_and_pastes_back(easel):
    import gradio as gr

    from webui.ui.img2img import build_inpaint
    from webui.ui.runner import SessionJobs
    from webui.ui.send_to import SendTarget, paste_updates

    with gr.Blocks() as blocks:
        checkpoint = gr.Dropdown(choices=["tiny-sd1.safetensors"], value="tiny-sd1.safetensors")
        controls = build_inpaint(easel, checkpoint, SessionJobs())
    i = controls.inputs
    assert i["soft_inpainting"].value is False and i["soft_inpainting"].elem_id == "img2img_soft_inpainting_enabled"
    for p in PARAMETERS:
        assert (i[p.field].elem_id, i[p.field].value, i[p.field].minimum, i[p.field].maximum) == \
            (f"img2img_{p.field}", p.default, p.low, p.high)
    run = next(f.fn for f in blocks.fns.values() if f.api_name == "inpaint")
    values = {"inpaint_mode": "upload", "upload_image": picture(), "upload_mask": mask_image(), "prompt": "a house",
              "steps": 3, "sampler_name": "Euler", "cfg_scale": 7, "seed": 4, "width": 64, "height": 64,
              "denoising_strength": 0.9, "mask_blur": BLUR, "inpainting_fill": 1, "inpaint_full_res": 0,
              "soft_inpainting": True, **{p.field: p.default for p in PARAMETERS}}
    inputs = {i[name]: value for name, value in values.items()}
    inputs[checkpoint] = "tiny-sd1.safetensors"
    request = type("Request", (), {"session_hash": "soft-test"})()
    *_, last = run(inputs, request)
    texts = last[4]  # progress, preview, gallery, info, infotexts, last seed
    assert texts and A1111_TEXT in texts[0]
    engine = easel.img2img(inpaint(soft_inpainting=True))
    assert texts[0].split("\n")[-1].split(", Version")[0] == engine.infotexts[0].split("\n")[-1].split(", Version")[0]
    # the text pasted back into the tab sets the checkbox and the sliders
    target = SendTarget(tab="inpaint", label="inpaint", controls=controls)
    changed = A1111_TEXT.replace("schedule bias: 1", "schedule bias: 2.5")
    updates = dict(zip(target.fields(), paste_updates(easel, target, "x\nSteps: 3, Seed: 1, Mask blur: 4, " + changed)))
    assert updates["soft_inpainting"] is True and updates["soft_inpainting_schedule_bias"] == 2.5
    assert updates["soft_inpainting_difference_contrast"] == 2.0
