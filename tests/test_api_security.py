"""Auth, exposure and cross-origin rules against a real server on 127.0.0.1.

The server runs with --api-auth for two users and one allowed CORS origin. Every route
(API, UI, files, docs, unknown paths) must answer 401 without or with wrong credentials
and let the right ones through; users control only their own jobs.
"""
from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from api_helpers import payload, start_long_job, stop_job
from conftest import ROOT, free_port, start_server

ALICE = ("alice", "s3cret-a")
BOB = ("bob", "s3cret-b")
GOOD_ORIGIN = "http://good.example"

GET_ROUTES = ["/", "/docs", "/redoc", "/openapi.json", "/easel/v1/health", "/easel/v1/jobs", "/easel/v1/jobs/x",
              "/sdapi/v1/progress", "/sdapi/v1/options", "/sdapi/v1/cmd-flags", "/sdapi/v1/samplers",
              "/sdapi/v1/schedulers", "/sdapi/v1/upscalers", "/sdapi/v1/latent-upscale-modes", "/sdapi/v1/sd-models",
              "/sdapi/v1/sd-vae", "/sdapi/v1/loras", "/sdapi/v1/embeddings", "/sdapi/v1/prompt-styles",
              "/sdapi/v1/face-restorers", "/sdapi/v1/scripts", "/sdapi/v1/script-info", "/sdapi/v1/extensions",
              "/sdapi/v1/memory", "/controlnet/version", "/gradio_api/info", "/config",
              "/gradio_api/file=/etc/passwd", "/file=/etc/passwd", "/easel/extension-files/x.js",
              "/no/such/path", "/sdapi/v1/nope"]
# POST routes with a body that is cheap when authorised (a 4xx or a quick answer, never a long generation)
POST_ROUTES = [("/sdapi/v1/txt2img", {"steps": 0}), ("/sdapi/v1/img2img", {"init_images": []}),
               ("/sdapi/v1/extra-single-image", {"image": ""}), ("/sdapi/v1/extra-batch-images", {"imageList": []}),
               ("/sdapi/v1/png-info", {"image": "%"}), ("/sdapi/v1/interrupt", None), ("/sdapi/v1/skip", None),
               ("/sdapi/v1/options", {}), ("/sdapi/v1/refresh-checkpoints", None), ("/sdapi/v1/refresh-vae", None),
               ("/sdapi/v1/refresh-loras", None), ("/sdapi/v1/unload-checkpoint", None),
               ("/sdapi/v1/reload-checkpoint", None), ("/easel/v1/jobs", {"params": {"steps": 0}}),
               ("/easel/v1/jobs/x/skip", None), ("/controlnet/detect", {}), ("/gradio_api/queue/join", {}),
               ("/nope", {})]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_ckpt_dir):
    root = tmp_path_factory.mktemp("secure")
    running = start_server(root, tiny_ckpt_dir, ["--api", "--api-auth", f"{ALICE[0]}:{ALICE[1]},{BOB[0]}:{BOB[1]}",
                                                 "--cors-allow-origins", GOOD_ORIGIN], auth=ALICE)
    yield running
    running.stop()


def request(server, method: str, path: str, body=None, auth=None, headers=None) -> httpx.Response:
    return httpx.request(method, server.url + path, json=body, auth=auth, headers=headers, timeout=120)


@pytest.mark.parametrize("method,path,body", [("GET", p, None) for p in GET_ROUTES]
                         + [("POST", p, b) for p, b in POST_ROUTES] + [("DELETE", "/easel/v1/jobs/x", None)])
def test_auth_matrix(server, method, path, body):
    for wrong in (None, (ALICE[0], "wrong"), ("mallory", ALICE[1]), (BOB[0], ALICE[1])):
        denied = request(server, method, path, body, auth=wrong)
        assert denied.status_code == 401, (wrong, denied.text)
        assert denied.headers["WWW-Authenticate"].startswith("Basic")
    for user in (ALICE, BOB):
        allowed = request(server, method, path, body, auth=user)
        assert allowed.status_code != 401, allowed.text
        assert allowed.status_code < 500 or allowed.status_code == 501, allowed.text  # 501: a feature Easel lacks (interrogate, training)


def test_known_routes_answer_with_credentials(server):
    for path in ("/", "/docs", "/openapi.json", "/sdapi/v1/sd-models", "/easel/v1/jobs", "/gradio_api/info"):
        assert request(server, "GET", path, auth=ALICE).status_code == 200, path


def test_malformed_authorization_headers(server):
    for header in ("Basic", "Basic !!!", "Basic " + "YWxpY2U=", "Bearer abc", "basic"):
        response = request(server, "GET", "/sdapi/v1/options", headers={"Authorization": header})
        assert response.status_code == 401, header


