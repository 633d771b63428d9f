"""A real Easel server with a tiny Flux dev folder: the A1111 API generates with it, writes Forge's
"Distilled CFG Scale" into the infotext, and an infotext pasted back gives the same image."""
from __future__ import annotations

import base64
import io
import json
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import start_server
from webui.model_manager.tiny_flux import write_flux_folder


@pytest.fixture(scope="module")
def flux_server(tmp_path_factory, tiny_ckpt_dir):
    root = tmp_path_factory.mktemp("flux-server")
    folder = write_flux_folder(root / "ckpt" / "tiny-flux-dev", "dev", seed=6)
    _controlnets(root / "models" / "ControlNet", folder, tiny_ckpt_dir)
    other = write_flux_folder(root / "other" / "tiny-flux-dev", "dev", seed=7)  # its VAE, as a separate file
    (root / "models" / "VAE").mkdir(parents=True)
    shutil.copy(other / "vae" / "diffusion_pytorch_model.safetensors", root / "models" / "VAE" / "other_ae.safetensors")
    server = start_server(root, root / "ckpt", ["--api", "--nowebui"])
    yield server
    server.stop()


def _controlnets(folder, flux_folder, tiny_ckpt_dir) -> None:
    """A Flux Union ControlNet for the Flux folder and an SD 1.x ControlNet (another family's)."""
    from diffusers import FluxTransformer2DModel

    from webui.devices import device_config
    from webui.features.controlnet.flux import write_flux_controlnet
    from webui.features.controlnet.models import write_controlnet
    from webui.model_manager.loader import load_checkpoint
    from webui.model_manager.registry import scan_folder

    transformer = FluxTransformer2DModel.from_pretrained(str(flux_folder / "transformer"), local_files_only=True)
    write_flux_controlnet(folder / "flux-union-tiny.safetensors", transformer, union=True, seed=2)
    sd1 = next(i for i in scan_folder(tiny_ckpt_dir) if i.name == "tiny-sd1.safetensors")
    write_controlnet(folder / "sd15-canny-tiny.safetensors", load_checkpoint(sd1, device_config("cpu"), False).unet)


def test_controlnet_units_over_the_a1111_api_on_flux(flux_server):
    """A Flux Union ControlNet in `alwayson_scripts.controlnet` with the extension's `union_control_type`;
    an SD ControlNet on the Flux checkpoint is a 422 naming the unit's model field."""
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(picture, format="PNG")
    unit = {"enabled": True, "module": "none", "model": "flux-union-tiny", "weight": 0.9,
            "image": base64.b64encode(picture.getvalue()).decode(), "union_control_type": "Depth"}
    body = {"prompt": "a barn", "steps": 2, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler",
            "cfg_scale": 1, "override_settings": {"sd_model_checkpoint": "tiny-flux-dev"},
            "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    listed = httpx.get(flux_server.url + "/controlnet/model_list", timeout=30).json()["model_list"]
    assert any(name.startswith("flux-union-tiny") for name in listed), listed
    done = httpx.post(flux_server.url + "/sdapi/v1/txt2img", json=body, timeout=300)
    assert done.status_code == 200, done.text
    text = json.loads(done.json()["info"])["infotexts"][0]
    assert "ControlNet 0" in text and "flux-union-tiny" in text and "Union Control Type: Depth" in text
    wrong = dict(body, alwayson_scripts={"controlnet": {"args": [dict(unit, model="sd15-canny-tiny")]}})
    refused = httpx.post(flux_server.url + "/sdapi/v1/txt2img", json=wrong, timeout=300)
    assert refused.status_code == 422, refused.text
    assert "alwayson_scripts.controlnet.args[0].model" in refused.text and "not a Flux ControlNet" in refused.text


def _image(data: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data["images"][0]))), dtype=np.float64)


def test_txt2img_api_with_flux_writes_and_restores_distilled_cfg(flux_server):
    models = httpx.get(flux_server.url + "/sdapi/v1/sd-models", timeout=30).json()
    assert isinstance(models, list), models
    assert [m["model_name"] for m in models] == ["tiny-flux-dev"]
    body = {"prompt": "a lighthouse at dusk", "steps": 2, "width": 64, "height": 64, "seed": 4,
            "sampler_name": "Euler", "cfg_scale": 1, "distilled_cfg_scale": 2.5,
            "override_settings": {"sd_model_checkpoint": "tiny-flux-dev"}}
    first = httpx.post(flux_server.url + "/sdapi/v1/txt2img", json=body, timeout=300)
    assert first.status_code == 200, first.text
    text = json.loads(first.json()["info"])["infotexts"][0]
    for part in ("Sampler: Euler", "Schedule type: Simple", "CFG scale: 1", "Distilled CFG Scale: 2.5",
                 "Model: tiny-flux-dev"):
        assert part in text
    # paste: the infotext alone (the checkpoint aside) restores every field, the distilled guidance included
    again = httpx.post(flux_server.url + "/sdapi/v1/txt2img", timeout=300, json={
        "infotext": text, "override_settings": {"sd_model_checkpoint": "tiny-flux-dev"}})
    assert again.status_code == 200, again.text
    assert np.abs(_image(again.json()) - _image(first.json())).max() == 0
    other = httpx.post(flux_server.url + "/sdapi/v1/txt2img", json=dict(body, distilled_cfg_scale=6), timeout=300)
    assert np.abs(_image(other.json()) - _image(first.json())).max() > 0


