"""Tiled diffusion (the Tiled Diffusion extension's MultiDiffusion / Mixture of Diffusers) on the tiny SD 1.x model.

64x64 pictures are 8x8 latents; latent tiles of 6 with overlap 2 make a 2x2 grid whose tiles overlap
in the middle two latent columns and rows (the extension clamps the overlap to tile - 4, so 4-wide
tiles would not overlap at all).
"""

import numpy as np
import pytest
import torch
from PIL import Image

from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, ValidationError
from webui.features.tiled_diffusion.args import args_from_params, parse
from webui.features.tiled_diffusion.blend import RegionPlan, TilePlan, tile_denoiser
from webui.features.tiled_diffusion.tiles import Box, feather_mask, grid_boxes, region_box, tile_weights

from conftest import make_easel

CKPT = "tiny-sd1.safetensors"


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    app = make_easel(tmp_path_factory.mktemp("tiled"), tiny_ckpt_dir)
    yield app
    app.close()


def td(method="MultiDiffusion", tile=6, overlap=2, batch=4, regions=(), draw_background=False, enabled=True,
       overwrite=None):
    """The extension's always-on args, in its UI's order."""
    size = overwrite or (1024, 1024)
    args = [enabled, method, overwrite is not None, True, size[0], size[1], tile, tile, overlap, batch, "None", 2.0,
            False, 10, 1.0, 1.0, 64, False, bool(regions), draw_background, False]
    for region in regions:
        args += region
    return {"Tiled Diffusion": {"args": args}}


def generate(app, scripts=None, prompt="a cat", size=64, **kw):
    base = dict(prompt=prompt, negative_prompt="blurry", steps=2, width=size, height=size, seed=5,
                sampler_name="Euler", checkpoint=CKPT, save_images=False, alwayson_scripts=scripts or {})
    base.update(kw)
    return app.generate(GenerationRequest(**base))


def arr(result) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB")).astype(np.float64)


def test_tiles_and_weights_as_the_extension_lays_them_out():
    assert grid_boxes(8, 8, 6, 6, 2) == [Box(0, 0, 6, 6), Box(2, 0, 6, 6), Box(0, 2, 6, 6), Box(2, 2, 6, 6)]
    assert len(grid_boxes(8, 8, 4, 4, 2)) == 4  # overlap clamped to tile - 4 = 0
    assert grid_boxes(8, 8, 96, 96, 48) == [Box(0, 0, 8, 8)]  # one tile of the canvas' size
    assert grid_boxes(20, 8, 8, 8, 4)[-1] == Box(12, 0, 8, 8)  # the last tile flush with the edge
    gaussian = tile_weights("Mixture of Diffusers", 6, 6)
    assert gaussian[3, 2] == gaussian.max() and gaussian[0, 0] < gaussian[3, 2] / 100
    assert tile_weights("MultiDiffusion", 6, 6).eq(1).all()
    feather = feather_mask(8, 8, 0.5)
    assert feather[4, 4] == 1 and feather[0, 4] == 0 and 0 < feather[1, 4] < 1
    assert region_box(0.5, 0.25, 0.5, 0.5, 8, 8) == Box(4, 2, 4, 4)


class PointwiseDenoiser:
    """A CFG denoiser stand-in whose prediction at a position depends on that position's input only."""

    def __init__(self):
        self.batch_size, self._batches, self.image_conditioning = 1, {}, None
        self.cond = self.uncond = None
        self.cfg_scale, self.use_uncond = 7.0, True
        self.seen: list[tuple] = []

    def inner_denoisers(self):
        return [self]

    def predict(self, x, t):
        self.seen.append((tuple(x.shape), self.batch_size))
        return x * 2 + (1 if self.cond is None else 5)


class OneCond:
    parts = [(None, 1.0)]


