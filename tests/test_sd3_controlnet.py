"""SD 3.5 ControlNets: Stability's single-file layout and diffusers folders load for an SD3 checkpoint, give
diffusers' StableDiffusion3ControlNetPipeline's image on the same weights, and a ControlNet of another model
family is refused with a 422 on the unit's model field."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from webui.app import AppOptions, build
from webui.core.request import GenerationRequest, ValidationError
from webui.core.seeds import ImageRNG
from webui.features.controlnet import sd3 as sd3_controlnet
from webui.features.controlnet.apply import ControlApplication
from webui.features.controlnet.models import write_controlnet
from webui.model_manager.tiny_sd3 import write_sd3_folder

PROMPT, NEGATIVE = "a ball on a table", "blurry"


def control_picture() -> Image.Image:
    yy, xx = np.mgrid[0:64, 0:64]
    array = np.zeros((64, 64, 3), np.uint8)
    array[(xx - 32) ** 2 + (yy - 32) ** 2 < 20 ** 2] = 255
    array[..., 1] = (xx * 4).astype(np.uint8)
    return Image.fromarray(array)


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd3-cn")
    write_sd3_folder(folder / "tiny-sd35-large", "sd35-large", seed=4)
    return folder


@pytest.fixture(scope="module")
def app(tmp_path_factory, sd3_dir, tiny_ckpt_dir):
    root = tmp_path_factory.mktemp("sd3-cn-app")
    app = build(AppOptions(models_dir=root / "models", ckpt_dirs=[sd3_dir, tiny_ckpt_dir], outputs_dir=root / "out",
                           data_dir=root / "data", device="cpu"))
    folder = app.paths.model_dir("controlnet")
    transformer = app.models.get("tiny-sd35-large").unet
    sd3_controlnet.write_sd3_controlnet(folder / "sd3.5_large_controlnet_depth.safetensors", transformer, "original",
                                        control_type=2, seed=1)
    sd3_controlnet.write_sd3_controlnet(folder / "sd35-depth-diffusers", transformer, "diffusers", seed=1)
    sd3_controlnet.write_sd3_controlnet(folder / "sd3.5_large_controlnet_canny.safetensors", transformer, "original",
                                        control_type=1, seed=1)
    # InstantX's SD3 Medium layout: a diffusers 0.29 config naming `ControlNetSD3Model`, and the same weights alone
    sd3_controlnet.write_instantx_controlnet(folder / "SD3-Controlnet-Canny", transformer, "diffusers",
                                             pos_embed_max_size=24, seed=2)
    sd3_controlnet.write_instantx_controlnet(folder / "instantx_sd3_canny.safetensors", transformer, "single",
                                             pos_embed_max_size=24, seed=2)
    sd3_controlnet.write_instantx_controlnet(folder / "SD3-Controlnet-Tile", transformer, "diffusers",
                                             class_name="SD3ControlNetModel", seed=3)  # Tile's config names it so
    write_controlnet(folder / "control_sd15_canny.safetensors", app.models.get("tiny-sd1.safetensors").unet, seed=1)
    yield app
    app.close()


def unit(model: str, **kw) -> dict:
    base = {"enabled": True, "module": "none", "model": model, "weight": 1.0, "image": control_picture(),
            "resize_mode": "Just Resize", "processor_res": 64, "guidance_start": 0.0, "guidance_end": 1.0,
            "control_mode": "Balanced", "pixel_perfect": False}
    return {**base, **kw}


def generate(app, units, checkpoint="tiny-sd35-large", **kw):
    base = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=4, width=64, height=64, seed=5, sampler_name="Euler",
                scheduler="Automatic", cfg_scale=5.0, checkpoint=checkpoint, save_images=False,
                alwayson_scripts={"controlnet": {"args": units}} if units else {})
    return app.txt2img(GenerationRequest(**{**base, **kw}))


def psnr(a, b) -> float:
    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return 10 * np.log10(255 ** 2 / max(mse, 1e-12))


def test_both_layouts_give_the_sd3_controlnet_pipelines_image(app, sd3_dir, monkeypatch):
    single = generate(app, [unit("sd3.5_large_controlnet_depth")])
    folder = generate(app, [unit("sd35-depth-diffusers")])
    plain = generate(app, [])
    assert psnr(single.images[0], folder.images[0]) > 60  # one model, two layouts
    assert psnr(single.images[0], plain.images[0]) < 35  # the control changed the picture
    assert 'ControlNet 0: "Module: none, Model: sd3.5_large_controlnet_depth [' in single.infotexts[0]
    zero = generate(app, [unit("sd3.5_large_controlnet_depth", weight=0.0)])
    assert np.array_equal(np.asarray(zero.images[0]), np.asarray(plain.images[0]))

    reference = reference_image(app, sd3_dir, monkeypatch, "sd35-depth-diffusers")
    measured = psnr(single.images[0], reference)
    print(f"SD 3.5 ControlNet: Easel vs StableDiffusion3ControlNetPipeline PSNR {measured:.1f} dB")
    assert measured >= 40
    assert psnr(plain.images[0], reference) < 35


def reference_image(app, sd3_dir, monkeypatch, controlnet_folder: str, **call) -> Image.Image:
    """diffusers' StableDiffusion3ControlNetPipeline on the same folders; the control image's latents from the VAE's
    posterior mean (Easel encodes images deterministically; the pipeline would sample them)."""
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    net = SD3ControlNetModel.from_pretrained(str(app.paths.model_dir("controlnet") / controlnet_folder))
    pipe = StableDiffusion3ControlNetPipeline.from_pretrained(str(sd3_dir / "tiny-sd35-large"), controlnet=net,
                                                              local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    noise = ImageRNG((16, 8, 8), [5], torch.device("cpu"), source=app.settings.get("randn_source")).first()
    return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, control_image=control_picture(), height=64, width=64,
                num_inference_steps=4, guidance_scale=5.0, latents=noise, max_sequence_length=77, **call).images[0]


def test_instantx_sd3_controlnets_give_the_pipelines_image(app, sd3_dir, monkeypatch):
    """InstantX's SD3-Controlnet-Canny/Pose/Tile: own patch embedding, a text stream, a zero pooled vector, latents
    scaled but not shifted; as a diffusers folder (its old class name) and as the folder's file alone."""
    info = app.controlnets.find("SD3-Controlnet-Canny")
    assert info.kind == sd3_controlnet.KIND and app.controlnets.find("instantx_sd3_canny").kind == sd3_controlnet.KIND
    folder = generate(app, [unit("SD3-Controlnet-Canny", weight=0.8)])
    single = generate(app, [unit("instantx_sd3_canny", weight=0.8)])
    plain = generate(app, [])
    assert psnr(folder.images[0], single.images[0]) > 60
    assert psnr(folder.images[0], plain.images[0]) < 35
    net = app.controlnets.load("instantx_sd3_canny", app.models.get("tiny-sd35-large"))
    assert net.config.force_zeros_for_pooled_projection and net.config.pos_embed_max_size == 24
    tile = app.controlnets.load("SD3-Controlnet-Tile", app.models.get("tiny-sd35-large"))
    assert tile.config.use_pos_embed and tile.config.joint_attention_dim == 96
    reference = reference_image(app, sd3_dir, monkeypatch, "SD3-Controlnet-Canny", controlnet_conditioning_scale=0.8)
    measured = psnr(folder.images[0], reference)
    print(f"InstantX SD3 ControlNet: Easel vs StableDiffusion3ControlNetPipeline PSNR {measured:.1f} dB")
    assert measured >= 40


