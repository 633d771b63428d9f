"""Flux.1 dev and schnell: tiny diffusers folders load as one checkpoint each, generate through the engine,
and give diffusers' own FluxPipeline's image on the same weights, seed, prompt and steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import make_easel
from webui import families
from webui.core.request import GenerationRequest, ValidationError
from webui.core.seeds import ImageRNG
from webui.families.flux import pack, unpack
from webui.model_manager.tiny_flux import write_flux_folder

PROMPT = "a cat on a red chair"


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux")
    write_flux_folder(folder / "tiny-flux-dev", "dev", seed=1)
    write_flux_folder(folder / "tiny-flux-schnell", "schnell", seed=2)
    write_flux_folder(folder / "tiny-flux-fill", "dev", seed=3, fill=True)
    write_flux_folder(folder / "tiny-flux-kontext", "dev", seed=7, kontext=True)
    return folder


@pytest.fixture(scope="module")
def flux_app(tmp_path_factory, flux_dir):
    app = make_easel(tmp_path_factory.mktemp("flux-app"), flux_dir)
    yield app
    app.close()


def _psnr(a, b) -> float:
    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return 10 * np.log10(255 ** 2 / max(mse, 1e-12))


def _request(variant: str, **kw) -> GenerationRequest:
    base = dict(prompt=PROMPT, steps=4, width=64, height=64, seed=5, sampler_name="Euler", scheduler="Automatic",
                cfg_scale=1.0, checkpoint=f"tiny-flux-{variant}")
    return GenerationRequest(**{**base, **kw})


@pytest.mark.parametrize("variant, guidance, tokens", [("dev", 3.5, 512), ("schnell", 3.5, 256)])
def test_easel_gives_the_flux_pipelines_image(flux_app, flux_dir, variant, guidance, tokens):
    from diffusers import FluxPipeline

    result = flux_app.txt2img(_request(variant, distilled_cfg_scale=guidance))
    noise = ImageRNG((16, 8, 8), [5], torch.device("cpu"), source=flux_app.settings.get("randn_source")).first()
    pipe = FluxPipeline.from_pretrained(str(flux_dir / f"tiny-flux-{variant}"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(PROMPT, height=64, width=64, num_inference_steps=4, guidance_scale=guidance,
                     max_sequence_length=tokens, latents=pack(noise)).images[0]
    psnr = _psnr(result.images[0], reference)
    print(f"Flux {variant}: Easel vs FluxPipeline PSNR {psnr:.1f} dB")
    assert psnr >= 40
    # and the comparison can fail: dev with another guidance value is another image
    if variant == "dev":
        other = flux_app.txt2img(_request(variant, distilled_cfg_scale=1.0))
        assert _psnr(other.images[0], reference) < 38


def test_infotext_writes_distilled_cfg_for_dev_only_and_paste_restores_it(flux_app):
    from webui.core.infotext import parse_infotext
    from webui.pnginfo import infotext_to_fields

    dev = flux_app.txt2img(_request("dev", steps=2, distilled_cfg_scale=2.5)).infotexts[0]
    assert "Distilled CFG Scale: 2.5" in dev and "Schedule type: Simple" in dev and "Model: tiny-flux-dev" in dev
    assert infotext_to_fields(parse_infotext(dev))["distilled_cfg_scale"] == 2.5
    schnell = flux_app.txt2img(_request("schnell", steps=2)).infotexts[0]
    assert "Distilled CFG Scale" not in schnell and "Model: tiny-flux-schnell" in schnell


def test_real_cfg_runs_the_negative_pass_and_ddpm_samplers_are_refused(flux_app):
    plain = flux_app.txt2img(_request("schnell", steps=2)).images[0]
    guided = flux_app.txt2img(_request("schnell", steps=2, cfg_scale=4.0, negative_prompt="blurry")).images[0]
    assert _psnr(plain, guided) < 60
    for refused in ("DDIM", "LCM"):  # LCM is a sigma-space loop but on a DDPM model's LCM levels
        with pytest.raises(ValidationError, match="sampler_name"):
            flux_app.txt2img(_request("schnell", steps=2, sampler_name=refused))
    for sampler in ("Heun", "DPM++ 2M", "Euler a"):
        image = flux_app.txt2img(_request("schnell", steps=3, sampler_name=sampler)).images[0]
        assert np.asarray(image).std() > 1  # a picture, not a flat field of NaNs


def test_a_flux_folder_is_one_checkpoint_with_its_family(flux_app):
    names = [info.name for info in flux_app.models.checkpoints()]
    assert sorted(names) == ["tiny-flux-dev", "tiny-flux-fill", "tiny-flux-kontext", "tiny-flux-schnell"]
    model = flux_app.models.get("tiny-flux-dev")
    assert model.architecture.label == "Flux.1 dev" and model.architecture.adapter.latent.channels == 16
    assert type(model.unet).__name__ == "FluxTransformer2DModel"


def test_the_flow_schedule_is_the_pipelines():
    """Simple on the flow schedule = FlowMatchEulerDiscreteScheduler with FluxPipeline's sigmas and mu."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from webui.core.schedules import simple
    from webui.model_manager.tiny_flux import SCHEDULERS

    for family in ("flux-dev", "flux-schnell"):
        config = SCHEDULERS[family]
        for size, steps in ((64, 4), (1024, 20), (768, 7)):
            latent = size // 8
            schedule = families.get(family).noise_schedule(config).for_size(latent, latent)
            reference = FlowMatchEulerDiscreteScheduler.from_config(config)
            mu = calculate_shift((latent // 2) ** 2, 256, 4096, 0.5, 1.15)
            reference.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
            assert torch.allclose(simple(schedule, steps), reference.sigmas, atol=1e-6), (family, size)
            assert schedule.model_timestep(0.5) == 500.0


def test_packing_round_trips_as_the_pipeline_packs():
    from diffusers import FluxPipeline

    x = torch.randn(2, 16, 8, 12)
    packed = pack(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 16, 8, 12))
    assert torch.equal(unpack(packed, 8, 12), x)


def test_flow_parameterisation_noises_and_denoises_consistently():
    from webui.core.parameterisation import FlowVelocity

    flow, clean, noise = FlowVelocity(), torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    x = flow.noised(clean, noise, 0.3)
    velocity = noise - clean
    assert torch.allclose(flow.denoised(x, 0.3, velocity), clean, atol=1e-6)
    assert torch.allclose(flow.output_for_clean(x, 0.3, clean), velocity, atol=1e-5)


def test_img2img_starts_from_the_flow_noised_image(flux_app):
    """img2img runs through the engine; the sampler starts from (1 - s) * x0 + s * noise at the
    schedule's first remaining sigma (AUTOMATIC1111's step count: int(strength * steps) + 1 steps)."""
    from webui.core import samplers
    from webui.core.parameterisation import FlowVelocity
    from webui.core.schedules import FlowSchedule
    from webui.model_manager.tiny_flux import SCHEDULERS

    start = flux_app.txt2img(_request("schnell", steps=4)).images[0]
    result = flux_app.img2img(_request("schnell", mode="img2img", steps=4, init_images=[start],
                                       denoising_strength=0.5, seed=9))
    assert result.images[0].size == (64, 64) and "Denoising strength: 0.5" in result.infotexts[0]

    seen = []

    class Recorder(samplers.ModelOutput):  # the network's stand-in: records where the sampler asks
        schedule = FlowSchedule.flow(SCHEDULERS["flux-schnell"])
        parameterisation = FlowVelocity()
        prediction_type = "flow"

        def denoise(self, x, sigma):
            seen.append((x.clone(), sigma))
            return torch.zeros_like(x)

    info, label = samplers.resolve("Euler", "Simple")
    init, noise = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4)
    samplers.run(info, label, Recorder(), None, noise, 4, {}, lambda i, x, d: None, [], init=init, strength=0.5)
    assert len(seen) == 3 and seen[0][1] == pytest.approx(0.75)
    assert torch.allclose(seen[0][0], 0.25 * init + 0.75 * noise, atol=1e-6)