@pytest.mark.parametrize("method", ["MultiDiffusion", "Mixture of Diffusers"])
def test_blending_tiles_of_a_pointwise_model_gives_the_untiled_prediction(method):
    """The weights are normalised: where every tile agrees, the blend is exactly that value."""
    fake = PointwiseDenoiser()
    fake.batch_size = 2  # two images
    plan = TilePlan((8, 8), method, grid_boxes(8, 8, 6, 6, 2), 3)
    tile_denoiser(fake, plan)
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(fake.predict(x, 1.0), x * 2 + 1)
    # four tiles in batches of three: the denoiser's batch widened to 3 (then 1) tiles x 2 images
    assert fake.seen == [((6, 4, 6, 6), 6), ((2, 4, 6, 6), 2)] and fake.batch_size == 2
    assert fake.predict(torch.randn(2, 4, 16, 16), 1.0).shape == (2, 4, 16, 16)  # another size: not tiled
    assert plan.calls == 1


def test_regions_predict_with_their_own_conditioning_only_in_their_box():
    fake = PointwiseDenoiser()
    region = RegionPlan(Box(0, 0, 4, 8), OneCond(), OneCond(), foreground=False)
    top = RegionPlan(Box(4, 0, 4, 4), OneCond(), OneCond(), foreground=True, feather=torch.ones(4, 4))
    tile_denoiser(fake, TilePlan((8, 8), "MultiDiffusion", grid_boxes(8, 8, 6, 6, 2), 4, [region, top]))
    out = fake.predict(torch.zeros(1, 4, 8, 8), 1.0)
    left = out[0, 0, 4, 0].item()
    assert left == pytest.approx((1 + 1 + 5) / 3)  # two tiles and the region cover (4, 0)
    assert out[0, 0, 0, 6].item() == pytest.approx(5)  # the foreground box lies on top, fully opaque
    assert out[0, 0, 6, 6].item() == pytest.approx(1)  # elsewhere only tiles
    assert fake.cond is None  # the denoiser's own conditioning is back


class PooledHint:
    """A stand-in ControlNet / T2I-Adapter whose output at a latent pixel is the mean of the map's 8x8 pixels there."""

    config = type("Config", (), {"in_channels": 3})()

    @staticmethod
    def pooled(hint):
        return torch.nn.functional.avg_pool2d(hint, 8).mean(1, keepdim=True).expand(-1, 4, -1, -1)

    def __call__(self, x=None, t=None, encoder_hidden_states=None, controlnet_cond=None, conditioning_scale=1.0,
                 return_dict=False, **kw):
        if controlnet_cond is None:  # as a T2I-Adapter: adapter(hint) -> features
            return [self.pooled(x)]
        return [], self.pooled(controlnet_cond) * conditioning_scale


class ControlledDenoiser(PointwiseDenoiser):
    """Pointwise, plus the ControlNet additions the real CFG denoiser asks its Controls for (uncond and cond)."""

    def predict(self, x, t):
        self.seen.append((tuple(x.shape), self.batch_size))
        rows = x.repeat(2, 1, 1, 1)
        kwargs = self.controls.unet_kwargs(0.0, rows, torch.zeros(1), torch.zeros(rows.shape[0], 1, 1), {}, 2, True)
        added = kwargs.get("mid_block_additional_residual")
        if added is None:
            added = kwargs["down_intrablock_additional_residuals"][0]
        out = rows * 2 + added
        return out[:x.shape[0]] + out[x.shape[0]:] * 3 + (0 if self.cond is None else 4)


