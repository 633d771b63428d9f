"""AUTOMATIC1111's /sdapi/v1 and Easel's /easel/v1/jobs against a real server on 127.0.0.1.

One server (started with --api) serves the whole module; every test talks real HTTP.
"""
from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from webui.core.images import read_infotext
from webui.core.infotext import parse_infotext

from api_helpers import TINY, decode, max_diff, payload, start_long_job, stop_job, wait_until
from conftest import API_MAX_BODY_MB as MAX_BODY_MB
from upscale_helpers import make_upscalers, smooth_image


@pytest.fixture(scope="module")
def server(api_server):
    """conftest's session-wide --api server (2 MB body limit, tiny upscalers, LoRA, embeddings, styles)."""
    return api_server


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def healthy(client: httpx.Client) -> None:
    response = client.get("/easel/v1/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def txt2img(client, **changes) -> dict:
    response = client.post("/sdapi/v1/txt2img", json=payload(**changes))
    assert response.status_code == 200, response.text
    return response.json()


# ---- generation ---------------------------------------------------------------------------------


def test_txt2img_shape_and_infotext(client):
    body = txt2img(client, batch_size=2)
    assert set(body) == {"images", "parameters", "info"}
    assert len(body["images"]) == 2
    assert body["parameters"]["prompt"] == TINY["prompt"] and body["parameters"]["steps"] == 3
    info = json.loads(body["info"])
    assert info["all_seeds"] == [42, 43] and info["seed"] == 42
    assert info["sampler_name"] == "Euler a" and len(info["infotexts"]) == 2
    for index, b64 in enumerate(body["images"]):
        image = decode(b64)
        assert image.format == "PNG" and image.size == (64, 64)
        text = read_infotext(image)
        assert text == info["infotexts"][index]
        params = parse_infotext(text).params
        assert params["Seed"] == str(42 + index) and params["Steps"] == "3" and params["Sampler"] == "Euler a"


def test_legacy_sampler_name_and_checkpoint_override(client):
    legacy = json.loads(txt2img(client, sampler_name="DPM++ 2M Karras")["info"])
    assert legacy["sampler_name"] == "DPM++ 2M" and legacy["scheduler"] == "Karras"
    sdxl = txt2img(client, override_settings={"sd_model_checkpoint": "tiny-sdxl"})
    assert parse_infotext(json.loads(sdxl["info"])["infotexts"][0]).params["Model"] == "tiny-sdxl"
    # a per-request override never changes the saved selection
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] != "tiny-sdxl.safetensors"


def test_img2img_and_inpainting(client):
    source = txt2img(client)["images"][0]
    body = client.post("/sdapi/v1/img2img", json=payload(init_images=[source], denoising_strength=0.5))
    assert body.status_code == 200, body.text
    result = body.json()
    assert set(result) == {"images", "parameters", "info"}
    params = parse_infotext(read_infotext(decode(result["images"][0]))).params
    assert params["Denoising strength"] == "0.5"
    assert json.loads(result["info"])["denoising_strength"] == 0.5

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    response = client.post("/sdapi/v1/img2img", json=payload(
        init_images=[source], mask=png_b64(mask), mask_blur=0, inpainting_fill=1, inpaint_full_res=False,
        denoising_strength=0.9, include_init_images=True))
    assert response.status_code == 200, response.text
    images = [decode(b) for b in response.json()["images"]]
    assert len(images) == 2  # the result, then the init image (include_init_images)
    original, inpainted = np.asarray(decode(source).convert("RGB")), np.asarray(images[0].convert("RGB"))
    outside = np.ones((64, 64), bool)
    outside[12:52, 12:52] = False
    assert np.array_equal(original[outside], inpainted[outside])  # untouched outside the mask
    assert not np.array_equal(original[20:44, 20:44], inpainted[20:44, 20:44])
    assert max_diff(images[1], decode(source)) == 0


def test_infotext_field_fills_the_request(client):
    first = txt2img(client, seed=77)
    text = json.loads(first["info"])["infotexts"][0]
    again = client.post("/sdapi/v1/txt2img", json={"infotext": text})
    assert again.status_code == 200, again.text
    assert max_diff(decode(again.json()["images"][0]), decode(first["images"][0])) == 0


def test_scripts_from_the_extension_system(client):
    scripts = client.get("/sdapi/v1/scripts").json()
    assert "x/y/z plot" in scripts["txt2img"] and "prompt matrix" in scripts["img2img"]
    info = client.get("/sdapi/v1/script-info").json()
    xyz = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])
    assert [a["name"] for a in xyz["args"]][:2] == ["x_type", "x_values"]
    assert "CFG Scale" in xyz["args"][0]["choices"]
    # AUTOMATIC1111's positional script_args, mapped onto the script's named arguments
    args = ["CFG Scale", "3, 9", "Nothing", "", "Nothing", "", False, True]
    body = txt2img(client, script_name="X/Y/Z plot", script_args=args)
    assert len(body["images"]) == 3  # grid + 2 cells
    cells = [decode(b) for b in body["images"][1:]]
    assert max_diff(cells[0], decode(txt2img(client, cfg_scale=3)["images"][0])) == 0
    assert max_diff(cells[1], decode(txt2img(client, cfg_scale=9)["images"][0])) == 0
    named = txt2img(client, script_name="xyz_plot", script_args={"x_type": "CFG Scale", "x_values": "3, 9",
                                                                   "draw_legend": False})
    assert max_diff(decode(named["images"][0]), decode(body["images"][0])) == 0
    extensions = {e["name"]: e for e in client.get("/sdapi/v1/extensions").json()}
    assert extensions["xyz-plot"]["enabled"] is True
    assert set(extensions["xyz-plot"]) == {"name", "remote", "branch", "commit_hash", "version", "commit_date",
                                           "enabled"}


# ---- every other endpoint answers with its documented shape ------------------------------------


