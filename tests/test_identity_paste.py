"""Identity parameters come back: infotext -> tab fields, PNG Info / gallery Send-to, IdentityNet step range, hires.

The engine runs for real on the tiny SDXL model with the tiny insightface pack and InstantID /
PhotoMaker files (tests/identity_helpers.py); the Gradio handlers are the ones build_ui wires.
"""
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from webui.core.infotext import parse_infotext
from webui.pnginfo import infotext_to_fields
from webui.core.pipeline import Feature
from webui.core.request import GenerationRequest
from webui.features.controlnet.apply import Controls
from webui.features.identity.args import identity_infotext, parse_identity, parse_identity_infotext
from webui.ui.identity_tab import identity_request, pasted_identity_fields

from conftest import make_easel
from identity_helpers import face_card, write_insightface_pack, write_instantid, write_photomaker

PACK = "antelopev2"
WHERE = "alwayson_scripts.identity.args"
INSTANTID_TEXT = ("a photo of a man, studio light\nNegative prompt: blurry\nSteps: 3, Sampler: Euler, CFG scale: 5, "
                  "Seed: 11, Size: 64x64, Model: tiny-sdxl, Identity: \"Method: InstantID, Adapter: ip-adapter.bin "
                  "[abcd1234], IdentityNet: ControlNetModel [1234abcd], Adapter strength: 0.65, IdentityNet strength: "
                  "1.2, Guidance start: 0.1, Guidance end: 0.6, Pose image: True\", Version: Easel")
PHOTOMAKER_TEXT = ("a man img, portrait\nSteps: 4, Sampler: Euler a, CFG scale: 6, Seed: 5, Size: 64x64, "
                   "Identity: \"Method: PhotoMaker v2, Encoder: photomaker-v2.safetensors [00ff00ff], "
                   "Style strength: 35, LoRA weight: 0.7, Photos: 3\"")


def one_face():
    return face_card((320, 320), [(160, 160, 60)])


def instantid(**kw):
    args = {"method": "InstantID", "images": [one_face()], "adapter_strength": 0.8, "identitynet_strength": 0.8}
    args.update(kw)
    return args


# ---- request fields and infotext (no model) --------------------------------------------------------------


def test_guidance_range_is_recorded_only_when_set_and_reads_back():
    args, errors = parse_identity({"identity": {"args": instantid(guidance_start=0.25, guidance_end=0.75)}})
    assert not errors and (args.guidance_start, args.guidance_end) == (0.25, 0.75)
    text = identity_infotext(args, {"Adapter": "ip-adapter.bin [abcd1234]"})
    assert "Guidance start: 0.25, Guidance end: 0.75" in text
    fields = parse_identity_infotext(text)
    assert (fields["guidance_start"], fields["guidance_end"]) == (0.25, 0.75)
    default, _ = parse_identity({"identity": {"args": instantid()}})
    assert "Guidance" not in identity_infotext(default, {})  # all steps: left out, as before
    photomaker, _ = parse_identity({"identity": {"args": {"method": "PhotoMaker v1", "images": [one_face()],
                                                           "guidance_start": 0.5}}})
    assert "Guidance" not in identity_infotext(photomaker, {})  # PhotoMaker has no IdentityNet


@pytest.mark.parametrize("values, field, message", [
    ({"guidance_start": 1.5}, "guidance_start", "from 0 to 1"),
    ({"guidance_end": -0.1}, "guidance_end", "from 0 to 1"),
    ({"guidance_start": "half"}, "guidance_start", "from 0 to 1"),
    ({"guidance_start": float("nan")}, "guidance_start", "from 0 to 1"),
    ({"guidance_start": 0.8, "guidance_end": 0.2}, "guidance_end", "before guidance_start"),
])
def test_bad_guidance_values_name_the_field(values, field, message):
    args, errors = parse_identity({"identity": {"args": instantid(**values)}})
    assert args is None
    assert [(e.field, message in e.message) for e in errors] == [(f"{WHERE}.{field}", True)]


def test_pasted_instantid_entry_sets_the_tab_and_says_the_photos_are_missing():
    values = pasted_identity_fields(parse_infotext(INSTANTID_TEXT).params)
    assert {k: v for k, v in values.items() if k != "identity_note"} == {
        "identity_method": "InstantID", "identity_adapter_strength": 0.65, "identity_identitynet_strength": 1.2,
        "identity_guidance_start": 0.1, "identity_guidance_end": 0.6}
    note = values["identity_note"]
    assert "not stored" in note and "face photo (Photo 1) and the pose image" in note
    # the range left out of an infotext means all steps: a pasted older image resets an earlier range
    older = pasted_identity_fields({"Identity": "Method: InstantID, Adapter strength: 0.8, IdentityNet strength: 0.8"})
    assert (older["identity_guidance_start"], older["identity_guidance_end"]) == (0.0, 1.0)
    assert "pose image" not in older["identity_note"]


