"""The bundled X/Y/Z plot and prompt matrix scripts, run through the engine like the UI runs them."""
import importlib
import shutil
import sys

import numpy as np
import pytest

from webui.core.grids import BACKGROUND, cell_box
from webui.core.infotext import parse_infotext
from webui.core.jobs import JobState
from webui.core.request import GenerationRequest, ValidationError

from conftest import ROOT, make_easel
from test_extensions import write_extension


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


# Holds the job on the first step of one grid cell, so the test can press Skip or Interrupt
# there exactly as the UI's buttons do (JobQueue.skip_current / interrupt_current).
PAUSER = '''
import threading

from webui.extensions import api as easel

STARTED = []       # the CFG scale of every cell that began sampling, in order
PAUSE_AT = [None]  # hold the first step of the cell with this CFG scale
REACHED, RESUME = threading.Event(), threading.Event()


@easel.hookimpl
def process_batch(request):
    STARTED.append(request.cfg_scale)


@easel.hookimpl
def step_end(step):
    if step.index == 0 and STARTED[-1] == PAUSE_AT[0]:
        REACHED.set()
        RESUME.wait(60)
'''


@pytest.mark.parametrize("press", ["skip", "interrupt"])
def test_skip_moves_the_grid_to_its_next_cell_and_interrupt_stops_it(tmp_path, tiny_ckpt_dir, press):
    ext_dir = tmp_path / "extensions"
    shutil.copytree(ROOT / "extensions" / "xyz-plot", ext_dir / "xyz-plot")
    write_extension(ext_dir, "pauser", PAUSER)
    app = make_easel(tmp_path, tiny_ckpt_dir, extensions_dir=ext_dir)
    try:
        pauser = sys.modules["easel_extensions.pauser.extension"]
        cell = dict(prompt="a tower", steps=3, width=64, height=64, seed=11, checkpoint="tiny-sd1", save_images=False)
        pauser.PAUSE_AT[0] = 5.0
        job = app.submit(GenerationRequest(**cell, script_name="xyz_plot",
                                           script_args={"x_type": "CFG Scale", "x_values": "3, 5, 7"}))
        assert pauser.REACHED.wait(60), "the middle cell never started"
        (app.queue.skip_current if press == "skip" else app.queue.interrupt_current)()
        pauser.RESUME.set()
        assert job.wait(60) and job.error is None
        result = job.result
        images = [image.copy() for image in result.images]  # finished jobs keep files, removed at close
        pauser.PAUSE_AT[0] = None
        singles = {cfg: np.asarray(app.txt2img(GenerationRequest(**cell, cfg_scale=cfg)).images[0]) for cfg in (3, 7)}
    finally:
        app.close()
    grid, cells = np.asarray(images[0]), images[1:]
    left, top = cell_box(images[0].size, 1, 3 if press == "skip" else 1, (64, 64))
    assert np.array_equal(grid[top:top + 64, left:left + 64], singles[3])
    if press == "skip":  # the held cell is dropped (left blank), the grid goes on to CFG 7
        assert pauser.STARTED == [3.0, 5.0, 7.0, 3.0, 7.0]  # (the last two: the single generations)
        assert job.state == JobState.DONE and not result.interrupted and result.skipped_batches == 1
        assert [float(parse_infotext(t).params["CFG scale"]) for t in result.infotexts[1:]] == [3.0, 7.0]
        assert np.array_equal(np.asarray(cells[1]), singles[7])
        assert grid.shape[1] == left + 3 * 64
        assert (grid[top:top + 64, left + 64:left + 128] == BACKGROUND).all()
        assert np.array_equal(grid[top:top + 64, left + 128:left + 192], singles[7])
    else:  # the grid stops: CFG 7 never starts, the finished cell is kept
        assert pauser.STARTED == [3.0, 5.0, 3.0, 7.0]
        assert job.state == JobState.INTERRUPTED and result.interrupted and result.skipped_batches == 0
        assert len(cells) == 1 and np.array_equal(np.asarray(cells[0]), singles[3])


def test_adetailer_and_regional_prompter_axes_rewrite_their_args(easel):
    """ADetailer's own axis names set its 1st pass (turning it on when absent); RP's ratios set its positional args."""
    from webui.extensions.views import request_view, thaw

    apply = axes().apply_value
    plain = request_view(GenerationRequest(prompt="a", checkpoint="tiny-sd1"))
    model = apply("[ADetailer] ADetailer model 1st", plain, "face_yolov8n.pt", [])
    assert thaw(model.alwayson_scripts["ADetailer"]["args"]) == [True, False, {"ad_model": "face_yolov8n.pt"}]
    sent = request_view(GenerationRequest(prompt="a", alwayson_scripts={"adetailer": {"args": [
        True, False, {"ad_model": "face_yolov8n.pt", "ad_prompt": "x"}, {"ad_model": "hand_yolov8n.pt"}]}}))
    changed = apply("[ADetailer] Inpaint only masked 1st", sent, "False", [])
    args = thaw(changed.alwayson_scripts["adetailer"]["args"])
    assert args[2] == {"ad_model": "face_yolov8n.pt", "ad_prompt": "x", "ad_inpaint_only_masked": False}
    assert args[3] == {"ad_model": "hand_yolov8n.pt"}
    assert apply("RP Ratios", plain, "1,2", []) is plain  # no Regional Prompter: nothing to set
    rp = request_view(GenerationRequest(prompt="a", alwayson_scripts={"Regional Prompter": {"args": [
        True, False, "Matrix", "Columns", "Mask", "Prompt", "1,1", "0"]}}))
    assert apply("RP Ratios", rp, "1,2", []).alwayson_scripts["Regional Prompter"]["args"][6] == "1,2"
    assert apply("RP Base Ratios", rp, "0.3", []).alwayson_scripts["Regional Prompter"]["args"][7] == "0.3"
