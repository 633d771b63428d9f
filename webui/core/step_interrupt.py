"""Interrupt and Skip inside a sampling step, not only between steps.

The sampler checks the job's flags after each step, but one step of a large image on a slow
CPU takes many seconds (about 15 s for 1024² SDXL), so Interrupt used to wait that long.
Here the UNet's own blocks check the flags: a forward pre-hook on every ResNet and
transformer block calls `Job.check()` for the job the worker runs, so the exception leaves
the UNet within one block - the same exception, taking the same way out, as when the sampler
raises it between steps. Installed once per UNet module from outside the engine (the app
factory, when a model is loaded), so sampling code knows nothing of it; a hook costs a
function call per block when nobody pressed anything. Inside a denoiser compiled by fast mode
the hook traces to nothing (a graph break per block would undo the compile); Interrupt then
takes effect between steps.
"""
from __future__ import annotations

import threading
from typing import Callable

import torch

from .jobs import Job

# diffusers' block classes; each runs for a small fraction of a step
BLOCK_CLASSES = ("ResnetBlock2D", "BasicTransformerBlock", "Downsample2D", "Upsample2D")
_MARK = "_easel_interrupt_checks"


def install_interrupt_checks(module: torch.nn.Module, current_job: Callable[[], Job | None],
                             worker: Callable[[], threading.Thread | None] = lambda: None) -> int:
    """Add the checks to `module`'s blocks (once per module); returns the number of hooks installed.

    `current_job` answers the job the worker is running; `worker` (optional) is the worker
    thread, so a forward on any other thread (a test, an extension) is never interrupted."""
    if getattr(module, _MARK, False):
        return 0

    def check(_module, _args) -> None:
        if torch.compiler.is_compiling():  # fast mode's compiled denoiser: checks between steps only, no graph break
            return
        job = current_job()
        if job is None:
            return
        thread = worker()
        if thread is not None and threading.current_thread() is not thread:
            return
        job.check()

    blocks = [m for m in module.modules() if type(m).__name__ in BLOCK_CLASSES] or list(module.children())
    setattr(module, _MARK, [block.register_forward_pre_hook(check) for block in blocks])
    return len(blocks)


def remove_interrupt_checks(module: torch.nn.Module) -> None:
    """Take the checks off again (the benchmark compares with and without)."""
    for handle in getattr(module, _MARK, None) or []:
        handle.remove()
    setattr(module, _MARK, None)
