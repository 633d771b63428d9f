"""ControlNet units on the tiny models: layouts, exact no-op at weight 0, step ranges, preprocessors."""
import numpy as np
import pytest
import torch
from PIL import Image

from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, ValidationError
from webui.features.controlnet.apply import pixel_perfect_resolution
from webui.features.controlnet.models import build_controlnet, read_weights, write_controlnet
from webui.features.controlnet.preprocessors import PreprocessorError, canny, run_preprocessor
from webui.features.controlnet.units import parse_infotext_unit
from webui.model_manager.hashing import legacy_short_hash

from conftest import make_easel


def picture(w=64, h=64):
    yy, xx = np.mgrid[0:h, 0:w]
    array = np.zeros((h, w, 3), np.uint8)
    array[(xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(w, h) / 3) ** 2] = 255
    array[..., 1] = (xx * 255 // w).astype(np.uint8)
    return Image.fromarray(array)


@pytest.fixture
def app(tmp_path, tiny_ckpt_dir):
    app = make_easel(tmp_path, tiny_ckpt_dir)
    folder = app.paths.model_dir("controlnet")
    sd1 = app.models.get("tiny-sd1.safetensors")
    write_controlnet(folder / "control_canny_tiny.safetensors", sd1.unet, "original", seed=1)
    write_controlnet(folder / "control_depth_tiny.safetensors", sd1.unet, "diffusers", seed=2)
    sdxl = app.models.get("tiny-sdxl.safetensors")
    write_controlnet(folder / "xl_canny_tiny.safetensors", sdxl.unet, "diffusers", seed=3)
    yield app
    app.close()


def unit(**kw):
    base = {"enabled": True, "module": "canny", "model": "control_canny_tiny", "weight": 1.0, "image": picture(),
            "resize_mode": "Crop and Resize", "processor_res": 64, "threshold_a": 100, "threshold_b": 200,
            "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced", "pixel_perfect": False}
    base.update(kw)
    return base


def generate(app, units=None, **kw):
    base = dict(prompt="a ball", steps=4, width=64, height=64, seed=3, sampler_name="Euler", checkpoint="tiny-sd1",
                save_images=False, alwayson_scripts={"controlnet": {"args": units}} if units is not None else {})
    base.update(kw)
    return app.txt2img(GenerationRequest(**base))


def px(result):
    return np.asarray(result.images[0]).astype(np.int16)


def test_original_and_diffusers_layouts_load_to_the_same_model(app):
    sd1 = app.models.get("tiny-sd1.safetensors")
    folder = app.paths.model_dir("controlnet")
    a = write_controlnet(folder / "a.safetensors", sd1.unet, "original", seed=9)
    b = write_controlnet(folder / "b.safetensors", sd1.unet, "diffusers", seed=9)
    first = build_controlnet(read_weights(a, False), dict(sd1.configs["unet"]), torch.device("cpu"), torch.float32)
    second = build_controlnet(read_weights(b, False), dict(sd1.configs["unet"]), torch.device("cpu"), torch.float32)
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    assert "control_model.input_hint_block.14.weight" in read_weights(a, False)


def test_model_list_matches_the_loaded_architecture(app):
    sd1 = app.models.get("tiny-sd1.safetensors")
    sdxl = app.models.get("tiny-sdxl.safetensors")
    assert app.controlnets.names_for(dict(sd1.configs["unet"])) == ["control_canny_tiny", "control_depth_tiny"]
    assert app.controlnets.names_for(dict(sdxl.configs["unet"])) == ["xl_canny_tiny"]


def test_weight_zero_or_disabled_is_exactly_no_control(app):
    plain = generate(app)
    assert np.array_equal(px(plain), px(generate(app, [unit(weight=0.0)])))
    assert np.array_equal(px(plain), px(generate(app, [unit(enabled=False)])))
    controlled = generate(app, [unit()])
    assert np.abs(px(plain) - px(controlled)).mean() > 1


def _calls(app, units, steps=6):
    model = app.controlnets.load("control_canny_tiny", app.models.get("tiny-sd1.safetensors"))
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(1))
    try:
        app.txt2img(GenerationRequest(prompt="a ball", steps=steps, width=64, height=64, seed=3, sampler_name="Euler",
                                      checkpoint="tiny-sd1", save_images=False,
                                      alwayson_scripts={"controlnet": {"args": units}}))
    finally:
        handle.remove()
    return len(seen)


