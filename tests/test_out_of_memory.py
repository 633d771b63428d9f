"""Out of device memory fails one job with a message that says what would fit; the next job runs.

The error is injected where a small GPU would raise it (the UNet's forward), on the real engine."""
from typing import Callable

import numpy as np
import pytest
import torch

from webui.core.jobs import JobState
from webui.core.request import GenerationRequest

from conftest import make_easel


@pytest.fixture
def app(tmp_path, tiny_ckpt_dir):
    app = make_easel(tmp_path, tiny_ckpt_dir)
    yield app
    app.close()


def failed_job(app, error: Exception | Callable[[], None]):
    """A small txt2img job whose UNet raises `error` (or runs `error()`, which raises), waited for; the UNet is
    given back its forward."""
    model = app.models.get("tiny-sd1.safetensors")
    real_forward = model.unet.forward

    def raising(*args, **kwargs):
        if callable(error):
            error()
        raise error

    model.unet.forward = raising
    try:
        job = app.submit(GenerationRequest(prompt="x", steps=2, width=64, height=64, checkpoint="tiny-sd1",
                                           save_images=False))
        job.wait(60)
    finally:
        model.unet.forward = real_forward
    return job


def test_an_out_of_memory_job_fails_clearly_and_the_next_one_runs(app):
    model = app.models.get("tiny-sd1.safetensors")
    request = GenerationRequest(prompt="a big picture", steps=2, width=64, height=64, batch_size=2, seed=4,
                                sampler_name="Euler", checkpoint="tiny-sd1", save_images=False)
    expected = np.asarray(app.txt2img(request).images[0])
    real_forward = model.unet.forward
    calls = {"n": 0}

    def small_gpu(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # mid-sampling, as when activations outgrow the card
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_forward(*args, **kwargs)

    model.unet.forward = small_gpu
    try:
        job = app.submit(request)
        job.wait(60)
    finally:
        model.unet.forward = real_forward
    assert job.state == JobState.FAILED
    message = str(job.error)
    assert type(job.error).__name__ == "DeviceOutOfMemory" and getattr(job.error, "user_facing", False)
    assert "64x64 with batch size 2" in message and "vae_tiling" in message and "Tried to allocate" in message
    assert app.models.loaded_names() == ["tiny-sd1.safetensors"]  # the model stays loaded
    again = app.submit(request)
    again.wait(60)
    assert again.state == JobState.DONE and np.array_equal(np.asarray(again.result.images[0]), expected)


def test_other_runtime_errors_are_not_mistaken_for_out_of_memory(app):
    job = failed_job(app, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert job.state == JobState.FAILED and type(job.error) is RuntimeError


@pytest.mark.parametrize("mode, storage, named, not_named", [
    ("Resident", "Automatic", ["Memory mode to Model offload", "--medvram", "MB of weights", "--weights fp8"],
     ["--lowvram): the denoiser"]),
    ("Model offload", "fp8_e4m3fn", ["Memory mode to Block offload", "--lowvram"], ["--medvram", "--weights fp8"]),
    ("Block offload", "Automatic", ["--weights fp8"], ["Memory mode to"]),
])
def test_out_of_memory_names_the_memory_mode_and_weight_storage_that_keep_less(app, mode, storage, named,
                                                                                not_named):
    app.settings.update({"memory_mode": mode, "weight_storage": storage})
    job = failed_job(app, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    message = str(job.error)
    assert type(job.error).__name__ == "DeviceOutOfMemory", message
    for text in named:
        assert text in message, (text, message)
    for text in not_named:
        assert text not in message, (text, message)


def test_a_model_load_that_runs_out_of_memory_fails_clearly_and_the_next_job_runs(app, monkeypatch):
    """Outside a generation's guard (a checkpoint load from the Models tab or /sdapi/v1/options, an Extras
    upscale) the job queue turns the out-of-memory error into the same kind of message: what ran, and the
    settings that keep less on the GPU; the worker goes on."""
    from webui.core.out_of_memory import DeviceOutOfMemory
    from webui.model_manager import loader

    real_load = loader.load_checkpoint

    def small_gpu(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 5.00 GiB")

    monkeypatch.setattr(loader, "load_checkpoint", small_gpu)
    job = app.queue.submit(lambda j: app.models.get("tiny-sd1.safetensors"), kind="load-model",
                           description="tiny-sd1")
    job.wait(60)
    assert job.state == JobState.FAILED and isinstance(job.error, DeviceOutOfMemory)
    message = str(job.error)
    assert message.startswith("Out of GPU memory in load-model (tiny-sd1) (CUDA out of memory.")
    assert "memory_mode" in message and "weight_storage" in message and "next job runs" in message
    monkeypatch.setattr(loader, "load_checkpoint", real_load)
    job = app.queue.submit(lambda j: app.models.get("tiny-sd1.safetensors").info.name, kind="load-model")
    job.wait(60)
    assert job.state == JobState.DONE and job.result == "tiny-sd1.safetensors"
    broken = app.queue.submit(lambda j: 1 / 0, kind="extras")
    broken.wait(60)
    assert isinstance(broken.error, ZeroDivisionError)  # other errors stay what they were


def test_the_failed_jobs_tensors_are_freed_before_the_cache_is_emptied(app, monkeypatch):
    """The kept DeviceOutOfMemory carries neither the failing frames nor the error it replaced (whose traceback
    holds the job's tensors): a tensor alive in the frame that ran out of memory is gone when the cache is
    emptied, so that memory can go back to the device."""
    import weakref

    from webui.core import jobs

    held: dict[str, weakref.ref] = {}
    alive_at_release: list[bool] = []

    def running_out():
        activations = torch.ones(256, 256)  # what a real forward holds when the allocation fails
        held["ref"] = weakref.ref(activations)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(jobs, "release_device_memory", lambda: alive_at_release.append(held["ref"]() is not None))
    job = failed_job(app, running_out)
    assert type(job.error).__name__ == "DeviceOutOfMemory" and "Tried to allocate 9.00 GiB" in str(job.error)
    assert job.error.__context__ is None and job.error.__traceback__ is None
    assert alive_at_release == [False]
