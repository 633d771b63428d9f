"""Flux ControlNets (InstantX / Shakker-Labs Union in diffusers' layout, XLabs' single files) in ControlNet
units: the same image as diffusers' FluxControlNetPipeline on the same tiny weights, and clear 422s for a
ControlNet of another family; FLUX.1 Redux in an IP-Adapter unit as FluxPriorReduxPipeline + FluxPipeline."""
from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_easel
from webui.core.request import GenerationRequest, ValidationError
from webui.core.seeds import ImageRNG
from webui.families.flux import pack
from webui.features.controlnet import flux as flux_cn
from webui.model_manager.tiny_flux import write_flux_folder

PROMPT = "a cat on a red chair"


@pytest.fixture(scope="module")
def cn_app(tmp_path_factory, tiny_ckpt_dir):
    ckpts = tmp_path_factory.mktemp("flux-cn-ckpts")
    write_flux_folder(ckpts / "tiny-flux-dev", "dev", seed=1)
    write_flux_folder(ckpts / "tiny-flux-kontext", "dev", seed=1, kontext=True)  # dev's weights: its ControlNets fit
    for path in tiny_ckpt_dir.glob("tiny-sd1.*"):  # the file and its sidecar
        shutil.copy(path, ckpts / path.name)
    root = tmp_path_factory.mktemp("flux-cn-app")
    app = make_easel(root, ckpts)
    folder = app.paths.model_dir("controlnet")
    transformer = app.models.get("tiny-flux-dev").unet
    flux_cn.write_flux_controlnet(folder / "flux-instantx-canny.safetensors", transformer, seed=3)
    flux_cn.write_flux_controlnet(folder / "flux-union-pro", transformer, union=True, seed=4)  # a folder
    flux_cn.write_flux_controlnet(folder / "flux-xlabs-canny.safetensors", transformer, layout="xlabs", seed=5)
    from webui.features.controlnet.models import write_controlnet

    write_controlnet(folder / "sd15-canny.safetensors", app.models.get("tiny-sd1").unet)
    from webui.features.controlnet.flux_redux import write_test_redux, write_test_redux_folder

    files = write_test_redux(app.paths.model_dir("ipadapter"), app.paths.model_dir("clip_vision"), text_width=32, seed=6)
    write_test_redux_folder(app.paths.model_dir("ipadapter") / "FLUX.1-Redux-dev-tiny", *files)  # the same weights
    from webui.features.controlnet.flux_ip_adapter import write_test_clip, write_test_ip_adapter

    write_test_ip_adapter(app.paths.model_dir("ipadapter") / "flux-ip-adapter-tiny.safetensors", transformer,
                          clip_width=24, seed=8)  # XLabs' layout
    write_test_clip(app.paths.model_dir("clip_vision") / "clip-vit-tiny", projection_dim=24, seed=9)
    app.ckpts = ckpts
    yield app
    app.close()


def _psnr(a, b) -> float:
    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return 10 * np.log10(255 ** 2 / max(mse, 1e-12))


def _control_image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(pixels).resize((64, 64), Image.NEAREST)


def _request(model: str, checkpoint: str = "tiny-flux-dev", **unit) -> GenerationRequest:
    args = [{"enabled": True, "module": "none", "model": model, "image": _control_image(), "weight": 0.8,
             "resize_mode": "Just Resize", **unit}]
    return GenerationRequest(prompt=PROMPT, steps=4, width=64, height=64, seed=5, sampler_name="Euler",
                             scheduler="Automatic", cfg_scale=1.0, distilled_cfg_scale=3.5, checkpoint=checkpoint,
                             alwayson_scripts={"controlnet": {"args": args}})


