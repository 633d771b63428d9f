"""IP-Adapter units on the tiny models: published key layout, exact no-op at weight 0, clean restore."""
import numpy as np
import pytest

from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest
from webui.features.ip_adapter import read_adapter, write_test_adapter, write_test_encoder

from conftest import make_easel
from test_controlnet import picture


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    app = make_easel(tmp_path_factory.mktemp("ip"), tiny_ckpt_dir)
    adapters = app.paths.model_dir("ipadapter")
    sd1 = app.models.get("tiny-sd1.safetensors")
    write_test_adapter(adapters / "ip-adapter_tiny_sd15.safetensors", sd1.unet, embedding_width=24, seed=1)
    write_test_encoder(app.paths.model_dir("clip_vision") / "tiny_vit.safetensors", projection_dim=24)
    sdxl = app.models.get("tiny-sdxl.safetensors")
    write_test_adapter(adapters / "ip-adapter_tiny_sdxl.safetensors", sdxl.unet, embedding_width=24, seed=2)
    yield app
    app.close()


def ip_unit(**kw):
    base = {"enabled": True, "module": "ip-adapter_clip_h", "model": "ip-adapter_tiny_sd15", "weight": 1.0,
            "image": picture()}
    base.update(kw)
    return base


def generate(app, units=None, **kw):
    base = dict(prompt="a ball", steps=3, width=64, height=64, seed=5, sampler_name="Euler", checkpoint="tiny-sd1",
                save_images=False, alwayson_scripts={"controlnet": {"args": units}} if units else {})
    base.update(kw)
    return app.txt2img(GenerationRequest(**base))


def px(result):
    return np.asarray(result.images[0]).astype(np.int16)


def test_adapter_file_is_read_in_the_published_layout(app):
    adapter = read_adapter(app.paths.model_dir("ipadapter") / "ip-adapter_tiny_sd15.safetensors")
    sd1 = app.models.get("tiny-sd1.safetensors")
    cross_layers = [n for n in sd1.unet.attn_processors if n.endswith("attn2.processor")]
    # numbered like the published files: odd indices among all attention layers
    assert sorted(int(k.split(".")[0]) for k in adapter.state["ip_adapter"] if k.endswith("to_k_ip.weight")) == \
        list(range(1, 2 * len(cross_layers), 2))
    assert adapter.embedding_width == 24 and not adapter.uses_hidden_states
    assert app.ip_adapters.names_for(dict(sd1.configs["unet"])) == ["ip-adapter_tiny_sd15"]


def test_reference_image_steers_and_weight_zero_is_no_adapter(app):
    plain = px(generate(app))
    steered = px(generate(app, [ip_unit()]))
    assert np.abs(steered - plain).mean() > 0.5
    assert np.array_equal(px(generate(app, [ip_unit(weight=0.0)])), plain)  # exactly, not within rounding
    other = px(generate(app, [ip_unit(image=picture(48, 64).rotate(90))]))
    assert np.abs(other - steered).mean() > 0.1


def test_unet_is_restored_after_the_request(app):
    sd1 = app.models.get("tiny-sd1.safetensors")
    before = {k: type(v).__name__ for k, v in sd1.unet.attn_processors.items()}
    plain = px(generate(app))
    generate(app, [ip_unit()])
    assert {k: type(v).__name__ for k, v in sd1.unet.attn_processors.items()} == before
    assert sd1.unet.encoder_hid_proj is None
    assert np.array_equal(px(generate(app)), plain)


def test_sdxl_adapter_and_infotext(app):
    plain = px(generate(app, checkpoint="tiny-sdxl"))
    result = generate(app, [ip_unit(model="ip-adapter_tiny_sdxl", module="ip-adapter_clip_g")], checkpoint="tiny-sdxl")
    assert np.abs(px(result) - plain).mean() > 0.5
    text = parse_infotext(result.infotexts[0]).params["ControlNet 0"]
    assert "Module: ip-adapter_clip_g" in text and "Model: ip-adapter_tiny_sdxl" in text


