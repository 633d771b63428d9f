"""The detailer (ADetailer's job) on the tiny SD 1.x model with real insightface and onnxruntime runs.

Faces come from the tiny insightface pack the identity tests use (tests/identity_helpers.py),
on insightface's own sample photo; other detections from a tiny YOLOv8-layout ONNX model
(tests/detailer_helpers.py). Each region is inpainted by the engine's img2img inpainting.
"""

import numpy as np
import pytest
from PIL import Image

from webui.core.infotext import parse_infotext
from webui.core.pipeline import Feature
from webui.core.request import GenerationRequest, ValidationError
from webui.features.detailer.args import ordinal, passes_from_params
from webui.features.img2img import prepare_mask
from webui.ui.detailer_ui import PREFIX, detailer_request_fields, pasted_detailer_fields

from conftest import make_easel
from detailer_helpers import write_tiny_yolo
from identity_helpers import sample_images, write_insightface_pack

CKPT = "tiny-sd1.safetensors"


def _install(models) -> None:
    write_insightface_pack(models / "insightface" / "antelopev2")
    write_tiny_yolo(models / "adetailer" / "tiny_yolo.onnx")


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    root = tmp_path_factory.mktemp("detailer")
    _install(root / "models")
    app = make_easel(root, tiny_ckpt_dir)
    yield app
    app.close()


@pytest.fixture(scope="module")
def photo():
    return Image.open(sample_images() / "t1.jpg").convert("RGB")


def arr(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int32)


def card() -> Image.Image:
    """Black 64x64 with one white 8x8 square at (8, 8): the tiny YOLO's "bright" cell."""
    image = Image.new("RGB", (64, 64))
    image.paste((255, 255, 255), (8, 8, 16, 16))
    return image


def detailer(*passes, enable=True, skip=None):
    args = [enable] + ([skip] if skip is not None else []) + list(passes)
    return {"ADetailer": {"args": args}}


def txt2img(app, alwayson=None, **kw):
    base = dict(prompt="a portrait", negative_prompt="blurry", steps=3, width=64, height=64, seed=5,
                sampler_name="Euler", checkpoint=CKPT, save_images=False, alwayson_scripts=alwayson or {})
    base.update(kw)
    return app.txt2img(GenerationRequest(**base))


def reach(masks_boxes, size, dilate, blur) -> np.ndarray:
    """Where a detailer may change pixels: each box grown by the dilation, then by the blur's kernel."""
    grow = (abs(dilate) + 1) // 2 + int(round(2.5 * blur)) + 1
    out = np.zeros((size[1], size[0]), dtype=bool)
    for x1, y1, x2, y2 in masks_boxes:
        out[max(0, int(y1) - grow):int(np.ceil(y2)) + grow, max(0, int(x1) - grow):int(np.ceil(x2)) + grow] = True
    return out


# ---- faces on insightface's sample photo --------------------------------------------------------------


def test_faces_change_and_the_rest_stays_pixel_identical(app, photo):
    """img2img with ADetailer's "skip img2img": the photo itself is detailed, one face at a time."""
    detectors = app.engine.feature("adetailer").detectors
    faces = detectors.detect("face_insightface", photo, 0.3)
    assert len(faces) >= 2
    unit = {"ad_model": "face_insightface", "ad_denoising_strength": 1.0, "ad_prompt": "a smiling face",
            "ad_dilate_erode": 4, "ad_mask_blur": 4, "ad_inpaint_only_masked_padding": 16}
    request = GenerationRequest(mode="img2img", prompt="people", steps=3, width=64, height=64, seed=3,
                                sampler_name="Euler", checkpoint=CKPT, save_images=False, init_images=[photo],
                                denoising_strength=0.5, alwayson_scripts=detailer(unit, skip=True))
    result = app.img2img(request)
    out = arr(result.images[0])
    assert out.shape == arr(photo).shape
    may_change = reach([f.box for f in faces], photo.size, 4, 4)
    assert np.array_equal(out[~may_change], arr(photo)[~may_change])  # everything else: exactly the photo
    for face in faces:
        x1, y1, x2, y2 = (int(v) for v in face.box)
        inside = (slice(max(0, y1), y2), slice(max(0, x1), min(photo.width, x2)))
        assert np.abs(out[inside] - arr(photo)[inside]).mean() > 5, face.box  # each face was repainted
    params = parse_infotext(result.infotexts[0]).params
    assert params["ADetailer model"] == "face_insightface" and params["ADetailer prompt"] == "a smiling face"
    assert params["ADetailer denoising strength"] == "1" and params["ADetailer dilate erode"] == "4"
    assert params["ADetailer mask blur"] == "4" and params["ADetailer inpaint padding"] == "16"
    assert params["ADetailer version"].startswith("Easel")


