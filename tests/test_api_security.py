"""Auth, exposure and cross-origin rules against a real server on 127.0.0.1.

The server runs with --api-auth for two users and one allowed CORS origin. Every route
(API, UI, files, docs, unknown paths) must answer 401 without or with wrong credentials
and let the right ones through; users control only their own jobs and see only their own
progress. Requests addressed to a foreign Host (DNS rebinding) are refused, and image URLs
are fetched from the address that was checked.
"""
from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpcore
import httpx
import pytest
from PIL import Image

from webui.api.context import OTHER_USERS_JOB
from webui.api.errors import ApiError
from webui.api.images import MAX_REDIRECTS, fetch_url
from webui.server import ServerOptions, create_fastapi

from api_helpers import decode, payload, start_long_job, stop_job, wait_until
from conftest import ROOT, free_port, make_easel, start_server

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


# bodies for routes where the schema's minimal body would start real work (a 512x512, 50-step generation)
CHEAP_BODIES = {("POST", path): body for path, body in POST_ROUTES}


def _schema(schema: dict, components: dict) -> dict:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"]
            return _schema(options[0], components) if options else {}
    return schema


def minimal_value(schema: dict, components: dict, depth: int = 0):
    """The smallest value of a JSON schema: required properties only, dummies by type."""
    schema = _schema(schema, components)
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if kind == "object" and depth < 6:
        properties = schema.get("properties", {})
        return {name: minimal_value(properties.get(name, {}), components, depth + 1)
                for name in schema.get("required", [])}
    if "enum" in schema:
        return schema["enum"][0]
    return {"array": [], "string": "x", "integer": 0, "number": 0, "boolean": False}.get(kind)


def openapi_routes(spec: dict) -> list[tuple[str, str, dict | None]]:
    """Every (method, path with dummy parameters, minimal body) the app documents."""
    components = spec.get("components", {}).get("schemas", {})
    routes = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            method = method.upper()
            concrete = re.sub(r"{[^}]+}", "x", path)
            query = {p["name"]: minimal_value(p.get("schema", {}), components) for p in operation.get("parameters", [])
                     if p.get("in") == "query" and p.get("required")}
            if query:
                concrete += "?" + "&".join(f"{k}={v}" for k, v in query.items())
            body = None
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if content is not None:
                body = minimal_value(content.get("schema", {}), components)
            body = CHEAP_BODIES.get((method, concrete), body)
            routes.append((method, concrete, body))
    return routes


def test_auth_matrix_covers_every_documented_route(server):
    """Routes come from the app's own /openapi.json, so a route added later is covered without editing this test."""
    spec = request(server, "GET", "/openapi.json", auth=ALICE).json()
    routes = openapi_routes(spec)
    paths = {path for _, path, _ in routes}
    # the list is the app's real one, not an empty or stale stub
    assert len(routes) >= 45 and {"/sdapi/v1/txt2img", "/easel/v1/jobs/x", "/controlnet/detect"} <= paths
    problems = []
    for method, path, body in routes:
        for wrong in (None, (ALICE[0], "wrong"), ("mallory", ALICE[1])):
            denied = request(server, method, path, body, auth=wrong)
            if denied.status_code != 401 or not denied.headers.get("WWW-Authenticate", "").startswith("Basic"):
                problems.append(f"{method} {path} with {wrong}: {denied.status_code} {denied.text[:200]}")
        for user in (ALICE, BOB):
            allowed = request(server, method, path, body, auth=user)
            if allowed.status_code == 401 or (allowed.status_code >= 500 and allowed.status_code != 501):
                problems.append(f"{method} {path} as {user[0]}: {allowed.status_code} {allowed.text[:200]}")
    assert not problems, "\n".join(problems)


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
            # progress: alice sees her job with its live preview; bob sees neither preview nor text
            mine = wait_until(lambda: (p := alice.get("/sdapi/v1/progress").json())["current_image"] and p,
                              timeout=120, what="alice's live preview")
            assert mine["progress"] > 0 and mine["state"]["job"] == "txt2img" and decode(mine["current_image"])
            theirs = bob.get("/sdapi/v1/progress").json()
            assert theirs["current_image"] is None and theirs["textinfo"] == OTHER_USERS_JOB
            assert theirs["progress"] == 0 and theirs["state"]["job"] == "" and theirs["state"]["sampling_steps"] == 0
            peek = bob.get(f"/easel/v1/jobs/{job_id}", params={"preview": True}).json()["progress"]
            assert peek["preview"] is None and peek["text"] == ""
            assert alice.get(f"/easel/v1/jobs/{job_id}", params={"preview": True}).json()["progress"]["preview"]
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
        # the history keeps the owner's rules: bob sees the job listed, without its prompt, and cannot run it again
        listed = [j for j in bob.get("/easel/v1/jobs", params={"finished": True}).json()["jobs"] if j["id"] == job_id]
        assert listed and listed[0]["owner"] == "alice" and listed[0]["description"] is None
        assert bob.post(f"/easel/v1/jobs/{job_id}/rerun").status_code == 403


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


