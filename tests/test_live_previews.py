"""Live previews: TAESD (a tiny autoencoder from models/VAE-approx) when chosen and present, else
the cheap colour matrix. A real tiny AutoencoderTiny written in diffusers' layout, real jobs."""
import numpy as np
import pytest
import torch

from webui.core.preview import ApproxPreview, TinyVaePreview
from webui.core.request import GenerationRequest

from conftest import make_easel


def write_tiny_taesd(folder, seed: int = 0):
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    model = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)
    model.save_pretrained(str(folder), safe_serialization=True)
    return model


@pytest.fixture
def app(tmp_path, tiny_ckpt_dir):
    app = make_easel(tmp_path, tiny_ckpt_dir)
    yield app
    app.close()


def run(app, checkpoint="tiny-sd1", **overrides):
    job = app.submit(GenerationRequest(prompt="a harbour at dusk", steps=3, width=64, height=64, seed=2,
                                       sampler_name="Euler", checkpoint=checkpoint, save_images=False,
                                       override_settings=overrides))
    job.wait(60)
    assert job.error is None, job.error
    return job


def test_taesd_previews_decode_the_latent_at_full_size(app):
    reference = write_tiny_taesd(app.paths.model_dir("vae_approx") / "taesd").eval()
    job = run(app)
    previewer = job.progress.previewer
    assert isinstance(previewer, TinyVaePreview)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    image = previewer(latents)
    assert image.size == (64, 64)  # the tiny decoder upsamples 8x, like the real VAE
    with torch.no_grad():
        expected = reference.decode(latents).sample[0]
    expected = ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.abs(np.asarray(image).astype(int) - expected.astype(int)).max() <= 1
    assert [e.kind for e in app.models.store.entries()].count("tiny_vae") == 1
    assert isinstance(run(app, live_preview_method="Approx cheap").progress.previewer, ApproxPreview)


def test_without_the_files_previews_fall_back_to_the_colour_matrix(app):
    job = run(app)
    assert isinstance(job.progress.previewer, ApproxPreview)
    assert job.progress.previewer.rgb == app.models.get("tiny-sd1.safetensors").architecture.adapter.latent.preview_rgb
    write_tiny_taesd(app.paths.model_dir("vae_approx") / "taesd")  # SD's, not SDXL's: SDXL still falls back
    assert isinstance(run(app, "tiny-sdxl").progress.previewer, ApproxPreview)


def test_a_broken_tiny_autoencoder_never_fails_the_job(app):
    folder = app.paths.model_dir("vae_approx") / "taesd"
    write_tiny_taesd(folder)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    assert isinstance(run(app).progress.previewer, ApproxPreview)