def test_fp8_weights_generate_close_to_full_precision(flux_app):
    full = flux_app.txt2img(_request("schnell", steps=3)).images[0]
    flux_app.settings.update({"weight_storage": "fp8_e4m3fn"})
    try:
        model = flux_app.models.get("tiny-flux-schnell")
        assert model.weight_storage == "fp8_e4m3fn"
        assert model.unet.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
        fp8 = flux_app.txt2img(_request("schnell", steps=3))
    finally:
        flux_app.settings.update({"weight_storage": "Automatic"})
    psnr = _psnr(fp8.images[0], full)
    print(f"Flux schnell fp8_e4m3fn vs fp32: PSNR {psnr:.1f} dB")
    assert psnr > 20 and "Weights: fp8_e4m3fn" in fp8.infotexts[0]


def test_t5_carries_the_sequence_with_emphasis_and_clip_the_pooled_vector(flux_app):
    from webui.core.conditioning import PromptEncoder

    for variant, length in (("dev", 512), ("schnell", 256)):
        encoder = PromptEncoder(flux_app.models.get(f"tiny-flux-{variant}"))
        plain, weighted = encoder.encode("a cat on a chair"), encoder.encode("a (cat:1.5) on a chair")
        assert plain.embeds.shape == (1, length, 32) and plain.pooled.shape == (1, 32)
        assert not torch.allclose(plain.embeds, weighted.embeds)
        assert torch.allclose(plain.pooled, weighted.pooled)  # CLIP sees the text without the syntax


