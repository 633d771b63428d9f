"""The head's side of Ray: start or join a cluster, make one worker actor per device, run jobs on them.

One code path for one box and for many: `--workers cpu,cpu|cuda:0,cuda:1|auto` starts a private
Ray cluster in this process (`ray.init`, every port on 127.0.0.1, token authentication with a
token of its own, no dashboard: lockdown.py), and `--ray-address auto|ray://HOST:10001` joins one started with `ray start`.
Either way each worker is an actor (WorkerService) with its own process and model store; Ray
restarts one that dies, and the pool brings it back into service when it answers again.

A running job is driven by polling: every POLL_INTERVAL the head asks the actor for progress
(and a new preview), passing on Interrupt and Skip as soon as they are pressed, so both reach
the worker well within one sampling step; the actor's in-step checks do the rest.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ..core.jobs import Job
from ..paths import PROJECT_ROOT
from .messages import CheckpointRef, RemoteJobError, RemoteTask, Snapshot
from .lockdown import private_cluster_env, shared_token_warning, token_file
from .pool import Executor, ModelMissing, PoolQueue, WorkerLost
from .service import WorkerConfig, WorkerService, requested_scripts

log = logging.getLogger(__name__)
POLL_INTERVAL = 0.05  # seconds between progress polls of a running job
FLAG_CHECK = 0.002    # how often, between polls, the head looks whether Interrupt or Skip was pressed
CALL_TIMEOUT = 60.0   # a worker that does not answer a poll for this long is taken for lost
NAMESPACE = "easel"
# what a cluster's nodes need not receive of this folder when Ray ships the code to them
SHIP_EXCLUDES = [".git", ".venv", "models", "outputs", "cache", "extensions", "tests", "*.safetensors", "*.ckpt",
                 "*.sqlite", "queue", "node_modules", "/ray/"]  # /ray/: a private cluster's token (lockdown.py)


def parse_workers(spec: str) -> list[str]:
    """`cpu,cpu` / `cuda:0,cuda:1` / `auto` -> device names ("auto" is resolved once Ray is up)."""
    devices = [part.strip() for part in spec.split(",") if part.strip()]
    for device in devices:
        if device != "auto" and device != "cpu" and not device.startswith("cuda"):
            raise ValueError(f"--workers: {device!r} is not cpu, cuda, cuda:N or auto")
    if "auto" in devices and len(devices) > 1:
        raise ValueError("--workers: auto stands alone")
    return devices


def connect(address: str | None, devices: list[str], data_dir: Path = PROJECT_ROOT) -> Any:
    """Start a private local cluster (address None) or join one; returns the ray module."""
    if address is None:  # loopback only, and a token only this process made (lockdown.py says why so)
        private_cluster_env(data_dir)
    elif warning := shared_token_warning():
        log.warning("workers: %s", warning)
    import ray

    if ray.is_initialized():
        return ray
    if address is None:
        _reread_lockdown(ray)
        cpus = max(1, sum(1 for d in devices if d == "cpu"))
        gpus = sum(1 for d in devices if d.startswith("cuda"))
        ray.init(num_cpus=cpus, num_gpus=gpus or None, namespace=NAMESPACE, include_dashboard=False,
                 _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT_ROOT), "HF_HUB_OFFLINE": "1",
                                           "TRANSFORMERS_OFFLINE": "1"}})
    else:
        ray.init(address=address, namespace=NAMESPACE, configure_logging=False, log_to_driver=False,
                 runtime_env={"working_dir": str(PROJECT_ROOT), "excludes": SHIP_EXCLUDES,
                              "env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}})
    return ray


def _reread_lockdown(ray: Any) -> None:
    """Where Ray was imported before `private_cluster_env` (a second pool in one process): make it see it now."""
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader

    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    AuthenticationTokenLoader.instance().reset_cache()  # the token file is new


def cluster_devices(ray: Any) -> list[str]:
    """`auto`: one worker per GPU in the cluster; with none, one CPU worker per node."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        return ["cuda"] * gpus
    return ["cpu"] * max(1, sum(1 for node in ray.nodes() if node.get("Alive")))


class HeadSide:
    """What the head does for remote jobs: name the checkpoint by hash, and save the images that come back."""

    def __init__(self, engine: Any, models: Any, settings: Any):
        self.engine, self.models, self.settings = engine, models, settings

    def checkpoint(self, task: RemoteTask) -> CheckpointRef:
        ref = task.checkpoint
        if ref.sha256:
            return ref
        try:
            info = self.models.find(ref.name)
            return CheckpointRef(ref.name, self.models.hashes.sha256(info.hash_source))
        except (LookupError, OSError):  # the head does not have it: workers look it up by name
            return ref

    def save(self, job: Job, task: RemoteTask, result: Any, saves: list) -> None:
        """Write the worker's images exactly as a local job would (folder, name pattern, format, infotext)."""
        engine = self.engine
        for order in saves:
            path = str(engine.save_named(order.mode, order.image, order.naming, order.text, engine.output_dir))
            result.paths = [path if p == order.placeholder else p for p in result.paths]
            engine.hooks.call("image_saved", path=path, image=order.image, infotext=order.text, request=task.request)
            for listener in engine.image_listeners:
                listener(path, order.image, order.text)


