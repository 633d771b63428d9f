"""Z-Image (Turbo and base): a tiny diffusers folder loads as one checkpoint, encodes the prompt with Qwen3's
chat template exactly as ZImagePipeline does, and gives the pipeline's image on the same weights, seed, prompt
and steps, without CFG (Turbo) and with it (base); the published single-file transformer with its companions,
ComfyUI's all-in-one file and a GGUF give the folder's image."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from webui import families
from webui.app import AppOptions, build
from webui.core.request import GenerationRequest, ValidationError
from webui.core.seeds import ImageRNG
from webui.model_manager.architecture import Architecture, configs_for
from webui.model_manager.detect import detect
from webui.model_manager.tiny_zimage import write_zimage_folder, write_zimage_gguf, write_zimage_single_files

PROMPT = "a cat on a red chair"


@pytest.fixture(scope="module")
def zimage_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("zimage")
    source = write_zimage_folder(root / "folders" / "tiny-zimage-turbo", seed=1)
    shutil.copytree(source, root / "folders" / "tiny-zimage-base")  # base: the same tensors, a sidecar says so
    (root / "folders" / "tiny-zimage-base.json").write_text('{"architecture": "zimage"}')
    models = root / "models"
    write_zimage_single_files(source, models, "z_image_turbo_tiny")
    write_zimage_single_files(source, models, "z_image_base_tiny", family="zimage", prefix="model.diffusion_model.")
    write_zimage_single_files(source, models, "z_image_aio", all_in_one=True)
    write_zimage_gguf(source, models, "z_image_turbo_tiny-Q8_0")
    return root


@pytest.fixture(scope="module")
def zimage_app(zimage_root):
    root = zimage_root
    app = build(AppOptions(models_dir=root / "models", ckpt_dirs=[root / "folders"], outputs_dir=root / "out",
                           data_dir=root / "data", device="cpu"))
    yield app
    app.close()


@pytest.fixture(scope="module")
def pipe(zimage_root):
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(str(zimage_root / "folders" / "tiny-zimage-turbo"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _psnr(a, b) -> float:
    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return 10 * np.log10(255 ** 2 / max(mse, 1e-12))


def _request(checkpoint: str = "tiny-zimage-turbo", **kw) -> GenerationRequest:
    base = dict(prompt=PROMPT, steps=4, width=64, height=64, seed=5, sampler_name="Euler", scheduler="Automatic",
                cfg_scale=1.0, checkpoint=checkpoint)
    return GenerationRequest(**{**base, **kw})


@pytest.mark.parametrize("cfg, negative", [(1.0, ""), (4.0, "blurry, dark")], ids=["turbo-no-cfg", "base-cfg"])
def test_easel_gives_the_zimage_pipelines_image(zimage_app, pipe, cfg, negative):
    """Easel's CFG scale s is the pipeline's guidance_scale s - 1 (it guides as pos + g (pos - neg))."""
    result = zimage_app.txt2img(_request(cfg_scale=cfg, negative_prompt=negative))
    noise = ImageRNG((16, 8, 8), [5], torch.device("cpu"), source=zimage_app.settings.get("randn_source")).first()
    reference = pipe(PROMPT, negative_prompt=negative or None, height=64, width=64, num_inference_steps=4,
                     guidance_scale=cfg - 1, latents=noise).images[0]
    psnr = _psnr(result.images[0], reference)
    print(f"Z-Image {'CFG ' + str(cfg) if cfg != 1 else 'no CFG'}: Easel vs ZImagePipeline PSNR {psnr:.1f} dB")
    assert psnr >= 40
    assert "Schedule type: Simple" in result.infotexts[0] and f"CFG scale: {cfg:g}" in result.infotexts[0]
    # and the comparison can fail: another guidance value is another image
    other = pipe(PROMPT, negative_prompt="blurry, dark", height=64, width=64, num_inference_steps=4,
                 guidance_scale=cfg + 2, latents=noise).images[0]
    assert _psnr(result.images[0], other) < 38


def test_the_prompt_is_the_pipelines_chat_template_and_hidden_state(zimage_app, pipe):
    from webui.core.conditioning import PromptEncoder

    encoder = PromptEncoder(zimage_app.models.get("tiny-zimage-turbo"))
    for text in (PROMPT, "", "a watercolour painting of mountains at sunset, " * 20):
        ours = encoder.encode(text)
        theirs = pipe.encode_prompt(text, do_classifier_free_guidance=False)[0][0]
        count = int(ours.pooled.sum())
        assert ours.embeds.shape == (1, 512, 32) and count == theirs.shape[0] <= 512
        assert torch.allclose(ours.embeds[0, :count], theirs, atol=1e-5)
        assert not ours.embeds[0, count:].any()
    weighted = encoder.encode("a (cat:1.5) on a red chair")
    assert weighted.pooled.sum() == encoder.encode(PROMPT).pooled.sum()  # same tokens, the syntax removed
    assert not torch.allclose(weighted.embeds, encoder.encode(PROMPT).embeds)


def test_a_zimage_folder_is_one_checkpoint_with_its_family(zimage_app):
    model = zimage_app.models.get("tiny-zimage-turbo")
    assert model.architecture.label == "Z-Image Turbo" and model.architecture.adapter.latent.channels == 16
    assert type(model.unet).__name__ == "ZImageTransformer2DModel"
    assert type(model.text_encoders["text_encoder"]).__name__ == "Qwen3Model"
    assert zimage_app.models.get("tiny-zimage-base").architecture.label == "Z-Image"
    with pytest.raises(ValidationError, match="sampler_name"):
        zimage_app.txt2img(_request(sampler_name="DDIM", steps=2))


@pytest.mark.parametrize("name, least", [("z_image_turbo_tiny", 60), ("z_image_base_tiny", 60), ("z_image_aio", 60),
                                         ("z_image_turbo_tiny-Q8_0", 25)])
def test_single_files_and_gguf_give_the_folders_image(zimage_app, name, least):
    folder = zimage_app.txt2img(_request(steps=3)).images[0]
    model = zimage_app.models.get(name)
    if name == "z_image_base_tiny":
        assert model.architecture.label == "Z-Image"  # the sidecar says base; the tensors are the same
    else:
        assert model.architecture.label == "Z-Image Turbo"
    result = zimage_app.txt2img(_request(name, steps=3))
    psnr = _psnr(result.images[0], folder)
    print(f"Z-Image {name} vs the folder: PSNR {psnr:.1f} dB")
    assert psnr >= least
    if name == "z_image_turbo_tiny-Q8_0":  # its 25 Q8_0 tensors stay quantized (fused qkv cut in three: 33 layers)
        assert "GGUF kept quantized in memory: 33 layers" in model.notes
        assert sum(type(m).__name__ == "GGUFLinear" for m in model.unet.modules()) == 33
    if name == "z_image_turbo_tiny":
        assert any("qwen_3_4b.safetensors" in note for note in model.notes)
        assert any("ae.safetensors" in note for note in model.notes)


def test_the_published_layout_is_what_diffusers_conversion_reads():
    """On the real architecture (meta tensors): our writer's names are the published file's, and diffusers'
    own conversion reads them back to exactly the model's names and shapes; the Qwen3-4B encoder's file names
    (`model.*`) map onto Qwen3Model."""
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    from webui.families.zimage import to_original

    configs, adapter = configs_for(Architecture("zimage-turbo")), families.get("zimage-turbo")
    with torch.device("meta"):
        transformer = adapter.module_factory("transformer", configs["transformer"])()
        qwen = adapter.module_factory("text_encoder", configs["text_encoder"])()
    state = transformer.state_dict()
    published = to_original(state)
    assert "layers.29.attention.qkv.weight" in published and "x_embedder.weight" in published
    assert published["layers.0.attention.qkv.weight"].shape == (3 * 3840, 3840)
    assert detect({k: tuple(v.shape) for k, v in published.items()}).architecture == Architecture("zimage-turbo")
    back = convert_z_image_transformer_checkpoint_to_diffusers(dict(published))
    assert set(back) == set(state) and all(back[k].shape == state[k].shape for k in state)
    count = sum(p.numel() for p in transformer.parameters())
    encoder = sum(p.numel() for p in qwen.parameters())
    print(f"Z-Image transformer {count:,} parameters, {len(published)} published tensors; Qwen3 encoder {encoder:,}")
    assert (count, encoder) == (6_154_908_736, 4_022_468_096)  # "6B" and Qwen3-4B's 4.02B, as published
    names = {"model." + k for k in qwen.state_dict()}
    assert set(adapter.component_tensors("text_encoder", {k: None for k in names} | {"lm_head.weight": None})) \
        == set(qwen.state_dict())


def test_a_tiny_tensor_round_trip_through_the_published_layout(zimage_root):
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    from webui.families.zimage import to_original
    from webui.model_manager.loader import _component_weights

    state = _component_weights(zimage_root / "folders" / "tiny-zimage-turbo" / "transformer", False)
    back = convert_z_image_transformer_checkpoint_to_diffusers(to_original(state, "model.diffusion_model."))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_img2img_starts_from_the_picture(zimage_app):
    """img2img runs through the engine (the flow noising itself is tested with Flux: tests/test_flux.py);
    a random tiny transformer knows no pictures, so the check is that the start image and strength matter."""
    start = zimage_app.txt2img(_request(steps=3)).images[0]
    fresh = zimage_app.txt2img(_request(steps=4, seed=9)).images[0]
    close, far = (zimage_app.img2img(_request(mode="img2img", steps=4, init_images=[start], denoising_strength=s,
                                              seed=9)) for s in (0.3, 0.6))
    assert close.images[0].size == (64, 64) and "Denoising strength: 0.3" in close.infotexts[0]
    assert _psnr(close.images[0], fresh) < 40 and _psnr(close.images[0], far.images[0]) < 40


def test_batch_hires_and_inpaint_run_with_zimage(zimage_app):
    """Captions ride with their token mask through batches; image i of a batch is seed + i alone; hires fix
    adds its pass; inpainting keeps what is outside the mask."""
    from PIL import Image

    batch = zimage_app.txt2img(_request(steps=3, batch_size=2, cfg_scale=3.0, negative_prompt="dark"))
    alone = zimage_app.txt2img(_request(steps=3, seed=6, cfg_scale=3.0, negative_prompt="dark"))
    assert _psnr(batch.images[1], alone.images[0]) >= 40
    hires = zimage_app.txt2img(_request(steps=2, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2,
                                        denoising_strength=0.5))
    assert hires.images[0].size == (96, 96) and "Hires upscale: 1.5" in hires.infotexts[0]
    picture = Image.new("RGB", (64, 64), (200, 60, 40))
    box = Image.new("L", (64, 64), 0)
    box.paste(255, (16, 16, 48, 48))
    painted = zimage_app.img2img(_request(mode="img2img", steps=3, init_images=[picture], mask=box,
                                          denoising_strength=1.0, inpaint_full_res=False))
    out = np.asarray(painted.images[0], dtype=np.float64)
    assert np.abs(out[:8, :8] - (200, 60, 40)).max() <= 2 and np.abs(out[24:40, 24:40] - (200, 60, 40)).mean() > 10