@pytest.mark.parametrize("kind", ["controlnet", "t2i_adapter"])
def test_controlnet_maps_are_cut_to_each_tile(kind):
    """Each tile's (and region's) prediction sees the map under that tile, so tiling a model that reads the map
    pointwise gives the untiled prediction; a map not cut (or cut in the wrong order) would not."""
    from webui.features.controlnet.apply import ControlApplication, Controls, adapter_features

    torch.manual_seed(0)
    hint, fake_model = torch.rand(1, 3, 64, 64), PooledHint()
    app = ControlApplication(fake_model, hint, 0.5, 0.0, 1.0, 0)
    if kind == "t2i_adapter":
        app.features = adapter_features(fake_model, hint, 0.5)
    plain = ControlledDenoiser()
    plain.batch_size, plain.controls = 2, Controls(nets=[app])
    x = torch.randn(2, 4, 8, 8)
    expected = plain.predict(x, 1.0)
    tiled = ControlledDenoiser()
    tiled.batch_size, tiled.controls = 2, Controls(nets=[app])
    region = RegionPlan(Box(1, 3, 4, 5), OneCond(), OneCond(), foreground=False)
    plan = TilePlan((8, 8), "Mixture of Diffusers", grid_boxes(8, 8, 6, 6, 2), 3, [region])
    tile_denoiser(tiled, plan)
    got = tiled.predict(x, 1.0)
    # the region predicts with its own conditioning (+4 in the stand-in), weighed in with the tiles' Gaussians
    total, grid, own = plan.weights()
    bump = torch.zeros(8, 8, dtype=torch.float64)
    region.box.of(bump).add_(own[0] * 4)
    torch.testing.assert_close(got, expected + (bump / total).float(), rtol=1e-5, atol=1e-5)
    assert tiled.controls.nets[0] is app  # the pass's own Controls are back
    assert tiled.seen[:2] == [((6, 4, 6, 6), 6), ((2, 4, 6, 6), 2)]


def test_switched_off_or_one_tile_leaves_pixels_identical(app):
    base = generate(app)
    for scripts in (td(enabled=False), td(tile=96, overlap=48)):
        other = generate(app, scripts)
        assert np.array_equal(arr(other), arr(base))
        assert "Tiled Diffusion" not in other.infotexts[0]


def test_multidiffusion_and_mixture_of_diffusers_tile_every_step(app):
    base = arr(generate(app))
    multi = generate(app, td())
    mixture = generate(app, td("Mixture of Diffusers"))
    assert np.abs(arr(multi) - base).mean() > 1 and np.abs(arr(mixture) - arr(multi)).mean() > 0.1
    assert np.array_equal(arr(generate(app, td())), arr(multi))  # deterministic
    params = parse_infotext(multi.infotexts[0]).params
    assert params["Tiled Diffusion"] == ("{'Method': 'MultiDiffusion', 'Tile tile width': 6, 'Tile tile height': 6, "
                                         "'Tile Overlap': 2, 'Tile batch size': 4}")
    pasted = args_from_params(parse_infotext(mixture.infotexts[0]).params)
    again = generate(app, {"Tiled Diffusion": {"args": pasted}})
    assert np.array_equal(arr(again), arr(mixture))  # the infotext restores the same picture


def test_region_prompt_control_changes_its_box_and_paste_restores_it(app):
    def region(prompt, seed=-1):
        return [True, 0.0, 0.0, 0.5, 1.0, prompt, "", "Background", 0.2, seed]

    first = generate(app, td(regions=[region("red")], draw_background=True))
    second = generate(app, td(regions=[region("a blue ocean, waves")], draw_background=True))
    change = np.abs(arr(first) - arr(second)).mean(axis=(0, 2))  # per column
    assert change[:32].mean() > 3 * change[48:].mean()  # the region's half moves far more than the far quarter
    text = first.infotexts[0]
    assert "'Region control': {'Region 1': {'enable': True, 'x': 0.0" in text
    again = generate(app, {"Tiled Diffusion": {"args": args_from_params(parse_infotext(text).params)}})
    assert np.array_equal(arr(again), arr(first))
    seeded = generate(app, td(regions=[region("red", seed=42)], draw_background=True))
    assert not np.array_equal(arr(seeded), arr(first))  # the box's own noise


