"""IP-Adapter FaceID / FaceID Plus v2 units on the tiny SD 1.x and SDXL models, with a real insightface run.

The adapter files are written here as the published h94/IP-Adapter-FaceID `.bin` pickles:
{"image_proj": {...}, "ip_adapter": {...}} with

    FaceID       image_proj.proj.0 (1024 <- 512) / proj.2 (4 x cross <- 1024) / norm (LayerNorm(cross))
    Plus v2      the same, plus perceiver_resampler.{proj_in, layers.0-3.{0.norm1, 0.norm2, 0.to_q,
                 0.to_kv, 0.to_out, 1.0, 1.1, 1.3}, proj_out, norm_out} over the CLIP hidden states
    both         ip_adapter.N.to_k_ip / to_v_ip for the cross-attention layers (odd N) and the LoRA
                 ip_adapter.N.to_{q,k,v,out}_lora.{down,up} for every attention layer

insightface runs its own code on the tiny ONNX pack of tests/identity_helpers.py.
"""
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest
from webui.features.controlnet.choices import is_ip_adapter_module, model_names, module_names
from webui.features.ip_adapter import (IPAdapterApplication, IPAdapterPatch, read_adapter, write_test_adapter,
                                       write_test_encoder)

from conftest import make_easel
from identity_helpers import face_card, write_insightface_pack

PACK = "antelopev2"
CLIP_HIDDEN = 32  # the tiny vision encoder's hidden size (the Plus perceiver reads it)
LORA_RANK = 4
NAMES = {("tiny-sd1", "faceid"): "ip-adapter-faceid_tiny_sd15", ("tiny-sdxl", "faceid"): "ip-adapter-faceid_tiny_sdxl",
         ("tiny-sd1", "plusv2"): "ip-adapter-faceid-plusv2_tiny_sd15",
         ("tiny-sdxl", "plusv2"): "ip-adapter-faceid-plusv2_tiny_sdxl"}


# ---- writers in the published layout ------------------------------------------------------------------


def _hidden_size(unet, name: str) -> int:
    channels = unet.config.block_out_channels
    if name.startswith("mid_block"):
        return channels[-1]
    if name.startswith("up_blocks"):
        return list(reversed(channels))[int(name[len("up_blocks.")])]
    return channels[int(name[len("down_blocks.")])]


def _ip_layers(unet, seed: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """to_k_ip/to_v_ip (numbered as published) and the FaceID LoRA on every attention layer."""
    with tempfile.TemporaryDirectory() as folder:
        path = write_test_adapter(Path(folder) / "scratch.safetensors", unet, 512, seed=seed)
        scratch = {k.removeprefix("ip_adapter."): v for k, v in load_file(str(path)).items()
                   if k.startswith("ip_adapter.")}
    r = lambda *shape: torch.randn(*shape, generator=generator) * 0.1  # noqa: E731
    cross = unet.config.cross_attention_dim
    for key_id, name in enumerate(unet.attn_processors):
        hidden = _hidden_size(unet, name)
        context = hidden if name.endswith("attn1.processor") else cross
        for proj, width_in, width_out in (("to_q", hidden, hidden), ("to_k", context, hidden),
                                          ("to_v", context, hidden), ("to_out", hidden, hidden)):
            scratch[f"{key_id}.{proj}_lora.down.weight"] = r(LORA_RANK, width_in)
            scratch[f"{key_id}.{proj}_lora.up.weight"] = r(width_out, LORA_RANK)
    return scratch


def write_faceid(path, unet, variant: str, seed: int = 0):
    """ip-adapter-faceid_*.bin (variant "faceid") or ip-adapter-faceid-plusv2_*.bin ("plusv2")."""
    generator = torch.Generator().manual_seed(seed)
    r = lambda *shape, scale=1.0: torch.randn(*shape, generator=generator) * scale / math.sqrt(shape[-1])  # noqa
    cross, tokens = unet.config.cross_attention_dim, 4
    proj = {"proj.0.weight": r(1024, 512, scale=4.0), "proj.0.bias": 0.1 * torch.randn(1024, generator=generator),
            "proj.2.weight": r(tokens * cross, 1024),
            "proj.2.bias": 0.1 * torch.randn(tokens * cross, generator=generator),
            "norm.weight": 1 + 0.1 * torch.randn(cross, generator=generator),
            "norm.bias": 0.1 * torch.randn(cross, generator=generator)}
    if variant == "plusv2":
        p = "perceiver_resampler."
        dim, inner = cross, 64  # published: dim = cross-attention width, 64-wide heads

        def norm(name: str, width: int) -> None:
            proj[f"{name}.weight"] = 1 + 0.1 * torch.randn(width, generator=generator)
            proj[f"{name}.bias"] = 0.1 * torch.randn(width, generator=generator)

        proj[p + "proj_in.weight"] = r(dim, CLIP_HIDDEN)
        proj[p + "proj_in.bias"] = 0.1 * torch.randn(dim, generator=generator)
        for n in range(4):
            layer = f"{p}layers.{n}."
            norm(layer + "0.norm1", dim)
            norm(layer + "0.norm2", dim)
            proj[layer + "0.to_q.weight"] = r(inner, dim, scale=2.0)
            proj[layer + "0.to_kv.weight"] = r(2 * inner, dim, scale=2.0)
            proj[layer + "0.to_out.weight"] = r(dim, inner)
            norm(layer + "1.0", dim)
            proj[layer + "1.1.weight"] = r(4 * dim, dim)
            proj[layer + "1.3.weight"] = r(dim, 4 * dim)
        proj[p + "proj_out.weight"] = r(cross, dim)
        proj[p + "proj_out.bias"] = 0.1 * torch.randn(cross, generator=generator)
        norm(p + "norm_out", cross)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"image_proj": proj, "ip_adapter": _ip_layers(unet, seed, generator)}, path)
    return path


