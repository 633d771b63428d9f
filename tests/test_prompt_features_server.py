"""Wildcards, face restoration and tiling through a real server: AUTOMATIC1111's API payloads (Dynamic
Prompts' positional always-on args, restore_faces, tiling) and the txt2img tab in a real browser."""
from __future__ import annotations

import json
import os
import shutil

import httpx
import pytest

from webui.core.infotext import parse_infotext

from api_helpers import decode, max_diff, payload
from conftest import ROOT

ARTIFACTS = ROOT / "test-artifacts"

CHROMIUM = os.environ.get("EASEL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
DP = "Dynamic Prompts v2.17.1"


def dp_args(enabled=True, combinatorial=False, magic=False, max_generations=0) -> list:
    """Dynamic Prompts v2.17.1's eighteen positional args, as its API users send them."""
    return [enabled, combinatorial, 1, magic, False, False, 1.1, 1.5, 100, 0.7, False, False, True, False, False,
            max_generations, "", ""]


@pytest.fixture(scope="module")
def server(api_server):
    """conftest's session-wide --api server (wildcards colors/warm.txt, a tiny GFPGAN)."""
    return api_server


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def test_dynamic_prompts_args_over_the_api(client):
    template = "a {red|green|blue|pink} fox, __colors/warm__"
    response = client.post("/sdapi/v1/txt2img", json=payload(prompt=template, batch_size=2, seed=9,
                                                             alwayson_scripts={DP: {"args": dp_args()}}))
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 2 and info["all_seeds"] == [9, 10]
    assert info["prompt"] == template and all("{" not in p and "__" not in p for p in info["all_prompts"])
    for text, drawn in zip(info["infotexts"], info["all_prompts"]):
        parsed = parse_infotext(text)
        assert parsed.prompt == drawn and parsed.params["Template"] == template
    # combinatorial: one image per combination, the batch count ignored
    response = client.post("/sdapi/v1/txt2img", json=payload(prompt="{a|b} __colors/warm__", n_iter=5,
                                                             alwayson_scripts={DP: {"args": dp_args(combinatorial=True)}}))
    assert sorted(json.loads(response.json()["info"])["all_prompts"]) == \
        ["a orange", "a yellow", "b orange", "b yellow"]
    # switched off, as clients send it by default: the request as it was
    plain = client.post("/sdapi/v1/txt2img", json=payload(seed=9)).json()
    off = client.post("/sdapi/v1/txt2img", json=payload(seed=9, alwayson_scripts={DP: {"args": dp_args(False)}})).json()
    assert max_diff(decode(plain["images"][0]), decode(off["images"][0])) == 0
    assert "Template" not in json.loads(off["info"])["infotexts"][0]


def test_what_easel_lacks_is_named(client):
    response = client.post("/sdapi/v1/txt2img", json=payload(alwayson_scripts={DP: {"args": dp_args(magic=True)}}))
    assert response.status_code == 422
    assert response.json()["error"] == "NotImplemented"
    assert f"alwayson_scripts.{DP}.args.is_magic_prompt" in response.text
    response = client.post("/sdapi/v1/txt2img", json=payload(prompt="a __nowhere__ fox",
                                                             alwayson_scripts={DP: {"args": dp_args()}}))
    assert response.status_code == 422 and "__nowhere__" in response.text


def test_restore_faces_and_tiling_fields(client):
    response = client.post("/sdapi/v1/txt2img", json=payload(
        restore_faces=True, tiling=True, override_settings={"face_restoration_model": "GFPGAN"},
        disable_extra_networks=True, comments={"note": "display only"}))
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    params = parse_infotext(info["infotexts"][0]).params
    assert params["Face restoration"] == "GFPGAN" and params["Tiling"] == "True"
    assert info["restore_faces"] is True and info["face_restoration_model"] == "GFPGAN"
    missing = client.post("/sdapi/v1/txt2img", json=payload(restore_faces=True))  # CodeFormer: not installed
    assert missing.status_code == 422 and "restore_faces" in missing.text


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("EASEL_REQUIRE_BROWSER"), reason="chromium is not installed")
def test_wildcards_accordion_in_the_browser(server):
    from playwright.sync_api import expect

    from test_browser import open_app, set_steps_and_size

    with open_app(server.url) as page:
        accordion = page.locator("#txt2img_dynamic_prompts")
        accordion.locator(".label-wrap").first.click()
        expect(page.locator("#txt2img_dynamic_prompts_wildcards")).to_contain_text("__colors/warm__")
        page.locator("#txt2img_dynamic_prompts_enabled input").check()
        page.locator("#txt2img_prompt textarea").fill("a {red|blue} fox, __colors/warm__")
        set_steps_and_size(page, 3)
        page.locator("#txt2img_seed input").fill("12")
        page.locator("#txt2img_generate").click()
        info = page.locator("#html_info_txt2img")
        expect(info).to_contain_text('Template: "a {red|blue} fox, __colors/warm__"', timeout=60_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "wildcards.png"), full_page=True)
        drawn = info.inner_text().split("\n")[0]
        assert drawn.startswith(("a red fox, ", "a blue fox, ")) and drawn.endswith(("orange", "yellow"))
        # sent on, the template comes back with Dynamic Prompts switched on
        page.locator("#txt2img_send_to_img2img").click()
        expect(page.locator("#img2img_prompt textarea")).to_have_value("a {red|blue} fox, __colors/warm__",
                                                                       timeout=30_000)
        page.locator("#img2img_dynamic_prompts .label-wrap").first.click()
        expect(page.locator("#img2img_dynamic_prompts_enabled input")).to_be_checked(timeout=30_000)