def test_pasted_photomaker_entry_and_broken_entries():
    values = pasted_identity_fields(parse_infotext(PHOTOMAKER_TEXT).params)
    assert {k: v for k, v in values.items() if k != "identity_note"} == {
        "identity_method": "PhotoMaker v2", "identity_style_strength": 35.0, "identity_lora_weight": 0.7}
    assert "upload the 3 photos again" in values["identity_note"]
    # numbers that do not read are left out; out-of-range ones are held to the sliders' range
    broken = pasted_identity_fields({"Identity": "Method: InstantID, Adapter strength: lots, IdentityNet strength: 9, "
                                                 "Guidance end: inf"})
    assert "identity_adapter_strength" not in broken and broken["identity_identitynet_strength"] == 2
    assert broken["identity_guidance_end"] == 1.0
    unknown = pasted_identity_fields({"Identity": "Method: FaceSwap, Adapter strength: 0.5"})
    assert list(unknown) == ["identity_note"] and "FaceSwap" in unknown["identity_note"]
    assert pasted_identity_fields({"Steps": "4"}) == {"identity_note": ""}  # no entry: the old note is cleared


def test_identity_entry_is_not_a_txt2img_field():
    with_identity = infotext_to_fields(parse_infotext(INSTANTID_TEXT))
    without = infotext_to_fields(parse_infotext(INSTANTID_TEXT.replace(
        INSTANTID_TEXT[INSTANTID_TEXT.index(", Identity:"):INSTANTID_TEXT.index(", Version")], "")))
    assert with_identity == without and with_identity["steps"] == 3
    GenerationRequest(**{k: v for k, v in with_identity.items() if k != "checkpoint_hint"}).validate()


# ---- the engine: IdentityNet step range, hires fix ---------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    app = make_easel(tmp_path_factory.mktemp("identity-paste"), tiny_ckpt_dir)
    sdxl = app.models.get("tiny-sdxl.safetensors")
    write_insightface_pack(app.paths.model_dir("insightface") / PACK)
    write_instantid(app.paths.model_dir("instantid"), sdxl.unet, seed=3)
    write_photomaker(app.paths.model_dir("photomaker") / "photomaker-v2.safetensors", sdxl.unet, version=2, seed=5)
    yield app
    app.close()


def request(identity=None, **kw) -> GenerationRequest:
    base = dict(prompt="a photo of a man", steps=3, width=64, height=64, seed=11, sampler_name="Euler",
                checkpoint="tiny-sdxl", save_images=False,
                alwayson_scripts={"identity": {"args": identity}} if identity else {})
    base.update(kw)
    return GenerationRequest(**base)


def px(result):
    return np.asarray(result.images[0]).astype(np.int16)


def test_identitynet_step_range(app):
    """A range that no step falls in (3 steps: fractions 0, 1/3, 2/3) is exactly the run without the IdentityNet."""
    without_net = px(app.txt2img(request(instantid(identitynet_strength=0.0))))
    full = app.txt2img(request(instantid()))
    assert np.abs(px(full) - without_net).mean() > 0.2
    empty = app.txt2img(request(instantid(guidance_start=0.9, guidance_end=0.9)))
    assert np.array_equal(px(empty), without_net)
    # the first step only: differs from both
    first = app.txt2img(request(instantid(guidance_start=0.0, guidance_end=0.2)))
    assert np.abs(px(first) - without_net).mean() > 0.05 and np.abs(px(first) - px(full)).mean() > 0.05
    fields = parse_identity_infotext(parse_infotext(first.info).params["Identity"])
    assert (fields["guidance_start"], fields["guidance_end"]) == (0.0, 0.2)
    assert "Guidance" not in parse_infotext(full.info).params["Identity"]


class DropControlsInHires(Feature):
    """A feature (the engine's public protocol) that empties the hires pass's controls after identity added to them."""

    name = "test_drop_hires_controls"

    def begin_pass(self, run, p):
        if p.name == "hires":
            p.plan.controls = Controls()


@pytest.mark.parametrize("identity", [instantid(), {"method": "PhotoMaker v2", "images": [one_face()]}],
                         ids=["instantid", "photomaker"])
def test_hires_fix_keeps_the_identity(app, identity):
    """Every pass applies the identity method, so hires fix works with it (it used to be refused)."""
    hires = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.5, steps=2)
    with_identity = app.txt2img(request(identity, prompt="a man img", **hires))
    assert with_identity.images[0].size == (128, 128)
    params = parse_infotext(with_identity.info).params
    assert params["Identity"].startswith(f"Method: {identity['method']}") and params["Hires upscale"] == "2"
    plain = app.txt2img(request(None, prompt="a man img", **hires))
    assert np.abs(px(with_identity) - px(plain)).mean() > 0.05