def test_list_endpoints(client):
    samplers = client.get("/sdapi/v1/samplers").json()
    names = [s["name"] for s in samplers]
    assert {"Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "DDIM", "UniPC", "LMS", "Heun"} <= set(names)
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert {"automatic", "karras", "exponential"} <= {s["name"] for s in schedulers}
    assert all({"name", "label", "aliases", "default_rho", "need_inner_model"} == set(s) for s in schedulers)
    models = client.get("/sdapi/v1/sd-models").json()
    assert {m["model_name"] for m in models} == {"tiny-sd1", "tiny-sdxl"}
    for model in models:
        assert model["title"].startswith(model["filename"]) and not model["filename"].startswith("/")
        assert len(model["hash"]) == 10
    assert client.get("/sdapi/v1/sd-vae").json() == []
    modes = client.get("/sdapi/v1/latent-upscale-modes").json()
    assert {"name": "Latent"} in modes and {"name": "Latent (nearest-exact)"} in modes
    memory = client.get("/sdapi/v1/memory").json()
    assert memory["ram"]["total"] > memory["ram"]["used"] > 0 and "cuda" in memory
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["api"] is True and flags["auth"] is None and flags["device"] == "cpu"


def test_lora_embedding_and_style_items_have_automatic1111_shapes(client):
    loras = client.get("/sdapi/v1/loras").json()
    assert len(loras) == 1
    lora = loras[0]
    assert set(lora) == {"name", "alias", "path", "metadata"}
    assert lora["name"] == "tinystyle" and lora["alias"] == "Tiny Style"
    assert lora["path"] == "sub/tinystyle.safetensors"  # relative to models/Lora, never a server path
    assert lora["metadata"] == {"ss_network_module": "networks.lora", "ss_output_name": "Tiny Style"}

    # which embeddings are `loaded` depends on the loaded checkpoint's text encoder width (32 for tiny SD1)
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd1"}).status_code == 200
    embeddings = client.get("/sdapi/v1/embeddings").json()
    assert set(embeddings) == {"loaded", "skipped"}
    assert set(embeddings["loaded"]) == {"tinyemb"} and set(embeddings["skipped"]) == {"wideemb"}
    fields = {"step", "sd_checkpoint", "sd_checkpoint_name", "shape", "vectors"}
    for item in (embeddings["loaded"]["tinyemb"], embeddings["skipped"]["wideemb"]):
        assert set(item) == fields
    assert embeddings["loaded"]["tinyemb"]["shape"] == 32 and embeddings["loaded"]["tinyemb"]["vectors"] == 3
    assert embeddings["skipped"]["wideemb"]["shape"] == 768 and embeddings["skipped"]["wideemb"]["vectors"] == 1

    styles = client.get("/sdapi/v1/prompt-styles").json()
    assert styles == [{"name": "painterly", "prompt": "oil painting of {prompt}", "negative_prompt": "photo"},
                      {"name": "plain", "prompt": "", "negative_prompt": "lowres, blurry"}]


def test_upscaler_and_face_restorer_lists(client):
    upscalers = client.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest", "2x-TinyCompact", "4x-Tiny"]
    tiny = upscalers[-1]
    assert tiny["model_path"] == "ESRGAN/4x-Tiny.safetensors" and tiny["scale"] == 4  # relative, never a server path
    assert upscalers[3]["scale"] == 2
    # the shared server has a tiny GFPGAN file and no CodeFormer: only installed restorers are listed
    assert client.get("/sdapi/v1/face-restorers").json() == [{"name": "GFPGAN", "cmd_dir": None}]
    assert client.get("/sdapi/v1/realesrgan-models").json() == []


def test_extra_single_image_upscales_like_the_engine(client, server):
    source = smooth_image(64, 64, seed=3)
    response = client.post("/sdapi/v1/extra-single-image",
                           json={"image": png_b64(source), "upscaler_1": "4x-Tiny", "upscaling_resize": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    result = decode(body["image"])
    assert result.size == (128, 128)
    expected = make_upscalers(server.root / "models").upscale(source, "4x-Tiny", scale=2)
    assert max_diff(result, expected) <= 1
    assert result.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: 4x-Tiny"
    assert "Postprocess upscaler: 4x-Tiny" in body["html_info"]
    assert not (server.root / "outputs" / "extras-images").exists()  # the API returns results; it does not save


def test_extra_batch_images_keeps_parameters_and_names_bad_items(client):
    generated = txt2img(client)["images"][0]  # carries its generation parameters
    ok = client.post("/sdapi/v1/extra-batch-images", json={
        "upscaler_1": "Nearest", "resize_mode": 1, "upscaling_resize_w": 96, "upscaling_resize_h": 80,
        "imageList": [{"data": generated, "name": "gen.png"}, {"data": png_b64(smooth_image(32, 32)), "name": "b.png"}]})
    assert ok.status_code == 200, ok.text
    images = [decode(b) for b in ok.json()["images"]]
    assert [im.size for im in images] == [(96, 80), (96, 80)]
    assert read_infotext(images[0]) == read_infotext(decode(generated))  # the source's parameters survive
    assert read_infotext(images[1]) is None

    bad = client.post("/sdapi/v1/extra-batch-images", json={
        "upscaler_1": "Nearest", "imageList": [{"data": generated, "name": "a.png"}, {"data": "bm90IGFuIGltYWdl", "name": "b.png"}]})
    assert bad.status_code == 422 and "imageList.1.data" in bad.text
    unknown = client.post("/sdapi/v1/extra-single-image", json={"image": generated, "upscaler_1": "8x-Missing"})
    assert unknown.status_code == 422 and "upscaler_1" in unknown.text and "4x-Tiny" in unknown.text
    empty = client.post("/sdapi/v1/extra-batch-images", json={"imageList": []})
    assert empty.status_code == 422 and "imageList" in empty.text
    healthy(client)


def test_extras_through_the_jobs_api(client):
    image = png_b64(smooth_image(48, 48, seed=5))
    submitted = client.post("/easel/v1/jobs", json={"type": "extra-single-image",
                                                    "params": {"image": image, "upscaler_1": "2x-TinyCompact"}})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    result = client.get(f"/easel/v1/jobs/{job_id}/result", params={"wait": 120})
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["state"] == "done" and [decode(b).size for b in body["images"]] == [(96, 96)]
    assert "image" not in body["parameters"] and body["parameters"]["upscaler_1"] == "2x-TinyCompact"
    bad = client.post("/easel/v1/jobs", json={"type": "extra-single-image", "params": {"image": image,
                                                                                    "upscaling_resize": -1}})
    assert bad.status_code == 422 and "params" in bad.text and "upscaling_resize" in bad.text


def test_png_info(client):
    encoded = txt2img(client)["images"][0]
    response = client.post("/sdapi/v1/png-info", json={"image": encoded})
    assert response.status_code == 200
    body = response.json()
    assert body["info"].startswith(TINY["prompt"])
    assert body["parameters"]["Prompt"] == TINY["prompt"] and body["parameters"]["Seed"] == "42"
    assert body["parameters"]["Size-1"] == "64" and body["parameters"]["Size-2"] == "64"
    data_url = "data:image/png;base64," + encoded
    assert client.post("/sdapi/v1/png-info", json={"image": data_url}).json()["info"] == body["info"]
    plain = client.post("/sdapi/v1/png-info", json={"image": png_b64(Image.new("RGB", (8, 8)))}).json()
    assert plain["info"] == "" and plain["parameters"] == {}


def test_options_never_show_the_hub_token(client, server):
    options = client.get("/sdapi/v1/options").json()
    assert options["hub_token"] == "********" and "hf_secret123" not in client.get("/sdapi/v1/options").text
    echoed = client.post("/sdapi/v1/options", json={"hub_token": options["hub_token"], "jpeg_quality": 77})
    assert echoed.status_code == 200, echoed.text  # posting back what GET showed is not a change
    assert json.loads((server.root / "data" / "config.json").read_text())["hub_token"] == "hf_secret123"
    refused = client.post("/sdapi/v1/options", json={"hub_token": "hf_other"})
    assert refused.status_code == 403 and "hub_token" in refused.text
    assert "hf_secret123" not in client.get("/sdapi/v1/cmd-flags").text


def test_options_get_and_post(client):
    options = client.get("/sdapi/v1/options").json()
    assert options["samples_format"] == "png" and "queue_size_limit" in options
    assert client.post("/sdapi/v1/options", json={"jpeg_quality": 91}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["jpeg_quality"] == 91
    selected = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd1"})
    assert selected.status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-sd1.safetensors")
    # all or nothing: a bad key refuses the whole change
    refused = client.post("/sdapi/v1/options", json={"jpeg_quality": 50, "no_such_option": 1})
    assert refused.status_code == 422
    assert client.get("/sdapi/v1/options").json()["jpeg_quality"] == 91
    client.post("/sdapi/v1/options", json={"jpeg_quality": 80})


def test_model_management_routes(client):
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert client.post("/sdapi/v1/refresh-vae").status_code == 200
    assert client.post("/sdapi/v1/refresh-loras").status_code == 200
    assert client.post("/sdapi/v1/unload-checkpoint").status_code == 200
    assert client.get("/easel/v1/health").json()["loaded"] is None
    assert client.post("/sdapi/v1/reload-checkpoint").status_code == 200
    assert client.get("/easel/v1/health").json()["loaded"] is not None


def test_idle_progress_and_docs(client):
    progress = client.get("/sdapi/v1/progress").json()
    assert progress["progress"] == 0 and progress["current_image"] is None
    assert set(progress) == {"progress", "eta_relative", "state", "current_image", "textinfo"}
    assert {"job", "job_count", "sampling_step", "sampling_steps", "interrupted", "skipped"} <= set(progress["state"])
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    assert client.post("/sdapi/v1/skip").status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/progress", "/easel/v1/jobs",
                 "/easel/v1/jobs/{job_id}", "/sdapi/v1/script-info"):
        assert path in paths


# ---- concurrency and the queue ------------------------------------------------------------------


def test_sixteen_concurrent_requests_match_single_runs(client):
    seeds = [1000 + i for i in range(16)]

    def one(seed):
        return client.post("/sdapi/v1/txt2img", json=payload(seed=seed, steps=2))

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(one, seeds))
    assert [r.status_code for r in responses] == [200] * 16
    for seed, response in zip(seeds, responses):
        assert json.loads(response.json()["info"])["seed"] == seed
        single = one(seed)
        assert max_diff(decode(response.json()["images"][0]), decode(single.json()["images"][0])) == 0


def test_full_queue_gives_429_and_nothing_is_dropped(client):
    assert client.post("/sdapi/v1/options", json={"queue_size_limit": 3}).status_code == 200
    long_id = start_long_job(client)
    try:
        def submit(i):
            return client.post("/easel/v1/jobs", json={"params": payload(seed=i, steps=2)})

        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(submit, range(10)))
        accepted = [r for r in responses if r.status_code == 202]
        refused = [r for r in responses if r.status_code == 429]
        assert len(accepted) + len(refused) == 10
        assert len(accepted) == 3 and all(r.headers["Retry-After"].isdigit() for r in refused)
        assert "queue is full" in refused[0].json()["detail"]
        blocking = client.post("/sdapi/v1/txt2img", json=payload())
        assert blocking.status_code == 429 and "Retry-After" in blocking.headers
        listing = client.get("/easel/v1/jobs").json()
        assert listing["running"] == long_id and listing["queued"] == 3 and listing["limit"] == 3
        assert [j["position"] for j in listing["jobs"]] == [0, 1, 2, 3]
        assert all(j["owner"] == "api" and j["mine"] for j in listing["jobs"])
        # cancel a queued job: it is never run, and says so
        cancelled_id = accepted[1].json()["id"]
        assert client.delete(f"/easel/v1/jobs/{cancelled_id}").json()["state"] == "cancelled"
    finally:
        stop_job(client, long_id)
        client.post("/sdapi/v1/options", json={"queue_size_limit": 64})
    ids = [r.json()["id"] for r in accepted]
    for job_id in ids:  # every accepted job ends in a known state, with its result fetchable
        result = client.get(f"/easel/v1/jobs/{job_id}/result", params={"wait": 120})
        assert result.status_code == 200, result.text
        assert result.json()["state"] == ("cancelled" if job_id == cancelled_id else "done")
    done = client.get(f"/easel/v1/jobs/{ids[0]}/result").json()
    assert len(done["images"]) == 1 and done["parameters"]["steps"] == 2


def test_jobs_api_submit_follow_fetch(client):
    response = client.post("/easel/v1/jobs", json={"type": "txt2img", "params": payload(force_task_id="my-task-1")})
    assert response.status_code == 202 and response.json()["id"] == "my-task-1"
    assert response.headers["Location"] == "/easel/v1/jobs/my-task-1"
    result = client.get("/easel/v1/jobs/my-task-1/result", params={"wait": 120}).json()
    assert result["state"] == "done" and len(result["images"]) == 1
    direct = txt2img(client)
    assert max_diff(decode(result["images"][0]), decode(direct["images"][0])) == 0
    info = client.get("/easel/v1/jobs/my-task-1").json()
    assert info["progress"]["fraction"] == 1.0 and info["position"] is None
    assert client.post("/easel/v1/jobs", json={"params": payload(force_task_id="my-task-1")}).status_code == 409
    source = direct["images"][0]
    img = client.post("/easel/v1/jobs", json={"type": "img2img", "params": payload(init_images=[source])})
    assert img.status_code == 202
    assert client.get(f"/easel/v1/jobs/{img.json()['id']}/result", params={"wait": 120}).json()["state"] == "done"
    bad = client.post("/easel/v1/jobs", json={"params": payload(steps=0)})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "params", "steps"]


