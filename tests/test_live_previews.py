"""Live previews: TAESD (a tiny autoencoder from models/VAE-approx) when chosen and present, else
the cheap colour matrix. A real tiny AutoencoderTiny written in diffusers' layout, real jobs."""
import numpy as np
import pytest
import torch

from webui.core.preview import ApproxPreview, TinyVaePreview, watched_image
from webui.core.request import GenerationRequest
from webui.extensions.api import hookimpl

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


def run(app, checkpoint="tiny-sd1", steps=3, **overrides):
    job = app.submit(GenerationRequest(prompt="a harbour at dusk", steps=steps, width=64, height=64, seed=2,
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


# ---- every family's tiny autoencoder, the full VAE, and where previews are decoded -------------------------------

class Watcher:
    """A poller inside the job: after each step (on the worker thread, after its preview work) it looks at the
    preview the way the page does, and records each new picture with the latents it shows."""

    def __init__(self, app):
        self.app = app
        self.pictures: list[tuple[int, torch.Tensor, object]] = []  # (step, latents, image)
        self.unwatched_images = 0

    @hookimpl
    def step_end(self, step):
        progress = self.app.queue.current.progress
        image_step, image = watched_image(progress)
        if image is not None and image_step == progress.step and progress.preview_latents is not None:
            self.pictures.append((image_step, progress.preview_latents[:1].clone(), image))


@pytest.fixture
def watcher(app):
    watcher = Watcher(app)
    app.engine.hooks.register(watcher, "preview-watcher")
    yield watcher
    app.engine.hooks.unregister("preview-watcher")


def write_tiny_ae(folder, channels: int, seed: int = 0):
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    model = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                            latent_channels=channels)
    model.save_pretrained(str(folder), safe_serialization=True)
    return model.eval()


def as_pixels(decoded: torch.Tensor) -> np.ndarray:
    return ((decoded[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy().astype(int)


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory):
    from webui.model_manager.tiny_flux import write_flux_folder
    from webui.model_manager.tiny_sd3 import write_sd3_folder

    folder = tmp_path_factory.mktemp("dits")
    write_sd3_folder(folder / "tiny-sd35-medium", "sd35-medium", seed=1)
    write_flux_folder(folder / "tiny-flux-schnell", "schnell", seed=2)
    return folder


@pytest.fixture
def dit_app(tmp_path, dit_dir):
    app = make_easel(tmp_path, dit_dir)
    watcher = Watcher(app)
    app.engine.hooks.register(watcher, "preview-watcher")
    app.watcher = watcher
    yield app
    app.close()


def run_dit(app, checkpoint: str, **overrides):
    job = app.submit(GenerationRequest(prompt="a harbour at dusk", steps=4, width=64, height=64, seed=2,
                                       sampler_name="Euler", cfg_scale=1.0, checkpoint=checkpoint,
                                       save_images=False, override_settings=overrides))
    assert job.wait(120) and job.error is None, job.error
    return job


@pytest.mark.parametrize("checkpoint, name", [("tiny-sd35-medium", "taesd3"), ("tiny-flux-schnell", "taef1")])
def test_sd3_and_flux_previews_decode_with_their_tiny_autoencoder_at_the_final_size(dit_app, checkpoint, name):
    reference = write_tiny_ae(dit_app.paths.model_dir("vae_approx") / name, channels=16)
    job = run_dit(dit_app, checkpoint, live_preview_refresh_period=100)
    assert isinstance(job.progress.previewer, TinyVaePreview)
    assert dit_app.watcher.pictures, "the worker decoded a preview while the job was watched"
    for _, latents, image in dit_app.watcher.pictures:
        assert latents.shape == (1, 16, 8, 8)  # Flux's latents are a grid while sampling (packed only in its call)
        assert image.size == job.result.images[0].size == (64, 64)
        with torch.no_grad():
            expected = as_pixels(reference.decode(latents).sample)
        assert np.abs(np.asarray(image).astype(int) - expected).max() <= 1


def test_sd3_and_flux_fall_back_to_their_colour_fit_logged_once(dit_app, caplog):
    from webui.families.flux import FLUX_LATENT
    from webui.families.zimage import ZIMAGE_LATENT

    assert ZIMAGE_LATENT.tiny_vae == "taef1" and ZIMAGE_LATENT.preview_rgb == FLUX_LATENT.preview_rgb
    with caplog.at_level("WARNING", logger="webui.model_manager.tiny_vae"):
        jobs = [run_dit(dit_app, "tiny-sd35-medium") for _ in range(2)]
    previewer = jobs[0].progress.previewer
    assert isinstance(previewer, ApproxPreview) and len(previewer.rgb) == 16  # a 16 x 3 fit, not the grey mean
    said = [r.getMessage() for r in caplog.records if "taesd3" in r.getMessage()]
    assert len(said) == 1 and "cheap approximation" in said[0]
    _, _, image = dit_app.watcher.pictures[0]
    assert image.size == (8, 8) and np.asarray(image).std() > 0  # latent size, as A1111's Approx cheap


def test_full_previews_decode_with_the_checkpoints_vae(app, watcher):
    from webui.core import latents as latents_io
    from webui.core.preview import FullVaePreview

    job = run(app, live_preview_method="Full", live_preview_refresh_period=100)
    assert isinstance(job.progress.previewer, FullVaePreview)
    model = app.models.get("tiny-sd1.safetensors")
    assert watcher.pictures
    for _, latents, image in watcher.pictures:
        assert image.size == (64, 64)
        assert np.array_equal(np.asarray(image), np.asarray(latents_io.decode(model, latents)[0]))


def test_previews_are_decoded_on_the_worker_only_while_watched_and_once_per_period(app, watcher):
    write_tiny_taesd(app.paths.model_dir("vae_approx") / "taesd")
    app.engine.hooks.unregister("preview-watcher")
    seen = []

    class Silent:  # looks without watching: no poller asked for a picture
        @hookimpl
        def step_end(self, step):
            seen.append(app.queue.current.progress.preview_image)

    app.engine.hooks.register(Silent(), "silent")
    try:
        run(app)
    finally:
        app.engine.hooks.unregister("silent")
    assert seen == [None, None, None]  # previews on, nobody watching: nothing decoded
    app.engine.hooks.register(watcher, "preview-watcher")
    run(app, live_preview_refresh_period=10_000, steps=4)
    # watched from step 1 on: step 2 decodes, steps 3 and 4 fall inside the 10 s period
    assert [step for step, _, _ in watcher.pictures] == [2]


def test_every_family_has_a_tiny_autoencoder_the_starter_list_offers_and_a_colour_fit():
    from webui import families
    from webui.model_manager.starter import STARTERS

    offered = {f.target.split("/")[0] for item in STARTERS if item.kind == "vae_approx" for f in item.files
               if f.target.endswith("/config.json")}
    for family in families.all_families():
        latent = family.latent
        assert latent.tiny_vae in offered, family.name
        assert len(latent.preview_rgb) == latent.channels, family.name
    assert offered >= {"taesd", "taesdxl", "taesd3", "taef1"}
