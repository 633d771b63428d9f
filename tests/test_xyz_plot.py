"""The bundled X/Y/Z plot and prompt matrix scripts, run through the engine like the UI runs them."""
import importlib

import numpy as np
import pytest

from webui.core.grids import cell_box
from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, ValidationError


def axes():
    return importlib.import_module("easel_extensions.xyz_plot.axes")


def test_value_ranges(easel):
    parse = axes().parse_numbers
    assert parse("1-5", True) == [1, 2, 3, 4, 5]
    assert parse("1-10 (+2)", True) == [1, 3, 5, 7, 9]
    assert parse("10-1 (-3)", True) == [10, 7, 4, 1]
    assert parse("5-10 [3]", False) == [5.0, 7.5, 10.0]
    assert parse("1.5, 2-3 (+0.5)", False) == [1.5, 2.0, 2.5, 3.0]
    with pytest.raises(ValueError, match="not a number"):
        parse("seven", True)
    assert axes().AXES["Sampler"].parse('Euler, "DPM++ 2M", Euler a') == ["Euler", "DPM++ 2M", "Euler a"]


def _cell(easel, cfg, sampler):
    request = GenerationRequest(prompt="a tower", steps=3, width=64, height=64, seed=11, cfg_scale=cfg,
                                sampler_name=sampler, checkpoint="tiny-sd1", save_images=False)
    return np.asarray(easel.txt2img(request).images[0])


def test_grid_over_cfg_and_sampler(easel):
    request = GenerationRequest(prompt="a tower", steps=3, width=64, height=64, seed=11, checkpoint="tiny-sd1",
                                script_name="xyz_plot",
                                script_args={"x_type": "CFG Scale", "x_values": "3-7 [3]", "y_type": "Sampler",
                                             "y_values": "Euler, DPM++ 2M", "z_type": "Nothing", "z_values": "",
                                             "draw_legend": True, "include_cells": True})
    result = easel.txt2img(request)
    grid, cells = result.images[0], result.images[1:]
    assert len(cells) == 6 and len(result.infotexts) == 7
    left, top = cell_box(grid.size, 2, 3, (64, 64))
    assert grid.width == left + 3 * 64 and grid.height == top + 2 * 64
    assert left > 0 and top > 0  # room for the labels
    array = np.asarray(grid)
    assert (array[:top, left:] < 100).any()  # label text drawn above the columns
    expected = [(3.0, "Euler"), (5.0, "Euler"), (7.0, "Euler"), (3.0, "DPM++ 2M"), (5.0, "DPM++ 2M"), (7.0, "DPM++ 2M")]
    for index, (cfg, sampler) in enumerate(expected):
        info = parse_infotext(result.infotexts[index + 1])
        assert (float(info.params["CFG scale"]), info.params["Sampler"]) == (cfg, sampler)
        single = _cell(easel, cfg, sampler)
        assert np.array_equal(np.asarray(cells[index]), single)
        row, col = divmod(index, 3)
        placed = array[top + row * 64: top + (row + 1) * 64, left + col * 64: left + (col + 1) * 64]
        assert np.array_equal(placed, single)
    grids = list((easel.paths.outputs_dir / "txt2img-grids").rglob("*.png"))
    assert len(grids) == 1 and result.paths[0] == str(grids[0])


def test_bad_axis_values_name_the_field(easel):
    request = GenerationRequest(prompt="x", steps=2, width=64, height=64, checkpoint="tiny-sd1", script_name="xyz_plot",
                                script_args={"x_type": "Steps", "x_values": "many"})
    job = easel.submit(request)
    job.wait(30)
    assert "x_values" in str(job.error)


def test_unknown_script_is_a_validation_error(easel):
    with pytest.raises(ValidationError, match="script_name: unknown script 'nope'"):
        easel.submit(GenerationRequest(prompt="x", steps=2, width=64, height=64, script_name="nope"))


def test_prompt_matrix(easel):
    module = importlib.import_module("easel_extensions.prompt_matrix.extension")
    prompts, optional = module.combinations("a street|night|rain")
    assert prompts == ["a street", "a street, night", "a street, rain", "a street, night, rain"]
    result = easel.txt2img(GenerationRequest(prompt="a street|night|rain", steps=2, width=64, height=64, seed=3,
                                             checkpoint="tiny-sd1", script_name="prompt_matrix", save_images=False))
    assert len(result.images) == 5
    assert [parse_infotext(t).prompt for t in result.infotexts[1:]] == prompts
    assert result.images[0].width > 2 * 64 and result.images[0].height > 2 * 64
