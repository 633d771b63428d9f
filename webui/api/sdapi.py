"""/sdapi/v1: AUTOMATIC1111's API, so clients written for it work against Easel unchanged.

Generation goes through the same job queue as the UI: a request is validated (422 naming
the field), queued (429 with Retry-After when the queue is full), awaited, and answered
with AUTOMATIC1111's response shape. Endpoints for features Easel does not have yet answer
501 naming the missing capability, and lists of things Easel does not have are empty.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Body, Query, Request
from starlette.concurrency import run_in_threadpool

from ..core import samplers
from ..core.image_input import max_megapixels
from ..core.infotext import parse_infotext
from ..pnginfo import read_generation_info
from ..core.jobs import Job, JobState
from ..core.request import GenerationRequest
from ..features.hires import LATENT_MODES
from ..model_manager.library import read_safetensors_header
from ..model_manager.module_choice import SETTING as MODULES
from ..settings import A1111_KEYS, A1111_VALUES, SettingError, SettingsSaveError, redact
from . import extras as extras_api
from . import models as m
from . import scripts as script_api
from .context import ApiContext, a1111_progress
from .errors import ApiError, invalid, job_error, not_implemented
from .history import kept_body, kept_request
from .images import decode_image
from .translate import apply_infotext, check_option, find_checkpoint, image_response, to_generation_request

log = logging.getLogger(__name__)

# A1111's schedulers with their default rho and whether they need the model's own sigmas
SCHEDULER_EXTRAS = {"karras": (7.0, False), "polyexponential": (1.0, False), "sgm_uniform": (-1.0, True),
                    "normal": (-1.0, True), "ddim": (-1.0, True)}

NOT_YET = {
    "interrogate": ("interrogation (CLIP / DeepBooru captions)", ""),
    "training": ("training embeddings and hypernetworks", ""),
}


def missing(feature: str) -> ApiError:
    """501 for a whole endpoint whose feature Easel does not have yet."""
    capability, hint = NOT_YET[feature]
    return not_implemented(capability, hint=hint)


async def prepare(ctx: ApiContext, body: m.GenerationFields, kind: str) -> GenerationRequest:
    """infotext, translation, image decoding and validation, off the event loop (images can be large)."""
    def work() -> GenerationRequest:
        return to_generation_request(apply_infotext(body), ctx.easel, kind)

    return await run_in_threadpool(work)


async def submit_and_wait(ctx: ApiContext, request: Request, run: Callable[[Job], Any], kind: str,
                          description: str) -> Job:
    """Run a model job (load, unload) on the worker, so it never races a generation."""
    job = ctx.easel.queue.submit(run, kind=kind, owner=ctx.owner(request), description=description)
    if not await ctx.wait(job, request):
        raise ApiError(499, "client closed the request")
    if job.error is not None:
        raise job_error(job.error)
    return job


async def run_generation(ctx: ApiContext, request: Request, body: m.GenerationFields,
                         gen: GenerationRequest, kind: str) -> dict:
    """Queue a validated request, wait for it, and answer in AUTOMATIC1111's shape."""
    job = ctx.easel.submit(gen, owner=ctx.owner(request), job_id=_task_id(ctx, body.force_task_id))
    job.meta.update(type=kind, body=kept_body(body), request=kept_request(gen, body))
    if not await ctx.wait(job, request):
        raise ApiError(499, "client closed the request; the job was cancelled")
    return await run_in_threadpool(generation_response, ctx, job)


def _task_id(ctx: ApiContext, task_id: str | None) -> str | None:
    if task_id is not None and ctx.easel.queue.get(task_id) is not None:
        raise ApiError(409, f"force_task_id: a job with id {task_id!r} already exists", extra={"field": "force_task_id"})
    return task_id


def generation_response(ctx: ApiContext, job: Job) -> dict:
    """The finished job as AUTOMATIC1111's response (raises the right ApiError for failures)."""
    if job.state == JobState.CANCELLED:
        raise ApiError(409, "the job was cancelled before it ran")
    if job.error is not None:
        raise job_error(job.error)
    return image_response(job, job.meta["request"], job.meta["body"], ctx.easel.settings)


