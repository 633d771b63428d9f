"""Face restoration: Haar detection on a drawn face, alignment round trip, a real spandrel face model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from webui.core.jobs import JobState
from webui.features.extras import ExtrasInput, ExtrasRequest
from webui.features.faces import FaceRestoreError, FaceRestorers, detect_faces
from webui.features.faces.align import crop_face, face_matrix, paste_face
from webui.features.faces.tiny import write_tiny_restoreformer

from upscale_helpers import smooth_image

# Where the drawn face's eyes are (image pixels) and its bounding ellipse.
OX, OY, S = 64, 32, 256
LEFT_EYE = (OX + 0.365 * S, OY + 0.42 * S)
RIGHT_EYE = (OX + 0.635 * S, OY + 0.42 * S)


def drawn_face() -> Image.Image:
    """A schematic frontal face (skin oval, dark eyes and brows, nose, mouth) on a green background."""
    image = Image.new("RGB", (384, 320), (40, 90, 60))
    d = ImageDraw.Draw(image)

    def box(x0, y0, x1, y1):
        return [OX + x0 * S, OY + y0 * S, OX + x1 * S, OY + y1 * S]

    d.ellipse(box(0.2, 0.1, 0.8, 0.95), fill=(200, 170, 150))
    d.ellipse(box(0.3, 0.38, 0.43, 0.46), fill=(40, 30, 30))
    d.ellipse(box(0.57, 0.38, 0.7, 0.46), fill=(40, 30, 30))
    d.rectangle(box(0.28, 0.31, 0.45, 0.34), fill=(70, 50, 40))
    d.rectangle(box(0.55, 0.31, 0.72, 0.34), fill=(70, 50, 40))
    d.polygon([(OX + 0.5 * S, OY + 0.45 * S), (OX + 0.45 * S, OY + 0.63 * S), (OX + 0.55 * S, OY + 0.63 * S)],
              fill=(170, 140, 120))
    d.ellipse(box(0.38, 0.72, 0.62, 0.79), fill=(120, 50, 50))
    return image.filter(ImageFilter.GaussianBlur(2))


@pytest.fixture(scope="module")
def face_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("face-models")
    write_tiny_restoreformer(root / "GFPGAN" / "GFPGANv1.4-tiny.safetensors")
    return root


def restorers(root) -> FaceRestorers:
    return FaceRestorers(lambda: {"gfpgan": [root / "GFPGAN"], "codeformer": [root / "Codeformer"]},
                         torch.device("cpu"))


def test_detects_the_face_and_its_eyes():
    faces = detect_faces(drawn_face())
    assert len(faces) == 1
    face = faces[0]
    x, y, w, h = face.box
    assert x < LEFT_EYE[0] < RIGHT_EYE[0] < x + w and y < LEFT_EYE[1] < y + h
    assert face.eyes_found
    for found, true in ((face.left_eye, LEFT_EYE), (face.right_eye, RIGHT_EYE)):
        assert np.hypot(found[0] - true[0], found[1] - true[1]) < 8


def test_no_face_in_a_landscape():
    assert detect_faces(smooth_image(256, 192)) == []


def test_align_and_paste_back_round_trip():
    pixels = np.asarray(drawn_face()).copy()
    matrix = face_matrix(LEFT_EYE, RIGHT_EYE)
    crop = crop_face(pixels, matrix)
    assert crop.shape == (512, 512, 3)
    # the eyes land on the FFHQ template points
    for eye, template in ((LEFT_EYE, (192.98, 239.95)), (RIGHT_EYE, (318.90, 240.19))):
        mapped = matrix @ np.array([eye[0], eye[1], 1.0])
        assert np.allclose(mapped, template, atol=1.0)
    back = paste_face(pixels, crop, matrix)
    diff = np.abs(back.astype(int) - pixels.astype(int))
    assert diff.mean() < 1.0           # putting the unchanged crop back changes almost nothing
    assert diff[:10, :10].max() == 0   # and far from the face exactly nothing


def test_image_without_faces_comes_back_unchanged(face_models):
    image = smooth_image(200, 150)
    result = restorers(face_models).restore(image, "GFPGAN")
    assert result.faces == [] and np.array_equal(np.asarray(result.image), np.asarray(image))


def test_missing_model_says_where_to_put_it(face_models):
    faces = restorers(face_models)
    assert faces.available() == ["GFPGAN"]
    with pytest.raises(FaceRestoreError, match="models/Codeformer"):
        faces.restore(drawn_face(), "CodeFormer")


def test_extras_restores_the_face_region_and_blends_by_visibility(easel):
    write_tiny_restoreformer(easel.paths.model_dir("gfpgan") / "GFPGANv1.4-tiny.safetensors")
    image = drawn_face()
    job = easel.extras.submit(easel.queue, ExtrasRequest(gfpgan_visibility=1.0, save_images=False),
                              [ExtrasInput(image)])
    job.wait(120)
    assert job.state == JobState.DONE, job.error
    full = job.result.images[0]
    before, after = np.asarray(image).astype(int), np.asarray(full).astype(int)
    changed = np.abs(after - before).sum(axis=2) > 0
    assert changed[int(LEFT_EYE[1]), int(LEFT_EYE[0])] and changed[int(OY + 0.75 * S), int(OX + 0.5 * S)]
    assert not changed[:8].any() and not changed[:, :8].any() and not changed[:, -8:].any()
    assert job.result.infotexts == ["GFPGAN visibility: 1"]

    job = easel.extras.submit(easel.queue, ExtrasRequest(gfpgan_visibility=0.5, save_images=False),
                              [ExtrasInput(image)])
    job.wait(120)
    assert np.array_equal(np.asarray(job.result.images[0]), np.asarray(Image.blend(image, full, 0.5)))
    assert job.result.infotexts == ["GFPGAN visibility: 0.5"]