class RayExecutor(Executor):
    """One worker actor, seen from the head."""

    remote = True

    def __init__(self, name: str, actor: Any, head: HeadSide, ray: Any):
        super().__init__(name)
        self.actor, self.head, self.ray = actor, head, ray
        self.alive = False  # until the actor has built its app and answered
        self.info: dict[str, Any] = {}
        self._ready = actor.info.remote()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.info.get("device"), "host": self.info.get("host"),
                "pid": self.info.get("pid")}

    def revive(self) -> bool:
        ready, _ = self.ray.wait([self._ready], timeout=0)
        if not ready:
            return False
        try:
            self.info = self.ray.get(self._ready)
        except self.ray.exceptions.RayError:
            self._ready = self.actor.info.remote()
            return False
        self.loaded = set(self.info.get("loaded") or [])
        return True

    def run(self, job: Job) -> Any:
        task: RemoteTask = job.remote
        key = f"{job.id}:{len(job.meta.get('workers', []))}"
        ray = self.ray
        try:
            missing = ray.get(self.actor.start.remote(key, task.request, self.head.settings.as_dict(),
                                                      self.head.checkpoint(task),
                                                      requested_scripts(self.head.engine, task.request)),
                              timeout=CALL_TIMEOUT)
        except ray.exceptions.RayTaskError as exc:  # the worker refused the request: its message
            raise RemoteJobError(type(exc.cause).__name__, str(exc.cause), True) from None
        except ray.exceptions.RayError as exc:
            raise self._lost(exc) from None
        if missing:
            raise ModelMissing(missing)
        since, told = -1, False
        while True:
            if job.interrupted and not told:
                self.actor.interrupt.remote(key)
                told = True
            if job._skip.is_set():
                job._skip.clear()
                self.actor.skip.remote(key)
            try:
                snap: Snapshot = ray.get(self.actor.poll.remote(key, since), timeout=CALL_TIMEOUT)
            except ray.exceptions.RayError as exc:
                raise self._lost(exc) from None
            since = self._mirror(job, snap, since)
            if snap.finished:
                break
            self._pause(job, told)
        self.loaded = set(snap.loaded)
        if snap.error is not None:
            raise RemoteJobError(*snap.error)
        result = snap.result
        self.head.save(job, task, result, snap.saves)
        if job.meta.get("retried") and result is not None:
            result.warnings.append(job.meta["retried"].capitalize() + ".")
        return result

    @staticmethod
    def _pause(job: Job, told: bool) -> None:
        """Wait until the next poll, but no longer than FLAG_CHECK once Interrupt or Skip is pressed."""
        deadline = time.monotonic() + POLL_INTERVAL
        while time.monotonic() < deadline:
            if (job.interrupted and not told) or job._skip.is_set():
                return
            time.sleep(FLAG_CHECK)

    def _lost(self, exc: BaseException) -> WorkerLost:
        self._ready = self.actor.info.remote()  # answered once Ray has restarted the actor
        return WorkerLost(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    @staticmethod
    def _mirror(job: Job, snap: Snapshot, since: int) -> int:
        p = job.progress
        p.step, p.total_steps, p.job_no, p.job_count = snap.step, snap.total_steps, snap.job_no, snap.job_count
        if snap.text:
            p.text = snap.text
        if snap.preview is not None:
            step, latents, previewer = snap.preview
            p.previewer, p.preview_latents, p.preview_step = previewer, latents, step
            return step
        return since

    def close(self) -> None:
        try:
            self.ray.kill(self.actor, no_restart=True)
        except Exception:  # already gone
            pass


def attach_workers(queue: PoolQueue, options: Any, engine: Any, models: Any, settings: Any) -> list[RayExecutor]:
    """Start (or join) Ray and add one executor per worker device to `queue`."""
    devices = parse_workers(options.workers) if options.workers else ["auto"]
    ray = connect(options.ray_address, [] if devices == ["auto"] else devices, options.data_dir)
    if devices == ["auto"]:
        devices = cluster_devices(ray)
    head = HeadSide(engine, models, settings)
    actor_class = ray.remote(WorkerService)
    executors = []
    for index, device in enumerate(devices):
        name = f"w{index}-{device.replace(':', '')}"
        config = WorkerConfig(name=name, device="cuda" if device.startswith("cuda") else "cpu",
                              models_dir=str(options.models_dir), ckpt_dirs=[str(p) for p in options.ckpt_dirs],
                              lora_dirs=[str(p) for p in options.lora_dirs],
                              embedding_dirs=[str(p) for p in options.embedding_dirs], precision=options.precision,
                              allow_pickle=options.allow_pickle, disable_extensions=options.disable_extensions,
                              extensions_dir=str(options.extensions_dir), settings=settings.as_dict())
        actor = actor_class.options(
            name=f"easel-{name}-{os.getpid()}", num_cpus=1 if device == "cpu" else 0,
            num_gpus=1 if device.startswith("cuda") else 0, max_restarts=3, max_task_retries=0,
            max_concurrency=4, scheduling_strategy="SPREAD").remote(config)
        executor = RayExecutor(name, actor, head, ray)
        queue.add(executor)
        executors.append(executor)
    queue.closers.append(ray.shutdown)  # stops a private cluster; a joined one keeps running, this process leaves it
    if options.ray_address is None:  # the private cluster's token goes with it
        queue.closers.append(lambda: token_file(options.data_dir).unlink(missing_ok=True))
    log.info("workers: %s (Ray %s)", ", ".join(devices), "local" if options.ray_address is None else options.ray_address)
    return executors