# ---- ONNX detectors ------------------------------------------------------------------------------------


def test_yolo_onnx_boxes_classes_and_pt_names(app):
    detectors = app.engine.feature("adetailer").detectors
    assert detectors.names() == ["face_insightface", "tiny_yolo.onnx"]
    bright = detectors.detect("tiny_yolo.pt", card(), 0.5, "bright")  # ADetailer's .pt name finds the .onnx
    assert [(d.box, d.label) for d in bright] == [((8.0, 8.0, 16.0, 16.0), "bright")]
    dark = detectors.detect("tiny_yolo.onnx", card(), 0.5, "1")  # a class by index
    assert len(dark) == 63 and all(d.label == "dark" for d in dark)
    assert detectors.detect("tiny_yolo.onnx", card(), 0.99, "bright") == []  # the confidence threshold


def test_two_passes_run_in_order_and_only_their_regions_change(app):
    plain = txt2img(app)
    first = {"ad_model": "tiny_yolo.onnx", "ad_model_classes": "bright", "ad_mask_k_largest": 1,
             "ad_confidence": 0.1, "ad_dilate_erode": 0, "ad_mask_blur": 2, "ad_denoising_strength": 1.0,
             "ad_inpaint_only_masked_padding": 8, "ad_use_steps": True, "ad_steps": 4}
    second = {**first, "ad_model_classes": "dark", "ad_prompt": "[PROMPT], detailed", "ad_use_steps": False}
    one = txt2img(app, detailer(first))
    two = txt2img(app, detailer(first, second))
    detectors = app.engine.feature("adetailer").detectors
    box1 = detectors.detect("tiny_yolo.onnx", plain.images[0], 0.1, "bright")[0].box
    box2 = detectors.detect("tiny_yolo.onnx", one.images[0], 0.1, "dark")[0].box
    a, b, c = arr(plain.images[0]), arr(one.images[0]), arr(two.images[0])
    reach1, reach2 = reach([box1], (64, 64), 0, 2), reach([box2], (64, 64), 0, 2)
    assert np.array_equal(a[~reach1], b[~reach1]) and not np.array_equal(a, b)
    assert np.array_equal(b[~reach2], c[~reach2]) and not np.array_equal(b, c)  # the 2nd pass starts from the 1st
    params = parse_infotext(two.infotexts[0]).params
    assert params["ADetailer model classes"] == "bright" and params["ADetailer model classes 2nd"] == "dark"
    assert params["ADetailer use separate steps"] == "True" and params["ADetailer steps"] == "4"
    assert "ADetailer steps 2nd" not in params and params["ADetailer prompt 2nd"] == "[PROMPT], detailed"
    assert params["ADetailer mask only top k largest 2nd"] == "1"
    # switched off (leading false, or every model "None"): today's image exactly, and no ADetailer keys
    for off in (detailer(first, enable=False), detailer({"ad_model": "None"})):
        result = txt2img(app, off)
        assert np.array_equal(arr(result.images[0]), a) and "ADetailer" not in result.infotexts[0]


