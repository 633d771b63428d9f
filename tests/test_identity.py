"""Identity (InstantID, PhotoMaker v1/v2) on the tiny SDXL model with a real insightface run.

insightface runs its own code on tiny ONNX graphs with the signatures of the published
detection and recognition models (tests/identity_helpers.py); the PhotoMaker and InstantID
files are written in the published key layouts.
"""
import numpy as np
import pytest
from PIL import Image

from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, ValidationError
from webui.features.identity.args import identity_infotext, parse_identity, parse_identity_infotext
from webui.features.identity.faces import FaceAnalyzer, FaceError, draw_keypoints
from webui.features.identity.photomaker import IDEncoder, read_photomaker

from conftest import make_easel
from identity_helpers import (face_card, sample_images, write_insightface_pack, write_instantid,
                              write_photomaker)

PACK = "antelopev2"


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    app = make_easel(tmp_path_factory.mktemp("identity"), tiny_ckpt_dir)
    sdxl = app.models.get("tiny-sdxl.safetensors")
    write_insightface_pack(app.paths.model_dir("insightface") / PACK)
    write_instantid(app.paths.model_dir("instantid"), sdxl.unet, seed=3)
    write_photomaker(app.paths.model_dir("photomaker") / "photomaker-v1.bin", sdxl.unet, version=1, seed=4)
    write_photomaker(app.paths.model_dir("photomaker") / "photomaker-v2.safetensors", sdxl.unet, version=2, seed=5)
    yield app
    app.close()


@pytest.fixture(scope="module")
def face_photo():
    return Image.open(sample_images() / "t1.jpg").convert("RGB")


def one_face():
    return face_card((320, 320), [(160, 160, 60)])


def generate(app, identity=None, **kw):
    base = dict(prompt="a photo of a man", steps=3, width=64, height=64, seed=11, sampler_name="Euler",
                checkpoint="tiny-sdxl", save_images=False,
                alwayson_scripts={"identity": {"args": identity}} if identity else {})
    base.update(kw)
    return app.txt2img(GenerationRequest(**base))


def px(result):
    return np.asarray(result.images[0]).astype(np.int16)


# ---- insightface -------------------------------------------------------------------------------------


def test_insightface_finds_faces_on_the_packaged_sample_photo(app, face_photo):
    analyzer = FaceAnalyzer(app.paths.model_dir("insightface"), PACK)
    faces = analyzer.faces(face_photo)
    assert len(faces) >= 2
    largest = analyzer.largest(face_photo, "face image")
    assert largest.embedding.shape == (512,) and np.isfinite(largest.embedding).all()
    assert largest.kps.shape == (5, 2)
    x1, y1, x2, y2 = largest.bbox
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in largest.kps)
    assert largest.area == max(f.area for f in faces)
    assert f"{len(faces)} faces found in the face image; used the largest" in largest.note
    # the embedding depends on the face: a different crop gives a different vector
    other = faces[-1]
    assert np.abs(other.embedding - largest.embedding).max() > 1e-3


def test_largest_of_two_faces_and_no_face_names_the_image(app):
    analyzer = FaceAnalyzer(app.paths.model_dir("insightface"), PACK)
    card = face_card((640, 640), [(160, 320, 40), (440, 320, 80)])
    faces = analyzer.faces(card)
    assert len(faces) == 2
    largest = analyzer.largest(card, "photo 2")
    assert (largest.bbox[0] + largest.bbox[2]) / 2 > 320  # the big disc is on the right
    assert "2 faces found in the photo 2" in largest.note
    with pytest.raises(FaceError, match="No face found in the pose image"):
        analyzer.largest(Image.new("RGB", (200, 200), (128, 128, 128)), "pose image")


def test_keypoint_image_marks_the_five_points():
    kps = np.array([[20, 20], [44, 20], [32, 32], [24, 44], [40, 44]], dtype=np.float32)
    picture = np.asarray(draw_keypoints((64, 64), kps))
    assert tuple(picture[20, 20]) == (255, 0, 0) and tuple(picture[32, 32]) == (0, 0, 255)
    assert tuple(picture[44, 40]) == (255, 0, 255)
    assert picture[0, 63].sum() == 0


# ---- InstantID ------------------------------------------------------------------------------------------


def instantid(**kw):
    args = {"method": "InstantID", "images": [one_face()], "adapter_strength": 0.8, "identitynet_strength": 0.8}
    args.update(kw)
    return args


def test_instantid_generates_and_strength_zero_is_plain(app):
    plain = generate(app)
    result = generate(app, instantid())
    image = px(result)
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    assert np.abs(image - px(plain)).mean() > 0.5
    zero = generate(app, instantid(adapter_strength=0.0, identitynet_strength=0.0))
    assert np.array_equal(px(zero), px(plain))
    # each part alone changes the picture
    assert np.abs(px(generate(app, instantid(adapter_strength=0.0))) - px(plain)).mean() > 0.2
    assert np.abs(px(generate(app, instantid(identitynet_strength=0.0))) - px(plain)).mean() > 0.2
    # the UNet's attention processors are restored afterwards
    assert np.array_equal(px(generate(app)), px(plain))
    params = parse_infotext(result.info).params
    fields = parse_identity_infotext(params["Identity"])
    assert fields["method"] == "InstantID" and fields["adapter_strength"] == 0.8
    assert fields["adapter"].startswith("ip-adapter.bin [") and fields["identitynet"].startswith("ControlNetModel [")


