"""Run one GenerationRequest end to end: model, passes, features, sampling, decoding, saving.

`Engine.generate(request, job)` is what the job queue runs for the UI, the API and the CLI
alike. A request runs as passes (core/pipeline.py): the first, plus any a feature adds (hires
fix). The engine knows no feature by name: every one (img2img, inpainting, soft inpainting,
hires fix, ControlNet, identity, extra networks) contributes through the `Feature` protocol,
and every family-specific answer comes from the model's family adapter (webui/families). It
reports progress per step through the job, honours Interrupt (stop, keep finished images and, as
AUTOMATIC1111 does, the interrupted batch decoded from its last denoised estimate) and
Skip (drop the current batch, go on), and writes each image with its infotext as soon as it is
decoded, so nothing finished is lost.
"""
from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch
from PIL import Image

from .. import __version__
from ..model_manager import module_choice
from ..model_manager.fast import fast_run
from ..model_manager.tiny_vae import load_tiny_vae, tiny_vae_folder
from ..paths import Paths
from ..settings import SettingsStore
from . import latents as latents_io
from .out_of_memory import job_memory_guard
from .preview import ApproxPreview, FullVaePreview, TinyVaePreview, render as render_preview
from . import k_samplers, samplers, unipc
from .hooks import NO_HOOKS, GenerationContext, Hooks, StepContext
from .images import NamingContext, format_pattern, save_image
from .infotext import format_infotext
from .jobs import Interrupted, Job, Skipped
from .pipeline import Batch, Feature, ImagePrompt, Pass, PreparedRequest, Run, Sampling
from .prompt_plan import PromptNetworks, PromptPlan, plan_prompts
from .request import FieldError, GenerationRequest, Result, ValidationError
from .seeds import MAX_SEED, ImageRNG, image_seeds, resolve_seed

if TYPE_CHECKING:
    from ..model_manager.loader import LoadedModel
    from ..model_manager.manager import ModelManager
    from .styles import StyleStore

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """Everything resolved before a pass samples (seed, sampler, schedule, conditioning)."""

    model: LoadedModel
    sampler: samplers.SamplerInfo
    schedule: str
    seed: int
    prompts: PromptPlan
    subseed: int = -1
    options: dict[str, Any] = field(default_factory=dict)
    controls: Any = None  # what features add to every denoiser call at this size (ControlNet, IP-Adapter)
    vae: Any = None  # the separate VAE in use (model_manager/vae.VaeChoice), None: the baked-in one