# ---- an independent reading of the projections ---------------------------------------------------------


def _ln(x, s, name):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * s[f"{name}.weight"] + s[f"{name}.bias"]


def faceid_reference(state, face, clip=None, shortcut=False):
    """Face tokens from the file's `image_proj` tensors in float64, following the published models."""
    s = {k: v.double() for k, v in state.items()}
    cross = s["norm.weight"].shape[0]
    hidden = torch.nn.functional.gelu(face.double() @ s["proj.0.weight"].T + s["proj.0.bias"])
    tokens = _ln((hidden @ s["proj.2.weight"].T + s["proj.2.bias"]).reshape(face.shape[0], -1, cross), s, "norm")
    if clip is None:
        return tokens
    p = "perceiver_resampler."
    x = clip.double() @ s[p + "proj_in.weight"].T + s[p + "proj_in.bias"]
    latents = tokens
    for n in range(4):
        layer = f"{p}layers.{n}."
        image, queries = _ln(x, s, layer + "0.norm1"), _ln(latents, s, layer + "0.norm2")
        q = queries @ s[layer + "0.to_q.weight"].T
        k, v = (torch.cat([image, queries], dim=1) @ s[layer + "0.to_kv.weight"].T).chunk(2, dim=-1)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(64), dim=-1)  # one 64-wide head
        latents = (weights @ v) @ s[layer + "0.to_out.weight"].T + latents
        ff = torch.nn.functional.gelu(_ln(latents, s, layer + "1.0") @ s[layer + "1.1.weight"].T)
        latents = ff @ s[layer + "1.3.weight"].T + latents
    out = _ln(latents @ s[p + "proj_out.weight"].T + s[p + "proj_out.bias"], s, p + "norm_out")
    return tokens + out if shortcut else out


# ---- fixtures and helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    app = make_easel(tmp_path_factory.mktemp("faceid"), tiny_ckpt_dir)
    write_insightface_pack(app.paths.model_dir("insightface") / PACK)
    write_test_encoder(app.paths.model_dir("clip_vision") / "tiny_vit.safetensors", projection_dim=24,
                       hidden_size=CLIP_HIDDEN)
    for (checkpoint, variant), name in NAMES.items():
        unet = app.models.get(f"{checkpoint}.safetensors").unet
        write_faceid(app.paths.model_dir("ipadapter") / f"{name}.bin", unet, variant, seed=len(name))
    yield app
    app.close()


def one_face(cx=128):
    return face_card((256, 256), [(cx, 128, 60)])


def unit(**kw):
    base = {"enabled": True, "module": "ip-adapter_face_id", "model": NAMES["tiny-sd1", "faceid"], "weight": 1.0,
            "image": one_face()}
    base.update(kw)
    return base


