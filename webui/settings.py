"""Typed user settings, persisted atomically to config.json.

Names follow AUTOMATIC1111's option keys where one exists, so `/sdapi/v1/options`
clients and copied config files keep working. Fields marked `protected` (paths and
security switches) can be changed in config.json or the Settings tab but never
through the API.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .fileio import atomic_write_text, remove_stale_temp_files

log = logging.getLogger(__name__)


REDACTED = "********"


def _opt(default: Any, label: str, section: str = "General", *, choices: tuple | None = None,
         minimum: float | None = None, maximum: float | None = None, protected: bool = False,
         secret: bool = False, folder_name: bool = False, aliases: dict[str, str] | None = None,
         model_wide: bool = False) -> Any:
    """`protected`: only the Settings tab or config.json may change it; `secret`: never shown outside them;
    `folder_name`: one folder's name inside a models/ folder (never a path: no separators, no "..");
    `aliases`: other names a client may send for a choice (AUTOMATIC1111's older choices), stored as that choice;
    `model_wide`: how models are loaded and kept (the model manager reads the saved value), so a request's
    override_settings cannot change it for one job and is refused rather than ignored."""
    meta = {"label": label, "section": section, "choices": choices, "minimum": minimum, "aliases": aliases or {},
            "maximum": maximum, "protected": protected or secret, "secret": secret, "folder_name": folder_name,
            "model_wide": model_wide}
    return field(default=default, metadata=meta)


# AUTOMATIC1111's other cross-attention choices (their titles, and the short names of its sdp ones). Doggettx's,
# InvokeAI's, sub-quadratic and V1 split or chunk attention to save memory; PyTorch's memory-efficient SDP
# kernel does the same in one kernel, so they run as SDP (model_manager/attention_backends.py).
_SDP = "sdp - scaled dot product"
ATTENTION_ALIASES = {"Doggettx": _SDP, "InvokeAI": _SDP, "sub-quadratic": _SDP, "V1 - original v1": _SDP, "V1": _SDP,
                     "sdp": _SDP, "sdp-no-mem": "sdp-no-mem - scaled dot product without memory efficient attention"}


# AUTOMATIC1111's (and Forge's) names for settings Easel keeps under another name (the API takes and shows both)
A1111_KEYS = {"show_progress_type": "live_preview_method", "forge_unet_storage_dtype": "weight_storage"}
# Forge's "Diffusion in Low Bits" values (forge_unet_storage_dtype) for weight_storage's choices; its
# "(fp16 LoRA)" variants store the same way (Easel merges a LoRA into fp8 weights and restores them exactly)
FORGE_STORAGE = {"Automatic": "Automatic", "bnb-nf4": "nf4", "float8-e4m3fn": "fp8_e4m3fn", "float8-e5m2": "fp8_e5m2"}
STORAGE_ALIASES = {**{forge: ours for forge, ours in FORGE_STORAGE.items() if forge != ours},
                   **{f"{forge} (fp16 LoRA)": ours for forge, ours in FORGE_STORAGE.items()}}
# a renamed key's values as its own clients spell them, for GET /sdapi/v1/options
A1111_VALUES = {"forge_unet_storage_dtype": {ours: forge for forge, ours in FORGE_STORAGE.items()}}
# its "Approx NN" preview (SD 1.x/SDXL-only pickled weights, no diffusers class) runs as TAESD, the nearest kind
PREVIEW_ALIASES = {"Approx NN": "TAESD"}


class SettingError(ValueError):
    """A value a setting cannot take; the message starts with the setting's name."""

    user_facing = True

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class SettingsSaveError(OSError):
    """config.json cannot be written (e.g. a folder stands in its place): a problem of the server, not the client."""

    user_facing = True


def check_folder_name(key: str, value: str) -> str:
    """A plain folder name: what `safe_join` accepts and nothing deeper (no '/', '\\', '..', absolute)."""
    if not value or value in (".", "..") or any(c in value for c in "/\\\x00:") or value != value.strip():
        raise SettingError(key, f"must be the name of one folder (no path, no '/', '\\' or '..'); got {value!r}")
    return value


def redact(key: str, value: Any) -> Any:
    """What the API may show of a setting: secrets become a placeholder (or stay empty when unset)."""
    spec = Settings.spec().get(key)
    if spec is not None and spec.metadata.get("secret") and value:
        return REDACTED
    return value


# Larger numbers than any setting takes; bounds the work (and float conversion) before range checks.
_NUMBER_LIMIT = 2 ** 53


def _plain_number(value: Any) -> bool:
    """A finite int or float of sane magnitude (JSON's NaN, Infinity, 1e308 and 2**70 are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return -_NUMBER_LIMIT <= value <= _NUMBER_LIMIT


def _shown(value: Any) -> str:
    """A value for an error message, shortened (a client may send a megabyte of nesting)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class Settings:
    """Every user-tunable option, with its default. One instance per running app."""

    sd_model_checkpoint: str = _opt("", "Stable Diffusion checkpoint", "Stable Diffusion")
    sd_checkpoints_limit: int = _opt(1, "Checkpoints to keep loaded", "Stable Diffusion", minimum=1, maximum=10,
                                     model_wide=True)
    model_cache_ram_gb: float = _opt(0.0, "System memory for loaded models of every kind, in GB (0 = half of it)",
                                     "Stable Diffusion", minimum=0, maximum=65536, model_wide=True)
    model_cache_vram_gb: float = _opt(0.0, "GPU memory for loaded models of every kind, in GB (0 = 60% of it)",
                                      "Stable Diffusion", minimum=0, maximum=65536, model_wide=True)
    samples_save: bool = _opt(True, "Always save all generated images", "Saving images")
    samples_format: str = _opt("png", "File format for images", "Saving images", choices=("png", "jpg", "webp"))
    samples_filename_pattern: str = _opt("[seed]", "Images filename pattern", "Saving images")
    save_to_dirs: bool = _opt(True, "Save images to a subdirectory", "Saving images")
    directories_filename_pattern: str = _opt("[date]", "Directory name pattern", "Saving images")
    jpeg_quality: int = _opt(80, "Quality for saved jpeg and webp images", "Saving images", minimum=1, maximum=100)
    enable_pnginfo: bool = _opt(True, "Save text information about generation parameters in files", "Saving images")
    outdir_txt2img_samples: str = _opt("", "Output directory for txt2img images (empty: outputs/txt2img-images)",
                                       "Paths", protected=True)
    outdir_img2img_samples: str = _opt("", "Output directory for img2img images (empty: outputs/img2img-images)",
                                       "Paths", protected=True)
    outdir_extras_samples: str = _opt("", "Output directory for images from extras tab (empty: outputs/extras-images)",
                                      "Paths", protected=True)
    ESRGAN_tile: int = _opt(512, "Tile size for upscaler models (0 = no tiling)", "Upscaling", minimum=0,
                            maximum=4096)
    ESRGAN_tile_overlap: int = _opt(32, "Tile overlap for upscaler models, in pixels (low values = visible seams)",
                                    "Upscaling", minimum=0, maximum=256)
    CLIP_stop_at_last_layers: int = _opt(1, "Clip skip", "Stable Diffusion", minimum=1, maximum=12)
    comma_padding_backtrack: int = _opt(20, "Prompt word wrap length limit (tokens)", "Stable Diffusion",
                                        minimum=0, maximum=74)
    emphasis: str = _opt("Original", "Emphasis mode", "Stable Diffusion", choices=("Original", "None"))
    sd3_t5_tokens: str = _opt("CLIP chunks", "SD 3 T5 prompt length (CLIP chunks: 77 tokens per 75-token chunk, no "
                                             "emphasis on T5, as AUTOMATIC1111: its prompts give its images; 256: "
                                             "diffusers' StableDiffusion3Pipeline, with emphasis)", "Stable Diffusion",
                              choices=("CLIP chunks", "256"))
    enable_prompt_comments: bool = _opt(True, "Prompt comments: lines (or line ends) starting with # are left out of "
                                              "the prompt", "Stable Diffusion")
    img_max_size_mp: float = _opt(100.0, "Maximum size of an uploaded image (megapixels)", "Images",
                                  minimum=1, maximum=1000)
    img_max_output_mp: float = _opt(40.0, "Largest image Easel makes (megapixels; an 8K frame is 33): upscales, "
                                          "hires fix and outpainting beyond it are refused before they start",
                                    "Images", minimum=1, maximum=1000, protected=True)
    job_max_output_mp: float = _opt(1000.0, "Most megapixels one job may return in all (batch count x batch size "
                                            "x image size, or an extras batch)", "Images", minimum=1,
                                    maximum=100_000, protected=True)
    randn_source: str = _opt("CPU", "Random number generator source (CPU: same image on every machine; GPU: "
                                    "AUTOMATIC1111's default; NV: NVIDIA GPU numbers computed on the CPU)", "Sampler parameters",
                             choices=("CPU", "GPU", "NV"))
    sde_noise: str = _opt("Brownian tree", "Noise of the SDE samplers (DPM++ SDE, 2M SDE, 3M SDE): Brownian tree "
                                           "(AUTOMATIC1111's: the same images) or Per-step (faster, independent draws)",
                          "Sampler parameters", choices=("Brownian tree", "Per-step"))
    eta_ancestral: float = _opt(1.0, "Eta for ancestral and SDE samplers", "Sampler parameters", minimum=0, maximum=1)
    eta_ddim: float = _opt(0.0, "Eta for DDIM", "Sampler parameters", minimum=0, maximum=1)
    eta_noise_seed_delta: int = _opt(0, "Eta noise seed delta (ENSD)", "Sampler parameters", minimum=0,
                                     maximum=2**31 - 1)
    s_churn: float = _opt(0.0, "Sigma churn", "Sampler parameters", minimum=0, maximum=100)
    s_tmin: float = _opt(0.0, "Sigma tmin", "Sampler parameters", minimum=0, maximum=100)
    s_tmax: float = _opt(0.0, "Sigma tmax (0 = infinity)", "Sampler parameters", minimum=0, maximum=1000)
    s_noise: float = _opt(1.0, "Sigma noise", "Sampler parameters", minimum=0, maximum=1.5)
    s_min_uncond: float = _opt(0.0, "Negative Guidance minimum sigma (NGMS: skip the negative prompt on every "
                                     "other step below this noise level; 0 = off)", "Sampler parameters", minimum=0,
                               maximum=100)
    s_min_uncond_all: bool = _opt(False, "NGMS: skip the negative prompt on every step below that sigma",
                                  "Sampler parameters")
    initial_noise_multiplier: float = _opt(1.0, "Noise multiplier for img2img", "img2img", minimum=0, maximum=1.5)
    hires_fix_refiner_pass: str = _opt("second pass", "Hires fix: which pass uses the refiner", "Stable Diffusion",
                                       choices=("first pass", "second pass", "both passes"))
    sigma_min: float = _opt(0.0, "Sigma min (0 = the model's)", "Sampler parameters", minimum=0, maximum=10)
    sigma_max: float = _opt(0.0, "Sigma max (0 = the model's)", "Sampler parameters", minimum=0, maximum=1000)
    rho: float = _opt(0.0, "Karras schedule rho (0 = 7)", "Sampler parameters", minimum=0, maximum=100)
    beta_dist_alpha: float = _opt(0.6, "Beta schedule: alpha of the Beta distribution", "Sampler parameters",
                                  minimum=0.01, maximum=1)
    beta_dist_beta: float = _opt(0.6, "Beta schedule: beta of the Beta distribution", "Sampler parameters",
                                 minimum=0.01, maximum=1)
    uni_pc_variant: str = _opt("bh1", "UniPC variant (B(h) = h or e^h - 1)", "Sampler parameters",
                               choices=("bh1", "bh2"))
    uni_pc_skip_type: str = _opt("time_uniform", "UniPC skip type", "Sampler parameters",
                                 choices=("time_uniform", "time_quadratic", "logSNR"))
    uni_pc_order: int = _opt(3, "UniPC order (at most the number of steps)", "Sampler parameters", minimum=1,
                             maximum=50)
    uni_pc_lower_order_final: bool = _opt(True, "UniPC lower order final", "Sampler parameters")
    control_net_unit_count: int = _opt(3, "ControlNet units per tab (applies after a restart)", "ControlNet",
                                       minimum=1, maximum=10)
    live_previews_enable: bool = _opt(True, "Show live previews of the created image", "Live previews")
    live_preview_method: str = _opt("TAESD", "Live preview method (TAESD: the model family's tiny autoencoder from "
                                             "models/VAE-approx, close to the final image; Approx cheap: a colour "
                                             "mix, used when the TAESD files are missing; Full: the checkpoint's "
                                             "own VAE, exact but slow)", "Live previews",
                                    choices=("TAESD", "Approx cheap", "Full"), aliases=PREVIEW_ALIASES)
    show_progress_every_n_steps: int = _opt(1, "Live preview display period (steps)", "Live previews",
                                           minimum=1, maximum=32)
    live_preview_refresh_period: int = _opt(500, "Progressbar and preview update period (ms): how often the page "
                                                 "gets a new live preview; shorter costs the browser more",
                                            "Live previews", minimum=100, maximum=10_000)
    queue_size_limit: int = _opt(64, "Most jobs waiting in the queue (0 = no limit); more get HTTP 429", "API",
                                 minimum=0, maximum=10_000)
    workers_spread_batch_count: bool = _opt(False, "With several workers (--workers, --ray-address): spread a "
                                                   "job's batch count over them (every image keeps its seed)",
                                            "Workers")
    api_enable_requests: bool = _opt(False, "Allow http(s) image URLs in API requests (never private, loopback or "
                                            "link-local addresses)", "API", protected=True)
    sd_vae: str = _opt("Automatic", "SD VAE (Automatic: the checkpoint's preferred VAE, else the one baked in; "
                                    "None: the baked-in one; or a file from models/VAE)", "Stable Diffusion")
    sd_vae_overrides_per_model_preferences: bool = _opt(
        True, "A VAE chosen in the top bar overrides each checkpoint's preferred VAE", "Stable Diffusion")
    weight_storage: str = _opt("Automatic", "Denoiser weight storage (fp8 halves the UNet's memory, nf4 (bitsandbytes) "
                                            "keeps its Linear layers in 4 bits; computing stays "
                                            "in the precision of --precision). Changing it reloads the checkpoint",
                               "Stable Diffusion", choices=("Automatic", "fp8_e4m3fn", "fp8_e5m2", "nf4"),
                               aliases=STORAGE_ALIASES, model_wide=True)
    memory_mode: str = _opt("Automatic", "Memory mode (Automatic: from free GPU memory and the flags --medvram, "
                                         "--medvram-sdxl, --lowvram; Resident: all on the GPU; Model offload: each "
                                         "model moves to the GPU while it runs; Block offload: the denoiser's blocks "
                                         "stream through the GPU, slowest, least memory)", "Stable Diffusion",
                            choices=("Automatic", "Resident", "Model offload", "Block offload"), model_wide=True)
    gpu_weights_mb: int = _opt(0, "GPU weights budget in MB for the memory mode's automatic choice; in block "
                                  "offload the denoiser's blocks that fit in it stay on the GPU (0 = free GPU "
                                  "memory and model_cache_vram_gb decide, every block streams; --gpu-weights sets "
                                  "it too)",
                               "Stable Diffusion", minimum=0, maximum=10_000_000,
                               model_wide=True)
    fast_mode: bool = _opt(False, "Fast mode: channels_last, fused QKV projections and, on CUDA, torch.compile of "
                                  "the denoiser (the first image of each size compiles; --fast turns it on for one run)",
                           "Stable Diffusion", model_wide=True)
    fast_compile: str = _opt("Automatic", "Fast mode's torch.compile (Automatic: on CUDA only)", "Stable Diffusion",
                             choices=("Automatic", "Always", "Never"))
    fast_cuda_graphs: bool = _opt(False, "Fast mode's torch.compile with CUDA graphs (\"reduce-overhead\"), for "
                                         "passes with no offload and no LoRA applied; CUDA only, unmeasured",
                                  "Stable Diffusion")
    cross_attention_optimization: str = _opt(
        "Automatic", "Cross attention optimization (Automatic: SDP, or what --xformers / --opt-sdp-attention / "
                     "--opt-sdp-no-mem-attention name; a choice that cannot run here falls back to SDP with a warning)",
        "Stable Diffusion", choices=("Automatic", "sdp - scaled dot product",
                                     "sdp-no-mem - scaled dot product without memory efficient attention",
                                     "xformers", "SageAttention", "None"),
        aliases=ATTENTION_ALIASES)
    vae_tiling: str = _opt("Automatic", "VAE tiling: decode and encode in overlapping tiles (Automatic: above 2048x2048 "
                                        "pixels and after running out of GPU memory)", "Stable Diffusion",
                            choices=("Automatic", "Always", "Never"))
    # tile sides in image pixels (the Tiled VAE extension's two sliders; its decoder one counts latents)
    vae_tile_encode: int = _opt(0, "VAE encoder tile size in image pixels (0: the VAE's own, 512 for SD 1.x, 1024 for "
                                   "SDXL/SD3/Flux; smaller needs less GPU memory and gives the same picture)",
                                "Stable Diffusion", minimum=0, maximum=8192)
    vae_tile_decode: int = _opt(0, "VAE decoder tile size in image pixels (0: the VAE's own; smaller needs less GPU "
                                   "memory and gives the same picture)", "Stable Diffusion", minimum=0, maximum=8192)
    # token merging (features/token_merging): AUTOMATIC1111's three ratios, Forge's downsample and no-random switch
    token_merging_ratio: float = _opt(0.0, "Token merging ratio (ToMe, SD 1.x/2.x/SDXL: 0 = off, higher = faster, "
                                           "less detail)", "Optimizations", minimum=0, maximum=0.9)
    token_merging_ratio_img2img: float = _opt(0.0, "Token merging ratio for img2img (only applies if non-zero and "
                                                   "overrides above)", "Optimizations", minimum=0, maximum=0.9)
    token_merging_ratio_hr: float = _opt(0.0, "Token merging ratio for high-res pass (only applies if non-zero and "
                                              "overrides above)", "Optimizations", minimum=0, maximum=0.9)
    token_merging_downsample: int = _opt(1, "Token merging: merge in blocks downsampled by at most this (1: the "
                                            "highest resolution only, the paper's; SDXL needs 2)", "Optimizations",
                                         minimum=1, maximum=8)
    token_merging_no_rand: bool = _opt(False, "Token merging: no random (always the same token of each 2x2 cell is "
                                              "the destination)", "Optimizations")
    hub_endpoint: str = _opt("https://huggingface.co", "Model hub endpoint for downloads (a Hugging Face compatible "
                                                       "server or mirror)", "Downloads", protected=True)
    hub_token: str = _opt("", "Model hub access token (for gated repositories; never shown by the API)",
                          "Downloads", secret=True)
    identity_insightface_pack: str = _opt("antelopev2", "insightface model pack (a folder in models/insightface)",
                                          "Identity", folder_name=True)
    wildcards_dir: str = _opt("", "Wildcards folder (empty: wildcards/ in Easel's data folder)", "Wildcards",
                              protected=True)
    face_restoration_model: str = _opt("CodeFormer", "Face restoration model (Restore faces while generating)",
                                       "Face restoration", choices=("CodeFormer", "GFPGAN"))
    code_former_weight: float = _opt(0.5, "CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
                                     "Face restoration", minimum=0, maximum=1)

    # ---- validation -----------------------------------------------------------------

    @classmethod
    def spec(cls) -> dict[str, Any]:
        return {f.name: f for f in fields(cls)}

    @classmethod
    def coerce(cls, key: str, value: Any) -> Any:
        """Check one value against its field; return it converted, or raise ValueError naming the key."""
        spec = cls.spec().get(key)
        if spec is None:
            raise ValueError(f"{key}: unknown setting")
        default = spec.default if spec.default is not MISSING else None
        meta = spec.metadata
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{key}: expected true or false, got {_shown(value)}")
        elif isinstance(default, int):
            if not _plain_number(value) or int(value) != value:
                raise ValueError(f"{key}: expected an integer, got {_shown(value)}")
            value = int(value)
        elif isinstance(default, float):
            if not _plain_number(value):
                raise ValueError(f"{key}: expected a number, got {_shown(value)}")
            value = float(value)
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError(f"{key}: expected text, got {_shown(value)}")
            if meta.get("folder_name"):
                check_folder_name(key, value)
        value = meta.get("aliases", {}).get(value, value) if isinstance(value, str) else value
        if meta.get("choices") and value not in meta["choices"]:
            raise ValueError(f"{key}: must be one of {', '.join(map(str, meta['choices']))}; got {_shown(value)}")
        if meta.get("minimum") is not None and value < meta["minimum"]:
            raise ValueError(f"{key}: must be at least {meta['minimum']}; got {value!r}")
        if meta.get("maximum") is not None and value > meta["maximum"]:
            raise ValueError(f"{key}: must be at most {meta['maximum']}; got {value!r}")
        return value

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class SettingsStore:
    """Holds the live Settings and writes them to config.json atomically.

    Unknown keys found in the file (an extension's options, a newer version's) are kept
    and written back untouched, so nothing a user set is lost. A file that cannot be parsed
    is renamed to `config.json.bad-<time>` before anything can overwrite it, and the user is
    told (`load_warnings`, shown in the Settings tab). `validators` check values that name a
    file (e.g. `sd_vae`) before they are saved.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.RLock()
        self._extra: dict[str, Any] = {}
        self.settings = Settings()
        self.load_warnings: list[str] = []
        self._save_blocked = False
        # key -> check(value) raising ValueError/LookupError; registered by the app for settings naming files
        self.validators: dict[str, Callable[[Any], None]] = {}
        self._flag_saved: dict[str, Any] = {}  # settings a command-line flag set for this run -> the saved value

    def apply_flag(self, key: str, value: Any) -> None:
        """A command-line flag's value for this run (`--fast` sets fast_mode): in force and shown in Settings and
        /sdapi/v1/options, never written to config.json (a flag lasts one run); changing the setting afterwards
        replaces it, and that choice is saved."""
        with self._lock:
            self._flag_saved.setdefault(key, getattr(self.settings, key))
            setattr(self.settings, key, Settings.coerce(key, value))

    def _warn(self, message: str) -> None:
        self.load_warnings.append(message)
        log.warning(message)

    def _keep_bad_file(self, reason: str) -> None:
        """Rename an unreadable config.json aside, so the next save cannot destroy what the user had."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        backup = self.path.with_name(f"{self.path.name}.bad-{stamp}")
        counter = 1
        while backup.exists():
            backup = self.path.with_name(f"{self.path.name}.bad-{stamp}-{counter}")
            counter += 1
        try:
            self.path.rename(backup)
        except OSError as exc:
            self._warn(f"{self.path} could not be read ({reason}) nor kept aside ({exc}); Easel started with default "
                       "settings and will not save over it")
            self._save_blocked = True
            return
        self._warn(f"{self.path.name} could not be read ({reason}); it was kept as {backup.name} and Easel started "
                   "with default settings. Fix or copy values from that file; saving settings writes a new "
                   f"{self.path.name}.")

    def load(self) -> Settings:
        with self._lock:
            self.settings = Settings()
            self._extra = {}
            self.load_warnings = []
            self._save_blocked = False
            remove_stale_temp_files(self.path.parent, self.path.name)  # left by a save killed mid-write
            if self.path.is_dir():
                self._warn(f"{self.path} is a folder, not a file; Easel started with default settings and cannot "
                           "save settings until it is removed or renamed")
                return self.settings
            if not self.path.exists():
                return self.settings
            try:
                text = self.path.read_text(encoding="utf-8")
            except OSError as exc:  # unreadable (permissions): leave it alone, never save over it
                self._warn(f"{self.path} could not be read ({exc}); Easel started with default settings and will "
                           "not save over it")
                self._save_blocked = True
                return self.settings
            try:
                data = json.loads(text)
                if not isinstance(data, dict):
                    raise ValueError("top level is not an object")
            except ValueError as exc:
                self._keep_bad_file(str(exc))
                return self.settings
            spec = Settings.spec()
            for key, value in data.items():
                if key not in spec:
                    self._extra[key] = value
                    continue
                try:
                    setattr(self.settings, key, Settings.coerce(key, value))
                except ValueError as exc:
                    self._warn(f"{exc}; using the default")
            return self.settings

    def check_files(self) -> None:
        """Run the validators on the loaded values (after start-up, once the libraries exist).

        A saved value naming a file that is gone or unreadable falls back to its default in
        memory, with a warning, instead of failing every generation; the file keeps the value."""
        with self._lock:
            for key, check in self.validators.items():
                value = getattr(self.settings, key)
                try:
                    check(value)
                except (ValueError, LookupError) as exc:
                    default = Settings.spec()[key].default
                    self._warn(f"{key}: {_reason(key, exc)}; using {default!r} until it is changed")
                    setattr(self.settings, key, default)

    def as_dict(self) -> dict[str, Any]:
        """Every option, including keys this version does not know (kept from config.json)."""
        with self._lock:
            data = dict(self._extra)
            data.update(self.settings.as_dict())
            return data

    def get(self, key: str) -> Any:
        with self._lock:
            if key in Settings.spec():
                return getattr(self.settings, key)
            return self._extra.get(key)

    def set_extra(self, key: str, value: Any) -> None:
        """Store a value that is not a built-in setting (extension state, extension settings) and save."""
        if key in Settings.spec():
            raise ValueError(f"{key}: use update() for built-in settings")
        with self._lock:
            had, old = key in self._extra, self._extra.get(key)
            self._extra[key] = value
            try:
                self.save()
            except SettingsSaveError:
                if had:
                    self._extra[key] = old
                else:
                    self._extra.pop(key, None)
                raise

    def extras(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._extra)

    def check(self, key: str, value: Any) -> Any:
        """The value coerced and, for a setting naming a file, checked against that file; SettingError otherwise."""
        value = Settings.coerce(key, value)
        check = self.validators.get(key)
        if check is not None:
            try:
                check(value)
            except (ValueError, LookupError) as exc:
                raise SettingError(key, _reason(key, exc)) from exc
        return value

    def update(self, changes: dict[str, Any], *, allow_protected: bool = True) -> list[str]:
        """Validate every change first, then apply all and save; returns the changed keys.

        Raises ValueError naming the first bad key; nothing is applied in that case, nor when
        config.json cannot be written (SettingsSaveError).
        """
        spec = Settings.spec()
        checked: dict[str, Any] = {}
        for key, value in changes.items():
            if key in spec and spec[key].metadata.get("protected") and not allow_protected:
                raise PermissionError(f"{key}: this setting can only be changed from the Settings tab or config.json")
            checked[key] = self.check(key, value) if key in spec else Settings.coerce(key, value)
        with self._lock:
            changed = [k for k, v in checked.items() if getattr(self.settings, k) != v]
            before = {k: getattr(self.settings, k) for k in changed}
            # a flag's setting changed here is the user's own from now on (saved); sent unchanged (the Settings tab
            # and clients echoing /options send every value) it stays the flag's, for this run only
            claimed = {k: self._flag_saved.pop(k) for k in changed if k in self._flag_saved}
            for key, value in checked.items():
                setattr(self.settings, key, value)
            if changed:
                try:
                    self.save()
                except SettingsSaveError:
                    for key, value in before.items():
                        setattr(self.settings, key, value)
                    self._flag_saved.update(claimed)
                    raise
            return changed

    def save(self) -> None:
        with self._lock:
            if self._save_blocked:
                raise SettingsSaveError(f"settings were not saved: {self.path} could not be read at start-up and is "
                                        "not overwritten; fix or remove it and restart")
            data = dict(self._extra)
            data.update(self.settings.as_dict())
            data.update(self._flag_saved)  # a flag's value lasts this run: the file keeps what was saved
            try:
                atomic_write_text(self.path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
            except OSError as exc:
                what = "is a folder, not a file" if self.path.is_dir() else f"cannot be written ({exc.strerror or exc})"
                raise SettingsSaveError(f"settings were not saved: {self.path} {what}") from exc


def _reason(key: str, exc: BaseException) -> str:
    """An exception's message without a leading 'key: ' (validators often name the setting themselves)."""
    text = str(exc).strip("'\"")
    return text[len(key) + 2:] if text.startswith(f"{key}: ") else text
