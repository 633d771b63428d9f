"""Running out of device memory fails one job, never the app.

A CUDA (or MPS) out-of-memory error inside a generation becomes `DeviceOutOfMemory`: the
message says what was asked (size, batch) and what would fit (smaller size or batch, VAE
tiling, a smaller model-cache budget, and the memory mode / weight storage that keep less on
the device than the job ran with: `advice`, from model_manager/memory.py), the allocator's cache
is emptied, and the worker goes on with the next job. Models stay loaded: the store's budget decides about them, not the
failure of one job.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Callable, Iterator

import torch


class DeviceOutOfMemory(RuntimeError):
    user_facing = True


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def release_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()


CACHE_ADVICE = "lower model_cache_vram_gb so fewer models stay on the GPU"
MODE_ADVICE = ("set Memory mode to Model offload or Block offload (Settings → memory_mode, or start with --medvram / "
               "--lowvram), store weights in fp8 (Settings → weight_storage)")
NOTHING_ELSE = "Nothing else was affected; the next job runs normally."


@contextmanager
def job_memory_guard(width: int, height: int, batch_size: int,
                     advice: Callable[[], str] | None = None) -> Iterator[None]:
    """Turn an out-of-memory error inside the block into DeviceOutOfMemory, after freeing the cache.

    `advice`: asked after the failure, says which memory mode / weight storage would keep less on the device.
    The cache is emptied once the except block is over (its error's frames hold the job's tensors); the job
    queue empties it again when the error itself is dropped (jobs.py)."""
    message = None
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        message = (f"Out of GPU memory generating {width}x{height} with batch size {batch_size} "
                   f"({_first_line(exc)}). Try a smaller size or batch size (hires fix: a smaller upscale), set VAE "
                   f"tiling to Always (Settings → vae_tiling; smaller tiles: vae_tile_decode), or {CACHE_ADVICE}. ")
        try:
            more = advice() if advice is not None else ""
        except Exception:  # the advice must never hide the error itself
            more = ""
        if more:
            message += f"To keep less on the GPU: {more}. "
        message += NOTHING_ELSE
    if message is not None:
        release_device_memory()
        raise DeviceOutOfMemory(message)


def drop_frames(error: BaseException) -> None:
    """Let go of what a kept error references: its traceback's frames and the error it replaced (whose frames
    hold the tensors of the job that ran out of memory), so emptying the cache can give that memory back."""
    error.__traceback__ = None
    error.__context__ = error.__cause__ = None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def job_out_of_memory(exc: BaseException, what: str) -> DeviceOutOfMemory | None:
    """For the job queue: an out-of-memory error that escaped a job without a guard of its own (loading a
    checkpoint, an Extras upscale) as DeviceOutOfMemory naming `what` ran and the settings that keep less on
    the GPU; None for any other error. The caller frees the cache (release_device_memory) once the original
    error, whose traceback holds the job's tensors, is dropped."""
    if isinstance(exc, DeviceOutOfMemory) or not is_out_of_memory(exc):
        return None
    return DeviceOutOfMemory(f"Out of GPU memory in {what} ({_first_line(exc)}). To keep less on the GPU: "
                             f"{MODE_ADVICE}, or {CACHE_ADVICE}. {NOTHING_ELSE}")
