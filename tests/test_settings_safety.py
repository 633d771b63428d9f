"""Settings are never lost and never name a path outside their folder (issue 23, items 3, 6 and 19).

- a corrupt config.json is kept as config.json.bad-<time>, and the page says so;
- hidden `.config.json.*.tmp` files left by a save killed mid-write are removed at start;
- a folder in place of config.json: start-up works, saving answers 503 naming the file (not a 500);
- a setting that names a file or folder (`sd_vae`, `identity_insightface_pack`) is checked before it
  is saved (422 naming the setting);
- config.json and output images are written with the usual umask-respecting mode, not 0600.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from conftest import start_server
from webui.core.request import GenerationRequest
from webui.features.identity.faces import pack_folder
from webui.fileio import atomic_write_text
from webui.settings import Settings, SettingsStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def expected_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


# ---- the store on its own ----------------------------------------------------------------------------


def test_corrupt_config_is_kept_aside_and_not_overwritten(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"samples_format": "webp", oops')
    store = SettingsStore(path)
    assert store.load() == Settings()
    backups = list(tmp_path.glob("config.json.bad-*"))
    assert len(backups) == 1 and backups[0].read_text() == '{"samples_format": "webp", oops'
    assert any(backups[0].name in w for w in store.load_warnings)
    store.update({"jpeg_quality": 90})  # the next save writes a new file and leaves the backup alone
    assert json.loads(path.read_text())["jpeg_quality"] == 90
    assert backups[0].read_text() == '{"samples_format": "webp", oops'


def test_stale_temporary_files_are_removed_at_load(tmp_path):
    (tmp_path / "config.json").write_text('{"jpeg_quality": 70}')
    left = [tmp_path / ".config.json.abc123.tmp", tmp_path / ".config.json.zz.tmp"]
    for path in left:
        path.write_text('{"jpeg_qu')
    other = tmp_path / ".styles.csv.x.tmp"  # not config.json's: another file's write may be in flight
    other.write_text("")
    store = SettingsStore(tmp_path / "config.json")
    assert store.load().jpeg_quality == 70
    assert not any(p.exists() for p in left) and other.exists()


def test_a_folder_in_place_of_config_json(tmp_path):
    (tmp_path / "config.json").mkdir()
    store = SettingsStore(tmp_path / "config.json")
    assert store.load() == Settings()
    assert any("is a folder" in w for w in store.load_warnings)
    with pytest.raises(OSError, match="config.json"):
        store.update({"jpeg_quality": 90})
    assert store.settings.jpeg_quality == Settings().jpeg_quality  # nothing applied that was not saved


@pytest.mark.parametrize("value", ["/etc", "../../outside", "a/b", "..", "x\\..\\y", ""])
def test_insightface_pack_is_one_folder_name(tmp_path, value):
    store = SettingsStore(tmp_path / "config.json")
    store.load()
    with pytest.raises(ValueError, match="identity_insightface_pack"):
        store.update({"identity_insightface_pack": value})
    assert store.update({"identity_insightface_pack": "buffalo_l"}) == ["identity_insightface_pack"]


def test_a_bad_pack_in_config_json_falls_back_to_the_default(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"identity_insightface_pack": "/tmp"}))
    store = SettingsStore(tmp_path / "config.json")
    assert store.load().identity_insightface_pack == "antelopev2"
    assert any("identity_insightface_pack" in w for w in store.load_warnings)


def test_pack_folder_stays_inside_models_insightface(tmp_path):
    root = tmp_path / "models" / "insightface"
    (root / "antelopev2").mkdir(parents=True)
    (root / "antelopev2" / "det.onnx").write_bytes(b"")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "det.onnx").write_bytes(b"")
    assert pack_folder(root, "antelopev2") == (root / "antelopev2").resolve()
    assert pack_folder(root, str(outside)) is None
    assert pack_folder(root, "../../elsewhere") is None


def test_atomic_writes_respect_the_umask(tmp_path):
    atomic_write_text(tmp_path / "new.json", "{}")
    assert mode(tmp_path / "new.json") == expected_mode()
    (tmp_path / "private.json").write_text("{}")
    os.chmod(tmp_path / "private.json", 0o600)  # a file the user restricted keeps its mode
    atomic_write_text(tmp_path / "private.json", "{}")
    assert mode(tmp_path / "private.json") == 0o600


def test_output_images_are_readable_like_any_new_file(easel):
    result = easel.txt2img(GenerationRequest(prompt="x", steps=1, width=64, height=64, seed=1,
                                             checkpoint="tiny-sd1.safetensors"))
    assert mode(Path(result.paths[0])) == expected_mode()


# ---- a real server ------------------------------------------------------------------------------------


def write_truncated_vae(folder: Path) -> Path:
    """A VAE whose header promises more data than the file has (a download cut short)."""
    header = json.dumps({"encoder.conv_in.weight": {"dtype": "F32", "shape": [4, 3, 3, 3], "data_offsets": [0, 432]},
                         "decoder.conv_out.weight": {"dtype": "F32", "shape": [3, 4, 3, 3],
                                                     "data_offsets": [432, 864]}}).encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cut.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 100)
    return path


def test_server_keeps_a_corrupt_config_and_says_so(tmp_path, tiny_ckpt_dir):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.json").write_text("{broken")
    (data / ".config.json.k9x.tmp").write_text('{"half": ')
    write_truncated_vae(tmp_path / "models" / "VAE")
    server = start_server(tmp_path, tiny_ckpt_dir, ["--api"])
    try:
        backups = list(data.glob("config.json.bad-*"))
        assert [b.read_text() for b in backups] == ["{broken"]
        assert not (data / ".config.json.k9x.tmp").exists()
        config = httpx.get(server.url + "/config", timeout=30).json()
        shown = {c["props"].get("elem_id"): str(c["props"].get("value", "")) for c in config["components"]}
        assert backups[0].name in shown["easel_status"] and backups[0].name in shown["settings_result"]

        answer = httpx.post(server.url + "/sdapi/v1/options", json={"sd_vae": "cut.safetensors"}, timeout=30)
        assert answer.status_code == 422 and "sd_vae" in answer.text and "truncated" in answer.text
        for pack in ("/etc", "../../data"):
            answer = httpx.post(server.url + "/sdapi/v1/options", json={"identity_insightface_pack": pack},
                                timeout=30)
            assert answer.status_code == 422 and "identity_insightface_pack" in answer.text
        assert not (data / "config.json").exists()  # nothing was saved by the refused changes

        answer = httpx.post(server.url + "/sdapi/v1/options", json={"jpeg_quality": 91}, timeout=30)
        assert answer.status_code == 200
        assert json.loads((data / "config.json").read_text())["jpeg_quality"] == 91
        assert mode(data / "config.json") == expected_mode()
        assert httpx.get(server.url + "/sdapi/v1/options", timeout=30).json()["sd_vae"] == "Automatic"
    finally:
        server.stop()


def test_server_starts_with_a_folder_in_place_of_config_json(tmp_path):
    (tmp_path / "data" / "config.json").mkdir(parents=True)
    server = start_server(tmp_path, None, ["--nowebui"])
    try:
        answer = httpx.post(server.url + "/sdapi/v1/options", json={"jpeg_quality": 91}, timeout=30)
        assert answer.status_code == 503, answer.text
        assert "config.json" in answer.json()["detail"] and "folder" in answer.json()["detail"]
        assert httpx.get(server.url + "/sdapi/v1/options", timeout=30).json()["jpeg_quality"] == 80
    finally:
        server.stop()


def test_a_saved_vae_that_became_unreadable_is_not_used(tmp_path, tiny_ckpt_dir):
    """config.json names a VAE whose file was cut short later: start on Automatic and say why."""
    write_truncated_vae(tmp_path / "models" / "VAE")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "config.json").write_text(json.dumps({"sd_vae": "cut.safetensors"}))
    from conftest import make_easel

    app = make_easel(tmp_path, tiny_ckpt_dir)
    try:
        assert app.settings.get("sd_vae") == "Automatic"
        assert any("cut.safetensors" in w for w in app.settings.load_warnings)
        assert json.loads((tmp_path / "data" / "config.json").read_text())["sd_vae"] == "cut.safetensors"
    finally:
        app.close()
