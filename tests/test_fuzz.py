"""Fuzzing a real server over HTTP: damaged images and hostile JSON never give a 5xx.

Every route that takes an image or a JSON body gets thousands of seeded, damaged images
(every format Pillow writes, and some it only reads: truncated, bytes flipped, header
fields rewritten, chunk lengths inflated, decompression bombs) and bad values (NaN,
±Infinity, 1e308, 2**70, a 5000-digit number, wrong types, 1000 levels of nesting).
What must hold: no 5xx at all (a feature Easel lacks is a 422 naming its field, like any
other refusal), every 4xx naming the field that was wrong, and the server still generating.

Generation requests that pass validation are not run: each carries `force_task_id` of a job
that already exists, so the server answers 409 right after validating, and the fuzz stays
within seconds. Counts are sized for a 2-core CI machine (the whole module: ~30-60 s).
"""
from __future__ import annotations

import base64
import io
import json
import random
import time
from typing import Any, Iterable

import httpx
import pytest
from PIL import Image

from api_helpers import TINY
from conftest import start_server
from fuzz_inputs import BAD_NUMBERS, damaged_images, deep_nesting, hostile_values

SEED = 23
PNG_INFO_COUNT = 2000       # damaged images against png-info (cheap: decoding only)
PER_ROUTE_COUNT = 40        # undecodable images against each generation / extras / ControlNet field
TAKEN = "fuzz-taken"        # a job id that exists: a request that passes validation answers 409, unrun


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_ckpt_dir):
    running = start_server(tmp_path_factory.mktemp("fuzz"), tiny_ckpt_dir, ["--api", "--nowebui"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        first = c.post("/sdapi/v1/txt2img", json={**TINY, "steps": 1, "force_task_id": TAKEN})
        assert first.status_code == 200, first.text
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def valid_png(size: int = 64) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 40, 40)).save(buffer, "PNG")
    return b64(buffer.getvalue())


def pillow_rejects(data: bytes) -> bool:
    """The oracle for 'damaged': plain Pillow cannot open and decode it."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return False
    except Exception:  # noqa: BLE001 - whatever Pillow raises, the file is damaged
        return True


def undecodable(seed: int, count: int) -> list[tuple[str, bytes]]:
    samples = [(label, data) for label, data in damaged_images(seed, count * 4) if pillow_rejects(data)]
    return samples[:count]


class Tally:
    """Status counts and every response that breaks the rules, with what was sent."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.problems: list[str] = []

    def check(self, response: httpx.Response, field: str, label: str) -> None:
        status = response.status_code
        self.statuses[status] = self.statuses.get(status, 0) + 1
        text = response.text
        if status >= 500:
            self.problems.append(f"{label}: {status} {text[:200]}")
        elif 400 <= status < 500 and status != 409 and not _names(response, field):
            self.problems.append(f"{label}: {status} does not name {field!r}: {text[:200]}")

    def assert_clean(self) -> None:
        assert not self.problems, f"{len(self.problems)} bad answers, e.g.:\n" + "\n".join(self.problems[:15])


def _names(response: httpx.Response, field: str) -> bool:
    """Whether the error body names `field` (in a `loc` or its message); `body` errors name the body."""
    try:
        body = response.json()
    except ValueError:
        return False
    root = field.split(".")[0].split("[")[0]
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        for item in detail:
            loc = [str(part) for part in item.get("loc", [])]
            if root in loc or root in str(item.get("msg", "")) or loc == ["body"]:
                return True
        return False
    return root in json.dumps(body)


def post_raw(client: httpx.Client, path: str, text: str) -> httpx.Response:
    return client.post(path, content=text.encode("utf-8"), headers={"content-type": "application/json"})


def with_value(body: dict[str, Any], path: list[str], raw: str) -> str:
    """The body as JSON with the value at `path` replaced by the raw JSON text `raw` (NaN and all)."""
    marker = "\u0000FUZZ\u0000"
    copy = json.loads(json.dumps(body))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = marker
    return json.dumps(copy).replace(json.dumps(marker), raw)


# ---- damaged images -------------------------------------------------------------------------------


def test_png_info_survives_thousands_of_damaged_images(client):
    tally = Tally()
    started = time.monotonic()
    for label, data in damaged_images(SEED, PNG_INFO_COUNT):
        response = client.post("/sdapi/v1/png-info", json={"image": b64(data)})
        tally.check(response, "image", label)
    tally.assert_clean()
    assert tally.statuses.get(422, 0) > PNG_INFO_COUNT // 4, tally.statuses  # most damaged files are refused
    print(f"png-info: {sum(tally.statuses.values())} images in {time.monotonic() - started:.1f}s: {tally.statuses}")


def image_routes(image: str) -> Iterable[tuple[str, str, Any]]:
    """(path, field, body builder) for every route that takes an image; the builder puts `image` in its field."""
    gen = {**TINY, "steps": 1, "force_task_id": TAKEN}
    yield "/sdapi/v1/img2img", "init_images", lambda i: {**gen, "init_images": [i]}
    yield "/sdapi/v1/img2img", "mask", lambda i: {**gen, "init_images": [image], "mask": i}
    yield "/sdapi/v1/extra-single-image", "image", lambda i: {"image": i, "upscaler_1": "Lanczos"}
    yield "/sdapi/v1/extra-batch-images", "imageList", lambda i: {
        "imageList": [{"data": image, "name": "ok.png"}, {"data": i, "name": "bad.png"}], "upscaler_1": "Lanczos"}
    yield "/easel/v1/jobs", "init_images", lambda i: {"type": "img2img", "params": {**gen, "init_images": [i]}}
    yield "/easel/v1/jobs", "image", lambda i: {"type": "extra-single-image",
                                                "params": {"image": i, "upscaler_1": "Lanczos"}}
    yield "/controlnet/detect", "controlnet_input_images", lambda i: {"controlnet_module": "canny",
                                                                      "controlnet_input_images": [i]}
    unit = {"enabled": True, "module": "canny", "model": "None"}
    yield "/sdapi/v1/txt2img", "alwayson_scripts", lambda i: {
        **gen, "alwayson_scripts": {"controlnet": {"args": [{**unit, "image": i}]}}}