def test_control_modes_on_transformer_blocks(app):
    """"ControlNet is more important": the residuals on the conditional rows only; "My prompt is more important"
    is Balanced on an MMDiT (no soft injection across blocks of one resolution)."""
    model = app.models.get("tiny-sd35-large")
    net = app.controlnets.load("sd3.5_large_controlnet_depth", model)
    hint = sd3_controlnet.hint_latents(model, net, torch.rand(1, 3, 64, 64), "depth")
    seen = []
    config = model.unet.config
    call = dict(hidden_states=torch.randn(2, 16, 8, 8), timestep=torch.tensor([500.0, 500.0]),
                encoder_hidden_states=torch.randn(2, 20, config.joint_attention_dim),
                pooled_projections=torch.randn(2, config.pooled_projection_dim))
    for mode in (0, 1, 2):  # a CFG batch: the negative's row first
        controls = sd3_controlnet.TransformerControls(model.unet, [ControlApplication(net, hint, 1.0, 0.0, 1.0, mode)])
        controls.set_step(0.5, 2, True)
        with controls.installed():  # the recorder's hook runs after the controls' one
            handle = model.unet.register_forward_pre_hook(
                lambda module, args, kwargs: seen.append(kwargs["block_controlnet_hidden_states"]), with_kwargs=True)
            try:
                model.unet(**call)
            finally:
                handle.remove()
    balanced, prompt, control = seen
    assert all(torch.equal(a, b) for a, b in zip(balanced, prompt))
    assert all(float(b[0].abs().max()) > 0 for b in balanced)
    for b, c in zip(balanced, control):
        assert c.shape == b.shape and torch.equal(c[1], b[1]) and float(c[0].abs().max()) == 0

    images = {mode: generate(app, [unit("sd3.5_large_controlnet_depth", control_mode=mode)]).images[0]
              for mode in ("Balanced", "My prompt is more important", "ControlNet is more important")}
    assert np.array_equal(np.asarray(images["Balanced"]), np.asarray(images["My prompt is more important"]))
    assert psnr(images["Balanced"], images["ControlNet is more important"]) < 45