def test_start_and_end_steps_are_respected(app):
    assert _calls(app, [unit()], steps=6) == 6
    # active while step/6 in [0.5, 1]: steps 3, 4, 5
    assert _calls(app, [unit(guidance_start=0.5)], steps=6) == 3
    # steps 0, 1 (fractions 0 and 0.1667 <= 0.2)
    assert _calls(app, [unit(guidance_end=0.2)], steps=6) == 2


def test_two_units_differ_from_either_alone(app):
    a = px(generate(app, [unit()]))
    b = px(generate(app, [unit(model="control_depth_tiny", module="invert")]))
    both = px(generate(app, [unit(), unit(model="control_depth_tiny", module="invert")]))
    assert np.abs(both - a).mean() > 0.5 and np.abs(both - b).mean() > 0.5


@pytest.mark.parametrize("mode", ["My prompt is more important", "ControlNet is more important"])
def test_control_modes_change_the_result(app, mode):
    balanced = px(generate(app, [unit()]))
    assert np.abs(px(generate(app, [unit(control_mode=mode)])) - balanced).mean() > 0.2


def test_sdxl_controlnet(app):
    plain = generate(app, checkpoint="tiny-sdxl")
    controlled = generate(app, [unit(model="xl_canny_tiny")], checkpoint="tiny-sdxl")
    assert np.abs(px(plain) - px(controlled)).mean() > 0.5


@pytest.mark.parametrize("checkpoint", ["tiny-sd1", "tiny-sdxl"])
def test_original_layout_file_loads_and_generates_like_diffusers_layout(app, checkpoint):
    """Single files in the original layout (SGM keys under control_model., as published single-file
    ControlNets for SD 1.x and SDXL are) and in diffusers' layout load to the same model and image."""
    from safetensors import safe_open

    model = app.models.get(f"{checkpoint}.safetensors")
    folder = app.paths.model_dir("controlnet")
    original = write_controlnet(folder / f"sgm_{checkpoint}.safetensors", model.unet, "original", seed=11)
    write_controlnet(folder / f"hf_{checkpoint}.safetensors", model.unet, "diffusers", seed=11)
    with safe_open(str(original), framework="pt") as handle:
        keys = set(handle.keys())
    assert all(k.startswith("control_model.") for k in keys)
    assert {"control_model.input_hint_block.0.weight", "control_model.time_embed.0.weight",
            "control_model.middle_block_out.0.weight", "control_model.zero_convs.0.0.weight"} <= keys
    if checkpoint == "tiny-sdxl":  # SDXL: size/pooled-text embedding and 2-deep transformers at the second level
        assert "control_model.label_emb.0.0.weight" in keys
        assert any(k.startswith("control_model.input_blocks.4.1.transformer_blocks.1.") for k in keys)
    else:
        assert not any("label_emb" in k for k in keys)
    library = app.controlnets
    other = "tiny-sd1" if checkpoint == "tiny-sdxl" else "tiny-sdxl"
    assert f"sgm_{checkpoint}" in library.names_for(dict(model.configs["unet"]))
    assert f"sgm_{checkpoint}" not in library.names_for(dict(app.models.get(f"{other}.safetensors").configs["unet"]))
    a, b = library.load(f"sgm_{checkpoint}", model), library.load(f"hf_{checkpoint}", model)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())

    plain = px(generate(app, checkpoint=checkpoint))
    controlled = px(generate(app, [unit(model=f"sgm_{checkpoint}")], checkpoint=checkpoint))
    assert np.abs(controlled - plain).mean() > 0.5
    assert np.array_equal(px(generate(app, [unit(model=f"hf_{checkpoint}")], checkpoint=checkpoint)), controlled)
    assert np.array_equal(px(generate(app, [unit(model=f"sgm_{checkpoint}", weight=0.0)], checkpoint=checkpoint)),
                          plain)


