"""Live previews follow the "Live preview display period" setting, counted in sampler steps.

An extension's `step_end` hook (registered on the app's real hook runner) looks at the running
job's progress after every step, the way the UI's poller would, and records when the preview
latents on the job change.
"""
import pytest
import torch

from webui.core.request import GenerationRequest
from webui.extensions.api import hookimpl


class PreviewWatcher:
    """After each sampler step: which step the job's preview is from, and whether it is new."""

    def __init__(self, queue):
        self.queue = queue
        self.seen: list[tuple[int, int, bool]] = []   # (global step, preview_step, preview changed)
        self.is_this_steps_estimate: list[bool] = []  # for each new preview
        self._last = None

    @hookimpl
    def step_end(self, step):
        progress = self.queue.current.progress
        latents = progress.preview_latents
        changed = latents is not None and latents is not self._last
        self._last = latents
        self.seen.append((progress.step, progress.preview_step, changed))
        if changed:  # (a hook's exception would be logged and skipped, so record instead of asserting here)
            self.is_this_steps_estimate.append(torch.equal(latents, step.denoised))


@pytest.fixture
def watch(easel):
    watcher = PreviewWatcher(easel.queue)
    easel.engine.hooks.register(watcher, "preview-watcher")
    yield watcher
    easel.engine.hooks.unregister("preview-watcher")


def run(easel, every: int | None, steps: int = 6, **kw):
    overrides = {} if every is None else {"show_progress_every_n_steps": every}
    request = GenerationRequest(prompt="a lighthouse", steps=steps, width=64, height=64, seed=4, sampler_name="Euler",
                                checkpoint="tiny-sd1", save_images=False, override_settings=overrides, **kw)
    job = easel.submit(request)
    assert job.wait(120) and job.error is None, job.error
    return job


def changed_at(watcher) -> list[int]:
    return [step for step, _, changed in watcher.seen if changed]


def test_every_third_step_with_six_steps(easel, watch):
    run(easel, 3)
    assert [step for step, _, _ in watch.seen] == [1, 2, 3, 4, 5, 6]
    assert changed_at(watch) == [3, 6]
    # between updates the job keeps showing the last preview, and says which step it is from
    assert [preview_step for _, preview_step, _ in watch.seen] == [-1, -1, 3, 3, 3, 6]
    assert watch.is_this_steps_estimate == [True, True]  # the step's clean-latent estimate, not stale latents


def test_default_is_every_step(easel, watch):
    run(easel, None)
    assert changed_at(watch) == [1, 2, 3, 4, 5, 6]


def test_period_counts_steps_of_each_batch(easel, watch):
    # batch count 2: the second batch's steps 3 and 6 are job steps 9 and 12
    run(easel, 3, n_iter=2)
    assert changed_at(watch) == [3, 6, 9, 12]


def test_no_previews_when_switched_off(easel, watch):
    easel.settings.update({"live_previews_enable": False})
    run(easel, 1)
    assert changed_at(watch) == [] and [p for _, p, _ in watch.seen] == [-1] * 6