def test_hires_pass_itself_carries_instantid(app):
    """Taking InstantID out of the hires pass alone changes the image: the second pass had it."""
    hires = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.6, steps=2)
    both = app.txt2img(request(instantid(), prompt="a man", **hires))
    dropper = DropControlsInHires()
    app.engine.features.append(dropper)
    try:
        first_only = app.txt2img(request(instantid(), prompt="a man", **hires))
    finally:
        app.engine.features.remove(dropper)
    assert np.abs(px(both) - px(first_only)).mean() > 0.05


def test_hires_with_identity_through_the_api(app):
    """Over real HTTP: enable_hr with an identity unit runs (200) and records both."""
    import base64
    import io

    import httpx

    from conftest import start_server

    buffer = io.BytesIO()
    one_face().save(buffer, format="PNG")
    identity = {"method": "InstantID", "images": [base64.b64encode(buffer.getvalue()).decode()]}
    body = {"prompt": "a photo of a man", "steps": 2, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "tiny-sdxl.safetensors"},
            "alwayson_scripts": {"identity": {"args": identity}}}
    server = start_server(app.paths.models_dir.parent, None,
                          ["--api", "--nowebui", "--ckpt-dir", str(app.models.find("tiny-sdxl").path.parent)])
    try:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            hires = client.post("/sdapi/v1/txt2img", json={**body, "enable_hr": True, "hr_scale": 2,
                                                           "hr_upscaler": "Latent", "denoising_strength": 0.5})
            assert hires.status_code == 200, hires.text
            info = hires.json()["info"]
            assert "Method: InstantID" in info and "Hires upscale: 2" in info
    finally:
        server.stop()


# ---- Gradio: the tab's real Send-to handlers --------------------------------------------------------------


@pytest.fixture(scope="module")
def ui(app):
    from webui.ui.layout import build_ui

    return build_ui(app)


def handler(blocks, input_ids: list[str], output_id: str):
    """The click handler whose inputs have these elem_ids and whose outputs include `output_id`."""
    for fn in blocks.fns.values():
        ins = [getattr(c, "elem_id", None) for c in fn.inputs]
        outs = [getattr(c, "elem_id", None) for c in fn.outputs]
        if ins == input_ids and output_id in outs:
            return fn
    raise AssertionError(f"no handler from {input_ids} to {output_id}")


def by_id(fn, values: list) -> dict:
    assert len(values) == len(fn.outputs)
    return {getattr(c, "elem_id", None) or f"#{i}": v for i, (c, v) in enumerate(zip(fn.outputs, values))}


def test_pnginfo_send_to_identity_restores_and_regenerates_the_same_image(app, ui):
    photo, pose = one_face(), face_card((320, 320), [(120, 190, 55)])
    original = app.txt2img(request(instantid(images=[photo], pose_image=pose, adapter_strength=0.65,
                                             identitynet_strength=1.2, guidance_start=0.0, guidance_end=0.5),
                                   negative_prompt="blurry", cfg_scale=5))
    send = handler(ui, ["pnginfo_image", "pnginfo_generation_info"], "identity_method")
    out = by_id(send, send.fn(Image.new("RGB", (64, 64)), original.info))
    assert out["identity_method"] == "InstantID"
    assert (out["identity_adapter_strength"], out["identity_identitynet_strength"]) == (0.65, 1.2)
    assert (out["identity_guidance_start"], out["identity_guidance_end"]) == (0.0, 0.5)
    assert (out["identity_prompt"], out["identity_neg_prompt"], out["identity_seed"]) == \
        ("a photo of a man", "blurry", 11)
    assert "upload the face photo (Photo 1) and the pose image again" in out["identity_paste_note"]
    # the photos are not touched (they are not in the parameters)
    assert not {"identity_photo_1", "identity_pose"} & set(out)
    # the restored controls, with the photos uploaded again, make the same picture
    fields = {FIELD_OF.get(key, key): value for key, value in out.items()
              if str(key).startswith("identity_") and not _skipped(value)}
    assert (fields["sampler_name"], fields["steps"], fields["width"], fields["cfg_scale"]) == ("Euler", 3, 64, 5)
    fields.update(identity_photo_1=photo, identity_pose=pose, checkpoint="tiny-sdxl")
    again = replace(identity_request(fields), save_images=False)  # requests are frozen
    assert again.alwayson_scripts["identity"]["args"]["guidance_end"] == 0.5
    assert np.array_equal(px(app.txt2img(again)), px(original))


