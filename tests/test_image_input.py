"""Checked opening of uploaded images: declared size first, Pillow's bomb guard kept, clear errors."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from webui.core.image_input import ImageInputError, open_image_checked

from upscale_helpers import png_with_declared_size, smooth_image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_opens_paths_bytes_and_streams(tmp_path):
    image = smooth_image(40, 30)
    path = tmp_path / "a.png"
    image.save(path)
    for source in (path, str(path), png_bytes(image), io.BytesIO(png_bytes(image))):
        opened = open_image_checked(source, 100)
        assert opened.size == (40, 30)
        assert list(opened.getdata())[:5] == list(image.getdata())[:5]


def test_declared_size_over_the_limit_is_refused_before_decoding():
    bomb = png_with_declared_size(12_000, 10_000)  # 120 MP declared, a few bytes of data
    with pytest.raises(ImageInputError, match=r"12000x10000 is 120.0 megapixels; the largest image accepted is 100"):
        open_image_checked(bomb, 100, name="huge.png")
    with pytest.raises(ImageInputError, match="huge.png"):
        open_image_checked(bomb, 100, name="huge.png")


def test_the_limit_is_a_parameter():
    data = png_bytes(smooth_image(64, 64))
    with pytest.raises(ImageInputError, match="megapixels"):
        open_image_checked(data, 0.001)
    assert open_image_checked(data, 0.005).size == (64, 64)


def test_pillows_guard_stays_on_even_with_a_high_limit():
    limit_before = Image.MAX_IMAGE_PIXELS
    assert limit_before is not None
    bomb = png_with_declared_size(20_000, 20_000)  # 400 MP: over Pillow's hard limit (2 x ~89 MP)
    with pytest.raises(ImageInputError, match="too large to open safely"):
        open_image_checked(bomb, 1000)
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_garbage_and_truncated_files_get_clear_messages(tmp_path):
    with pytest.raises(ImageInputError, match="notes.txt: not an image file"):
        open_image_checked(b"hello, this is text", 100, name="notes.txt")
    truncated = png_bytes(smooth_image(64, 64))[:200]
    with pytest.raises(ImageInputError, match="damaged or truncated"):
        open_image_checked(truncated, 100, name="cut.png")
    with pytest.raises(ImageInputError, match="missing.png: cannot be read"):
        open_image_checked(tmp_path / "missing.png", 100)
