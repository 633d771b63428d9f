"""Batch count spread over workers: one job whose batches run as parts on several workers at once.

Asked for with the setting `workers_spread_batch_count` (or per request in override_settings).
The head fixes the seed (and variation seed) first, then makes part k a copy of the request with
batch count 1 and the seeds batch k would have had, so every image is the one a single worker
would have made. The parts are ordinary remote jobs in the same queue (the scheduler places them);
the job the user sees runs on the head, passes Interrupt and Skip on, sums their progress and
joins their results in order.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ..core.jobs import Job, JobQueue
from ..core.request import GenerationRequest, Result
from ..core.seeds import MAX_SEED, resolve_seed


def split(request: GenerationRequest) -> list[GenerationRequest]:
    """One request per batch of `request`, each with the seeds that batch has in the whole."""
    seed = resolve_seed(request.seed)
    variation = request.subseed_strength > 0
    subseed = resolve_seed(request.subseed) if variation else request.subseed
    size = request.batch_size
    return [dataclasses.replace(request, n_iter=1, seed=(seed + k * size) % (MAX_SEED + 1),
                                subseed=(subseed + k * size) % (MAX_SEED + 1) if variation else subseed)
            for k in range(request.n_iter)]


def spread_run(queue: JobQueue, request: GenerationRequest, remote_task: Callable[[GenerationRequest], Any],
               started: Callable[[str], None] = lambda job_id: None) -> Callable[[Job], Result]:
    """The `run` of the job the user sees: queue the parts, follow them, join their results."""

    def run(job: Job) -> Result:
        started(job.id)
        parts = [queue.submit(_part_run, kind=request.mode, owner=job.owner, remote=remote_task(part),
                              description=f"part {k + 1}/{request.n_iter} of {job.id[:8]}")
                 for k, part in enumerate(split(request))]
        job.meta["parts"] = [part.id for part in parts]
        while not all(part.wait(0.05) for part in parts):
            if job.interrupted:
                for part in parts:
                    queue.cancel(part.id)
            if job._skip.is_set():
                job._skip.clear()
                running = [part for part in parts if not part.done and part.state.value == "running"]
                if running:
                    running[0].skip()
            p = job.progress
            p.total_steps = sum(part.progress.total_steps for part in parts)
            p.step = sum(part.progress.step for part in parts)
            p.job_no, p.job_count = sum(1 for part in parts if part.done), len(parts)
            for part in parts:  # whoever watches the job watches its parts: their workers decode previews
                part.progress.preview_watched_at = p.preview_watched_at
            latest = max(parts, key=lambda part: part.progress.preview_step if not part.done else -1)
            if latest.progress.preview_latents is not None:
                p.previewer, p.preview_latents = latest.progress.previewer, latest.progress.preview_latents
                p.preview_image, p.preview_image_step = latest.progress.preview_image, latest.progress.preview_image_step
        job.meta["workers"] = [part.meta.get("worker") for part in parts]
        return join(parts)

    return run


def join(parts: list[Job]) -> Result:
    """The parts' images, infotexts, seeds and files in batch order; the first error is the job's."""
    for part in parts:
        if part.error is not None:
            raise part.error
    whole = Result()
    for part in parts:
        result = part.result
        if result is None:  # cancelled before it ran (Interrupt)
            whole.interrupted = True
            continue
        whole.images += list(result.images)
        whole.infotexts += result.infotexts
        whole.seeds += result.seeds
        whole.paths += result.paths
        whole.warnings += [w for w in result.warnings if w not in whole.warnings]
        whole.interrupted = whole.interrupted or result.interrupted
        whole.skipped_batches += result.skipped_batches
        whole.model_name = whole.model_name or result.model_name
        whole.demo_model = whole.demo_model or result.demo_model
        for key, value in result.timings.items():
            whole.timings[key] = whole.timings.get(key, 0.0) + value
    return whole


def _part_run(job: Job) -> Result:
    raise RuntimeError("a spread part runs only on a worker")