def test_a_diffusers_format_flux_lora_applies_and_restores(flux_app):
    """`transformer.<module>.lora_A/lora_B` (diffusers / PEFT Flux LoRAs) patch the transformer."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(3)
    tensors = {}
    for module in ("transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.proj_mlp"):
        width = 32
        out = 32 if module.endswith("to_q") else 128
        tensors[f"transformer.{module}.lora_A.weight"] = torch.randn(4, width, generator=generator)
        tensors[f"transformer.{module}.lora_B.weight"] = torch.randn(out, 4, generator=generator)
    folder = flux_app.paths.model_dir("lora")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "flux-style.safetensors"))
    plain = flux_app.txt2img(_request("schnell", steps=2))
    styled = flux_app.txt2img(_request("schnell", steps=2, prompt=PROMPT + " <lora:flux-style:1>"))
    assert not any("do not exist" in w for w in styled.warnings), styled.warnings
    assert _psnr(plain.images[0], styled.images[0]) < 60
    again = flux_app.txt2img(_request("schnell", steps=2))
    assert _psnr(plain.images[0], again.images[0]) > 100  # the weights came back bit for bit


def test_fill_gets_the_masked_image_and_mask_as_flux_fill_pipeline_packs_them(flux_app, flux_dir):
    from diffusers import FluxFillPipeline
    from PIL import Image

    pipe = FluxFillPipeline.from_pretrained(str(flux_dir / "tiny-flux-fill"), local_files_only=True)
    generator = torch.Generator().manual_seed(0)
    mask = (torch.rand(1, 1, 64, 64, generator=generator) > 0.5).float()
    raw = torch.randn(1, 16, 8, 8, generator=generator)
    theirs_mask, theirs_latents = pipe.prepare_mask_latents(mask, raw, 1, 16, 1, 64, 64, torch.float32, "cpu", None)
    vae = pipe.vae.config
    ours = families.get("flux-dev").inpaint_conditioning(mask, (raw - vae.shift_factor) * vae.scaling_factor)
    assert torch.allclose(pack(ours), torch.cat([theirs_latents, theirs_mask], dim=-1), atol=1e-6)

    model = flux_app.models.get("tiny-flux-fill")
    assert model.architecture.inpainting and model.architecture.label == "Flux.1 dev inpainting"
    picture = Image.new("RGB", (64, 64), (200, 60, 40))
    box = Image.new("L", (64, 64), 0)
    box.paste(255, (16, 16, 48, 48))
    result = flux_app.img2img(_request("fill", mode="img2img", steps=2, init_images=[picture], mask=box,
                                       denoising_strength=1.0, inpaint_full_res=False))
    out = np.asarray(result.images[0], dtype=np.float64)
    assert np.abs(out[:8, :8] - (200, 60, 40)).max() <= 2  # outside the mask: the picture, pasted back
    assert np.abs(out[24:40, 24:40] - (200, 60, 40)).mean() > 10  # inside: painted


def _picture(seed: int):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(pixels).resize((64, 64), Image.BICUBIC)


@pytest.fixture(scope="module")
def kontext_reference(flux_app, flux_dir):
    """FluxKontextPipeline's image for PROMPT with `_picture(1)` as its reference (seed 5, 4 steps, 64 px, the
    picture's own size): what Easel's img2img and txt2img Kontext paths must both give."""
    from diffusers import FluxKontextPipeline

    noise = ImageRNG((16, 8, 8), [5], torch.device("cpu"), source=flux_app.settings.get("randn_source")).first()
    pipe = FluxKontextPipeline.from_pretrained(str(flux_dir / "tiny-flux-kontext"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe(image=_picture(1), prompt=PROMPT, height=64, width=64, num_inference_steps=4, guidance_scale=3.5,
                max_sequence_length=512, latents=pack(noise), _auto_resize=False, max_area=64 * 64).images[0]


def test_kontext_edits_with_the_image_as_reference_tokens_as_flux_kontext_pipeline_does(flux_app,
                                                                                           kontext_reference):
    """FLUX.1 Kontext dev (told by its pipeline, name or metadata): the img2img image's latents follow the
    noise's tokens at position index 1; with denoising 1 the edit starts from noise, as FluxKontextPipeline."""
    model = flux_app.models.get("tiny-flux-kontext")
    assert model.architecture.label == "Flux.1 Kontext dev" and model.architecture.adapter.image_reference
    picture = _picture(1)
    result = flux_app.img2img(_request("kontext", mode="img2img", init_images=[picture], denoising_strength=1.0))
    reference = kontext_reference
    psnr = _psnr(result.images[0], reference)
    print(f"Flux Kontext: Easel img2img vs FluxKontextPipeline PSNR {psnr:.1f} dB")
    assert psnr >= 40
    # the reference is what makes the difference: another image, another edit (the tiny random model looks
    # at it only a little, so: much further from the pipeline's image than Easel's own)
    other = flux_app.img2img(_request("kontext", mode="img2img", init_images=[_picture(2)], denoising_strength=1.0))
    print(f"Flux Kontext with another reference image vs FluxKontextPipeline: {_psnr(other.images[0], reference):.1f} dB")
    assert _psnr(other.images[0], reference) < psnr - 10