def test_pasting_a_plain_infotext_clears_the_note_and_keeps_the_identity_settings(ui):
    send = handler(ui, ["pnginfo_image", "pnginfo_generation_info"], "identity_method")
    out = by_id(send, send.fn(None, "a lake\nSteps: 5, Sampler: Euler, Seed: 3, Size: 64x64"))
    assert out["identity_paste_note"] == "" and out["identity_prompt"] == "a lake" and out["identity_steps"] == 5
    assert _skipped(out["identity_method"]) and _skipped(out["identity_adapter_strength"])
    photomaker = by_id(send, send.fn(None, PHOTOMAKER_TEXT))
    assert (photomaker["identity_method"], photomaker["identity_style_strength"]) == ("PhotoMaker v2", 35.0)
    assert _skipped(photomaker["identity_adapter_strength"])  # InstantID's sliders keep their values


def test_identity_result_sent_to_txt2img_restores_only_the_usual_fields(ui):
    send = _gallery_send(ui, "identity", "txt2img")
    out = by_id(send, send.fn([(Image.new("RGB", (64, 64)), "")], 0, [INSTANTID_TEXT]))
    assert out["txt2img_prompt"] == "a photo of a man, studio light" and out["txt2img_steps"] == 3
    assert not any(str(k).startswith("identity_") for k in out)
    assert all("Identity" not in str(v) and "InstantID" not in str(v) for v in out.values())
    # and the other way: a txt2img result sent to Identity
    back = _gallery_send(ui, "txt2img", "identity")
    out = by_id(back, back.fn([(Image.new("RGB", (64, 64)), "")], 0, [PHOTOMAKER_TEXT]))
    assert out["identity_method"] == "PhotoMaker v2" and "3 photos" in out["identity_paste_note"]


# the Identity tab's elem_ids that are not its field names
FIELD_OF = {"identity_prompt": "prompt", "identity_neg_prompt": "negative_prompt", "identity_seed": "seed",
            "identity_cfg_scale": "cfg_scale", "identity_steps": "steps", "identity_sampling": "sampler_name",
            "identity_scheduler": "scheduler", "identity_width": "width", "identity_height": "height"}


def _gallery_send(blocks, source: str, target: str):
    """The handler of a gallery's "Send to <target>" button."""
    button = f"{source}_send_to_{target}"
    for fn in blocks.fns.values():
        triggers = [blocks.blocks[t[0]] for t in fn.targets if t[0] in blocks.blocks]
        if any(getattr(t, "elem_id", None) == button for t in triggers):
            return fn
    raise AssertionError(f"no {button} button")


def _skipped(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


# ---- in a browser ---------------------------------------------------------------------------------------


def test_pnginfo_send_to_identity_in_a_browser(tmp_path, request):
    """The pasted method switches the visible sliders (its change event runs), and the note shows."""
    from test_browser import open_app

    from playwright.sync_api import expect
    from PIL import PngImagePlugin

    pictures = {}
    for name, text in (("photomaker", PHOTOMAKER_TEXT), ("instantid", INSTANTID_TEXT)):
        meta = PngImagePlugin.PngInfo()
        meta.add_text("parameters", text)
        pictures[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (64, 64), (40, 90, 160)).save(pictures[name], pnginfo=meta)
    server = request.getfixturevalue("ui_server")  # conftest's shared UI server (no identity models: as here)
    with open_app(server.url, height=1400) as page:
        for name in ("photomaker", "instantid"):
            # A fresh page each time: once the PNG Info image holds a picture its upload input may be gone.
            page.goto(server.url)
            page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
            page.get_by_role("tab", name="PNG Info").click()
            page.locator("#pnginfo_image input[type=file]").set_input_files(str(pictures[name]))
            prompt = "a man img, portrait" if name == "photomaker" else "a photo of a man, studio light"
            expect(page.locator("#pnginfo_html")).to_contain_text(prompt, timeout=15_000)  # this image's text
            page.locator("#pnginfo_send_identity").click()
            if name == "photomaker":
                expect(page.locator("#identity_method").get_by_label("PhotoMaker v2")).to_be_checked(timeout=30_000)
                expect(page.locator("#identity_style_strength input[type=number]")).to_have_value("35")
                expect(page.locator("#identity_lora_weight input[type=number]")).to_have_value("0.7")
                expect(page.locator("#identity_adapter_strength")).to_be_hidden()
                expect(page.locator("#identity_paste_note")).to_contain_text("upload the 3 photos again")
                expect(page.locator("#identity_files")).to_contain_text("each must show the face")
            else:
                expect(page.locator("#identity_method").get_by_label("InstantID")).to_be_checked(timeout=30_000)
                expect(page.locator("#identity_identitynet_strength input[type=number]")).to_have_value("1.2")
                expect(page.locator("#identity_guidance_end input[type=number]")).to_have_value("0.6")
                expect(page.locator("#identity_style_strength")).to_be_hidden()
                expect(page.locator("#identity_paste_note")).to_contain_text("the pose image again")
            expect(page.locator("#identity_prompt textarea")).to_have_value(prompt)