def test_paste_restores_the_passes(app):
    first = {"ad_model": "tiny_yolo.onnx", "ad_model_classes": "bright", "ad_mask_k_largest": 1, "ad_confidence": 0.1,
             "ad_mask_blur": 2, "ad_denoising_strength": 0.9, "ad_prompt": "a red square",
             "ad_negative_prompt": "green", "ad_inpaint_only_masked_padding": 8, "ad_use_cfg_scale": True,
             "ad_cfg_scale": 5.0}
    second = {"ad_model": "tiny_yolo.onnx", "ad_model_classes": "dark", "ad_mask_k_largest": 1, "ad_confidence": 0.2,
              "ad_inpaint_only_masked": False, "ad_dilate_erode": -4}
    made = txt2img(app, detailer(first, second))
    params = parse_infotext(made.infotexts[0]).params
    fields = pasted_detailer_fields(params)
    assert fields[f"{PREFIX}enable"] is True and fields[f"{PREFIX}0::ad_prompt"] == "a red square"
    assert fields[f"{PREFIX}1::ad_inpaint_only_masked"] is False and fields[f"{PREFIX}1::ad_dilate_erode"] == -4
    # the accordion's values build the same always-on args again, which make the same picture and text
    args = detailer_request_fields(fields)
    assert args["args"][:2] == [True, False]
    repeat = txt2img(app, {"ADetailer": args})
    assert np.array_equal(arr(repeat.images[0]), arr(made.images[0]))
    assert parse_infotext(repeat.infotexts[0]).params == params
    restored = passes_from_params(params)
    assert restored[0]["ad_model_classes"] == "bright" and restored[1]["ad_confidence"] == 0.2
    # a text without ADetailer keys restores nothing (the accordion stays as it is)
    assert pasted_detailer_fields(parse_infotext("x\nSteps: 3, Seed: 1").params) == {}


def test_validation_names_the_argument(app):
    bad = [{"ad_model": "tiny_yolo.onnx", "ad_confidence": 2, "ad_bogus": 1},
           {"ad_model": "hand_yolov8n.pt"},
           {"ad_model": "tiny_yolo.onnx", "ad_restore_face": True, "ad_use_sampler": True, "ad_sampler": "Nope"}]
    with pytest.raises(ValidationError) as info:
        app.engine.validate(GenerationRequest(prompt="x", checkpoint=CKPT, alwayson_scripts=detailer(*bad, skip=False)))
    fields = {e.field for e in info.value.errors}
    base = "alwayson_scripts.ADetailer.args"
    assert {f"{base}.2.ad_confidence", f"{base}.2.ad_bogus", f"{base}.4.ad_restore_face"} <= fields
    with pytest.raises(ValidationError) as info:
        app.engine.validate(GenerationRequest(prompt="x", checkpoint=CKPT, alwayson_scripts=detailer(bad[1])))
    assert [e.field for e in info.value.errors] == [f"{base}.1.ad_model"]
    assert "hand_yolov8n.pt" in str(info.value) and "tiny_yolo.onnx" in str(info.value)
    with pytest.raises(ValidationError) as info:
        app.engine.validate(GenerationRequest(prompt="x", checkpoint=CKPT, alwayson_scripts=detailer(bad[2])))
    assert {e.field for e in info.value.errors} == {f"{base}.1.ad_restore_face", f"{base}.1.ad_sampler"}
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd"]


def test_mask_blur_reaches_as_far_as_the_inpainting_blur():
    """reach() above is sound: the blurred mask the inpainting pastes through is zero beyond it."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 30, 30))
    blurred = np.asarray(prepare_mask(mask, (64, 64), 4, 4)) > 0
    assert not (blurred & ~reach([(20, 20, 30, 30)], (64, 64), 0, 4)).any()


def test_txt2img_accordion_generates_and_pastes_back(app):
    """The accordion's controls make ADetailer's args; the image's text pasted back sets them again."""
    import gradio as gr

    from webui.ui.runner import SessionJobs
    from webui.ui.send_to import SendTarget, paste_updates
    from webui.ui.txt2img import build_txt2img

    with gr.Blocks() as blocks:
        checkpoint = gr.Dropdown(choices=[CKPT], value=CKPT)
        controls = build_txt2img(app, checkpoint, SessionJobs())
    i = controls.inputs
    assert i[f"{PREFIX}0::ad_model"].choices[0][0] == "None"
    assert {c[0] for c in i[f"{PREFIX}0::ad_model"].choices} == {"None", "face_insightface", "tiny_yolo.onnx"}
    assert i[f"{PREFIX}1::ad_model"].elem_id == "txt2img_adetailer_1_ad_model"
    run = next(f.fn for f in blocks.fns.values() if f.api_name == "txt2img")
    values = {"prompt": "a portrait", "negative_prompt": "blurry", "steps": 3, "sampler_name": "Euler",
              "cfg_scale": 7, "seed": 5, "width": 64, "height": 64, f"{PREFIX}enable": True,
              f"{PREFIX}0::ad_model": "tiny_yolo.onnx", f"{PREFIX}0::ad_model_classes": "bright",
              f"{PREFIX}0::ad_mask_k_largest": 1, f"{PREFIX}0::ad_confidence": 0.1, f"{PREFIX}0::ad_mask_blur": 2,
              f"{PREFIX}0::ad_denoising_strength": 1.0, f"{PREFIX}0::ad_inpaint_only_masked_padding": 8,
              f"{PREFIX}0::ad_prompt": "a red square"}
    inputs = {i[name]: value for name, value in values.items()}
    inputs[checkpoint] = CKPT
    *_, last = run(inputs, type("Request", (), {"session_hash": "detailer-ui"})())
    texts = last[4]  # progress, preview, gallery, info, infotexts, last seed
    assert texts and "ADetailer model: tiny_yolo.onnx" in texts[0] and "ADetailer prompt: a red square" in texts[0]
    unit = {"ad_model": "tiny_yolo.onnx", "ad_model_classes": "bright", "ad_mask_k_largest": 1, "ad_confidence": 0.1,
            "ad_mask_blur": 2, "ad_denoising_strength": 1.0, "ad_inpaint_only_masked_padding": 8,
            "ad_prompt": "a red square"}
    engine = txt2img(app, detailer(unit))
    assert texts[0].split(", Version")[0] == engine.infotexts[0].split(", Version")[0]
    target = SendTarget(tab="txt2img", label="txt2img", controls=controls)
    updates = dict(zip(target.fields(), paste_updates(app, target, texts[0])))
    assert updates[f"{PREFIX}enable"] is True and updates[f"{PREFIX}0::ad_model"] == "tiny_yolo.onnx"
    assert updates[f"{PREFIX}0::ad_prompt"] == "a red square" and updates[f"{PREFIX}1::ad_model"] == "None"