def test_cmd_flags_never_reveal_credentials(server):
    text = request(server, "GET", "/sdapi/v1/cmd-flags", auth=ALICE).text
    assert ALICE[1] not in text and BOB[1] not in text and '"api_auth":"********"' in text


def test_users_control_only_their_own_jobs(server):
    with httpx.Client(base_url=server.url, auth=ALICE, timeout=120) as alice, \
            httpx.Client(base_url=server.url, auth=BOB, timeout=120) as bob:
        job_id = start_long_job(alice)
        try:
            assert bob.delete(f"/easel/v1/jobs/{job_id}").status_code == 403
            assert bob.post(f"/easel/v1/jobs/{job_id}/skip").status_code == 403
            assert bob.get(f"/easel/v1/jobs/{job_id}/result").status_code == 403
            assert bob.post("/sdapi/v1/interrupt").status_code == 200  # answers, but it is not bob's job
            seen_by_bob = bob.get(f"/easel/v1/jobs/{job_id}").json()
            assert seen_by_bob["owner"] == "alice" and not seen_by_bob["mine"] and seen_by_bob["description"] is None
            assert seen_by_bob["state"] == "running"
            mine = alice.get(f"/easel/v1/jobs/{job_id}").json()
            assert mine["mine"] and mine["description"] == "a long job"
        finally:
            stop_job(alice, job_id)
        assert alice.get(f"/easel/v1/jobs/{job_id}").json()["state"] == "interrupted"


def test_foreign_origin_cannot_change_state(server):
    evil = {"Origin": "http://evil.example"}
    refused = request(server, "POST", "/sdapi/v1/options", {"jpeg_quality": 70}, auth=ALICE, headers=evil)
    assert refused.status_code == 403 and "cross-origin" in refused.json()["detail"]
    assert request(server, "GET", "/sdapi/v1/options", auth=ALICE).json()["jpeg_quality"] != 70
    for path, body in (("/sdapi/v1/txt2img", payload()), ("/easel/v1/jobs", {"params": payload()}),
                       ("/sdapi/v1/interrupt", None)):
        assert request(server, "POST", path, body, auth=ALICE, headers=evil).status_code == 403, path
    assert request(server, "DELETE", "/easel/v1/jobs/x", auth=ALICE, headers=evil).status_code == 403
    assert request(server, "POST", "/sdapi/v1/options", {}, auth=ALICE, headers={"Origin": "null"}).status_code == 403
    # the page's own origin, and the origin allowed with --cors-allow-origins, may
    same = request(server, "POST", "/sdapi/v1/options", {}, auth=ALICE, headers={"Origin": server.url})
    assert same.status_code == 200
    good = request(server, "POST", "/sdapi/v1/options", {}, auth=ALICE, headers={"Origin": GOOD_ORIGIN})
    assert good.status_code == 200 and good.headers["access-control-allow-origin"] == GOOD_ORIGIN
    # reading is not refused, but a foreign page gets no CORS header, so its script cannot see the answer
    read = request(server, "GET", "/sdapi/v1/options", auth=ALICE, headers=evil)
    assert read.status_code == 200 and "access-control-allow-origin" not in read.headers


def test_cors_preflight_only_for_allowed_origins(server):
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,authorization"}
    good = request(server, "OPTIONS", "/sdapi/v1/txt2img", headers={"Origin": GOOD_ORIGIN, **ask})
    assert good.status_code == 200 and good.headers["access-control-allow-origin"] == GOOD_ORIGIN
    evil = request(server, "OPTIONS", "/sdapi/v1/txt2img", headers={"Origin": "http://evil.example", **ask})
    assert "access-control-allow-origin" not in evil.headers


def test_image_urls_are_off_by_default(server):
    response = request(server, "POST", "/sdapi/v1/png-info", {"image": "https://example.com/a.png"}, auth=ALICE)
    assert response.status_code == 422 and "turned off" in response.text


def test_no_permissive_cors_by_default(tmp_path, tiny_ckpt_dir):
    running = start_server(tmp_path, None, ["--nowebui"])
    try:
        response = httpx.options(running.url + "/sdapi/v1/txt2img", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in response.headers
        # --nowebui: the API is on without --api, and there is no UI
        assert httpx.get(running.url + "/sdapi/v1/samplers").status_code == 200
        assert httpx.get(running.url + "/").json()["docs"] == "/docs"
    finally:
        running.stop()


def test_listening_beyond_localhost_needs_auth(tmp_path):
    def run(*flags):
        return subprocess.run([sys.executable, "-m", "webui.cli", "--port", str(free_port()), "--listen", *flags,
                               "--data-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)

    refused = run()
    assert refused.returncode == 2 and "--auth" in refused.stderr
    bad = run("--api-auth", "nocolon")
    assert bad.returncode == 2 and "user:password" in bad.stderr
