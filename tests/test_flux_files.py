"""Flux files as people download them: BFL's single-file transformer with separate text encoders and VAE,
and ComfyUI's all-in-one file; detection from tensor names and shapes; the published architecture."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from webui import families
from webui.app import AppOptions, build
from webui.core.request import GenerationRequest
from webui.families.flux_layout import from_diffusers, to_diffusers
from webui.model_manager.architecture import Architecture, configs_for
from webui.model_manager.detect import DetectionError, detect
from webui.model_manager.tiny_flux import write_flux_folder, write_flux_gguf, write_flux_single_files

# published sizes: flux1-dev.safetensors has 780 tensors (schnell 776: no guidance_in), 11,901,408,320
# parameters (schnell 11,891,178,560); T5-XXL's encoder 4,762,310,656, CLIP-L 123,060,480, the ae 83,819,683
PUBLISHED = {"flux-dev": (780, 11_901_408_320), "flux-schnell": (776, 11_891_178_560)}


@pytest.mark.parametrize("family", ["flux-dev", "flux-schnell"])
def test_the_shipped_configs_are_the_published_architecture(family):
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    configs, adapter = configs_for(Architecture(family)), families.get(family)
    with torch.device("meta"):
        modules = {n: adapter.module_factory(n, configs[n])() for n in adapter.components()}
    count = {n: sum(p.numel() for p in m.parameters()) for n, m in modules.items()}
    assert count == {"transformer": PUBLISHED[family][1], "vae": 83_819_683, "text_encoder": 123_060_480,
                     "text_encoder_2": 4_762_310_656}
    state = modules["transformer"].state_dict()
    bfl = from_diffusers(state, configs["transformer"])
    assert len(bfl) == PUBLISHED[family][0] and "double_blocks.18.img_attn.qkv.weight" in bfl
    assert ("guidance_in.in_layer.weight" in bfl) == (family == "flux-dev")
    # our table reads BFL's layout exactly as diffusers' own conversion does: same names, shapes and values
    # (one row per output channel is enough to follow every split, chunk and swap)
    generator = torch.Generator().manual_seed(0)
    rows = {k: torch.randn(v.shape[0], generator=generator) for k, v in bfl.items()}
    ours, leftovers = to_diffusers(rows, configs["transformer"])
    theirs = convert_flux_transformer_checkpoint_to_diffusers({"model.diffusion_model." + k: v for k, v in rows.items()})
    assert not leftovers and set(ours) == set(theirs) == set(state)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert all(ours[k].shape[0] == state[k].shape[0] for k in ours)


def test_detection_tells_dev_schnell_and_fill_from_the_transformer():
    base = {"double_blocks.0.img_attn.qkv.weight": (9216, 3072), "img_in.weight": (3072, 64)}
    assert detect(base).architecture == Architecture("flux-schnell")
    dev = dict(base, **{"guidance_in.in_layer.weight": (3072, 256)})
    assert detect(dev).architecture == Architecture("flux-dev")
    fill = {"model.diffusion_model." + k: v for k, v in dict(dev, **{"img_in.weight": (3072, 384)}).items()}
    assert detect(fill).architecture == Architecture("flux-dev", inpainting=True)
    with pytest.raises(DetectionError, match="nor a transformer Easel knows"):
        detect({"something.weight": (3,)})


@pytest.fixture(scope="module")
def flux_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux-files")
    source = write_flux_folder(root / "folders" / "tiny-flux-dev", "dev", seed=4)
    models = root / "models"
    write_flux_single_files(source, models, "flux1-dev-tiny")
    write_flux_single_files(source, models, "flux1-dev-aio", all_in_one=True)
    write_flux_gguf(source, models, "flux1-dev-tiny-Q8_0")
    return root


def _app(root, models=None):
    return build(AppOptions(models_dir=models or root / "models", ckpt_dirs=[root / "folders"],
                            outputs_dir=root / "out", data_dir=root / "data", device="cpu"))


def test_single_file_and_all_in_one_give_the_folders_image(flux_models):
    app = _app(flux_models)
    try:
        names = [c.name for c in app.models.checkpoints()]
        assert names == ["flux1-dev-aio.safetensors", "flux1-dev-tiny-Q8_0.gguf", "flux1-dev-tiny.safetensors",
                         "tiny-flux-dev"]
        images = {}
        for name in names:
            result = app.txt2img(GenerationRequest(prompt="a red chair", steps=3, width=64, height=64, seed=3,
                                                   sampler_name="Euler", cfg_scale=1, checkpoint=name))
            images[name] = np.asarray(result.images[0], dtype=np.float64)
            assert "Distilled CFG Scale: 3.5" in result.infotexts[0]
        notes = app.models.get("flux1-dev-tiny.safetensors").notes
        # choosing the very files found automatically (a pasted `Module N` list) keeps the loaded model
        loaded = app.models.get("flux1-dev-tiny.safetensors")
        assert app.models.get("flux1-dev-tiny.safetensors", modules=["ae", "clip_l", "t5xxl_fp16"]) is loaded
        assert app.models.get("flux1-dev-tiny.safetensors") is loaded
        assert "vae from VAE/ae.safetensors" in notes and "text encoder 2 from text_encoder/t5xxl_fp16.safetensors" in notes
        for name in ("flux1-dev-aio.safetensors", "flux1-dev-tiny.safetensors"):
            assert np.abs(images[name] - images["tiny-flux-dev"]).max() <= 2, name
        # GGUF Q8_0 (dequantized at load): close to the full-precision weights, not equal
        mse = ((images["flux1-dev-tiny-Q8_0.gguf"] - images["tiny-flux-dev"]) ** 2).mean()
        psnr = 10 * np.log10(255 ** 2 / max(mse, 1e-12))
        print(f"Flux GGUF Q8_0 vs fp32 folder: PSNR {psnr:.1f} dB")
        assert 30 < psnr < 100
        assert any("Q8_0" in note for note in app.models.get("flux1-dev-tiny-Q8_0.gguf").notes)
        entries = {e.name: e for e in app.library.entries() if e.kind == "checkpoint"}
        assert entries["flux1-dev-tiny-Q8_0.gguf"].architecture == "Flux.1 dev"
        assert entries["tiny-flux-dev"].architecture == "Flux.1 dev"
        assert entries["flux1-dev-tiny.safetensors"].architecture == "Flux.1 dev"
    finally:
        app.close()


def test_a_missing_text_encoder_or_tokenizer_is_named(flux_models, tmp_path):
    from webui.model_manager.errors import ModelLoadError

    models = tmp_path / "models"
    shutil.copytree(flux_models / "models", models)
    (models / "text_encoder" / "t5xxl_fp16.safetensors").unlink()
    app = _app(flux_models, models)
    try:
        with pytest.raises(ModelLoadError, match=r"no text encoder 2 .*text_encoder.*t5xxl\*\.safetensors"):
            app.models.get("flux1-dev-tiny.safetensors")
        shutil.copy(flux_models / "models" / "text_encoder" / "t5xxl_fp16.safetensors", models / "text_encoder")
        shutil.rmtree(models / "text_encoder" / "t5_tokenizer")
        with pytest.raises(ModelLoadError, match="T5 tokenizer is missing"):
            app.models.get("flux1-dev-tiny.safetensors")
    finally:
        app.close()


def test_vae_and_text_encoders_chosen_by_file_whatever_their_names(flux_models, tmp_path):
    """Forge's VAE / Text Encoder choice: files named anything become the part their tensors fit, the choice
    is remembered per checkpoint, written as `Module N` and pasted back; what is wrong is named."""
    from safetensors.torch import save_file

    from webui.core.infotext import parse_infotext
    from webui.core.request import ValidationError
    from webui.model_manager.errors import ModelLoadError
    from webui.pnginfo import infotext_to_fields

    models = tmp_path / "models"
    shutil.copytree(flux_models / "models", models)
    renamed = {"VAE/ae.safetensors": "VAE/autoenc.safetensors", "text_encoder/clip_l.safetensors":
               "text_encoder/small_one.safetensors", "text_encoder/t5xxl_fp16.safetensors": "text_encoder/big_one.safetensors"}
    for old, new in renamed.items():
        (models / old).rename(models / new)
    save_file({"something.weight": torch.zeros(3)}, str(models / "text_encoder" / "junk.safetensors"))
    app = _app(flux_models, models)
    checkpoint = "flux1-dev-tiny.safetensors"
    request = GenerationRequest(prompt="a red chair", steps=3, width=64, height=64, seed=3, sampler_name="Euler",
                                cfg_scale=1, checkpoint=checkpoint)
    try:
        choices = app.models.module_choices
        assert choices.names() == ["autoenc.safetensors", "big_one.safetensors", "junk.safetensors",
                                   "small_one.safetensors"]
        with pytest.raises(ModelLoadError, match="no vae .*VAE / Text Encoder"):
            app.models.get(checkpoint)
        # chosen in any order, by name or stem or path: each file becomes the part its tensors fit
        choices.set_preference(checkpoint, ["big_one", "text_encoder/small_one.safetensors", "autoenc"])
        assert choices.preference(checkpoint) == ["big_one.safetensors", "small_one.safetensors",
                                                  "autoenc.safetensors"]
        result = app.txt2img(request)
        reference = app.txt2img(replace(request, checkpoint="tiny-flux-dev"))
        assert np.abs(np.asarray(result.images[0], dtype=np.float64) -
                      np.asarray(reference.images[0], dtype=np.float64)).max() <= 2
        text = result.infotexts[0]
        assert "Module 1: big_one, Module 2: small_one, Module 3: autoenc" in text
        assert app.models.get(checkpoint).part_files["text_encoder_2"].name == "big_one.safetensors"
        # paste restores the choice as a per-request override (Forge's VAE/TE), which loads the same files
        pasted = infotext_to_fields(parse_infotext(text))["override_settings"]["forge_additional_modules"]
        assert pasted == ["big_one", "small_one", "autoenc"]
        choices.set_preference(checkpoint, [])
        again = app.txt2img(replace(request, override_settings={"forge_additional_modules": pasted}))
        assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))
        # what is wrong is named: a file that is not there, one that fits no part, two of one part
        with pytest.raises(ValidationError, match="override_settings.forge_additional_modules.*'nothing' not found"):
            app.txt2img(replace(request, override_settings={"forge_additional_modules": ["nothing"]}))
        with pytest.raises(ModelLoadError, match="junk.safetensors fits none of Flux.1 dev's parts"):
            app.txt2img(replace(request, override_settings={"forge_additional_modules": ["junk", "autoenc"]}))
        # Kontext dev has dev's tensors: its file name says it (the sidecar here gives only the tiny sizes)
        stable = models / "Stable-diffusion"
        shutil.copy(stable / checkpoint, stable / "flux1-kontext-dev-tiny.safetensors")
        sidecar = json.loads((stable / "flux1-dev-tiny.json").read_text())
        sidecar.pop("architecture")
        (stable / "flux1-kontext-dev-tiny.json").write_text(json.dumps(sidecar))
        app.models.refresh()
        kontext = app.models.get("flux1-kontext-dev-tiny.safetensors", modules=["autoenc", "small_one", "big_one"])
        assert kontext.architecture.label == "Flux.1 Kontext dev"
        shutil.copy(models / "VAE" / "autoenc.safetensors", models / "VAE" / "other_vae.safetensors")
        with pytest.raises(ModelLoadError, match="other_vae.safetensors and autoenc.safetensors are both a vae"):
            app.txt2img(replace(request, override_settings={"forge_additional_modules": ["autoenc", "other_vae"]}))
    finally:
        app.close()


def test_gguf_transformer_stays_quantized_in_memory(flux_models):
    """The GGUF transformer's Linear layers keep their Q8_0 blocks (diffusers' GGUFLinear, dequantized per call):
    the same predictions as the dequantized-at-load model, in less memory."""
    from diffusers.quantizers.gguf.utils import GGUFLinear

    from webui.model_manager.loader import load_checkpoint
    from webui.model_manager.store import measure

    app = _app(flux_models)
    try:
        name = "flux1-dev-tiny-Q8_0.gguf"
        quantized = app.models.get(name)
        assert any("GGUF kept quantized in memory" in note for note in quantized.notes), quantized.notes
        layers = [m for m in quantized.unet.modules() if isinstance(m, GGUFLinear)]
        assert layers and all(m.weight.quant_type.name == "Q8_0" for m in layers)
        companions = {kind: app.paths.model_dir(kind) for kind in ("vae", "text_encoder")}
        plain = load_checkpoint(app.models.find(name), app.models.device, False, companion_dirs=companions,
                                keep_gguf_quantized=False)
        assert not any(isinstance(m, GGUFLinear) for m in plain.unet.modules())
        sizes = measure([quantized.unet]).ram, measure([plain.unet]).ram
        print(f"Flux tiny transformer resident memory: GGUF Q8_0 kept quantized {sizes[0]:,} bytes, "
              f"dequantized at load (fp32) {sizes[1]:,} bytes")
        assert sizes[0] < 0.6 * sizes[1]
        generator = torch.Generator().manual_seed(0)
        x, context = torch.randn(1, 16, 8, 8, generator=generator), torch.randn(1, 6, 32, generator=generator)
        adapter = quantized.architecture.adapter
        kwargs = {"pooled_projections": torch.randn(1, 32, generator=generator), "guidance": torch.tensor([3.5])}
        with torch.no_grad():
            ours, theirs = (adapter.call_denoiser(m.unet, x, torch.tensor([500.0]), context, kwargs)
                            for m in (quantized, plain))
        # both dequantize with diffusers' functions (lazy_tensors.py), per call or once at load: the same values
        difference = float((ours - theirs).abs().max())
        print(f"Flux tiny transformer output, quantized vs dequantized at load: max difference {difference:.5f}")
        assert difference < 5e-3
        # a LoRA patches quantized layers (dequantized while it is on) and leaves them quantized again
        from safetensors.torch import save_file

        lora = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 32, generator=generator),
                "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(32, 4, generator=generator)}
        (flux_models / "models" / "Lora").mkdir(exist_ok=True)
        save_file(lora, str(flux_models / "models" / "Lora" / "gguf-style.safetensors"))
        request = GenerationRequest(prompt="a red chair", steps=2, width=64, height=64, seed=3, sampler_name="Euler",
                                    cfg_scale=1, checkpoint=name)
        plain_image = np.asarray(app.txt2img(request).images[0], dtype=np.float64)
        styled = app.txt2img(replace(request, prompt="a red chair <lora:gguf-style:1>"))
        assert not styled.warnings, styled.warnings
        assert np.abs(np.asarray(styled.images[0], dtype=np.float64) - plain_image).max() > 0
        assert np.array_equal(np.asarray(app.txt2img(request).images[0], dtype=np.float64), plain_image)
        assert type(quantized.unet.transformer_blocks[0].attn.to_q) is GGUFLinear
        # fp8 storage leaves the quantized blocks alone
        app.settings.update({"weight_storage": "fp8_e4m3fn"})
        try:
            again = app.models.get(name)
            assert any("stay quantized" in note for note in again.notes)
            assert all(m.weight.quant_type.name == "Q8_0" for m in again.unet.modules() if isinstance(m, GGUFLinear))
        finally:
            app.settings.update({"weight_storage": "Automatic"})
    finally:
        app.close()


def test_the_models_tab_labels_a_kontext_file_by_its_name_or_metadata():
    """Kontext dev has dev's tensors: the library's label follows the loader (name or modelspec metadata)."""
    from webui.model_manager.library import guess_architecture

    configs = configs_for(Architecture("flux-dev"))
    with torch.device("meta"):
        transformer = families.get("flux-dev").module_factory("transformer", configs["transformer"])()
    shapes = {k: tuple(v.shape) for k, v in from_diffusers(transformer.state_dict(), configs["transformer"]).items()}
    assert guess_architecture("checkpoint", shapes, {}, "flux1-kontext-dev.safetensors")[0] == "Flux.1 Kontext dev"
    assert guess_architecture("checkpoint", shapes, {"modelspec.architecture": "Flux.1-Kontext-dev"},
                              "edit.safetensors")[0] == "Flux.1 Kontext dev"
    assert guess_architecture("checkpoint", shapes, {}, "flux1-dev.safetensors")[0] == "Flux.1 dev"