def test_own_checkpoint_and_controlnet_repaint_only_the_region(app):
    """ADetailer's ad_checkpoint (loaded beside the job's, which stays active) and its ControlNet unit (the map
    made from the picture being repainted) change the region only, and are written as ADetailer writes them."""
    from webui.features.controlnet.models import write_controlnet

    write_controlnet(app.paths.model_dir("controlnet") / "control_canny_tiny.safetensors",
                     app.models.get(CKPT).unet, "original", seed=1)
    base = {"ad_model": "tiny_yolo.onnx", "ad_model_classes": "bright", "ad_mask_k_largest": 1, "ad_confidence": 0.1,
            "ad_mask_blur": 2, "ad_denoising_strength": 1.0, "ad_inpaint_only_masked_padding": 8}
    own = {"ad_use_checkpoint": True, "ad_checkpoint": "tiny-sdxl"}
    control = {"ad_controlnet_model": "control_canny_tiny", "ad_controlnet_module": "canny",
               "ad_controlnet_weight": 0.8}
    plain = txt2img(app)
    box = app.engine.feature("adetailer").detectors.detect("tiny_yolo.onnx", plain.images[0], 0.1, "bright")[0].box
    inside = ~reach([box], (64, 64), 2, 2)  # one pixel more: the other model's region differs by up to 232,
    # so the blurred mask's faintest edge (row 54) still moves a pixel by 1
    same = txt2img(app, detailer(base))
    for extra in (own, control):
        made = txt2img(app, detailer({**base, **extra}))
        a, b = arr(made.images[0]), arr(same.images[0])
        assert np.array_equal(a[inside], arr(plain.images[0])[inside]) and np.abs(a - b).max() > 10
    assert app.models.current.info.name == CKPT  # the job's checkpoint is still the active one
    params = parse_infotext(made.infotexts[0]).params
    assert params["ADetailer ControlNet model"] == "control_canny_tiny" and params["ADetailer ControlNet weight"] == "0.8"
    params = parse_infotext(txt2img(app, detailer({**base, **own})).infotexts[0]).params
    assert params["ADetailer use separate checkpoint"] == "True" and params["ADetailer checkpoint"] == "tiny-sdxl"
    bad = {"ad_checkpoint": "nope", "ad_controlnet_model": "nope", "ad_controlnet_module": "bogus"}
    for name, value in bad.items():
        unit = {**base, **own, **control, name: value}
        with pytest.raises(ValidationError) as info:
            app.engine.validate(GenerationRequest(prompt="x", checkpoint=CKPT, alwayson_scripts=detailer(unit)))
        assert [e.field for e in info.value.errors] == [f"alwayson_scripts.ADetailer.args.1.{name}"]


# ---- noise multiplier, restore face, VAE (ADetailer's inner img2img settings) --------------------------

