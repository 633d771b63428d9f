"""VAE tiling: Easel's tiler (webui/core/vae_tiling.py, GroupNorm statistics shared over the whole image)
switched on by the `vae_tiling` setting, and the out-of-memory retry. Real tiny models; the out-of-memory
case is a decoder that refuses inputs larger than one tile, as a small GPU would.

The bar for "tiled equals untiled": the tiler computes every pixel from the same inputs as untiled, with
the same statistics, so only the order of fp32 sums differs (~1e-5 on the tiny VAE); after rounding to 8
bits a pixel may move by one level, no more, and PSNR stays above 50 dB. Diffusers' tiling, which
normalises each tile alone, gives 10-20 dB on these tiny VAEs, so each bar fails without the tiler."""
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from webui.core import latents, vae_tiling
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


def same_picture(a: np.ndarray, b: np.ndarray) -> bool:
    return np.abs(a.astype(int) - b.astype(int)).max() <= 1 and psnr(a, b) >= 50


class Windows:
    """Counts the inputs a VAE's first conv receives and the largest one (forward pre-hooks: observation only)."""

    def __init__(self, module: torch.nn.Module):
        self.calls, self.largest = 0, (0, 0)
        module.register_forward_pre_hook(self.note)

    def note(self, _module, inputs) -> None:
        self.calls += 1
        self.largest = tuple(max(a, b) for a, b in zip(self.largest, inputs[0].shape[-2:]))


def test_modes_decide_when_to_tile_and_the_tiled_picture_is_the_untiled_one(app):
    model = app.models.get("tiny-sd1.safetensors")
    assert vae_tiling.supported(model.vae) and latents.tile_size(model.vae) == 64  # the tiny VAE's sample_size
    decoder = Windows(model.vae.decoder.conv_in)
    z = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(1))  # 192 px: three tiles a side
    with latents.vae_tiling("Never"):
        plain = np.asarray(latents.decode(model, z)[0])
    with latents.vae_tiling("Automatic"):  # 192 px is far below the automatic threshold
        automatic = np.asarray(latents.decode(model, z)[0])
    assert decoder.calls == 2 and decoder.largest == (24, 24) and np.array_equal(plain, automatic)
    decoder = Windows(model.vae.decoder.conv_in)
    with latents.vae_tiling("Always"):
        tiled = np.asarray(latents.decode(model, z)[0])
    assert decoder.calls == 9 and decoder.largest == (10, 10)  # 3x3 tiles of 8 latents, plus a 1-latent halo
    assert same_picture(plain, tiled)
    assert model.vae.use_tiling is False


