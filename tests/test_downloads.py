"""Downloads against a real HTTP server on 127.0.0.1 that this test starts (the same code path as the hub:
the endpoint comes from settings, files are asked for as {endpoint}/{repo}/resolve/{revision}/{path})."""
from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from webui.model_manager.downloads import (CANCELLED, DONE, FAILED, DownloadError, DownloadManager, Fetcher,
                                           check_file_name, hub_file_url, partial_path)
from webui.model_manager.registry import scan_folder
from webui.model_manager.starter import FIRST_RUN_STARTER, STARTERS
from webui.paths import MODEL_FOLDERS, Paths, model_files
from webui.settings import SettingsStore

PAYLOAD = bytes((i * 7 + i // 256) % 256 for i in range(300_000))
REPO_FILE = "/owner/repo/resolve/main/sub/model.safetensors"


class _Handler(BaseHTTPRequestHandler):
    server: "Hub"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        hub = self.server
        hub.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        hub.sent_by.append(0)
        index = len(hub.sent_by) - 1
        if self.path in hub.status:
            self.send_response(hub.status[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path in hub.redirects:
            self.send_response(302)
            self.send_header("Location", hub.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = hub.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        if match and not hub.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()[:16]}"')
        self.end_headers()
        limit = len(body) if hub.drop_after is None else min(len(body), hub.drop_after)
        for offset in range(0, limit, 16_384):
            piece = body[offset:min(limit, offset + 16_384)]
            try:
                self.wfile.write(piece)
                self.wfile.flush()
            except OSError:
                return
            hub.sent_by[index] += len(piece)
            if hub.delay:
                time.sleep(hub.delay)
        if hub.stall_after_drop and limit < len(body):
            time.sleep(hub.stall_after_drop)  # a stalled connection: nothing more arrives
        self.close_connection = True


class Hub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.status: dict[str, int] = {}
        self.redirects: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.ignore_range = False
        self.drop_after: int | None = None
        self.stall_after_drop = 0.0
        self.delay = 0.0
        self.sent_by: list[int] = []  # body bytes written, per request

    @property
    def last_sent(self) -> int:
        return self.sent_by[-1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def hub():
    server = Hub()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    server.files[REPO_FILE] = PAYLOAD
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def other():
    """A second server on another port: another origin, like the CDN the hub redirects to."""
    server = Hub()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def setup(tmp_path, hub):
    settings = SettingsStore(tmp_path / "config.json")
    settings.load()
    settings.update({"hub_endpoint": hub.url})
    paths = Paths(models_dir=tmp_path / "models", data_dir=tmp_path)
    manager = DownloadManager(paths, settings, workers=2, timeout=5)
    yield manager, paths, settings
    manager.close()


def _finish(manager: DownloadManager, item, timeout: float = 30):
    manager.wait(item.id, timeout)
    assert item.finished, f"still {item.state}"
    return item


def test_hub_file_lands_in_its_folder_with_the_right_bytes(setup, hub):
    manager, paths, _ = setup
    item = _finish(manager, manager.add_hub_file("owner/repo", "sub/model.safetensors", "lora"))
    assert item.state == DONE, item.error
    target = paths.model_dir("lora") / "model.safetensors"
    assert item.target == target.resolve()
    assert target.read_bytes() == PAYLOAD
    assert item.computed_sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert not partial_path(target).exists()
    assert [p for p, _ in hub.requests] == [REPO_FILE]
    assert not list(target.parent.glob(".*"))  # no partial or metadata left behind


def test_progress_rises_to_the_total(tmp_path, hub):
    fetcher = Fetcher(lambda: hub.url, lambda: "", timeout=5, progress_interval=0)
    hub.delay = 0.002
    seen = []
    fetcher.fetch(hub.url + REPO_FILE, tmp_path / "m.safetensors", progress=seen.append)
    done = [p.done for p in seen]
    assert done == sorted(done) and len(set(done)) > 5
    assert seen[-1].done == seen[-1].total == len(PAYLOAD)
    assert all(p.total == len(PAYLOAD) for p in seen)
    assert any(p.speed > 0 and p.eta is not None for p in seen[1:-1])


def test_dropped_connection_leaves_no_final_file_and_resume_asks_only_for_the_rest(setup, hub):
    manager, paths, _ = setup
    hub.drop_after = 100_000
    item = _finish(manager, manager.add_hub_file("owner/repo", "sub/model.safetensors", "checkpoint"))
    target = paths.model_dir("checkpoint") / "model.safetensors"
    assert item.state == FAILED and "Resume" in item.error
    assert not target.exists()
    assert partial_path(target).stat().st_size == 100_000
    assert scan_folder(target.parent) == []  # the model list never shows a half-written file

    hub.drop_after = None
    _finish(manager, manager.resume(item.id))
    assert item.state == DONE, item.error
    assert target.read_bytes() == PAYLOAD
    path, headers = hub.requests[-1]
    assert headers["range"] == "bytes=100000-" and headers["if-range"]
    assert hub.last_sent == len(PAYLOAD) - 100_000
    assert item.computed_sha256 == hashlib.sha256(PAYLOAD).hexdigest()  # prefix on disk + the resumed bytes


def test_server_ignoring_range_restarts_from_zero(setup, hub):
    manager, paths, _ = setup
    hub.drop_after = 50_000
    item = _finish(manager, manager.add_hub_file("owner/repo", "sub/model.safetensors", "vae"))
    assert item.state == FAILED
    hub.drop_after, hub.ignore_range = None, True
    _finish(manager, manager.resume(item.id))
    assert item.state == DONE, item.error
    assert (paths.model_dir("vae") / "model.safetensors").read_bytes() == PAYLOAD  # not spliced
    assert hub.requests[-1][1]["range"] == "bytes=50000-" and hub.last_sent == len(PAYLOAD)
    assert item.computed_sha256 == hashlib.sha256(PAYLOAD).hexdigest()  # the restart's hash has no stale prefix


def test_checksum_mismatch_is_rejected_and_leaves_nothing(setup, hub):
    manager, paths, _ = setup
    wrong = "0" * 64
    item = _finish(manager, manager.add_hub_file("owner/repo", "sub/model.safetensors", "lora", sha256=wrong))
    target = paths.model_dir("lora") / "model.safetensors"
    assert item.state == FAILED
    assert "model.safetensors" in item.error and wrong in item.error
    assert hashlib.sha256(PAYLOAD).hexdigest() in item.error
    assert not target.exists() and not partial_path(target).exists()

    right = hashlib.sha256(PAYLOAD).hexdigest().upper()
    ok = _finish(manager, manager.add_hub_file("owner/repo", "sub/model.safetensors", "lora", sha256=right))
    assert ok.state == DONE and target.read_bytes() == PAYLOAD


def test_cancel_keeps_the_partial_and_resume_completes(setup, hub):
    manager, paths, _ = setup
    hub.delay = 0.05
    item = manager.add_hub_file("owner/repo", "sub/model.safetensors", "controlnet")
    deadline = time.monotonic() + 10
    while item.done < 32_768 and time.monotonic() < deadline:
        time.sleep(0.01)
    manager.cancel(item.id)
    _finish(manager, item)
    target = paths.model_dir("controlnet") / "model.safetensors"
    assert item.state == CANCELLED
    assert not target.exists()
    kept = partial_path(target).stat().st_size
    assert 0 < kept < len(PAYLOAD)
    hub.delay = 0
    _finish(manager, manager.resume(item.id))
    assert item.state == DONE and target.read_bytes() == PAYLOAD
    assert hub.last_sent == len(PAYLOAD) - kept
    assert item.computed_sha256 == hashlib.sha256(PAYLOAD).hexdigest()


def test_stalled_connection_times_out_without_a_final_file(tmp_path, hub):
    settings = SettingsStore(tmp_path / "config.json")
    settings.load()
    settings.update({"hub_endpoint": hub.url})
    manager = DownloadManager(Paths(models_dir=tmp_path / "models"), settings, timeout=0.5)
    hub.drop_after, hub.stall_after_drop = 64_000, 3
    try:
        item = _finish(manager, manager.add_hub_file("owner/repo", "sub/model.safetensors", "lora"))
    finally:
        manager.close()
    assert item.state == FAILED and "interrupted" in item.error
    target = tmp_path / "models" / "Lora" / "model.safetensors"
    assert not target.exists() and partial_path(target).stat().st_size == 64_000


def test_http_and_network_errors_are_clear(setup, hub):
    manager, _, settings = setup
    missing = _finish(manager, manager.add_hub_file("owner/repo", "nope.safetensors", "lora"))
    assert missing.state == FAILED and "not found" in missing.error and "nope.safetensors" in missing.error
    hub.status["/owner/gated/resolve/main/g.safetensors"] = 401
    gated = _finish(manager, manager.add_hub_file("owner/gated", "g.safetensors", "lora"))
    assert gated.state == FAILED and "needs a token" in gated.error

    with socket.socket() as sock:  # a port nobody listens on: like being offline
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings.update({"hub_endpoint": dead})
    offline = _finish(manager, manager.add_hub_file("owner/repo", "sub/model.safetensors", "lora"))
    assert offline.state == FAILED
    assert offline.error.startswith("could not reach 127.0.0.1") and "hub endpoint in Settings" in offline.error


def test_token_goes_to_the_hub_host_only(setup, hub, other):
    manager, paths, settings = setup
    settings.update({"hub_token": "hf_secret"})
    other.files["/cdn/big.safetensors"] = PAYLOAD
    hub.redirects["/owner/repo/resolve/main/big.safetensors"] = other.url + "/cdn/big.safetensors"
    item = _finish(manager, manager.add_hub_file("owner/repo", "big.safetensors", "lora"))
    assert item.state == DONE, item.error
    assert (paths.model_dir("lora") / "big.safetensors").read_bytes() == PAYLOAD
    assert hub.requests[-1][1]["authorization"] == "Bearer hf_secret"
    assert "authorization" not in other.requests[-1][1]  # the redirect target never sees it

    direct = _finish(manager, manager.add_url(other.url + "/cdn/big.safetensors", "vae"))
    assert direct.state == DONE
    assert "authorization" not in other.requests[-1][1]


def test_path_traversal_is_refused(setup, hub):
    manager, paths, _ = setup
    for bad in ("../evil.safetensors", "/etc/evil", ".hidden.safetensors", "a/../../b", "x.safetensors.partial"):
        with pytest.raises(DownloadError):
            manager.add_hub_file("owner/repo", "sub/model.safetensors", "lora", filename=bad)
    with pytest.raises(DownloadError):
        manager.add_url(hub.url + "/x/..%2F..%2Fevil.safetensors", "lora")
    with pytest.raises(DownloadError):
        manager.add_hub_file("owner/repo", "../../evil.safetensors", "lora")
    with pytest.raises(DownloadError):
        manager.add_hub_file("../repo", "a.safetensors", "lora")
    with pytest.raises(DownloadError, match="kind"):
        manager.add_hub_file("owner/repo", "a.safetensors", "nonsense")
    assert hub.requests == []
    assert not (paths.models_dir.parent / "evil.safetensors").exists()


def test_existing_file_is_not_overwritten_unless_asked(setup, hub):
    manager, paths, _ = setup
    target = paths.model_dir("lora") / "model.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"mine")
    with pytest.raises(DownloadError, match="already exists"):
        manager.add_hub_file("owner/repo", "sub/model.safetensors", "lora")
    item = _finish(manager, manager.add_hub_file("owner/repo", "sub/model.safetensors", "lora", overwrite=True))
    assert item.state == DONE and target.read_bytes() == PAYLOAD


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def test_zip_pack_unpacks_into_its_folder(setup, other):
    manager, paths, _ = setup
    other.files["/v0.7/antelopev2.zip"] = _zip({"antelopev2/scrfd_10g_bnkps.onnx": b"det",
                                                "antelopev2/glintr100.onnx": b"rec"})
    item = _finish(manager, manager.add_url(other.url + "/v0.7/antelopev2.zip", "insightface", unpack=True))
    assert item.state == DONE, item.error
    folder = paths.model_dir("insightface") / "antelopev2"
    assert (folder / "scrfd_10g_bnkps.onnx").read_bytes() == b"det"
    assert (folder / "glintr100.onnx").read_bytes() == b"rec"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["antelopev2"]  # no archive or temp left


def test_zip_with_parent_entries_is_refused(setup, other):
    manager, paths, _ = setup
    other.files["/bad.zip"] = _zip({"ok.onnx": b"x", "../evil.txt": b"owned"})
    item = _finish(manager, manager.add_url(other.url + "/bad.zip", "insightface", unpack=True))
    assert item.state == FAILED and "outside" in item.error
    base = paths.model_dir("insightface")
    assert not (base.parent / "evil.txt").exists() and not (base / "evil.txt").exists()
    assert not (base / "bad").exists()


def test_starter_entry_downloads_from_the_configured_hub(setup, hub):
    manager, paths, _ = setup
    hub.files["/latent-consistency/lcm-lora-sdv1-5/resolve/main/pytorch_lora_weights.safetensors"] = PAYLOAD
    (item,) = manager.add_starter("lcm-lora-sd15")
    _finish(manager, item)
    assert item.state == DONE, item.error
    assert (paths.model_dir("lora") / "lcm-lora-sdv1-5.safetensors").read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="already installed"):
        manager.add_starter("lcm-lora-sd15")


def test_partial_files_are_invisible_to_scanners(tmp_path):
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    partial_path(folder / "big.safetensors").write_bytes(b"half")
    assert scan_folder(folder) == []
    assert model_files([folder], (".safetensors", ".partial")) == []


def test_starter_catalogue_is_well_formed():
    from webui.features.controlnet.preprocessors import PREPROCESSORS

    names = [s.name for s in STARTERS]
    assert len(names) == len(set(names))
    targets = set()
    for item in STARTERS:
        assert item.kind in MODEL_FOLDERS, item.name
        assert item.title and item.description and item.files
        for entry in item.files:
            assert check_file_name(entry.target) == entry.target
            assert (item.kind, entry.target) not in targets
            targets.add((item.kind, entry.target))
            assert bool(entry.url) != bool(entry.repo), item.name
            if entry.repo:
                assert hub_file_url("https://huggingface.co", entry.repo, entry.path, entry.revision)
            else:
                assert entry.url.startswith("https://")
            assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
            assert entry.size > 0
    first = next(s for s in STARTERS if s.name == FIRST_RUN_STARTER)
    assert first.kind == "checkpoint" and first.architecture == "sd1"
    needed = {f for p in PREPROCESSORS.values() for f in p.files}
    offered = {e.target for s in STARTERS if s.kind == "annotator" for e in s.files}
    assert needed <= offered, needed - offered
    kinds = {s.kind for s in STARTERS}
    assert {"checkpoint", "lora", "controlnet", "ipadapter", "photomaker", "instantid", "insightface"} <= kinds


def test_download_tab_builds_and_its_buttons_drive_the_manager(easel, hub):
    from webui.ui.layout import build_ui

    blocks = build_ui(easel)
    ids = {c.get("props", {}).get("elem_id") for c in blocks.config["components"]}
    assert {"models_download_tab", "downloads_starter", "downloads_custom_go", "downloads_list",
            "easel_first_run_download"} <= ids
    fns = {f.name: f.fn for f in blocks.fns.values()}
    easel.settings.update({"hub_endpoint": hub.url})
    message, listing, choices = fns["start_custom"]("owner/repo", "sub/model.safetensors", "", "lora", "", "")
    assert message == "" and "owner/repo: sub/model.safetensors" in listing
    (item,) = easel.downloads.list()
    assert choices["value"] == item.id and choices["choices"][0][1] == item.id
    _finish(easel.downloads, item)
    assert item.state == DONE and (easel.paths.model_dir("lora") / "model.safetensors").read_bytes() == PAYLOAD
    # the app keeps the hash computed while downloading: the file is never read again just to hash it
    target = easel.paths.model_dir("lora") / "model.safetensors"
    deadline = time.monotonic() + 10
    while easel.models.hashes.cached(target) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert easel.models.hashes.cached(target) == hashlib.sha256(PAYLOAD).hexdigest()
    assert "Done" in fns["start_custom"]("", "", "", "lora", "", "")[1]
    assert "repository or URL" in fns["start_custom"]("", "", "", "lora", "", "")[0]
    assert "already exists" in fns["start_custom"]("owner/repo", "sub/model.safetensors", "", "lora", "", "")[0]
    assert "choose a download" in fns["do_cancel"](None)[0]
    assert fns["do_resume"](item.id)[0] == "" and item.state == DONE  # nothing to resume: left as it is