def test_overwrite_size_and_errors_name_the_argument(app):
    wide = generate(app, td(overwrite=(128, 64)))
    assert wide.images[0].size == (128, 64) and "Size: 128x64" in wide.infotexts[0]
    where = "alwayson_scripts.Tiled Diffusion.args."
    for args, name in (([True, "Tiles"], "method"), ([True, "MultiDiffusion", False, True, 1024, 1024, 0], "tile_width"),
                       ([True, "MultiDiffusion", "yes"], "overwrite_size")):
        with pytest.raises(ValidationError) as caught:
            app.engine.validate(GenerationRequest(prompt="x", alwayson_scripts={"Tiled Diffusion": {"args": args}}))
        assert caught.value.errors[0].field == where + name
    flat = td(regions=[[True, 2, 0, 1, 1]])["Tiled Diffusion"]["args"]
    _, errors = parse({"args": flat})
    assert errors and errors[0].field.endswith("region1.x")


def test_txt2img_accordion_generates_and_pastes_back(app):
    import gradio as gr

    from webui.ui.runner import SessionJobs
    from webui.ui.send_to import SendTarget, paste_updates
    from webui.ui.tiled_diffusion_ui import PREFIX
    from webui.ui.txt2img import build_txt2img

    with gr.Blocks() as blocks:
        checkpoint = gr.Dropdown(choices=[CKPT], value=CKPT)
        controls = build_txt2img(app, checkpoint, SessionJobs())
    i = controls.inputs
    assert i[f"{PREFIX}enabled"].elem_id == "txt2img_tiled_diffusion_enabled"
    run = next(f.fn for f in blocks.fns.values() if f.api_name == "txt2img")
    region = f"{PREFIX}region0::"
    values = {"prompt": "a cat", "negative_prompt": "blurry", "steps": 2, "sampler_name": "Euler", "cfg_scale": 7,
              "seed": 5, "width": 64, "height": 64, f"{PREFIX}enabled": True, f"{PREFIX}method": "MultiDiffusion",
              f"{PREFIX}tile_width": 6, f"{PREFIX}tile_height": 6, f"{PREFIX}overlap": 2,
              f"{PREFIX}enable_bbox_control": True, f"{PREFIX}draw_background": True, region + "enable": True,
              region + "x": 0.0, region + "y": 0.0, region + "w": 0.5, region + "h": 1.0, region + "prompt": "red"}
    inputs = {i[name]: value for name, value in values.items()}
    inputs[checkpoint] = CKPT
    *_, last = run(inputs, type("Request", (), {"session_hash": "tiled-ui"})())
    texts = last[4]
    engine = generate(app, td(regions=[[True, 0.0, 0.0, 0.5, 1.0, "red", "", "Background", 0.2, -1]],
                              draw_background=True))
    assert texts and texts[0].split(", Version")[0] == engine.infotexts[0].split(", Version")[0]
    target = SendTarget(tab="txt2img", label="txt2img", controls=controls)
    updates = dict(zip(target.fields(), paste_updates(app, target, texts[0].replace("'Tile Overlap': 2",
                                                                                    "'Tile Overlap': 3"))))
    assert updates[f"{PREFIX}enabled"] is True and updates[f"{PREFIX}overlap"] == 3
    assert updates[region + "prompt"] == "red" and updates[f"{PREFIX}draw_background"] is True
    assert updates[f"{PREFIX}region1::enable"] is False