def test_progress_preview_skip_and_interrupt(client):
    job_id = start_long_job(client, n_iter=3, steps=60, width=256, height=256)
    try:
        seen = []

        def rising():
            body = client.get("/sdapi/v1/progress").json()
            seen.append(body)
            return len(seen) > 2 and body["progress"] > seen[0]["progress"] and body["current_image"]

        wait_until(rising, timeout=120, what="rising progress with a preview")
        last = seen[-1]
        assert 0 < last["progress"] < 1 and last["state"]["job"] == "txt2img"
        assert last["state"]["sampling_steps"] == 60 and last["eta_relative"] > 0
        assert decode(last["current_image"]).size[0] > 0
        assert client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
        preview = client.get(f"/easel/v1/jobs/{job_id}", params={"preview": True}).json()["progress"]["preview"]
        assert preview and decode(preview).format == "PNG"

        assert client.post("/sdapi/v1/skip").status_code == 200
        wait_until(lambda: client.get(f"/easel/v1/jobs/{job_id}").json()["progress"]["batch"] >= 1, timeout=60,
                   what="the next batch after skip")
        assert client.post("/sdapi/v1/interrupt").status_code == 200
        wait_until(lambda: client.get(f"/easel/v1/jobs/{job_id}").json()["state"] == "interrupted", timeout=60,
                   what="the interrupted job")
    finally:
        stop_job(client, job_id)
    result = client.get(f"/easel/v1/jobs/{job_id}/result").json()
    easel_info = json.loads(result["info"])["easel"]
    assert easel_info["interrupted"] is True and easel_info["skipped_batches"] >= 1
    healthy(client)
    txt2img(client)