def build_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])
    easel = ctx.easel

    # ---- generation ------------------------------------------------------------------------------

    @router.post("/txt2img", response_model=m.TextToImageResponse)
    async def txt2img(body: m.Txt2ImgRequest, request: Request):
        """Text to image, with AUTOMATIC1111's fields and defaults (steps 50, 512x512, sampler Euler)."""
        gen = await prepare(ctx, body, "txt2img")
        return await run_generation(ctx, request, body, gen, "txt2img")

    @router.post("/img2img", response_model=m.ImageToImageResponse)
    async def img2img(body: m.Img2ImgRequest, request: Request):
        """Image to image and inpainting (init_images, mask, inpainting_fill, inpaint_full_res, resize_mode,
        denoising_strength), with AUTOMATIC1111's fields and defaults."""
        gen = await prepare(ctx, body, "img2img")
        return await run_generation(ctx, request, body, gen, "img2img")

    @router.post("/extra-single-image", response_model=m.ExtrasSingleImageResponse)
    async def extra_single_image(body: m.ExtrasSingleImageRequest, request: Request):
        """Upscale and/or restore faces of one image (the Extras tab's work; returned, not saved)."""
        return await extras_api.run_extras(ctx, request, body, "extra-single-image")

    @router.post("/extra-batch-images", response_model=m.ExtrasBatchImagesResponse)
    async def extra_batch_images(body: m.ExtrasBatchImagesRequest, request: Request):
        """The same for a list of images (`imageList`: data + name); a bad image is a 422 naming it."""
        return await extras_api.run_extras(ctx, request, body, "extra-batch-images")

    @router.post("/interrogate", responses={501: {"description": "not implemented yet"}})
    async def interrogate(body: m.InterrogateRequest):
        raise missing("interrogate")

    for path in ("/create/embedding", "/create/hypernetwork", "/train/embedding", "/train/hypernetwork"):
        @router.post(path, responses={501: {"description": "not implemented yet"}}, name=path.strip("/"))
        async def training(body: dict[str, Any] = Body(default_factory=dict)):
            raise missing("training")

    @router.post("/png-info", response_model=m.PNGInfoResponse)
    def png_info(body: m.PNGInfoRequest):
        """Generation parameters stored in an image by AUTOMATIC1111, Forge, ComfyUI, InvokeAI, NovelAI, Fooocus
        or Easel, as AUTOMATIC1111's infotext (`info`), its parsed form (`parameters`) and every text chunk."""
        image = decode_image("image", body.image, allow_urls=bool(easel.settings.get("api_enable_requests")),
                             max_megapixels=max_megapixels(easel.settings))
        found = read_generation_info(image)
        text = found.text
        items = {k: v for k, v in found.raw.items() if k != "parameters"}
        if found.tool:
            items["easel_source"] = found.tool
        return {"info": text, "items": items, "parameters": _parameters(text) if text else {}}

    # ---- progress and control --------------------------------------------------------------------

    @router.get("/progress", response_model=m.ProgressResponse)
    def progress(request: Request, skip_current_image: bool = Query(False)):
        """The job running now (from the UI, the API or the command line), with a live preview.
        With --auth, only your own job shows its progress and preview."""
        return a1111_progress(ctx, skip_current_image, request=request)

    @router.post("/interrupt")
    def interrupt(request: Request):
        """Stop the running job, keeping finished images. With --auth, only your own job."""
        job = easel.queue.current
        if job is not None and ctx.may_control(request, job):
            job.interrupt()
        return {}

    @router.post("/skip")
    def skip(request: Request):
        """Drop the current batch of the running job and go on with the next."""
        job = easel.queue.current
        if job is not None and ctx.may_control(request, job):
            job.skip()
        return None

    # ---- settings and flags ----------------------------------------------------------------------

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        """Every setting; secrets (the hub token) only as a placeholder."""
        data = {key: redact(key, value) for key, value in easel.settings.as_dict().items()}
        selected = data.get("sd_model_checkpoint")
        if selected:
            try:
                data["sd_model_checkpoint"] = easel.models.registry.title(easel.models.find(selected))
            except LookupError:
                pass
        data[MODULES] = _current_modules(easel)  # Forge's option; Easel remembers it per checkpoint
        data.update({a1111: A1111_VALUES.get(a1111, {}).get(data[ours], data[ours])
                     for a1111, ours in A1111_KEYS.items() if ours in data})
        return data

    @router.post("/options")
    async def set_options(request: Request, body: dict[str, Any] = Body(...)):
        """Change settings, all or none. Path and security settings are refused (403, naming the key);
        `sd_model_checkpoint` loads the checkpoint first and is saved only if that works."""
        changes: dict[str, Any] = {}
        checkpoint = None
        modules = None
        for key, value in body.items():
            if key == "sd_model_checkpoint":
                checkpoint = find_checkpoint(easel.models, key, value)
                continue
            if key == MODULES:  # Forge's VAE / Text Encoder choice: remembered for the checkpoint
                try:
                    modules = easel.models.module_choices.resolve_names(value)
                except (LookupError, ValueError) as exc:
                    raise invalid(key, str(exc).split(": ", 1)[-1]) from exc
                continue
            if key == "sd_vae":
                try:
                    easel.vaes.check(value)
                except (LookupError, ValueError) as exc:
                    raise invalid(key, str(exc).split(": ", 1)[-1] if str(exc).startswith(key) else str(exc)) from exc
            name = A1111_KEYS.get(key, key)
            changed, coerced = check_option(easel.settings, name, value, key)
            if changed:
                changes[name] = coerced
        if modules is not None:
            target = checkpoint or _current_checkpoint(easel)
            easel.models.module_choices.set_preference(target, [str(p) for p in modules])
        if checkpoint is not None:
            await submit_and_wait(ctx, request, lambda j: easel.models.get(checkpoint, progress=lambda t: j.report(
                text=t)), "load-model", checkpoint)
            changes["sd_model_checkpoint"] = checkpoint
        if changes:
            try:
                easel.settings.update(changes, allow_protected=False)
            except SettingError as exc:
                raise invalid(exc.key, str(exc).split(": ", 1)[-1]) from exc
            except SettingsSaveError as exc:  # the server's own file is broken: not the client's mistake
                raise ApiError(503, str(exc), error="SettingsNotSaved") from exc
        return None

    @router.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        """The command line Easel runs with; credentials are never shown."""
        return dict(ctx.flags)

    # ---- lists -----------------------------------------------------------------------------------

    @router.get("/samplers", response_model=list[m.SamplerItem])
    def get_samplers():
        items = []
        for name in samplers.sampler_names():
            info, _ = samplers.resolve(name)
            items.append({"name": name, "aliases": list(getattr(info, "aliases", ())), "options": {}})
        return items

    @router.get("/schedulers", response_model=list[m.SchedulerItem])
    def get_schedulers():
        items = []
        for name, label in samplers.schedule_api_names():
            rho, inner = SCHEDULER_EXTRAS.get(name, (-1.0, False))
            items.append({"name": name, "label": label, "aliases": None, "default_rho": rho,
                          "need_inner_model": inner})
        return items

    @router.get("/sd-models", response_model=list[m.SDModelItem])
    def get_sd_models():
        registry = easel.models.registry
        return [{"title": registry.title(info), "model_name": info.model_name, "hash": registry.short_hash(info),
                 "sha256": easel.models.hashes.cached(info.hash_source), "filename": info.name, "config": None}
                for info in easel.models.checkpoints()]

    @router.get("/sd-vae", response_model=list[m.SDVaeItem])
    def get_sd_vae():
        """VAE files in models/VAE (and `<checkpoint>.vae.*` beside checkpoints): the names `sd_vae` takes."""
        return [{"model_name": path.name, "filename": _relative(path, easel.vaes.folders)}
                for path in easel.vaes.files()]

    @router.get("/sd-modules", response_model=list[m.SDModuleItem])
    def get_sd_modules():
        """Forge's list of VAE and text encoder files (models/VAE, models/text_encoder): the names
        `forge_additional_modules` takes."""
        choices = easel.models.module_choices
        return [{"model_name": path.name, "filename": choices.shown(path)} for path in choices.files()]

    @router.get("/loras", response_model=list[m.LoraItem])
    def get_loras():
        """LoRA files in models/Lora: `name` is what <lora:name:weight> takes; `path` is relative to that folder."""
        items = []
        for path in easel.loras.files():
            relative = _relative(path, easel.loras.folders)
            items.append({"name": path.stem, "alias": _lora_alias(path), "path": relative,
                          "metadata": _safetensors_metadata(path)})
        return items

    @router.get("/embeddings", response_model=m.EmbeddingsResponse)
    def get_embeddings():
        """Textual-inversion embeddings: those that fit the loaded checkpoint's text encoders are `loaded`."""
        return _embeddings(easel)

    @router.get("/hypernetworks", response_model=list[m.HypernetworkItem])
    def get_hypernetworks():
        """Empty: hypernetworks are not supported."""
        return []

    @router.get("/upscalers", response_model=list[m.UpscalerItem])
    def get_upscalers():
        """None, Lanczos, Nearest, then the model upscalers in models/ESRGAN (and A1111's other folders)."""
        return extras_api.upscaler_items(ctx)

    @router.get("/latent-upscale-modes", response_model=list[m.LatentUpscalerModeItem])
    def get_latent_upscale_modes():
        """The latent upscalers hires fix takes as hr_upscaler."""
        return [{"name": name} for name in LATENT_MODES]

    @router.get("/face-restorers", response_model=list[m.FaceRestorerItem])
    def get_face_restorers():
        """GFPGAN / CodeFormer, where their model file is installed."""
        return extras_api.face_restorer_items(ctx)

    @router.get("/realesrgan-models", response_model=list[m.RealesrganItem])
    def get_realesrgan_models():
        """Model upscalers in models/RealESRGAN."""
        return extras_api.realesrgan_items(ctx)

    @router.get("/prompt-styles", response_model=list[m.PromptStyleItem])
    def get_prompt_styles():
        """The styles in styles.csv; a request's `styles` names them."""
        return [{"name": st.name, "prompt": st.prompt, "negative_prompt": st.negative_prompt}
                for st in easel.engine.styles.all()]

    @router.get("/scripts", response_model=m.ScriptsList)
    def get_scripts():
        """Selectable scripts per tab (lower-case titles, as script_name takes them)."""
        return script_api.script_list(easel.engine.scripts)

    @router.get("/script-info", response_model=list[m.ScriptInfo])
    def get_script_info():
        """Every script's arguments, in the order a positional script_args list gives them."""
        return script_api.script_info(easel.engine.scripts)

    @router.get("/extensions", response_model=list[m.ExtensionItem])
    def get_extensions():
        """Installed extensions (bundled ones included), enabled or not."""
        return _extensions(easel)

    @router.get("/memory", response_model=m.MemoryResponse)
    def get_memory():
        return {"ram": _ram(), "cuda": _cuda(easel)}

    # ---- model management ------------------------------------------------------------------------

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints():
        easel.models.refresh()
        return None

    @router.post("/refresh-vae")
    def refresh_vae():
        """Nothing to rescan: the VAE folder is listed afresh on every request."""
        easel.vaes.files()
        return None

    @router.post("/refresh-loras")
    def refresh_loras():
        """LoRA and embedding folders are read when used; this checks that they can be listed."""
        easel.loras.files()
        easel.embeddings.all()
        return None

    @router.post("/unload-checkpoint")
    async def unload_checkpoint(request: Request):
        await submit_and_wait(ctx, request, lambda j: easel.models.unload(), "unload-model", "unload checkpoints")
        return {}

    @router.post("/reload-checkpoint")
    async def reload_checkpoint(request: Request):
        await submit_and_wait(ctx, request, lambda j: easel.models.get(None, progress=lambda t: j.report(text=t)),
                              "load-model", "reload checkpoint")
        return {}

    return router


