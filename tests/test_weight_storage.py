"""fp8 weight storage for the denoiser: diffusers' layerwise casting, chosen by a setting.

Real tiny checkpoints on the CPU: the UNet's stored bytes shrink, the image stays close to the
full-precision one, the infotext says how the weights were stored, and changing the setting
reloads the checkpoint."""
import numpy as np
import pytest
import torch

from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest
from webui.model_manager.store import measure

from conftest import make_easel


@pytest.fixture
def app(tmp_path, tiny_ckpt_dir):
    app = make_easel(tmp_path, tiny_ckpt_dir)
    yield app
    app.close()


def generate(app, checkpoint="tiny-sd1"):
    return app.txt2img(GenerationRequest(prompt="a lighthouse", steps=3, width=64, height=64, seed=9,
                                         sampler_name="Euler", checkpoint=checkpoint, save_images=False))


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@pytest.mark.parametrize("storage", ["fp8_e4m3fn", "fp8_e5m2"])
def test_fp8_storage_shrinks_the_unet_keeps_the_picture_and_says_so(app, storage):
    full = generate(app)
    full_bytes = measure(app.models.get("tiny-sd1.safetensors").unet).ram
    app.settings.update({"weight_storage": storage})
    stored = generate(app)
    model = app.models.get("tiny-sd1.safetensors")
    assert model.weight_storage == storage
    linear = model.unet.time_embedding.linear_1
    assert linear.weight.dtype == getattr(torch, storage.replace("fp8", "float8"))
    assert measure(model.unet).ram < 0.4 * full_bytes  # fp8 against the CPU's fp32: a quarter, plus the norms
    assert psnr(full.images[0], stored.images[0]) > 20
    assert parse_infotext(stored.infotexts[0]).params["Weights"] == storage
    assert "Weights" not in parse_infotext(full.infotexts[0]).params


def test_changing_the_setting_back_reloads_full_precision(app):
    full = generate(app)
    app.settings.update({"weight_storage": "fp8_e4m3fn"})
    generate(app)
    app.settings.update({"weight_storage": "Automatic"})
    again = generate(app)
    assert app.models.get("tiny-sd1.safetensors").weight_storage == "Automatic"
    assert np.array_equal(np.asarray(full.images[0]), np.asarray(again.images[0]))


def test_sdxl_with_fp8_storage_generates(app):
    full = generate(app, "tiny-sdxl")
    app.settings.update({"weight_storage": "fp8_e4m3fn"})
    assert psnr(full.images[0], generate(app, "tiny-sdxl").images[0]) > 20


def test_loras_apply_to_fp8_weights_and_restore_them(app):
    from webui.features.lora_writer import write_lora

    write_lora(app.paths.model_dir("lora") / "style.safetensors", app.models.get("tiny-sd1.safetensors"), seed=1,
               alpha=2.0)
    app.settings.update({"weight_storage": "fp8_e4m3fn"})
    plain = generate(app)
    weights = {k: v.clone() for k, v in app.models.get("tiny-sd1.safetensors").unet.state_dict().items()}
    with_lora = app.txt2img(GenerationRequest(prompt="a lighthouse <lora:style:1>", steps=3, width=64, height=64,
                                              seed=9, sampler_name="Euler", checkpoint="tiny-sd1", save_images=False))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(with_lora.images[0]))
    again = generate(app)
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(again.images[0]))
    after = app.models.get("tiny-sd1.safetensors").unet.state_dict()
    assert all(torch.equal(after[k].float(), v.float()) for k, v in weights.items())


