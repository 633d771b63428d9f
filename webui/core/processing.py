"""Run one GenerationRequest end to end: model, prompts, noise, sampling, decoding, saving.

`Engine.txt2img(request, job)` is what the job queue runs for the UI, the API and the
CLI alike. It reports progress per step through the job, honours Interrupt (stop, keep
finished images) and Skip (drop the current batch, go on), and writes each image with
its infotext as soon as it is decoded, so nothing finished is lost.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .. import __version__
from ..paths import Paths
from ..settings import SettingsStore
from . import samplers
from .prompt_plan import PromptPlan, plan_prompts
from .images import NamingContext, format_pattern, save_image
from .infotext import format_infotext
from .jobs import Interrupted, Job, Skipped
from .request import GenerationRequest, Result
from .seeds import ImageRNG, image_seeds, resolve_seed

if TYPE_CHECKING:
    from ..features.embeddings import EmbeddingLibrary
    from ..features.lora import LoraLibrary
    from ..model_manager.loader import LoadedModel
    from ..model_manager.manager import ModelManager
    from .styles import StyleStore

log = logging.getLogger(__name__)
LATENT_CHANNELS = 4
REFINER_AESTHETIC = (6.0, 2.5)  # positive / negative aesthetic score SDXL's refiner was trained with


@dataclass
class Plan:
    """Everything resolved before sampling starts (seed, sampler, schedule, conditioning)."""

    model: LoadedModel
    sampler: samplers.SamplerInfo
    schedule: str
    seed: int
    prompts: PromptPlan


class Engine:
    def __init__(self, models: ModelManager, settings: SettingsStore, paths: Paths, loras: LoraLibrary,
                 embeddings: EmbeddingLibrary, styles: StyleStore):
        self.models = models
        self.settings = settings
        self.paths = paths
        self.loras = loras
        self.embeddings = embeddings
        self.styles = styles
        self.catalog = samplers.Catalog()
        # set by the command line's --out: save straight into this folder
        self.output_dir_override: Path | None = None

    # ---- public -----------------------------------------------------------------------------

    def txt2img(self, request: GenerationRequest, job: Job) -> Result:
        request.validate(self.catalog)
        started = time.perf_counter()
        total = request.n_iter * request.steps
        job.report(step=0, total=total, text="loading model")
        model = self.models.get(request.checkpoint, progress=lambda msg: job.report(text=msg))
        plan = self._plan(request, model)
        timings = {"load": time.perf_counter() - started, "lora": plan.prompts.lora_seconds}
        result = Result(model_name=model.info.model_name, demo_model=model.demo)
        result.warnings += plan.prompts.warnings
        seeds = image_seeds(plan.seed, request.n_iter * request.batch_size)
        sample_time = decode_time = 0.0
        for batch_index in range(request.n_iter):
            job.progress.job_no, job.progress.job_count = batch_index, request.n_iter
            batch_seeds = seeds[batch_index * request.batch_size:(batch_index + 1) * request.batch_size]
            step_offset = batch_index * request.steps
            try:
                t0 = time.perf_counter()
                latents = self._sample(request, plan, batch_seeds, job, step_offset)
                t1 = time.perf_counter()
                images = self._decode(model, latents)
                decode_time += time.perf_counter() - t1
                sample_time += t1 - t0
            except Skipped:
                result.skipped_batches += 1
                job.report(step=step_offset + request.steps)
                continue
            except Interrupted:
                result.interrupted = True
                break
            for offset, image in enumerate(images):
                self._keep(result, request, plan, image, batch_seeds[offset], batch_index, offset)
        timings.update(sample=sample_time, decode=decode_time, total=time.perf_counter() - started)
        result.timings = timings
        if model.demo:
            result.warnings.append("Demo model: its weights are random, so images are noise.")
        job.report(step=total if not result.interrupted else job.progress.step, text="done")
        return result

    # ---- steps --------------------------------------------------------------------------------

    def options(self, request: GenerationRequest) -> dict[str, Any]:
        """Settings for this request: the saved ones, with the request's override_settings on top."""
        values = self.settings.settings.as_dict()
        values.update({k: v for k, v in request.override_settings.items() if k in values})
        return values

    def _plan(self, request: GenerationRequest, model: LoadedModel) -> Plan:
        sampler, schedule = samplers.resolve(request.sampler_name, request.scheduler)
        prompts = plan_prompts(request, model, self.options(request), self.loras, self.embeddings, self.styles)
        return Plan(model, sampler, schedule, resolve_seed(request.seed), prompts)

    def _time_ids(self, model: LoadedModel, request: GenerationRequest) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        family = model.architecture.family
        h, w = request.height, request.width
        if family == "sdxl":
            ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32)
            return ids, ids
        if family == "sdxl-refiner":
            positive, negative = REFINER_AESTHETIC
            return (torch.tensor([[h, w, 0, 0, positive]], dtype=torch.float32),
                    torch.tensor([[h, w, 0, 0, negative]], dtype=torch.float32))
        return None, None

    def _sample(self, request: GenerationRequest, plan: Plan, seeds: list[int], job: Job, step_offset: int) -> torch.Tensor:
        model = plan.model
        factor = model.vae_scale_factor
        shape = (LATENT_CHANNELS, request.height // factor, request.width // factor)
        device = model.device.device
        rng = ImageRNG(shape, seeds, device)
        time_ids, uncond_time_ids = self._time_ids(model, request)
        denoiser = plan.prompts.make_denoiser(len(seeds), time_ids, uncond_time_ids)
        previews = self.settings.get("live_previews_enable")

        def on_step(i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            denoiser.step = i + 1  # prompt editing and LoRA switching follow the sampler's step
            job.report(step=step_offset + i + 1, preview=denoised if previews else None)
            job.check()

        job.check()
        return samplers.run(plan.sampler, plan.schedule, denoiser, rng, rng.first(), request.steps,
                            model.scheduler_config, on_step, rng.generators)

    @torch.no_grad()
    def _decode(self, model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
        vae = model.vae
        scale = model.configs["vae"].get("scaling_factor", 0.18215)
        dtype = torch.float32 if model.vae_upcast else next(vae.parameters()).dtype
        if dtype != next(vae.parameters()).dtype:
            vae.to(dtype)
        images = []
        for latent in latents:  # one at a time: peak memory stays that of one image
            pixels = vae.decode((latent[None] / scale).to(dtype)).sample.float()
            if torch.isnan(pixels).any() and dtype != torch.float32:
                log.warning("VAE produced NaNs in half precision; switching this model's VAE to fp32")
                model.vae_upcast = True
                vae.to(torch.float32)
                dtype = torch.float32
                pixels = vae.decode((latent[None] / scale).float()).sample.float()
            images.append(_to_pil(pixels[0]))
        return images

    def _keep(self, result: Result, request: GenerationRequest, plan: Plan, image: Image.Image, seed: int,
              batch_index: int, offset: int) -> None:
        text = self.infotext(request, plan, seed)
        result.images.append(image)
        result.infotexts.append(text)
        result.seeds.append(seed)
        if request.save_images and self.settings.get("samples_save"):
            path = self._save(request, plan, image, seed, text, batch_index, offset)
            result.paths.append(str(path))

    # ---- output ---------------------------------------------------------------------------------

    def infotext(self, request: GenerationRequest, plan: Plan, seed: int) -> str:
        model, prompts = plan.model, plan.prompts
        params: dict[str, Any] = {
            "Steps": request.steps,
            "Sampler": plan.sampler.name,
            "Schedule type": plan.schedule if plan.sampler.uses_schedule else None,
            "CFG scale": request.cfg_scale,
            "Seed": seed,
            "Size": f"{request.width}x{request.height}",
            "Model hash": model.short_hash or None,
            "Model": model.info.model_name,
            "Clip skip": prompts.clip_skip if prompts.clip_skip > 1 else None,
            "Version": f"Easel {__version__}",
        }
        params.update(self._network_params(prompts))
        return format_infotext(prompts.prompt, prompts.negative_prompt, params)

    def _network_params(self, prompts: PromptPlan) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if prompts.loras:
            params["Lora hashes"] = ", ".join(f"{s.lora.name}: {self.loras.short_hash(s.lora)}" for s in prompts.loras)
            if len(prompts.loras) > 1:
                params["Lora composition"] = prompts.lora_mode
                if prompts.lora_mode == "Switch":
                    params["Lora switch steps"] = prompts.switch_steps
        if prompts.embeddings:
            params["TI hashes"] = ", ".join(f"{name}: {self.embeddings.short_hash(e)}"
                                            for name, e in prompts.embeddings.items())
        return params

    def output_folder(self, mode: str) -> Path:
        if self.output_dir_override is not None:
            return self.output_dir_override
        configured = self.settings.get(f"outdir_{mode}_samples") or ""
        base = Path(configured) if configured else self.paths.outputs_dir / f"{mode}-images"
        if self.settings.get("save_to_dirs"):
            sub = format_pattern(self.settings.get("directories_filename_pattern") or "[date]",
                                 NamingContext(seed=0))
            base = base / sub
        return base

    def _save(self, request: GenerationRequest, plan: Plan, image: Image.Image, seed: int, text: str,
              batch_index: int, offset: int) -> Path:
        s = self.settings
        ctx = NamingContext(seed=seed, prompt=plan.prompts.prompt, negative_prompt=plan.prompts.negative_prompt,
                            steps=request.steps, cfg_scale=request.cfg_scale, sampler=plan.sampler.name,
                            scheduler=plan.schedule, width=request.width, height=request.height,
                            model_name=plan.model.info.model_name, model_hash=plan.model.short_hash,
                            batch_number=offset, generation_number=batch_index * request.batch_size + offset)
        return save_image(image, self.output_folder(request.mode), s.get("samples_filename_pattern"), ctx,
                          s.get("samples_format"), text if s.get("enable_pnginfo") else None, s.get("jpeg_quality"))


def _to_pil(pixels: torch.Tensor) -> Image.Image:
    array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")