def test_disconnecting_client_does_not_stall_the_queue(client, server):
    body = payload(steps=150, width=512, height=512, n_iter=4, force_task_id="abandoned")
    with httpx.Client(base_url=server.url, timeout=3) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            impatient.post("/sdapi/v1/txt2img", json=body)
    wait_until(lambda: client.get("/easel/v1/jobs/abandoned").json()["state"] in ("interrupted", "cancelled"),
               timeout=30, what="the abandoned job to stop")
    response = client.post("/sdapi/v1/txt2img", json=payload(), timeout=60)
    assert response.status_code == 200


# ---- bad input: the right 4xx, naming the field, and a healthy server afterwards ------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BAD_INPUTS = [
    ("wrong type", "/sdapi/v1/txt2img", {"steps": "many"}, 422, "steps"),
    ("bool for int", "/sdapi/v1/txt2img", {"width": [64]}, 422, "width"),
    ("unknown field", "/sdapi/v1/txt2img", {"stepz": 3}, 422, "stepz"),
    ("huge width", "/sdapi/v1/txt2img", {"width": 100_000}, 422, "width"),
    ("width not /8", "/sdapi/v1/txt2img", {"width": 65}, 422, "width"),
    ("zero steps", "/sdapi/v1/txt2img", {"steps": 0}, 422, "steps"),
    ("too many steps", "/sdapi/v1/txt2img", {"steps": 100_000}, 422, "steps"),
    ("negative cfg", "/sdapi/v1/txt2img", {"cfg_scale": -1}, 422, "cfg_scale"),
    ("huge cfg", "/sdapi/v1/txt2img", {"cfg_scale": 1e9}, 422, "cfg_scale"),
    ("huge batch", "/sdapi/v1/txt2img", {"batch_size": 10_000}, 422, "batch_size"),
    ("bad seed", "/sdapi/v1/txt2img", {"seed": -5}, 422, "seed"),
    ("unknown sampler", "/sdapi/v1/txt2img", {"sampler_name": "Magic"}, 422, "sampler_name"),
    ("unknown scheduler", "/sdapi/v1/txt2img", {"scheduler": "zigzag"}, 422, "scheduler"),
    ("unknown script", "/sdapi/v1/txt2img", {"script_name": "nope"}, 422, "script_name"),
    ("too many script args", "/sdapi/v1/txt2img", {"script_name": "prompt matrix", "script_args": [1] * 9}, 422,
     "script_args"),
    ("unknown alwayson", "/sdapi/v1/txt2img", {"alwayson_scripts": {"nope": {"args": []}}}, 422,
     "alwayson_scripts"),
    ("unknown override", "/sdapi/v1/txt2img", {"override_settings": {"no_such": 1}}, 422, "override_settings"),
    ("protected override", "/sdapi/v1/txt2img", {"override_settings": {"outdir_txt2img_samples": "/tmp"}}, 422,
     "outdir_txt2img_samples"),
    ("traversal in model name", "/sdapi/v1/txt2img",
     {"override_settings": {"sd_model_checkpoint": "../../etc/passwd"}}, 422, "sd_model_checkpoint"),
    ("absolute model path", "/sdapi/v1/txt2img",
     {"override_settings": {"sd_model_checkpoint": "/etc/passwd"}}, 422, "sd_model_checkpoint"),
    ("windows model path", "/sdapi/v1/txt2img",
     {"override_settings": {"sd_model_checkpoint": "C:\\models\\x.safetensors"}}, 422, "sd_model_checkpoint"),
    ("unknown model", "/sdapi/v1/txt2img", {"override_settings": {"sd_model_checkpoint": "nope"}}, 422,
     "sd_model_checkpoint"),
    ("no init image", "/sdapi/v1/img2img", {"init_images": []}, 422, "init_images"),
    ("malformed base64", "/sdapi/v1/img2img", {"init_images": ["%%%not base64%%%"]}, 422, "init_images"),
    ("base64 not an image", "/sdapi/v1/img2img", {"init_images": [_b64(b"hello world")]}, 422, "init_images"),
    ("malformed mask", "/sdapi/v1/img2img", {"mask": "@@"}, 422, "mask"),
    ("denoising out of range", "/sdapi/v1/img2img", {"denoising_strength": 3}, 422, "denoising_strength"),
    ("bad resize mode", "/sdapi/v1/img2img", {"resize_mode": 9}, 422, "resize_mode"),
    ("png-info not base64", "/sdapi/v1/png-info", {"image": "%%%"}, 422, "image"),
    ("loopback image URL", "/sdapi/v1/png-info", {"image": "http://127.0.0.1:1/a.png"}, 422, "image"),
    ("private image URL", "/sdapi/v1/png-info", {"image": "http://10.1.2.3/a.png"}, 422, "image"),
    ("link-local image URL", "/sdapi/v1/png-info", {"image": "http://169.254.169.254/latest/meta-data"}, 422,
     "image"),
    ("IPv6 loopback URL", "/sdapi/v1/png-info", {"image": "http://[::1]/a.png"}, 422, "image"),
    ("localhost by name", "/sdapi/v1/png-info", {"image": "http://localhost/a.png"}, 422, "image"),
    ("file URL", "/sdapi/v1/png-info", {"image": "file:///etc/passwd"}, 422, "image"),
    ("img2img private URL", "/sdapi/v1/img2img", {"init_images": ["http://192.168.1.1/a.png"]}, 422,
     "init_images"),
    ("options: path setting", "/sdapi/v1/options", {"outdir_txt2img_samples": "/etc"}, 403,
     "outdir_txt2img_samples"),
    ("options: security setting", "/sdapi/v1/options", {"api_enable_requests": True}, 403, "api_enable_requests"),
    ("options: unknown", "/sdapi/v1/options", {"no_such_option": 1}, 422, "no_such_option"),
    ("options: out of range", "/sdapi/v1/options", {"jpeg_quality": 1000}, 422, "jpeg_quality"),
    ("options: model path", "/sdapi/v1/options", {"sd_model_checkpoint": "../x.safetensors"}, 422,
     "sd_model_checkpoint"),
    ("jobs: wrong type", "/easel/v1/jobs", {"type": "upscale", "params": {}}, 422, "type"),
    ("jobs: bad params", "/easel/v1/jobs", {"params": {"cfg_scale": "high"}}, 422, "cfg_scale"),
    ("jobs: bad task id", "/easel/v1/jobs", {"params": {"force_task_id": "../x"}}, 422, "force_task_id"),
]


