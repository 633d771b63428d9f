"""The app factory: the one place that assembles Easel's services.

Importing any module of Easel has no side effects; `build()` creates the settings store,
the model manager, the job queue and the engine from the command-line options and
starts the queue's worker. The UI, the API and the CLI all receive this one `Easel`.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .core.image_input import max_megapixels
from .core.job_store import PendingJobStore
from .core.jobs import Job, JobQueue
from .core.result_archive import ResultArchive
from .core.processing import Engine
from .core.request import GenerationRequest, Result, ValidationError
from .core.step_interrupt import install_interrupt_checks
from .core.styles import StyleStore
from .devices import DeviceConfig, device_config
from .fileio import remove_stale_temp_files
from .gallery import Gallery
from .history import JobHistory
from .extensions.features import collect_features
from .extensions.manager import ExtensionManager
from .extensions.runtime import HookRunner
from .extensions.scripts import collect_scripts
from .output_limits import generation_errors
from .core.pipeline import Feature
from .features.controlnet.feature import ControlNet
from .features.detailer.detect import Detectors
from .features.detailer.feature import Detailer
from .features.regions.feature import RegionalPrompter
from .features.tiled_diffusion.feature import TiledDiffusion
from .features.kontext import KontextReference
from .features import sd_upscale
from .features.controlnet.models import ControlNetLibrary
from .features.embeddings import EmbeddingLibrary
from .features.extras import ExtrasService
from .features.faces import RESTORERS, FaceRestorers
from .features.hires import HiresFix
from .features.identity.feature import Identity
from .features.identity.files import IdentityFolders
from .features.identity.service import IdentityService
from .features.ip_adapter import IPAdapterLibrary
from .features.img2img_feature import Img2Img
from .features.lora import LoraLibrary
from .features.networks import ExtraNetworks, LoraNetworks
from .features.soft_inpaint import SoftInpainting
from .features.token_merging import TokenMergingFeature
from .features.face_restore import FaceRestoration
from .features.tiling import SeamlessTiling
from .features.wildcards import Wildcards
from .features.guidance.freeu import FreeU
from .features.guidance.ngms import NegativeGuidanceMinimumSigma
from .features.guidance.pag import PAG
from .features.guidance.sag import SAG
from .features.guidance.slg import SLG
from .features.refiner import Refiner
from .features.upscalers import UPSCALER_KINDS, Upscalers
from .model_manager.host_allocator import return_freed_blocks
from .model_manager.architecture import Architecture
from .model_manager.downloads import DONE, DownloadManager
from .model_manager.library import ModelLibrary
from .model_manager.manager import ModelManager
from .model_manager.memory import MemoryFlags
from .model_manager.store import ModelStore, automatic_device_budget, automatic_ram_budget, setting_budget
from .model_manager.vae import VaeLibrary
from .paths import PROJECT_ROOT, Paths
from .settings import SettingsStore

if TYPE_CHECKING:
    from .features.batch import FolderBatch

log = logging.getLogger(__name__)
DEMO_MODEL_NAME = "easel-demo-tiny.safetensors"


@dataclass
class AppOptions:
    """Command-line options shared by the UI server and the CLI."""

    models_dir: Path = PROJECT_ROOT / "models"
    ckpt_dirs: list[Path] = field(default_factory=list)
    lora_dirs: list[Path] = field(default_factory=list)
    embedding_dirs: list[Path] = field(default_factory=list)
    outputs_dir: Path = PROJECT_ROOT / "outputs"
    data_dir: Path = PROJECT_ROOT
    device: str = "auto"
    precision: str = "auto"
    no_half_vae: bool = False
    allow_pickle: bool = False
    demo_model: bool = False
    extensions_dir: Path = PROJECT_ROOT / "extensions"
    disable_extensions: bool = False
    # installing/updating extensions over the network (off when listening beyond loopback)
    allow_extension_install: bool = True
    # the command line's --out: save generated images straight into this folder
    output_dir: Path | None = None
    memory: MemoryFlags = field(default_factory=MemoryFlags)  # --medvram / --medvram-sdxl / --lowvram / --gpu-weights
    weights: str = "auto"  # --weights: auto, fp16, bf16 (via precision) or fp8 (weight storage)
    fast: bool = False     # --fast
    attention: str = "Automatic"  # --xformers, --opt-sdp-attention, ...: cross_attention_optimization's Automatic
    workers: str = ""      # --workers cpu,cpu | cuda:0,cuda:1 | auto: worker processes on Ray (webui/workers)
    ray_address: str | None = None  # --ray-address auto | ray://HOST:10001: workers on a Ray cluster


@dataclass
class Easel:
    paths: Paths
    settings: SettingsStore
    device: DeviceConfig
    models: ModelManager
    queue: JobQueue
    engine: Engine
    options: AppOptions
    extensions: "ExtensionManager" = None
    restart_requested: threading.Event = field(default_factory=threading.Event)
    upscalers: Upscalers = None  # type: ignore[assignment]  # always set by build()
    faces: FaceRestorers = None  # type: ignore[assignment]
    extras: ExtrasService = None  # type: ignore[assignment]
    downloads: DownloadManager = None  # type: ignore[assignment]  # Models → Download; its own workers
    # every model file of every kind (Models tab); indexed and hashed in the background after start-up
    library: ModelLibrary = None  # type: ignore[assignment]
    vaes: VaeLibrary = None  # type: ignore[assignment]  # separate VAE files, per-checkpoint preferences
    loras: LoraLibrary = None  # type: ignore[assignment]  # models/Lora (+ --lora-dir)
    embeddings: EmbeddingLibrary = None  # type: ignore[assignment]  # textual inversions in embeddings/
    controlnets: ControlNetLibrary = None  # type: ignore[assignment]  # models/ControlNet (+ T2I-Adapters)
    ip_adapters: IPAdapterLibrary = None  # type: ignore[assignment]  # models/ipadapter + clip_vision
    identity: IdentityService = None  # type: ignore[assignment]  # InstantID / PhotoMaker files and models
    annotators_dir: Path | None = None  # ControlNet preprocessors' weights
    pending_jobs: PendingJobStore | None = None  # queued generations on disk (data dir/queue), restored at start
    gallery: Gallery | None = None  # the Gallery tab's index (data dir/gallery.sqlite); its thread starts in preload
    history: JobHistory | None = None  # finished jobs with their requests (data dir/history.sqlite), across restarts

    def submit(self, request: GenerationRequest, owner: str | None = None, job_id: str | None = None) -> Job:
        """Validate now (so bad input fails at once, naming the field), then queue (txt2img or img2img).

        The request is kept on disk until the job ends (`pending_jobs`), so a restart loses no queued work."""
        return self._submit(request, owner, job_id, keep=True)

    def _submit(self, request: GenerationRequest, owner: str | None, job_id: str | None, keep: bool) -> Job:
        prepared = self.engine.prepare(request)
        bounds = generation_errors(prepared, self.settings)
        if bounds:
            raise ValidationError(bounds)
        store = self.pending_jobs

        def run(job: Job) -> Result:
            if store is not None:
                store.started(job.id)
            with self.models.store.in_use():  # what this job loads stays loaded until it ends
                return self.engine.generate(prepared, job)

        job_id = job_id or uuid.uuid4().hex
        kept = keep and store is not None and store.save(job_id, request, owner, time.time())
        remote = _remote_task(prepared.request, self.models) if getattr(self.queue, "remote", False) else None
        spread = None
        if remote is not None and request.n_iter > 1 and not request.script_name \
                and self.engine.options(request).get("workers_spread_batch_count"):
            from .workers.spread import spread_run  # batch count over the workers; this job joins the parts

            spread = spread_run(self.queue, prepared.request, lambda part: _remote_task(part, self.models),
                             store.started if store is not None else lambda job_id: None)
            remote = None
        try:
            job = self.queue.submit(spread or run, owner=owner, kind=request.mode, description=request.prompt[:80],
                                    job_id=job_id, remote=remote)
            if self.history is not None:
                self.history.submitted(job, request)
            return job
        except BaseException:
            if kept:
                store.remove(job_id)
            raise

    def restore_queue(self) -> list[Job]:
        """Queue again the generations that were waiting (or running) when Easel last stopped, oldest first.

        Their images are saved whatever the request said: the client that was to receive them is gone."""
        if self.pending_jobs is None:
            return []
        restored = []
        for stored in self.pending_jobs.load():
            request = dataclasses.replace(stored.request, save_images=True)
            try:
                job = self._submit(request, stored.owner, stored.id, keep=False)
            except Exception as exc:  # e.g. its checkpoint was removed meanwhile: keep the request, say why
                self.pending_jobs._give_up(stored.folder, f"it is no longer valid ({exc})")
                continue
            job.meta["restored"] = True
            restored.append(job)
        if restored:
            log.info("restored %d queued job(s) from before the restart", len(restored))
        return restored

    submit_txt2img = submit

    def submit_batch(self, batch: "FolderBatch", owner: str | None = None) -> Job:
        """img2img over a folder, as one queued job."""
        from .features.batch import run_folder_batch

        limit = max_megapixels(self.settings)

        def run(job: Job):
            with self.models.store.in_use():
                return run_folder_batch(self.engine, batch, job, limit)

        return self.queue.submit(run, owner=owner,
                                 kind="img2img-batch", description=f"batch {batch.input_dir.name}")

    def generate(self, request: GenerationRequest) -> Result:
        job = self.submit(request)
        job.wait()
        if job.error is not None:
            raise job.error
        return job.result

    txt2img = img2img = generate

    def preload(self) -> Job | None:
        """Warm up after start-up: import the model stack and load the selected checkpoint in the queue."""
        if self.library is not None:
            self.library.start_background()  # index new/changed files, then hash lazily at low priority
        if self.gallery is not None:
            self.gallery.start()  # the indexer thread, and a scan that repairs the index from the files
        if not self.models.checkpoints() or getattr(self.queue, "remote", False):  # workers load their own
            return None

        def load(job: Job):
            from .model_manager import loader  # noqa: F401  (the heavy imports, off the start-up path)

            return self.models.get(None, progress=lambda message: job.report(text=message))

        return self.queue.submit(load, kind="load-model", description="preload selected checkpoint")

    def close(self) -> None:
        if self.downloads is not None:
            self.downloads.close()
        if self.library is not None:
            self.library.stop()
        self.queue.stop()
        if self.history is not None:
            self.history.stop()  # after the queue: the jobs that ended while it stopped are written too
        if self.gallery is not None:
            self.gallery.stop()
        if self.queue.archive is not None:
            self.queue.archive.clear()


def write_demo_model(paths: Paths) -> Path:
    """A tiny random-weight SD 1.x checkpoint, so the whole app can be tried offline."""
    from .model_manager.tiny import write_single_file

    target = paths.model_dir("checkpoint") / DEMO_MODEL_NAME
    if not target.exists():
        write_single_file(target, Architecture("sd1"), seed=1234, demo=True)
        log.info("wrote demo model %s", target)
    return target


def _remote_task(request: GenerationRequest, models: ModelManager):
    """What a worker process needs to run this request: it, and its checkpoint by name (and hash, if known)."""
    from .workers.messages import CheckpointRef, RemoteTask

    try:
        info = models.resolve(request.checkpoint)
        ref = CheckpointRef(info.name, models.hashes.cached(info.hash_source))
    except LookupError:  # not on the head: the workers look for it by the name asked for
        ref = CheckpointRef(request.checkpoint or "")
    return RemoteTask(request, ref)


def _downloaded(item, models: ModelManager) -> None:
    """A finished download: keep the hash it computed while writing, and list a new checkpoint at once."""
    if item.state != DONE:
        return
    if item.computed_sha256 and item.target.is_file():
        models.hashes.record(item.target, item.computed_sha256)
    if item.kind == "checkpoint":
        models.refresh()


def build(options: AppOptions) -> Easel:
    paths = Paths(models_dir=options.models_dir, outputs_dir=options.outputs_dir, data_dir=options.data_dir,
                  extensions_dir=options.extensions_dir,
                  ckpt_dirs=list(options.ckpt_dirs), lora_dirs=list(options.lora_dirs),
                  embedding_dirs=list(options.embedding_dirs))
    paths.ensure()
    remove_stale_temp_files(paths.cache_dir)  # atomic writes cut short by a kill leave hidden .tmp files
    settings = SettingsStore(paths.config_file)
    settings.load()
    if options.fast:  # on for this run, shown in Settings, switchable off there; never saved
        settings.apply_flag("fast_mode", True)
    device = device_config(options.device, options.precision, options.no_half_vae)
    if device.device.type == "cpu":  # weights cast per use on the CPU: freed copies go back to the system
        return_freed_blocks()
    if options.demo_model:
        write_demo_model(paths)
    # one record of every loaded model, under one RAM and one device-memory budget
    store = ModelStore(setting_budget(settings, "model_cache_ram_gb", automatic_ram_budget),
                       setting_budget(settings, "model_cache_vram_gb", lambda: automatic_device_budget(device.device)))
    models = ModelManager(paths, settings, device, allow_pickle=options.allow_pickle, store=store,
                          memory_flags=options.memory, weights=options.weights, attention_flag=options.attention)
    models.refresh()
    queue_class = JobQueue
    if options.workers or options.ray_address:  # only then: the default never imports the workers (nor Ray)
        from .workers.pool import PoolQueue as queue_class  # type: ignore[assignment]
    queue = queue_class(max_size=lambda: settings.get("queue_size_limit"),
                        archive=ResultArchive(paths.cache_dir / "job-results"))
    loras = LoraLibrary(paths.lora_folders(), models.hashes, allow_pickle=options.allow_pickle, store=store)
    embeddings = EmbeddingLibrary(paths.embedding_folders(), models.hashes, allow_pickle=options.allow_pickle,
                                  store=store)
    upscalers = Upscalers(lambda: {kind: [paths.model_dir(kind)] for kind in UPSCALER_KINDS}, device.device,
                          device.dtype, allow_pickle=options.allow_pickle, settings=settings, store=store)
    faces = FaceRestorers(lambda: {kind: [paths.model_dir(kind)] for kind in RESTORERS.values()}, device.device,
                          device.dtype, allow_pickle=options.allow_pickle, store=store)
    hooks = HookRunner()
    extensions = ExtensionManager(paths.extensions_dir, settings, hooks, paths.cache_dir,
                                  allow_install=options.allow_extension_install,
                                  safe_mode=options.disable_extensions)
    extensions.load_all()
    controlnets = ControlNetLibrary([paths.model_dir("controlnet")], allow_pickle=options.allow_pickle, store=store)
    ip_adapters = IPAdapterLibrary([paths.model_dir("ipadapter")],
                                   [paths.model_dir("ipadapter"), paths.model_dir("clip_vision")],
                                   allow_pickle=options.allow_pickle, store=store)
    identity = IdentityService(IdentityFolders(paths.model_dir("photomaker"), paths.model_dir("instantid"),
                                               paths.model_dir("insightface")),
                               lambda: settings.get("identity_insightface_pack") or "antelopev2", store=store)
    ip_adapters.faces = identity.analyzer  # FaceID units share the Identity tab's insightface models
    vaes = VaeLibrary([paths.model_dir("vae")], paths.checkpoint_dirs(), models.hashes,
                      paths.cache_dir / "vae_preferences.json", allow_pickle=options.allow_pickle)
    settings.validators["sd_vae"] = vaes.check  # a VAE that cannot be read is refused before it is saved
    settings.check_files()
    networks = LoraNetworks(loras, embeddings)
    annotators_dir = paths.model_dir("annotator")
    features = builtin_features(networks, upscalers, controlnets, ip_adapters, annotators_dir, identity, models)
    features.append(Wildcards(lambda: Path(settings.get("wildcards_dir") or paths.data_dir / "wildcards")))
    restoration = FaceRestoration(faces, settings.get)
    features[:0] = [SeamlessTiling(), restoration]  # before img2img's paste-back
    # the detailer repaints the finished picture, so it comes after every feature that changes it
    features.append(Detailer(Detectors(paths.model_dir("adetailer"), paths.model_dir("insightface"), identity.pack),
                             models, controlnets, restoration, vaes))
    features.append(RegionalPrompter())  # Regional Prompter's regions: per-region cross-attention
    features.append(TiledDiffusion(upscalers))  # Tiled Diffusion: the first pass's denoiser per latent tile, blended
    features.append(KontextReference())  # FLUX.1 Kontext's reference picture in txt2img (wraps each pass's init)
    features += collect_features(hooks, {feature.name for feature in features})  # extensions' own, after ours
    engine = Engine(models, settings, paths, StyleStore(paths.styles_file), networks, features, hooks=hooks,
                    scripts=collect_scripts(hooks), vaes=vaes, output_dir=options.output_dir)
    sd_upscale.register(engine, upscalers)  # Ultimate SD upscale and SD upscale: img2img scripts
    library = ModelLibrary.for_paths(paths, models.hashes)
    # Interrupt/Skip take effect inside a step: the UNet's blocks check the running job's flags
    models.listeners.append(lambda model: install_interrupt_checks(model.unet, lambda: queue.current,
                                                                   lambda: queue.worker))
    models.listeners.append(lambda model: hooks.call("model_loaded", model=model))
    pending_jobs = PendingJobStore(paths.data_dir / "queue")
    # a job that ends is forgotten on disk; one that ends because the process stops is kept for the next start
    queue.listeners.append(lambda job: None if queue.stopping else pending_jobs.remove(job.id))
    gallery = Gallery(paths.data_dir, paths.outputs_dir, paths.cache_dir)
    history = JobHistory(paths.data_dir)  # like pending_jobs: a job that ends because the process stops is not history
    queue.listeners.append(lambda job: None if queue.stopping else history.job_finished(job))
    history.start()
    engine.image_listeners.append(lambda path, image, text: gallery.image_saved(
        path, image, text, queue.current.id if queue.current is not None else None))
    if options.workers or options.ray_address:
        from .workers.ray_pool import attach_workers

        attach_workers(queue, options, engine, models, settings)  # type: ignore[arg-type]
    queue.start()
    log.info("device: %s; %d checkpoint(s) found", device.label, len(models.checkpoints()))
    extras = ExtrasService(upscalers, faces, settings, paths.outputs_dir)
    downloads = DownloadManager(paths, settings)  # threads start with the first download
    downloads.listeners.append(lambda item: _downloaded(item, models))
    return Easel(paths, settings, device, models, queue, engine, options, extensions, upscalers=upscalers,
                 faces=faces, extras=extras, library=library, vaes=vaes, downloads=downloads, loras=loras, embeddings=embeddings, controlnets=controlnets,
                 ip_adapters=ip_adapters, identity=identity, annotators_dir=annotators_dir,
                 pending_jobs=pending_jobs, gallery=gallery, history=history)


def builtin_features(networks: LoraNetworks, upscalers: Upscalers, controlnets: ControlNetLibrary,
                     ip_adapters: IPAdapterLibrary, annotators_dir: Path, identity: IdentityService,
                     models: ModelManager | None = None) -> list[Feature]:
    """Easel's own features, in the order they contribute to a pass and to the infotext."""
    return [Img2Img(), SoftInpainting(), HiresFix(upscalers, models), ExtraNetworks(networks),
            ControlNet(controlnets, ip_adapters, annotators_dir), Identity(identity),
            NegativeGuidanceMinimumSigma(), FreeU(), PAG(), SAG(), SLG(), TokenMergingFeature(), Refiner(models)]