def _parameters(text: str) -> dict[str, Any]:
    """AUTOMATIC1111's parsed form: Prompt, Negative prompt, each key, and Size-1/Size-2."""
    info = parse_infotext(text)
    params: dict[str, Any] = {"Prompt": info.prompt, "Negative prompt": info.negative_prompt}
    params.update(info.params)
    if "Size" in info.params:
        width, _, height = info.params["Size"].partition("x")
        params["Size-1"], params["Size-2"] = width, height
    return params


def _current_checkpoint(easel) -> str:
    try:
        return easel.models.resolve(None).name
    except LookupError:  # none installed: nothing to remember a choice for
        return ""


def _current_modules(easel) -> list[str]:
    choices = easel.models.module_choices
    name = _current_checkpoint(easel)
    return [choices.shown(p) for p in choices.chosen(name)] if name else []


def _relative(path: Path, folders: list[Path]) -> str:
    """A file's name under its models folder: never the server's absolute path."""
    for folder in folders:
        try:
            return path.relative_to(folder).as_posix()
        except ValueError:
            continue
    return path.name


def _safetensors_metadata(path: Path) -> dict[str, Any]:
    """The header's __metadata__ (training tags, base model...), read without loading tensors."""
    if path.suffix != ".safetensors":
        return {}
    try:
        metadata = read_safetensors_header(path).get("__metadata__") or {}
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in metadata.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(metadata, dict) else {}


