"""sd-webui-freeu's always-on shape (its own FreeU: stage windows, skip cutoffs, a step schedule) on the tiny model."""

import json

import numpy as np
import pytest
import torch

from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, ValidationError
from webui.features.guidance.freeu_webui import (StageInfo, WebuiFreeUSettings, apply_stage, channel_window, parse,
                                                 schedule_ratio)

from conftest import make_easel

CKPT = "tiny-sd1.safetensors"


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    app = make_easel(tmp_path_factory.mktemp("freeu-webui"), tiny_ckpt_dir)
    yield app
    app.close()


def generate(app, scripts=None):
    return app.generate(GenerationRequest(prompt="a cat", steps=3, width=64, height=64, seed=5, sampler_name="Euler",
                                          checkpoint=CKPT, save_images=False, alwayson_scripts=scripts or {}))


def arr(result):
    return np.asarray(result.images[0]).astype(np.float64)


def test_the_extensions_window_schedule_and_stage():
    assert channel_window(0.5, 0.0, 8).tolist() == [True] * 5 + [False] * 3  # its rounding: both ends included
    assert channel_window(0.5, 0.75, 8).tolist() == [True, True, False, False, False, False, False, True]  # wraps
    settings = WebuiFreeUSettings(start=0.0, stop=2)  # an int is a step
    assert [schedule_ratio(settings, step, 4) for step in range(4)] == [1, 1, 0, 0]
    assert schedule_ratio(WebuiFreeUSettings(start=0.5, stop=1.0, smoothness=1.0), 1, 4) == 0.5
    h, skip = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)
    out, same = apply_stage(h, skip, StageInfo(backbone_factor=2.0), "1", 1.0)
    assert torch.equal(out[:, :5], h[:, :5] * 2) and torch.equal(out[:, 5:], h[:, 5:]) and torch.equal(same, skip)
    _, filtered = apply_stage(h, skip, StageInfo(skip_factor=0.0), "1", 1.0)
    torch.testing.assert_close(filtered.mean(dim=(2, 3)), torch.zeros(1, 8), atol=1e-5, rtol=0)  # DC removed


def test_sd_webui_freeu_payloads_change_the_picture_and_write_its_keys(app):
    base = generate(app)
    off = generate(app, {"freeu": {"args": [{"enable": False, "stage_infos": [{}, {"backbone_factor": 1.5}]}]}})
    neutral = generate(app, {"freeu": {"args": [{"enable": True}]}})
    assert np.array_equal(arr(off), arr(base)) and np.array_equal(arr(neutral), arr(base))
    stages = [{}, {"backbone_factor": 1.6, "skip_factor": 0.5}]
    on = generate(app, {"freeu": {"args": [{"start_ratio": 0.0, "stop_ratio": 1.0, "stage_infos": stages}]}})
    assert np.abs(arr(on) - arr(base)).mean() > 0.5
    params = parse_infotext(on.infotexts[0]).params
    assert json.loads(params["FreeU Stages"]) == stages and params["FreeU Schedule"] == "0.0, 1.0, 0.0"
    assert params["FreeU Version"] == "1" and "freeu_enabled" not in params
    flat = [True, 0.0, 1.0, 0.0, "1", 1, 1, 0, 0.5, 0, 1, 1.6, 0.5, 0, 0.5, 0, 1]  # positional: 6 per stage
    assert np.array_equal(arr(generate(app, {"FreeU": {"args": flat}})), arr(on))
    forge = generate(app, {"FreeU": {"args": [True, 1.3, 1.4, 0.9, 0.2, 0, 1]}})  # Forge's shape still works
    assert "freeu_b1: 1.3" in forge.infotexts[0]


def test_bad_values_name_the_argument(app):
    _, errors = parse([{"stage_infos": [{"backbone_width": "wide"}]}], "alwayson_scripts.freeu.args")
    assert errors[0].field == "alwayson_scripts.freeu.args.stage_infos.0.backbone_width"
    with pytest.raises(ValidationError) as caught:
        app.engine.validate(GenerationRequest(prompt="x", alwayson_scripts={"freeu": {"args": [{"version": "3"}]}}))
    assert caught.value.errors[0].field == "alwayson_scripts.freeu.args.version"