def generate(app, units=None, **kw):
    base = dict(prompt="a portrait", steps=3, width=64, height=64, seed=5, sampler_name="Euler",
                checkpoint="tiny-sd1", save_images=False,
                alwayson_scripts={"controlnet": {"args": units}} if units else {})
    base.update(kw)
    return app.txt2img(GenerationRequest(**base))


def failure(app, units, **kw):
    job = app.submit(GenerationRequest(prompt="x", steps=2, width=64, height=64, checkpoint="tiny-sd1",
                                       alwayson_scripts={"controlnet": {"args": units}}, **kw))
    job.wait(120)
    assert job.error is not None
    return str(job.error)


def px(result):
    return np.asarray(result.images[0]).astype(np.int16)


# ---- tests -----------------------------------------------------------------------------------------------------


def test_modules_are_listed_and_pick_faceid_files_first(app):
    assert {"ip-adapter_face_id", "ip-adapter_face_id_plus"} <= set(module_names())
    assert is_ip_adapter_module("ip-adapter_face_id_plus")
    sd1 = app.models.get("tiny-sd1.safetensors")
    write_test_adapter(app.paths.model_dir("ipadapter") / "ip-adapter_a_plain_sd15.safetensors", sd1.unet, 24)
    try:
        names = model_names(app.controlnets, app.ip_adapters, dict(sd1.configs["unet"]),
                            "ip-adapter_face_id")
        assert names[0] == "None" and set(names[1:3]) == {NAMES["tiny-sd1", "faceid"], NAMES["tiny-sd1", "plusv2"]}
        assert names[3:] == ["ip-adapter_a_plain_sd15"]  # SDXL files are not listed for an SD 1.x model
    finally:
        (app.paths.model_dir("ipadapter") / "ip-adapter_a_plain_sd15.safetensors").unlink()


@pytest.mark.parametrize("checkpoint", ["tiny-sd1", "tiny-sdxl"])
def test_published_layouts_load_as_the_published_projections(app, checkpoint):
    model = app.models.get(f"{checkpoint}.safetensors")
    faceid = read_adapter(app.paths.model_dir("ipadapter") / f"{NAMES[checkpoint, 'faceid']}.bin")
    plus = read_adapter(app.paths.model_dir("ipadapter") / f"{NAMES[checkpoint, 'plusv2']}.bin")
    assert faceid.variant == "faceid" and not faceid.uses_hidden_states and faceid.embedding_width == 512
    assert plus.variant == "faceid-plusv2" and plus.uses_hidden_states and plus.embedding_width == CLIP_HIDDEN
    assert faceid.cross_attention_width == model.unet.config.cross_attention_dim
    assert any("to_q_lora" in k for k in faceid.state["ip_adapter"])  # the published file's LoRA is present

    generator = torch.Generator().manual_seed(1)
    face = torch.randn(2, 1, 512, generator=generator)
    clip = torch.randn(2, 1, 7, CLIP_HIDDEN, generator=generator)
    empty = torch.zeros(1, 1, 512)
    apps = [IPAdapterApplication(faceid, empty, empty, 1.0, 0.0, 1.0),
            IPAdapterApplication(plus, empty, empty, 1.0, 0.0, 1.0, clip, clip, shortcut=True)]
    with IPAdapterPatch(model.unet, apps):
        layers = model.unet.encoder_hid_proj.image_projection_layers
        with torch.no_grad():
            got_faceid = layers[0](face[:, 0])
            layers[1].clip_embeds = clip
            got_plus = layers[1](face[:, 0])
    torch.testing.assert_close(got_faceid.double(), faceid_reference(faceid.state["image_proj"], face[:, 0]),
                               rtol=1e-4, atol=1e-4)
    expected = faceid_reference(plus.state["image_proj"], face[:, 0], clip[:, 0], shortcut=True)
    torch.testing.assert_close(got_plus.double(), expected, rtol=1e-4, atol=1e-4)
    without = faceid_reference(plus.state["image_proj"], face[:, 0], clip[:, 0], shortcut=False)
    assert (expected - without).abs().mean() > 0.1  # the v2 shortcut matters
    assert model.unet.encoder_hid_proj is None