@pytest.mark.parametrize("name,path,changes,status,field", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input(client, name, path, changes, status, field):
    if path == "/sdapi/v1/txt2img":
        body = payload(**changes)
    elif path == "/sdapi/v1/img2img":
        body = payload(init_images=[png_b64(Image.new("RGB", (64, 64)))])
        body.update(changes)
    else:
        body = changes
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert field in response.text
    assert "Traceback" not in response.text
    healthy(client)


@pytest.mark.parametrize("raw,field", [('{"cfg_scale": NaN}', "cfg_scale"), ('{"steps": Infinity}', "steps"),
                                       ('{"denoising_strength": -Infinity}', "denoising_strength"),
                                       ('{"prompt": "x", ', "body"), ("[1, 2]", "body")])
def test_non_finite_and_malformed_json(client, raw, field):
    response = client.post("/sdapi/v1/txt2img", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert field in response.text
    healthy(client)


def test_oversize_body_is_413(client):
    big = "A" * (MAX_BODY_MB * 1024 * 1024 + 100)
    response = client.post("/sdapi/v1/png-info", json={"image": big})
    assert response.status_code == 413 and "api-max-body-mb" in response.json()["detail"]
    chunked = client.post("/sdapi/v1/png-info", content=iter([b'{"image": "', big.encode(), b'"}']),
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    # every route that takes a body, not only /sdapi and /easel
    detect = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [big]})
    assert detect.status_code == 413 and "api-max-body-mb" in detect.json()["detail"]
    chunked = client.post("/controlnet/detect", content=iter([b'{"controlnet_input_images": ["', big.encode(),
                                                              b'"]}']), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    healthy(client)


def test_controlnet_detect_runs_as_a_queue_job(client):
    import cv2

    image = smooth_image(80, 64, seed=9)
    answer = client.post("/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [png_b64(image), png_b64(image)],
        "controlnet_processor_res": 64, "controlnet_threshold_a": 40, "controlnet_threshold_b": 120})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["info"] == "Success" and len(body["images"]) == 2
    expected = cv2.Canny(np.asarray(image), 40, 120)
    for b64 in body["images"]:
        detected = np.asarray(decode(b64))
        assert np.array_equal(detected[..., 0] if detected.ndim == 3 else detected, expected)
    jobs = client.get("/easel/v1/jobs", params={"finished": True}).json()["jobs"]
    detects = [j for j in jobs if j["type"] == "controlnet-detect"]
    assert detects and detects[-1]["state"] == "done" and detects[-1]["owner"] == "api"
    bad = client.post("/controlnet/detect", json={"controlnet_module": "softedge_hed",
                                                   "controlnet_input_images": [png_b64(image)]})
    assert bad.status_code == 422 and "controlnet_module" in bad.text and "Traceback" not in bad.text
    healthy(client)


def test_unknown_job_and_result_of_unfinished(client):
    assert client.get("/easel/v1/jobs/nope").status_code == 404
    assert client.delete("/easel/v1/jobs/nope").status_code == 404
    assert client.get("/easel/v1/jobs/nope/result").status_code == 404
    assert client.get("/sdapi/v1/no-such-route").status_code == 404


def test_a_feature_easel_lacks_is_a_422_naming_field_and_capability_and_a_missing_route_a_501(client):
    """A well-formed request for something Easel cannot do yet is refused before any work, never a 5xx."""
    keep = "keeping override_settings after the request (Easel never changes saved settings from a generation request)"
    for body, field, capability in ((payload(override_settings_restore_afterwards=False),
                                     "override_settings_restore_afterwards", keep),
                                    (payload(alwayson_scripts={"AnimateDiff": {"args": [True]}}),
                                     "alwayson_scripts", "AnimateDiff")):
        response = client.post("/sdapi/v1/txt2img", json=body)
        answer = response.json()
        assert response.status_code == 422 and answer["error"] == "NotImplemented", response.text
        assert answer["missing"] == capability and answer["field"].startswith(field)
        assert answer["detail"][0]["loc"][:2] == ["body", field] and "nothing was run" in answer["detail"][0]["msg"]
    kept = payload(override_settings_restore_afterwards=False)
    queued = client.post("/easel/v1/jobs", json={"type": "txt2img", "params": kept})
    assert queued.status_code == 422
    assert queued.json()["detail"][0]["loc"] == ["body", "params", "override_settings_restore_afterwards"]
    assert queued.json()["field"] == "params.override_settings_restore_afterwards"
    route = client.post("/sdapi/v1/interrogate", json={"image": "", "model": "clip"})
    assert route.status_code == 501 and route.json()["missing"].startswith("interrogation")


def test_a1111_hires_and_img2img_fields_in_its_payload_shape(client):
    """hr_checkpoint_name, firstpass_image (base64), firstphase_*, and img2img's initial_noise_multiplier,
    mask_round, latent_mask (base64) and mask_blur_x/y, as AUTOMATIC1111's clients send them."""
    first = decode(txt2img(client, steps=3)["images"][0])
    body = txt2img(client, steps=3, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, hr_upscaler="Lanczos",
                   hr_checkpoint_name="tiny-sdxl", firstpass_image=png_b64(first), width=128, height=128,
                   firstphase_width=64, firstphase_height=64)
    params = parse_infotext(json.loads(body["info"])["infotexts"][0]).params
    assert params["Hires checkpoint"].startswith("tiny-sdxl [") and params["Size"] == "64x64"
    assert decode(body["images"][0]).size == (96, 96)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    i2i = payload(init_images=[png_b64(first)], mask=png_b64(mask), denoising_strength=0.6, inpaint_full_res=False)
    plain = client.post("/sdapi/v1/img2img", json=i2i)
    changed = client.post("/sdapi/v1/img2img", json={**i2i, "initial_noise_multiplier": 0.5, "mask_round": False,
                                                     "latent_mask": png_b64(mask), "mask_blur_x": 8, "mask_blur_y": 2})
    assert plain.status_code == changed.status_code == 200, changed.text
    info = parse_infotext(json.loads(changed.json()["info"])["infotexts"][0]).params
    assert info["Noise multiplier"] == "0.5" and "Mask blur" not in info
    assert max_diff(decode(changed.json()["images"][0]), decode(plain.json()["images"][0])) > 0


def test_guidance_add_ons_and_the_refiner_take_the_originals_payloads(client):
    """NGMS, Forge's FreeU and PAG, the A1111 SAG extension and the Refiner script, as their clients send them."""
    plain = decode(txt2img(client, steps=4)["images"][0])
    body = txt2img(client, steps=4, s_min_uncond=5.0, refiner_checkpoint="tiny-sdxl", refiner_switch_at=0.6,
                   alwayson_scripts={
                       "FreeU Integrated (SD 1.x, SD 2.x, SDXL)": {"args": [True, 1.3, 1.4, 0.9, 0.2, 0.0, 1.0]},
                       "PerturbedAttentionGuidance Integrated": {"args": [True, 3.0, 0.0, 0.0, 1.0]},
                       "Self Attention Guidance": {"args": [True, 0.75, 1.0]}})
    params = parse_infotext(json.loads(body["info"])["infotexts"][0]).params
    assert params["NGMS"] == "5" and params["freeu_enabled"] == "True" and params["pagi_scale"] == "3"
    assert params["SAG Guidance Scale"] == "0.75" and params["Refiner"].startswith("tiny-sdxl [")
    assert max_diff(decode(body["images"][0]), plain) > 0
    restored = client.post("/sdapi/v1/txt2img", json={"infotext": json.loads(body["info"])["infotexts"][0]})
    assert restored.status_code == 200, restored.text
    assert "Refiner" in parse_infotext(json.loads(restored.json()["info"])["infotexts"][0]).params
    for changes, field in ((dict(refiner_checkpoint="nope"), "refiner_checkpoint"),
                           (dict(s_min_uncond=-1), "s_min_uncond"),
                           (dict(alwayson_scripts={"Self Attention Guidance": {"args": [True, "x"]}}),
                            "alwayson_scripts.self attention guidance.args.scale")):
        response = client.post("/sdapi/v1/txt2img", json=payload(**changes))
        assert response.status_code == 422 and field in response.text, response.text


def test_the_tiled_vae_extension_switch_tiles_this_request(client, server):
    """Tiled VAE's always-on args (enabled, encoder tile in pixels, decoder tile in latents, ...) turn on Easel's
    VAE tiling with its tile sizes: the server logs the tiled decode at 8x the decoder tile, and the picture is
    the untiled one (tiles share GroupNorm statistics). A bad tile size is a 422 naming it."""
    size = dict(width=128, height=128)  # the tiny VAE's own tiles are 64 px; 12 latents are 96 px

    def tiled_decodes(side: int) -> int:
        return server.log.read_text().count(f"VAE decode in tiles of {side} px")

    before = tiled_decodes(96)
    plain = txt2img(client, **size)
    assert tiled_decodes(96) == before
    tiled = txt2img(client, **size, alwayson_scripts={"Tiled VAE": {"args": [True, 1024, 12, True, True, True]}})
    assert tiled_decodes(96) == before + 1
    off = txt2img(client, **size, alwayson_scripts={"Tiled VAE": {"args": [False, 1024, 12]}})
    assert tiled_decodes(96) == before + 1
    a, b, c = (np.asarray(decode(r["images"][0])).astype(float) for r in (plain, tiled, off))
    assert np.array_equal(a, c) and np.abs(a - b).max() <= 1  # within one 8-bit level: fp32 sums in another order
    response = client.post("/sdapi/v1/txt2img", json=payload(alwayson_scripts={"Tiled VAE": {"args": [True, 1024,
                                                                                                     "big"]}}))
    assert response.status_code == 422 and "alwayson_scripts.Tiled VAE.args.decoder_tile_size" in response.text


def test_tiled_diffusion_payload(client):
    """Tiled Diffusion's always-on args in its UI's order (latent tiles of 6 with overlap 2 on a 64 px picture);
    a bad argument is a 422 naming it."""
    args = [True, "Mixture of Diffusers", False, True, 1024, 1024, 6, 6, 2, 4, "None", 2, False, 10, 1, 1, 64, False,
            True, True, False, True, 0.0, 0.0, 0.5, 1.0, "red", "", "Background", 0.2, -1]
    body = txt2img(client, alwayson_scripts={"Tiled Diffusion": {"args": args}})
    info = json.loads(body["info"])["infotexts"][0]
    assert "Tiled Diffusion: \"{'Method': 'Mixture of Diffusers', 'Tile tile width': 6" in info
    response = client.post("/sdapi/v1/txt2img", json=payload(alwayson_scripts={"Tiled Diffusion": {
        "args": [True, "MultiDiffusion", False, True, 1024, 1024, 6, 6, 2, 0]}}))
    assert response.status_code == 422 and "Tiled Diffusion.args.tile_batch_size" in response.text


def test_upscale_scripts_take_their_positional_script_args(client):
    """Ultimate SD upscale's and SD upscale's script_args as their clients send them (dropdowns as indexes,
    the upscaler as an index of /sdapi/v1/upscalers: 1 is Lanczos); 64 px tiles, so four tiles each."""
    source = png_b64(Image.new("RGB", (64, 64), (90, 120, 200)))
    usdu = [None, 64, 64, 8, 0, 64, 0.35, 16, 1, True, 0, False, 4, 0, 2, 2048, 2048, 2.0]
    body = client.post("/sdapi/v1/img2img", json=payload(init_images=[source], denoising_strength=0.3, steps=1,
                                                         script_name="ultimate sd upscale", script_args=usdu))
    assert body.status_code == 200, body.text
    result = body.json()
    assert decode(result["images"][0]).size == (128, 128)
    assert "Ultimate SD upscale upscaler: Lanczos" in json.loads(result["info"])["infotexts"][0]
    body = client.post("/sdapi/v1/img2img", json=payload(init_images=[source], script_name="SD upscale", steps=1,
                                                         script_args=[None, 0, "Lanczos", 2.0]))
    assert body.status_code == 200, body.text
    assert decode(body.json()["images"][0]).size == (128, 128)
    bad = client.post("/sdapi/v1/img2img", json=payload(init_images=[source], script_name="SD upscale",
                                                        script_args=["", 32, 99, 2.0]))
    assert bad.status_code == 422 and "script_args.upscaler_index" in bad.text


def test_adetailer_and_regional_prompter_payloads(server, client):
    """ADetailer's and Regional Prompter's always-on args, as their docs show them (detailer models are looked
    up when a request comes, so the tiny ONNX detector can be dropped into models/adetailer now)."""
    from detailer_helpers import write_tiny_yolo

    write_tiny_yolo(server.root / "models" / "adetailer" / "tiny_yolo.onnx")
    plain = txt2img(client, sampler_name="Euler")
    unit = {"ad_model": "tiny_yolo.pt", "ad_model_classes": "bright", "ad_mask_k_largest": 1, "ad_confidence": 0.1,
            "ad_dilate_erode": 0, "ad_mask_blur": 0, "ad_denoising_strength": 1.0, "ad_inpaint_only_masked": True,
            "ad_inpaint_only_masked_padding": 8, "ad_use_steps": True, "ad_steps": 4, "is_api": []}
    detailed = txt2img(client, sampler_name="Euler", alwayson_scripts={"ADetailer": {"args": [True, False, unit]}})
    a, b = (np.asarray(decode(r["images"][0])).astype(int) for r in (plain, detailed))
    changed = np.argwhere(np.abs(a - b).sum(-1) > 0)
    assert len(changed) and (changed.max(0) - changed.min(0)).max() < 8  # one 8x8 cell, the rest exact
    info = json.loads(detailed["info"])["infotexts"][0]
    assert "ADetailer model: tiny_yolo.pt" in info and "ADetailer model classes: bright" in info
    bad = client.post("/sdapi/v1/txt2img", json=payload(alwayson_scripts={"ADetailer": {"args": [
        True, {**unit, "ad_denoising_strength": 3}]}}))
    assert bad.status_code == 422 and "ADetailer.args.1.ad_denoising_strength" in bad.text
    off = txt2img(client, sampler_name="Euler", alwayson_scripts={"ADetailer": {"args": [False, False, unit]}})
    assert np.array_equal(np.asarray(decode(off["images"][0])).astype(int), a)
    # Regional Prompter: the README's example (17 args, the old name "Vertical" for Rows)
    rp = [True, False, "Matrix", "Vertical", "Mask", "Prompt", "1,1", "", False, False, False, "Attention", False,
          "0", "0", "0", ""]
    regional = txt2img(client, prompt="a red apple BREAK a blue sky", alwayson_scripts={"Regional Prompter": {
        "args": rp}})
    text = json.loads(regional["info"])["infotexts"][0]
    assert "RP Active: True" in text and "RP Matrix submode: Vertical" in text and 'RP Ratios: "1,1"' in text
    unregioned = txt2img(client, prompt="a red apple BREAK a blue sky")
    assert max_diff(decode(regional["images"][0]), decode(unregioned["images"][0])) > 0
    bad = client.post("/sdapi/v1/txt2img", json=payload(prompt="one region", alwayson_scripts={
        "Regional Prompter": {"args": rp}}))
    assert bad.status_code == 422 and "prompt" in bad.text and "2 region" in bad.text
    # Prompt mode, as the extension's UI sends it (20 args: Prompt-Ex submode 6th, threshold 16th)
    rp = [True, False, "Prompt", "Columns", "Mask", "Prompt-Ex", "1,1", "0.2", False, False, False, "Attention",
          False, "0", "0", "0.85", "", "0", "0", False]
    regional = txt2img(client, prompt="a lady, shirt BREAK a red, shirt", alwayson_scripts={"Regional Prompter": {
        "args": rp}})
    text = json.loads(regional["info"])["infotexts"][0]
    assert "RP Divide mode: Prompt" in text and "RP Prompt submode: Prompt-Ex" in text and "RP threshold: 0.85" in text
    bad = client.post("/sdapi/v1/txt2img", json=payload(prompt="a lady, shirt BREAK a red, hat", alwayson_scripts={
        "Regional Prompter": {"args": rp}}))
    assert bad.status_code == 422 and "prompt" in bad.text and "missing: hat" in bad.text
    healthy(client)


def test_adetailer_noise_multiplier_and_restore_face(server, client):
    """ADetailer's ad_noise_multiplier / ad_restore_face are accepted (they answered 422 before) and written as
    ADetailer writes them; a restorer that is not installed is a 422 naming the argument."""
    from detailer_helpers import write_tiny_yolo

    write_tiny_yolo(server.root / "models" / "adetailer" / "tiny_yolo.onnx")
    unit = {"ad_model": "tiny_yolo.onnx", "ad_model_classes": "bright", "ad_mask_k_largest": 1, "ad_confidence": 0.1,
            "ad_use_noise_multiplier": True, "ad_noise_multiplier": 0.8, "ad_restore_face": True}
    made = txt2img(client, sampler_name="Euler", override_settings={"face_restoration_model": "GFPGAN"},
                   alwayson_scripts={"ADetailer": {"args": [True, False, unit]}})
    params = parse_infotext(json.loads(made["info"])["infotexts"][0]).params
    assert params["ADetailer noise multiplier"] == "0.8" and params["ADetailer restore face"] == "True"
    bad = client.post("/sdapi/v1/txt2img", json=payload(override_settings={"face_restoration_model": "CodeFormer"},
                                                        alwayson_scripts={"ADetailer": {"args": [True, False, unit]}}))
    assert bad.status_code == 422 and "ADetailer.args.2.ad_restore_face" in bad.text and "Codeformer" in bad.text


def test_model_wide_settings_are_refused_per_request_and_named(client):
    """Weight storage, memory mode, the GPU weights budget, fast mode and the model caches are read when models
    load: a request's override_settings could not change them for one job, so they are a 422 naming the
    setting and where to set it, never silently ignored; /sdapi/v1/options still takes them."""
    for key, value in (("weight_storage", "fp8_e5m2"), ("memory_mode", "Model offload"), ("gpu_weights_mb", 2048),
                       ("fast_mode", True), ("sd_checkpoints_limit", 2)):
        response = client.post("/sdapi/v1/txt2img", json=payload(override_settings={key: value}))
        assert response.status_code == 422, (key, response.text)
        assert f"override_settings.{key}" in response.text and "/sdapi/v1/options" in response.text
    before = client.get("/sdapi/v1/options").json()["memory_mode"]
    try:
        assert client.post("/sdapi/v1/options", json={"memory_mode": "Model offload"}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["memory_mode"] == "Model offload"
    finally:
        client.post("/sdapi/v1/options", json={"memory_mode": before})


def test_a1111s_live_preview_option_name_and_its_approx_nn_choice(client):
    """AUTOMATIC1111 calls the preview method `show_progress_type`: /options takes and shows it under that name
    too (stored as live_preview_method), its "Approx NN" runs as TAESD, a bad value is a 422 naming the key."""
    before = client.get("/sdapi/v1/options").json()["live_preview_method"]
    try:
        assert client.post("/sdapi/v1/options", json={"show_progress_type": "Approx cheap"}).status_code == 200
        options = client.get("/sdapi/v1/options").json()
        assert options["live_preview_method"] == options["show_progress_type"] == "Approx cheap"
        assert client.post("/sdapi/v1/options", json={"show_progress_type": "Approx NN"}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["live_preview_method"] == "TAESD"
        response = client.post("/sdapi/v1/options", json={"show_progress_type": "Crystal ball"})
        assert response.status_code == 422 and "show_progress_type" in response.text
        response = client.post("/sdapi/v1/txt2img", json=payload(override_settings={"show_progress_type": "Full"}))
        assert response.status_code == 200, response.text
    finally:
        client.post("/sdapi/v1/options", json={"live_preview_method": before})


def test_per_checkpoint_choices_over_easels_checkpoints_api(client):
    """/easel/v1/checkpoints lists each checkpoint's remembered weight storage, VAE and modules; PATCH changes
    them all or none (a bad field is a 422 naming it and nothing is saved); the next generation with that
    checkpoint stores its weights so and says so in the infotext, while the other checkpoint is untouched."""
    listed = {c["name"]: c for c in client.get("/easel/v1/checkpoints").json()}
    assert {"tiny-sd1.safetensors", "tiny-sdxl.safetensors"} <= set(listed)
    sd1 = listed["tiny-sd1.safetensors"]
    assert sd1["weight_storage"] == "Automatic" and sd1["weight_storage_from"] == "default"
    assert "fp8_e4m3fn" in sd1["weight_storage_choices"] and sd1["modules"] == [] and sd1["vae"] == "Automatic"
    try:
        refused = client.patch("/easel/v1/checkpoints/tiny-sd1", json={"weight_storage": "fp8_e4m3fn",
                                                                       "vae": "no-such-vae.safetensors"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "vae"]
        assert client.get("/easel/v1/checkpoints/tiny-sd1").json()["weight_storage"] == "Automatic"  # none saved
        refused = client.patch("/easel/v1/checkpoints/tiny-sd1", json={"weight_storage": "fp4"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "weight_storage"]
        assert client.patch("/easel/v1/checkpoints/tiny-sd1", json={"sd_vae": "x"}).status_code == 422
        assert client.get("/easel/v1/checkpoints/no-such-model").status_code == 404
        changed = client.patch("/easel/v1/checkpoints/tiny-sd1", json={"weight_storage": "fp8_e4m3fn"}).json()
        assert changed["weight_storage"] == changed["weight_storage_in_force"] == "fp8_e4m3fn"
        assert changed["weight_storage_from"] == "checkpoint"
        info = json.loads(txt2img(client, override_settings={"sd_model_checkpoint": "tiny-sd1"})["info"])
        assert "Weights: fp8_e4m3fn" in info["infotexts"][0]
        now = client.get("/easel/v1/checkpoints/tiny-sd1.safetensors").json()
        assert now["loaded"] and now["loaded_weight_storage"] == "fp8_e4m3fn"
        other = json.loads(txt2img(client, override_settings={"sd_model_checkpoint": "tiny-sdxl"})["info"])
        assert "Weights:" not in other["infotexts"][0]
    finally:
        client.patch("/easel/v1/checkpoints/tiny-sd1", json={"weight_storage": "Automatic"})
    assert client.get("/easel/v1/checkpoints/tiny-sd1").json()["weight_storage_from"] == "default"


def test_forges_diffusion_in_low_bits_option(client):
    """Forge's `forge_unet_storage_dtype` is weight_storage under Forge's names: /options takes and shows its
    values ("float8-e4m3fn", "bnb-nf4 (fp16 LoRA)" ...); FP4, which Easel lacks, is a 422 naming the key; in a
    request's override_settings the value in force is accepted (Forge clients send it every time), another is
    a 422 (it is how models are loaded, not one request's)."""
    try:
        assert client.post("/sdapi/v1/options", json={"forge_unet_storage_dtype": "float8-e4m3fn"}).status_code == 200
        options = client.get("/sdapi/v1/options").json()
        assert options["weight_storage"] == "fp8_e4m3fn" and options["forge_unet_storage_dtype"] == "float8-e4m3fn"
        assert client.post("/sdapi/v1/options",
                           json={"forge_unet_storage_dtype": "float8-e5m2 (fp16 LoRA)"}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["weight_storage"] == "fp8_e5m2"
        refused = client.post("/sdapi/v1/options", json={"forge_unet_storage_dtype": "bnb-fp4"})
        assert refused.status_code == 422 and "forge_unet_storage_dtype" in refused.text
        assert client.post("/sdapi/v1/options", json={"forge_unet_storage_dtype": "Automatic"}).status_code == 200
        same = client.post("/sdapi/v1/txt2img", json=payload(steps=2, override_settings={
            "forge_unet_storage_dtype": "Automatic", "sd_model_checkpoint": "tiny-sd1"}))
        assert same.status_code == 200, same.text
        other = client.post("/sdapi/v1/txt2img", json=payload(steps=2, override_settings={
            "forge_unet_storage_dtype": "float8-e4m3fn"}))
        assert other.status_code == 422
        assert other.json()["detail"][0]["loc"] == ["body", "override_settings", "forge_unet_storage_dtype"]
    finally:
        client.post("/sdapi/v1/options", json={"weight_storage": "Automatic"})