def test_instantid_pose_image_and_face_messages(app, face_photo):
    posed = generate(app, instantid(pose_image=face_card((320, 320), [(100, 200, 50)])))
    assert np.isfinite(px(posed)).all()
    several = generate(app, instantid(images=[face_photo]))
    assert any("faces found in the face image; used the largest" in w for w in several.warnings)
    with pytest.raises(FaceError, match="No face found in the face image"):
        generate(app, instantid(images=[Image.new("RGB", (128, 128), (90, 90, 90))]))
    with pytest.raises(FaceError, match="No face found in the pose image"):
        generate(app, instantid(pose_image=Image.new("RGB", (128, 128), (90, 90, 90))))


def test_instantid_combines_with_a_controlnet_unit(app):
    from webui.features.controlnet.models import write_controlnet

    sdxl = app.models.get("tiny-sdxl.safetensors")
    write_controlnet(app.paths.model_dir("controlnet") / "tiny_cn_sdxl.safetensors", sdxl.unet)
    unit = {"enabled": True, "module": "none", "model": "tiny_cn_sdxl", "weight": 1.0, "image": one_face()}
    alone = generate(app, instantid())
    both = generate(app, alwayson_scripts={"identity": {"args": instantid()}, "controlnet": {"args": [unit]}})
    assert np.abs(px(both) - px(alone)).mean() > 0.2
    params = parse_infotext(both.info).params
    assert "ControlNet 0" in params and "Identity" in params


# ---- PhotoMaker ------------------------------------------------------------------------------------------


def test_photomaker_files_load_in_the_published_layout(app):
    v1 = read_photomaker(app.paths.model_dir("photomaker") / "photomaker-v1.bin")
    v2 = read_photomaker(app.paths.model_dir("photomaker") / "photomaker-v2.safetensors")
    assert any(k.startswith("vision_model.encoder.layers.") for k in v1["id_encoder"])
    assert "visual_projection_2.weight" in v1["id_encoder"] and "fuse_module.mlp1.fc1.weight" in v1["id_encoder"]
    assert any(".processor.to_k_lora.down.weight" in k for k in v1["lora_weights"])
    assert IDEncoder(v1["id_encoder"]).version == 1
    encoder = IDEncoder(v2["id_encoder"])
    assert encoder.version == 2 and encoder.tokens == 2


@pytest.mark.parametrize("method", ["PhotoMaker v1", "PhotoMaker v2"])
def test_photomaker_generates_and_strength_zero_is_plain(app, method):
    photos = [one_face(), face_card((320, 320), [(150, 170, 70)])]
    args = {"method": method, "images": photos, "style_strength": 0, "lora_weight": 1.0}
    result = generate(app, args, prompt="a photo of a man img, portrait")
    plain = generate(app, prompt="a photo of a man, portrait")
    assert np.isfinite(px(result)).all() and np.abs(px(result) - px(plain)).mean() > 0.5
    # identity from the last step on and no LoRA: exactly the prompt without the trigger word
    off = generate(app, dict(args, style_strength=100, lora_weight=0.0), prompt="a photo of a man img, portrait")
    assert np.array_equal(px(off), px(plain))
    # the LoRA alone changes the picture, and is restored for the next plain generation
    lora_only = generate(app, dict(args, style_strength=100), prompt="a photo of a man img, portrait")
    assert np.abs(px(lora_only) - px(plain)).mean() > 0.2
    assert np.array_equal(px(generate(app, prompt="a photo of a man, portrait")), px(plain))
    fields = parse_identity_infotext(parse_infotext(result.info).params["Identity"])
    assert fields["method"] == method and fields["photos"] == 2 and fields["style_strength"] == 0


def test_photomaker_needs_the_trigger_word(app):
    with pytest.raises(ValueError, match="class word followed by the trigger word"):
        generate(app, {"method": "PhotoMaker v1", "images": [one_face()]}, prompt="a photo of a man")


def test_photomaker_v2_names_the_photo_without_a_face(app):
    blank = Image.new("RGB", (128, 128), (90, 90, 90))
    with pytest.raises(FaceError, match="No face found in the photo 2"):
        generate(app, {"method": "PhotoMaker v2", "images": [one_face(), blank]}, prompt="a man img")


# ---- files, validation, infotext --------------------------------------------------------------------------