def test_img2img_uses_the_input_image_when_the_unit_has_none(app):
    result = app.img2img(GenerationRequest(mode="img2img", init_images=[picture()], prompt="x", steps=4, width=64,
                                           height=64, seed=1, checkpoint="tiny-sd1", save_images=False,
                                           alwayson_scripts={"controlnet": {"args": [unit(image=None)]}}))
    assert "ControlNet 0" in parse_infotext(result.infotexts[0]).params


def test_infotext_round_trip(app):
    result = generate(app, [unit(weight=0.7, guidance_end=0.8, control_mode="ControlNet is more important")])
    text = parse_infotext(result.infotexts[0]).params["ControlNet 0"]
    short_hash = legacy_short_hash(app.paths.model_dir("controlnet") / "control_canny_tiny.safetensors")
    assert parse_infotext_unit(text) == {"module": "canny", "model": f"control_canny_tiny [{short_hash}]", "weight": 0.7,
                                         "resize_mode": "Crop and Resize", "processor_res": 64, "threshold_a": 100.0,
                                         "threshold_b": 200.0, "guidance_start": 0.0, "guidance_end": 0.8,
                                         "pixel_perfect": False, "control_mode": "ControlNet is more important"}


def test_bad_units_name_the_field(app):
    with pytest.raises(ValidationError) as caught:
        app.submit(GenerationRequest(prompt="x", alwayson_scripts={"controlnet": {"args": [
            unit(weight=7), unit(control_mode="Loud"), unit(image="not an image")]}}))
    fields = {e.field for e in caught.value.errors}
    assert fields == {"alwayson_scripts.controlnet.args[0].weight", "alwayson_scripts.controlnet.args[1].control_mode",
                      "alwayson_scripts.controlnet.args[2].image"}
    with pytest.raises(ValidationError) as caught:  # a missing model is refused before queueing, on its field
        app.submit(GenerationRequest(prompt="x", steps=2, width=64, height=64, checkpoint="tiny-sd1",
                                     alwayson_scripts={"controlnet": {"args": [unit(model="missing")]}}))
    [error] = caught.value.errors
    assert error.field == "alwayson_scripts.controlnet.args[0].model" and "'missing' not found" in error.message


# ---- preprocessors --------------------------------------------------------------------------------


def test_canny_equals_opencv_with_the_same_thresholds(tmp_path):
    import cv2

    image = np.asarray(picture(96, 80))
    ours = run_preprocessor("canny", image, 80, 50, 150, tmp_path)
    assert np.array_equal(ours[..., 0], cv2.Canny(image, 50, 150))
    assert np.array_equal(canny(image, 80, 50, 150), ours)


def test_pixel_perfect_resolution():
    image = Image.new("RGB", (300, 200))
    assert pixel_perfect_resolution(image, 768, 512, 0) == 512        # fills: larger scale
    assert pixel_perfect_resolution(image, 512, 512, 1) == 512        # crop: larger scale
    assert pixel_perfect_resolution(image, 512, 512, 2) == 341        # fit inside: smaller scale


