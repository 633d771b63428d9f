"""Identity models follow the memory mode: PhotoMaker's ID encoder runs alone on the device, InstantID's
IdentityNet joins the denoiser; the images equal the Resident ones.

The tiny SDXL model and the identity files of tests/test_identity.py (a real insightface run on tiny
ONNX graphs); placement read from the offloader's record of moves, as in tests/test_memory_kinds.py."""
import numpy as np
import pytest

from webui.model_manager.memory import MODEL_OFFLOAD, ONLOAD

from conftest import make_easel
from identity_helpers import face_card, write_insightface_pack, write_instantid, write_photomaker
from test_memory_kinds import first_leaf, joined, replay, watch


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    app = make_easel(tmp_path_factory.mktemp("identity-memory"), tiny_ckpt_dir)
    sdxl = app.models.get("tiny-sdxl.safetensors")
    write_insightface_pack(app.paths.model_dir("insightface") / "antelopev2")
    write_instantid(app.paths.model_dir("instantid"), sdxl.unet, seed=3)
    write_photomaker(app.paths.model_dir("photomaker") / "photomaker-v1.bin", sdxl.unet, version=1, seed=4)
    yield app
    app.close()


def generate(app, identity, prompt="a photo of a man img, portrait"):
    from webui.core.request import GenerationRequest

    return app.txt2img(GenerationRequest(prompt=prompt, steps=3, width=64, height=64, seed=11, sampler_name="Euler",
                                         checkpoint="tiny-sdxl", save_images=False,
                                         alwayson_scripts={"identity": {"args": identity}}))


PHOTOMAKER = {"method": "PhotoMaker v1", "images": [face_card((320, 320), [(160, 160, 60)])], "style_strength": 0,
              "lora_weight": 1.0}
INSTANTID = {"method": "InstantID", "images": [face_card((320, 320), [(160, 160, 60)])], "adapter_strength": 0.8,
             "identitynet_strength": 0.8}


def test_identity_models_follow_model_offload(app):
    resident = {"photomaker": generate(app, PHOTOMAKER), "instantid": generate(app, INSTANTID)}
    encoder_name, encoder = joined(app, "photomaker:")
    net_name, net = joined(app, "identitynet:")
    app.settings.update({"memory_mode": MODEL_OFFLOAD})
    try:
        model = app.models.get("tiny-sdxl.safetensors")
        seen, handles = watch({encoder_name: first_leaf(encoder), net_name: first_leaf(net),
                               "unet": model.unet.conv_in}, {"base": lambda: model.offloader})
        start = len(model.offloader.moves)
        try:
            offloaded = {"photomaker": generate(app, PHOTOMAKER), "instantid": generate(app, INSTANTID)}
        finally:
            for handle in handles:
                handle.remove()
    finally:
        app.settings.update({"memory_mode": "Automatic"})
    assert {who for who, _ in seen} == {encoder_name, net_name, "unet"}
    for who, on_device in seen:
        if who == encoder_name:
            assert on_device["base"] == {encoder_name}, on_device  # alone
        else:  # the IdentityNet runs with the UNet, in its group
            assert "unet" in on_device["base"] and encoder_name not in on_device["base"], (who, on_device)
    moves = list(model.offloader.moves)[start:]
    unet_on = [i for i, move in enumerate(moves) if move == ("unet", ONLOAD)]
    assert any(moves[i + 1] == (net_name, ONLOAD) for i in unet_on)  # onloaded together with the UNet
    assert replay(model.offloader.moves) == set()
    for method in resident:
        assert np.array_equal(np.asarray(resident[method].images[0]), np.asarray(offloaded[method].images[0])), method


def test_instantid_with_fp8_weights_projects_the_face_in_the_compute_dtype(app):
    """The face tokens used to take the dtype of the UNet's first weight, which fp8 storage makes fp8."""
    full = generate(app, INSTANTID)
    app.settings.update({"weight_storage": "fp8_e4m3fn"})
    try:
        stored = generate(app, INSTANTID)
    finally:
        app.settings.update({"weight_storage": "Automatic"})
    mse = np.mean((np.asarray(full.images[0], np.float64) - np.asarray(stored.images[0], np.float64)) ** 2)
    assert 10 * np.log10(255 ** 2 / max(mse, 1e-12)) > 20
