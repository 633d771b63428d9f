"""Request and response bodies of the API, with AUTOMATIC1111's field names and defaults.

The `/sdapi/v1` models mirror AUTOMATIC1111 1.10 (`modules/api/models.py` and the
processing classes it is generated from), so clients written for it send what they
always sent. Where AUTOMATIC1111 is sloppy, these are stricter: unknown fields are
refused (422, naming the field) instead of ignored, numbers must be finite, and
fields that have a value in AUTOMATIC1111 never accept null.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Refuse unknown fields, NaN and Infinity; allow field names that start with `model_`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())


class Loose(BaseModel):
    """Response items: A1111's optional fields, no strictness needed on what we produce."""

    model_config = ConfigDict(protected_namespaces=())


# ---- txt2img / img2img ---------------------------------------------------------------------------


class GenerationFields(Strict):
    """Fields AUTOMATIC1111's txt2img and img2img share (StableDiffusionProcessing)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: Optional[list[str]] = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: Optional[str] = None
    scheduler: Optional[str] = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: Optional[bool] = None
    tiling: Optional[bool] = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: Optional[float] = None
    denoising_strength: Optional[float] = 0.75
    s_min_uncond: Optional[float] = None
    s_churn: Optional[float] = None
    s_tmax: Optional[float] = None
    s_tmin: Optional[float] = None
    s_noise: Optional[float] = None
    override_settings: Optional[dict[str, Any]] = Field(
        default=None, description="Settings for this request only. `sd_model_checkpoint` picks the checkpoint "
                                  "(a title, name or hash from /sdapi/v1/sd-models); nothing is written globally.")
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: Optional[str] = None
    refiner_switch_at: Optional[float] = None
    disable_extra_networks: bool = False
    firstpass_image: Optional[str] = None
    comments: Optional[dict[str, Any]] = None
    force_task_id: Optional[str] = Field(default=None, description="Use this as the job id (see /easel/v1/jobs).")
    sampler_index: str = Field(default="Euler", description="Legacy name of sampler_name; used when that is null.")
    script_name: Optional[str] = None
    script_args: Optional[list[Any] | dict[str, Any]] = Field(
        default_factory=list, description="the script's arguments in script-info order, or an object by argument name")
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: Optional[dict[str, Any]] = Field(default_factory=dict)
    infotext: Optional[str] = Field(default=None, description="Generation parameters text; fills every field the "
                                                              "request does not set itself.")
    # Easel's own generation fields beyond AUTOMATIC1111's (see GenerationRequest)
    distilled_cfg_scale: float = Field(default=3.5, description="guidance value of guidance-distilled models "
                                                                "(Flux dev), as Forge's API takes it")
    cfg_rescale: float = Field(default=0.0, description="CFG rescale phi (0 = off)")
    cfg_interval_start: float = Field(default=0.0, description="fraction of the steps where CFG starts")
    cfg_interval_end: float = Field(default=1.0, description="fraction of the steps where CFG ends")
    lora_composition: Literal["Merge", "Switch", "Composite"] = "Merge"
    lora_switch_steps: int = 1


class Txt2ImgRequest(GenerationFields):
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: Optional[str] = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: Optional[str] = None
    hr_sampler_name: Optional[str] = None
    hr_scheduler: Optional[str] = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Img2ImgRequest(GenerationFields):
    init_images: Optional[list[str]] = None
    resize_mode: int = 0
    image_cfg_scale: Optional[float] = None
    mask: Optional[str] = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: Optional[int] = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: Optional[float] = None
    latent_mask: Optional[str] = None
    include_init_images: bool = False
    outpaint_left: int = Field(default=0, description="Easel: grow the canvas this many pixels and inpaint it")
    outpaint_right: int = 0
    outpaint_up: int = 0
    outpaint_down: int = 0


class ImageResponse(BaseModel):
    images: Optional[list[str]] = Field(default=None, description="The generated images, base64 PNG (or the "
                                                                  "configured format) with the infotext embedded.")
    parameters: dict[str, Any]
    info: str = Field(description="A JSON string: seeds, infotexts, model, ... as AUTOMATIC1111 writes it.")


TextToImageResponse = ImageResponse
ImageToImageResponse = ImageResponse


# ---- extras, png-info, interrogate -------------------------------------------------------------------


class ExtrasBaseRequest(Strict):
    resize_mode: Literal[0, 1] = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(default=0, ge=0, le=1)
    codeformer_visibility: float = Field(default=0, ge=0, le=1)
    codeformer_weight: float = Field(default=0, ge=0, le=1)
    upscaling_resize: float = Field(default=2, gt=0)
    upscaling_resize_w: int = Field(default=512, ge=1)
    upscaling_resize_h: int = Field(default=512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(default=0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = ""


class FileData(Strict):
    data: str
    name: str


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData]


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str = Field(description="the result as base64 PNG (empty when show_extras_results is false)")


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class PNGInfoRequest(Strict):
    image: str = Field(description="The image, base64 (a data: URL is fine)")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class InterrogateRequest(Strict):
    image: str = ""
    model: str = "clip"


# ---- progress ------------------------------------------------------------------------------------


class ProgressResponse(BaseModel):
    progress: float = Field(description="0 to 1")
    eta_relative: float = Field(description="seconds left (estimate)")
    state: dict[str, Any]
    current_image: Optional[str] = Field(default=None, description="live preview, base64 PNG")
    textinfo: Optional[str] = None


# ---- lists -------------------------------------------------------------------------------------


class SamplerItem(Loose):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(Loose):
    name: str
    label: str
    aliases: Optional[list[str]] = None
    default_rho: Optional[float] = None
    need_inner_model: Optional[bool] = None


class UpscalerItem(Loose):
    name: str
    model_name: Optional[str] = None
    model_path: Optional[str] = None
    model_url: Optional[str] = None
    scale: Optional[float] = None


class LatentUpscalerModeItem(Loose):
    name: str


class SDModelItem(Loose):
    title: str
    model_name: str
    hash: Optional[str] = None
    sha256: Optional[str] = None
    filename: str = Field(description="the checkpoint's name relative to its models folder (never a server path)")
    config: Optional[str] = None


class SDVaeItem(Loose):
    model_name: str
    filename: str


class SDModuleItem(Loose):
    model_name: str
    filename: str


class LoraItem(Loose):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class HypernetworkItem(Loose):
    name: str
    path: Optional[str] = None


class FaceRestorerItem(Loose):
    name: str
    cmd_dir: Optional[str] = None


class RealesrganItem(Loose):
    name: str
    path: Optional[str] = None
    scale: Optional[int] = None


class PromptStyleItem(Loose):
    name: str
    prompt: Optional[str] = None
    negative_prompt: Optional[str] = None


class EmbeddingItem(Loose):
    step: Optional[int] = None
    sd_checkpoint: Optional[str] = None
    sd_checkpoint_name: Optional[str] = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]


class ScriptsList(BaseModel):
    txt2img: Optional[list[str]] = None
    img2img: Optional[list[str]] = None


class ScriptArg(Loose):
    name: Optional[str] = Field(default=None, description="Easel: the argument's name (script_args may be an object)")
    label: Optional[str] = None
    value: Optional[Any] = None
    minimum: Optional[Any] = None
    maximum: Optional[Any] = None
    step: Optional[Any] = None
    choices: Optional[list[str]] = None


class ScriptInfo(Loose):
    name: Optional[str] = None
    is_alwayson: Optional[bool] = None
    is_img2img: Optional[bool] = None
    args: list[ScriptArg]


class ExtensionItem(Loose):
    name: str
    remote: str
    branch: str
    commit_hash: str
    version: str
    commit_date: str
    enabled: bool


# ---- /easel/v1/jobs ----------------------------------------------------------------------------


class JobSubmit(Strict):
    type: Literal["txt2img", "img2img", "extra-single-image", "extra-batch-images"] = Field(
        default="txt2img", description="what to run; `params` is that /sdapi/v1 endpoint's request body")
    params: dict[str, Any] = Field(default_factory=dict)


class JobProgress(BaseModel):
    fraction: float
    step: int
    total_steps: int
    batch: int
    batch_count: int
    eta_seconds: Optional[float] = None
    text: str = ""
    preview: Optional[str] = Field(default=None, description="live preview, base64 PNG (with ?preview=true)")


class JobInfo(BaseModel):
    id: str
    type: str
    state: str = Field(description="queued, running, done, failed, cancelled or interrupted")
    position: Optional[int] = Field(default=None, description="0 = running now, 1 = next, ...; null when finished")
    owner: Optional[str] = None
    mine: bool = False
    description: Optional[str] = Field(default=None, description="the prompt (only for your own jobs)")
    submitted_at: float
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    progress: JobProgress
    error: Optional[str] = None
    rerun_of: Optional[str] = Field(default=None, description="the past job this one runs again (POST .../rerun)")
    worker: Optional[str] = Field(default=None, description="the worker that runs (ran) it, with --workers or "
                                  "--ray-address; null for the in-process worker")
    retried: Optional[str] = Field(default=None, description="why it ran again on another worker (its first one "
                                   "was lost mid-job)")


class JobList(BaseModel):
    running: Optional[str] = None
    queued: int
    limit: int = Field(description="most jobs that may wait (0 = no limit)")
    jobs: list[JobInfo]
    next_before: Optional[str] = Field(default=None, description="with finished=true: pass as `before` for the "
                                       "next (older) page of the history; null on the last page")


class JobResult(ImageResponse):
    id: str
    state: str
    warnings: list[str] = Field(default_factory=list)