def test_kontext_in_txt2img_and_hires_generates_without_a_reference(flux_app):
    """txt2img without a Kontext reference: Kontext generates from the prompt alone (FluxKontextPipeline
    without an image); the hires pass upscales that as for dev."""
    image = flux_app.txt2img(_request("kontext", steps=2, enable_hr=True, hr_scale=2, denoising_strength=0.5,
                                      hr_second_pass_steps=2)).images[0]
    assert image.size == (128, 128) and np.asarray(image).std() > 1


def _kontext(picture, resize="Image size") -> dict:
    return {"Kontext": {"args": [picture, resize]}}


def test_kontext_reference_in_txt2img_gives_flux_kontext_pipelines_image(flux_app, kontext_reference):
    """txt2img's Kontext reference (alwayson_scripts "Kontext") is FluxKontextPipeline's `image`: "Image size"
    is its `_auto_resize=False` (the picture's own size, floored to 16), "Kontext resolutions" its default."""
    from webui.core.infotext import parse_infotext
    from webui.features.kontext import KontextArgs, parse_args
    from webui.ui.kontext_ui import pasted_kontext_fields

    picture = _picture(1)
    result = flux_app.txt2img(_request("kontext", alwayson_scripts=_kontext(picture)))
    reference = kontext_reference
    psnr = _psnr(result.images[0], reference)
    print(f"Flux Kontext: Easel txt2img with a reference vs FluxKontextPipeline PSNR {psnr:.1f} dB")
    assert psnr >= 40
    plain = flux_app.txt2img(_request("kontext"))  # no reference: another image (the test can fail)
    assert _psnr(plain.images[0], reference) < psnr - 10
    params = parse_infotext(result.infotexts[0]).params
    assert params["Kontext reference"] == "64x64" and params["Kontext resize"] == "Image size"
    assert pasted_kontext_fields(params) == {"kontext::resize": "Image size"}
    from webui.ui.send_to import pasted_fields  # what PNG Info's Send to txt2img restores
    assert pasted_fields(flux_app, result.infotexts[0])["kontext::resize"] == "Image size"
    # the txt2img tab's controls make the same request (and the same picture)
    from webui.ui.txt2img import txt2img_request
    fields = dict(prompt=PROMPT, steps=4, width=64, height=64, seed=5, sampler_name="Euler", cfg_scale=1.0,
                  checkpoint="tiny-flux-kontext", **{"kontext::image": picture, "kontext::resize": "Image size"})
    from_ui = flux_app.txt2img(txt2img_request(fields))
    assert _psnr(from_ui.images[0], result.images[0]) > 100
    # the pipeline's default sizing: the preferred Kontext resolution nearest the aspect ratio, floored to 16
    from PIL import Image
    assert KontextArgs(Image.new("RGB", (300, 200)), "Kontext resolutions").size == (1248, 832)
    assert KontextArgs(Image.new("RGB", (70, 50)), "Image size").size == (64, 48)
    assert parse_args({"args": {"image": "not base64", "resize": "Image size"}})[1][0].field == \
        "alwayson_scripts.Kontext.args.image"
    assert parse_args({"args": [picture, "Bigger"]})[1][0].field == "alwayson_scripts.Kontext.args.resize"