def test_fp8_storage_covers_the_text_encoders(app):
    """fp8 for any model: the text encoders' Linear weights are stored in fp8 too (set while each weight
    is read), a quarter of the CPU's fp32 bytes, and the SDXL picture stays close."""
    def linear_bytes(module):
        return sum(m.weight.numel() * m.weight.element_size() for m in module.modules()
                   if isinstance(m, torch.nn.Linear))

    full = generate(app, "tiny-sdxl")
    before = {n: linear_bytes(m) for n, m in app.models.get("tiny-sdxl.safetensors").text_encoders.items()}
    app.settings.update({"weight_storage": "fp8_e4m3fn"})
    stored = generate(app, "tiny-sdxl")
    model = app.models.get("tiny-sdxl.safetensors")
    assert set(model.text_encoders) == {"text_encoder", "text_encoder_2"}
    for name, encoder in model.text_encoders.items():
        linears = [m for m in encoder.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(m.weight.dtype == torch.float8_e4m3fn for m in linears), name
        assert linear_bytes(encoder) <= 0.25 * before[name]
    assert psnr(full.images[0], stored.images[0]) > 20


def test_stored_token_tables_cast_only_the_rows_they_look_up(app):
    """A text encoder's token table stays in fp8 and each call casts only the looked-up rows
    (model_manager/stored_embeddings.py): diffusers' hook cast the whole vocabulary per encode, which set
    full SDXL's generation peak. The rows are the same numbers as from the whole table cast up."""
    app.settings.update({"weight_storage": "fp8_e4m3fn"})
    generate(app, "tiny-sdxl")
    model = app.models.get("tiny-sdxl.safetensors")
    ids = torch.tensor([[49406, 320, 1929, 49407]])
    for name, encoder in model.text_encoders.items():
        table = encoder.get_input_embeddings()
        assert table.weight.dtype == torch.float8_e4m3fn, name
        assert getattr(table, "_diffusers_hook", None) is None, name  # no whole-table cast hook
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            rows = table(ids)
        assert rows.dtype == torch.float32
        assert torch.equal(rows, torch.nn.functional.embedding(ids, table.weight.float())), name
        largest = max((event.cpu_memory_usage for event in prof.events()), default=0)
        assert largest < table.weight.numel(), (name, largest)  # under the fp8 table's own bytes


def test_the_vae_keeps_16_bit_weights_under_a_storage_choice_and_computes_in_fp32(app, tmp_path):
    """On the CPU the VAE computes in fp32; under fp8 storage its weights are kept in fp16 (never fp8) and
    cast per layer (loader.vae_storage): half its memory. Decode and encode go on in fp32 and give the
    fp32 VAE's picture, tiled or not; a VAE file swaps into the stored VAE and "None" restores it bit for bit."""
    from safetensors.torch import save_file

    from webui.core import latents as latents_io
    from webui.model_manager.architecture import Architecture
    from webui.model_manager.loader import file_state_dict
    from webui.model_manager.tiny import build_tiny_components
    from webui.model_manager.vae import apply_vae

    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    full = app.models.get("tiny-sd1.safetensors")
    full_bytes = measure(full.vae).ram
    full_picture = latents_io.decode(full, latents)[0]
    full_encoded = latents_io.encode(full, [full_picture])
    app.settings.update({"weight_storage": "fp8_e4m3fn"})
    generate(app)
    model = app.models.get("tiny-sd1.safetensors")
    assert model.vae.decoder.conv_in.weight.dtype == torch.float16
    assert model.vae.decoder.conv_norm_out.weight.dtype == torch.float32  # norms stay in the compute type
    assert measure(model.vae).ram < 0.6 * full_bytes
    assert any("the VAE's as float16" in note for note in model.notes), model.notes
    picture = latents_io.decode(model, latents)[0]
    assert psnr(full_picture, picture) > 40
    encoded = latents_io.encode(model, [full_picture])
    assert encoded.dtype == torch.float32
    assert torch.allclose(encoded, full_encoded, atol=0.05), (encoded - full_encoded).abs().max()
    wide = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))  # 128 px: 2x2 tiles of 64
    with latents_io.vae_tiling("Never"):
        untiled = latents_io.decode(model, wide)[0]
    with latents_io.vae_tiling("Always"):  # the tiler calls the layers one by one: each casts its own weights
        assert psnr(untiled, latents_io.decode(model, wide)[0]) > 40

    _, modules = build_tiny_components(Architecture("sd1"), seed=99)
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in file_state_dict(modules["vae"]).items()}, str(other))
    apply_vae(model, other)
    assert model.vae.decoder.conv_in.weight.dtype == torch.float16
    assert psnr(picture, latents_io.decode(model, latents)[0]) < 30
    apply_vae(model, None)
    assert np.array_equal(np.asarray(picture), np.asarray(latents_io.decode(model, latents)[0]))


def test_a_checkpoints_own_weight_storage_wins_and_is_remembered(tmp_path, tiny_ckpt_dir):
    """Per checkpoint: fp8 chosen for SD 1.5 stores it in fp8 while SDXL follows the setting; "fp16" keeps one
    checkpoint out of a global fp8 setting; the choice outlives the app; --weights is the fallback of both."""
    app = make_easel(tmp_path, tiny_ckpt_dir, weights="fp8")
    try:
        assert app.models.weight_storage_source("tiny-sd1.safetensors") == ("fp8_e4m3fn", "--weights")
        app.models.set_weight_storage("tiny-sd1.safetensors", "fp8_e5m2")
        stored = generate(app)
        assert app.models.get("tiny-sd1.safetensors").weight_storage == "fp8_e5m2"
        assert parse_infotext(stored.infotexts[0]).params["Weights"] == "fp8_e5m2"
        assert app.models.get("tiny-sdxl.safetensors").weight_storage == "fp8_e4m3fn"  # the flag's choice
        app.settings.update({"weight_storage": "fp8_e4m3fn"})
        app.models.set_weight_storage("tiny-sdxl.safetensors", "fp16")
        sdxl = app.models.get("tiny-sdxl.safetensors")
        assert sdxl.weight_storage == "fp16" and sdxl.unet.time_embedding.linear_1.weight.dtype == torch.float16
        assert app.models.weight_storage_source("tiny-sd1.safetensors") == ("fp8_e5m2", "checkpoint")
        with pytest.raises(ValueError, match="weight_storage: 'fp4'"):
            app.models.set_weight_storage("tiny-sd1.safetensors", "fp4")
    finally:
        app.close()
    again = make_easel(tmp_path, tiny_ckpt_dir)  # a restart: the choices were saved, the flag is gone
    try:
        assert again.models.weight_storage_source("tiny-sd1.safetensors") == ("fp8_e5m2", "checkpoint")
        assert again.models.weight_storage("tiny-sdxl.safetensors") == "fp16"
        again.models.set_weight_storage("tiny-sd1.safetensors", "Automatic")  # forgets: the setting again
        assert again.models.weight_storage_source("tiny-sd1.safetensors") == ("fp8_e4m3fn", "setting weight_storage")
        assert again.models.storage_choices.all() == {"tiny-sdxl.safetensors": "fp16"}
    finally:
        again.close()
