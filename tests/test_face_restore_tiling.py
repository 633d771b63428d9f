"""Restore faces while generating (Extras' restorers after decoding) and seamless tiling (circular padding in
the UNet and VAE), through the real engine on tiny models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.core.infotext import parse_infotext
from webui.core.jobs import Job
from webui.core.pipeline import Batch, Run
from webui.core.request import GenerationRequest, ValidationError
from webui.extensions.api import hookimpl
from webui.features.face_restore import FaceRestoration, RestoreChoice
from webui.features.faces.tiny import write_tiny_restoreformer
from webui.features.tiling import circular_padding
from webui.pnginfo import infotext_to_fields

from conftest import make_easel
from test_extras_faces import drawn_face


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    easel = make_easel(tmp_path_factory.mktemp("faces-tiling"), tiny_ckpt_dir)
    write_tiny_restoreformer(easel.paths.model_dir("gfpgan") / "GFPGANv1.4-tiny.safetensors")
    yield easel
    easel.close()


def txt(**kw) -> GenerationRequest:
    base = dict(prompt="a face", steps=3, width=64, height=64, seed=3, sampler_name="Euler",
                checkpoint="tiny-sd1.safetensors", save_images=False)
    base.update(kw)
    return GenerationRequest(**base)


def array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


# ---- face restoration -------------------------------------------------------------------------------


def test_restore_faces_needs_an_installed_model(app):
    with pytest.raises(ValidationError) as caught:
        app.engine.prepare(txt(restore_faces=True))   # the default model, CodeFormer, is not installed
    assert [e.field for e in caught.value.errors] == ["restore_faces"]
    assert "models/Codeformer" in str(caught.value)


def test_restore_faces_in_a_generation_writes_its_infotext(app):
    plain = app.generate(txt())
    restored = app.generate(txt(restore_faces=True, override_settings={"face_restoration_model": "GFPGAN"}))
    assert parse_infotext(restored.infotexts[0]).params["Face restoration"] == "GFPGAN"
    assert "Face restoration" not in plain.infotexts[0]
    # the tiny model paints noise, where no face is found: the picture is left as it was
    assert np.array_equal(array(plain.images[0]), array(restored.images[0]))
    assert infotext_to_fields(parse_infotext(restored.infotexts[0]))["restore_faces"] is True


def test_restoration_step_is_extras_pipeline_on_each_decoded_image(app):
    """The feature's finishing step on a picture with a face (Extras' restorer, models/GFPGAN): the face
    changes, the background far from it does not."""
    feature = app.engine.feature("face_restoration")
    assert isinstance(feature, FaceRestoration)
    request = txt(restore_faces=True)
    run = Run(request, None, Job(run=lambda job: None), None, args={feature.name: RestoreChoice("GFPGAN", 0.5)})
    face = drawn_face()
    [out] = feature.finish_images(run, Batch(0, [3], 0), [face], None)
    diff = np.abs(array(out) - array(face)).max(axis=2)
    assert diff[100:250, 130:260].mean() > 5         # the face
    assert diff[:, :20].max() == 0 and diff[:, -20:].max() == 0    # the background far from it


# ---- seamless tiling --------------------------------------------------------------------------------


class RollNoise:
    """An extension that rolls each batch's initial noise sideways by `shift` latent pixels."""

    shift = 0

    @hookimpl
    def extra_noise(self, noise):
        return torch.roll(noise, self.shift, dims=-1) if self.shift else None


def wrap_error(app, roller: RollNoise, tiling: bool) -> tuple[float, float]:
    """(mean |difference| of roll(image, 32 px) and the image made from noise rolled by 4 latent pixels (32 px),
    in the 8-pixel band around the original picture's left/right edge; the same elsewhere)."""
    roller.shift = 0
    first = array(app.generate(txt(tiling=tiling)).images[0])
    roller.shift = 4
    moved = array(app.generate(txt(tiling=tiling)).images[0])
    roller.shift = 0
    error = np.abs(np.roll(first, 32, axis=1) - moved).astype(float)
    return error[:, 28:36].mean(), error[:, 44:52].mean()


def test_tiled_pictures_continue_across_their_edges(app):
    """With tiling the model sees a torus: noise rolled by half the width gives the same picture rolled by half
    (its left/right seam now in the middle), so the edges continue each other; without it they do not."""
    roller = RollNoise()
    app.engine.hooks.register(roller, "roll-noise")
    try:
        tiled_seam, tiled_inside = wrap_error(app, roller, True)
        plain_seam, plain_inside = wrap_error(app, roller, False)
    finally:
        app.engine.hooks.unregister("roll-noise")
    print(f"seam error tiled {tiled_seam:.2f} (inside {tiled_inside:.2f}), not tiled {plain_seam:.2f} "
          f"(inside {plain_inside:.2f})")
    assert tiled_seam < 1.0 and tiled_inside < 1.0
    assert plain_seam > 10 * max(tiled_seam, 0.1)
    model = app.models.get("tiny-sd1.safetensors")
    modes = {m.padding_mode for net in (model.unet, model.vae) for m in net.modules() if isinstance(m, torch.nn.Conv2d)}
    assert modes == {"zeros"}   # the shared model is itself again


def test_tiling_vae_is_equivariant_on_the_torus_and_padding_comes_back_after_errors(app):
    model = app.models.get("tiny-sd1.safetensors")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), circular_padding(model.vae):
        image = model.vae.decode(z).sample
        rolled = model.vae.decode(torch.roll(z, 3, dims=-1)).sample
    assert torch.allclose(torch.roll(image, 24, dims=-1), rolled, atol=1e-4)
    with pytest.raises(RuntimeError), circular_padding(model.unet, model.vae):
        raise RuntimeError("sampling failed")
    assert {m.padding_mode for m in model.vae.modules() if isinstance(m, torch.nn.Conv2d)} == {"zeros"}


def test_tiling_infotext_and_paste(app):
    result = app.generate(txt(tiling=True))
    params = parse_infotext(result.infotexts[0]).params
    assert params["Tiling"] == "True"
    assert infotext_to_fields(parse_infotext(result.infotexts[0]))["tiling"] is True
    assert "tiling" not in infotext_to_fields(parse_infotext(app.generate(txt()).infotexts[0]))