def test_kontext_reference_reaches_the_hires_pass_and_needs_a_kontext_checkpoint(flux_app):
    """Both passes of txt2img + hires fix see the reference's 16 tokens after their own (first 16, hires 64);
    a reference on a checkpoint that is not Kontext is a 422 naming the argument."""
    model = flux_app.models.get("tiny-flux-kontext")
    seen: list[int] = []
    hook = model.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["hidden_states"].shape[1]),
                                                with_kwargs=True)
    try:
        image = flux_app.txt2img(_request("kontext", steps=2, enable_hr=True, hr_scale=2, denoising_strength=0.5,
                                          hr_second_pass_steps=2, alwayson_scripts=_kontext(_picture(1)))).images[0]
    finally:
        hook.remove()
    assert image.size == (128, 128)
    assert seen == [16 + 16] * 2 + [64 + 16] * 2, seen
    with pytest.raises(ValidationError, match="alwayson_scripts.Kontext.args.image"):
        flux_app.txt2img(_request("dev", steps=1, alwayson_scripts=_kontext(_picture(1))))


def test_kontext_single_files_are_told_by_name_or_metadata():
    flux = families.get("flux-dev")
    assert flux.file_variant("flux1-kontext-dev.safetensors", {}) == "flux-kontext"
    assert flux.file_variant("edit.safetensors", {"modelspec.architecture": "Flux.1-Kontext-dev"}) == "flux-kontext"
    assert flux.file_variant("flux1-dev.safetensors", {"format": "pt"}) is None
    assert families.get("flux-schnell").file_variant("flux1-kontext-dev.safetensors", {}) is None