def test_tiled_encode_gives_the_untiled_latents_in_tiles(app):
    model = app.models.get("tiny-sd1.safetensors")
    encoder = Windows(model.vae.encoder.conv_in)
    y, x = np.mgrid[0:192, 0:160]
    picture = Image.fromarray(np.stack([x * 255 // 160, y * 255 // 192, (x // 16 + y // 16) % 2 * 255], -1)
                              .astype(np.uint8))
    with latents.vae_tiling("Never"):
        plain = latents.encode(model, [picture])
    assert encoder.calls == 1 and encoder.largest == (192, 160)
    encoder = Windows(model.vae.encoder.conv_in)
    with latents.vae_tiling("Always"):
        tiled = latents.encode(model, [picture])
    assert encoder.calls == 9 and encoder.largest == (66, 66)  # 64 px tiles with a 1 px halo
    assert tiled.shape == plain.shape == (1, 4, 24, 20)
    assert torch.allclose(tiled, plain, atol=1e-4, rtol=0)


def test_out_of_memory_is_retried_in_tiles_unless_tiling_is_off(app):
    model = app.models.get("tiny-sd1.safetensors")
    tile = latents.tile_size(model.vae) // 8

    def small_gpu(_module, inputs):
        if inputs[0].shape[-1] > tile + 2:  # one tile and its halo fit, a whole 192 px picture does not
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    hook = model.vae.decoder.conv_in.register_forward_pre_hook(small_gpu)
    try:
        z = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(2))
        with latents.vae_tiling("Automatic"):
            [image] = latents.decode(model, z)
        assert image.size == (192, 192)
        with latents.vae_tiling("Never"), pytest.raises(torch.OutOfMemoryError):
            latents.decode(model, z)
    finally:
        hook.remove()
    with latents.vae_tiling("Never"):
        assert same_picture(np.asarray(image), np.asarray(latents.decode(model, z)[0]))


def test_the_setting_reaches_the_decode_of_a_generation(app):
    model = app.models.get("tiny-sd1.safetensors")
    decoder = Windows(model.vae.decoder.conv_in)
    base = dict(prompt="a wide field", steps=2, width=128, height=128, seed=3, sampler_name="Euler",
                checkpoint="tiny-sd1", save_images=False)
    untiled = np.asarray(app.txt2img(GenerationRequest(**base)).images[0])
    assert decoder.calls == 1
    tiled = np.asarray(app.txt2img(GenerationRequest(**base, override_settings={"vae_tiling": "Always"})).images[0])
    assert decoder.calls == 1 + 4 and same_picture(untiled, tiled)


def test_a_16_channel_vae_without_quant_convs_tiles_both_ways():
    """The layout of SD3's and Flux's VAE (16 latent channels, no quant_conv/post_quant_conv), tiny."""
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(16, 16, 32, 32), down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, latent_channels=16,
                        norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False).eval()
    assert vae_tiling.supported(vae)
    decoder, encoder = Windows(vae.decoder.conv_in), Windows(vae.encoder.conv_in)
    every_conv = Windows(vae)  # every Conv2d of the VAE, at every resolution
    for conv in [m for m in vae.modules() if isinstance(m, torch.nn.Conv2d)]:
        conv.register_forward_pre_hook(every_conv.note)
    pixels = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        moments = vae.encoder(pixels)
        every_conv.largest = (0, 0)  # the untiled passes saw (128, 128); now only the tiled ones count
        tiled_moments = vae_tiling.encode(vae, pixels, tile=64)
        z = moments[:, :16]
        tiled_back = vae_tiling.decode(vae, z, tile=64)
        largest = every_conv.largest
        pixels_back = vae.decoder(z)
    assert encoder.calls == 1 + 4 and decoder.calls == 1 + 4  # 2x2 tiles each way
    # no conv at any resolution saw more than a 64 px tile and its halo: here 2 px on the inner side (1 for
    # the 3x3 conv, 1 more after a 2x upsampling, whose low-resolution window starts on a whole pixel)
    assert largest == (66, 66)
    assert tiled_moments.shape == moments.shape == (1, 32, 16, 16)
    assert torch.allclose(tiled_moments, moments, atol=1e-4, rtol=0)
    assert torch.allclose(tiled_back, pixels_back, atol=1e-4, rtol=0)


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


def test_chosen_tile_sizes_change_the_windows_not_the_picture(app):
    """vae_tile_decode / vae_tile_encode (image pixels) set the tiles each way; below 64 px they count as 64."""
    model = app.models.get("tiny-sd1.safetensors")
    z = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(4))
    with latents.vae_tiling("Never"):
        plain = np.asarray(latents.decode(model, z)[0])
    decoder = Windows(model.vae.decoder.conv_in)
    with latents.vae_tiling("Always", decode_tile=96):
        tiled = np.asarray(latents.decode(model, z)[0])
    assert decoder.calls == 4 and decoder.largest == (13, 13)  # 2x2 tiles of 12 latents, a 1-latent halo inward
    assert same_picture(plain, tiled)
    decoder = Windows(model.vae.decoder.conv_in)
    with latents.vae_tiling("Always", decode_tile=8):
        latents.decode(model, z)
    assert decoder.calls == 9  # clamped to 64 px: the tiny VAE's own tiles
    picture = Image.fromarray((np.asarray(tiled).astype(int) * 3 % 256).astype(np.uint8))
    with latents.vae_tiling("Never"):
        untiled = latents.encode(model, [picture])
    encoder = Windows(model.vae.encoder.conv_in)
    with latents.vae_tiling("Always", encode_tile=128, decode_tile=64):
        encoded = latents.encode(model, [picture])
    assert encoder.calls == 4 and encoder.largest == (129, 129)  # 2x2 tiles of 128 px (one edge: a 1 px halo)
    assert torch.allclose(encoded, untiled, atol=1e-4, rtol=0)


def test_the_tile_size_settings_reach_a_generation(app):
    model = app.models.get("tiny-sd1.safetensors")
    decoder = Windows(model.vae.decoder.conv_in)
    request = GenerationRequest(prompt="a wide field", steps=2, width=128, height=128, seed=3, sampler_name="Euler",
                                checkpoint="tiny-sd1", save_images=False,
                                override_settings={"vae_tiling": "Always", "vae_tile_decode": 128})
    app.txt2img(request)
    assert decoder.calls == 1 and decoder.largest == (16, 16)  # one 128 px tile: the whole latent, no halo