def _mean_vae(vae):
    """The control image's latents as the posterior mean (Easel's encoding; the pipeline samples it)."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    encode = vae.encode

    def mean_encode(x, *args, **kwargs):
        parameters = encode(x, *args, **kwargs).latent_dist.parameters
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(parameters, deterministic=True))

    vae.encode = mean_encode


@pytest.mark.parametrize("name, mode", [("flux-instantx-canny", None), ("flux-union-pro", 2),
                                        ("flux-xlabs-canny", None)])
def test_flux_controlnet_gives_the_flux_controlnet_pipelines_image(cn_app, name, mode):
    from diffusers import FluxControlNetPipeline

    unit = {"union_control_type": "Depth"} if mode is not None else {}
    result = cn_app.txt2img(_request(name, **unit))
    assert "ControlNet 0" in result.infotexts[0] and name in result.infotexts[0]
    controlnet = cn_app.controlnets.load(name, cn_app.models.get("tiny-flux-dev"))
    pipe = FluxControlNetPipeline.from_pretrained(str(cn_app.ckpts / "tiny-flux-dev"), controlnet=controlnet,
                                                  local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    _mean_vae(pipe.vae)
    noise = ImageRNG((16, 8, 8), [5], torch.device("cpu"), source=cn_app.settings.get("randn_source")).first()

    def theirs(scale: float):
        return pipe(PROMPT, control_image=_control_image(), control_mode=mode, controlnet_conditioning_scale=scale,
                    height=64, width=64, num_inference_steps=4, guidance_scale=3.5, max_sequence_length=512,
                    latents=pack(noise)).images[0]

    reference = theirs(0.8)
    psnr = _psnr(result.images[0], reference)
    print(f"Flux ControlNet {name}: Easel vs FluxControlNetPipeline PSNR {psnr:.1f} dB")
    assert psnr >= 40
    # the ControlNet is what makes the difference: without it, another image (the test can fail)
    assert _psnr(theirs(0.0), reference) < psnr - 10


def test_flux_controlnet_on_kontext_adds_to_the_image_tokens_only(cn_app):
    """Kontext + ControlNet (no diffusers pipeline has both): FluxKontextPipeline whose transformer gets
    FluxControlNetModel's block samples for the latents' tokens, zeros for the reference's, as
    FluxControlNetPipeline computes them (a pre-hook on the pipeline's own transformer call)."""
    from diffusers import FluxKontextPipeline

    name, reference_picture = "flux-instantx-canny", _control_image(7).resize((64, 64), Image.BICUBIC)
    request = _request(name, checkpoint="tiny-flux-kontext")
    request = replace(request, alwayson_scripts={**request.alwayson_scripts,
                                                 "Kontext": {"args": [reference_picture, "Image size"]}})
    result = cn_app.txt2img(request)
    controlnet = cn_app.controlnets.load(name, cn_app.models.get("tiny-flux-kontext"))
    pipe = FluxKontextPipeline.from_pretrained(str(cn_app.ckpts / "tiny-flux-kontext"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        mean = pipe.vae.encode(pipe.image_processor.preprocess(_control_image(), 64, 64)).latent_dist.mode()
    cond = pack((mean - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor)
    scale = [0.8]

    def add_control(module, args, kw):
        n = kw["hidden_states"].shape[1] - 16  # the reference's 4x4 tokens follow the latents'
        blocks, single = controlnet(hidden_states=kw["hidden_states"][:, :n], controlnet_cond=cond,
                                    conditioning_scale=scale[0], timestep=kw["timestep"],
                                    guidance=kw["guidance"] if controlnet.config.guidance_embeds else None,
                                    pooled_projections=kw["pooled_projections"],
                                    encoder_hidden_states=kw["encoder_hidden_states"], txt_ids=kw["txt_ids"],
                                    img_ids=kw["img_ids"][:n], return_dict=False)
        pad = lambda samples: None if samples is None else [torch.cat([s, torch.zeros_like(s[:, :16])], 1)
                                                            for s in samples]  # noqa: E731
        return args, {**kw, "controlnet_block_samples": pad(blocks), "controlnet_single_block_samples": pad(single)}

    pipe.transformer.register_forward_pre_hook(add_control, with_kwargs=True)
    noise = ImageRNG((16, 8, 8), [5], torch.device("cpu"), source=cn_app.settings.get("randn_source")).first()

    def theirs():
        return pipe(image=reference_picture, prompt=PROMPT, height=64, width=64, num_inference_steps=4,
                    guidance_scale=3.5, max_sequence_length=512, latents=pack(noise), _auto_resize=False,
                    max_area=64 * 64).images[0]

    reference = theirs()
    psnr = _psnr(result.images[0], reference)
    print(f"Flux ControlNet on Kontext: Easel vs FluxKontextPipeline + FluxControlNetModel PSNR {psnr:.1f} dB")
    assert psnr >= 40
    scale[0] = 0.0  # the ControlNet is what makes the difference (the test can fail)
    assert _psnr(theirs(), reference) < psnr - 10


def test_control_modes_on_flux(cn_app):
    """With real CFG: "ControlNet is more important" controls the conditional rows only (another image);
    "My prompt is more important" is Balanced's image, with a warning that says so."""
    def run(mode: int):
        request = replace(_request("flux-instantx-canny", control_mode=mode, steps=2), cfg_scale=3.0,
                          negative_prompt="blurry")
        return cn_app.txt2img(request)

    balanced, prompt, control = run(0), run(1), run(2)
    assert np.array_equal(np.asarray(prompt.images[0]), np.asarray(balanced.images[0]))
    assert any("acts as Balanced" in w for w in prompt.warnings) and not balanced.warnings
    assert "Control Mode: My prompt is more important" in prompt.infotexts[0]  # as chosen: paste restores it
    assert _psnr(control.images[0], balanced.images[0]) < 60


def test_union_type_comes_from_the_unit_or_its_preprocessor(cn_app):
    from webui.features.controlnet.units import ControlUnit

    assert flux_cn.union_mode(ControlUnit(union_control_type="OpenPose"), 0) == 4
    assert flux_cn.union_mode(ControlUnit(module="depth_midas"), 0) == 2
    assert flux_cn.union_mode(ControlUnit(module="canny", union_control_type="Unknown"), 0) == 0
    with pytest.raises(ValidationError) as error:
        cn_app.txt2img(_request("flux-union-pro", steps=1))
    assert error.value.errors[0].field == "alwayson_scripts.controlnet.args[0].union_control_type"
    depth = cn_app.txt2img(_request("flux-union-pro", steps=2, union_control_type="Depth"))
    pose = cn_app.txt2img(_request("flux-union-pro", steps=2, union_control_type="OpenPose"))
    assert _psnr(depth.images[0], pose.images[0]) < 90  # the mode reaches the model (one token: a small change)
    assert "Union Control Type: Depth" in depth.infotexts[0]


def test_a_controlnet_of_another_family_is_a_422_on_the_units_model(cn_app):
    with pytest.raises(ValidationError) as error:
        cn_app.txt2img(_request("sd15-canny", steps=1))
    assert error.value.errors[0].field == "alwayson_scripts.controlnet.args[0].model"
    assert "not a Flux ControlNet" in error.value.errors[0].message
    with pytest.raises(ValidationError) as error:
        cn_app.txt2img(_request("flux-instantx-canny", checkpoint="tiny-sd1", steps=1))
    assert error.value.errors[0].field == "alwayson_scripts.controlnet.args[0].model"
    assert "is a Flux ControlNet" in error.value.errors[0].message


def test_the_model_list_offers_flux_controlnets_for_flux_only(cn_app):
    from webui.features.controlnet.models import fits

    infos = {i.name: i for i in cn_app.controlnets.all()}
    assert {infos[n].kind for n in ("flux-instantx-canny", "flux-union-pro", "flux-xlabs-canny")} == {"flux"}
    flux_names = cn_app.controlnets.names_for({"cross_attention_dim": None, "family": "flux-dev"})
    assert sorted(flux_names) == ["flux-instantx-canny", "flux-union-pro", "flux-xlabs-canny"]
    sd = dict(cn_app.models.get("tiny-sd1").configs["unet"])
    assert cn_app.controlnets.names_for({**sd, "family": "sd1"}) == ["sd15-canny"]
    assert not fits(infos["flux-union-pro"], sd)


def test_xlabs_keys_become_diffusers_names_exactly(cn_app):
    """The XLabs file converts to every tensor of diffusers' FluxControlNetModel (hint block, pos_embed_input,
    BFL double blocks), value for value."""
    from diffusers import FluxControlNetModel
    from safetensors.torch import load_file

    transformer = cn_app.models.get("tiny-flux-dev").unet
    folder = cn_app.paths.model_dir("controlnet")
    xlabs = load_file(str(folder / "flux-xlabs-canny.safetensors"))
    assert "input_hint_block.14.weight" in xlabs and "pos_embed_input.weight" in xlabs
    assert "double_blocks.0.img_attn.qkv.weight" in xlabs
    converted = flux_cn.xlabs_to_diffusers(xlabs, dict(transformer.config))
    config = flux_cn.controlnet_config(converted, dict(transformer.config))
    model = FluxControlNetModel(**config)
    assert sorted(converted) == sorted(model.state_dict())
    assert config["conditioning_embedding_channels"] == 16 and config["patch_size"] == 2


def _redux_request(checkpoint: str = "tiny-flux-dev", model: str = "flux1-redux-tiny", **kw) -> GenerationRequest:
    args = [{"enabled": True, "module": "ip-adapter-auto", "model": model, "image": _control_image(9),
             "weight": 1.0}]
    base = dict(prompt=PROMPT, steps=4, width=64, height=64, seed=5, sampler_name="Euler", scheduler="Automatic",
                cfg_scale=1.0, distilled_cfg_scale=3.5, checkpoint=checkpoint,
                alwayson_scripts={"controlnet": {"args": args}})
    return GenerationRequest(**{**base, **kw})


def test_redux_gives_the_prior_redux_pipelines_image(cn_app):
    """FluxPriorReduxPipeline (SigLIP + Redux MLP, the prompt's T5 sequence with the image tokens appended)
    into FluxPipeline: the image an ip-adapter unit with the Redux file gives on a Flux checkpoint."""
    from diffusers import FluxPipeline, FluxPriorReduxPipeline
    from transformers import SiglipImageProcessor

    from webui.features.controlnet import flux_redux

    result = cn_app.txt2img(_redux_request())
    assert "flux1-redux-tiny" in result.infotexts[0]
    models = cn_app.paths.model_dir("ipadapter"), cn_app.paths.model_dir("clip_vision")
    pipe = FluxPipeline.from_pretrained(str(cn_app.ckpts / "tiny-flux-dev"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    cpu = torch.device("cpu")
    prior = FluxPriorReduxPipeline(
        image_encoder=flux_redux.load_siglip(models[1] / "sigclip_vision_tiny.safetensors", cpu, torch.float32),
        feature_extractor=SiglipImageProcessor(size={"height": 56, "width": 56}),
        image_embedder=flux_redux.load_redux(models[0] / "flux1-redux-tiny.safetensors", cpu, torch.float32),
        text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, text_encoder_2=pipe.text_encoder_2,
        tokenizer_2=pipe.tokenizer_2)
    noise = ImageRNG((16, 8, 8), [5], cpu, source=cn_app.settings.get("randn_source")).first()

    def theirs(image):
        embeds = prior(image, prompt=PROMPT, prompt_2=PROMPT)
        return pipe(height=64, width=64, num_inference_steps=4, guidance_scale=3.5, latents=pack(noise),
                    **embeds).images[0]

    reference = theirs(_control_image(9))
    psnr = _psnr(result.images[0], reference)
    print(f"Flux Redux: Easel vs FluxPriorReduxPipeline + FluxPipeline PSNR {psnr:.1f} dB")
    assert psnr >= 40
    assert _psnr(theirs(_control_image(10)), reference) < psnr - 10  # the image reaches the model
    # with real CFG the negative gets zeros of the same length; it runs and differs
    guided = cn_app.txt2img(_redux_request(steps=2, cfg_scale=3.0, negative_prompt="blurry"))
    assert np.asarray(guided.images[0]).std() > 1


def test_redux_from_a_diffusers_folder_gives_the_prior_redux_pipelines_image(cn_app):
    """diffusers' FLUX.1-Redux-dev layout (image_embedder/, image_encoder/, feature_extractor/) in
    models/ipadapter, named by its folder: FluxPriorReduxPipeline.from_pretrained on that folder + FluxPipeline."""
    from diffusers import FluxPipeline, FluxPriorReduxPipeline

    folder = cn_app.paths.model_dir("ipadapter") / "FLUX.1-Redux-dev-tiny"
    result = cn_app.txt2img(_redux_request(model="FLUX.1-Redux-dev-tiny"))
    assert "FLUX.1-Redux-dev-tiny [" in result.infotexts[0]
    pipe = FluxPipeline.from_pretrained(str(cn_app.ckpts / "tiny-flux-dev"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    prior = FluxPriorReduxPipeline.from_pretrained(str(folder), text_encoder=pipe.text_encoder,
                                                   tokenizer=pipe.tokenizer, text_encoder_2=pipe.text_encoder_2,
                                                   tokenizer_2=pipe.tokenizer_2, local_files_only=True)
    noise = ImageRNG((16, 8, 8), [5], torch.device("cpu"), source=cn_app.settings.get("randn_source")).first()
    embeds = prior(_control_image(9), prompt=PROMPT, prompt_2=PROMPT)
    reference = pipe(height=64, width=64, num_inference_steps=4, guidance_scale=3.5, latents=pack(noise),
                     **embeds).images[0]
    psnr = _psnr(result.images[0], reference)
    print(f"Flux Redux folder: Easel vs FluxPriorReduxPipeline.from_pretrained + FluxPipeline PSNR {psnr:.1f} dB")
    assert psnr >= 40
    without = cn_app.txt2img(_redux_request(model="FLUX.1-Redux-dev-tiny", alwayson_scripts={}))
    assert _psnr(without.images[0], reference) < psnr - 10  # the folder's tokens reach the model
    with pytest.raises(ValidationError) as error:  # a Redux folder on an SD checkpoint: a 422 on the unit's model
        cn_app.txt2img(_redux_request(checkpoint="tiny-sd1", model="FLUX.1-Redux-dev-tiny", steps=1))
    assert error.value.errors[0].field == "alwayson_scripts.controlnet.args[0].model"


def _ip_request(checkpoint: str = "tiny-flux-dev", **kw) -> GenerationRequest:
    unit = {"enabled": True, "module": "ip-adapter-auto", "model": "flux-ip-adapter-tiny", "image": _control_image(11),
            "weight": 0.8}
    base = dict(prompt=PROMPT, steps=4, width=64, height=64, seed=5, sampler_name="Euler", scheduler="Automatic",
                cfg_scale=1.0, distilled_cfg_scale=3.5, checkpoint=checkpoint,
                alwayson_scripts={"controlnet": {"args": [unit]}})
    return GenerationRequest(**{**base, **kw})


def test_xlabs_flux_ip_adapter_gives_the_flux_pipelines_image(cn_app):
    """XLabs' Flux IP-Adapter file through diffusers' FluxIPAdapterMixin (CLIP vision encoder from a local
    folder): FluxPipeline.load_ip_adapter + set_ip_adapter_scale(0.8) + ip_adapter_image gives the same image;
    the shared transformer has its own processors back afterwards; on SD it is a 422 on the unit's model."""
    from diffusers import FluxPipeline

    transformer = cn_app.models.get("tiny-flux-dev").unet
    before = {name: type(p) for name, p in transformer.attn_processors.items()}
    result = cn_app.txt2img(_ip_request())
    assert "flux-ip-adapter-tiny" in result.infotexts[0]
    assert {name: type(p) for name, p in transformer.attn_processors.items()} == before
    assert getattr(transformer, "encoder_hid_proj", None) is None
    pipe = FluxPipeline.from_pretrained(str(cn_app.ckpts / "tiny-flux-dev"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(str(cn_app.paths.model_dir("ipadapter")), weight_name="flux-ip-adapter-tiny.safetensors",
                         image_encoder_pretrained_model_name_or_path=str(cn_app.paths.model_dir("clip_vision")
                                                                         / "clip-vit-tiny"),
                         image_encoder_dtype=torch.float32, local_files_only=True)
    noise = ImageRNG((16, 8, 8), [5], torch.device("cpu"), source=cn_app.settings.get("randn_source")).first()

    def theirs(scale: float):
        pipe.set_ip_adapter_scale(scale)
        return pipe(PROMPT, ip_adapter_image=_control_image(11), height=64, width=64, num_inference_steps=4,
                    guidance_scale=3.5, max_sequence_length=512, latents=pack(noise)).images[0]

    reference = theirs(0.8)
    psnr = _psnr(result.images[0], reference)
    print(f"XLabs Flux IP-Adapter: Easel vs FluxPipeline.load_ip_adapter PSNR {psnr:.1f} dB")
    assert psnr >= 40
    assert _psnr(theirs(0.0), reference) < psnr - 10  # the adapter is what makes the difference
    # real CFG: the negative rows see an all-black picture's embeds, as FluxPipeline's true CFG gives them
    guided = cn_app.txt2img(_ip_request(cfg_scale=3.0, negative_prompt="blurry"))
    pipe.set_ip_adapter_scale(0.8)
    true_cfg = pipe(PROMPT, negative_prompt="blurry", true_cfg_scale=3.0, ip_adapter_image=_control_image(11),
                    height=64, width=64, num_inference_steps=4, guidance_scale=3.5, max_sequence_length=512,
                    latents=pack(noise)).images[0]
    cfg_psnr = _psnr(guided.images[0], true_cfg)
    print(f"XLabs Flux IP-Adapter with CFG 3: Easel vs FluxPipeline true CFG PSNR {cfg_psnr:.1f} dB")
    assert cfg_psnr >= 40
    with pytest.raises(ValidationError) as error:
        cn_app.txt2img(_ip_request(checkpoint="tiny-sd1", steps=1))
    assert error.value.errors[0].field == "alwayson_scripts.controlnet.args[0].model"


def test_redux_is_listed_for_flux_only_and_refused_elsewhere(cn_app):
    from webui.features.controlnet import choices

    flux = choices.model_names(cn_app.controlnets, cn_app.ip_adapters, {"cross_attention_dim": None,
                                                                       "family": "flux-dev"}, "ip-adapter-auto")
    assert flux == ["None", "flux1-redux-tiny", "FLUX.1-Redux-dev-tiny", "flux-ip-adapter-tiny"]
    sd = dict(cn_app.models.get("tiny-sd1").configs["unet"])
    assert "flux1-redux-tiny" not in choices.model_names(cn_app.controlnets, cn_app.ip_adapters, sd,
                                                         "ip-adapter-auto")
    with pytest.raises(ValidationError) as error:
        cn_app.txt2img(_redux_request(checkpoint="tiny-sd1", steps=1))
    assert error.value.errors[0].field == "alwayson_scripts.controlnet.args[0].model"