# ---- DNS rebinding: the Host header must name this computer ---------------------------------------


def test_foreign_host_header_is_refused(server):
    """A page on evil.example whose name now resolves to 127.0.0.1 is same-origin with itself; its Host gives it away."""
    port = urlsplit(server.url).port
    evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    for method, path, body in (("POST", "/sdapi/v1/options", {"jpeg_quality": 70}), ("GET", "/sdapi/v1/options", None),
                               ("GET", "/", None), ("POST", "/controlnet/detect", {}),
                               ("POST", "/easel/v1/jobs", {"params": payload()})):
        for auth in (ALICE, None):
            refused = request(server, method, path, body, auth=auth, headers=evil)
            assert refused.status_code == 403, (method, path, refused.text)
            assert "evil.example" in refused.json()["detail"] and "rebinding" in refused.json()["detail"]
    assert request(server, "GET", "/sdapi/v1/options", auth=ALICE).json()["jpeg_quality"] != 70
    listed = request(server, "GET", "/easel/v1/jobs?finished=true", auth=ALICE).json()["jobs"]
    assert all(job["description"] != payload()["prompt"] for job in listed)  # no refused job was queued
    # this computer's names, with or without the port, pass; the page itself still loads
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST", "127.0.0.1"):
        page = request(server, "GET", "/", auth=ALICE, headers={"Host": host})
        assert page.status_code == 200 and "gradio" in page.text.lower(), host
        same = request(server, "POST", "/sdapi/v1/options", {}, auth=ALICE,
                       headers={"Host": host, "Origin": f"http://{host}"})
        assert same.status_code == 200, (host, same.text)
    assert request(server, "GET", "/gradio_api/info", auth=ALICE).status_code == 200


def test_host_check_only_when_listening_on_loopback(tmp_path, tiny_ckpt_dir):
    """With --listen (host 0.0.0.0) other names are expected; auth guards the server there."""
    from starlette.testclient import TestClient

    easel = make_easel(tmp_path, tiny_ckpt_dir)
    try:
        for host, foreign_status in (("0.0.0.0", 200), ("127.0.0.1", 403)):
            app = create_fastapi(easel, ServerOptions(host=host, ui=False, api=True, auth=[ALICE]))
            with TestClient(app, base_url="http://easel.lan:7860") as client:
                answer = client.get("/easel/v1/health", auth=ALICE, headers={"Host": "easel.lan:7860"})
                assert answer.status_code == foreign_status, (host, answer.text)
                local = client.get("/easel/v1/health", auth=ALICE, headers={"Host": "127.0.0.1:7860"})
                assert local.status_code == 200
    finally:
        easel.close()


# ---- image URLs: connect to the address that was checked -------------------------------------------


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


class _ImageSite(BaseHTTPRequestHandler):
    """Stands in for web sites: /a.png is an image, /go?to=URL redirects, /loop redirects to itself."""

    seen_hosts: list[str] = []

    def do_GET(self):
        type(self).seen_hosts.append(self.headers.get("Host"))
        if self.path == "/a.png":
            data = _png()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif self.path.startswith("/go?to="):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/go?to="))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(307)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args):
        pass