def test_missing_files_are_listed_exactly(tmp_path, tiny_ckpt_dir):
    bare = make_easel(tmp_path, tiny_ckpt_dir)
    try:
        models = bare.paths.model_dir
        lines = bare.identity.missing("InstantID")
        assert lines == [
            f"InstantID face adapter: {models('instantid') / 'ip-adapter.bin'} (or ip-adapter.safetensors)",
            f"InstantID IdentityNet: {models('instantid') / 'ControlNetModel' / 'config.json'} and "
            f"{models('instantid') / 'ControlNetModel' / 'diffusion_pytorch_model.safetensors'}",
            f"insightface models (antelopev2 pack: detection and recognition .onnx files): "
            f"{models('insightface') / 'antelopev2'}/"]
        assert bare.identity.missing("PhotoMaker v1") == [
            f"PhotoMaker v1 adapter: {models('photomaker') / 'photomaker-v1.bin'} (or photomaker-v1.safetensors)"]
        assert len(bare.identity.missing("PhotoMaker v2")) == 2
        with pytest.raises(ValueError, match="InstantID needs these files") as error:
            generate(bare, instantid())
        assert "ip-adapter.bin" in str(error.value) and "antelopev2" in str(error.value)
    finally:
        bare.close()


def test_sd1_checkpoint_is_refused(app):
    with pytest.raises(ValueError, match="works with SDXL checkpoints"):
        generate(app, instantid(), checkpoint="tiny-sd1")


def test_bad_identity_fields_are_named(app):
    with pytest.raises(ValidationError) as error:
        app.submit(GenerationRequest(prompt="x", steps=2, width=64, height=64, alwayson_scripts={
            "identity": {"args": {"method": "FaceSwap", "images": [], "adapter_strength": 9}}}))
    names = {e.field for e in error.value.errors}
    assert {"alwayson_scripts.identity.args.method", "alwayson_scripts.identity.args.images",
            "alwayson_scripts.identity.args.adapter_strength"} <= names


def test_infotext_round_trip():
    args, errors = parse_identity({"identity": {"args": {"method": "InstantID", "images": [one_face()],
                                                          "adapter_strength": 0.65, "identitynet_strength": 1}}})
    assert not errors
    text = identity_infotext(args, {"Adapter": "ip-adapter.bin [abcd1234]", "IdentityNet": "ControlNetModel [1234abcd]"})
    assert text == ("Method: InstantID, Adapter: ip-adapter.bin [abcd1234], IdentityNet: ControlNetModel [1234abcd], "
                    "Adapter strength: 0.65, IdentityNet strength: 1, Pose image: False")
    assert parse_identity_infotext(text) == {"method": "InstantID", "adapter": "ip-adapter.bin [abcd1234]",
                                             "identitynet": "ControlNetModel [1234abcd]", "adapter_strength": 0.65,
                                             "identitynet_strength": 1.0, "pose_image": False}


def test_tab_builds_the_identity_request(app):
    from webui.ui.identity_tab import files_markdown, identity_request

    photo = one_face()
    fields = {"prompt": "a man img", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 3,
              "identity_method": "PhotoMaker v2", "identity_photo_1": photo, "identity_photo_3": photo,
              "identity_style_strength": 30, "identity_lora_weight": 0.5}
    request = identity_request(fields)
    args = request.alwayson_scripts["identity"]["args"]
    assert args["method"] == "PhotoMaker v2" and len(args["images"]) == 2 and args["style_strength"] == 30
    app.engine.validate(request)
    with pytest.raises(ValueError, match="upload a photo"):
        identity_request({**fields, "identity_photo_1": None, "identity_photo_3": None})
    assert "Files needed" not in files_markdown(app, "InstantID")


def test_identity_through_the_a1111_api(app):
    """alwayson_scripts.identity reaches the engine from /sdapi/v1; images travel as base64, bad fields are 422."""
    import base64
    import io

    import httpx

    from conftest import start_server

    buffer = io.BytesIO()
    one_face().save(buffer, format="PNG")
    face = base64.b64encode(buffer.getvalue()).decode()
    root = app.paths.models_dir.parent  # the models folder the fixture filled
    server = start_server(root, None, ["--api", "--nowebui",
                                       "--ckpt-dir", str(app.models.find("tiny-sdxl").path.parent)])
    body = {"prompt": "a photo of a man", "steps": 3, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "tiny-sdxl.safetensors"}}
    try:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            plain = client.post("/sdapi/v1/txt2img", json=body)
            posed = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"identity": {"args": {
                "method": "InstantID", "images": [face], "adapter_strength": 0.8, "identitynet_strength": 0.8}}}})
            assert plain.status_code == posed.status_code == 200, posed.text
            assert posed.json()["images"][0] != plain.json()["images"][0]
            assert "Identity: " in posed.json()["info"] and "InstantID" in posed.json()["info"]
            bad = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"identity": {"args": {
                "method": "FaceSwap", "images": [face]}}}})
            assert bad.status_code == 422 and "alwayson_scripts.identity.args.method" in bad.text
    finally:
        server.stop()
