"""What runs inside a worker process: Easel's own engine, model store and queue, driven by the head.

The worker assembles the app with `app.build` (same features, same engine, its own model store
and models folder) and runs each job through its own one-thread JobQueue, so Interrupt/Skip
and the in-step checks work exactly as in one process. It saves nothing: `Engine.save_named`
is replaced by a recorder, and the images go back to the head with what saving needs
(`SaveOrder`), so files, names and infotext come out as for a local job. Its settings follow
the head's, sent with every job. No Ray import here: the actor class is made in ray_pool.py.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .affinity import loaded_keys
from .messages import CheckpointRef, DecodedPreview, SaveOrder, Snapshot

log = logging.getLogger(__name__)
MODELS_DIR_ENV = "EASEL_MODELS_DIR"  # set on a worker machine whose models live elsewhere than the head's


@dataclass
class WorkerConfig:
    name: str
    device: str = "cpu"
    models_dir: str = ""
    ckpt_dirs: list[str] = field(default_factory=list)
    lora_dirs: list[str] = field(default_factory=list)
    embedding_dirs: list[str] = field(default_factory=list)
    precision: str = "auto"
    allow_pickle: bool = False
    disable_extensions: bool = True
    extensions_dir: str = ""  # the head's: on its machine (and where a node has the same folder) the same extensions
    settings: dict[str, Any] = field(default_factory=dict)  # the head's at start (which extensions are on, ...)


def known_scripts(engine: Any) -> set[str]:
    """The scripts and features an engine can run, by the names requests use for them."""
    return set(engine.scripts) | {feature.name for feature in engine.features}


def requested_scripts(engine: Any, request: Any) -> tuple[str, ...]:
    """The request's script and always-on scripts that `engine` (the head's) has: a worker must have them too."""
    known = known_scripts(engine)
    names = [request.script_name] if request.script_name else []
    names += [name for name in request.alwayson() if name not in names]
    return tuple(name for name in names if name in known)


class WorkerService:
    """One worker: start, poll, interrupt and skip jobs the head hands it (by a key the head chooses)."""

    def __init__(self, config: WorkerConfig):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from ..app import AppOptions, build

        self.config = config
        models_dir = Path(os.environ.get(MODELS_DIR_ENV) or config.models_dir)
        data = Path(tempfile.mkdtemp(prefix=f"easel-worker-{config.name}-"))
        if config.settings:  # read by build: the extensions the head has turned off stay off here too
            (data / "config.json").write_text(json.dumps(config.settings), encoding="utf-8")
        extensions = Path(config.extensions_dir) if config.extensions_dir else data / "extensions"
        self.easel = build(AppOptions(
            models_dir=models_dir, ckpt_dirs=[Path(p) for p in config.ckpt_dirs],
            lora_dirs=[Path(p) for p in config.lora_dirs], embedding_dirs=[Path(p) for p in config.embedding_dirs],
            outputs_dir=data / "outputs", data_dir=data, device=config.device, precision=config.precision,
            allow_pickle=config.allow_pickle, disable_extensions=config.disable_extensions,
            allow_extension_install=False, extensions_dir=extensions if extensions.is_dir() else data / "extensions"))
        queue = self.easel.queue
        queue.listeners.clear()  # no history, no pending-job files: the head keeps those
        queue.archive = None  # results go back whole
        if self.easel.history is not None:
            self.easel.history.stop()
        self.easel.engine.save_named = self._record  # type: ignore[method-assign]
        importlib.import_module("webui.model_manager.loader")  # the model stack's imports, before the first job
        self._lock = threading.Lock()
        self._jobs: dict[str, Any] = {}
        self._saves: dict[str, list[SaveOrder]] = {}

    # ---- asked by the head ----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        models = self.easel.models
        return {"name": self.config.name, "pid": os.getpid(), "host": socket.gethostname(),
                "device": self.easel.device.label, "loaded": self._loaded(),
                "checkpoints": [(c.name, models.hashes.cached(c.hash_source)) for c in models.checkpoints()]}

    def start(self, key: str, request: Any, settings: dict[str, Any], checkpoint: CheckpointRef,
              scripts: tuple[str, ...] = ()) -> str | None:
        """Queue a job; returns None, or why this worker cannot run it (no such checkpoint, or no such extension
        script or feature here: `scripts` are those of the request's that the head has)."""
        local = self.find_checkpoint(checkpoint)
        if local is None:
            folders = ", ".join(str(p) for p in self.easel.paths.checkpoint_dirs())
            return f"worker {self.config.name} has no checkpoint {checkpoint.label()} (looked in {folders})"
        lacking = [name for name in scripts if name not in known_scripts(self.easel.engine)]
        if lacking:
            return (f"worker {self.config.name} has no script {', '.join(map(repr, lacking))} (its extensions: "
                    f"{self.easel.paths.extensions_dir}{', turned off' if self.config.disable_extensions else ''})")
        self._follow(settings)
        engine = self.easel.engine
        prepared = engine.prepare(replace(request, checkpoint=local))
        store = self.easel.models.store

        def run(job):
            with store.in_use():
                return engine.generate(prepared, job)

        with self._lock:
            self._saves[key] = []
            self._jobs[key] = self.easel.queue.submit(run, kind=request.mode, job_id=key)
        return None

    def poll(self, key: str, preview_since: int = -1) -> Snapshot:
        job = self._jobs[key]
        p = job.progress
        snap = Snapshot(state=job.state.value, step=p.step, total_steps=p.total_steps, job_no=p.job_no,
                        job_count=p.job_count, text=p.text)
        from ..core.preview import watched_image

        step, image = watched_image(p)  # the head polls while its job runs: this worker decodes previews
        latents = p.preview_latents
        if image is not None and latents is not None and step > preview_since:
            snap.preview = (step, latents[:1].detach().float().cpu(), DecodedPreview(image))
        if job.done:
            snap.finished = True
            snap.result = job.result
            snap.loaded = self._loaded()
            if job.error is not None:
                snap.error = (type(job.error).__name__, str(job.error), bool(getattr(job.error, "user_facing", False)))
            with self._lock:
                snap.saves = self._saves.pop(key, [])
                self._jobs.pop(key, None)
        return snap

    def interrupt(self, key: str) -> None:
        job = self._jobs.get(key)
        if job is not None:
            job.interrupt()

    def skip(self, key: str) -> None:
        job = self._jobs.get(key)
        if job is not None:
            job.skip()

    # ---- inside ---------------------------------------------------------------------------------

    def find_checkpoint(self, ref: CheckpointRef) -> str | None:
        """This worker's name for the head's checkpoint: by sha256 in its own folders, else by name."""
        models = self.easel.models
        for items in (models.checkpoints(), models.refresh()):  # again after a rescan: a file copied in since
            if ref.sha256:
                cached = [c for c in items if models.hashes.cached(c.hash_source)]
                for info in cached + [c for c in items if c not in cached]:
                    if models.hashes.sha256(info.hash_source) == ref.sha256:
                        return info.name
                continue
            try:
                return models.find(ref.name).name
            except LookupError:
                continue
        return None

    def _follow(self, settings: dict[str, Any]) -> None:
        """Take the head's settings (those this worker can take: a VAE it lacks is left as it was)."""
        from ..settings import Settings

        store, known = self.easel.settings, Settings.spec()
        for key, value in settings.items():
            if key not in known or key == "sd_model_checkpoint" or store.get(key) == value:
                continue
            try:
                store.update({key: value})
            except (ValueError, LookupError, OSError) as exc:
                log.debug("setting %s not taken: %s", key, exc)

    def _loaded(self) -> list[str]:
        models = self.easel.models
        keys: list[str] = []
        for name in models.loaded_names():
            keys.append(name)
            try:
                sha = models.hashes.cached(models.find(name).hash_source)
            except LookupError:
                sha = None
            if sha:
                keys.append(sha)
        return keys + loaded_keys(models.store)  # its LoRAs and ControlNets too

    def _record(self, mode: str, image: Any, ctx: Any, text: str, output_dir: Path | None = None) -> Path:
        job = self.easel.queue.current
        orders = self._saves.setdefault(job.id if job is not None else "", [])
        placeholder = f"<on the head: image {len(orders)}>"
        orders.append(SaveOrder(image=image, mode=mode, naming=ctx, text=text, placeholder=placeholder))
        return Path(placeholder)

