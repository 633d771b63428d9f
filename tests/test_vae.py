"""Separate VAE files: a different VAE changes the image, None restores the baked-in one bit for bit,
Automatic follows the remembered preference or a `model.vae.safetensors` beside the checkpoint, and
infotext records `VAE hash`/`VAE` and pastes back."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from safetensors.torch import save_file

from tests.conftest import make_easel
from webui.core.infotext import parse_infotext
from webui.pnginfo import infotext_to_fields
from webui.core.request import GenerationRequest, ValidationError
from webui.model_manager.architecture import Architecture
from webui.model_manager.convert import vae_to_original
from webui.model_manager.loader import file_state_dict
from webui.model_manager.tiny import build_tiny_components, write_single_file
from webui.model_manager.vae import VaeLoadError, apply_vae


@pytest.fixture(scope="module")
def vae_world(tmp_path_factory):
    """A checkpoint folder of our own, and two VAE files (original and diffusers layout) with other weights."""
    root = tmp_path_factory.mktemp("vae")
    ckpts = root / "ckpts"
    write_single_file(ckpts / "tiny-sd1.safetensors", Architecture("sd1"), seed=7)
    configs, modules = build_tiny_components(Architecture("sd1"), seed=99)
    tensors = {k: v.contiguous() for k, v in file_state_dict(modules["vae"]).items()}
    vae_dir = root / "models" / "VAE"
    vae_dir.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in vae_to_original(tensors, configs["vae"]).items()},
              str(vae_dir / "other.safetensors"))
    save_file(tensors, str(vae_dir / "other-diffusers.safetensors"))
    save_file({"lora_unet_x.lora_down.weight": tensors["decoder.conv_in.weight"][:, :, 0, 0].contiguous()},
              str(vae_dir / "broken.safetensors"))
    return root, ckpts


@pytest.fixture(scope="module")
def app(vae_world):
    root, ckpts = vae_world
    easel = make_easel(root, ckpts)
    yield easel
    easel.close()


def _image(app, **overrides) -> tuple[np.ndarray, str]:
    request = GenerationRequest(prompt="a cat", steps=2, width=64, height=64, seed=5, sampler_name="Euler",
                                save_images=False, override_settings=overrides)
    result = app.generate(request)
    return np.asarray(result.images[0], dtype=np.int16), result.infotexts[0]


def test_vae_file_changes_image_and_none_restores_it_exactly(app, vae_world):
    baked, baked_text = _image(app, sd_vae="None")
    other, other_text = _image(app, sd_vae="other.safetensors")
    assert np.abs(other - baked).mean() > 2, "a VAE with other weights must change the decoded image"
    same, _ = _image(app, sd_vae="other-diffusers.safetensors")
    assert np.array_equal(same, other), "diffusers and original layouts of one VAE must decode alike"
    again, _ = _image(app, sd_vae="None")
    assert np.array_equal(again, baked), "None must restore the baked-in VAE bit for bit"
    assert "VAE" not in parse_infotext(baked_text).params

    params = parse_infotext(other_text).params
    sha = hashlib.sha256((vae_world[0] / "models" / "VAE" / "other.safetensors").read_bytes()).hexdigest()
    assert params["VAE hash"] == sha[:10]
    assert params["VAE"] == "other.safetensors"
    line = other_text.splitlines()[-1]
    assert line.index("Model:") < line.index("VAE hash:") < line.index("VAE: other")  # AUTOMATIC1111's order
    assert infotext_to_fields(parse_infotext(other_text))["override_settings"]["sd_vae"] == "other.safetensors"


def test_automatic_uses_preference_then_named_like_then_baked(app, vae_world):
    root, ckpts = vae_world
    baked, _ = _image(app, sd_vae="None")
    other, _ = _image(app, sd_vae="other.safetensors")
    assert np.array_equal(_image(app, sd_vae="Automatic")[0], baked)
    app.vaes.set_preference("tiny-sd1.safetensors", "other.safetensors")
    try:
        auto, text = _image(app, sd_vae="Automatic")
        assert np.array_equal(auto, other)
        assert parse_infotext(text).params["VAE"] == "other.safetensors"
        # with overrides off, the preference beats an explicit choice
        kept, _ = _image(app, sd_vae="None", sd_vae_overrides_per_model_preferences=False)
        assert np.array_equal(kept, other)
        assert np.array_equal(_image(app, sd_vae="None")[0], baked)
    finally:
        app.vaes.set_preference("tiny-sd1.safetensors", None)
    assert app.vaes.preference("tiny-sd1.safetensors") is None
    named = ckpts / "tiny-sd1.vae.safetensors"
    named.write_bytes((root / "models" / "VAE" / "other.safetensors").read_bytes())
    try:
        assert app.vaes.named_like(app.models.find("tiny-sd1.safetensors")) == named
        assert np.array_equal(_image(app, sd_vae="Automatic")[0], other)
        app.models.refresh()
        assert "tiny-sd1.vae.safetensors" not in [c.name for c in app.models.checkpoints()]
    finally:
        named.unlink()


def test_listing_and_errors_name_the_field(app):
    assert app.vaes.choices()[:2] == ["Automatic", "None"]
    assert {"other.safetensors", "other-diffusers.safetensors"} <= set(app.vaes.names())
    with pytest.raises(ValidationError) as caught:
        app.submit(GenerationRequest(prompt="x", steps=2, width=64, height=64,
                                     override_settings={"sd_vae": "missing.safetensors"}))
    assert "override_settings.sd_vae" in str(caught.value) and "missing.safetensors" in str(caught.value)
    model = app.models.get(None)
    before = {k: v.clone() for k, v in model.vae.state_dict().items()}
    with pytest.raises(VaeLoadError, match="broken.safetensors"):
        apply_vae(model, app.vaes.find("broken.safetensors"))
    assert all(np.array_equal(before[k].numpy(), v.numpy()) for k, v in model.vae.state_dict().items())


def test_vae_through_the_a1111_api(vae_world, tmp_path):
    """/sdapi/v1: sd-vae lists the files, override_settings.sd_vae picks one, info reports it, bad names are 422."""
    import httpx

    from tests.conftest import start_server

    root, ckpts = vae_world
    server_root = tmp_path / "server"
    server_root.mkdir()
    (server_root / "models").symlink_to(root / "models", target_is_directory=True)
    server = start_server(server_root, ckpts, ["--api", "--nowebui"])
    try:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            listed = client.get("/sdapi/v1/sd-vae").json()
            assert {"model_name": "other.safetensors", "filename": "other.safetensors"} in listed
            assert all(not item["filename"].startswith("/") for item in listed)
            body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler"}
            chosen = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"sd_vae": "other.safetensors"}})
            baked = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"sd_vae": "None"}})
            assert chosen.status_code == baked.status_code == 200, chosen.text
            info = json.loads(chosen.json()["info"])
            assert info["sd_vae_name"] == "other.safetensors" and len(info["sd_vae_hash"]) == 10
            assert json.loads(baked.json()["info"])["sd_vae_name"] is None
            assert chosen.json()["images"][0] != baked.json()["images"][0]
            unknown = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"sd_vae": "nope.safetensors"}})
            assert unknown.status_code == 422 and "sd_vae" in unknown.text
            refused = client.post("/sdapi/v1/options", json={"sd_vae": "nope.safetensors"})
            assert refused.status_code == 422 and "sd_vae" in refused.text and "other.safetensors" in refused.text
            assert client.post("/sdapi/v1/options", json={"sd_vae": "other.safetensors"}).status_code == 200
            assert client.get("/sdapi/v1/options").json()["sd_vae"] == "other.safetensors"
            assert client.post("/sdapi/v1/refresh-vae").status_code == 200
    finally:
        server.stop()