def test_adapter_for_another_family_is_refused_by_name(app):
    job = app.submit(GenerationRequest(prompt="x", steps=2, width=64, height=64, checkpoint="tiny-sd1",
                                       alwayson_scripts={"controlnet": {"args": [ip_unit(model="ip-adapter_tiny_sdxl")]}}))
    job.wait(60)
    assert "another model family" in str(job.error) and "unit 0" in str(job.error)


def test_full_face_adapter_reads_hidden_states(app):
    adapters = app.paths.model_dir("ipadapter")
    sd1 = app.models.get("tiny-sd1.safetensors")
    path = write_test_adapter(adapters / "ip-adapter-full-face_tiny.safetensors", sd1.unet, embedding_width=32,
                              seed=3, variant="full-face")
    adapter = read_adapter(path)
    assert adapter.variant == "full-face" and adapter.uses_hidden_states and adapter.embedding_width == 32
    plain = px(generate(app))
    face = ip_unit(model="ip-adapter-full-face_tiny")
    assert np.abs(px(generate(app, [face])) - plain).mean() > 0.5
    assert np.array_equal(px(generate(app, [dict(face, weight=0.0)])), plain)


# ---- IP-Adapter Plus: the published Resampler layout ----------------------------------------------


@pytest.mark.parametrize("checkpoint, hidden", [("tiny-sd1", None), ("tiny-sdxl", 48)])
def test_plus_adapter_loads_the_published_resampler_layout(app, checkpoint, hidden):
    """SD 1.5 plus has Resampler width = cross-attention width; SDXL plus projects 1280 -> 2048 (here 48 -> 64)."""
    import torch
    from safetensors.torch import load_file

    from webui.features.ip_adapter import IPAdapterApplication, IPAdapterPatch

    from adapter_writers import resampler_reference, write_ip_adapter_plus

    model = app.models.get(f"{checkpoint}.safetensors")
    name = f"ip-adapter-plus_{checkpoint}"
    path = write_ip_adapter_plus(app.paths.model_dir("ipadapter") / f"{name}.safetensors", model.unet,
                                 embedding_width=32, seed=4, hidden=hidden)
    flat = load_file(str(path))
    width = hidden or model.unet.config.cross_attention_dim
    assert flat["image_proj.latents"].shape == (1, 16, width)
    assert flat["image_proj.layers.3.0.to_kv.weight"].shape == (128, width)
    assert flat["image_proj.layers.0.1.3.weight"].shape == (width, 4 * width)
    assert not any(k.startswith("image_proj.layers.4.") for k in flat)
    adapter = read_adapter(path)
    assert adapter.variant == "plus" and adapter.uses_hidden_states and adapter.embedding_width == 32
    assert name in app.ip_adapters.names_for(dict(model.configs["unet"]))

    # the loaded projection is the published Resampler, computed independently from the file's tensors
    features = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    empty = torch.zeros(1, 1, 1)
    before = {k: type(v).__name__ for k, v in model.unet.attn_processors.items()}
    with IPAdapterPatch(model.unet, [IPAdapterApplication(adapter, empty, empty, 1.0, 0.0, 1.0)]):
        projected = model.unet.encoder_hid_proj.image_projection_layers[0](features)
    torch.testing.assert_close(projected.double(), resampler_reference(flat, features), rtol=1e-4, atol=1e-4)
    assert {k: type(v).__name__ for k, v in model.unet.attn_processors.items()} == before
    assert model.unet.encoder_hid_proj is None

    # in a generation: it steers the image, weight 0 is the image without it, and the UNet is left as it was
    module = "ip-adapter_clip_h" if checkpoint == "tiny-sd1" else "ip-adapter_clip_g"
    plain = px(generate(app, checkpoint=checkpoint))
    plus = ip_unit(model=name, module=module)
    steered = px(generate(app, [plus], checkpoint=checkpoint))
    assert np.abs(steered - plain).mean() > 0.5
    other = px(generate(app, [dict(plus, image=picture(48, 64).rotate(90))], checkpoint=checkpoint))
    assert np.abs(other - steered).mean() > 0.1
    assert np.array_equal(px(generate(app, [dict(plus, weight=0.0)], checkpoint=checkpoint)), plain)
    assert np.array_equal(px(generate(app, checkpoint=checkpoint)), plain)
