"""SD3 / SD 3.5: tiny diffusers folders load as one checkpoint each, generate through the engine, and give
diffusers' own StableDiffusion3Pipeline's image on the same weights, seed, prompts, CFG and steps; with and
without the T5 encoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import make_easel
from webui import families
from webui.core.request import GenerationRequest
from webui.core.seeds import ImageRNG
from webui.model_manager.tiny_sd3 import SCHEDULER, write_sd3_folder

PROMPT = "a cat on a (red:1.2) chair"
PLAIN = "a cat on a red chair"


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd3")
    write_sd3_folder(folder / "tiny-sd35-medium", "sd35-medium", seed=1)
    write_sd3_folder(folder / "tiny-sd3-no-t5", "sd3", seed=2, t5=False)
    return folder


@pytest.fixture(scope="module")
def sd3_app(tmp_path_factory, sd3_dir):
    app = make_easel(tmp_path_factory.mktemp("sd3-app"), sd3_dir)
    yield app
    app.close()


def _psnr(a, b) -> float:
    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return 10 * np.log10(255 ** 2 / max(mse, 1e-12))


def _request(checkpoint: str, **kw) -> GenerationRequest:
    base = dict(prompt=PLAIN, negative_prompt="blurry, dark", steps=4, width=64, height=64, seed=5,
                sampler_name="Euler", scheduler="Automatic", cfg_scale=5.0, checkpoint=checkpoint)
    return GenerationRequest(**{**base, **kw})


def _reference(app, folder, seed=5, **kw):
    from diffusers import StableDiffusion3Pipeline

    noise = ImageRNG((16, 8, 8), [seed], torch.device("cpu"), source=app.settings.get("randn_source")).first()
    without_t5 = {} if (folder / "text_encoder_3").is_dir() else {"text_encoder_3": None, "tokenizer_3": None}
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), local_files_only=True, **without_t5)
    pipe.set_progress_bar_config(disable=True)
    # T5 as AUTOMATIC1111 reads it (Easel's default): 77 tokens for a prompt of one CLIP chunk
    args = dict(prompt=PLAIN, negative_prompt="blurry, dark", height=64, width=64, num_inference_steps=4,
                guidance_scale=5.0, latents=noise, max_sequence_length=77)
    return pipe(**{**args, **kw}).images[0], pipe


def test_easel_gives_the_sd3_pipelines_image_with_cfg_and_a_negative_prompt(sd3_app, sd3_dir):
    result = sd3_app.txt2img(_request("tiny-sd35-medium"))
    reference, pipe = _reference(sd3_app, sd3_dir / "tiny-sd35-medium")
    psnr = _psnr(result.images[0], reference)
    print(f"SD 3.5 Medium (T5): Easel vs StableDiffusion3Pipeline PSNR {psnr:.1f} dB")
    assert psnr >= 40
    assert "T5" not in result.infotexts[0] and "Schedule type: Simple" in result.infotexts[0]
    assert not any("T5" in w for w in result.warnings)
    # and the comparison can fail: another negative prompt is another image
    other = sd3_app.txt2img(_request("tiny-sd35-medium", negative_prompt="bright"))
    assert _psnr(other.images[0], reference) < 38
    # as AUTOMATIC1111: T5 padded to the CLIP part's 77 tokens, no emphasis on T5 (CLIP's part changes; CLIP's
    # pooled vector stays the plain text's)
    from webui.core.conditioning import PromptEncoder

    encoder = PromptEncoder(sd3_app.models.get("tiny-sd35-medium"))
    plain, weighted = encoder.encode(PLAIN), encoder.encode(PROMPT)
    assert plain.embeds.shape == (1, 77 + 77, 96) and plain.pooled.shape == (1, 64)
    assert torch.all(plain.embeds[0, :77, 64:] == 0)  # CLIP-L | CLIP-G, zero-padded to T5's width
    assert torch.equal(plain.embeds[:, 77:], weighted.embeds[:, 77:])
    assert not torch.allclose(plain.embeds[:, :77], weighted.embeds[:, :77])
    assert torch.allclose(plain.pooled, weighted.pooled)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(PLAIN, None, None, negative_prompt="",
                                                                   do_classifier_free_guidance=True,
                                                                   max_sequence_length=77)
    assert torch.allclose(plain.embeds, embeds, atol=1e-4) and torch.allclose(plain.pooled, pooled, atol=1e-4)
    assert torch.allclose(encoder.encode("").embeds, negative, atol=1e-4)


def test_t5_length_setting_256_is_the_pipelines_default_with_emphasis(sd3_app, sd3_dir):
    from webui.core.conditioning import PromptEncoder

    result = sd3_app.txt2img(_request("tiny-sd35-medium", override_settings={"sd3_t5_tokens": "256"}))
    reference, pipe = _reference(sd3_app, sd3_dir / "tiny-sd35-medium", max_sequence_length=256)
    psnr = _psnr(result.images[0], reference)
    print(f"SD 3.5 Medium (T5, 256 tokens): Easel vs StableDiffusion3Pipeline PSNR {psnr:.1f} dB")
    assert psnr >= 40
    default = sd3_app.txt2img(_request("tiny-sd35-medium"))
    assert _psnr(default.images[0], reference) < 38  # the setting matters
    # written only when not AUTOMATIC1111's, and pasted back as the setting
    from webui.core.infotext import parse_infotext
    from webui.pnginfo import infotext_to_fields

    assert "T5 tokens: 256" in result.infotexts[0] and "T5 tokens" not in default.infotexts[0]
    assert infotext_to_fields(parse_infotext(result.infotexts[0]))["override_settings"]["sd3_t5_tokens"] == "256"
    assert "sd3_t5_tokens" not in infotext_to_fields(parse_infotext(default.infotexts[0])).get("override_settings", {})
    from webui.pnginfo import override_item_fields, override_items

    assert "T5 tokens: 256" in override_items(parse_infotext(result.infotexts[0]))  # listed to keep or drop
    assert override_item_fields(["T5 tokens: 256"])["override_settings"] == {"sd3_t5_tokens": "256"}
    encoder = PromptEncoder(sd3_app.models.get("tiny-sd35-medium"), options={"sd3_t5_tokens": "256"})
    plain, weighted = encoder.encode(PLAIN), encoder.encode(PROMPT)
    assert plain.embeds.shape == (1, 77 + 256, 96)
    assert not torch.allclose(plain.embeds[:, 77:], weighted.embeds[:, 77:])  # T5 carries emphasis here
    embeds, *_ = pipe.encode_prompt(PLAIN, None, None, do_classifier_free_guidance=False)
    assert torch.allclose(plain.embeds, embeds, atol=1e-4)


def test_a_long_prompt_gets_t5_of_the_clip_chunks_length_as_automatic1111(sd3_app):
    """Two CLIP chunks: 154 T5 tokens (the prompt's tokens and </s>, padded); a prompt longer than that is cut,
    </s> and all (AUTOMATIC1111's Sd3T5.tokenize_line)."""
    from webui.core.conditioning import PromptEncoder

    model = sd3_app.models.get("tiny-sd35-medium")
    t5, tokenizer = model.text_encoders["text_encoder_3"], model.tokenizers["text_encoder_3"]
    encoder = PromptEncoder(model)
    padded = []
    for text in (" ".join(["a"] * 80), " ".join(["red cat"] * 200)):
        embeds = encoder.encode(text).embeds
        clip_tokens = embeds.shape[1] // 2
        assert clip_tokens % 77 == 0 and clip_tokens >= 154
        ids = (tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id])[:clip_tokens]
        ids += [tokenizer.pad_token_id] * (clip_tokens - len(ids))
        expected = t5(input_ids=torch.tensor([ids]))[0].float()
        assert torch.allclose(embeds[:, clip_tokens:], expected, atol=1e-5)
        padded.append(ids[-1] == tokenizer.pad_token_id)
    assert padded == [True, False]  # the first is padded, the second cut


def test_without_t5_it_runs_on_the_two_clips_as_the_pipeline_without_text_encoder_3(sd3_app, sd3_dir):
    result = sd3_app.txt2img(_request("tiny-sd3-no-t5"))
    reference, pipe = _reference(sd3_app, sd3_dir / "tiny-sd3-no-t5")
    assert pipe.text_encoder_3 is None
    psnr = _psnr(result.images[0], reference)
    print(f"SD3 Medium without T5: Easel vs StableDiffusion3Pipeline(text_encoder_3=None) PSNR {psnr:.1f} dB")
    assert psnr >= 40
    model = sd3_app.models.get("tiny-sd3-no-t5")
    assert sorted(model.text_encoders) == ["text_encoder", "text_encoder_2"]
    assert any("no text encoder 3" in note and "running without it" in note for note in model.notes)
    assert "T5: none" in result.infotexts[0] and "Model: tiny-sd3-no-t5" in result.infotexts[0]
    assert any("No T5 text encoder" in w for w in result.warnings)  # shown under the image in the UI


def test_folders_are_their_variants_and_ddpm_samplers_are_refused(sd3_app):
    from webui.core.request import ValidationError

    model = sd3_app.models.get("tiny-sd35-medium")
    assert model.architecture.label == "SD 3.5 Medium" and model.architecture.adapter.latent.channels == 16
    assert type(model.unet).__name__ == "SD3Transformer2DModel"
    assert sd3_app.models.get("tiny-sd3-no-t5").architecture.label == "SD 3 Medium"
    with pytest.raises(ValidationError, match="sampler_name"):
        sd3_app.txt2img(_request("tiny-sd3-no-t5", sampler_name="DDIM", steps=2))
    for sampler in ("DPM++ 2M",):
        image = sd3_app.txt2img(_request("tiny-sd3-no-t5", steps=3, sampler_name=sampler)).images[0]
        assert np.asarray(image).std() > 1


def test_the_schedule_is_the_pipelines():
    """Simple (what Automatic means for SD3) = FlowMatchEulerDiscreteScheduler's shift-3 timesteps."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from webui.core.schedules import simple

    for family in ("sd3", "sd35-medium", "sd35-large", "sd35-large-turbo"):
        adapter = families.get(family)
        assert adapter.automatic_schedule == "Simple"
        for steps in (4, 28, 7):
            schedule = adapter.noise_schedule(SCHEDULER).for_size(128, 128)
            reference = FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER)
            reference.set_timesteps(steps)
            assert torch.allclose(simple(schedule, steps), reference.sigmas, atol=1e-6), (family, steps)
            assert schedule.model_timestep(0.5) == 500.0


def test_img2img_and_a_lora_in_diffusers_format(sd3_app):
    from safetensors.torch import save_file

    start = sd3_app.txt2img(_request("tiny-sd35-medium", steps=3)).images[0]
    result = sd3_app.img2img(_request("tiny-sd35-medium", mode="img2img", steps=4, init_images=[start],
                                      denoising_strength=0.5, seed=9))
    assert result.images[0].size == (64, 64) and "Denoising strength: 0.5" in result.infotexts[0]
    # the random tiny VAE does not reconstruct pictures, so compare with its own round trip (strength ~0)
    def at(strength):
        return sd3_app.img2img(_request("tiny-sd35-medium", mode="img2img", steps=10, init_images=[start],
                                        denoising_strength=strength, seed=9)).images[0]

    kept, light, heavy = at(0.01), at(0.1), at(0.7)
    print(f"SD3 img2img PSNR to the VAE round trip: strength 0.1 {_psnr(light, kept):.1f} dB, "
          f"0.7 {_psnr(heavy, kept):.1f} dB")
    assert _psnr(light, kept) > _psnr(heavy, kept) + 2  # a light touch keeps the picture (16.3 vs 13.5 dB)

    generator = torch.Generator().manual_seed(3)
    tensors = {}
    for module, width, out in (("transformer_blocks.0.attn.to_q", 16, 16), ("transformer_blocks.1.ff.net.2", 64, 16)):
        tensors[f"transformer.{module}.lora_A.weight"] = torch.randn(4, width, generator=generator)
        tensors[f"transformer.{module}.lora_B.weight"] = torch.randn(out, 4, generator=generator)
    folder = sd3_app.paths.model_dir("lora")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "sd3-style.safetensors"))
    plain = sd3_app.txt2img(_request("tiny-sd3-no-t5", steps=2, cfg_scale=1.0))
    styled = sd3_app.txt2img(_request("tiny-sd3-no-t5", steps=2, cfg_scale=1.0, prompt=PLAIN + " <lora:sd3-style:1>"))
    assert not any("do not exist" in w for w in styled.warnings), styled.warnings
    assert _psnr(plain.images[0], styled.images[0]) < 60


def test_skip_layer_guidance_is_the_pipelines_and_round_trips_through_the_infotext(sd3_app, sd3_dir):
    from webui.core.infotext import parse_infotext
    from webui.pnginfo import infotext_to_fields

    slg = {"skip layer guidance": {"args": [True, 2.8, "0", 0.01, 0.5]}}
    result = sd3_app.txt2img(_request("tiny-sd35-medium", steps=6, alwayson_scripts=slg))
    reference, _ = _reference(sd3_app, sd3_dir / "tiny-sd35-medium", num_inference_steps=6, skip_guidance_layers=[0],
                              skip_layer_guidance_scale=2.8, skip_layer_guidance_start=0.01,
                              skip_layer_guidance_stop=0.5)
    psnr = _psnr(result.images[0], reference)
    print(f"SD 3.5 Medium with Skip Layer Guidance: Easel vs StableDiffusion3Pipeline PSNR {psnr:.1f} dB")
    assert psnr >= 40
    plain = sd3_app.txt2img(_request("tiny-sd35-medium", steps=6)).images[0]
    assert _psnr(plain, reference) < 38  # SLG changed the image
    text = result.infotexts[0]
    assert "SLG scale: 2.8, SLG layers: 0, SLG start: 0.01, SLG end: 0.5" in text
    fields = infotext_to_fields(parse_infotext(text))
    assert fields["slg_enabled"] is True and fields["slg_layers"] == "0" and fields["slg_end"] == 0.5
    from webui.core.request import ValidationError

    with pytest.raises(ValidationError, match="layers"):
        sd3_app.txt2img(_request("tiny-sd35-medium", alwayson_scripts={"skip layer guidance": {
            "args": [True, 2.8, "seven", 0.01, 0.2]}}))


def test_clip_reads_prompts_over_75_tokens_in_chunks_as_automatic1111(sd3_app):
    """Without T5 only CLIP carries words after the 75th token: they change the picture; the negative prompt's
    shorter CLIP part is padded with empty chunks in the CFG batch."""
    from webui.core.conditioning import PromptEncoder

    head = ", ".join(["a small red house"] * 16)  # 80 tokens: the first chunk is full
    encoder = PromptEncoder(sd3_app.models.get("tiny-sd3-no-t5"))
    long = encoder.encode(head + ", a blue dragon")
    # the (zero) T5 part as long as the CLIP part, as AUTOMATIC1111 without T5
    assert long.embeds.shape[1] == 2 * 77 + 2 * 77 and encoder.encode(head).embeds.shape[1] == 2 * 77 + 2 * 77
    assert encoder.encode(PLAIN).embeds.shape[1] == 77 + 77
    images = [np.asarray(sd3_app.txt2img(_request("tiny-sd3-no-t5", prompt=prompt, steps=2)).images[0])
              for prompt in (head + ", a blue dragon", head + ", a green frog")]
    assert _psnr(*images) < 60  # (identical while CLIP stopped at 75 tokens)


def test_batch_hires_inpaint_and_outpaint_run_with_sd3(sd3_app):
    """SD 3 in the other modes of every tab: image i of a batch is seed + i alone (T5 and both CLIPs batched);
    hires fix adds its pass; inpainting keeps what is outside the mask; outpainting widens the canvas."""
    from PIL import Image

    model = "tiny-sd35-medium"
    batch = sd3_app.txt2img(_request(model, steps=3, batch_size=2))
    alone = sd3_app.txt2img(_request(model, steps=3, seed=6))
    assert _psnr(batch.images[1], alone.images[0]) >= 40
    hires = sd3_app.txt2img(_request(model, steps=2, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2,
                                     denoising_strength=0.5))
    assert hires.images[0].size == (96, 96) and "Hires upscale: 1.5" in hires.infotexts[0]
    picture = Image.new("RGB", (64, 64), (200, 60, 40))
    box = Image.new("L", (64, 64), 0)
    box.paste(255, (16, 16, 48, 48))
    painted = sd3_app.img2img(_request(model, mode="img2img", steps=3, init_images=[picture], mask=box,
                                       denoising_strength=1.0, inpaint_full_res=False))
    out = np.asarray(painted.images[0], dtype=np.float64)
    assert np.abs(out[:8, :8] - (200, 60, 40)).max() <= 2 and np.abs(out[24:40, 24:40] - (200, 60, 40)).mean() > 10
    wider = sd3_app.img2img(_request(model, mode="img2img", steps=3, init_images=[picture], denoising_strength=1.0,
                                     outpaint_left=16, outpaint_right=16))
    assert wider.images[0].size == (96, 64)
    edge = np.asarray(wider.images[0], dtype=np.float64)
    assert np.abs(edge[:, 40:56] - (200, 60, 40)).max() <= 2 and np.abs(edge[:, :8] - (200, 60, 40)).mean() > 10