def test_canny_files_scale_the_map_as_stability_trained_them(app):
    model = app.models.get("tiny-sd35-large")
    canny = app.controlnets.load("sd3.5_large_controlnet_canny", model)
    depth = app.controlnets.load("sd3.5_large_controlnet_depth", model)
    assert (canny.control_type, depth.control_type) == (1, 2)
    hint = torch.rand(1, 3, 64, 64)
    from webui.core.latents import encode

    assert torch.allclose(sd3_controlnet.hint_latents(model, depth, hint, "x"), encode(model, [hint * 2 - 1]))
    assert torch.allclose(sd3_controlnet.hint_latents(model, canny, hint, "x"),
                          encode(model, [hint * 255 * 0.5 + 0.5]))


def test_the_model_list_and_a_wrong_family_is_a_422_on_the_units_model(app):
    from webui.api.errors import job_error
    from webui.features.controlnet.choices import model_names

    transformer_config = {"cross_attention_dim": None, "block_out_channels": [],
                          **app.models.get("tiny-sd35-large").configs["transformer"]}
    sd3_names = model_names(app.controlnets, app.ip_adapters, transformer_config)
    assert "sd3.5_large_controlnet_depth" in sd3_names and "sd35-depth-diffusers" in sd3_names
    assert "control_sd15_canny" not in sd3_names
    sd1_names = model_names(app.controlnets, app.ip_adapters, dict(app.models.get("tiny-sd1.safetensors")
                                                                   .configs["unet"]))
    assert "control_sd15_canny" in sd1_names and "sd3.5_large_controlnet_depth" not in sd1_names

    for checkpoint, model, says in (("tiny-sd35-large", "control_sd15_canny", "not an SD 3 ControlNet"),
                                    ("tiny-sd1.safetensors", "sd3.5_large_controlnet_depth", "is an SD 3 ControlNet")):
        with pytest.raises(ValidationError) as caught:
            generate(app, [unit("sd3.5_large_controlnet_depth"), unit(model)], checkpoint=checkpoint,
                     negative_prompt="")
        error = job_error(caught.value)
        assert error.status == 422
        field = caught.value.errors[0].field
        assert field == ("alwayson_scripts.controlnet.args[1].model" if checkpoint == "tiny-sd35-large"
                         else "alwayson_scripts.controlnet.args[0].model")
        assert says in caught.value.errors[0].message