@pytest.mark.parametrize("checkpoint", ["tiny-sd1", "tiny-sdxl"])
@pytest.mark.parametrize("variant, module", [("faceid", "ip-adapter_face_id"), ("plusv2", "ip-adapter_face_id_plus")])
def test_face_unit_steers_weight_zero_is_plain_and_unet_is_restored(app, checkpoint, variant, module):
    model = app.models.get(f"{checkpoint}.safetensors")
    before = {k: type(v).__name__ for k, v in model.unet.attn_processors.items()}
    plain = px(generate(app, checkpoint=checkpoint))
    face_unit = unit(model=NAMES[checkpoint, variant], module=module)
    result = generate(app, [face_unit], checkpoint=checkpoint)
    steered = px(result)
    assert np.abs(steered - plain).mean() > 0.5
    assert np.array_equal(px(generate(app, [dict(face_unit, weight=0.0)], checkpoint=checkpoint)), plain)
    assert {k: type(v).__name__ for k, v in model.unet.attn_processors.items()} == before
    assert model.unet.encoder_hid_proj is None
    assert np.array_equal(px(generate(app, checkpoint=checkpoint)), plain)
    text = parse_infotext(result.infotexts[0]).params["ControlNet 0"]
    name = NAMES[checkpoint, variant]
    title = app.ip_adapters.titles()
    assert f"Module: {module}" in text and f"Model: {name} [{dict(title)[name]}]" in text
    assert not result.warnings or not any("faces found" in w for w in result.warnings)


def test_the_face_matters(app):
    """Another face (here: another place and size on the card) gives another embedding and image."""
    first = px(generate(app, [unit()]))
    other = px(generate(app, [unit(image=face_card((256, 256), [(100, 110, 45)]))]))
    assert np.abs(first - other).mean() > 0.1


def test_several_faces_use_the_largest_with_a_warning(app):
    card = face_card((640, 640), [(160, 320, 40), (440, 320, 80)])
    result = generate(app, [unit(image=card)])
    assert "2 faces found in the ControlNet unit 0 image; used the largest." in result.warnings


def test_no_face_names_the_unit(app):
    flat = Image.new("RGB", (200, 200), (128, 128, 128))
    message = failure(app, [unit(enabled=False), unit(image=flat, module="ip-adapter_face_id_plus",
                                                       model=NAMES["tiny-sd1", "plusv2"])])
    assert "No face found in the ControlNet unit 1 image" in message


def test_analyzer_is_the_identity_tabs(app):
    generate(app, [unit()])
    analyzer = app.identity.analyzer()
    assert app.ip_adapters.faces() is analyzer and analyzer._app is not None  # loaded once, shared


def test_missing_insightface_pack_is_a_clear_message(tmp_path, tiny_ckpt_dir):
    app = make_easel(tmp_path, tiny_ckpt_dir)
    try:
        unet = app.models.get("tiny-sd1.safetensors").unet
        write_faceid(app.paths.model_dir("ipadapter") / "ip-adapter-faceid_tiny_sd15.bin", unet, "faceid")
        message = failure(app, [unit(model="ip-adapter-faceid_tiny_sd15")])
        folder = app.paths.model_dir("insightface") / PACK
        assert message == (f"ControlNet unit 0: FaceID adapter ip-adapter-faceid_tiny_sd15 needs insightface models "
                           f"({PACK} pack: detection and recognition .onnx files): {folder}/")
    finally:
        app.close()


def test_plus_unit_with_a_batch_of_two_and_hires_fix(app):
    """The face crop's CLIP states follow the batch layout (2 images x CFG halves), in both hires passes."""
    plus = unit(model=NAMES["tiny-sd1", "plusv2"], module="ip-adapter_face_id_plus")
    hires = dict(batch_size=2, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", hr_second_pass_steps=2,
                 denoising_strength=0.5)
    plain = generate(app, **hires)
    steered = generate(app, [plus], **hires)
    assert len(steered.images) == 2 and steered.images[0].size == (96, 96)
    for a, b in zip(plain.images, steered.images):
        assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean() > 0.5


def test_an_unknown_projection_is_refused_by_unit_and_file(app):
    path = app.paths.model_dir("ipadapter") / "ip-adapter_odd_sd15.safetensors"
    save_file({"image_proj.mystery.weight": torch.zeros(2, 2), "ip_adapter.1.to_k_ip.weight": torch.zeros(32, 32)},
              str(path))
    try:
        message = failure(app, [unit(model="ip-adapter_odd_sd15", module="ip-adapter_clip_h")])
        assert message.startswith("ControlNet unit 0: ip-adapter_odd_sd15 has an IP-Adapter image projection")
        assert "mystery.weight" in message
    finally:
        path.unlink()
