"""The Extras service through Easel's job queue: files saved with infotext, batches with bad files."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from webui.core.infotext import parse_params_line
from webui.core.jobs import JobState
from webui.core.request import ValidationError
from webui.features.extras import ExtrasInput, ExtrasRequest, format_postprocess

from upscale_helpers import png_with_declared_size, smooth_image, tiny_models


@pytest.fixture
def app(easel):
    tiny_models(easel.paths.models_dir)
    return easel


def run(app, request: ExtrasRequest, inputs: list[ExtrasInput]):
    job = app.extras.submit(app.queue, request, inputs)
    job.wait(120)
    assert job.state == JobState.DONE, job.error
    return job.result


def png_bytes(image: Image.Image, parameters: str | None = None) -> bytes:
    meta = PngImagePlugin.PngInfo()
    if parameters:
        meta.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=meta)
    return buffer.getvalue()


def test_app_exposes_the_upscaler_api(app):
    assert app.upscalers.list_upscalers() == ["None", "Lanczos", "Nearest", "2x-TinyCompact", "4x-Tiny"]
    assert app.upscalers.upscale(smooth_image(64, 64), "4x-Tiny", scale=4).size == (256, 256)


def test_single_image_x4_saved_with_a1111_infotext(app, tmp_path):
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes(smooth_image(64, 64), parameters="a cat\nSteps: 20, Seed: 5, Size: 64x64"))
    result = run(app, ExtrasRequest(upscaling_resize=4, upscaler_1="4x-Tiny"), [ExtrasInput(source)])

    assert result.failures == [] and len(result.paths) == 1
    saved = app.paths.outputs_dir / "extras-images" / "00000.png"
    assert result.paths == [str(saved)]
    with Image.open(saved) as image:
        assert image.size == (256, 256)
        assert image.info["postprocessing"] == "Postprocess upscale by: 4, Postprocess upscaler: 4x-Tiny"
        assert image.info["extras"] == image.info["postprocessing"]
        assert image.info["parameters"].startswith("a cat\n")  # the generation parameters travel along
        assert np.array_equal(np.asarray(image), np.asarray(result.images[0]))


def test_batch_with_a_corrupt_file_processes_the_others(app, tmp_path):
    good_a, good_b = tmp_path / "a.png", tmp_path / "c.png"
    smooth_image(32, 32, seed=1).save(good_a)
    smooth_image(32, 24, seed=2).save(good_b)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    huge = tmp_path / "d.png"
    huge.write_bytes(png_with_declared_size(12_000, 10_000))
    inputs = [ExtrasInput(p, p.name) for p in (good_a, bad, good_b, huge)]
    result = run(app, ExtrasRequest(upscaling_resize=2, upscaler_1="Lanczos"), inputs)

    assert result.names == ["a.png", "c.png"]
    assert [n for n, _ in result.failures] == ["b.png", "d.png"]
    assert "b.png: not an image file" in result.warnings[0]
    assert "d.png: 12000x10000 is 120.0 megapixels" in result.warnings[1]
    folder = app.paths.outputs_dir / "extras-images"
    assert sorted(p.name for p in folder.iterdir()) == ["00000-a.png", "00001-c.png"]
    with Image.open(folder / "00001-c.png") as image:
        assert image.size == (64, 48)


def test_scale_to_with_crop_and_without(app):
    image = smooth_image(64, 48)
    cropped = run(app, ExtrasRequest(resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100,
                                     upscaling_crop=True, upscaler_1="Lanczos", save_images=False),
                  [ExtrasInput(image)])
    assert cropped.images[0].size == (100, 100)
    assert cropped.infotexts[0] == ("Postprocess upscale to: 100x100, Postprocess upscaler: Lanczos, "
                                    "Postprocess crop to: 100x100")
    covered = run(app, ExtrasRequest(resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100,
                                     upscaling_crop=False, upscaler_1="Lanczos", save_images=False),
                  [ExtrasInput(image)])
    assert covered.images[0].size == (133, 100)  # covers 100x100, keeps the aspect ratio (A1111)
    assert not (app.paths.outputs_dir / "extras-images").exists()


def test_second_upscaler_is_blended_by_visibility(app):
    image = smooth_image(32, 32)
    result = run(app, ExtrasRequest(upscaling_resize=2, upscaler_1="4x-Tiny", upscaler_2="Nearest",
                                    extras_upscaler_2_visibility=0.25, save_images=False), [ExtrasInput(image)])
    first = app.upscalers.upscale(image, "4x-Tiny", size=(64, 64))
    second = app.upscalers.upscale(image, "Nearest", size=(64, 64))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(Image.blend(first, second, 0.25)))
    params = parse_params_line(result.infotexts[0])
    assert params["Postprocess upscaler"] == "4x-Tiny"
    assert params["Postprocess upscaler 2"] == "Nearest"
    assert params["Postprocess upscaler 2 visibility"] == "0.25"


def test_bad_fields_are_named_before_anything_runs(app):
    with pytest.raises(ValidationError) as info:
        app.extras.submit(app.queue, ExtrasRequest(upscaler_1="8x-Missing", upscaling_resize=50,
                                                   gfpgan_visibility=0.5), [ExtrasInput(smooth_image())])
    fields = {e.field for e in info.value.errors}
    assert fields == {"upscaler_1", "upscaling_resize", "gfpgan_visibility"}
    assert "models/GFPGAN" in str(info.value)
    with pytest.raises(ValidationError, match="image: no image given"):
        app.extras.submit(app.queue, ExtrasRequest(), [])


def test_interrupt_keeps_finished_images(app):
    inputs = [ExtrasInput(smooth_image(64, 64, seed=i), f"{i}.png") for i in range(4)]
    request = ExtrasRequest(upscaling_resize=4, upscaler_1="4x-Tiny", save_images=False)
    original = app.extras.process
    calls = []

    def interrupting(image, req, job, check):  # the user presses Stop while the second image runs
        calls.append(job.progress.job_no)
        if len(calls) == 2:
            job.interrupt()
        return original(image, req, job, check)

    app.extras.process = interrupting
    try:
        job = app.extras.submit(app.queue, request, inputs)
        job.wait(120)
    finally:
        app.extras.process = original
    assert job.result.interrupted
    assert calls == [0, 1] and len(job.result.images) == 1
    assert job.result.warnings == ["Interrupted: kept 1 finished image(s)."]


def test_format_postprocess_quotes_like_a1111():
    assert format_postprocess({"Postprocess upscale by": 2.5, "Postprocess upscaler": "My, model"}) == \
        'Postprocess upscale by: 2.5, Postprocess upscaler: "My, model"'
