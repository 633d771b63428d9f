"""The Extensions tab in a real server: the --listen / --enable-insecure-extension-access wiring, and the
install question, clicked through Gradio's own queue routes exactly as the page does.

The servers listen on all interfaces (that is what --listen means); the tests only talk to 127.0.0.1.
"""
import json
import threading
import uuid
from http.server import HTTPServer, SimpleHTTPRequestHandler

import httpx
import pytest

from conftest import start_server
from test_extension_install import DEP, build_wheel, source_repo


class Page:
    """One browser session of the UI: clicks buttons by elem_id through /gradio_api/queue."""

    def __init__(self, url: str):
        self.url = url
        self.session = uuid.uuid4().hex
        config = httpx.get(url + "/config", timeout=30).json()
        self.config = config
        self.elem_ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}

    def component(self, elem_id: str) -> dict:
        return next(c for c in self.config["components"] if c.get("props", {}).get("elem_id") == elem_id)

    def click(self, elem_id: str, *data) -> dict:
        """Click the button; returns {output elem_id: value or update} of the event's outputs."""
        target = next(i for i, e in self.elem_ids.items() if e == elem_id)
        dependency = next(d for d in self.config["dependencies"]
                          if any(list(t) == [target, "click"] for t in d["targets"]))
        assert len(data) == len(dependency["inputs"]), f"{elem_id} takes {len(dependency['inputs'])} inputs"
        joined = httpx.post(self.url + "/gradio_api/queue/join", timeout=30, json={
            "data": list(data), "fn_index": dependency["id"], "trigger_id": target, "session_hash": self.session,
            "event_data": None})
        joined.raise_for_status()
        with httpx.stream("GET", self.url + "/gradio_api/queue/data", params={"session_hash": self.session},
                          timeout=120) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    assert message.get("success"), message
                    values = message["output"]["data"]
                    return {self.elem_ids.get(i) or i: v for i, v in zip(dependency["outputs"], values)}
        raise AssertionError(f"no answer to the click on {elem_id}")


def html(value) -> str:
    return value["value"] if isinstance(value, dict) else str(value)


def table_rows(value) -> dict[str, list]:
    """A Dataframe output (plain or as an update), by its first column."""
    value = value.get("value", value) if isinstance(value, dict) and "data" not in value else value
    assert isinstance(value, dict) and "data" in value, value
    return {row[0]: row for row in value["data"]}


def test_listen_without_the_flag_refuses_installs_through_the_tab(tmp_path):
    repo = source_repo(tmp_path, "plain-ext")
    ext_dir = tmp_path / "server" / "extensions"
    ext_dir.mkdir(parents=True)
    server = start_server(tmp_path / "server", None, ["--listen", "--insecure", "--extensions-dir", str(ext_dir)])
    try:
        page = Page(server.url)
        notes = " ".join(str(c.get("props", {}).get("value", "")) for c in page.config["components"])
        assert "Installing, updating and uninstalling are off" in notes
        out = page.click("extensions_install_button", f"file://{repo}", "", "", None)
        assert "--enable-insecure-extension-access" in html(out["extensions_install_result"])
        assert "easel-error" in html(out["extensions_install_result"])
        assert list(ext_dir.iterdir()) == []  # not even a staging clone
    finally:
        server.stop()


@pytest.fixture
def index_server(tmp_path):
    """An extension index (AUTOMATIC1111's format) on 127.0.0.1, listing a local git repository."""
    repo = source_repo(tmp_path, "indexed-ext", f"{DEP}==0.1\n")
    site = tmp_path / "index-site"
    site.mkdir()
    (site / "index.json").write_text(json.dumps({"extensions": [
        {"name": "Indexed", "url": f"file://{repo}", "tags": ["test"], "description": "from the index"}]}))
    handler = lambda *a, **k: SimpleHTTPRequestHandler(*a, directory=str(site), **k)  # noqa: E731
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/index.json", repo
    server.shutdown()