def test_bad_flux_requests_name_the_field(flux_server):
    base = {"prompt": "x", "steps": 2, "width": 64, "height": 64,
            "override_settings": {"sd_model_checkpoint": "tiny-flux-dev"}}
    bad = httpx.post(flux_server.url + "/sdapi/v1/txt2img", json=dict(base, distilled_cfg_scale=-1), timeout=60)
    assert bad.status_code == 422 and "distilled_cfg_scale" in bad.text
    ddim = httpx.post(flux_server.url + "/sdapi/v1/txt2img", json=dict(base, sampler_name="DDIM"), timeout=120)
    assert ddim.status_code == 422 and "sampler_name" in ddim.text
    # a Kontext reference (alwayson_scripts "Kontext") reaches the engine: dev is not Kontext; bad base64 is named
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 90, 200)).save(picture, format="PNG")
    kontext = {"Kontext": {"args": [base64.b64encode(picture.getvalue()).decode(), "Image size"]}}
    dev = httpx.post(flux_server.url + "/sdapi/v1/txt2img", json=dict(base, alwayson_scripts=kontext), timeout=120)
    assert dev.status_code == 422 and "alwayson_scripts.Kontext.args.image" in dev.text and "Kontext" in dev.text
    broken = {"Kontext": {"args": ["%%%", "Image size"]}}
    bad = httpx.post(flux_server.url + "/sdapi/v1/txt2img", json=dict(base, alwayson_scripts=broken), timeout=60)
    assert bad.status_code == 422 and "alwayson_scripts.Kontext.args.image" in bad.text, bad.text


def test_forge_vae_text_encoder_choice_through_the_api(flux_server):
    """Forge's API: `sd-modules` lists the files, `forge_additional_modules` chooses (options: remembered for
    the checkpoint; override_settings: one request), the infotext's `Module 1` pastes the choice back."""
    url = flux_server.url
    listed = httpx.get(url + "/sdapi/v1/sd-modules", timeout=30).json()
    assert listed == [{"model_name": "other_ae.safetensors", "filename": "VAE/other_ae.safetensors"}]
    body = {"prompt": "a boat", "steps": 2, "width": 64, "height": 64, "seed": 4, "sampler_name": "Euler",
            "cfg_scale": 1}
    own = httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=300)
    assert own.status_code == 200, own.text
    assert "Module 1" not in json.loads(own.json()["info"])["infotexts"][0]
    bad = httpx.post(url + "/sdapi/v1/options", json={"forge_additional_modules": ["nope.safetensors"]}, timeout=30)
    assert bad.status_code == 422 and "forge_additional_modules" in bad.text and "other_ae" in bad.text
    set_it = httpx.post(url + "/sdapi/v1/options", json={"forge_additional_modules": ["/x/models/VAE/other_ae.safetensors"]},
                        timeout=30)
    assert set_it.status_code == 200, set_it.text
    try:
        options = httpx.get(url + "/sdapi/v1/options", timeout=30).json()
        assert options["forge_additional_modules"] == ["VAE/other_ae.safetensors"]
        chosen = httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=300).json()
        text = json.loads(chosen["info"])["infotexts"][0]
        assert "Module 1: other_ae" in text
        assert np.abs(_image(chosen) - _image(own.json())).max() > 0  # another VAE decodes another image
        # one request without the choice gives the folder's own VAE back
        plain = httpx.post(url + "/sdapi/v1/txt2img", timeout=300,
                           json=dict(body, override_settings={"forge_additional_modules": []})).json()
        assert np.array_equal(_image(plain), _image(own.json()))
    finally:
        httpx.post(url + "/sdapi/v1/options", json={"forge_additional_modules": []}, timeout=30)
    assert httpx.get(url + "/sdapi/v1/options", timeout=30).json()["forge_additional_modules"] == []
    pasted = httpx.post(url + "/sdapi/v1/txt2img", json={"infotext": text}, timeout=300)
    assert pasted.status_code == 200, pasted.text
    assert np.array_equal(_image(pasted.json()), _image(chosen))
    wrong = httpx.post(url + "/sdapi/v1/txt2img", timeout=60,
                       json=dict(body, override_settings={"forge_additional_modules": ["missing"]}))
    assert wrong.status_code == 422 and "override_settings.forge_additional_modules" in wrong.text
