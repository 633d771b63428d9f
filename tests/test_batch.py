"""Folder batch: every readable image is processed, a corrupt one is reported, the rest still run."""
from PIL import Image

from webui.core.request import GenerationRequest
from webui.features.batch import FolderBatch


def test_folder_batch_reports_bad_files_and_processes_the_rest(easel, tmp_path):
    source, target, masks = tmp_path / "in", tmp_path / "out", tmp_path / "masks"
    source.mkdir()
    masks.mkdir()
    for name, colour in (("a.png", "red"), ("c.jpg", "blue")):
        Image.new("RGB", (64, 64), colour).save(source / name)
    (source / "b.png").write_bytes(b"not really a png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    mask.save(masks / "a.png")

    def make(image):
        return GenerationRequest(mode="img2img", init_images=[image], prompt="x", steps=2, width=64, height=64,
                                 seed=1, checkpoint="tiny-sd1", inpaint_full_res=False, mask_blur=0)

    job = easel.submit_batch(FolderBatch(make, source, target, masks))
    job.wait(120)
    result = job.result
    assert len(result.paths) == 2 and all(p.startswith(str(target)) for p in result.paths)
    assert any(w.startswith("b.png:") for w in result.warnings)
    first = Image.open(result.paths[0]).convert("RGB")
    assert first.getpixel((60, 10)) == (255, 0, 0)  # a.png's mask kept the right half


def test_oversized_image_is_refused_before_decoding(tmp_path):
    import pytest

    from webui.core.image_input import ImageInputError, open_image_checked

    path = tmp_path / "big.png"
    Image.new("L", (4000, 3000)).save(path)
    with pytest.raises(ImageInputError, match="12.0 megapixels"):
        open_image_checked(path, max_megapixels=10, name="big.png")
