"""Output files (names, formats, embedded text, atomic writes) and the settings file."""
import datetime as dt
import json
import os

import pytest
from PIL import Image

from webui.core.images import NamingContext, format_pattern, next_number, read_infotext, save_image
from webui.core.request import GenerationRequest
from webui.settings import Settings, SettingsStore

TEXT = "a cat, b: c\nNegative prompt: dog\nSteps: 2, Seed: 5, Size: 64x64"


def test_running_numbers_and_seed_names(tmp_path):
    image = Image.new("RGB", (8, 8), "red")
    first = save_image(image, tmp_path, "[seed]", NamingContext(seed=123), infotext=TEXT)
    second = save_image(image, tmp_path, "[seed]", NamingContext(seed=124), infotext=TEXT)
    assert first.name == "00000-123.png" and second.name == "00001-124.png"
    (tmp_path / "00041-x.png").write_bytes(b"")
    assert next_number(tmp_path) == 42
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_infotext_survives_each_format(tmp_path, fmt):
    path = save_image(Image.new("RGB", (16, 16), "blue"), tmp_path, "[seed]", NamingContext(seed=1), fmt=fmt,
                      infotext=TEXT)
    assert path.suffix == f".{fmt}"
    assert read_infotext(Image.open(path)) == TEXT


def test_pattern_tokens_are_filled_and_sanitised():
    ctx = NamingContext(seed=9, prompt="a cat/dog: <best>", steps=20, cfg_scale=7.0, sampler="Euler a",
                        width=64, height=32, model_name="tiny")
    now = dt.datetime(2026, 11, 22, 10, 30, 0)
    assert format_pattern("[seed]-[steps]-[cfg]-[width]x[height]-[model_name]", ctx, now) == "9-20-7-64x32-tiny"
    assert format_pattern("[prompt_spaces]", ctx, now) == "a cat_dog_ _best_"
    assert format_pattern("[date]-[datetime<%H%M>]-[unknown]", ctx, now) == "2026-11-22-1030-[unknown]"


def test_output_folder_and_format_settings_apply(easel):
    easel.settings.update({"samples_format": "jpg", "samples_filename_pattern": "[seed]-[steps]",
                           "save_to_dirs": False})
    result = easel.txt2img(GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=77,
                                             checkpoint="tiny-sd1.safetensors"))
    path = result.paths[0]
    assert path.endswith("00000-77-2.jpg")
    assert os.path.dirname(path) == str(easel.paths.outputs_dir / "txt2img-images")
    assert "Seed: 77" in read_infotext(Image.open(path))


def test_default_output_layout_is_dated_folder(easel):
    result = easel.txt2img(GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=3,
                                             checkpoint="tiny-sd1.safetensors"))
    today = dt.date.today().isoformat()
    assert result.paths[0] == str(easel.paths.outputs_dir / "txt2img-images" / today / "00000-3.png")


def test_settings_persist_atomically_and_keep_unknown_keys(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"samples_format": "webp", "some_extension_option": [1, 2], "jpeg_quality": "bad"}))
    store = SettingsStore(path)
    settings = store.load()
    assert settings.samples_format == "webp"
    assert settings.jpeg_quality == Settings().jpeg_quality
    assert any("jpeg_quality" in w for w in store.load_warnings)
    store.update({"jpeg_quality": 90})
    data = json.loads(path.read_text())
    assert data["jpeg_quality"] == 90 and data["some_extension_option"] == [1, 2]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_setting_changes_nothing(tmp_path):
    store = SettingsStore(tmp_path / "config.json")
    store.load()
    with pytest.raises(ValueError, match="samples_format"):
        store.update({"jpeg_quality": 50, "samples_format": "bmp"})
    assert store.settings.jpeg_quality == Settings().jpeg_quality
    assert not (tmp_path / "config.json").exists()


def test_protected_settings_refused_when_not_allowed(tmp_path):
    store = SettingsStore(tmp_path / "config.json")
    store.load()
    with pytest.raises(PermissionError, match="outdir_txt2img_samples"):
        store.update({"outdir_txt2img_samples": "/etc"}, allow_protected=False)


def test_corrupt_config_falls_back_to_defaults(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    store = SettingsStore(path)
    assert store.load() == Settings()
    assert store.load_warnings