def test_img2img_upscales_first_and_keeps_the_input_size(app):
    """The extension's img2img canvas: the input upscaled by its upscaler, the canvas the input's size."""
    yy, xx = np.mgrid[0:64, 0:96]
    source = Image.fromarray(np.stack([xx * 2, yy * 3, (xx + yy)], -1).astype(np.uint8))

    def img2img(upscaler="None", keep=True):
        args = td("Mixture of Diffusers")["Tiled Diffusion"]["args"]
        args[3], args[10], args[11] = keep, upscaler, 2.0
        return app.generate(GenerationRequest(prompt="a cat", steps=2, width=64, height=64, seed=5,
                                              sampler_name="Euler", checkpoint=CKPT, save_images=False,
                                              mode="img2img", init_images=[source], denoising_strength=0.5,
                                              alwayson_scripts={"Tiled Diffusion": {"args": args}}))

    kept = img2img()
    assert kept.images[0].size == (96, 64)
    upscaled = img2img("Lanczos")
    assert upscaled.images[0].size == (192, 128)
    params = parse_infotext(upscaled.infotexts[0]).params
    assert params["Tiled Diffusion upscaler"] == "Lanczos" and params["Tiled Diffusion scale factor"] == "2"
    assert "'Upscaler': 'Lanczos', 'Upscale factor': 2.0, 'Keep input size': True" in params["Tiled Diffusion"]
    assert img2img("Lanczos", keep=False).images[0].size == (128, 128)  # 2 x the request's size
    with pytest.raises(ValidationError) as caught:
        img2img("No such upscaler")
    assert caught.value.errors[0].field.endswith("args.upscaler_name")


def test_controlnet_with_tiles_steers_each_tile_and_batches_alike(app):
    """A ControlNet unit together with tiled diffusion (the extension's usual upscaling set-up): accepted, it
    changes the picture, and four tiles in one model call give the picture of one tile per call, which they
    would not if a tile's map were another tile's (each tile's map in its place in the batch)."""
    from safetensors.torch import load_file, save_file

    from webui.features.controlnet.models import write_controlnet

    path = app.paths.model_dir("controlnet") / "control_sharp_tiny.safetensors"
    if not path.exists():  # the tiny net barely reads its map (0.04 of 255): its hint block's last conv made louder
        write_controlnet(path, app.models.get(CKPT).unet, "original", seed=1)
        tensors = load_file(str(path))
        last = max(int(k.split(".")[2]) for k in tensors if ".input_hint_block." in k)
        for key in [k for k in tensors if f".input_hint_block.{last}." in k]:
            tensors[key] = tensors[key] * 40
        save_file(tensors, str(path))
    stripes = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) > 0.5).astype(np.uint8) * 255)
    unit = {"enabled": True, "module": "none", "model": "control_sharp_tiny", "weight": 1.0, "image": stripes,
            "resize_mode": "Crop and Resize", "processor_res": 64}

    def run(batch=4, control=True, image=stripes):
        scripts = td(batch=batch)
        if control:
            scripts["controlnet"] = {"args": [dict(unit, image=image)]}
        return generate(app, scripts)

    tiled = run()
    assert np.abs(arr(tiled) - arr(run(control=False))).mean() > 5  # measured 28
    flipped = run(image=stripes.transpose(Image.FLIP_LEFT_RIGHT))
    assert np.abs(arr(tiled) - arr(flipped)).mean() > 0.2  # the map itself counts (0.59)
    assert np.abs(arr(tiled) - arr(run(batch=1))).max() <= 1  # measured 0; 6 with the tiles' maps reversed
    params = parse_infotext(tiled.infotexts[0]).params
    assert "Tiled Diffusion" in params and params["ControlNet 0"].startswith("Module: none, Model: control_sharp_tiny")


class ConstantNoise:
    """A CFG denoiser stand-in (epsilon model, the tiny model's schedule) that predicts the same noise everywhere."""

    def __init__(self, schedule, noise):
        from webui.core.parameterisation import VPEpsilon

        self.schedule, self.parameterisation, self.noise = schedule, VPEpsilon(), noise
        self.use_uncond, self.cfg_scale, self.step, self.timesteps = True, 7.0, 3, []

    def inner_denoisers(self):
        return [self]

    def predict(self, x, t):
        assert not self.use_uncond and self.cfg_scale == 1.0  # the prompt alone, as the extension inverts
        self.timesteps.append(t)
        return self.noise.expand_as(x)