def test_img2img_gives_flux_img2img_pipelines_image(flux_app, flux_dir):
    """AUTOMATIC1111's img2img runs the last int(strength * steps) + 1 of `steps` steps; diffusers' runs the
    last int(strength' * steps): denoising 0.5 of 4 steps here is FluxImg2ImgPipeline's strength 0.75.
    The image's latents are the posterior mean in both (diffusers samples the posterior by default; Easel
    takes the mean, so the reference is given the mean, encoded by the pipeline's own VAE)."""
    from diffusers import FluxImg2ImgPipeline

    picture = _picture(3)
    result = flux_app.img2img(_request("dev", mode="img2img", init_images=[picture], denoising_strength=0.5))
    pipe = FluxImg2ImgPipeline.from_pretrained(str(flux_dir / "tiny-flux-dev"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        mean = pipe.vae.encode(pipe.image_processor.preprocess(picture, 64, 64)).latent_dist.mode()
    latents = (mean - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    reference = pipe(PROMPT, image=latents, strength=0.75, height=64, width=64, num_inference_steps=4,
                     guidance_scale=3.5, max_sequence_length=512,
                     generator=torch.Generator().manual_seed(5)).images[0]  # Easel's CPU noise for seed 5
    psnr = _psnr(result.images[0], reference)
    print(f"Flux img2img: Easel vs FluxImg2ImgPipeline PSNR {psnr:.1f} dB")
    assert psnr >= 40
    other = pipe(PROMPT, image=latents, strength=0.5, height=64, width=64, num_inference_steps=4,
                 guidance_scale=3.5, max_sequence_length=512, generator=torch.Generator().manual_seed(5)).images[0]
    assert _psnr(result.images[0], other) < psnr - 10  # one step fewer is another image: the test can fail


def test_fill_gives_flux_fill_pipelines_image(flux_app, flux_dir):
    """A whole-picture mask (nothing kept, so AUTOMATIC1111's latent blend and paste-back change nothing) gives
    FluxFillPipeline's image. (With a partial mask Easel also holds the unmasked latents to the picture at
    every step, as AUTOMATIC1111 and Forge do and the pipeline does not: different images by design.)"""
    from diffusers import FluxFillPipeline
    from PIL import Image

    class MeanFill(FluxFillPipeline):  # the masked image's posterior mean, as Easel encodes it (diffusers samples)
        def prepare_mask_latents(self, mask, masked_image, *args):
            with torch.no_grad():
                mean = self.vae.encode(masked_image).latent_dist.mode()
            return super().prepare_mask_latents(mask, mean, *args)

    pipe = MeanFill.from_pretrained(str(flux_dir / "tiny-flux-fill"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    picture = _picture(4)
    noise = ImageRNG((16, 8, 8), [5], torch.device("cpu"), source=flux_app.settings.get("randn_source")).first()

    def theirs(mask):
        return pipe(PROMPT, image=picture, mask_image=mask, height=64, width=64, num_inference_steps=4,
                    guidance_scale=3.5, max_sequence_length=512, latents=pack(noise)).images[0]

    def ours(mask):
        return flux_app.img2img(_request("fill", mode="img2img", init_images=[picture], mask=mask, mask_blur=0,
                                         denoising_strength=1.0, inpaint_full_res=False)).images[0]

    whole = Image.new("L", (64, 64), 255)
    psnr = _psnr(ours(whole), theirs(whole))
    print(f"Flux Fill (whole mask): Easel vs FluxFillPipeline PSNR {psnr:.1f} dB")
    assert psnr >= 40
    box = Image.new("L", (64, 64), 0)
    box.paste(255, (16, 16, 48, 48))
    assert _psnr(ours(whole), theirs(box)) < psnr - 10  # the mask and masked image reach the model: can fail


@pytest.mark.parametrize("layout", ["kohya", "bfl", "xlabs"])
def test_flux_loras_in_published_layouts_apply_as_their_diffusers_equivalent(flux_app, layout):
    """kohya (`lora_unet_double_blocks_*`), the same under BFL's names (`diffusion_model.double_blocks.*`) and
    XLabs (`double_blocks.*.processor.*`) give the image of the same LoRA written in diffusers' layout."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(11)
    down = {n: torch.randn(4, 32, generator=generator) for n in ("qkv", "proj")}
    up = {"qkv": torch.randn(96, 4, generator=generator), "proj": torch.randn(32, 4, generator=generator)}
    block = "transformer.transformer_blocks.0.attn"
    diffusers_layout = {f"{block}.to_out.0.lora_A.weight": down["proj"], f"{block}.to_out.0.lora_B.weight": up["proj"]}
    for name, part in zip(("to_q", "to_k", "to_v"), up["qkv"].chunk(3)):
        diffusers_layout[f"{block}.{name}.lora_A.weight"] = down["qkv"].clone()
        diffusers_layout[f"{block}.{name}.lora_B.weight"] = part.clone()
    if layout == "xlabs":
        published = {"double_blocks.0.processor.qkv_lora1.down.weight": down["qkv"],
                     "double_blocks.0.processor.qkv_lora1.up.weight": up["qkv"],
                     "double_blocks.0.processor.proj_lora1.down.weight": down["proj"],
                     "double_blocks.0.processor.proj_lora1.up.weight": up["proj"]}
    else:
        stem = "lora_unet_double_blocks_0_img_attn_" if layout == "kohya" else "diffusion_model.double_blocks.0.img_attn."
        published = {}
        for name in ("qkv", "proj"):
            published[f"{stem}{name}.lora_down.weight"] = down[name]
            published[f"{stem}{name}.lora_up.weight"] = up[name]
            published[f"{stem}{name}.alpha"] = torch.tensor(4.0)  # alpha = rank: scale 1
    folder = flux_app.paths.model_dir("lora")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(published, str(folder / f"flux-{layout}.safetensors"))
    save_file(diffusers_layout, str(folder / f"flux-{layout}-diffusers.safetensors"))
    plain = flux_app.txt2img(_request("schnell", steps=2))
    theirs = flux_app.txt2img(_request("schnell", steps=2, prompt=PROMPT + f" <lora:flux-{layout}-diffusers:0.8>"))
    ours = flux_app.txt2img(_request("schnell", steps=2, prompt=PROMPT + f" <lora:flux-{layout}:0.8>"))
    assert not ours.warnings, ours.warnings
    assert _psnr(plain.images[0], ours.images[0]) < 60  # it changes the image ...
    assert _psnr(ours.images[0], theirs.images[0]) > 60  # ... as the diffusers-layout LoRA does


@pytest.mark.parametrize("source", ["CPU", "NV"])
def test_initial_noise_is_forges(flux_app, source):
    """Forge makes Flux's noise with AUTOMATIC1111's per-image generator: for image i a generator seeded
    seed + i draws (16, H/8, W/8) unpacked latents (CPU torch, or the CUDA generator's numbers for NV), a
    variation seed's draw is slerped in per (channel, column); packing into tokens happens inside the model."""
    from tests.test_samplers_a1111 import a1111_slerp
    from webui.core.philox import PhiloxGenerator

    seen = {}
    run = flux_app.engine._run

    def spy(p, sampling, *args, **kwargs):
        seen["noise"] = sampling.first_noise.clone()
        return run(p, sampling, *args, **kwargs)

    flux_app.engine._run = spy
    try:
        flux_app.txt2img(_request("dev", steps=1, width=64, height=80, seed=5, batch_size=2, subseed=40,
                                  subseed_strength=0.25, override_settings={"randn_source": source}))
    finally:
        flux_app.engine._run = run

    def draw(seed):
        if source == "NV":
            return torch.from_numpy(PhiloxGenerator(seed).randn((16, 10, 8)))
        return torch.randn((16, 10, 8), generator=torch.Generator().manual_seed(seed))

    expected = torch.stack([a1111_slerp(0.25, draw(5 + i), draw(40 + i)).float() for i in range(2)])
    torch.testing.assert_close(seen["noise"], expected, rtol=1e-5, atol=1e-5)