class RoutedNetwork:
    """The sockets under the pinning: the public test addresses lead to the local site; every connection is
    recorded, and one to any other address is refused (so no traffic ever leaves this machine)."""

    def __init__(self, routes: dict[str, str]):
        self.routes = routes
        self.connects: list[tuple[str, int]] = []

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.connects.append((host, port))
        if host not in self.routes:
            raise httpcore.ConnectError(f"test network: {host} is not routed")
        return httpcore.SyncBackend().connect_tcp(self.routes[host], port, timeout=timeout,
                                                  socket_options=socket_options)

    def connect_unix_socket(self, *args, **kwargs):
        raise httpcore.ConnectError("no unix sockets")

    def sleep(self, seconds):
        pass


class RebindingDNS:
    """Answers each name's first lookup with its public address and every later one with 127.0.0.1."""

    def __init__(self, names: dict[str, str]):
        self.names = names
        self.lookups: list[str] = []

    def __call__(self, host: str) -> list[str]:
        first = host not in self.lookups
        self.lookups.append(host)
        if host not in self.names:
            raise OSError(f"{host}: name not known")
        return [self.names[host]] if first else ["127.0.0.1"]


@pytest.fixture(scope="module")
def image_site():
    site = ThreadingHTTPServer(("127.0.0.1", 0), _ImageSite)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield site.server_address[1]
    site.shutdown()
    site.server_close()


def test_image_url_connects_to_the_checked_address(image_site):
    port = image_site
    dns = RebindingDNS({"images.example": "1.1.1.1"})
    network = RoutedNetwork({"1.1.1.1": "127.0.0.1"})
    _ImageSite.seen_hosts.clear()
    data = fetch_url("image", f"http://images.example:{port}/a.png", resolve=dns, network=network)
    assert data == _png()
    assert dns.lookups == ["images.example"]  # resolved once: no second answer to be rebound
    assert network.connects == [("1.1.1.1", port)]
    assert _ImageSite.seen_hosts == [f"images.example:{port}"]  # the name travels in Host, the address is pinned


def test_image_url_redirects_are_checked_and_pinned(image_site):
    port = image_site
    dns = RebindingDNS({"images.example": "1.1.1.1", "cdn.example": "1.0.0.1", "intranet.example": "10.0.0.8"})
    network = RoutedNetwork({"1.1.1.1": "127.0.0.1", "1.0.0.1": "127.0.0.1"})
    data = fetch_url("image", f"http://images.example:{port}/go?to=http://cdn.example:{port}/a.png",
                     resolve=dns, network=network)
    assert data == _png() and network.connects == [("1.1.1.1", port), ("1.0.0.1", port)]

    for target, reason in ((f"http://intranet.example:{port}/a.png", "private"),
                           (f"http://127.0.0.1:{port}/a.png", "private"), ("file:///etc/passwd", "http and https")):
        network.connects.clear()
        with pytest.raises(ApiError) as refused:
            fetch_url("init_images.0", f"http://images.example:{port}/go?to={target}",
                      resolve=RebindingDNS(dns.names), network=network)
        assert refused.value.status == 422 and reason in str(refused.value.detail)
        assert refused.value.detail[0]["loc"] == ["body", "init_images", "0"]
        assert network.connects == [("1.1.1.1", port)]  # the redirect target was never connected to

    network.connects.clear()
    with pytest.raises(ApiError) as looping:
        fetch_url("image", f"http://images.example:{port}/loop", resolve=RebindingDNS(dns.names), network=network)
    assert "redirected more than" in str(looping.value.detail)
    assert network.connects == [("1.1.1.1", port)] * (MAX_REDIRECTS + 1)


def test_a_listed_origin_may_read_gradio_files_and_others_may_not(server):
    image = server.root / "outputs" / "cors-check.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(_png())
    path = f"/gradio_api/file={image.resolve()}"
    good = request(server, "GET", path, auth=ALICE, headers={"Origin": GOOD_ORIGIN})
    assert good.status_code == 200 and good.headers["access-control-allow-origin"] == GOOD_ORIGIN
    for origin in ("http://localhost:1234", "http://evil.example"):
        other = request(server, "GET", path, auth=ALICE, headers={"Origin": origin})
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
        assert "access-control-allow-credentials" not in other.headers
