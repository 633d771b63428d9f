"""VAE tiling: diffusers' tiled encode/decode switched on by the `vae_tiling` setting, and the
out-of-memory retry. Real tiny models; the out-of-memory case is a decoder that refuses inputs
larger than one tile, as a small GPU would."""
import numpy as np
import pytest
import torch
from PIL import Image

from webui.core import latents
from webui.core.request import GenerationRequest

from conftest import make_easel


@pytest.fixture
def app(tmp_path, tiny_ckpt_dir):
    app = make_easel(tmp_path, tiny_ckpt_dir)
    yield app
    app.close()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


class Counting:
    """Counts the VAE's tiled calls (observation only: the real methods run)."""

    def __init__(self, vae):
        self.decodes = self.encodes = 0
        real_decode, real_encode = vae.tiled_decode, vae._tiled_encode

        def tiled_decode(*args, **kwargs):
            self.decodes += 1
            return real_decode(*args, **kwargs)

        def tiled_encode(*args, **kwargs):
            self.encodes += 1
            return real_encode(*args, **kwargs)

        vae.tiled_decode, vae._tiled_encode = tiled_decode, tiled_encode


def test_modes_decide_when_to_tile_and_the_vae_is_left_as_it_was(app):
    model = app.models.get("tiny-sd1.safetensors")
    counting = Counting(model.vae)
    z = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(1))  # 192 px: three tiles a side
    with latents.vae_tiling("Never"):
        plain = np.asarray(latents.decode(model, z)[0])
    with latents.vae_tiling("Automatic"):  # 192 px is far below the automatic threshold
        automatic = np.asarray(latents.decode(model, z)[0])
    assert counting.decodes == 0 and np.array_equal(plain, automatic)
    with latents.vae_tiling("Always"):
        tiled = np.asarray(latents.decode(model, z)[0])
        encoded = latents.encode(model, [Image.fromarray(tiled)])
    assert counting.decodes == 1 and counting.encodes == 1 and encoded.shape == (1, 4, 24, 24)
    assert not np.array_equal(plain, tiled) and psnr(plain, tiled) > 10  # blended tiles, same picture
    assert model.vae.use_tiling is False


def test_out_of_memory_is_retried_in_tiles_unless_tiling_is_off(app):
    model = app.models.get("tiny-sd1.safetensors")
    tile = model.vae.tile_latent_min_size
    real_forward = model.vae.decoder.forward

    def small_gpu(z, *args, **kwargs):
        if z.shape[-1] > tile:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real_forward(z, *args, **kwargs)

    model.vae.decoder.forward = small_gpu
    try:
        z = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(2))
        with latents.vae_tiling("Automatic"):
            [image] = latents.decode(model, z)
        assert image.size == (192, 192)
        with latents.vae_tiling("Never"), pytest.raises(torch.OutOfMemoryError):
            latents.decode(model, z)
    finally:
        model.vae.decoder.forward = real_forward
    assert model.vae.use_tiling is False


def test_the_setting_reaches_the_decode_of_a_generation(app):
    model = app.models.get("tiny-sd1.safetensors")
    counting = Counting(model.vae)
    base = dict(prompt="a wide field", steps=2, width=128, height=128, seed=3, sampler_name="Euler",
                checkpoint="tiny-sd1", save_images=False)
    untiled = np.asarray(app.txt2img(GenerationRequest(**base)).images[0])
    assert counting.decodes == 0
    tiled = np.asarray(app.txt2img(GenerationRequest(**base, override_settings={"vae_tiling": "Always"})).images[0])
    assert counting.decodes == 1 and psnr(untiled, tiled) > 10 and not np.array_equal(untiled, tiled)


def test_nans_in_a_half_precision_decode_retry_in_fp32_once_per_model(tmp_path, tiny_ckpt_dir, caplog):
    """A real tiny VAE in fp16 whose decoder gives NaN only in half precision (a forward hook, as SDXL's fp16 VAE
    overflows on GPUs): the images come out whole, the VAE is wholly fp32 afterwards, and one log line says so."""
    app = make_easel(tmp_path, tiny_ckpt_dir, precision="fp16")
    try:
        model = app.models.get("tiny-sd1.safetensors")
        assert next(model.vae.parameters()).dtype == torch.float16
        half_calls = []

        def nan_in_half(module, args, output):
            if output.dtype == torch.float16:
                half_calls.append(output.shape)
                return torch.full_like(output, float("nan"))
            return None

        hook = model.vae.decoder.register_forward_hook(nan_in_half)
        try:
            with caplog.at_level("WARNING", logger="webui.core.latents"):
                first = app.txt2img(GenerationRequest(prompt="a red barn", steps=2, width=64, height=64, seed=5,
                                                      sampler_name="Euler", batch_size=2, checkpoint="tiny-sd1",
                                                      save_images=False))
                again = app.txt2img(GenerationRequest(prompt="a red barn", steps=2, width=64, height=64, seed=6,
                                                      sampler_name="Euler", checkpoint="tiny-sd1", save_images=False))
        finally:
            hook.remove()
        for image in [*first.images, *again.images]:
            assert np.asarray(image).std() > 5  # a picture, not the black frame NaNs would give
        assert len(half_calls) == 1  # only the first image tried fp16; the rest went straight to fp32
        assert model.vae_upcast and {p.dtype for p in model.vae.parameters()} == {torch.float32}
        said = [r.getMessage() for r in caplog.records if "NaN" in r.getMessage()]
        assert len(said) == 1 and "tiny-sd1" in said[0] and "fp32" in said[0]
        assert latents.encode(model, first.images[:1]).dtype == torch.float32  # encodes follow, without a new line
        assert len([r for r in caplog.records if "NaN" in r.getMessage()]) == 1
    finally:
        app.close()