class Engine:
    """Runs requests. Everything it uses is handed to it here, by `app.build()`."""

    def __init__(self, models: ModelManager, settings: SettingsStore, paths: Paths, styles: StyleStore,
                 networks: PromptNetworks, features: Iterable[Feature] = (), hooks: Hooks = NO_HOOKS,
                 scripts: dict[str, Any] | None = None, vaes: Any = None, output_dir: Path | None = None):
        self.models = models
        self.settings = settings
        self.paths = paths
        self.styles = styles
        self.networks = networks   # <lora:...> and embeddings in prompts (features/lora.py)
        self.features: list[Feature] = list(features)
        self.hooks = hooks         # extension hooks (webui/extensions)
        self.scripts: dict[str, Any] = dict(scripts or {})
        self.vaes = vaes           # separate VAE files and per-checkpoint preferences (model_manager/vae)
        self.output_dir = output_dir  # the command line's --out: save straight into this folder
        self.catalog = samplers.Catalog()
        self.image_listeners: list[Any] = []  # (path, image, infotext) after each saved image (the gallery's indexer)

    # ---- public -----------------------------------------------------------------------------

    def feature(self, name: str) -> Feature:
        """The registered feature of that name (e.g. "hires" for its upscaler list)."""
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"no feature named {name!r}")

    def validate(self, request: GenerationRequest) -> PreparedRequest:
        return self.prepare(request)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Validate every field (ValidationError names each bad one) and parse each feature's arguments once."""
        request.validate(self.catalog)
        args: dict[str, Any] = {}
        errors: list[FieldError] = []
        for feature in self.features:
            args[feature.name], problems = feature.parse(request)
            errors += problems
        if errors:
            raise ValidationError(errors)
        if request.script_name and request.script_name not in self.scripts:
            choices = ", ".join(sorted(self.scripts)) or "none installed"
            raise ValidationError([FieldError("script_name", f"unknown script {request.script_name!r} ({choices})")])
        self._check_script_args(request)
        overrides = request.override_settings if isinstance(request.override_settings, dict) else {}
        if self.vaes is not None and "sd_vae" in overrides:
            try:
                self.vaes.check(overrides["sd_vae"])
            except LookupError as exc:
                raise ValidationError([FieldError("override_settings.sd_vae", str(exc).split(": ", 1)[-1])]) from exc
        if module_choice.SETTING in overrides:  # Forge's VAE / Text Encoder choice for this request
            try:
                self.models.module_choices.check(overrides[module_choice.SETTING])
            except (LookupError, ValueError) as exc:
                raise ValidationError([FieldError(f"override_settings.{module_choice.SETTING}",
                                                  str(exc).split(": ", 1)[-1])]) from exc
        return PreparedRequest(request, MappingProxyType(args))

    def _check_script_args(self, request: GenerationRequest) -> None:
        """A selected or always-on script's arguments, checked at submit so the UI and CLI fail before queueing."""
        checks = [(request.script_name, request.script_args, "script_args")] if request.script_name else []
        checks += [(name, entry.get("args") if isinstance(entry, dict) else entry, f"alwayson_scripts.{name}")
                   for name, entry in request.alwayson().items() if name in self.scripts]
        errors = []
        for name, values, field_name in checks:
            try:
                self.scripts[name].parse_args(values)
            except ValueError as exc:  # ScriptArgsError names the argument
                argument = getattr(exc, "name", "")
                message = getattr(exc, "message", str(exc))
                errors.append(FieldError(f"{field_name}.{argument}" if argument else field_name, message))
        if errors:
            raise ValidationError(errors)

    def txt2img(self, request: GenerationRequest, job: Job) -> Result:
        return self.generate(request, job)

    def img2img(self, request: GenerationRequest, job: Job) -> Result:
        return self.generate(request, job)

    def generate(self, request: GenerationRequest | PreparedRequest, job: Job, output_dir: Path | None = None) -> Result:
        """txt2img (with optional hires fix) or img2img/inpaint/outpaint, by request.mode.

        `request` may come prepared (Engine.prepare at submit time), so nothing is parsed twice.
        `output_dir` (folder batch, CLI) saves there instead of the mode's output folder. A
        request naming a script (`script_name`) is handed to that script, which may run any
        number of plain generations through `context.generate`.
        """
        plain = request.request if isinstance(request, PreparedRequest) else request
        options = self.options(plain)
        with latents_io.vae_tiling(options.get("vae_tiling", "Automatic"), options.get("vae_tile_encode", 0),
                                   options.get("vae_tile_decode", 0)), \
                job_memory_guard(plain.width, plain.height, plain.batch_size, self._memory_advice):
            if plain.script_name:
                return self._run_script(plain, job, output_dir)
            result = self._generate(request, job, output_dir)
        self._report_extension_errors(result)
        return result

    def _memory_advice(self) -> str:
        from ..model_manager.memory import memory_advice

        return memory_advice(self.models.current)

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

    # ---- one request ----------------------------------------------------------------------------

    def _generate(self, request: GenerationRequest | PreparedRequest, job: Job,
                  output_dir: Path | None = None, drawn: dict[str, Any] | None = None, companion: bool = False) -> Result:
        """`drawn`: this is one part of a request whose images a feature drew their own prompts for
        (`_generate_drawn`); its infotext keys. Extension hooks then see the whole request once, not each part.
        `companion`: a request run inside a job on another checkpoint, loaded beside the job's (the active one
        stays loaded and active, as for the refiner)."""
        prepared = request if isinstance(request, PreparedRequest) else None
        request = prepared.request if prepared is not None else request
        context = GenerationContext(request, job, extra_params=dict(drawn or {}))
        if drawn is None:
            request = self.hooks.call_replacing("before_process", request=request, context=context)
        context.request = request
        if prepared is None or prepared.request is not request:  # new, or replaced by an extension
            prepared = self.prepare(request)
        images = self._image_prompts(prepared) if drawn is None else None
        if images is not None:
            return self._generate_drawn(prepared.request, *images, job, output_dir)
        started = time.perf_counter()
        job.report(step=0, text="Loading the model…")

        def loading(stage: str) -> None:  # the page says so, as it does for the warm-up's load ahead of a job
            job.report(text=f"Loading the model ({stage})…")

        if companion:
            model = self.models.get_companion(request.checkpoint, progress=loading)
        else:
            model = self.models.get(request.checkpoint, progress=loading,
                                    modules=request.override_settings.get(module_choice.SETTING))
        plan = self.plan(request, model)
        job.progress.previewer = self._previewer(model, plan.options)
        if self.vaes is not None:
            plan.vae = self.vaes.prepare(model, plan.options)
        context.model, context.plan = model, plan
        self.hooks.call("process", request=request, context=context)
        run = Run(request, model, job, context, args=prepared.args,
                  plan_for=lambda sub, other=None: self.plan(sub, other or model, plan),
                  generate=lambda sub: self._generate_inside(sub, job, model))
        run.passes.append(Pass("first", request, plan, (request.width, request.height), request.steps))
        for feature in self.features:
            feature.begin(run)
        for p in run.passes:
            for feature in self.features:
                feature.begin_pass(run, p)
        per_batch = sum(p.steps_to_run() for p in run.passes)
        job.report(total=request.n_iter * per_batch)
        timings = {"load": time.perf_counter() - started, "lora": plan.prompts.lora_seconds}
        result = Result(model_name=model.info.model_name, demo_model=model.demo)
        result.warnings += plan.prompts.warnings
        seeds = image_seeds(plan.seed, request.n_iter * request.batch_size)
        sample_time = decode_time = 0.0
        for batch_index in range(request.n_iter):
            if drawn is None:  # a drawn part: _generate_drawn counts the parts
                job.progress.job_no, job.progress.job_count = batch_index, request.n_iter
            first = batch_index * request.batch_size
            batch = Batch(batch_index, seeds[first:first + request.batch_size], first)
            step_offset = batch_index * per_batch
            for feature in self.features:
                feature.prepare_batch(run, batch)
            self.hooks.call("process_batch", request=request, batch_index=batch_index, seeds=batch.seeds,
                            context=context)
            try:
                t0 = time.perf_counter()
                latents = None
                for p in run.passes:
                    latents = self._sample_pass(run, p, batch, latents, step_offset)
                    step_offset += p.steps_to_run()
                t1 = time.perf_counter()
                images = latents_io.decode(run.passes[-1].plan.model, latents)  # a pass may run on another model
                for feature in self.features:
                    images = feature.finish_images(run, batch, images, latents)
                decode_time += time.perf_counter() - t1
                sample_time += t1 - t0
            except Skipped:
                result.skipped_batches += 1
                job.report(step=batch_index * per_batch + per_batch)
                continue
            except Interrupted as stop:
                result.interrupted = True
                partial = getattr(stop, "latents", None)  # set by _run: how far this batch had come
                if partial is not None:  # as AUTOMATIC1111 does, keep the partly denoised images
                    for offset, image in enumerate(latents_io.decode(getattr(stop, "model", model), partial)):
                        self._keep(result, run, image, batch.seeds[offset], batch_index, offset, output_dir)
                break
            for offset, image in enumerate(images):
                self._keep(result, run, image, batch.seeds[offset], batch_index, offset, output_dir)
        timings.update(sample=sample_time, decode=decode_time, total=time.perf_counter() - started)
        result.timings = timings
        if model.demo:
            result.warnings.append("Demo model: its weights are random, so images are noise.")
        result.warnings += model.architecture.adapter.run_warnings(model)  # e.g. SD3 without its T5 encoder
        result.warnings += context.warnings
        if drawn is None:
            result = self.hooks.call_replacing("postprocess", request=request, result=result, context=context)
        job.report(step=job.progress.total_steps if not result.interrupted else job.progress.step, text="done")
        return result

    def _image_prompts(self, prepared: PreparedRequest) -> tuple[list[ImagePrompt], int] | None:
        """(each image's prompts and seed, the request's seed) when a feature draws them (Feature.image_prompts)."""
        request = prepared.request
        seed = resolve_seed(request.seed)
        for feature in self.features:
            images = feature.image_prompts(prepared, seed, request.n_iter * request.batch_size)
            if images:
                return images, seed
        return None

    def _generate_drawn(self, request: GenerationRequest, images: list[ImagePrompt], seed: int, job: Job,
                        output_dir: Path | None) -> Result:
        """Each run of alike images (same prompts, consecutive seeds, within one of the request's batches)
        as a plain request of its own, so every feature, pass and infotext sees ordinary prompts."""
        subseed = resolve_seed(request.subseed) if request.subseed_strength > 0 else request.subseed
        total = Result()
        groups = alike_runs(images, request.batch_size)
        for index, group in enumerate(groups):
            job.progress.job_no, job.progress.job_count = index, len(groups)
            first = group[0]
            scripts = request.alwayson_scripts if first.alwayson_scripts is None else dict(first.alwayson_scripts)
            part = replace(request, prompt=first.prompt, negative_prompt=first.negative_prompt, seed=first.seed,
                           batch_size=len(group), n_iter=1, alwayson_scripts=scripts,
                           subseed=subseed if request.subseed_strength <= 0
                           else (subseed + first.seed - seed) % (MAX_SEED + 1))
            result = self._generate(part, job, output_dir, drawn=dict(first.params))
            total.images += list(result.images)
            total.infotexts += result.infotexts
            total.seeds += result.seeds
            total.paths += result.paths
            total.warnings += [w for w in result.warnings if w not in total.warnings]
            total.skipped_batches += result.skipped_batches
            total.model_name, total.demo_model = result.model_name, result.demo_model
            for key, value in result.timings.items():
                total.timings[key] = total.timings.get(key, 0.0) + value
            if result.interrupted:
                total.interrupted = True
                break
        return self.hooks.call_replacing("postprocess", request=request, result=total,
                                         context=GenerationContext(request, job))

    def _generate_inside(self, request: GenerationRequest, job: Job, model: LoadedModel | None = None) -> Result:
        """A further request run by a feature inside `job` (Run.generate); the job's progress is put back after.
        A request naming another checkpoint than the job's `model` runs on it as a companion."""
        progress = job.progress
        kept = (progress.step, progress.total_steps, progress.job_no, progress.job_count, progress.previewer)
        companion = bool(request.checkpoint) and model is not None and \
            self.models.resolve(request.checkpoint).name != model.info.name
        try:
            return self._generate(replace(request, save_images=False), job, companion=companion)
        finally:
            progress.step, progress.total_steps, progress.job_no, progress.job_count, progress.previewer = kept

    def _previewer(self, model: LoadedModel, options: dict[str, Any]) -> Any:
        """Live previews in the family's latent space (AUTOMATIC1111's "Live preview method"): "Full" decodes
        with the checkpoint's VAE; "TAESD" with the family's tiny autoencoder when its folder is there; else
        (and as the fallback, logged once) the cheap colour matrix."""
        latent = model.architecture.adapter.latent
        method = options.get("live_preview_method")
        if method == "Full" and options.get("live_previews_enable", True):
            return FullVaePreview(model)
        if method == "TAESD" and options.get("live_previews_enable", True):
            folder = tiny_vae_folder(self.paths.model_dir("vae_approx"), latent.tiny_vae)
            decoder = folder and load_tiny_vae(folder, self.models.store, model.device.device, model.device.vae_dtype)
            if decoder is not None:
                return TinyVaePreview(decoder)
        return ApproxPreview(latent.preview_rgb)

    # ---- planning -------------------------------------------------------------------------------

    def options(self, request: GenerationRequest) -> dict[str, Any]:
        """Settings for this request: the saved ones, with the request's override_settings on top."""
        values = self.settings.settings.as_dict()
        values.update({k: v for k, v in request.override_settings.items() if k in values})
        return values

    def plan_prompts(self, request: GenerationRequest, model: LoadedModel, options: dict[str, Any]) -> PromptPlan:
        return plan_prompts(request, model, options, self.networks, self.styles)

    def plan(self, request: GenerationRequest, model: LoadedModel, first: Plan | None = None) -> Plan:
        """A pass's plan. Further passes (`first` given) keep the first pass's seeds and settings."""
        sampler, schedule = samplers.resolve(request.sampler_name, request.scheduler)
        adapter = model.architecture.adapter
        if adapter.automatic_schedule and (request.scheduler or samplers.AUTOMATIC).strip().lower() == "automatic" \
                and samplers.split_legacy_name(request.sampler_name)[1] is None:
            schedule = adapter.automatic_schedule  # the family's own (flow models: their pipeline's shift)
        if (not sampler.uses_schedule or sampler.ddpm_only) and not adapter.ddpm_samplers:
            raise ValidationError([FieldError("sampler_name", f"{sampler.name} runs a DDPM scheduler, which "
                                              f"{adapter.label} models cannot use; choose e.g. Euler")])
        if first is not None:
            prompts = self.plan_prompts(request, model, self.options(request))
            return Plan(model, sampler, schedule, first.seed, prompts, first.subseed, first.options)
        options = self.options(request)
        prompts = self.plan_prompts(request, model, options)
        subseed = resolve_seed(request.subseed) if request.subseed_strength > 0 else -1
        return Plan(model, sampler, schedule, resolve_seed(request.seed), prompts, subseed, options)

    def _rng(self, request: GenerationRequest, plan: Plan, seeds: list[int], width: int, height: int) -> ImageRNG:
        """Noise streams for a batch: variation seeds, resize-from, RNG source and ENSD applied."""
        factor = plan.model.vae_scale_factor
        resize_from = None
        if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
            resize_from = (request.seed_resize_from_h // factor, request.seed_resize_from_w // factor)
        subseeds = [(plan.subseed + (s - plan.seed)) % (MAX_SEED + 1) for s in seeds] if plan.subseed >= 0 else None
        # AUTOMATIC1111 reseeds every image's stream with seed + ENSD after the first noise, whatever the sampler
        # (Euler's churn noise takes it too); the infotext names ENSD only where it applies
        ensd = plan.options["eta_noise_seed_delta"]
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
                                         s_noise=pick(request.s_noise, o["s_noise"]),
                                         sde_noise=o.get("sde_noise") or samplers.SDE_NOISE_BROWNIAN,
                                         unipc_variant=o["uni_pc_variant"], unipc_skip_type=o["uni_pc_skip_type"],
                                         unipc_order=int(o["uni_pc_order"]),
                                         unipc_lower_order_final=bool(o["uni_pc_lower_order_final"]))

    # ---- sampling -------------------------------------------------------------------------------

    def _sample_pass(self, run: Run, p: Pass, batch: Batch, previous: torch.Tensor | None,
                     step_offset: int) -> torch.Tensor:
        """One batch through one pass: noise, denoiser, the pass's init (if any), then the sampler."""
        model, (width, height) = p.plan.model, p.size
        rng = self._rng(p.request, p.plan, batch.seeds, width, height)
        first_noise = rng.first()
        if p is run.first:
            for replacement in self.hooks.call("extra_noise", noise=first_noise, request=run.request,
                                               context=run.context):
                if isinstance(replacement, torch.Tensor) and replacement.shape == first_noise.shape:
                    first_noise = replacement
        extra = model.architecture.adapter.extra_conditioning(width, height, p.request.distilled_cfg_scale)
        denoiser = p.plan.prompts.denoiser(len(batch.seeds), *extra)
        denoiser.set_hooks(self.hooks)
        denoiser.set_controls(p.plan.controls)
        sampling = Sampling(batch, rng, first_noise, denoiser, previous)
        if p.init is not None:
            p.init(run, p, sampling)
            if sampling.result is not None:
                return sampling.result
        self._inpainting_model_conditioning(model, sampling, width, height)
        with ExitStack() as scope:  # what features install on the shared model, only while this pass samples
            for feature in self.features:
                scope.enter_context(feature.installed(run, p))
            scope.enter_context(p.plan.prompts.patches_applied())
            # attention kernel; in fast mode, fused weights refreshed after the patches and torch.compile
            scope.enter_context(fast_run(model, (width, height), len(batch.seeds), p.plan.options, run.job,
                                         getattr(self.models, "attention_flag", "Automatic")))
            return self._run(p, sampling, run.job, step_offset)

    def _inpainting_model_conditioning(self, model: LoadedModel, sampling: Sampling, width: int, height: int) -> None:
        """9-channel (inpainting) models also see the mask and the masked image's latents."""
        if not model.architecture.inpainting:
            return
        batch = len(sampling.batch.seeds)
        if sampling.inpaint_inputs is not None:
            targets, masks = sampling.inpaint_inputs
            mask_pixels = torch.stack([torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0) for m in masks])[:, None]
            if sampling.inpaint_mask_rounded:
                mask_pixels = (mask_pixels > 0.5).float()
            masked = [latents_io.to_pixels(target) * (1 - mask_pixels[i]) for i, target in enumerate(targets)]
        else:  # no mask: the whole picture is "to be painted", as AUTOMATIC1111 does for txt2img
            mask_pixels = torch.ones(batch, 1, height, width)
            masked = [Image.new("RGB", (width, height), (128, 128, 128))] * batch
        masked_latents = latents_io.encode(model, masked)
        sampling.denoiser.set_image_conditioning(
            model.architecture.adapter.inpaint_conditioning(mask_pixels.to(masked_latents), masked_latents))

    def _run(self, p: Pass, sampling: Sampling, job: Job, step_offset: int) -> torch.Tensor:
        request, plan, denoiser, init = p.request, p.plan, sampling.denoiser, sampling.init
        strength = p.strength if init is not None and p.strength is not None else 1.0
        factor = plan.model.vae_scale_factor
        schedule = denoiser.schedule = denoiser.schedule.for_size(p.size[1] // factor, p.size[0] // factor)
        schedule.sigma_min_override = plan.options["sigma_min"]
        schedule.sigma_max_override = plan.options["sigma_max"]
        schedule.rho_override = plan.options["rho"]
        schedule.beta_dist = (float(plan.options["beta_dist_alpha"]), float(plan.options["beta_dist_beta"]))
        denoiser.set_guidance(request.cfg_rescale, request.cfg_interval_start, request.cfg_interval_end,
                              samplers.steps_to_run(p.steps, init is not None, strength, p.exact_steps))
        previews = self.settings.get("live_previews_enable")
        every = max(1, int(plan.options.get("show_progress_every_n_steps") or 1))  # live preview period, in steps
        refresh = max(0.1, float(plan.options.get("live_preview_refresh_period") or 500) / 1000)

        step_hooks = self.hooks.has("step_end")
        last: list[torch.Tensor] = []  # the newest denoised estimate, handed on if Interrupt stops the sampler

        def on_step(i: int, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor | None:
            denoiser.step = i + 1  # prompt editing and LoRA switching follow the sampler's step
            last[:] = [denoised]
            job.report(step=step_offset + i + 1, preview=denoised if previews and (i + 1) % every == 0 else None)
            if previews:
                try:  # decoded here, on the worker thread, so the pollers only send a picture
                    render_preview(job.progress, refresh)
                except Exception:  # a preview must never fail the generation
                    log.debug("live preview failed", exc_info=True)
            job.check()
            if step_hooks:
                step = StepContext(index=i, timestep=None, latents=x, denoised=denoised)
                self.hooks.call("step_end", step=step)
                if step.latents is not x:
                    return step.latents
            return None

        job.check()
        try:
            return samplers.run(plan.sampler, plan.schedule, denoiser, sampling.rng, sampling.first_noise, p.steps,
                                plan.model.scheduler_config, on_step, sampling.rng.generators, init=init,
                                strength=strength, exact_steps=p.exact_steps,
                                options=self.sampler_options(request, plan))
        except Interrupted as stop:
            stop.latents = last[0] if last else None  # type: ignore[attr-defined]  # read by _generate
            stop.model = plan.model  # type: ignore[attr-defined]  # whose VAE decodes them
            raise

    # ---- output ---------------------------------------------------------------------------------

    def _keep(self, result: Result, run: Run, image: Image.Image, seed: int, batch_index: int, offset: int,
              output_dir: Path | None) -> None:
        request, plan = run.request, run.first.plan
        params = self.infotext_params(request, plan, seed, run)
        params.update(run.context.extra_params)
        for replacement in self.hooks.call("before_image_saved", image=image, params=params, request=request,
                                           context=run.context):
            if isinstance(replacement, Image.Image):
                image = replacement
        text = format_infotext(plan.prompts.prompt, plan.prompts.negative_prompt, params)
        result.images.append(image)
        result.infotexts.append(text)
        result.seeds.append(seed)
        if request.save_images and self.settings.get("samples_save"):
            path = self._save(request, plan, image, seed, text, batch_index, offset, output_dir)
            result.paths.append(str(path))
            self.hooks.call("image_saved", path=str(path), image=image, infotext=text, request=request)
            for listener in self.image_listeners:
                listener(str(path), image, text)

    def infotext(self, request: GenerationRequest, plan: Plan, seed: int, run: Run | None = None) -> str:
        params = self.infotext_params(request, plan, seed, run)
        return format_infotext(plan.prompts.prompt, plan.prompts.negative_prompt, params)

    def infotext_params(self, request: GenerationRequest, plan: Plan, seed: int,
                        run: Run | None = None) -> dict[str, Any]:
        """The engine's keys, then each feature's (img2img, hires fix, extra networks ...) in order."""
        model, prompts = plan.model, plan.prompts
        width, height = run.first.size if run is not None else (request.width, request.height)
        params: dict[str, Any] = {
            "Steps": request.steps,
            "Sampler": plan.sampler.name,
            "Schedule type": plan.schedule if plan.sampler.uses_schedule else None,
            "CFG scale": request.cfg_scale,
            "Distilled CFG Scale": request.distilled_cfg_scale if model.architecture.adapter.distilled_guidance else None,
            "Seed": seed,
            "Size": f"{width}x{height}",
            "Model hash": model.short_hash or None,
            "Model": model.info.model_name,
            "VAE hash": plan.vae.short_hash if plan.vae is not None else None,
            "VAE": plan.vae.name if plan.vae is not None else None,
            **module_choice.infotext_params(dict.fromkeys([*model.module_files, *model.part_files.values()])),
            "Clip skip": prompts.clip_skip if prompts.clip_skip > 1 else None,
            "Weights": model.weight_storage if model.weight_storage != "Automatic" else None,
            "Memory mode": model.memory_mode if model.memory_mode != "Resident" else None,
            "Version": f"Easel {__version__}",
        }
        params.update(self._sampling_params(request, plan, seed))
        params.update(model.architecture.adapter.infotext_fields(model, plan.options))  # e.g. SD3 run without T5
        if run is None:
            run = Run(request, model, None, GenerationContext(request, None))  # type: ignore[arg-type]
            run.passes.append(Pass("first", request, plan, (width, height), request.steps))
        for feature in self.features:
            params.update(feature.infotext(run))
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
        chosen = replace(self.sampler_options(request, plan), **{k: v for k, v in plan.sampler.extra.items()
                                                                  if k in ("s_noise", "eta")})  # what it uses
        if plan.sampler.stochastic and o["eta_noise_seed_delta"]:
            params["ENSD"] = o["eta_noise_seed_delta"]
        if plan.sampler.brownian_noise and chosen.sde_noise == samplers.SDE_NOISE_PER_STEP:
            params["SDE noise"] = chosen.sde_noise  # absent: Brownian tree, as AUTOMATIC1111 makes it
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
        if plan.schedule == "Beta" and plan.sampler.uses_schedule:  # AUTOMATIC1111 writes both whenever Beta runs
            params["Beta schedule alpha"], params["Beta schedule beta"] = o["beta_dist_alpha"], o["beta_dist_beta"]
        if plan.sampler.name == "UniPC":  # AUTOMATIC1111 names the UniPC settings that differ from its defaults
            for key, setting, default in unipc.INFOTEXT:
                if o[setting] != default:
                    params[key] = o[setting]
        if request.cfg_rescale:
            params["CFG Rescale phi"] = request.cfg_rescale
        if request.cfg_interval_start > 0 or request.cfg_interval_end < 1:
            params["CFG interval"] = f"{request.cfg_interval_start}-{request.cfg_interval_end}"
        return params

    def output_folder(self, mode: str) -> Path:
        if self.output_dir is not None:
            return self.output_dir
        configured = self.settings.get(f"outdir_{mode}_samples") or ""
        base = Path(configured) if configured else self.paths.outputs_dir / f"{mode}-images"
        if self.settings.get("save_to_dirs"):
            sub = format_pattern(self.settings.get("directories_filename_pattern") or "[date]",
                                 NamingContext(seed=0))
            base = base / sub
        return base

    def _save(self, request: GenerationRequest, plan: Plan, image: Image.Image, seed: int, text: str,
              batch_index: int, offset: int, output_dir: Path | None = None) -> Path:
        ctx = NamingContext(seed=seed, prompt=plan.prompts.prompt, negative_prompt=plan.prompts.negative_prompt,
                            steps=request.steps, cfg_scale=request.cfg_scale, sampler=plan.sampler.name,
                            scheduler=plan.schedule, width=request.width, height=request.height,
                            model_name=plan.model.info.model_name, model_hash=plan.model.short_hash,
                            batch_number=offset, generation_number=batch_index * request.batch_size + offset)
        return self.save_named(request.mode, image, ctx, text, output_dir)

    def save_named(self, mode: str, image: Image.Image, ctx: NamingContext, text: str,
                   output_dir: Path | None = None) -> Path:
        """Write one image where and as the settings say. Apart from `_save` so that a worker process can
        record the call instead, and the head (webui/workers) write the worker's images with its own settings."""
        s = self.settings
        return save_image(image, output_dir or self.output_folder(mode), s.get("samples_filename_pattern"), ctx,
                          s.get("samples_format"), text if s.get("enable_pnginfo") else None, s.get("jpeg_quality"))


def alike_runs(images: list[ImagePrompt], batch_size: int) -> list[list[ImagePrompt]]:
    """Split each batch of `batch_size` images into runs that one plain request can make: the same prompts
    and infotext keys, each seed the one before plus one."""
    runs: list[list[ImagePrompt]] = []
    for start in range(0, len(images), batch_size):
        batch_runs: list[list[ImagePrompt]] = []
        for image in images[start:start + batch_size]:
            last = batch_runs[-1][-1] if batch_runs else None
            if last is not None and (image.prompt, image.negative_prompt, dict(image.params)) == \
                    (last.prompt, last.negative_prompt, dict(last.params)) and \
                    image.seed == (last.seed + 1) % (MAX_SEED + 1):
                batch_runs[-1].append(image)
            else:
                batch_runs.append([image])
        runs += batch_runs
    return runs