def test_every_image_field_refuses_damaged_images_naming_the_field(client):
    samples = undecodable(SEED + 1, PER_ROUTE_COUNT)
    assert len(samples) == PER_ROUTE_COUNT
    good = valid_png()
    tally = Tally()
    for path, field, build in image_routes(good):
        for label, data in samples:
            if field == "mask" and not data:
                continue  # an empty mask means "no mask" in AUTOMATIC1111's API
            response = client.post(path, json=build(b64(data)))
            tally.check(response, field, f"{path} {field} {label}")
            assert response.status_code not in (200, 202, 409), (path, field, label, response.text[:300])
    tally.assert_clean()
    print(f"image fields: {sum(tally.statuses.values())} requests: {tally.statuses}")


# ---- hostile JSON values --------------------------------------------------------------------------


def body_fields() -> Iterable[tuple[str, dict[str, Any], list[str]]]:
    """(route, a valid body, path of each field to replace)."""
    from webui.api import models as m

    image = valid_png()
    gen = {**TINY, "steps": 1, "force_task_id": TAKEN}
    routes = [
        ("/sdapi/v1/txt2img", gen, m.Txt2ImgRequest),
        ("/sdapi/v1/img2img", {**gen, "init_images": [image]}, m.Img2ImgRequest),
        ("/sdapi/v1/extra-single-image", {"image": image, "upscaler_1": "Lanczos"}, m.ExtrasSingleImageRequest),
        ("/sdapi/v1/extra-batch-images", {"imageList": [{"data": image, "name": "a.png"}], "upscaler_1": "Lanczos"},
         m.ExtrasBatchImagesRequest),
        ("/sdapi/v1/png-info", {"image": image}, m.PNGInfoRequest),
    ]
    for path, body, model in routes:
        for name in model.model_fields:
            if name == "force_task_id":
                continue
            yield path, body, [name]
    yield "/easel/v1/jobs", {"type": "txt2img", "params": gen}, ["type"]
    for name in ("steps", "width", "cfg_scale", "seed", "prompt", "styles", "override_settings", "alwayson_scripts"):
        yield "/easel/v1/jobs", {"type": "txt2img", "params": gen}, ["params", name]
    detect = {"controlnet_module": "canny", "controlnet_input_images": [image]}
    for name in ("controlnet_module", "controlnet_input_images", "controlnet_processor_res",
                 "controlnet_threshold_a", "controlnet_threshold_b"):
        yield "/controlnet/detect", detect, [name]


def test_hostile_values_in_every_field_are_refused_naming_it(client):
    rng = random.Random(SEED)
    tally = Tally()
    values = hostile_values(rng) + ["1" * 5000]
    for path, body, field_path in body_fields():
        for raw in values:
            response = post_raw(client, path, with_value(body, field_path, raw))
            tally.check(response, field_path[-1], f"{path} {'.'.join(field_path)}={raw[:24]}")
    tally.assert_clean()
    print(f"JSON fields: {sum(tally.statuses.values())} requests: {tally.statuses}")


def test_every_setting_refuses_hostile_numbers_in_options_and_overrides(client):
    """`{"jpeg_quality": Infinity}` was an OverflowError (500) on /options and in override_settings."""
    from webui.settings import Settings

    tally = Tally()
    numeric = [name for name, spec in Settings.spec().items()
               if isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool)]
    assert len(numeric) >= 8
    values = [*BAD_NUMBERS, '"text"', "[]", "{}", "null", deep_nesting(1000)]
    gen = {**TINY, "steps": 1, "force_task_id": TAKEN}
    for name in numeric:
        for raw in values:
            response = post_raw(client, "/sdapi/v1/options", "{%s: %s}" % (json.dumps(name), raw))
            tally.check(response, name, f"options {name}={raw[:24]}")
            assert response.status_code != 200, (name, raw, response.text)
            response = post_raw(client, "/sdapi/v1/txt2img",
                                with_value({**gen, "override_settings": {name: 0}}, ["override_settings", name], raw))
            tally.check(response, name, f"override_settings.{name}={raw[:24]}")
            assert response.status_code != 409, (name, raw, "accepted")
    tally.assert_clean()


def test_hostile_whole_bodies_are_refused_naming_the_body(client):
    tally = Tally()
    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/extra-single-image", "/sdapi/v1/png-info",
                 "/sdapi/v1/options", "/easel/v1/jobs", "/controlnet/detect"):
        for raw in [*BAD_NUMBERS, '"text"', "[]", "[1, 2]", "null", "true", deep_nesting(1000),
                    deep_nesting(100_000), "{" * 3 + "1", "1" * 5000]:
            tally.check(post_raw(client, path, raw), "body", f"{path} body={raw[:24]}")
    tally.assert_clean()


def test_the_server_is_healthy_after_the_fuzz(client):
    """Run last in this module: a normal request still generates."""
    assert client.get("/easel/v1/health").json()["status"] == "ok"
    response = client.post("/sdapi/v1/txt2img", json=TINY)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (64, 64)