BRIGHT = {"ad_model": "tiny_yolo.onnx", "ad_model_classes": "bright", "ad_mask_k_largest": 1, "ad_confidence": 0.1,
          "ad_mask_blur": 2, "ad_denoising_strength": 0.8, "ad_inpaint_only_masked_padding": 8}


class Seen(Feature):
    """A feature registered after every other (an extension's place): what each run, inner ones included, had."""

    name = "probe"

    def __init__(self):
        self.runs = []

    def finish_images(self, run, batch, images, latents):
        self.runs.append((run.request.mode, run.args.get("face_restoration"), run.request.initial_noise_multiplier))
        return images


def test_noise_multiplier_and_restore_face_apply_to_the_inner_img2img(app):
    """ad_noise_multiplier is the inner img2img's initial_noise_multiplier, ad_restore_face its restore_faces (Extras'
    restorer, here GFPGAN): only the region changes, ADetailer's keys are written and a paste gives them back."""
    from webui.features.faces.tiny import write_tiny_restoreformer

    plain, same = txt2img(app), txt2img(app, detailer(BRIGHT))
    box = app.engine.feature("adetailer").detectors.detect("tiny_yolo.onnx", plain.images[0], 0.1, "bright")[0].box
    outside = ~reach([box], (64, 64), 4, 2)
    noise = {**BRIGHT, "ad_use_noise_multiplier": True, "ad_noise_multiplier": 0.5}
    quieter = txt2img(app, detailer(noise))
    a, b = arr(quieter.images[0]), arr(same.images[0])
    assert np.array_equal(a[outside], arr(plain.images[0])[outside]) and np.abs(a - b).max() > 10
    one = txt2img(app, detailer({**noise, "ad_noise_multiplier": 1.0}))  # x1: the plain noise, the same picture
    assert np.array_equal(arr(one.images[0]), b)
    params = parse_infotext(quieter.infotexts[0]).params
    assert params["ADetailer use separate noise multiplier"] == "True" and params["ADetailer noise multiplier"] == "0.5"
    assert "Noise multiplier" not in params  # the main image's noise was not scaled
    # restore face: refused until the chosen restorer is installed, then run on each inner img2img only
    restore = {**BRIGHT, "ad_restore_face": True}
    with pytest.raises(ValidationError) as info:
        app.engine.validate(GenerationRequest(prompt="x", checkpoint=CKPT, alwayson_scripts=detailer(restore)))
    assert [e.field for e in info.value.errors] == ["alwayson_scripts.ADetailer.args.1.ad_restore_face"]
    assert "models/Codeformer" in str(info.value)
    write_tiny_restoreformer(app.paths.model_dir("gfpgan") / "GFPGANv1.4-tiny.safetensors")
    probe = Seen()
    app.engine.features.append(probe)
    try:
        made = txt2img(app, detailer(restore, {**noise, "ad_model_classes": "dark"}),
                       override_settings={"face_restoration_model": "GFPGAN"})
    finally:
        app.engine.features.remove(probe)
    # the inner runs finish inside the main one's finishing step, so the main run (last) comes after them
    assert [(mode, choice is not None and choice.model, m) for mode, choice, m in probe.runs] == [
        ("img2img", "GFPGAN", None), ("img2img", False, 0.5), ("txt2img", False, None)]
    params = parse_infotext(made.infotexts[0]).params
    assert params["ADetailer restore face"] == "True" and "ADetailer restore face 2nd" not in params
    assert params["ADetailer noise multiplier 2nd"] == "0.5" and "Face restoration" not in params
    fields = pasted_detailer_fields(params)
    assert fields[f"{PREFIX}0::ad_restore_face"] is True and fields[f"{PREFIX}1::ad_restore_face"] is False
    assert fields[f"{PREFIX}1::ad_use_noise_multiplier"] is True and fields[f"{PREFIX}1::ad_noise_multiplier"] == 0.5
    again = detailer_request_fields(fields)["args"]
    assert again[2]["ad_restore_face"] is True and again[3]["ad_noise_multiplier"] == 0.5
    bad = {**BRIGHT, "ad_use_vae": True, "ad_vae": "nope.safetensors"}
    with pytest.raises(ValidationError) as info:
        app.engine.validate(GenerationRequest(prompt="x", checkpoint=CKPT, alwayson_scripts=detailer(bad)))
    assert [e.field for e in info.value.errors] == ["alwayson_scripts.ADetailer.args.1.ad_vae"]