def _lora_alias(path: Path) -> str:
    return _safetensors_metadata(path).get("ss_output_name") or path.stem


def _embeddings(easel) -> dict[str, Any]:
    current = easel.models.current
    widths: set[int] = set()
    if current is not None:
        for encoder in (getattr(current, "text_encoders", None) or {}).values():
            width = getattr(getattr(encoder, "config", None), "hidden_size", None)
            if width:
                widths.add(int(width))
    loaded, skipped = {}, {}
    library = easel.embeddings
    for embedding in library.all():
        shapes = {int(v.shape[-1]) for v in embedding.vectors.values()}
        item = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                "shape": max(shapes) if shapes else 0, "vectors": embedding.length}
        fits = current is None or bool(shapes & widths)
        (loaded if fits else skipped)[embedding.name] = item
    return {"loaded": loaded, "skipped": skipped}


def _extensions(easel) -> list[dict[str, Any]]:
    manager = easel.extensions
    if manager is None:
        return []
    items = []
    for ext in manager.extensions:
        items.append({"name": ext.name, "remote": ext.remote or "", "branch": ext.branch or "",
                      "commit_hash": ext.commit or "", "version": ext.manifest.version or "",
                      "commit_date": "", "enabled": bool(ext.enabled and ext.loaded)})
    return items


def _ram() -> dict[str, Any]:
    try:
        import psutil

        process = psutil.Process(os.getpid())
        rss = process.memory_info().rss
        total = psutil.virtual_memory().total
        return {"free": total - rss, "used": rss, "total": total}
    except Exception as exc:  # memory stats are best effort, never an error
        return {"error": str(exc)}


def _cuda(easel) -> dict[str, Any]:
    try:
        import torch

        if not torch.cuda.is_available():
            return {"error": "unavailable"}
        device = easel.device.device
        free, total = torch.cuda.mem_get_info(device)
        stats = torch.cuda.memory_stats(device)
        pair = lambda key: {"current": stats.get(f"{key}.all.current", 0), "peak": stats.get(f"{key}.all.peak", 0)}
        return {"system": {"free": free, "used": total - free, "total": total},
                "active": pair("active_bytes"), "allocated": pair("allocated_bytes"),
                "reserved": pair("reserved_bytes"), "inactive": pair("inactive_split_bytes"),
                "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)}}
    except Exception as exc:
        return {"error": str(exc)}