def test_inversion_walks_up_the_uniform_schedule_with_euler_steps(app):
    """With a model that always predicts the same noise n, inverting x0 gives x0 / sigma_max + n (Euler is exact
    there), so img2img from it at denoising 1 (x = that x sigma_max, Euler back down) is x0 again."""
    from webui.core.schedules import DiscreteSchedule, uniform
    from webui.features.tiled_diffusion.noise_inversion import invert

    schedule = DiscreteSchedule.from_config(dict(app.models.get(CKPT).scheduler_config))
    torch.manual_seed(1)
    x0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 1, 1)
    fake = ConstantNoise(schedule, noise)
    latent = invert(fake, x0, 5, 2.0)
    top = float(uniform(schedule, 5)[0])
    torch.testing.assert_close(latent, x0 / top + noise)
    assert (fake.use_uncond, fake.cfg_scale, fake.step) == (True, 7.0, 3)  # put back
    # five steps, each told the timestep of its destination level divided by Retouch
    levels = uniform(schedule, 5).flip(0)[1:]
    assert fake.timesteps == pytest.approx([schedule.model_timestep(float(s)) / 2.0 for s in levels])


def test_noise_inversion_starts_img2img_from_the_inputs_own_noise(app):
    """The extension's Noise Inversion: the input walked up the noise levels (tiled, prompt only) is the noise
    img2img starts from, so at denoising 1 the picture comes back far closer to the input than from fresh noise."""
    from webui.features.tiled_diffusion.noise_inversion import renoise_weights, retouch_mask

    yy, xx = np.mgrid[0:64, 0:64]
    source = Image.fromarray(np.stack([xx * 4, yy * 4, ((xx // 8 + yy // 8) % 2) * 255], -1).astype(np.uint8))

    def img2img(inverse=True, renoise=0.0, sampler="Euler", steps=4, retouch=1.0, strength=1.0):
        args = td()["Tiled Diffusion"]["args"]
        args[12:17] = [inverse, steps, retouch, renoise, 16]
        return app.generate(GenerationRequest(prompt="a cat", steps=4, width=64, height=64, seed=5, cfg_scale=1.0,
                                              sampler_name=sampler, checkpoint=CKPT, save_images=False, mode="img2img",
                                              init_images=[source], denoising_strength=strength,
                                              alwayson_scripts={"Tiled Diffusion": {"args": args}}))

    target = arr(img2img(inverse=False, strength=0.0))  # the input through the VAE: what the latents hold
    plain, inverted = img2img(inverse=False), img2img()
    # the tiny random UNet is no good inverse of itself (a real model comes back far closer); measured 39.3 / 36.7
    assert np.abs(arr(inverted) - target).mean() < np.abs(arr(plain) - target).mean() - 1.5
    assert np.abs(arr(img2img(renoise=1.0)) - arr(inverted)).mean() > 5  # fresh noise mixed in (31.4)
    assert np.abs(arr(img2img(retouch=2.0)) - arr(inverted)).mean() > 5  # a smaller timestep told (13.9)
    info = parse_infotext(inverted.infotexts[0]).params["Tiled Diffusion"]
    assert "'NoiseInv': True, 'NoiseInv Steps': 4, 'NoiseInv Retouch': 1.0, 'NoiseInv Renoise strength': 0.0, " \
           "'NoiseInv Kernel size': 16" in info
    assert args_from_params({"Tiled Diffusion": info})[12:17] == [True, 4, 1.0, 0.0, 16]
    # img2img's accordion: its Noise Inversion controls make these args, and a paste sets them again
    from webui.ui.tiled_diffusion_ui import PREFIX, pasted_tiled_fields, tiled_request_fields

    pasted = pasted_tiled_fields({"Tiled Diffusion": info})
    assert pasted[PREFIX + "noise_inverse"] is True and pasted[PREFIX + "noise_inverse_renoise_kernel"] == 16
    assert tiled_request_fields({**pasted, PREFIX + "enabled": True})["args"][12:17] == [True, 4, 1.0, 0.0, 16]
    flat = retouch_mask(np.full((32, 32), 90, np.uint8), 8)
    assert flat.max() == 0 and renoise_weights(Image.new("RGB", (32, 32)), 8, 0.5, (4, 4)).eq(0.5).all()
    for kw, name in ((dict(sampler="DPM++ 2M"), "noise_inverse"), (dict(steps=0), "noise_inverse_steps")):
        with pytest.raises(ValidationError) as caught:
            img2img(**kw)
        assert caught.value.errors[0].field.endswith("args." + name)


def test_img2img_accordion_upscales_and_pastes_back(app):
    """img2img's accordion has the extension's Upscaler, Scale Factor and Keep input image size: the tab makes the
    picture the API makes from the same args, and the image's text pasted back sets them again."""
    import gradio as gr

    from webui.ui.runner import SessionJobs
    from webui.ui.send_to import SendTarget, paste_updates
    from webui.ui.img2img import build_img2img
    from webui.ui.tiled_diffusion_ui import PREFIX

    with gr.Blocks() as blocks:
        checkpoint = gr.Dropdown(choices=[CKPT], value=CKPT)
        controls = build_img2img(app, checkpoint, SessionJobs(), local=True)
    i = controls.inputs
    assert i[f"{PREFIX}upscaler_name"].elem_id == "img2img_tiled_diffusion_upscaler_name"
    assert [c[0] for c in i[f"{PREFIX}upscaler_name"].choices][:3] == ["None", "Lanczos", "Nearest"]
    assert i[f"{PREFIX}keep_input_size"].value is True and i[f"{PREFIX}scale_factor"].value == 2
    source = Image.fromarray((np.mgrid[0:64, 0:96].sum(0) % 256).astype(np.uint8)).convert("RGB")
    run = next(f.fn for f in blocks.fns.values() if f.api_name == "img2img")
    values = {"prompt": "a cat", "negative_prompt": "", "steps": 2, "sampler_name": "Euler", "cfg_scale": 7, "seed": 5,
              "width": 64, "height": 64, "denoising_strength": 0.5, "image": source, "img2img_mode": "img2img",
              f"{PREFIX}enabled": True, f"{PREFIX}method": "Mixture of Diffusers", f"{PREFIX}tile_width": 6,
              f"{PREFIX}tile_height": 6, f"{PREFIX}overlap": 2, f"{PREFIX}upscaler_name": "Lanczos",
              f"{PREFIX}scale_factor": 1.5, f"{PREFIX}keep_input_size": False}
    inputs = {i[name]: value for name, value in values.items()}
    inputs[checkpoint] = CKPT
    *_, last = run(inputs, type("Request", (), {"session_hash": "tiled-img2img-ui"})())
    texts = last[4]
    args = td("Mixture of Diffusers")["Tiled Diffusion"]["args"]
    args[3], args[10], args[11] = False, "Lanczos", 1.5
    engine = app.generate(GenerationRequest(prompt="a cat", steps=2, width=64, height=64, seed=5, sampler_name="Euler",
                                            checkpoint=CKPT, save_images=False, mode="img2img", init_images=[source],
                                            denoising_strength=0.5, alwayson_scripts={"Tiled Diffusion": {"args": args}}))
    assert "Size: 96x96" in engine.infotexts[0]  # 1.5 x the request's 64x64: the upscaled input is resized to it
    assert texts and texts[0].split(", Version")[0] == engine.infotexts[0].split(", Version")[0]
    target = SendTarget(tab="img2img", label="img2img", controls=controls)
    updates = dict(zip(target.fields(), paste_updates(app, target, texts[0])))
    assert updates[f"{PREFIX}upscaler_name"] == "Lanczos" and updates[f"{PREFIX}scale_factor"] == 1.5
    assert updates[f"{PREFIX}keep_input_size"] is False and updates[f"{PREFIX}method"] == "Mixture of Diffusers"