def test_with_the_flag_installs_ask_about_requirements_first(tmp_path, monkeypatch, index_server):
    build_wheel(tmp_path / "wheels")
    site = tmp_path / "site"
    for key, value in (("PIP_NO_INDEX", "1"), ("PIP_FIND_LINKS", str(tmp_path / "wheels")), ("PIP_TARGET", str(site))):
        monkeypatch.setenv(key, value)  # the server's pip: our local wheel only, into tmp_path/site
    index_url, indexed_repo = index_server
    repo = source_repo(tmp_path, "url-ext", f"{DEP}==0.1\n")
    ext_dir = tmp_path / "server" / "extensions"
    ext_dir.mkdir(parents=True)
    server = start_server(tmp_path / "server", None, ["--listen", "--insecure", "--enable-insecure-extension-access",
                                                      "--extensions-dir", str(ext_dir)])
    try:
        page = Page(server.url)
        # Install from URL: the clone is staged and the requirement is shown; nothing is installed yet.
        out = page.click("extensions_install_button", f"file://{repo}", "", "", None)
        assert out["extensions_install_question"]["visible"] is True
        assert f"{DEP}==0.1" in html(out["extensions_install_question_text"])
        assert not (ext_dir / "url-ext").exists() and not site.exists()
        out = page.click("extensions_install_with_requirements", None)
        assert "Installed url-ext" in html(out["extensions_install_result"])
        assert (ext_dir / "url-ext" / "extension.py").is_file() and (site / "easel_ext_test_dep").is_dir()

        # Available: one click asks the same question; Cancel leaves nothing behind.
        page.click("extensions_load_index", index_url, "")
        out = page.click("extensions_available_install", f"file://{indexed_repo}", None, None, None)
        assert f"{DEP}==0.1" in html(out["extensions_available_question_text"])
        out = page.click("extensions_available_cancel", None)
        assert "nothing was installed" in html(out["extensions_available_result"])
        assert not (ext_dir / "indexed-ext").exists() and list((ext_dir / ".staging").iterdir()) == []

        # Install it without its requirements; the Installed tab then offers to install them.
        page.click("extensions_available_install", f"file://{indexed_repo}", None, None, None)
        out = page.click("extensions_available_without_requirements", None)
        assert "requirements not installed" in html(out["extensions_available_result"])
        rows = table_rows(out["extensions_installed_table"])
        assert "requirements not installed" in rows["indexed-ext"][4]
        out = page.click("extensions_install_requirements", "indexed-ext")
        rows = table_rows(out["extensions_installed_table"])
        assert "requirements not installed" not in rows["indexed-ext"][4]
        assert out["extensions_install_requirements"]["visible"] is False
    finally:
        server.stop()


def test_listen_without_the_flag_refuses_uninstall_and_local_index_urls(tmp_path):
    """Issue 23: a remote user could delete an extension and make the server fetch from its own network."""
    hits = []

    class Counting(SimpleHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(json.dumps({"extensions": [{"name": "x", "url": "file:///x"}]}).encode())

    local = HTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=local.serve_forever, daemon=True).start()
    ext_dir = tmp_path / "server" / "extensions"
    (ext_dir / "keep-me").mkdir(parents=True)
    (ext_dir / "keep-me" / "extension.toml").write_text('name = "keep-me"\napi_version = "2"\n')
    (ext_dir / "keep-me" / "extension.py").write_text("")
    server = start_server(tmp_path / "server", None, ["--listen", "--insecure", "--extensions-dir", str(ext_dir)])
    try:
        page = Page(server.url)
        assert "full access" in str(page.component("extensions_access_warning")["props"]["value"])
        out = page.click("extensions_uninstall", "keep-me", True)
        assert "--enable-insecure-extension-access" in html(out["extensions_status"])
        assert (ext_dir / "keep-me" / "extension.py").is_file()
        for url in (f"http://127.0.0.1:{local.server_port}/index.json", f"http://localhost:{local.server_port}/i"):
            out = page.click("extensions_load_index", url, "")
            assert "loopback" in html(out["extensions_available_result"]), out
        assert hits == []  # nothing reached the listener on 127.0.0.1
    finally:
        server.stop()
        local.shutdown()
