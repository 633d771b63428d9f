"""Per-family defaults: every family's `ui_defaults` is a request Easel accepts for that family, and the
tabs' memory gives each family its defaults the first time and what was set for it afterwards."""
from __future__ import annotations

import pytest

from webui import families
from webui.core import samplers
from webui.core.request import GenerationRequest
from webui.ui.family_presets import PRESET_FIELDS, switch_values


@pytest.mark.parametrize("family", families.names())
def test_every_familys_defaults_are_a_valid_request(family):
    defaults = families.get(family).ui_defaults
    assert set(defaults) == set(PRESET_FIELDS)
    GenerationRequest(prompt="x", **defaults)  # validates on construction
    samplers.resolve(defaults["sampler_name"], defaults["scheduler"])
    adapter = families.get(family)
    assert adapter.ddpm_samplers or defaults["sampler_name"] not in ("DDIM", "PLMS", "UniPC", "LCM")


def test_the_defaults_people_expect():
    turbo, schnell = families.get("zimage-turbo").ui_defaults, families.get("flux-schnell").ui_defaults
    assert turbo["cfg_scale"] == 1.0 and turbo["steps"] <= 9 and turbo["width"] == 1024
    assert schnell["steps"] == 4 and families.get("flux-dev").ui_defaults["cfg_scale"] == 1.0
    assert families.get("sd1").ui_defaults["width"] == 512 and families.get("sdxl").ui_defaults["width"] == 1024


def test_switching_remembers_per_family_and_leaves_the_same_family_alone():
    fields = [("txt2img", f) for f in PRESET_FIELDS] + [("img2img", "steps")]
    typed_sd1 = [640, 512, 13, 6.5, "Euler a", "Karras", 13]
    memory, values = switch_values({"family": "sd1"}, "sd1", fields, typed_sd1)
    assert values is None  # another SD 1.x checkpoint: what the user typed stays
    memory, values = switch_values(memory, "zimage-turbo", fields, typed_sd1)
    assert values == [1024, 1024, 8, 1.0, "Euler", "Simple", 8]
    typed_turbo = [1024, 768, 6, 1.0, "Euler", "Simple", 6]
    memory, values = switch_values(memory, "sd1", fields, typed_turbo)
    assert values == typed_sd1
    memory, values = switch_values(memory, "zimage-turbo", fields, typed_sd1)
    assert values == typed_turbo
    memory, values = switch_values({"family": None}, "sdxl", fields, typed_sd1)  # nothing known before
    assert values[:3] == [1024, 1024, 20] and memory["family"] == "sdxl"