def test_accordion_models_controls_list_refresh_and_round_trip(app):
    """Each pass's separate checkpoint / VAE / noise multiplier / restore faces / ControlNet controls: their lists
    show what is installed, 🔄 reads them again, the tab makes the engine's picture and a paste sets them back."""
    import shutil

    import gradio as gr

    from webui.features.controlnet.models import write_controlnet
    from webui.features.detailer.args import SAME_CHECKPOINT, SAME_VAE
    from webui.ui.runner import SessionJobs
    from webui.ui.send_to import SendTarget, paste_updates
    from webui.ui.txt2img import build_txt2img

    folder = app.paths.model_dir("controlnet")
    if not (folder / "control_canny_tiny.safetensors").exists():
        write_controlnet(folder / "control_canny_tiny.safetensors", app.models.get(CKPT).unet, "original", seed=1)
    with gr.Blocks() as blocks:
        checkpoint = gr.Dropdown(choices=[CKPT], value=CKPT)
        controls = build_txt2img(app, checkpoint, SessionJobs())
    i = controls.inputs
    key = f"{PREFIX}1::"

    def names(component):
        return [c[0] for c in component.choices]

    assert i[key + "ad_controlnet_model"].elem_id == "txt2img_adetailer_1_ad_controlnet_model"
    assert names(i[key + "ad_checkpoint"])[0] == SAME_CHECKPOINT
    assert any(n.startswith("tiny-sd1") for n in names(i[key + "ad_checkpoint"]))
    assert names(i[key + "ad_vae"])[:3] == [SAME_VAE, "Automatic", "None"]
    assert names(i[key + "ad_controlnet_model"]) == ["None", "control_canny_tiny"]
    assert names(i[key + "ad_controlnet_module"])[0] == "None" and "canny" in names(i[key + "ad_controlnet_module"])
    shutil.copy(folder / "control_canny_tiny.safetensors", folder / "control_depth_tiny.safetensors")
    try:
        refresh = next(f for f in blocks.fns.values() if i[key + "ad_controlnet_model"] in f.outputs)
        _, _, listed = refresh.fn()
        assert listed["choices"] == ["None", "control_canny_tiny", "control_depth_tiny"]
    finally:
        (folder / "control_depth_tiny.safetensors").unlink()
    unit = {**BRIGHT, "ad_use_noise_multiplier": True, "ad_noise_multiplier": 0.7,
            "ad_controlnet_model": "control_canny_tiny", "ad_controlnet_module": "canny", "ad_controlnet_weight": 0.8}
    run = next(f.fn for f in blocks.fns.values() if f.api_name == "txt2img")
    values = {"prompt": "a portrait", "negative_prompt": "blurry", "steps": 3, "sampler_name": "Euler",
              "cfg_scale": 7, "seed": 5, "width": 64, "height": 64, f"{PREFIX}enable": True,
              **{f"{PREFIX}0::{name}": value for name, value in unit.items()}}
    inputs = {i[name]: value for name, value in values.items()}
    inputs[checkpoint] = CKPT
    *_, last = run(inputs, type("Request", (), {"session_hash": "detailer-models-ui"})())
    texts = last[4]
    engine = txt2img(app, detailer(unit))
    assert texts and texts[0].split(", Version")[0] == engine.infotexts[0].split(", Version")[0]
    assert "ADetailer ControlNet model: control_canny_tiny" in texts[0] and "ADetailer noise multiplier: 0.7" in texts[0]
    target = SendTarget(tab="txt2img", label="txt2img", controls=controls)
    updates = dict(zip(target.fields(), paste_updates(app, target, texts[0])))
    assert updates[f"{PREFIX}0::ad_controlnet_model"] == "control_canny_tiny"
    assert updates[f"{PREFIX}0::ad_controlnet_module"] == "canny" and updates[f"{PREFIX}0::ad_controlnet_weight"] == 0.8
    assert updates[f"{PREFIX}0::ad_use_noise_multiplier"] is True and updates[f"{PREFIX}0::ad_noise_multiplier"] == 0.7
    assert updates[f"{PREFIX}0::ad_checkpoint"] == SAME_CHECKPOINT and updates[f"{PREFIX}0::ad_vae"] == SAME_VAE