def test_preprocessor_with_missing_weights_names_the_file(tmp_path):
    with pytest.raises(PreprocessorError, match="ControlNetHED.pth") as caught:
        run_preprocessor("softedge_hed", np.asarray(picture()), 64, None, None, tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_weight_based_preprocessor_loads_annotator_file_offline(tmp_path):
    from controlnet_aux.hed import ControlNetHED_Apache2

    torch.manual_seed(0)
    torch.save(ControlNetHED_Apache2().state_dict(), tmp_path / "ControlNetHED.pth")
    result = run_preprocessor("softedge_hed", np.asarray(picture()), 64, None, None, tmp_path)
    assert result.shape == (64, 64, 3) and result.dtype == np.uint8


def test_unknown_preprocessor():
    with pytest.raises(PreprocessorError, match="unknown preprocessor"):
        run_preprocessor("wobble", np.asarray(picture()), 64, None, None, None)


# ---- UI glue: unit controls <-> request fields <-> infotext ----------------------------------------


def test_ui_units_become_request_units_and_paste_back(app):
    from webui.ui.controlnet_ui import controlnet_request_fields, pasted_unit_fields

    fields = {"controlnet::0::enabled": False, "controlnet::0::module": "none",
              "controlnet::1::enabled": True, "controlnet::1::module": "canny", "controlnet::1::image": picture(),
              "controlnet::1::model": "control_canny_tiny", "controlnet::1::weight": 0.6,
              "controlnet::1::threshold_a": 90, "controlnet::1::threshold_b": 180, "controlnet::1::processor_res": 64.0,
              "controlnet::1::resize_mode": "Crop and Resize", "controlnet::1::control_mode": "Balanced",
              "controlnet::1::guidance_start": 0, "controlnet::1::guidance_end": 1, "controlnet::1::pixel_perfect": False,
              "controlnet::2::enabled": False, "controlnet::2::module": "invert"}
    units = controlnet_request_fields(fields)
    assert len(units) == 2 and not units[0]["enabled"] and units[0]["threshold_a"] is None
    assert units[1]["processor_res"] == 64 and units[1]["threshold_a"] == 90
    result = generate(app, units)
    params = parse_infotext(result.infotexts[0]).params
    assert "ControlNet 1" in params and "ControlNet 0" not in params  # the unit keeps its number
    pasted = pasted_unit_fields(params)
    assert pasted["controlnet::1::enabled"] is True and pasted["controlnet::1::model"] == "control_canny_tiny"
    assert pasted["controlnet::1::weight"] == 0.6 and pasted["controlnet::1::threshold_b"] == 180.0
    assert not any(k.startswith("controlnet::0::") for k in pasted)
    assert controlnet_request_fields({"controlnet::0::enabled": False}) == []


# ---- T2I-Adapters ---------------------------------------------------------------------------------


def test_t2i_adapter_layouts_listing_and_effect(app):
    from webui.features.controlnet.t2i_adapter import write_test_adapter

    sd1 = app.models.get("tiny-sd1.safetensors")
    folder = app.paths.model_dir("controlnet")
    unet_config = dict(sd1.configs["unet"])
    write_test_adapter(folder / "t2iadapter_canny_tiny.safetensors", unet_config, "original", in_channels=1, seed=5)
    write_test_adapter(folder / "t2i_depth_tiny_diffusers.safetensors", unet_config, "diffusers", seed=6)
    write_test_adapter(folder / "t2i_depth_tiny_original.safetensors", unet_config, "original", seed=6)
    library = app.controlnets
    names = library.names_for(unet_config)
    assert {"t2iadapter_canny_tiny", "t2i_depth_tiny_diffusers"} <= set(names)
    assert "t2iadapter_canny_tiny" not in library.names_for(dict(app.models.get("tiny-sdxl.safetensors").configs["unet"]))
    a = library.load("t2i_depth_tiny_diffusers", sd1)
    b = library.load("t2i_depth_tiny_original", sd1)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())

    plain = px(generate(app))
    adapter = unit(model="t2iadapter_canny_tiny")
    assert np.array_equal(px(generate(app, [dict(adapter, weight=0.0)])), plain)
    steered = px(generate(app, [adapter]))
    assert np.abs(steered - plain).mean() > 0.5
    # combines with a ControlNet unit
    both = px(generate(app, [adapter, unit()]))
    assert np.abs(both - steered).mean() > 0.2


def test_base64_unit_images_decode_once_and_bad_ones_name_the_field(app):
    import base64
    import io

    buffer = io.BytesIO()
    picture().save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    units = [unit(image=encoded), unit(image=None, input_image="data:image/png;base64," + encoded)]
    direct = px(generate(app, [unit()]))
    assert np.array_equal(px(generate(app, units[:1])), direct)
    assert isinstance(units[0]["image"], Image.Image)  # decoded in place, once
    assert np.array_equal(px(generate(app, units[1:])), direct)
    with pytest.raises(ValidationError) as caught:
        app.submit(GenerationRequest(prompt="x", alwayson_scripts={"controlnet": {"args": [
            unit(image="/etc/passwd"), unit(image="bm90IGFuIGltYWdl")]}}))
    assert {e.field for e in caught.value.errors} == {"alwayson_scripts.controlnet.args[0].image",
                                                       "alwayson_scripts.controlnet.args[1].image"}
