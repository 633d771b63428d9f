"""Run one GenerationRequest end to end: model, prompts, noise, sampling, decoding, saving.

`Engine.txt2img(request, job)` is what the job queue runs for the UI, the API and the
CLI alike. It reports progress per step through the job, honours Interrupt (stop, keep
finished images) and Skip (drop the current batch, go on), and writes each image with
its infotext as soon as it is decoded, so nothing finished is lost.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from PIL import Image

from .. import __version__
from ..paths import Paths
from ..settings import SettingsStore
from . import latents as latents_io
from . import k_samplers, samplers
from ..features.hires import LATENT_MODES, model_upscaler_names, target_size, upscale_image, upscale_latents
from ..features.img2img import (LATENT_NOISE, LATENT_NOTHING, MASKED_CONTENT, RESIZE_MODES, PreparedImage,
                                latent_mask, prepare_image)
from ..features import soft_inpaint
from .hooks import NO_HOOKS, GenerationContext, Hooks, StepContext
from .prompt_plan import PromptPlan, plan_prompts
from .images import NamingContext, format_pattern, save_image
from .infotext import format_infotext
from .jobs import Interrupted, Job, Skipped
from .request import FieldError, GenerationRequest, Result, ValidationError
from .seeds import MAX_SEED, ImageRNG, image_seeds, resolve_seed

if TYPE_CHECKING:
    from ..features.embeddings import EmbeddingLibrary
    from ..features.lora import LoraLibrary
    from ..model_manager.loader import LoadedModel
    from ..model_manager.manager import ModelManager
    from .styles import StyleStore

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """Everything resolved before sampling starts (seed, sampler, schedule, conditioning)."""

    model: LoadedModel
    sampler: samplers.SamplerInfo
    schedule: str
    seed: int
    prompts: PromptPlan
    subseed: int = -1
    options: dict[str, Any] = field(default_factory=dict)
    controls: Any = None  # ControlNet / IP-Adapter additions at this size (features/controlnet/apply.Controls)
    vae: Any = None  # the separate VAE in use (model_manager/vae.VaeChoice), None: the baked-in one


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
        # ControlNet / IP-Adapter models and annotator weights (features/controlnet); set by the app
        self.controlnets = None
        self.ip_adapters = None
        self.annotators_dir: Path = paths.models_dir / "annotators"
        # PhotoMaker / InstantID (features/identity/service.IdentityService); set by the app
        self.identity = None
        # separate VAE files and per-checkpoint preferences (model_manager/vae.VaeLibrary); set by the app
        self.vaes = None
        # extension hooks and scripts (webui/extensions); none by default
        self.hooks: Hooks = NO_HOOKS
        self.scripts: dict[str, Any] = {}
        # image upscalers for hires fix, by name; features register model upscalers here
        self.image_upscalers: dict[str, Callable[[Image.Image, tuple[int, int]], Image.Image]] = {
            "Lanczos": lambda image, size: image.resize(size, Image.Resampling.LANCZOS),
            "Nearest": lambda image, size: image.resize(size, Image.Resampling.NEAREST),
        }
        # the app's model upscalers (features/upscalers.Upscalers: models/ESRGAN ...); set by the app
        self.upscalers = None

    # ---- public -----------------------------------------------------------------------------

    def upscaler_names(self) -> list[str]:
        return [*LATENT_MODES, *self.image_upscalers, *model_upscaler_names(self.upscalers)]

    def validate(self, request: GenerationRequest) -> None:
        request.validate(self.catalog, self.upscaler_names())
        from ..features.controlnet.units import parse_units

        _, unit_errors = parse_units(request.alwayson_scripts if isinstance(request.alwayson_scripts, dict) else {})
        if unit_errors:
            raise ValidationError(unit_errors)
        from ..features.identity.args import parse_identity

        identity, identity_errors = parse_identity(
            request.alwayson_scripts if isinstance(request.alwayson_scripts, dict) else {})
        if identity_errors:
            raise ValidationError(identity_errors)
        from ..features.identity.service import check_request as check_identity

        check_identity(request, identity)  # e.g. hires fix with an identity unit: refused at submit, before loading
        if request.script_name and request.script_name not in self.scripts:
            choices = ", ".join(sorted(self.scripts)) or "none installed"
            raise ValidationError([FieldError("script_name", f"unknown script {request.script_name!r} ({choices})")])
        overrides = request.override_settings if isinstance(request.override_settings, dict) else {}
        if self.vaes is not None and "sd_vae" in overrides:
            try:
                self.vaes.check(overrides["sd_vae"])
            except LookupError as exc:
                raise ValidationError([FieldError("override_settings.sd_vae", str(exc).split(": ", 1)[-1])]) from exc

    def txt2img(self, request: GenerationRequest, job: Job) -> Result:
        return self.generate(request, job)

    def img2img(self, request: GenerationRequest, job: Job) -> Result:
        return self.generate(request, job)

    def generate(self, request: GenerationRequest, job: Job, output_dir: Path | None = None) -> Result:
        """txt2img (with optional hires fix) or img2img/inpaint/outpaint, by request.mode.

        `output_dir` (folder batch, CLI) saves there instead of the mode's output folder. A
        request naming a script (`script_name`) is handed to that script, which may run any
        number of plain generations through `context.generate`.
        """
        if request.script_name:
            return self._run_script(request, job, output_dir)
        result = self._generate(request, job, output_dir)
        self._report_extension_errors(result)
        return result

    def _run_script(self, request: GenerationRequest, job: Job, output_dir: Path | None) -> Result:
        self.validate(request)
        script = self.scripts[request.script_name]
        plain = replace(request, script_name="", script_args={})
        context = GenerationContext(plain, job, generate=lambda sub: self._generate(sub, job, output_dir),
                                    save_grid=lambda image, text, seed=0: str(self.save_grid(plain, image, text, seed,
                                                                                             output_dir)))
        result = script.run(plain, dict(request.script_args), context)
        result.warnings = context.warnings + result.warnings
        self._report_extension_errors(result)
        return result

    def _report_extension_errors(self, result: Result) -> None:
        take = getattr(self.hooks, "take_new_errors", None)
        for error in take() if take else []:
            result.warnings.append(f"Extension {error.extension} failed in {error.hook} ({error.message}); skipped.")

    def _generate(self, request: GenerationRequest, job: Job, output_dir: Path | None = None) -> Result:
        context = GenerationContext(request, job)
        self.hooks.call("before_process", request=request, context=context)
        self.validate(request)
        started = time.perf_counter()
        job.report(step=0, text="loading model")
        model = self.models.get(request.checkpoint, progress=lambda msg: job.report(text=msg))
        job.progress.preview_rgb = model.architecture.adapter.latent.preview_rgb
        plan = self._plan(request, model)
        if self.vaes is not None:
            plan.vae = self.vaes.prepare(model, plan.options)
        context.model, context.plan = model, plan
        self.hooks.call("process", request=request, context=context)
        inputs = self._prepare_inputs(request) if request.mode == "img2img" else None
        size = inputs.size if inputs else (request.width, request.height)
        plan.controls = self._controls(request, plan, size, inputs)
        if self.identity is not None:  # PhotoMaker / InstantID, when the request asks for it
            self.identity.apply(request, plan, size, context)
        context.extra_params.update(plan.controls.params)
        context.warnings.extend(plan.controls.warnings)  # e.g. several faces in a FaceID unit's image
        hires = self._hires_plan(request, model, plan) if request.mode == "txt2img" and request.enable_hr else None
        per_batch = samplers.steps_to_run(request.steps, inputs is not None, request.denoising_strength)
        if hires is not None:
            per_batch += hires.plan_steps
        job.report(total=request.n_iter * per_batch)
        timings = {"load": time.perf_counter() - started, "lora": plan.prompts.lora_seconds}
        result = Result(model_name=model.info.model_name, demo_model=model.demo)
        result.warnings += plan.prompts.warnings
        output = _Output(plan, hires, inputs.size if inputs else (request.width, request.height), output_dir, context)
        seeds = image_seeds(plan.seed, request.n_iter * request.batch_size)
        sample_time = decode_time = 0.0
        for batch_index in range(request.n_iter):
            job.progress.job_no, job.progress.job_count = batch_index, request.n_iter
            first = batch_index * request.batch_size
            batch_seeds = seeds[first:first + request.batch_size]
            step_offset = batch_index * per_batch
            prepared = ([inputs.images[(first + i) % len(inputs.images)] for i in range(len(batch_seeds))]
                        if inputs else [])
            self.hooks.call("process_batch", request=request, batch_index=batch_index, seeds=batch_seeds,
                            context=context)
            try:
                t0 = time.perf_counter()
                with plan.controls.installed():  # IP-Adapter attention only while this batch samples
                    latents = self._sample_batch(request, plan, batch_seeds, prepared, inputs, job, step_offset,
                                                 context)
                    if hires is not None:
                        latents = self._hires_pass(request, hires, latents, batch_seeds, job,
                                                   step_offset + per_batch - hires.plan_steps)
                t1 = time.perf_counter()
                images = latents_io.decode(model, latents)
                images = soft_inpaint.finish_images(model, request, images, prepared, latents) if prepared else images
                decode_time += time.perf_counter() - t1
                sample_time += t1 - t0
            except Skipped:
                result.skipped_batches += 1
                job.report(step=step_offset + per_batch)
                continue
            except Interrupted:
                result.interrupted = True
                break
            for offset, image in enumerate(images):
                self._keep(result, request, output, image, batch_seeds[offset], batch_index, offset)
        timings.update(sample=sample_time, decode=decode_time, total=time.perf_counter() - started)
        result.timings = timings
        if model.demo:
            result.warnings.append("Demo model: its weights are random, so images are noise.")
        result.warnings += context.warnings
        self.hooks.call("postprocess", request=request, result=result, context=context)
        job.report(step=job.progress.total_steps if not result.interrupted else job.progress.step, text="done")
        return result

    # ---- steps --------------------------------------------------------------------------------

    def options(self, request: GenerationRequest) -> dict[str, Any]:
        """Settings for this request: the saved ones, with the request's override_settings on top."""
        values = self.settings.settings.as_dict()
        values.update({k: v for k, v in request.override_settings.items() if k in values})
        return values

    def _plan(self, request: GenerationRequest, model: LoadedModel) -> Plan:
        sampler, schedule = samplers.resolve(request.sampler_name, request.scheduler)
        options = self.options(request)
        prompts = plan_prompts(request, model, options, self.loras, self.embeddings, self.styles)
        subseed = resolve_seed(request.subseed) if request.subseed_strength > 0 else -1
        return Plan(model, sampler, schedule, resolve_seed(request.seed), prompts, subseed, options)

    def _controls(self, request: GenerationRequest, plan: Plan, size: tuple[int, int],
                  inputs: "Img2ImgInputs | None", ip_adapter: Any = None):
        """The request's ControlNet / IP-Adapter units, ready for the denoiser (with their infotext)."""
        from ..features.controlnet.apply import Controls, build_controls
        from ..features.controlnet.units import parse_units

        units, _ = parse_units(request.alwayson_scripts)
        if not any(u.enabled for u in units):
            return Controls()
        if self.controlnets is None or self.ip_adapters is None:
            raise ValidationError([FieldError("alwayson_scripts.controlnet", "ControlNet is not available")])
        fallback = inputs.images[0].target if inputs else None
        return build_controls(units, plan.model, self.controlnets, self.ip_adapters, self.annotators_dir, size[0],
                              size[1], fallback, ip_adapter)

    def _rng(self, request: GenerationRequest, plan: Plan, seeds: list[int], width: int, height: int) -> ImageRNG:
        """Noise streams for a batch: variation seeds, resize-from, RNG source and ENSD applied."""
        factor = plan.model.vae_scale_factor
        resize_from = None
        if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
            resize_from = (request.seed_resize_from_h // factor, request.seed_resize_from_w // factor)
        subseeds = [(plan.subseed + (s - plan.seed)) % (MAX_SEED + 1) for s in seeds] if plan.subseed >= 0 else None
        ensd = plan.options["eta_noise_seed_delta"] if plan.sampler.stochastic else 0
        channels = plan.model.architecture.adapter.latent.channels
        return ImageRNG((channels, height // factor, width // factor), seeds, plan.model.device.device,
                        subseeds=subseeds, subseed_strength=request.subseed_strength, resize_from=resize_from,
                        source=plan.options["randn_source"], ensd=ensd)

    def sampler_options(self, request: GenerationRequest, plan: Plan) -> k_samplers.SamplerOptions:
        o = plan.options
        eta_default = o["eta_ddim"] if plan.sampler.name == "DDIM" else o["eta_ancestral"]
        pick = lambda value, default: default if value is None else value  # noqa: E731
        s_tmax = pick(request.s_tmax, o["s_tmax"])
        return k_samplers.SamplerOptions(eta=pick(request.eta, eta_default), s_churn=pick(request.s_churn, o["s_churn"]),
                                         s_tmin=pick(request.s_tmin, o["s_tmin"]), s_tmax=s_tmax or float("inf"),
                                         s_noise=pick(request.s_noise, o["s_noise"]))

    def _time_ids(self, model: LoadedModel, w: int, h: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The family's per-image conditioning besides the text (SDXL: size and aesthetic ids)."""
        return model.architecture.adapter.extra_conditioning(w, h)

    def _prepare_inputs(self, request: GenerationRequest) -> "Img2ImgInputs":
        prepared, sizes = [], set()
        for image in request.init_images:
            item, size = prepare_image(request, image, request.mask)
            prepared.append(item)
            sizes.add(size)
        if len(sizes) > 1:
            raise ValidationError([FieldError("init_images", "outpainting images of different sizes in one request")])
        return Img2ImgInputs(prepared, sizes.pop())

    def _sample_batch(self, request: GenerationRequest, plan: Plan, seeds: list[int], prepared: list[PreparedImage],
                      inputs: "Img2ImgInputs | None", job: Job, step_offset: int,
                      context: GenerationContext | None = None) -> torch.Tensor:
        model = plan.model
        width, height = inputs.size if inputs else (request.width, request.height)
        rng = self._rng(request, plan, seeds, width, height)
        first_noise = rng.first()
        for replacement in self.hooks.call("extra_noise", noise=first_noise, request=request, context=context):
            if isinstance(replacement, torch.Tensor) and replacement.shape == first_noise.shape:
                first_noise = replacement
        denoiser = plan.prompts.make_denoiser(len(seeds), *self._time_ids(model, width, height))
        denoiser.set_hooks(self.hooks)
        denoiser.set_controls(plan.controls)
        if not prepared:
            self._inpainting_model_conditioning(model, denoiser, None, None, len(seeds), width, height)
            return self._run(request, plan, denoiser, rng, first_noise, request.steps, job, step_offset)
        init = self._encode_targets(model, prepared, (width, height))
        masks = [p.mask for p in prepared]
        if all(m is not None for m in masks):
            latent_size = (init.shape[-1], init.shape[-2])
            change = torch.stack([torch.from_numpy(latent_mask(m, latent_size)) for m in masks])[:, None]
            change = change.to(init.device, init.dtype)
            if request.inpainting_fill == LATENT_NOISE:
                init = init * (1 - change) + first_noise * change
            elif request.inpainting_fill == LATENT_NOTHING:
                init = init * (1 - change)
            denoiser = soft_inpaint.wrap_denoiser(request, denoiser, init, change, masks)  # binary unless soft
        if request.denoising_strength == 0:  # nothing to change: the encoded image as it is
            return init
        self._inpainting_model_conditioning(model, denoiser, prepared, masks, len(seeds), width, height)
        return self._run(request, plan, denoiser, rng, first_noise, request.steps, job, step_offset, init=init,
                         strength=request.denoising_strength)

    def _encode_targets(self, model: LoadedModel, prepared: list[PreparedImage], size: tuple[int, int]) -> torch.Tensor:
        latents = latents_io.encode(model, [p.target for p in prepared])
        if any(p.resize_latents for p in prepared):  # resize mode 3: upscale in latent space
            latents = upscale_latents(latents, size, "Latent")
        return latents.to(model.device.device)

    def _inpainting_model_conditioning(self, model: LoadedModel, denoiser, prepared, masks, batch: int, width: int,
                                       height: int) -> None:
        """9-channel UNets also see the mask and the masked image's latents."""
        if model.unet.config.in_channels != 9:
            return
        if prepared and all(m is not None for m in masks):
            mask_pixels = torch.stack([torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0) for m in masks])[:, None]
            mask_pixels = (mask_pixels > 0.5).float()
            masked = [latents_io.to_image(latents_io.to_pixels(p.target)[0] * (1 - mask_pixels[i]))
                      for i, p in enumerate(prepared)]
        else:  # no mask: the whole picture is "to be painted", as AUTOMATIC1111 does for txt2img
            mask_pixels = torch.ones(batch, 1, height, width)
            masked = [Image.new("RGB", (width, height), (128, 128, 128))] * batch
        masked_latents = latents_io.encode(model, masked)
        factor = model.vae_scale_factor
        small_mask = torch.nn.functional.interpolate(mask_pixels, size=(height // factor, width // factor))
        denoiser.set_image_conditioning(torch.cat([small_mask.to(masked_latents), masked_latents], dim=1))

    def _run(self, request: GenerationRequest, plan: Plan, denoiser, rng: ImageRNG, first_noise: torch.Tensor,
             steps: int, job: Job, step_offset: int, init: torch.Tensor | None = None, strength: float = 1.0,
             exact_steps: bool = False) -> torch.Tensor:
        schedule = denoiser.schedule
        schedule.sigma_min_override = plan.options["sigma_min"]
        schedule.sigma_max_override = plan.options["sigma_max"]
        schedule.rho_override = plan.options["rho"]
        denoiser.set_guidance(request.cfg_rescale, request.cfg_interval_start, request.cfg_interval_end,
                              samplers.steps_to_run(steps, init is not None, strength, exact_steps))
        previews = self.settings.get("live_previews_enable")
        every = max(1, int(plan.options.get("show_progress_every_n_steps") or 1))  # live preview period, in steps

        step_hooks = self.hooks.has("step_end")

        def on_step(i: int, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor | None:
            denoiser.step = i + 1  # prompt editing and LoRA switching follow the sampler's step
            job.report(step=step_offset + i + 1, preview=denoised if previews and (i + 1) % every == 0 else None)
            job.check()
            if step_hooks:
                step = StepContext(index=i, timestep=None, latents=x, denoised=denoised)
                self.hooks.call("step_end", step=step)
                if step.latents is not x:
                    return step.latents
            return None

        job.check()
        return samplers.run(plan.sampler, plan.schedule, denoiser, rng, first_noise, steps,
                            plan.model.scheduler_config, on_step, rng.generators, init=init, strength=strength,
                            exact_steps=exact_steps, options=self.sampler_options(request, plan))

    # ---- hires fix ------------------------------------------------------------------------------

    def _hires_plan(self, request: GenerationRequest, model: LoadedModel, plan: Plan) -> "HiresPlan":
        size = target_size(request.width, request.height, request.hr_scale, request.hr_resize_x, request.hr_resize_y)
        steps = request.hr_second_pass_steps or request.steps
        second = replace(request, steps=steps, width=size[0], height=size[1],
                         prompt=request.hr_prompt or request.prompt,
                         negative_prompt=request.hr_negative_prompt or request.negative_prompt,
                         sampler_name=request.hr_sampler_name or request.sampler_name,
                         scheduler=request.hr_scheduler or request.scheduler)
        sampler, schedule = samplers.resolve(second.sampler_name, second.scheduler)
        if second.prompt == request.prompt and second.negative_prompt == request.negative_prompt and steps == request.steps:
            prompts = plan.prompts  # same texts and steps: the same conditioning serves
        else:
            prompts = plan_prompts(second, model, self.options(second), self.loras, self.embeddings, self.styles)
        plan_steps = samplers.steps_to_run(steps, True, request.denoising_strength, exact_steps=True)
        second_plan = Plan(model, sampler, schedule, plan.seed, prompts, plan.subseed, plan.options)
        # control maps again at the new size; the IP-Adapter (size-free) is the same one
        second_plan.controls = self._controls(second, second_plan, size, None, plan.controls.ip_adapter) \
            if plan.controls else plan.controls
        return HiresPlan(second, second_plan, size, plan_steps)

    def _hires_pass(self, request: GenerationRequest, hires: "HiresPlan", latents: torch.Tensor, seeds: list[int],
                    job: Job, step_offset: int) -> torch.Tensor:
        model = hires.plan.model
        width, height = hires.size
        job.report(text="hires upscale")
        if request.hr_upscaler in LATENT_MODES:
            init = upscale_latents(latents, hires.size, request.hr_upscaler)
        else:
            images = [upscale_image(image, request.hr_upscaler, hires.size, self.image_upscalers, self.upscalers,
                                    job.check) for image in latents_io.decode(model, latents)]
            init = latents_io.encode(model, images).to(latents.device)
        job.check()
        rng = self._rng(request, hires.plan, seeds, width, height)
        first_noise = rng.first()
        denoiser = hires.plan.prompts.make_denoiser(len(seeds), *self._time_ids(model, width, height))
        denoiser.set_hooks(self.hooks)
        denoiser.set_controls(hires.plan.controls)
        self._inpainting_model_conditioning(model, denoiser, None, None, len(seeds), width, height)
        return self._run(request, hires.plan, denoiser, rng, first_noise, hires.request.steps, job, step_offset, init=init,
                         strength=request.denoising_strength, exact_steps=True)

    def _keep(self, result: Result, request: GenerationRequest, output: "_Output", image: Image.Image, seed: int,
              batch_index: int, offset: int) -> None:
        plan = output.plan
        params = self.infotext_params(request, plan, seed, output.hires, output.size)
        params.update(output.context.extra_params)
        for replacement in self.hooks.call("before_image_saved", image=image, params=params, request=request,
                                           context=output.context):
            if isinstance(replacement, Image.Image):
                image = replacement
        text = format_infotext(plan.prompts.prompt, plan.prompts.negative_prompt, params)
        result.images.append(image)
        result.infotexts.append(text)
        result.seeds.append(seed)
        if request.save_images and self.settings.get("samples_save"):
            path = self._save(request, plan, image, seed, text, batch_index, offset, output.output_dir)
            result.paths.append(str(path))
            self.hooks.call("image_saved", path=str(path), image=image, infotext=text, request=request)

    # ---- output ---------------------------------------------------------------------------------

    def infotext(self, request: GenerationRequest, plan: Plan, seed: int, hires: "HiresPlan | None" = None,
                 size: tuple[int, int] | None = None) -> str:
        params = self.infotext_params(request, plan, seed, hires, size)
        return format_infotext(plan.prompts.prompt, plan.prompts.negative_prompt, params)

    def infotext_params(self, request: GenerationRequest, plan: Plan, seed: int, hires: "HiresPlan | None" = None,
                        size: tuple[int, int] | None = None) -> dict[str, Any]:
        model, prompts = plan.model, plan.prompts
        width, height = size or (request.width, request.height)
        params: dict[str, Any] = {
            "Steps": request.steps,
            "Sampler": plan.sampler.name,
            "Schedule type": plan.schedule if plan.sampler.uses_schedule else None,
            "CFG scale": request.cfg_scale,
            "Seed": seed,
            "Size": f"{width}x{height}",
            "Model hash": model.short_hash or None,
            "Model": model.info.model_name,
            "VAE hash": plan.vae.short_hash if plan.vae is not None else None,
            "VAE": plan.vae.name if plan.vae is not None else None,
            "Clip skip": prompts.clip_skip if prompts.clip_skip > 1 else None,
            "Version": f"Easel {__version__}",
        }
        params.update(self._sampling_params(request, plan, seed))
        if request.mode == "img2img":
            params.update(img2img_params(request))
        if hires is not None:
            params.update(hires_params(request, hires))
        params.update(self._network_params(prompts))
        return params

    def save_grid(self, request: GenerationRequest, image: Image.Image, text: str, seed: int,
                  output_dir: Path | None = None) -> Path:
        """Grids (X/Y/Z plot, prompt matrix) go to outputs/<mode>-grids/ with their infotext."""
        folder = output_dir or self.paths.outputs_dir / f"{request.mode}-grids"
        if output_dir is None and self.settings.get("save_to_dirs"):
            folder = folder / format_pattern(self.settings.get("directories_filename_pattern") or "[date]",
                                             NamingContext(seed=0))
        return save_image(image, folder, "grid-[seed]", NamingContext(seed=seed, prompt=request.prompt), "png", text)

    def _sampling_params(self, request: GenerationRequest, plan: Plan, seed: int) -> dict[str, Any]:
        """Seed variations, RNG, sampler parameters and guidance, as AUTOMATIC1111 names them."""
        o, params = plan.options, {}
        if plan.subseed >= 0 and request.subseed_strength > 0:
            params["Variation seed"] = (plan.subseed + (seed - plan.seed)) % (MAX_SEED + 1)
            params["Variation seed strength"] = request.subseed_strength
        if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
            params["Seed resize from"] = f"{request.seed_resize_from_w}x{request.seed_resize_from_h}"
        params["RNG"] = o["randn_source"]  # AUTOMATIC1111 omits it for its default, GPU; ours is CPU
        chosen = self.sampler_options(request, plan)
        if plan.sampler.stochastic and o["eta_noise_seed_delta"]:
            params["ENSD"] = o["eta_noise_seed_delta"]
        if plan.sampler.name == "DDIM" and chosen.eta != 0:
            params["Eta DDIM"] = chosen.eta
        elif plan.sampler.stochastic and plan.sampler.uses_schedule and chosen.eta != 1:
            params["Eta"] = chosen.eta
        for key, value, default in (("Sigma churn", chosen.s_churn, 0.0), ("Sigma tmin", chosen.s_tmin, 0.0),
                                    ("Sigma tmax", chosen.s_tmax, float("inf")), ("Sigma noise", chosen.s_noise, 1.0),
                                    ("Sigma min", o["sigma_min"], 0.0), ("Sigma max", o["sigma_max"], 0.0),
                                    ("Schedule rho", o["rho"], 0.0)):
            if value != default:
                params[key] = value
        if request.cfg_rescale:
            params["CFG Rescale phi"] = request.cfg_rescale
        if request.cfg_interval_start > 0 or request.cfg_interval_end < 1:
            params["CFG interval"] = f"{request.cfg_interval_start}-{request.cfg_interval_end}"
        return params

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
              batch_index: int, offset: int, output_dir: Path | None = None) -> Path:
        s = self.settings
        ctx = NamingContext(seed=seed, prompt=plan.prompts.prompt, negative_prompt=plan.prompts.negative_prompt,
                            steps=request.steps, cfg_scale=request.cfg_scale, sampler=plan.sampler.name,
                            scheduler=plan.schedule, width=request.width, height=request.height,
                            model_name=plan.model.info.model_name, model_hash=plan.model.short_hash,
                            batch_number=offset, generation_number=batch_index * request.batch_size + offset)
        return save_image(image, output_dir or self.output_folder(request.mode), s.get("samples_filename_pattern"), ctx,
                          s.get("samples_format"), text if s.get("enable_pnginfo") else None, s.get("jpeg_quality"))


@dataclass
class _Output:
    """What every kept image of one request shares."""

    plan: Plan
    hires: "HiresPlan | None"
    size: tuple[int, int]
    output_dir: Path | None
    context: GenerationContext


@dataclass
class Img2ImgInputs:
    images: list[PreparedImage]
    size: tuple[int, int]


@dataclass
class HiresPlan:
    request: GenerationRequest   # the second pass: target size, steps, prompts, sampler
    plan: Plan
    size: tuple[int, int]
    plan_steps: int


def img2img_params(request: GenerationRequest) -> dict[str, Any]:
    """The img2img keys AUTOMATIC1111 writes (plus outpainting's)."""
    params: dict[str, Any] = {"Denoising strength": request.denoising_strength}
    if request.mask is not None or any((request.outpaint_left, request.outpaint_right, request.outpaint_up,
                                        request.outpaint_down)):
        params["Mask blur"] = request.mask_blur
        params["Masked content"] = MASKED_CONTENT[request.inpainting_fill]
    if request.mask is not None:
        if request.inpaint_full_res:
            params["Inpaint area"] = "Only masked"
            params["Masked area padding"] = request.inpaint_full_res_padding
        if request.inpainting_mask_invert:
            params["Mask mode"] = "Inpaint not masked"
    for side in ("left", "right", "up", "down"):
        amount = getattr(request, f"outpaint_{side}")
        if amount:
            params[f"Outpaint {side}"] = amount
    if request.resize_mode:
        params["Resize mode"] = RESIZE_MODES[request.resize_mode]
    params.update(soft_inpaint.infotext_params(request))
    return params


def hires_params(request: GenerationRequest, hires: HiresPlan) -> dict[str, Any]:
    params: dict[str, Any] = {"Denoising strength": request.denoising_strength}
    if request.hr_resize_x or request.hr_resize_y:
        params["Hires resize"] = f"{hires.size[0]}x{hires.size[1]}"
    else:
        params["Hires upscale"] = request.hr_scale
    if request.hr_second_pass_steps:
        params["Hires steps"] = request.hr_second_pass_steps
    params["Hires upscaler"] = request.hr_upscaler
    if request.hr_sampler_name and request.hr_sampler_name != request.sampler_name:
        params["Hires sampler"] = hires.plan.sampler.name
    if request.hr_scheduler and request.hr_scheduler != request.scheduler:
        params["Hires schedule type"] = hires.plan.schedule
    if request.hr_prompt and request.hr_prompt != request.prompt:
        params["Hires prompt"] = request.hr_prompt
    if request.hr_negative_prompt and request.hr_negative_prompt != request.negative_prompt:
        params["Hires negative prompt"] = request.hr_negative_prompt
    return params
