"""Upscalers: names, exact sizes, real spandrel models from tiny files, tiling, pickles, errors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from webui.core.jobs import Interrupted
from webui.features.upscalers import UnknownUpscalerError, UpscaleError, UpscalerLoadError
from webui.features.upscalers.loading import load_model, read_state_dict
from webui.features.upscalers.tiling import axis_weights, tile_starts
from webui.features.upscalers.tiny import esrgan_state_dict, write_tiny_compact, write_tiny_esrgan

from upscale_helpers import make_upscalers, smooth_image, tiny_models

# Tiled vs untiled, 64x64 -> 256x256 with 32px tiles and 16px overlap, in 8-bit levels:
TILED_MAX_LEVELS = 2      # no pixel differs by more than 2 of 255
TILED_MEAN_LEVELS = 0.05  # on average under 1/20 of a level


@pytest.fixture
def models(tmp_path):
    return tiny_models(tmp_path / "models")


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int32)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_spandrel_recognises_hand_written_esrgan_layout(tmp_path, scale):
    path = write_tiny_esrgan(tmp_path / f"{scale}x.safetensors", scale=scale, features=8, blocks=2)
    model = load_model(path, torch.device("cpu"), torch.float32, allow_pickle=False)
    assert model.architecture == "ESRGAN"
    assert model.scale == scale
    assert {"8nf", "2nb"} <= set(model.descriptor.tags)
    assert model.purpose == ("SR" if scale > 1 else "Restoration")


def test_spandrel_recognises_compact_layout(tmp_path):
    path = write_tiny_compact(tmp_path / "c.safetensors", scale=4, features=8, convs=3)
    model = load_model(path, torch.device("cpu"), torch.float32, allow_pickle=False)
    assert model.architecture == "Compact"
    assert model.scale == 4
    assert {"8nf", "3nc"} <= set(model.descriptor.tags)


def test_list_upscalers_in_a1111_order_and_names(tmp_path, models):
    write_tiny_compact(models / "RealESRGAN" / "realesr-general-x4v3.safetensors", scale=4)
    write_tiny_esrgan(models / "RealESRGAN" / "RealESRGAN_x4plus.safetensors", scale=4)
    write_tiny_esrgan(models / "DAT" / "4x-Tiny.safetensors", scale=4)  # same stem as one in ESRGAN/
    names = make_upscalers(models).list_upscalers()
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert names[3:] == sorted(names[3:], key=str.lower)
    assert {"4x-Tiny", "2x-TinyCompact", "R-ESRGAN 4x+", "R-ESRGAN General 4xV3"} <= set(names)
    assert "4x-Tiny (DAT/4x-Tiny.safetensors)" in names  # a clash stays reachable and unambiguous


def test_model_upscale_x4_runs_the_real_network(models):
    upscalers = make_upscalers(models)
    image = smooth_image(64, 64)
    result = upscalers.upscale(image, "4x-Tiny", scale=4, tile=0)
    assert result.size == (256, 256) and result.mode == "RGB"

    # the same network run by hand on the same tensor gives the same pixels
    model = upscalers.load("4x-Tiny")
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255
    expected = (model.descriptor(tensor)[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(result), expected)
    assert arr(result).std() > 20  # not a flat or fully clipped output
    lanczos = upscalers.upscale(image, "Lanczos", scale=4)
    assert np.abs(arr(result) - arr(lanczos)).mean() > 10  # and not just a resize


def test_tiling_matches_untiled_within_tolerance(models):
    upscalers = make_upscalers(models)
    image = smooth_image(64, 64, seed=3)
    calls = []
    untiled = arr(upscalers.upscale(image, "4x-Tiny", scale=4, tile=0))
    tiled = arr(upscalers.upscale(image, "4x-Tiny", scale=4, tile=32, overlap=16,
                                  progress=lambda done, total: calls.append((done, total))))
    assert calls == [(i, 9) for i in range(1, 10)]  # 3x3 tiles
    diff = np.abs(tiled - untiled)
    assert diff.max() <= TILED_MAX_LEVELS and diff.mean() <= TILED_MEAN_LEVELS, (diff.max(), diff.mean())

    # the tolerance means something: tiles without overlap show their seams
    seams = np.abs(arr(upscalers.upscale(image, "4x-Tiny", scale=4, tile=32, overlap=0)) - untiled)
    assert seams.max() > 10 * TILED_MAX_LEVELS


def test_tile_grid_covers_with_overlap_and_weights_sum_to_one():
    for length, tile, overlap in [(64, 32, 16), (1000, 512, 32), (513, 512, 32), (100, 40, 8), (37, 64, 8)]:
        starts = tile_starts(length, tile, overlap)
        size = min(tile, length)
        assert starts[0] == 0 and starts[-1] + size == length
        assert all(b - a <= size - min(overlap, tile // 2) + 1 for a, b in zip(starts, starts[1:]))
        total = torch.zeros(length * 2)
        for start, w in zip(starts, axis_weights(starts, tile, length, overlap, 2)):
            total[start * 2:(start + size) * 2] += w
        assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


@pytest.mark.parametrize("name", ["Lanczos", "Nearest", "None"])
def test_builtin_resizers_give_exact_sizes(models, name):
    upscalers = make_upscalers(models)
    image = smooth_image(63, 47)
    assert upscalers.upscale(image, name, scale=2.5).size == (158, 118)   # round(157.5), round(117.5)
    assert upscalers.upscale(image, name, size=(100, 37)).size == (100, 37)
    assert upscalers.upscale(image, name, scale=0.5).size == (32, 24)


def test_nearest_x2_repeats_pixels(models):
    image = smooth_image(16, 12)
    result = make_upscalers(models).upscale(image, "Nearest", scale=2)
    expected = np.asarray(image).repeat(2, axis=0).repeat(2, axis=1)
    assert np.array_equal(np.asarray(result), expected)


def test_model_passes_then_exact_size(models):
    upscalers = make_upscalers(models)
    calls = []
    result = upscalers.upscale(smooth_image(40, 30), "2x-TinyCompact", size=(123, 95), tile=0,
                               progress=lambda d, t: calls.append((d, t)))
    assert result.size == (123, 95)
    assert calls == [(1, 2), (2, 2)]  # 2x twice (160x120 >= 123x95), then Lanczos down


def test_alpha_channel_survives(models):
    image = smooth_image(32, 32, mode="RGBA")
    alpha = np.zeros((32, 32), np.uint8)
    alpha[:, 16:] = 255
    image.putalpha(Image.fromarray(alpha, "L"))
    for name in ("4x-Tiny", "Lanczos"):
        result = make_upscalers(models).upscale(image, name, scale=4, tile=0)
        assert result.mode == "RGBA" and result.size == (128, 128)
        out_alpha = np.asarray(result.getchannel("A"))
        assert out_alpha[:, :56].max() < 20 and out_alpha[:, 72:].min() > 235


def test_settings_give_the_tile_size(models):
    class Settings:
        values = {"ESRGAN_tile": 32, "ESRGAN_tile_overlap": 8}

        def get(self, key):
            return self.values.get(key)

    calls = []
    make_upscalers(models, settings=Settings()).upscale(smooth_image(64, 64), "4x-Tiny", scale=4,
                                                        progress=lambda d, t: calls.append(t))
    assert calls[-1] == 9


def test_check_stops_between_tiles(models):
    seen = []

    def check():
        if len(seen) >= 2:
            raise Interrupted()

    with pytest.raises(Interrupted):
        make_upscalers(models).upscale(smooth_image(64, 64), "4x-Tiny", scale=4, tile=32, overlap=16,
                                       progress=lambda d, t: seen.append(d), check=check)
    assert seen == [1, 2]


def test_models_are_cached(models):
    upscalers = make_upscalers(models)
    first = upscalers.load("4x-Tiny")
    upscalers.upscale(smooth_image(16, 16), "4x-Tiny", scale=2)
    assert upscalers.load("4x-Tiny") is first
    assert upscalers.load("2x-tinycompact") is not first  # names match case-insensitively
    assert len(upscalers.cache) == 2


def test_unknown_upscaler_and_bad_arguments(models):
    upscalers = make_upscalers(models)
    with pytest.raises(UnknownUpscalerError, match="4x-Tiny"):
        upscalers.upscale(smooth_image(), "R-ESRGAN 8x", scale=2)
    with pytest.raises(UpscaleError, match="either a scale"):
        upscalers.upscale(smooth_image(), "Lanczos")
    with pytest.raises(UpscaleError, match="positive"):
        upscalers.upscale(smooth_image(), "Lanczos", scale=-1)
    with pytest.raises(UpscaleError, match="largest result"):
        upscalers.upscale(smooth_image(), "Lanczos", size=(20000, 20000))


def test_unrecognised_and_damaged_files_fail_clearly(models):
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(3, 3)}, str(models / "ESRGAN" / "mystery.safetensors"))
    (models / "ESRGAN" / "broken.safetensors").write_bytes(b"not a safetensors file")
    upscalers = make_upscalers(models)
    with pytest.raises(UpscalerLoadError, match="mystery.safetensors: not a model architecture"):
        upscalers.upscale(smooth_image(), "mystery", scale=2)
    with pytest.raises(UpscalerLoadError, match="broken.safetensors"):
        upscalers.upscale(smooth_image(), "broken", scale=2)


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_files_need_allow_pickle_and_go_through_the_restricted_unpickler(models):
    torch.save({"params_ema": esrgan_state_dict(scale=2, seed=5)}, models / "ESRGAN" / "2x-Pickled.pth")
    with open(models / "ESRGAN" / "evil.pth", "wb") as handle:
        pickle.dump({"model.0.weight": _Exploit()}, handle)

    safe = make_upscalers(models)
    assert "2x-Pickled" not in safe.list_upscalers()
    assert {p.name for p in safe.skipped_pickles()} == {"2x-Pickled.pth", "evil.pth"}
    with pytest.raises(UnknownUpscalerError):
        safe.upscale(smooth_image(), "2x-Pickled", scale=2)

    allowed = make_upscalers(models, allow_pickle=True)
    assert "2x-Pickled" in allowed.list_upscalers()
    assert allowed.upscale(smooth_image(32, 32), "2x-Pickled", scale=2).size == (64, 64)
    assert allowed.load("2x-Pickled").architecture == "ESRGAN"  # "params_ema" wrapper removed
    with pytest.raises(UpscalerLoadError, match="restricted unpickler"):
        allowed.upscale(smooth_image(), "evil", scale=2)
    with pytest.raises(UpscalerLoadError, match="--allow-pickle"):
        read_state_dict(models / "ESRGAN" / "2x-Pickled.pth", allow_pickle=False)


def test_face_models_are_not_offered_as_upscalers(tmp_path, models):
    from webui.features.faces.tiny import write_tiny_restoreformer

    write_tiny_restoreformer(models / "ESRGAN" / "face.safetensors")
    with pytest.raises(UpscaleError, match="face restoration model"):
        make_upscalers(models).upscale(smooth_image(), "face", scale=2)
